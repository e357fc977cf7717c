"""Shared layers: RMSNorm, modulate, timestep embedding, MLP, 3D RoPE, masked attention."""

import math

import pytest
import torch
import torch.nn.functional as F

from kinetoscope.nn import (
    MLP,
    RMSNorm,
    TimestepEmbedder,
    apply_rope,
    masked_attention,
    modulate,
    rope_3d,
    rope_split,
    timestep_embedding,
)


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


def test_resolve_precision_picks_a_valid_precision_and_rejects_unknown_names():
    from kinetoscope.nn import bf16_is_fast, resolve_precision

    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    assert resolve_precision("auto") == ("bf16" if bf16_is_fast("cpu") else "fp32")
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        resolve_precision("fp16")
