"""Spacetime patches, packing and the token-budget batch sampler."""

import math

import pytest
import torch
import torch.nn.functional as F

from kinetoscope.patches import (
    DEFAULT_PATCH,
    TokenBudgetBatchSampler,
    block_attention_mask,
    given_token_mask,
    grid_coords,
    item_tokens,
    latent_size,
    pack,
    padding_fraction,
    patch_grid,
    patchify,
    plan_sequences,
    unpack,
    unpatchify,
)

# Ragged latents (c, t, h, w): images (t = 1) and videos, odd token counts, one tiny.
RAGGED = [(4, 1, 6, 10), (4, 5, 8, 12), (4, 3, 2, 2), (4, 1, 2, 14), (4, 9, 4, 6), (4, 2, 6, 6)]


def _latents(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g) for s in shapes]


@pytest.mark.parametrize("patch", [(1, 2, 2), (1, 1, 1), (2, 2, 2), (2, 4, 2)])
def test_patchify_round_trip_and_token_contents(patch):
    pt, ph, pw = patch
    latent = torch.randn(3, 4, 8, 12)
    tokens, coords = patchify(latent, patch, sample=5)
    gt, gh, gw = 4 // pt, 8 // ph, 12 // pw
    assert tokens.shape == (gt * gh * gw, 3 * pt * ph * pw) and coords.shape == (len(tokens), 4)
    assert (coords[:, 0] == 5).all()
    assert torch.equal(unpatchify(tokens, (gt, gh, gw), patch), latent)
    # Every token holds exactly the voxels its coords point at, in (c pt ph pw) order.
    for k in torch.randperm(len(tokens))[:10].tolist():
        _, t, h, w = coords[k].tolist()
        block = latent[:, t * pt : (t + 1) * pt, h * ph : (h + 1) * ph, w * pw : (w + 1) * pw]
        assert torch.equal(tokens[k], block.reshape(-1))


def test_token_layout_matches_a_strided_conv3d():
    latent = torch.randn(4, 3, 6, 8)
    conv = torch.nn.Conv3d(4, 16, kernel_size=(1, 2, 2), stride=(1, 2, 2), bias=False)
    tokens, coords = patchify(latent, (1, 2, 2))
    linear = tokens @ conv.weight.reshape(16, -1).T  # (L, 16)
    expected = conv(latent[None])[0]  # (16, t, h, w)
    t, h, w = coords[:, 1:].T
    torch.testing.assert_close(linear, expected[:, t, h, w].T)


def test_unpatchify_from_coords_in_any_order():
    latent = torch.randn(2, 2, 4, 6)
    tokens, coords = patchify(latent)
    perm = torch.randperm(len(tokens))
    assert torch.equal(unpatchify(tokens[perm], coords[perm], DEFAULT_PATCH), latent)
    duplicated = coords.clone()
    duplicated[1] = duplicated[0]
    with pytest.raises(ValueError, match="exactly once"):
        unpatchify(tokens, duplicated)


def test_grid_coords_are_t_major():
    coords = grid_coords((2, 3, 4), sample=1)
    flat = (coords[:, 1] * 3 + coords[:, 2]) * 4 + coords[:, 3]
    assert torch.equal(flat, torch.arange(24)) and (coords[:, 0] == 1).all()


def test_invalid_shapes_say_what_to_change():
    with pytest.raises(ValueError, match="not divisible by the patch"):
        patchify(torch.zeros(4, 1, 5, 8))
    with pytest.raises(ValueError, match="not divisible by the patch"):
        patchify(torch.zeros(4, 3, 4, 4), patch=(2, 2, 2))
    with pytest.raises(ValueError, match=r"\(c, t, h, w\)"):
        patchify(torch.zeros(1, 4, 1, 4, 4))
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        latent_size(8, 64, 64)
    with pytest.raises(ValueError, match="multiples of 8"):
        latent_size(17, 60, 64)
    with pytest.raises(ValueError, match="three positive integers"):
        patch_grid((1, 4, 4), (1, 0, 2))
    with pytest.raises(ValueError, match="width"):
        unpatchify(torch.zeros(6, 7), (1, 2, 3))


def test_item_tokens_agrees_with_patchify():
    for frames, height, width in [(1, 64, 96), (17, 64, 96), (33, 48, 128), (5, 16, 16)]:
        t, h, w = latent_size(frames, height, width)
        assert (t, h, w) == (1 + (frames - 1) // 4, height // 8, width // 8)
        tokens, _ = patchify(torch.zeros(4, t, h, w))
        assert item_tokens(frames, height, width) == len(tokens)


@pytest.mark.parametrize("budget", [None, 140, 200, 400])
def test_pack_unpack_round_trip_on_ragged_inputs(budget):
    latents = _latents(RAGGED)
    packed = pack(latents, token_budget=budget)
    budget = budget or max(packed.lengths)
    assert packed.tokens.shape[1:] == (budget, 16)
    back = unpack(packed)
    assert all(torch.equal(a, b) for a, b in zip(back, latents, strict=True))
    # Each sample is one contiguous run of its own tokens, with its own coords.
    for i, latent in enumerate(latents):
        seq, start = packed.placement[i]
        tokens, coords = patchify(latent, sample=i)
        assert torch.equal(packed.tokens[seq, start : start + len(tokens)], tokens)
        assert torch.equal(packed.coords[seq, start : start + len(tokens)], coords)
    counts = torch.bincount(packed.sample_index[packed.valid_mask], minlength=len(latents))
    assert counts.tolist() == packed.lengths
    assert sorted(i for seq in packed.sequences for i in seq) == list(range(len(latents)))
    # Padding is zero tokens at coords (-1, 0, 0, 0).
    pad = ~packed.valid_mask
    assert (packed.tokens[pad] == 0).all() and (packed.coords[pad][:, 1:] == 0).all()


def test_unpack_model_output_of_another_width():
    latents = _latents(RAGGED[:3])
    packed = pack(latents, token_budget=256)
    doubled = torch.cat([packed.tokens, 2 * packed.tokens], dim=-1)  # (N, L, 2D): 8 channels
    back = unpack(packed, doubled)
    for a, b in zip(back, latents, strict=True):
        assert a.shape == (8, *b.shape[1:])
        assert torch.equal(a[:4], b) and torch.equal(a[4:], 2 * b)


def test_attention_blocks_never_cross_samples():
    packed = pack(_latents(RAGGED), token_budget=200)
    mask = block_attention_mask(packed.sample_index)
    index = packed.sample_index
    same = index[:, :, None] == index[:, None, :]
    real = (index >= 0)[:, :, None] & (index >= 0)[:, None, :]
    assert torch.equal(mask & real, same & real)  # real tokens see exactly their own sample
    assert not (mask & (index >= 0)[:, :, None] & (index < 0)[:, None, :]).any()  # nor padding
    assert mask.any(dim=-1).all()  # no empty row (would make softmax NaN)


def test_pack_lays_each_sample_out_contiguously_then_padding():
    # Packed attention (kinetoscope.nn.packed_attention) relies on this layout: in each
    # sequence, every sample is one run of tokens, and padding comes only after the samples.
    packed = pack(_latents(RAGGED), token_budget=200, num_sequences=5)
    for seq, members in enumerate(packed.sequences):
        ids = packed.sample_index[seq]
        runs, counts = torch.unique_consecutive(ids, return_counts=True)
        real = runs[runs >= 0].tolist()
        assert real == members and len(set(real)) == len(real)
        assert counts[: len(real)].tolist() == [packed.lengths[i] for i in members]
        assert (ids[sum(packed.lengths[i] for i in members) :] == -1).all()


def test_packed_attention_equals_attention_per_sample():
    latents = _latents(RAGGED, seed=1)
    packed = pack(latents, token_budget=200)
    q, k, v = (packed.tokens * s for s in (1.0, 0.5, -1.0))
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=block_attention_mask(packed.sample_index)
    )
    assert torch.isfinite(out).all()
    for i in range(packed.num_samples):
        x = packed.sample_tokens(i)[None]
        alone = F.scaled_dot_product_attention(x, 0.5 * x, -x)[0]
        torch.testing.assert_close(packed.sample_tokens(i, out), alone)


def test_padding_fraction_counts_padding_slots():
    packed = pack(_latents(RAGGED), token_budget=160)
    slots = packed.num_sequences * packed.sequence_length
    assert packed.padding_fraction == pytest.approx((~packed.valid_mask).sum().item() / slots)
    assert packed.padding_fraction == pytest.approx(
        padding_fraction(packed.lengths, packed.num_sequences, packed.sequence_length)
    )
    fixed = pack(_latents(RAGGED), token_budget=160, num_sequences=packed.num_sequences + 2)
    assert fixed.num_sequences == packed.num_sequences + 2
    assert fixed.padding_fraction > packed.padding_fraction
    assert not fixed.valid_mask[-2:].any()
    with pytest.raises(ValueError, match="num_sequences"):
        pack(_latents(RAGGED), token_budget=160, num_sequences=1)
    with pytest.raises(ValueError, match="exceeds the token budget"):
        pack(_latents(RAGGED), token_budget=100)


def test_plan_sequences_is_a_valid_first_fit_packing():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        lengths = torch.randint(
            1, 100, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g
        )
        lengths = lengths.tolist()
        plan = plan_sequences(lengths, 100)
        assert sorted(i for seq in plan for i in seq) == list(range(len(lengths)))
        loads = [sum(lengths[i] for i in seq) for seq in plan]
        assert max(loads) <= 100 and len(plan) >= math.ceil(sum(lengths) / 100)
        assert sum(load <= 50 for load in loads) <= 1  # first fit: at most one half-empty
    # A perfect packing exists and first-fit decreasing finds it.
    assert len(plan_sequences([3, 7, 5, 5, 6, 4], 10)) == 3


def test_given_frames_mark_tokens_and_leave_the_loss():
    latents = _latents(RAGGED)
    given = [[0], None, [-1], [0], [0, -1], []]
    packed = pack(latents, token_budget=200, given_frames=given)
    for i, frames in enumerate(given):
        num_frames = latents[i].shape[1]
        expected = {f % num_frames for f in frames or []}
        tok_given = packed.sample_tokens(i, packed.given_mask[..., None])[:, 0]
        tok_t = packed.sample_tokens(i, packed.coords)[:, 1]
        assert tok_given.tolist() == [t in expected for t in tok_t.tolist()]
    assert not (packed.loss_mask & packed.given_mask).any()
    assert torch.equal(packed.loss_mask | packed.given_mask, packed.valid_mask)
    with pytest.raises(ValueError, match="temporal patch"):
        given_token_mask((2, 1, 1), (2, 2, 2), [0])
    assert given_token_mask((2, 1, 3), (2, 2, 2), [2, 3]).tolist() == [False] * 3 + [True] * 3
    with pytest.raises(ValueError, match="out of range"):
        pack(latents[:1], given_frames=[[1]])
    with pytest.raises(ValueError, match="entries"):
        pack(latents[:2], given_frames=[[0]])


def test_per_token_spreads_sample_values():
    packed = pack(_latents(RAGGED), token_budget=200)
    values = torch.arange(len(RAGGED), dtype=torch.float32) + 1
    spread = packed.per_token(values, fill=-5.0)
    assert torch.equal(spread[packed.valid_mask], values[packed.sample_index[packed.valid_mask]])
    assert (spread[~packed.valid_mask] == -5).all()
    pairs = packed.per_token(torch.stack([values, -values], dim=1))  # (N, L, 2)
    assert pairs.shape == (*packed.sample_index.shape, 2)
    assert torch.equal(pairs[..., 1], -pairs[..., 0])


# ---------------------------------------------------------------------------------------------
# Token-budget batch sampler
# ---------------------------------------------------------------------------------------------


def _mixed_counts(n=600, seed=0):
    """Token counts of a mix of images and videos of several sizes."""
    g = torch.Generator().manual_seed(seed)
    sizes = [(1, 64, 64), (1, 128, 96), (17, 64, 96), (9, 96, 128), (33, 64, 64), (1, 48, 80)]
    picks = torch.randint(len(sizes), (n,), generator=g).tolist()
    return [item_tokens(*sizes[p]) for p in picks]


def test_sampler_batches_cover_the_epoch_and_fit():
    counts = _mixed_counts()
    sampler = TokenBudgetBatchSampler(counts, token_budget=1024, sequences_per_batch=4, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(counts)))
    fills = []
    for batch in batches:
        plan = plan_sequences([counts[i] for i in batch], 1024)
        assert len(plan) <= 4  # what pack(..., num_sequences=4) will need
        fills.append(sum(counts[i] for i in batch) / (4 * 1024))
    # Every batch but the epoch's last (whatever is left over) is nearly full.
    assert min(fills[:-1]) > 0.97, fills
    assert 1 - sum(fills[:-1]) / len(fills[:-1]) < 0.01
    assert len(sampler) == len(batches) and sampler.epoch == 1


def test_sampler_drives_a_dataloader_that_packs():
    sizes = [(17, 64, 96), (1, 64, 64), (9, 96, 128), (1, 48, 80), (5, 16, 32)] * 6

    class Latents(torch.utils.data.Dataset):  # stands in for a dataset of encoded videos
        def __len__(self):
            return len(sizes)

        def __getitem__(self, i):
            return torch.full((4, *latent_size(*sizes[i])), float(i))

    counts = [item_tokens(*s) for s in sizes]
    sampler = TokenBudgetBatchSampler(counts, token_budget=300, sequences_per_batch=2, seed=0)
    loader = torch.utils.data.DataLoader(
        Latents(), batch_sampler=sampler, collate_fn=lambda xs: pack(xs, 300, num_sequences=2)
    )
    seen = []
    for packed in loader:
        assert packed.tokens.shape[:2] == (2, 300)
        seen += [int(x[0, 0, 0, 0]) for x in unpack(packed)]
    assert sorted(seen) == list(range(len(sizes))) and len(loader) == len(sampler)


def test_sampler_is_deterministic_and_seeded():
    counts = _mixed_counts(200)

    def epochs(seed, n=2):
        sampler = TokenBudgetBatchSampler(counts, 1024, 2, seed=seed)
        return [list(sampler) for _ in range(n)]

    first = epochs(0)
    assert first == epochs(0)
    assert first[0] != first[1]  # a new order each epoch
    assert first != epochs(1)
    ordered = list(TokenBudgetBatchSampler(counts, 1024, 2, shuffle=False))
    assert ordered[0][0] == 0


def test_sampler_resumes_mid_epoch():
    counts = _mixed_counts(300)
    sampler = TokenBudgetBatchSampler(counts, 1024, 2, seed=7)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2)
    it = iter(sampler)
    head = [next(it) for _ in range(5)]
    state = sampler.state_dict()
    resumed = TokenBudgetBatchSampler(counts, 1024, 2, seed=7)
    resumed.load_state_dict(state)
    assert head + list(resumed) == full
    # A DataLoader fetches ahead: the loop saves how many batches it consumed.
    resumed.load_state_dict(sampler.state_dict(position=3))
    assert list(resumed) == full[3:]
    other = TokenBudgetBatchSampler(counts[:-1], 1024, 2, seed=7)
    with pytest.raises(ValueError, match="num_items"):
        other.load_state_dict(state)


def test_sampler_shards_across_ranks():
    counts = _mixed_counts(250)
    ranks = [
        TokenBudgetBatchSampler(counts, 1024, 1, seed=1, rank=r, world_size=3) for r in range(3)
    ]
    per_rank = [list(s) for s in ranks]
    assert len({len(b) for b in per_rank}) == 1  # ranks step together
    items = [i for batches in per_rank for b in batches for i in b]
    assert len(items) == len(set(items))
    single = TokenBudgetBatchSampler(counts, 1024, 1, seed=1).plan(0)
    assert len(items) == sum(len(b) for b in single[: 3 * len(per_rank[0])])


def test_sampler_rejects_items_over_budget():
    with pytest.raises(ValueError, match="raise the budget"):
        TokenBudgetBatchSampler([10, 5000, 20], token_budget=1024)
