"""Shared layers: RMSNorm, modulate, timestep embedding, MLP, 3D RoPE, attention."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from kinetoscope import nn as nn_module
from kinetoscope.nn import (
    MLP,
    RMSNorm,
    TimestepEmbedder,
    apply_rope,
    attention_kernel,
    masked_attention,
    modulate,
    packed_attention,
    packed_segments,
    rope_3d,
    rope_split,
    timestep_embedding,
)
from kinetoscope.patches import block_attention_mask


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Norm, modulation, timestep embedding, MLP
# ---------------------------------------------------------------------------------------------


def test_rms_norm_gives_unit_rms_times_gain_in_the_input_dtype():
    x = _randn(3, 5, 16) * 7 + 2
    norm = RMSNorm(16, elementwise_affine=False)
    y = norm(x)
    torch.testing.assert_close(y.square().mean(-1), torch.ones(3, 5), rtol=1e-4, atol=1e-4)
    gained = RMSNorm(16)
    with torch.no_grad():
        gained.weight.copy_(torch.linspace(0.5, 2.0, 16))
    torch.testing.assert_close(gained(x), y * gained.weight)
    low = gained(x.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), gained(x), rtol=2e-2, atol=2e-2)


def test_modulate_is_a_per_token_affine_map():
    x, shift, scale = _randn(2, 4, 8, seed=1), _randn(2, 4, 8, seed=2), _randn(2, 4, 8, seed=3)
    torch.testing.assert_close(modulate(x, shift, scale), x * (1 + scale) + shift)
    zero = torch.zeros_like(x)
    assert torch.equal(modulate(x, zero, zero), x)
    # Broadcasting a per-sequence modulation over tokens.
    torch.testing.assert_close(
        modulate(x, shift[:, :1], scale[:, :1]), x * (1 + scale[:, :1]) + shift[:, :1]
    )


def test_timestep_embedding_layout_and_distinctness():
    t = torch.tensor([[0.0, 0.25], [0.5, 1.0]])
    emb = timestep_embedding(t * 1000, 64)
    assert emb.shape == (2, 2, 64)
    assert torch.equal(emb[0, 0], torch.cat([torch.ones(32), torch.zeros(32)]))  # cos 0, sin 0
    torch.testing.assert_close(emb.square().sum(-1), torch.full((2, 2), 32.0))  # cos^2 + sin^2
    flat = emb.reshape(4, 64)
    distances = torch.cdist(flat, flat) + torch.eye(4) * 1e9
    assert distances.min() > 1.0  # different timesteps are far apart
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(t, 63)


def test_timestep_embedder_embeds_each_token_on_its_own():
    embedder = TimestepEmbedder(32, frequency_dim=16)
    t = torch.rand(3, 7)
    out = embedder(t)
    assert out.shape == (3, 7, 32)
    torch.testing.assert_close(out[1, 4], embedder(t[1, 4:5])[0])


def test_mlp_kinds_compute_their_formulas():
    x = _randn(2, 5, 12)
    gelu = MLP(12, 48)
    expected = gelu.fc2(F.gelu(gelu.fc1(x), approximate="tanh"))
    torch.testing.assert_close(gelu(x), expected)
    swiglu = MLP(12, 32, kind="swiglu")
    gate, up = swiglu.fc1(x).chunk(2, dim=-1)
    torch.testing.assert_close(swiglu(x), swiglu.fc2(F.silu(gate) * up))
    assert swiglu.fc1.out_features == 64
    with pytest.raises(ValueError, match="gelu_tanh"):
        MLP(12, 48, kind="relu")


# ---------------------------------------------------------------------------------------------
# 3D RoPE
# ---------------------------------------------------------------------------------------------


def test_rope_split_default_and_errors():
    assert rope_split(64) == (24, 20, 20)
    assert rope_split(16) == (8, 4, 4)
    for head_dim in (2, 8, 32, 96, 128):
        split = rope_split(head_dim)
        assert sum(split) == head_dim and all(s % 2 == 0 for s in split)
    assert rope_split(16, (0, 8, 8)) == (0, 8, 8)
    with pytest.raises(ValueError, match="even head dimension"):
        rope_split(15)
    with pytest.raises(ValueError, match="sum to the head dimension"):
        rope_split(16, (8, 8, 8))
    with pytest.raises(ValueError, match="even"):
        rope_split(16, (6, 5, 5))


def test_rope_3d_shapes_and_batched_coords():
    coords = torch.randint(0, 9, (2, 11, 3))
    cos, sin = rope_3d(coords, 16)
    assert cos.shape == sin.shape == (2, 11, 8)
    cos1, sin1 = rope_3d(coords[1], 16)
    assert torch.equal(cos[1], cos1) and torch.equal(sin[1], sin1)
    with pytest.raises(ValueError, match=r"\(t, h, w\)"):
        rope_3d(torch.zeros(5, 4), 16)


def test_rope_is_a_rotation_and_the_identity_at_the_origin():
    x = _randn(2, 3, 11, 16)
    cos, sin = rope_3d(torch.zeros(11, 3), 16)
    assert torch.equal(apply_rope(x, cos, sin), x)
    cos, sin = rope_3d(torch.randint(0, 50, (11, 3)), 16)
    y = apply_rope(x, cos, sin)
    assert not torch.allclose(y, x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    with pytest.raises(ValueError, match="head dimension"):
        apply_rope(_randn(11, 12), cos, sin)


def _rope_scores(q, k, pos_q, pos_k, split=None, theta=10_000.0):
    cos_q, sin_q = rope_3d(pos_q, q.shape[-1], theta, split)
    cos_k, sin_k = rope_3d(pos_k, k.shape[-1], theta, split)
    return (apply_rope(q, cos_q, sin_q) * apply_rope(k, cos_k, sin_k)).sum(-1)  # (L,)


def test_rope_scores_depend_only_on_the_coordinate_difference():
    q, k = _randn(64, 32, seed=1).double(), _randn(64, 32, seed=2).double()
    gen = torch.Generator().manual_seed(3)
    pos_q = torch.randint(0, 40, (64, 3), generator=gen)
    pos_k = torch.randint(0, 40, (64, 3), generator=gen)
    base = _rope_scores(q, k, pos_q, pos_k)
    for shift in ([5, 0, 0], [0, -7, 3], [11, 13, 17]):
        moved = torch.tensor(shift)
        moved_scores = _rope_scores(q, k, pos_q + moved, pos_k + moved)
        torch.testing.assert_close(moved_scores, base, rtol=1e-5, atol=1e-5)  # float32 angles
    # ... and they do depend on the difference along every axis.
    for axis in range(3):
        nudged = pos_k.clone()
        nudged[:, axis] += 1
        assert (_rope_scores(q, k, pos_q, nudged) - base).abs().max() > 1e-3


def test_an_axis_without_channels_is_ignored():
    q, k = _randn(20, 16, seed=1), _randn(20, 16, seed=2)
    pos = torch.randint(0, 9, (20, 3))
    moved = pos.clone()
    moved[:, 0] += torch.arange(20)  # only t changes, differently per token
    split = (0, 8, 8)
    torch.testing.assert_close(
        _rope_scores(q, k, moved, pos, split), _rope_scores(q, k, pos, pos, split)
    )


# ---------------------------------------------------------------------------------------------
# Masked attention
# ---------------------------------------------------------------------------------------------


def test_masked_attention_matches_a_softmax_reference():
    q, k, v = _randn(2, 3, 5, 8, seed=1), _randn(2, 3, 7, 8, seed=2), _randn(2, 3, 7, 8, seed=3)
    mask = torch.rand(2, 5, 7, generator=torch.Generator().manual_seed(4)) > 0.4
    mask[..., 0] = True  # every row may attend somewhere
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)  # (N, H, L, S)
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    expected = scores.softmax(-1) @ v
    torch.testing.assert_close(masked_attention(q, k, v, mask), expected)
    torch.testing.assert_close(masked_attention(q, k, v, mask[:, None]), expected)
    dense = (q @ k.transpose(-1, -2) / math.sqrt(8)).softmax(-1) @ v
    torch.testing.assert_close(masked_attention(q, k, v), dense)
    with pytest.raises(ValueError, match="bool"):
        masked_attention(q, k, v, mask.float())


def test_masked_keys_have_no_effect():
    q, k, v = _randn(1, 2, 4, 8, seed=1), _randn(1, 2, 6, 8, seed=2), _randn(1, 2, 6, 8, seed=3)
    mask = torch.tensor([[True, True, False, True, False, False]]).expand(1, 4, 6)
    out = masked_attention(q, k, v, mask)
    k2, v2 = k.clone(), v.clone()
    k2[..., [2, 4, 5], :] += 100.0
    v2[..., [2, 4, 5], :] -= 100.0
    torch.testing.assert_close(masked_attention(q, k2, v2, mask), out, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Packed attention: within each sample, no (L, L) mask
# ---------------------------------------------------------------------------------------------

# Three sequences of 12 tokens: samples of 5, 1 and 4 tokens then padding; one sample of 12;
# all padding (an empty sequence, e.g. from pack's num_sequences). Ids recur across sequences.
IDS = torch.tensor(
    [[0] * 5 + [1] + [2] * 4 + [-1] * 2, [3] * 12, [-1] * 12],
)


def _qkv(shape=(3, 2, 12, 8), seed=0, scale=1.0):
    return [(scale * _randn(*shape, seed=seed + i)).requires_grad_() for i in range(3)]


def _dense_reference(q, k, v, ids):
    """Attention under the block-diagonal mask of `patches.block_attention_mask`."""
    return masked_attention(q, k, v, block_attention_mask(ids))


def _outputs_and_grads(attention, q, k, v, ids):
    """Outputs at real tokens, and the gradients of a loss over them w.r.t. q, k, v."""
    real = ids >= 0  # (N, L)
    out = attention(q, k, v)  # (N, H, L, Dh)
    weights = _randn(*out.shape, seed=9)
    (out.float() * weights * real[:, None, :, None]).sum().backward()
    grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    return out.transpose(1, 2)[real], grads  # (T, H, Dh)


def test_packed_segments_reads_the_runs_of_each_sequence():
    segments = packed_segments(IDS)
    assert segments.lengths == ((5, 1, 4, 2), (12,), (12,))
    assert segments.real == ((True, True, True, False), (True,), (False,))
    assert segments.cu_seqlens.tolist() == [0, 5, 6, 10, 22] and segments.max_length == 12
    assert segments.cu_seqlens.dtype == torch.int32
    assert segments.tokens.tolist() == list(range(10)) + list(range(12, 24))
    empty = packed_segments(torch.full((2, 4), -1))
    assert empty.max_length == 0 and empty.cu_seqlens.tolist() == [0]


def test_a_sample_split_in_two_runs_is_an_error_naming_it():
    ids = torch.tensor([[0, 0, 1, 1, 0, -1], [1, 1, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match="sample 0 are not contiguous in sequence 0"):
        packed_segments(ids)


def _relative_error(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_attention_matches_the_dense_block_mask(dtype):
    q, k, v = _qkv(scale=2.0)
    segments = packed_segments(IDS)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out, grads = _outputs_and_grads(
            lambda *x: packed_attention(*(t.to(dtype) for t in x), segments), q, k, v, IDS
        )
    exact_out, exact_grads = _outputs_and_grads(lambda *x: _dense_reference(*x, IDS), q, k, v, IDS)
    assert out.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(out, exact_out)
        for mine, exact in zip(grads, exact_grads, strict=True):
            torch.testing.assert_close(mine, exact)
    else:  # bf16 rounding: the dense masked path in bf16 is 0.4-0.9% off here too
        assert _relative_error(out, exact_out) < 0.02
        for mine, exact in zip(grads, exact_grads, strict=True):
            assert _relative_error(mine, exact) < 0.02


def test_padding_outputs_zeros_and_is_never_attended_to():
    q, k, v = _qkv()
    segments = packed_segments(IDS)
    out = packed_attention(q, k, v, segments)
    pad = IDS < 0
    assert torch.isfinite(out).all() and (out.transpose(1, 2)[pad] == 0).all()
    with torch.no_grad():  # move every padding key and value far away
        k.transpose(1, 2)[pad] += 100.0
        v.transpose(1, 2)[pad] -= 100.0
    torch.testing.assert_close(packed_attention(q, k, v, segments), out, rtol=0, atol=0)


def test_packed_attention_allocates_no_sequence_squared_tensor():
    # 4096 tokens in samples of 256 and padding: an (L, L) mask is 16 MiB even as bools; a
    # sample's scores are 1/256 of that. The profiler's allocation events see every buffer,
    # kernel workspaces included; the dense path shows the check can fail.
    length = 4096
    ids = (torch.arange(length) // 256)[None]  # (1, L)
    ids[:, -100:] = -1
    q, k, v = _qkv((1, 4, length, 16))

    def largest_allocation(attention) -> int:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            attention(q, k, v).sum().backward()
        events = prof.profiler.kineto_results.events()
        return max(e.nbytes() for e in events if e.name() == "[memory]")

    assert largest_allocation(lambda *x: _dense_reference(*x, ids)) >= length * length
    packed = largest_allocation(lambda *x: packed_attention(*x, packed_segments(ids)))
    assert packed < length * length // 4


def _fake_varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k):
    """`varlen_attn`'s contract on a CPU: tokens (T, H, Dh), one softmax per cu_seqlens run."""
    assert q.ndim == 3 and cu_q.dtype == torch.int32 and torch.equal(cu_q, cu_k)
    starts, ends = cu_q[:-1].tolist(), cu_q[1:].tolist()
    assert max_q == max_k == max(e - s for s, e in zip(starts, ends, strict=True))
    runs = [
        F.scaled_dot_product_attention(*(x[s:e].transpose(0, 1) for x in (q, k, v))).transpose(0, 1)
        for s, e in zip(starts, ends, strict=True)
    ]
    return torch.cat(runs)  # (T, H, Dh)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("kernel", ["varlen", "flex"])
def test_gpu_kernels_compute_the_same_attention(monkeypatch, kernel):
    # No GPU here: run each GPU kernel's wrapping on the CPU, varlen through a reference of its
    # contract and flex attention uncompiled (forward only: it has no CPU backward).
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(nn_module, "attention_kernel", lambda *args: kernel)
    monkeypatch.setattr(nn_module, "_varlen_attn", _fake_varlen_attn)
    monkeypatch.setattr(nn_module, "_compiled_flex_attention", lambda: flex_attention)
    q, k, v = _qkv()
    segments = packed_segments(IDS)
    if kernel == "varlen":
        ours, exact = (
            _outputs_and_grads(attention, q, k, v, IDS)
            for attention in (
                lambda *x: packed_attention(*x, segments),
                lambda *x: _dense_reference(*x, IDS),
            )
        )
        torch.testing.assert_close(ours, exact)
        out = packed_attention(q, k, v, segments)
    else:
        q, k, v = (x.detach() for x in (q, k, v))
        out, real = packed_attention(q, k, v, segments), IDS >= 0
        expected = _dense_reference(q, k, v, IDS)
        torch.testing.assert_close(out.transpose(1, 2)[real], expected.transpose(1, 2)[real])
    assert (out.transpose(1, 2)[IDS < 0] == 0).all()


def test_attention_kernel_prefers_varlen_then_flex_then_segments(monkeypatch):
    cuda, cpu, bf16, fp32 = torch.device("cuda"), torch.device("cpu"), torch.bfloat16, torch.float32
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(nn_module, "_varlen_attn", _fake_varlen_attn)
    monkeypatch.setattr(nn_module, "_flex_on_cuda", True)
    assert attention_kernel(cuda, bf16, 64) == "varlen"
    assert attention_kernel(cuda, fp32, 64) == "flex"  # flash kernels take fp16 and bf16 only
    assert attention_kernel(cuda, bf16, 12) == "flex"  # nor head sizes off a multiple of 8
    assert attention_kernel(cpu, bf16, 64) == "segments"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert attention_kernel(cuda, bf16, 64) == "flex"  # flash needs Ampere or newer
    monkeypatch.setattr(nn_module, "_varlen_attn", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert attention_kernel(cuda, bf16, 64) == "flex"
    monkeypatch.setattr(nn_module, "_flex_on_cuda", False)
    assert attention_kernel(cuda, bf16, 64) == "segments"  # neither: the CPU path


def test_packed_attention_falls_back_to_segments_where_no_gpu_kernel_is(monkeypatch):
    # With neither GPU kernel available, a CUDA tensor would take the CPU path: run that
    # decision on CPU tensors by making `attention_kernel` see a CUDA device.
    monkeypatch.setattr(nn_module, "_varlen_attn", None)
    monkeypatch.setattr(nn_module, "_flex_on_cuda", False)
    seen = []
    real_kernel = nn_module.attention_kernel

    def as_if_cuda(device, dtype, head_dim):
        seen.append(real_kernel(torch.device("cuda"), dtype, head_dim))
        return seen[-1]

    monkeypatch.setattr(nn_module, "attention_kernel", as_if_cuda)
    q, k, v = _qkv()
    out = packed_attention(q, k, v, packed_segments(IDS))
    assert seen == ["segments"]
    real = IDS >= 0
    expected = _dense_reference(q, k, v, IDS)
    torch.testing.assert_close(out.transpose(1, 2)[real], expected.transpose(1, 2)[real])


def test_resolve_precision_picks_a_valid_precision_and_rejects_unknown_names():
    from kinetoscope.nn import bf16_is_fast, resolve_precision

    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    assert resolve_precision("auto") == ("bf16" if bf16_is_fast("cpu") else "fp32")
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        resolve_precision("fp16")
