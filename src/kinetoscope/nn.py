"""Shared layers: RMSNorm, modulate, timestep embedding, MLP, 3D RoPE, masked attention.

The transformers in kinetoscope are built from these. Tensors follow DESIGN.md's vocabulary:
tokens `(N, L, D)`, attention heads `(N, H, L, Dh)`, positions `coords (..., L, 3)` = (t, h, w)
(the sample column of `PackedBatch.coords` is dropped before RoPE):

    cos, sin = rope_3d(coords[..., 1:], head_dim=64)      # (N, L, 32) each
    q = apply_rope(q, cos[:, None], sin[:, None])         # q (N, H, L, 64); the same for k
    out = masked_attention(q, k, v, mask)                 # mask (N, L, S) bool, True = may attend
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MLPKind = Literal["gelu_tanh", "swiglu"]


# ---------------------------------------------------------------------------------------------
# Normalisation and modulation


class RMSNorm(nn.Module):
    """RMS normalisation over the last axis (Zhang and Sennrich 2019), with an optional gain.

    Statistics are taken in float32 whatever the input dtype (bf16 sums of squares lose too
    much on wide layers); the output has the input's dtype.
    """

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: Tensor) -> Tensor:
        y = F.rms_norm(x.float(), (self.dim,), eps=self.eps)
        if self.weight is not None:
            y = y * self.weight.float()
        return y.to(x.dtype)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Adaptive affine transform `x * (1 + scale) + shift` (adaLN, Peebles and Xie 2023).

    shift and scale broadcast against x; for packed tokens x (N, L, D) they are per token
    (N, L, D), so every token can carry its own timestep.
    """
    return torch.addcmul(shift, x, 1 + scale)


# ---------------------------------------------------------------------------------------------
# Timestep embedding


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding (..., dim) of timesteps t (...): [cos(t f_i), sin(t f_i)].

    Frequencies f_i = max_period^(-i / (dim/2)), as in DiT and "Attention is all you need";
    computed in float32. Pass t on the scale the frequencies expect (e.g. 1000 t for t in
    [0, 1], so the fastest frequency turns about 1000 radians over the path).
    """
    if dim % 2:
        raise ValueError(f"timestep embedding size must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (dim/2,)
    angles = t.float()[..., None] * freqs  # (..., dim/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (..., dim)


class TimestepEmbedder(nn.Module):
    """Timesteps t in [0, 1] (any shape) -> vectors (..., hidden): sinusoids, then an MLP.

    t is scaled by `time_scale` (1000, the DiT/SD3 convention) before the sinusoids, so the
    same frequencies serve as for integer diffusion steps.
    """

    def __init__(
        self, hidden_size: int, frequency_dim: int = 256, time_scale: float = 1000.0
    ) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.time_scale = time_scale
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: Tensor) -> Tensor:
        freq = timestep_embedding(t * self.time_scale, self.frequency_dim)  # (..., F)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))  # (..., hidden)


# ---------------------------------------------------------------------------------------------
# MLP


class MLP(nn.Module):
    """Position-wise feed-forward network, GELU-tanh (default) or SwiGLU.

    GELU-tanh, `fc2(gelu(fc1 x))`, is the default: it is what the video and image DiTs we
    compare against use (DiT, SD3, Flux, Wan, HunyuanVideo), so their FLOP counts and weights
    map onto ours one to one, and it needs two matmuls, not three. SwiGLU (Shazeer 2020),
    `fc2(silu(gate x) * (up x))`, is the LLM choice and a small gain there at equal parameters;
    with `hidden = 2/3` of the GELU width it costs the same, so it is one switch away.
    """

    def __init__(self, dim: int, hidden: int, kind: MLPKind = "gelu_tanh") -> None:
        super().__init__()
        if kind not in ("gelu_tanh", "swiglu"):
            raise ValueError(f"MLP kind must be 'gelu_tanh' or 'swiglu', got {kind!r}")
        self.kind = kind
        # SwiGLU's gate and up projections are one matmul, split after.
        self.fc1 = nn.Linear(dim, hidden * (2 if kind == "swiglu" else 1))
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)  # (..., hidden) or (..., 2 hidden)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up  # (..., hidden)
        else:
            h = F.gelu(h, approximate="tanh")
        return self.fc2(h)  # (..., dim)


# ---------------------------------------------------------------------------------------------
# 3D rotary position embedding


def rope_split(head_dim: int, split: Sequence[int] | None = None) -> tuple[int, int, int]:
    """How a head's `head_dim` channels are shared by (t, h, w): `split` checked, or the default.

    The default gives h and w 2*(head_dim//6) channels each and t the rest (Wan's split):
    head_dim 64 -> (24, 20, 20); 128 -> (44, 42, 42); 16 -> (8, 4, 4).
    """
    if head_dim % 2 or head_dim < 2:
        raise ValueError(
            f"RoPE needs an even head dimension, got {head_dim}; change hidden_size or num_heads"
        )
    if split is None:
        hw = 2 * (head_dim // 6)
        return head_dim - 2 * hw, hw, hw
    if len(split) != 3 or any(int(s) != s or s < 0 or s % 2 for s in split):
        raise ValueError(f"rope split must be three even, non-negative ints (t, h, w), got {split}")
    if sum(split) != head_dim:
        raise ValueError(
            f"rope split {tuple(split)} must sum to the head dimension {head_dim}; "
            f"e.g. {rope_split(head_dim)}"
        )
    return int(split[0]), int(split[1]), int(split[2])


def rope_3d(
    coords: Tensor,
    head_dim: int,
    theta: float = 10_000.0,
    split: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """cos, sin (..., L, head_dim/2) of 3D rotary embeddings at positions coords (..., L, 3).

    coords are (t, h, w), integers or floats (in patch units). The head's channels are split
    over the three axes (`split`, checked by `rope_split`); axis a with d_a channels
    rotates its d_a/2 channel pairs by p_a * theta^(-2i/d_a), i < d_a/2 (Su et al. 2021, RoFormer,
    one 1D RoPE per axis). Pairs are adjacent channels (2j, 2j+1); the angles of an axis with
    no channels are absent. Computed in float32.
    """
    if coords.shape[-1] != 3:
        raise ValueError(f"rope_3d takes coords (..., L, 3) = (t, h, w), got {tuple(coords.shape)}")
    split = rope_split(head_dim, split)
    pos = coords.float()  # (..., L, 3)
    angles = []
    for axis, dim in enumerate(split):
        if dim == 0:
            continue
        exponent = torch.arange(0, dim, 2, dtype=torch.float32, device=coords.device) / dim
        freqs = theta**-exponent  # (dim/2,)
        angles.append(pos[..., axis, None] * freqs)  # (..., L, dim/2)
    angle = torch.cat(angles, dim=-1)  # (..., L, head_dim/2)
    return angle.cos(), angle.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (2j, 2j+1) of x (..., L, Dh) by the angles of cos, sin (..., L, Dh/2).

    cos and sin broadcast against x's leading axes (for heads (N, H, L, Dh) pass cos[:, None]).
    The rotation is done in float32 and returned in x's dtype.
    """
    if cos.shape[-1] * 2 != x.shape[-1]:
        raise ValueError(
            f"cos/sin hold {cos.shape[-1]} angles for head dimension {x.shape[-1]}; build them "
            "with rope_3d(coords, head_dim=x.shape[-1])"
        )
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., L, Dh/2, 2)
    x1, x2 = pairs.unbind(-1)  # (..., L, Dh/2) each
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (..., L, Dh/2, 2)
    return out.flatten(-2).to(x.dtype)  # (..., L, Dh)


# ---------------------------------------------------------------------------------------------
# Attention


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Softmax attention of q (N, H, L, Dh) over k, v (N, H, S, Dh); mask (N, L, S) bool.

    True in `mask` means "may attend". Every row must allow at least one key: an all-False
    row has no softmax, and kernels differ on what they return for it (the DiT avoids such
    rows). Dispatches to `scaled_dot_product_attention`, which on a CPU (and with a boolean
    mask on a GPU) runs the dense L x S product and masks it, so a block-diagonal mask costs
    as much as no mask.

    GPU: this is where a varlen kernel plugs in. Packed sequences hold whole samples end to
    end, so the block-diagonal self-attention mask is exactly "cumulative sequence lengths":
    `flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)`
    on tokens (total, H, Dh), with cu_seqlens from the run lengths of `sample_index`, skips the
    off-diagonal blocks entirely (cost sum_i L_i^2 instead of L^2); `flex_attention` with a
    `create_block_mask` from `sample_index` does the same under `torch.compile`.
    """
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"attention mask must be bool (True = may attend), got {mask.dtype}")
        if mask.ndim == 3:
            mask = mask[:, None]  # (N, 1, L, S): the same mask for every head
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (N, H, L, Dh)


__all__ = [
    "MLP",
    "MLPKind",
    "RMSNorm",
    "TimestepEmbedder",
    "apply_rope",
    "masked_attention",
    "modulate",
    "rope_3d",
    "rope_split",
    "timestep_embedding",
]


# --------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------

PRECISIONS = ("auto", "bf16", "fp32")
_FAST_BF16: dict[str, bool] = {}


def bf16_is_fast(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matmuls beat fp32 on `device` (measured once per device type on CPUs).

    GPUs that support bf16 are fast at it. CPUs differ by orders of magnitude: with AVX-512
    BF16 or AMX, bf16 autocast roughly doubles throughput; with AVX2 alone, PyTorch falls
    back to slow kernels and bf16 matmuls run 10-60x slower than fp32. A 20 ms probe decides.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    if "cpu" not in _FAST_BF16:
        seconds = {}
        for dtype in (torch.float32, torch.bfloat16):
            a = torch.ones(256, 256, dtype=dtype)
            a @ a  # warm-up
            start = time.perf_counter()
            for _ in range(4):
                a @ a
            seconds[dtype] = time.perf_counter() - start
        _FAST_BF16["cpu"] = seconds[torch.bfloat16] < seconds[torch.float32]
    return _FAST_BF16["cpu"]


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """Turn "auto" into "bf16" where bf16 is fast on `device`, else "fp32"; check the name."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return precision
