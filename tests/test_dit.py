"""The diffusion transformer over packed tokens: masks, text, positions, init, training."""

import dataclasses

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from kinetoscope import dit as dit_module
from kinetoscope.checkpoint import load_config, load_weights, save_model
from kinetoscope.diffusion import (
    flow_loss,
    interpolate,
    token_timesteps,
    training_timesteps,
    velocity_target,
)
from kinetoscope.dit import DIT_PRESETS, DiT, DiTConfig
from kinetoscope.nn import masked_attention, text_cross_attention, text_runs
from kinetoscope.patches import block_attention_mask, pack

TINY = DIT_PRESETS["tiny"]  # 4 latent channels, patch (1, 2, 2): tokens of width 16
# Ragged latents (c, t, h, w) -> 8, 6, 6 and 8 tokens; in sequences of 16 tokens they pack as
# [0, 3] and [1, 2], so samples share sequences and sit in different ones.
SHAPES = [(4, 2, 4, 4), (4, 1, 6, 4), (4, 3, 2, 4), (4, 1, 4, 8)]

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _batch(seed=0, text_lengths=(6, 3, 4, 5), given_frames=None):
    """A packed batch of SHAPES, noisy tokens, per-token t, and text (B, 6, 32) with its mask."""
    g = _gen(seed)
    latents = [torch.randn(*s, generator=g) for s in SHAPES]
    packed = pack(latents, token_budget=16, given_frames=given_frames)
    assert packed.sequences == [[0, 3], [1, 2]]
    t = token_timesteps(torch.rand(len(SHAPES), generator=g), packed.sample_index)
    text = torch.randn(len(SHAPES), 6, TINY.text_dim, generator=g)
    text_mask = torch.arange(6) < torch.tensor(text_lengths)[:, None]  # (B, S)
    return packed, t, text, text_mask


def _random_model(config=TINY, seed=0):
    """A DiT with every weight random: a fresh one outputs zeros and would hide any leak."""
    torch.manual_seed(seed)
    model = DiT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    return model.eval()


def _run(model, packed, t, text, text_mask, tokens=None):
    tokens = packed.tokens if tokens is None else tokens
    with torch.no_grad():
        return model.forward_packed(tokens, t, packed, text, text_mask)


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Config, presets, sizes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": 64, "num_heads": 5}, "not divisible by num_heads"),
        ({"hidden_size": 12, "num_heads": 4}, "even head dimension"),
        ({"rope_split": (8, 8, 8)}, "sum to the head dimension"),
        ({"mlp": "relu"}, "gelu_tanh"),
        ({"patch": (1, 2)}, "three positive integers"),
        ({"depth": 0}, "depth must be a positive"),
        ({"text_dim": 0}, "text_dim must be a positive"),
    ],
)
def test_invalid_configs_say_what_to_change(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **change)


def test_presets_are_valid_and_grow():
    sizes = [config.num_params() for config in DIT_PRESETS.values()]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    for config in DIT_PRESETS.values():
        assert config.head_dim % 2 == 0 and sum(config.rope_split) == config.head_dim


@pytest.mark.parametrize("name", list(DIT_PRESETS))
@pytest.mark.parametrize("variant", [{}, {"mlp": "swiglu", "qk_norm": False}])
def test_analytic_parameter_count_matches_the_model(name, variant):
    config = dataclasses.replace(DIT_PRESETS[name], **variant)
    with torch.device("meta"):  # no memory, even for xl
        model = DiT(config)
    assert model.num_params() == config.num_params()


@pytest.mark.parametrize("variant", [{}, {"mlp": "swiglu"}])
def test_flops_per_token_matches_a_flop_counter(variant):
    config = dataclasses.replace(TINY, **variant)
    model = DiT(config)
    g = _gen(0)
    # One sequence of 18 + 8 tokens; each sample reads its own text row of 5 (10 in all).
    latents = [torch.randn(4, 3, 4, 6, generator=g), torch.randn(4, 2, 4, 4, generator=g)]
    packed = pack(latents, token_budget=26)
    seq_len = packed.sequence_length
    text, text_mask = torch.randn(2, 5, config.text_dim), torch.ones(2, 5, dtype=torch.bool)
    t = torch.rand(1, seq_len)
    dense = block_attention_mask(packed.sample_index)  # (1, L, L): attention over all L keys
    counted = []
    for mask in (dense, None):
        # The math backend runs attention as countable matmuls (the fused CPU kernel is not).
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            model(packed.tokens, packed.coords, t, text, text_mask, attention_mask=mask)
        counted.append(counter.get_total_flops())
    expected = model.flops_per_token(seq_len, text_len=5, sequence_text=10) * seq_len
    assert abs(counted[0] - expected) <= seq_len  # integer division of the text part per token
    # Packed attention skips the other sample's keys: 4 D depth (L^2 - sum L_i^2) fewer.
    skipped = 4 * config.hidden_size * config.depth * (seq_len**2 - 18**2 - 8**2)
    assert abs(counted[1] - (expected - skipped)) <= seq_len


# ---------------------------------------------------------------------------------------------
# Initialisation: adaLN-Zero
# ---------------------------------------------------------------------------------------------


def test_a_fresh_model_is_the_identity_on_its_residual_stream_and_outputs_zero():
    model = DiT(TINY)
    packed, t, text, text_mask = _batch()
    seen = []

    def check(block, args, output):
        seen.append(torch.equal(output, args[0]))

    hooks = [block.register_forward_hook(check) for block in model.blocks]
    out = _run(model, packed, t, text, text_mask)
    for hook in hooks:
        hook.remove()
    assert seen == [True] * TINY.depth
    assert torch.equal(out, torch.zeros_like(out))


def test_training_moves_every_weight_out_of_the_zero_init():
    model = DiT(TINY)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    packed, t, text, text_mask = _batch()
    noise = torch.randn(packed.tokens.shape, generator=_gen(1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(4):  # the zero final layer passes gradients on after its first update
        x_t = interpolate(packed.tokens, noise, t)
        velocity = model.forward_packed(x_t, t, packed, text, text_mask)
        loss = flow_loss(velocity, velocity_target(packed.tokens, noise), packed.loss_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    frozen = [n for n, p in model.named_parameters() if torch.equal(p.detach(), initial[n])]
    assert frozen == []


# ---------------------------------------------------------------------------------------------
# Packing: attention and text stay within a sample
# ---------------------------------------------------------------------------------------------


def test_attention_never_crosses_samples():
    model = _random_model()
    packed, t, text, text_mask = _batch()
    base = _run(model, packed, t, text, text_mask)
    for sample in range(len(SHAPES)):
        own = packed.sample_index == sample
        tokens = packed.tokens + 3.0 * own[..., None] * torch.randn(packed.tokens.shape)
        moved_t = torch.where(own, 1.0 - t, t)  # its timesteps change too
        out = _run(model, packed, moved_t, text, text_mask, tokens)
        others = packed.valid_mask & ~own
        _close(out[others], base[others])
        assert (out[own] - base[own]).abs().max() > 1e-2  # the perturbation does reach it


def test_padding_never_reaches_real_tokens():
    model = _random_model()
    packed, t, text, text_mask = _batch()
    packed = pack([torch.randn(*s) for s in SHAPES], token_budget=20)  # with padding
    t = token_timesteps(torch.rand(len(SHAPES)), packed.sample_index)
    pad = ~packed.valid_mask
    assert pad.any()
    base = _run(model, packed, t, text, text_mask)
    tokens = packed.tokens + 5.0 * pad[..., None] * torch.randn(packed.tokens.shape)
    out = _run(model, packed, torch.where(pad, 0.7, t), text, text_mask, tokens)
    _close(out[~pad], base[~pad])
    assert torch.isfinite(out).all()


def test_cross_attention_sees_only_the_samples_own_text():
    model = _random_model()
    packed, t, text, text_mask = _batch()
    base = _run(model, packed, t, text, text_mask)
    for sample in range(len(SHAPES)):
        changed = text.clone()
        changed[sample] += 2.0 * torch.randn(changed[sample].shape)
        out = _run(model, packed, t, changed, text_mask)
        own = packed.sample_index == sample
        _close(out[~own], base[~own])
        assert (out[own] - base[own]).abs().max() > 1e-2


def test_masked_text_tokens_have_no_effect():
    model = _random_model()
    packed, t, text, text_mask = _batch(text_lengths=(2, 6, 1, 4))
    base = _run(model, packed, t, text, text_mask)
    changed = text + 100.0 * (~text_mask)[..., None] * torch.randn(text.shape)
    _close(_run(model, packed, t, changed, text_mask), base)
    # Padding the text to a longer S with masked tokens changes nothing either.
    longer = torch.cat([text, torch.randn(len(SHAPES), 3, TINY.text_dim)], dim=1)
    longer_mask = torch.cat([text_mask, torch.zeros(len(SHAPES), 3, dtype=torch.bool)], dim=1)
    _close(_run(model, packed, t, longer, longer_mask), base)


def test_a_sample_without_text_is_finite_and_the_same_as_no_text_row():
    model = _random_model()
    packed, t, text, text_mask = _batch(text_lengths=(6, 0, 4, 5))  # sample 1: empty prompt
    out = _run(model, packed, t, text, text_mask)
    assert torch.isfinite(out).all()
    no_row = torch.where(packed.sample_index == 1, -1, packed.sample_index)
    with torch.no_grad():
        direct = model(packed.tokens, packed.coords, t, text, text_mask, sample_index=no_row)
    _close(out, direct)


def _flattened_cross_attention(q, k, v, runs):
    """A reference: every token reads all B*S text tokens under a mask of its own row's
    unmasked tokens (the former layout); tokens that see none get zeros."""
    (b, _, s, _), n = k.shape, q.shape[0]
    own_row = torch.tensor([[row for length, row in zip(lengths, rows, strict=True)
                             for _ in range(length)]
                            for lengths, rows in zip(runs.lengths, runs.rows, strict=True)])  # fmt: skip
    visible = torch.zeros(b, s, dtype=torch.bool)
    for row, positions in enumerate(runs.visible):
        visible[row, list(positions)] = True
    key_row = torch.arange(b).repeat_interleave(s)  # (B*S,)
    mask = (own_row[..., None] == key_row) & visible.reshape(-1)  # (N, L, B*S)
    gate = mask.any(dim=-1, keepdim=True)  # (N, L, 1)
    flat_k, flat_v = (x.transpose(0, 1).reshape(1, x.shape[1], b * s, -1) for x in (k, v))
    out = masked_attention(q, flat_k.expand(n, -1, -1, -1), flat_v.expand(n, -1, -1, -1),
                           (mask | ~gate)[:, None])  # fmt: skip
    return out * gate[:, None].to(out.dtype)


def _text_cases():
    """(packed, t, text, text_mask, sample_index) covering every way a sequence meets text."""
    packed, t, text, text_mask = _batch()
    yield "two samples per sequence", packed, t, text, text_mask, packed.sample_index
    g = _gen(3)
    latents = [torch.randn(*s, generator=g) for s in SHAPES]
    for budget, sequences in ((20, None), (24, None), (16, 3)):  # padding, uneven, empty sequence
        packed = pack(latents, token_budget=budget, num_sequences=sequences)
        t = token_timesteps(torch.rand(len(SHAPES), generator=g), packed.sample_index)
        yield f"budget {budget}", packed, t, text, text_mask, packed.sample_index
    packed, t, text, text_mask = _batch(text_lengths=(6, 0, 4, 5))
    yield "empty prompt", packed, t, text, text_mask, packed.sample_index
    no_row = torch.where(packed.sample_index == 3, -1, packed.sample_index)
    yield "a sample with no text row", packed, t, text, text_mask, no_row
    packed, t, text, text_mask = _batch(given_frames=[[0], None, [1, 2], None])
    yield "given tokens", packed, t, text, text_mask, packed.sample_index
    extra = torch.cat([text, torch.randn(5, 6, TINY.text_dim, generator=g)])  # unused rows
    extra_mask = torch.cat([text_mask, torch.ones(5, 6, dtype=torch.bool)])
    yield "unused text rows", packed, t, extra, extra_mask, packed.sample_index


def test_per_run_text_attention_gives_the_flattened_texts_velocities(monkeypatch):
    model = _random_model()
    for name, packed, t, text, text_mask, index in _text_cases():
        args = (packed.tokens, packed.coords, t, text, text_mask, index)
        with torch.no_grad():
            out = model(*args)
            with monkeypatch.context() as patch:
                patch.setattr(dit_module, "text_cross_attention", _flattened_cross_attention)
                reference = model(*args)
        assert torch.isfinite(out).all(), name
        valid = packed.valid_mask
        torch.testing.assert_close(out[valid], reference[valid], rtol=1e-5, atol=1e-5, msg=name)


def test_per_run_text_attention_gives_the_flattened_texts_gradients(monkeypatch):
    packed, t, text, text_mask = _batch()
    grads = []
    for attention in (text_cross_attention, _flattened_cross_attention):
        model = _random_model().train()
        monkeypatch.setattr(dit_module, "text_cross_attention", attention)
        model.forward_packed(packed.tokens, t, packed, text, text_mask).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    _close(grads[0], grads[1])


def test_text_runs_follow_the_samples_and_their_unmasked_text():
    packed, _, _, text_mask = _batch(text_lengths=(6, 0, 4, 5))  # sequences [[0, 3], [1, 2]]
    runs = text_runs(packed.sample_index, text_mask)
    assert [list(rows[:2]) for rows in runs.rows] == [[0, 3], [1, 2]]  # then any padding
    assert all(row == -1 for rows in runs.rows for row in rows[2:])
    assert [sum(lengths) for lengths in runs.lengths] == [16, 16]
    first = packed.sample_index[0]
    assert list(runs.lengths[0][:2]) == [int((first == 0).sum()), int((first == 3).sum())]
    assert runs.visible == ((0, 1, 2, 3, 4, 5), (), (0, 1, 2, 3), (0, 1, 2, 3, 4))
    # A row may recur: two samples sharing one prompt read the same row, in any sequence.
    shared = torch.tensor([[0, 0, 1, 1, 0, -1]])
    runs = text_runs(shared, torch.ones(2, 3, dtype=torch.bool))
    assert runs.rows == ((0, 1, 0, -1),) and runs.lengths == ((2, 2, 1, 1),)


def test_a_tokens_output_ignores_the_text_of_other_sequences():
    model = _random_model()
    packed, t, text, text_mask = _batch()  # sequences [[0, 3], [1, 2]]
    base = _run(model, packed, t, text, text_mask)
    changed = text.clone()
    changed[[1, 2]] += 5.0 * torch.randn(2, 6, TINY.text_dim)  # all of sequence 1's text
    out = _run(model, packed, t, changed, text_mask)
    assert torch.equal(out[0], base[0])  # not even rounding moves: sequence 0 never reads it
    assert (out[1] - base[1]).abs().max() > 1e-2


def test_one_sequence_or_several_give_each_sample_the_same_velocity():
    model = _random_model()
    g = _gen(4)
    latents = [torch.randn(*s, generator=g) for s in SHAPES]
    t_sample = torch.rand(len(SHAPES), generator=g)
    text = torch.randn(len(SHAPES), 6, TINY.text_dim, generator=g)
    text_mask = torch.arange(6) < torch.tensor([6, 3, 4, 5])[:, None]
    outs = []
    for budget in (32, 16, 8):  # one sequence of all four, two of two, one sample each
        packed = pack(latents, token_budget=budget)
        t = token_timesteps(t_sample, packed.sample_index)
        out = _run(model, packed, t, text, text_mask)
        outs.append([out[packed.sample_index == i] for i in range(len(SHAPES))])
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            _close(a, b)


def _velocity_and_grads(model, packed, t, text, text_mask, attention_mask=None):
    """Velocity at real tokens and the parameter gradients of a loss over real tokens."""
    model.zero_grad()
    out = model(packed.tokens, packed.coords, t, text, text_mask, attention_mask=attention_mask)
    assert torch.isfinite(out).all()
    weights = torch.randn(out.shape, generator=_gen(7))
    (out.float() * weights * packed.valid_mask[..., None]).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return out[packed.valid_mask].detach(), grads


@pytest.mark.parametrize("bf16", [False, True])
def test_packed_attention_gives_the_dense_masks_velocities_and_gradients(bf16):
    model = _random_model().train()
    g = _gen(0)
    packed = pack([torch.randn(*s, generator=g) for s in SHAPES], 16, num_sequences=3)
    assert packed.sequences == [[0, 3], [1, 2], []]  # padding in a sequence, and a whole one
    t = token_timesteps(torch.rand(len(SHAPES), generator=g), packed.sample_index)
    _, _, text, text_mask = _batch()
    dense = block_attention_mask(packed.sample_index)  # (N, L, L): the reference
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        ours = _velocity_and_grads(model, packed, t, text, text_mask)
        theirs = _velocity_and_grads(model, packed, t, text, text_mask, dense)
    if bf16:  # both round in bf16: each is as close to the fp32 velocity as the other
        exact = _velocity_and_grads(model, packed, t, text, text_mask, dense)
        for mine, reference, full in zip(ours, theirs, exact, strict=True):
            error = (mine.float() - full).norm() / full.norm()
            assert error < 0.05 and error < 2 * (reference.float() - full).norm() / full.norm()
    else:
        # Outputs reach ~50 with these weights; the kernels sum in different orders.
        torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=5e-5)
        torch.testing.assert_close(ours[1], theirs[1], rtol=1e-4, atol=1e-4)


def test_a_dit_step_allocates_no_sequence_squared_tensor():
    # 4096 tokens of 16 samples of 256 and padding: an (L, L) tensor is 16 MiB even as bools,
    # more than any per-token tensor of the tiny preset (its largest, (N, L, 6, D) fp32, is 6
    # MiB). The profiler's allocation events see every buffer; the dense mask shows they can
    # see one of (L, L).
    model = _random_model().train()
    latents = [torch.randn(4, 1, 32, 32, generator=_gen(i)) for i in range(15)]
    packed = pack(latents, token_budget=4096)  # 15 x 256 tokens, then 256 of padding
    t = torch.rand(packed.tokens.shape[:2], generator=_gen(1))
    text, text_mask = torch.randn(15, 4, TINY.text_dim), torch.ones(15, 4, dtype=torch.bool)
    length = packed.sequence_length

    def largest_allocation(attention_mask) -> int:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = model(packed.tokens, packed.coords, t, text, text_mask, None, attention_mask)
            out.square().mean().backward()
        events = prof.profiler.kineto_results.events()
        return max(e.nbytes() for e in events if e.name() == "[memory]")

    assert largest_allocation(block_attention_mask(packed.sample_index)) >= length**2
    assert largest_allocation(None) < length**2


def test_a_sample_split_across_its_sequence_needs_a_dense_mask():
    model = _random_model()
    packed, t, text, text_mask = _batch()
    seq, start = packed.placement[0]
    order = torch.arange(packed.sequence_length)
    order[[start, start + 8]] = order[[start + 8, start]]  # swap a token of samples 0 and 3
    args = (packed.tokens[seq, order][None], packed.coords[seq, order][None], t[seq, order][None])
    with pytest.raises(ValueError, match="sample 3 are not contiguous in sequence 0"):
        model(*args, text, text_mask)
    mask = block_attention_mask(args[1][..., 0])
    with torch.no_grad():
        out = model(*args, text, text_mask, attention_mask=mask)
    _close(out[0], _run(model, packed, t, text, text_mask)[seq, order])


# ---------------------------------------------------------------------------------------------
# Positions: only coords say where a token is, and only relative positions matter
# ---------------------------------------------------------------------------------------------


def test_outputs_follow_tokens_when_they_are_reordered_with_their_coords():
    model = _random_model()
    packed, t, text, text_mask = _batch()
    base = _run(model, packed, t, text, text_mask)
    seq, start = packed.placement[0]
    order = torch.arange(packed.sequence_length)
    order[start : start + 8] = start + torch.randperm(8)  # shuffle sample 0 within its slots
    with torch.no_grad():
        out = model(
            packed.tokens[seq, order][None],
            packed.coords[seq, order][None],
            t[seq, order][None],
            text,
            text_mask,
        )
    # Outputs reach ~50 with these weights and the shuffle reorders fp32 sums: 1e-6 of that.
    torch.testing.assert_close(out[0], base[seq, order], rtol=1e-5, atol=5e-5)


def test_shifting_a_samples_coords_changes_nothing():
    model = _random_model()
    packed, t, text, text_mask = _batch()
    base = _run(model, packed, t, text, text_mask)
    coords = packed.coords.clone()
    own = packed.sample_index == 2
    coords[own] += torch.tensor([0, 5, 3, 7])  # translate sample 2 in (t, h, w)
    with torch.no_grad():
        out = model(packed.tokens, coords, t, text, text_mask)
    _close(out, base)
    # A change of relative position does change its outputs: move its first frame along w.
    first_frame = own & (coords[..., 1] == coords[own][:, 1].min())
    coords[first_frame] += torch.tensor([0, 0, 0, 1])
    with torch.no_grad():
        out = model(packed.tokens, coords, t, text, text_mask)
    assert (out[own] - base[own]).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def test_invalid_inputs_say_what_to_change():
    model = DiT(TINY)
    packed, t, text, text_mask = _batch()
    tokens, coords = packed.tokens, packed.coords
    with pytest.raises(ValueError, match=r"tokens must be \(N, L, 16\)"):
        model(tokens[..., :12], coords, t, text, text_mask)
    with pytest.raises(ValueError, match="coords must be"):
        model(tokens, coords[..., 1:], t, text, text_mask)
    with pytest.raises(ValueError, match="token_timesteps"):
        model(tokens, coords, t[:, 0], text, text_mask)
    with pytest.raises(ValueError, match="text_dim"):
        model(tokens, coords, t, torch.randn(4, 6, 384), text_mask)
    with pytest.raises(ValueError, match="at least one token"):
        model(tokens, coords, t, text[:, :0], text_mask[:, :0])
    with pytest.raises(ValueError, match="text_mask must be"):
        model(tokens, coords, t, text, text_mask[:, :3])
    with pytest.raises(ValueError, match="one text row per sample"):
        model(tokens, coords, t, text[:3], text_mask[:3])
    with pytest.raises(ValueError, match="attention_mask must be"):
        model(tokens, coords, t, text, text_mask, attention_mask=torch.ones(2, 16, 15).bool())


# ---------------------------------------------------------------------------------------------
# Precision, memory, files
# ---------------------------------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_gradients():
    packed, t, text, text_mask = _batch()
    grads = []
    for checkpointing in (False, True):
        model = _random_model().train()
        model.gradient_checkpointing = checkpointing
        model.forward_packed(packed.tokens, t, packed, text, text_mask).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    _close(grads[1], grads[0])


def test_bf16_autocast_stays_close_to_fp32():
    model = _random_model()
    packed, t, text, text_mask = _batch()
    base = _run(model, packed, t, text, text_mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = _run(model, packed, t, text, text_mask)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    relative = (low.float() - base).norm() / base.norm()
    assert relative < 0.05


def test_checkpoint_round_trip(tmp_path):
    model = _random_model(dataclasses.replace(TINY, mlp="swiglu", rope_split=(4, 6, 6)))
    save_model(tmp_path / "dit", model, model.config)
    config = load_config(tmp_path / "dit", DiTConfig)
    assert config == model.config
    loaded = DiT(config)
    load_weights(tmp_path / "dit", loaded)
    packed, t, text, text_mask = _batch()
    assert torch.equal(
        _run(loaded.eval(), packed, t, text, text_mask), _run(model, packed, t, text, text_mask)
    )


# ---------------------------------------------------------------------------------------------
# Training: a tiny DiT overfits a handful of clips
# ---------------------------------------------------------------------------------------------


def _clip(shape, g):
    """A smooth synthetic latent clip: one travelling sine wave per channel."""
    c, t, h, w = shape
    grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in (t, h, w)), indexing="ij"))
    freq = torch.rand(c, 3, generator=g) * 1.5  # (c, 3) cycles per patch along t, h, w
    phase = torch.rand(c, 1, 1, 1, generator=g) * 6.283
    return torch.sin(torch.einsum("ca,athw->cthw", freq, grid.float()) + phase)


@pytest.mark.parametrize(
    ("steps", "factor"), [(100, 1.6), pytest.param(400, 4.0, marks=pytest.mark.slow)]
)
def test_a_tiny_dit_overfits_a_handful_of_clips(steps, factor):
    g = _gen(0)
    packed = pack(
        [_clip(s, g) for s in SHAPES], token_budget=16, given_frames=[[0], None, None, None]
    )
    text = torch.randn(len(SHAPES), 6, TINY.text_dim, generator=g)
    text_mask = torch.arange(6) < torch.tensor([6, 3, 4, 5])[:, None]
    torch.manual_seed(0)
    model = DiT(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0, foreach=True)

    def draw(gen):  # the training recipe: shifted logit-normal t per sample, given tokens clean
        t = training_timesteps(packed.lengths, generator=gen)
        t_tok = token_timesteps(t, packed.sample_index, packed.given_mask)
        return t_tok, torch.randn(packed.tokens.shape, generator=gen)

    def loss_of(t, noise):
        x_t = interpolate(packed.tokens, noise, t)
        velocity = model.forward_packed(x_t, t, packed, text, text_mask)
        return flow_loss(velocity, velocity_target(packed.tokens, noise), packed.loss_mask)

    held_out = [draw(_gen(100 + i)) for i in range(16)]  # the same noise before and after

    def evaluate():
        with torch.no_grad():
            return sum(float(loss_of(t, noise)) for t, noise in held_out) / len(held_out)

    before = evaluate()
    train_gen = _gen(1)
    for _ in range(steps):
        loss = loss_of(*draw(train_gen))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate()
    assert after < before / factor, f"loss {before:.3f} -> {after:.3f} in {steps} steps"


def test_train_help_names_every_preset(capsys):
    from kinetoscope.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert all(f" {name}," in shown or f" {name} " in shown for name in DIT_PRESETS), shown
