"""The diffusion transformer: packed noisy patch tokens + per-token timesteps + text -> velocity.

Read top to bottom: config (with its parameter and FLOP counts), presets, blocks, and the
model (its one weight-initialisation method, then its forward). One forward takes N packed
sequences of L tokens, each holding whole samples end to end (see `kinetoscope.patches.pack`):

    velocity = dit(
        x_t,             # (N, L, Din) noisy tokens, Din = latent channels x patch volume
        packed.coords,   # (N, L, 4) (sample, t, h, w); padding (-1, 0, 0, 0)
        t,               # (N, L) per-token timestep in [0, 1]; 0 for clean given tokens
        text, text_mask, # (B, S, Dtxt), (B, S) bool: one text row per sample
    )                    # -> (N, L, Din)

Design, in the order a token meets it:

- Per-token timesteps, adaLN-Zero modulation. Each token's t is embedded on its own, so
  samples at different noise levels and clean conditioning tokens (t = 0) share a sequence.
  The modulation follows adaLN-single (PixArt-alpha, Chen et al. 2023; also Wan and
  Open-Sora): one projection of the timestep embedding to 6 x D per token, shared by all
  blocks, plus a learned (6, D) table per block. Per-block projections (DiT's original
  adaLN) would cost 12 D^2 FLOPs per token per block, about 40% of a block's matmuls, as the
  timestep is per token; here that cost is paid once. Gates start at zero (adaLN-Zero), so a
  fresh model is the identity on its residual stream.
- Self-attention with 3D RoPE over each token's (t, h, w) coords and RMS-normalised q and k
  (stable logits in bf16; SD3, Wan), within each sample: a token sees only tokens of its own
  sample. The samples' segments are read from the sample column of coords once per forward
  and `kinetoscope.nn.packed_attention` attends inside each one (varlen or flex attention on
  a GPU, SDPA per segment on a CPU), so no (L, L) mask is built and attention costs the sum of
  the samples' squared lengths, not L^2.
- Cross-attention to the text of the token's own sample. The text is embedded, and projected
  to keys and values in each block, once per text token on its (B, S) rows; each run of
  tokens that reads one row (`sample_index`) then attends to that row's unmasked tokens only
  (`kinetoscope.nn.text_cross_attention`, one SDPA per run), so a token's cost is its own
  prompt's length, whatever else its sequence or batch holds, and no mask is built. Finding
  the runs takes one host sync per forward (a graph break under torch.compile). Tokens with
  no visible text (padding, empty prompts) get a zero text branch.
- MLP (GELU-tanh, see `kinetoscope.nn.MLP`), then a modulated final norm and a linear layer
  to the token width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from kinetoscope.nn import (
    MLP,
    MLPKind,
    PackedSegments,
    RMSNorm,
    TextRuns,
    TimestepEmbedder,
    apply_rope,
    masked_attention,
    modulate,
    packed_attention,
    packed_segments,
    rope_3d,
    rope_split,
    text_cross_attention,
    text_runs,
)
from kinetoscope.patches import DEFAULT_PATCH, PackedBatch


@dataclass
class DiTConfig:
    """Architecture of a `DiT`; the checkpoint carries it as JSON."""

    latent_channels: int = 16  # the VAE's latent channels (c of `c t h w`)
    patch: tuple[int, int, int] = DEFAULT_PATCH  # (pt, ph, pw): no patching in time (DiT, SD3)
    hidden_size: int = 768  # D, the residual width
    depth: int = 12  # number of blocks
    num_heads: int = 12  # head_dim = D / heads = 64, the width attention kernels favour
    mlp_ratio: float = 4.0  # MLP hidden width / D, as in ViT and DiT
    mlp: MLPKind = "gelu_tanh"  # see kinetoscope.nn.MLP; "swiglu" keeps params at 2/3 width
    text_dim: int = 384  # the text encoder's width (all-MiniLM-L6-v2, the offline default)
    qk_norm: bool = True  # RMSNorm on q and k per head: bounded logits, stable bf16 (SD3)
    rope_theta: float = 10_000.0  # RoFormer's base; positions are patch indices
    rope_split: tuple[int, int, int] | None = None  # channels per (t, h, w); None: Wan's split
    frequency_dim: int = 256  # sinusoidal timestep features before the MLP (DiT)
    norm_eps: float = 1e-6  # RMSNorm epsilon

    def __post_init__(self) -> None:
        self.patch = tuple(self.patch)
        if len(self.patch) != 3 or any(int(p) != p or p < 1 for p in self.patch):
            raise ValueError(
                f"patch must be three positive integers (pt, ph, pw), got {self.patch}"
            )
        for name in ("latent_channels", "hidden_size", "depth", "num_heads", "text_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                "choose heads that divide it (head_dim 64 is usual)"
            )
        if self.mlp not in ("gelu_tanh", "swiglu"):
            raise ValueError(f"mlp must be 'gelu_tanh' or 'swiglu', got {self.mlp!r}")
        if self.mlp_ratio <= 0 or self.frequency_dim < 2 or self.frequency_dim % 2:
            raise ValueError("mlp_ratio must be positive and frequency_dim a positive even number")
        self.rope_split = rope_split(self.head_dim, self.rope_split)  # checked, or the default

    @property
    def in_channels(self) -> int:
        """Token width Din = latent channels x patch volume (input and output)."""
        return self.latent_channels * math.prod(self.patch)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        """MLP hidden width; SwiGLU gets 2/3 of it (rounded up to a multiple of 8), which keeps
        its three matrices at the parameters and FLOPs of GELU's two."""
        hidden = int(self.hidden_size * self.mlp_ratio)
        return hidden if self.mlp == "gelu_tanh" else 8 * math.ceil(2 * hidden / 3 / 8)

    def num_params(self) -> int:
        """Parameter count, from the architecture alone (equals `DiT(config).num_params()`)."""
        d, din, txt, f = self.hidden_size, self.in_channels, self.text_dim, self.frequency_dim
        h = self.mlp_hidden
        mlp = 3 * d * h + 2 * h + d if self.mlp == "swiglu" else 2 * d * h + h + d
        qk = 4 * self.head_dim if self.qk_norm else 0  # q and k norms, self and cross
        block = (
            3 * d * d + 3 * d + d * d + d  # self-attention qkv and output
            + d * d + d + 2 * d * d + 2 * d + d * d + d  # cross-attention q, kv and output
            + qk + d  # qk norms and the cross-attention's input norm gain
            + mlp
            + 6 * d  # adaLN table
        )  # fmt: skip
        return (
            din * d + d  # patch embedding
            + f * d + d + d * d + d  # timestep MLP
            + d * 6 * d + 6 * d  # shared adaLN projection
            + txt * d + d + d * d + d  # text projection
            + self.depth * block
            + 2 * d + d * din + din  # final table and linear
        )  # fmt: skip

    def flops_per_token(
        self, seq_len: int, text_len: int = 0, sequence_text: int | None = None
    ) -> int:
        """Forward matmul FLOPs per token in a sequence of `seq_len` tokens (x3 for a training
        step), each attending to the `text_len` tokens of its own prompt, the sequence's
        samples holding `sequence_text` text tokens in all (default `text_len`: one sample).

        Counts every matmul a token goes through, 2 FLOPs per multiply-add: the linear layers,
        attention scores and weighted sums over `seq_len` keys and `text_len` text keys, and
        the text projection and text keys/values of the `sequence_text` tokens, spread over the
        sequence's tokens. Norms, RoPE, softmax and element-wise ops are left out.
        Self-attention computes only the keys of a token's own sample
        (`kinetoscope.nn.packed_attention`), so the count is exact for one sample per
        sequence, or under a dense attention_mask; a sequence of L tokens packed from samples
        of L_i tokens does 4 D depth (L^2 - sum L_i^2) fewer FLOPs than L times this count at
        seq_len = L.
        """
        sequence_text = text_len if sequence_text is None else sequence_text
        d, din, f, h = self.hidden_size, self.in_channels, self.frequency_dim, self.mlp_hidden
        mlp = (3 if self.mlp == "swiglu" else 2) * d * h
        per_token = din * d + f * d + d * d + 6 * d * d + d * din  # embed, t, adaLN, final
        per_token += self.depth * (6 * d * d + mlp)  # qkv, out, cross q and out, MLP
        attention = self.depth * 2 * d * (seq_len + text_len)  # q k^T and p v, self and cross
        text = sequence_text * (self.text_dim * d + d * d + self.depth * 2 * d * d)  # per sequence
        return 2 * (per_token + attention) + 2 * text // max(seq_len, 1)


# Sizes (text_dim 384, 16 latent channels, patch (1, 2, 2)), from `num_params` and
# `flops_per_token`: forward GFLOPs per token in a sequence of L tokens that attends to 128
# text tokens (a training step is 3x). At L=1024 FLOPs per token are close to 2 x params; at
# L=16384 (about 40 frames of 480p video) attention is most of the cost at every size.
#
# | preset | D    | depth | heads | params | GFLOP/token, L=1024 | L=16384 |
# |--------|------|-------|-------|--------|---------------------|---------|
# | tiny   | 64   | 2     | 4     | 0.19M  | 0.00092             | 0.0088  |  (text_dim 32)
# | mini   | 256  | 6     | 4     | 7.0M   | 0.019               | 0.11    |
# | small  | 384  | 12    | 6     | 30M    | 0.074               | 0.36    |
# | base   | 768  | 12    | 12    | 119M   | 0.25                | 0.82    |
# | large  | 1024 | 24    | 16    | 412M   | 0.85                | 2.3     |
# | xl     | 1152 | 28    | 16    | 607M   | 1.2                 | 3.2     |
DIT_PRESETS: dict[str, DiTConfig] = {
    # Tests: milliseconds per step on a CPU.
    "tiny": DiTConfig(latent_channels=4, hidden_size=64, depth=2, num_heads=4, text_dim=32),
    # CPU-sized, for 16-channel latents (step times in docs/benchmarks.md, "DiT training step").
    # mini-fine is mini with 1x1x1 patches: a token covers 8x8 pixels instead of 16x16, so on
    # the world's 48-128 px canvases an object spans several tokens and its motion is a shift
    # of whole tokens rather than a change inside one (4x mini's tokens for the same clip).
    "mini-fine": DiTConfig(hidden_size=256, depth=6, num_heads=4, patch=(1, 1, 1)),
    "mini": DiTConfig(hidden_size=256, depth=6, num_heads=4),
    # DiT's S, B, L and XL sizes (Peebles and Xie 2023), plus cross-attention: GPU training.
    "small": DiTConfig(hidden_size=384, depth=12, num_heads=6),
    "base": DiTConfig(hidden_size=768, depth=12, num_heads=12),
    "large": DiTConfig(hidden_size=1024, depth=24, num_heads=16),
    "xl": DiTConfig(hidden_size=1152, depth=28, num_heads=16),
}


# ---------------------------------------------------------------------------------------------
# Blocks


class SelfAttention(nn.Module):
    """Multi-head self-attention with QK-norm and 3D RoPE, within each packed sample.

    `attend` is the `PackedSegments` of the forward (`packed_attention`), or a dense boolean
    mask (N, L, L) a caller passed (`masked_attention`).
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(head_dim, eps) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim, eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, attend: PackedSegments | Tensor
    ) -> Tensor:
        n, seq, dim = x.shape
        qkv = self.qkv(x).view(n, seq, 3, self.num_heads, -1)  # (N, L, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (N, H, L, Dh) each
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        if isinstance(attend, PackedSegments):
            out = packed_attention(q, k, v, attend)  # (N, H, L, Dh)
        else:
            out = masked_attention(q, k, v, attend)  # (N, H, L, Dh)
        return self.proj(out.transpose(1, 2).reshape(n, seq, dim))  # (N, L, D)


class CrossAttention(nn.Module):
    """Multi-head attention from tokens to the text row of their own sample (`TextRuns`)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_norm = RMSNorm(head_dim, eps) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim, eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, text: Tensor, runs: TextRuns) -> Tensor:
        n, seq, dim = x.shape
        q = self.q(x).view(n, seq, self.num_heads, -1).transpose(1, 2)  # (N, H, L, Dh)
        kv = self.kv(text).unflatten(-1, (2, self.num_heads, -1))  # (B, S, 2, H, Dh)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, S, Dh) each: every text token once
        q, k = self.q_norm(q), self.k_norm(k)
        out = text_cross_attention(q, k, v, runs)  # (N, H, L, Dh)
        return self.proj(out.transpose(1, 2).reshape(n, seq, dim))  # (N, L, D)


class DiTBlock(nn.Module):
    """Modulated self-attention, cross-attention to text, modulated MLP; all residual."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        d, eps = config.hidden_size, config.norm_eps
        self.norm1 = RMSNorm(d, eps, elementwise_affine=False)  # modulation is the affine
        self.attn = SelfAttention(d, config.num_heads, config.qk_norm, eps)
        self.norm2 = RMSNorm(d, eps)
        self.cross_attn = CrossAttention(d, config.num_heads, config.qk_norm, eps)
        self.norm3 = RMSNorm(d, eps, elementwise_affine=False)
        self.mlp = MLP(d, config.mlp_hidden, config.mlp)
        # adaLN-single: this block's (shift, scale, gate) x (attention, MLP), added to the
        # model's shared per-token projection of the timestep embedding.
        self.modulation = nn.Parameter(torch.zeros(6, d))

    def forward(
        self,
        x: Tensor,
        mod: Tensor,
        cos: Tensor,
        sin: Tensor,
        attend: PackedSegments | Tensor,
        text: Tensor,
        runs: TextRuns,
    ) -> Tensor:
        mod = mod + self.modulation.to(mod.dtype)  # (N, L, 6, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(2)  # (N, L, D) each
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), cos, sin, attend)
        x = x + self.cross_attn(self.norm2(x), text, runs)
        return x + gate2 * self.mlp(modulate(self.norm3(x), shift2, scale2))  # (N, L, D)


class FinalLayer(nn.Module):
    """Modulated norm and a linear map from the residual width back to token width."""

    def __init__(self, dim: int, out_dim: int, eps: float) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, eps, elementwise_affine=False)
        self.modulation = nn.Parameter(torch.zeros(2, dim))  # (shift, scale), added to c
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = (c[..., None, :] + self.modulation.to(c.dtype)).unbind(-2)  # (N, L, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (N, L, Din)


# ---------------------------------------------------------------------------------------------
# The model


class DiT(nn.Module):
    """Diffusion transformer over packed spacetime-patch tokens; predicts the flow velocity."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.x_embedder = nn.Linear(config.in_channels, d)  # patch embedding (a strided Conv3d)
        self.t_embedder = TimestepEmbedder(d, config.frequency_dim)
        self.t_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))  # shared adaLN
        self.text_embedder = nn.Sequential(
            nn.Linear(config.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d)
        )
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        self.final = FinalLayer(d, config.in_channels, config.norm_eps)
        self.gradient_checkpointing = False  # recompute blocks in backward to save memory
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """All weight initialisation, in one place (DiT's `initialize_weights`, PixArt-alpha)."""
        # 1. Every linear layer: Xavier-uniform weights, zero biases (ViT, DiT). The patch
        #    embedding is a Linear over (c pt ph pw), i.e. DiT's flattened Conv3d weight.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # 2. Timestep MLP and text projection: normal(0, 0.02) (DiT; PixArt's caption projection).
        for mlp in (self.t_embedder.mlp, self.text_embedder):
            nn.init.normal_(mlp[0].weight, std=0.02)
            nn.init.normal_(mlp[2].weight, std=0.02)
        # 3. Norm gains start at one.
        for module in self.modules():
            if isinstance(module, RMSNorm) and module.weight is not None:
                nn.init.ones_(module.weight)
        # 4. adaLN-Zero: the shared modulation projection and every per-block table are zero,
        #    so shift = scale = gate = 0 for every token: each block's attention and MLP
        #    branch is multiplied by a zero gate and the block starts as the identity.
        nn.init.zeros_(self.t_modulation[1].weight)
        nn.init.zeros_(self.t_modulation[1].bias)
        for block in self.blocks:
            nn.init.zeros_(block.modulation)
            # 5. The text branch has no gate; its output projection starts at zero (PixArt).
            nn.init.zeros_(block.cross_attn.proj.weight)
        # 6. Final layer: zero table and zero linear, so a fresh model predicts velocity 0.
        nn.init.zeros_(self.final.modulation)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def num_params(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(
        self, seq_len: int, text_len: int = 0, sequence_text: int | None = None
    ) -> int:
        """Forward FLOPs per token; see `DiTConfig.flops_per_token`."""
        return self.config.flops_per_token(seq_len, text_len, sequence_text)

    def _check_inputs(
        self,
        tokens: Tensor,
        coords: Tensor,
        t: Tensor,
        text: Tensor,
        text_mask: Tensor,
        sample_index: Tensor,
        attention_mask: Tensor | None,
    ) -> None:
        cfg = self.config
        if tokens.ndim != 3 or tokens.shape[-1] != cfg.in_channels:
            raise ValueError(
                f"tokens must be (N, L, {cfg.in_channels}) (latent_channels {cfg.latent_channels} "
                f"x patch {cfg.patch}), got {tuple(tokens.shape)}; check the config against the "
                "VAE and patch size"
            )
        n, seq = tokens.shape[:2]
        expected = {  # name: (tensor, shape, hint)
            "coords": (coords, (n, seq, 4), ""),
            "t": (t, (n, seq), " (one timestep per token: see diffusion.token_timesteps)"),
            "sample_index": (sample_index, (n, seq), ""),
            "attention_mask": (attention_mask, (n, seq, seq), ""),
        }
        for name, (value, shape, hint) in expected.items():
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(
                    f"{name} must be {shape} for tokens {tuple(tokens.shape)}, got "
                    f"{tuple(value.shape)}{hint}"
                )
        if text.ndim != 3 or text.shape[-1] != cfg.text_dim:
            raise ValueError(
                f"text must be (B, S, {cfg.text_dim}), got {tuple(text.shape)}; set text_dim to "
                "the text encoder's width"
            )
        if text.shape[0] == 0 or text.shape[1] == 0:
            raise ValueError(
                "text needs at least one token per row and one row; mask unused ones out"
            )
        if tuple(text_mask.shape) != tuple(text.shape[:2]):
            raise ValueError(
                f"text_mask must be (B, S) = {tuple(text.shape[:2])}, got {tuple(text_mask.shape)}"
            )
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            raise ValueError("attention_mask must be bool (True = may attend)")
        checked = not torch.compiler.is_compiling() and sample_index.numel() > 0
        if checked and int(sample_index.max()) >= len(text):  # a host sync; skipped compiled
            raise ValueError(
                f"sample_index refers to text row {int(sample_index.max())} but text has "
                f"{len(text)} rows; pass one text row per sample"
            )

    def forward(
        self,
        tokens: Tensor,
        coords: Tensor,
        t: Tensor,
        text: Tensor,
        text_mask: Tensor,
        sample_index: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Velocity (N, L, Din) of noisy tokens (N, L, Din) at per-token timesteps t (N, L).

        coords (N, L, 4) = (sample, t, h, w), padding (-1, 0, 0, 0); text (B, S, Dtxt) with
        text_mask (B, S) (True = a real text token); sample_index (N, L): the text row of each
        token, -1 for none (default: the sample column of coords).

        Self-attention stays within each sample of the sample column of coords, whose tokens
        must be contiguous in their sequence (as `patches.pack` lays them out), with no (L, L)
        mask (`kinetoscope.nn.packed_attention`). attention_mask (N, L, L) bool replaces that
        with a dense mask (True = may attend; every row must allow some key): any pattern, at
        L^2 memory; `patches.block_attention_mask(coords[..., 0])` gives the default's
        velocities at every real token. Outputs at padding are defined (finite) but
        meaningless.
        """
        if sample_index is None:
            sample_index = coords[..., 0]
        self._check_inputs(tokens, coords, t, text, text_mask, sample_index, attention_mask)
        # Where each sample lies, read once for all blocks (a host sync), or the caller's mask.
        attend = packed_segments(coords[..., 0]) if attention_mask is None else attention_mask
        cfg = self.config
        x = self.x_embedder(tokens)  # (N, L, D)
        c = self.t_embedder(t)  # (N, L, D) one timestep embedding per token
        mod = self.t_modulation(c).unflatten(-1, (6, cfg.hidden_size))  # (N, L, 6, D)
        cos, sin = rope_3d(coords[..., 1:], cfg.head_dim, cfg.rope_theta, cfg.rope_split)
        cos, sin = cos[:, None], sin[:, None]  # (N, 1, L, Dh/2): shared by the heads
        y = self.text_embedder(text)  # (B, S, D): each text token once
        runs = text_runs(sample_index, text_mask)  # the tokens of each text row, read once
        for block in self.blocks:
            args = (x, mod, cos, sin, attend, y, runs)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, *args, use_reentrant=False)  # (N, L, D)
            else:
                x = block(*args)  # (N, L, D)
        return self.final(x, c)  # (N, L, Din)

    def forward_packed(
        self, x: Tensor, t: Tensor, packed: PackedBatch, text: Tensor, text_mask: Tensor
    ) -> Tensor:
        """`forward` with coords and sample ids from a `PackedBatch`; text row i is sample i.

        x (N, L, Din) are the noisy tokens (e.g. `diffusion.interpolate(packed.tokens, ...)`),
        t (N, L) their timesteps.
        """
        return self(x, packed.coords, t, text, text_mask, packed.sample_index)


__all__ = ["DIT_PRESETS", "DiT", "DiTBlock", "DiTConfig"]
