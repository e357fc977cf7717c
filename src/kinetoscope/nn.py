"""Shared layers: RMSNorm, modulate, timestep embedding, MLP, 3D RoPE, attention.

The transformers in kinetoscope are built from these. Tensors follow DESIGN.md's vocabulary:
tokens `(N, L, D)`, attention heads `(N, H, L, Dh)`, positions `coords (..., L, 3)` = (t, h, w)
(the sample column of `PackedBatch.coords` is dropped before RoPE):

    cos, sin = rope_3d(coords[..., 1:], head_dim=64)      # (N, L, 32) each
    q = apply_rope(q, cos[:, None], sin[:, None])         # q (N, H, L, 64); the same for k
    segments = packed_segments(coords[..., 0])            # once per forward (a host read)
    out = packed_attention(q, k, v, segments)             # (N, H, L, 64), within each sample
    out = masked_attention(q, text_k, text_v, mask)       # mask (N, L, S) bool: short S only
"""

from __future__ import annotations

import functools
import importlib.util
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
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
    rows). Dispatches to `scaled_dot_product_attention`, which runs the dense L x S product and
    masks it: a block-diagonal mask costs as much as no mask, and the mask itself is L x S.
    Fine for a short S (text); self-attention over packed samples is `packed_attention`.
    """
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"attention mask must be bool (True = may attend), got {mask.dtype}")
        if mask.ndim == 3:
            mask = mask[:, None]  # (N, 1, L, S): the same mask for every head
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (N, H, L, Dh)


@dataclass(frozen=True, eq=False)
class PackedSegments:
    """Where the samples of N packed sequences of L tokens lie, read once per forward.

    A segment is the run of one sample's tokens in a sequence: `patches.pack` lays samples end
    to end, then padding (sample id -1). Built by `packed_segments`, shared by every layer; each
    kernel of `packed_attention` reads the form it needs: run lengths per sequence (SDPA per
    segment), the real tokens and their cumulative lengths (varlen), or the ids (flex).
    """

    sample_ids: Tensor  # (N, L) long on the tokens' device; -1 at padding
    lengths: tuple[tuple[int, ...], ...]  # per sequence: its runs' lengths, summing to L
    real: tuple[tuple[bool, ...], ...]  # per sequence and run: a sample (True) or padding
    tokens: Tensor  # (T,) long: flat positions in N*L of the T real tokens, in order
    cu_seqlens: Tensor  # (M+1,) int32: where each of the M segments starts among the T
    max_length: int  # the longest segment (0 when there are none)

    @functools.cached_property
    def block_mask(self):
        """flex attention's `BlockMask` of "same sample, not padding"; built once, on first use."""
        from torch.nn.attention.flex_attention import create_block_mask

        ids = self.sample_ids

        def same_sample(b, h, q, kv):
            return (ids[b, q] == ids[b, kv]) & (ids[b, q] >= 0)

        n, length = ids.shape
        # Compiled, the mask is evaluated block by block; eager, it would be (L, L) at once.
        return create_block_mask(
            same_sample, n, None, length, length, device=ids.device, _compile=ids.is_cuda
        )


def _runs(ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The runs of equal values in each row of ids (N, L) on the host: each run's value, its
    sequence and its length, (R,) each, in order (a run starts at each sequence and change)."""
    n, length = ids.shape
    change = torch.ones(n, length, dtype=torch.bool)
    change[:, 1:] = ids[:, 1:] != ids[:, :-1]
    starts = change.flatten().nonzero().squeeze(1)  # (R,) flat start of every run
    lengths = torch.diff(starts, append=torch.tensor([n * length]))  # (R,)
    return ids.flatten()[starts], starts // max(length, 1), lengths


def packed_segments(sample_ids: Tensor) -> PackedSegments:
    """The segments of N packed sequences with sample ids (N, L), -1 at padding.

    Each sample's tokens must be contiguous in its sequence, as `patches.pack` lays them out
    (the same id may recur in other sequences, e.g. the two halves of a guided batch). The ids
    are read on the host: one device sync per call, so call it once per forward.
    """
    ids = sample_ids.detach().long().cpu()  # (N, L)
    run_ids, run_seqs, lengths = _runs(ids)  # (R,) each
    real = run_ids >= 0  # (R,)
    _check_contiguous(run_seqs[real], run_ids[real])
    per_sequence = torch.bincount(run_seqs, minlength=len(ids)).tolist()
    cu_seqlens = torch.zeros(int(real.sum()) + 1, dtype=torch.int32)  # (M+1,)
    cu_seqlens[1:] = lengths[real].cumsum(0)
    tokens = (ids.flatten() >= 0).nonzero().squeeze(1)  # (T,)
    device = sample_ids.device
    return PackedSegments(
        sample_ids=sample_ids,
        lengths=tuple(tuple(part.tolist()) for part in lengths.split(per_sequence)),
        real=tuple(tuple(part.tolist()) for part in real.split(per_sequence)),
        tokens=tokens.to(device),
        cu_seqlens=cu_seqlens.to(device),
        max_length=int(lengths[real].max()) if real.any() else 0,
    )


def _check_contiguous(run_seqs: Tensor, run_ids: Tensor) -> None:
    """Raise if a sample has two runs (R,) in one sequence: its tokens are not contiguous."""
    keys = torch.stack([run_seqs, run_ids], dim=1)  # (R, 2)
    unique, counts = keys.unique(dim=0, return_counts=True)
    if (counts > 1).any():
        seq, sample = unique[counts > 1][0].tolist()
        raise ValueError(
            f"the tokens of sample {sample} are not contiguous in sequence {seq}; packed "
            "attention needs each sample's tokens side by side, as patches.pack lays them out: "
            "reorder the tokens with their coords, or pass a dense attention_mask"
        )


def _load_varlen_attention():
    """PyTorch's variable-length flash attention, or None where this build has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn if torch.backends.cuda.is_flash_attention_available() else None


_varlen_attn = _load_varlen_attention()
# flex attention is fast only compiled, and on a GPU that takes Triton.
_flex_on_cuda = all(
    importlib.util.find_spec(name) for name in ("triton", "torch.nn.attention.flex_attention")
)


def attention_kernel(device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """The kernel `packed_attention` runs on `device` in `dtype`: "varlen", "flex" or "segments".

    On CUDA: PyTorch's variable-length flash attention (`torch.nn.attention.varlen`: fp16 or
    bf16, head_dim a multiple of 8 up to 256, Ampere or newer), else compiled flex attention
    with a block mask from the sample ids. Anywhere else, or where neither is available: SDPA
    over each segment (`_segment_attention`).
    """
    if device.type == "cuda":
        flash_ok = dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0
        flash_ok = (
            flash_ok and head_dim <= 256 and torch.cuda.get_device_capability(device) >= (8, 0)
        )
        if _varlen_attn is not None and flash_ok:
            return "varlen"
        if _flex_on_cuda:
            return "flex"
    return "segments"


def packed_attention(q: Tensor, k: Tensor, v: Tensor, segments: PackedSegments) -> Tensor:
    """Softmax attention of q, k, v (N, H, L, Dh) within each sample of packed sequences.

    A token attends to the tokens of its own sample only, the block-diagonal pattern of
    `patches.block_attention_mask`, but no (L, L) tensor is built: work and memory follow the
    samples (the sum of L_i^2), not the sequence (L^2). Padding attends to nothing, is attended
    to by nothing, and outputs zeros. `attention_kernel` picks the kernel.
    """
    kernel = attention_kernel(q.device, q.dtype, q.shape[-1])
    if kernel == "varlen":
        return _varlen_attention(q, k, v, segments)
    if kernel == "flex":
        return _compiled_flex_attention()(q, k, v, block_mask=segments.block_mask)
    return _segment_attention(q, k, v, segments)


def _segment_attention(q: Tensor, k: Tensor, v: Tensor, segments: PackedSegments) -> Tensor:
    """`packed_attention` as one dense SDPA per segment: the CPU path, and the fallback.

    On a CPU this beat the alternatives we measured (4k tokens of 512-token samples, forward
    and backward): 8x the dense masked SDPA and 5x SDPA over nested jagged tensors (which
    runs the math kernel); flex attention has no CPU backward. Splits are views and their backward is one concatenation, so autograd adds no L-sized
    copies per segment; padding runs are zeros, with no attention computed. Segments stay 4-D
    (1, H, L_i, Dh): SDPA's fused CPU kernel takes those (3-D inputs go to the math kernel,
    which builds the L_i x L_i scores).
    """
    rows = zip(q.split(1), k.split(1), v.split(1), segments.lengths, segments.real, strict=True)
    out = []
    for qn, kn, vn, split, real in rows:  # (1, H, L, Dh) each: one sequence
        pieces = zip(qn.split(split, 2), kn.split(split, 2), vn.split(split, 2), real, strict=True)
        out.append(
            torch.cat(
                [
                    F.scaled_dot_product_attention(qs, ks, vs) if sample else torch.zeros_like(vs)
                    for qs, ks, vs, sample in pieces
                ],
                dim=2,
            )  # (1, H, L, Dh)
        )
    return torch.cat(out)  # (N, H, L, Dh)


def _varlen_attention(q: Tensor, k: Tensor, v: Tensor, segments: PackedSegments) -> Tensor:
    """`packed_attention` by `varlen_attn` over the real tokens; padding rows are zeros."""
    n, heads, length, head_dim = q.shape
    if segments.max_length == 0:
        return torch.zeros_like(v)

    def real_tokens(x: Tensor) -> Tensor:
        return x.transpose(1, 2).reshape(n * length, heads, head_dim)[segments.tokens]  # (T, H, Dh)

    cu, most = segments.cu_seqlens, segments.max_length
    out = _varlen_attn(real_tokens(q), real_tokens(k), real_tokens(v), cu, cu, most, most)
    full = out.new_zeros(n * length, heads, head_dim).index_copy(0, segments.tokens, out)
    return full.view(n, length, heads, head_dim).transpose(1, 2)  # (N, H, L, Dh)


@functools.cache
def _compiled_flex_attention():
    """flex attention compiled once (uncompiled, it builds the full score matrix)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@dataclass(frozen=True)
class TextRuns:
    """Runs of tokens that read the same text row, per packed sequence: what cross-attention
    attends over (`text_cross_attention`). Built by `text_runs`, shared by every layer."""

    lengths: tuple[tuple[int, ...], ...]  # per sequence: its runs' lengths, summing to L
    rows: tuple[tuple[int, ...], ...]  # per sequence and run: its text row, -1 for none
    visible: tuple[tuple[int, ...], ...]  # per text row: the positions of its unmasked tokens


def text_runs(sample_index: Tensor, text_mask: Tensor) -> TextRuns:
    """The runs of equal text rows in sample_index (N, L) (-1: no text) and each row's unmasked
    tokens in text_mask (B, S). Read on the host: one device sync, so call it once per forward.
    A row may recur in several runs and sequences (samples sharing a prompt)."""
    ids = sample_index.detach().long().cpu()  # (N, L)
    rows, run_seqs, lengths = _runs(ids)  # (R,) each
    rows = rows.clamp(min=-1)
    per_sequence = torch.bincount(run_seqs, minlength=len(ids)).tolist()
    mask = text_mask.detach().bool().cpu()  # (B, S)
    return TextRuns(
        lengths=tuple(tuple(part.tolist()) for part in lengths.split(per_sequence)),
        rows=tuple(tuple(part.tolist()) for part in rows.split(per_sequence)),
        visible=tuple(tuple(row.nonzero().squeeze(1).tolist()) for row in mask),
    )


def text_cross_attention(q: Tensor, k: Tensor, v: Tensor, runs: TextRuns) -> Tensor:
    """Attention of tokens q (N, H, L, Dh) to text keys and values k, v (B, H, S, Dh): each run
    of tokens attends to the unmasked tokens of its own text row only, so a token's cost is its
    row's S keys whatever else its sequence holds. Runs with no row, or a row with no unmasked
    token, output zeros. One SDPA per run (a row's keys are sliced once per call)."""
    k, v = k.to(q.dtype), v.to(q.dtype)  # SDPA takes one dtype; cast once, not per run
    keys: dict[int, tuple[Tensor, Tensor] | None] = {}

    def row_keys(row: int) -> tuple[Tensor, Tensor] | None:
        if row not in keys:
            visible = runs.visible[row] if row >= 0 else ()
            if not visible:
                keys[row] = None
            elif len(visible) == k.shape[2]:
                keys[row] = (k[row : row + 1], v[row : row + 1])  # (1, H, S, Dh) views
            else:
                index = torch.tensor(visible, device=k.device)
                keys[row] = (k[row : row + 1, :, index], v[row : row + 1, :, index])
        return keys[row]

    out = []
    for n, (lengths, rows) in enumerate(zip(runs.lengths, runs.rows, strict=True)):
        pieces = []
        for qs, row in zip(q[n : n + 1].split(lengths, 2), rows, strict=True):  # (1, H, Li, Dh)
            kv = row_keys(row)
            pieces.append(torch.zeros_like(qs) if kv is None else F.scaled_dot_product_attention(
                qs, *kv))  # fmt: skip
        out.append(torch.cat(pieces, dim=2))  # (1, H, L, Dh)
    return torch.cat(out)  # (N, H, L, Dh)


__all__ = [
    "MLP",
    "MLPKind",
    "PackedSegments",
    "RMSNorm",
    "TextRuns",
    "TimestepEmbedder",
    "apply_rope",
    "attention_kernel",
    "masked_attention",
    "modulate",
    "packed_attention",
    "packed_segments",
    "rope_3d",
    "rope_split",
    "text_cross_attention",
    "text_runs",
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
