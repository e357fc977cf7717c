"""A tiny randomly initialised text encoder with a byte-level tokenizer, for tests only.

Its embeddings mean nothing, but it keeps the whole contract of `TextEncoder` (shapes, mask,
padding, truncation, determinism) with no files and no extra packages, so every layer above
`text/` can be tested in milliseconds. Its weights are a pure function of its config: two
encoders built from the same config give identical embeddings.

Tokens: each UTF-8 byte `b` becomes `2 + b % (vocab - 2)`, then an end token (1) closes the
prompt; 0 is padding. The model: token + learned position embeddings, `layers` pre-norm blocks
of masked self-attention and an MLP, and a final LayerNorm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kinetoscope.text.base import TextEncoder, warn_truncated

PAD = 0
END = 1


@dataclass(frozen=True)
class TinyTextConfig:
    """Architecture and seed of a `TinyTextEncoder`."""

    dim: int = 32  # small enough for CPU tests, wide enough for a DiT's cross-attention
    vocab: int = 258  # 256 bytes + end + padding: every string has its own tokens
    max_length: int = 64  # tokens (bytes + end); test prompts are short
    layers: int = 1  # one attention layer, so each token depends on its context
    heads: int = 2  # dim / heads = 16 per head
    seed: int = 0  # the weights are a function of the config alone

    def __post_init__(self) -> None:
        if self.vocab < 3:
            raise ValueError(f"vocab must be at least 3 (padding, end, one byte), got {self.vocab}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {self.max_length}")
        if self.dim < 1 or self.dim % self.heads:
            raise ValueError(
                f"dim must be a positive multiple of heads={self.heads}, got {self.dim}"
            )


class _Block(nn.Module):
    """Pre-norm transformer block: masked self-attention, then an MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        n, s, d = x.shape  # (N, S, D)
        q, k, v = self.qkv(self.norm1(x)).view(n, s, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (N, heads, S, D / heads)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = x + self.proj(attn.transpose(1, 2).reshape(n, s, d))  # (N, S, D)
        return x + self.mlp(self.norm2(x))


class _TinyModel(nn.Module):
    def __init__(self, config: TinyTextConfig):
        super().__init__()
        self.tokens = nn.Embedding(config.vocab, config.dim)
        self.positions = nn.Embedding(config.max_length, config.dim)
        self.blocks = nn.ModuleList(_Block(config.dim, config.heads) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self._init_weights(config.seed)

    def _init_weights(self, seed: int) -> None:
        # All weights from one seeded generator, never the global RNG: the encoder is a
        # function of its config, and building one does not disturb anyone else's randomness.
        generator = torch.Generator().manual_seed(seed)
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif param.ndim == 1:  # LayerNorm scales
                nn.init.ones_(param)
            else:
                std = (
                    1.0
                    if "tokens" in name or "positions" in name
                    else 1 / math.sqrt(param.shape[1])
                )
                nn.init.normal_(param, std=std, generator=generator)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[1])
        x = self.tokens(ids) + self.positions(positions)[None]  # (N, S, D)
        for block in self.blocks:
            x = block(x, mask)  # (N, S, D)
        return self.norm(x)  # (N, S, D)


class TinyTextEncoder(TextEncoder):
    """A random encoder for tests: `TinyTextEncoder()`, `TinyTextEncoder(dim=16, seed=1)`."""

    def __init__(self, config: TinyTextConfig | None = None, **overrides: int):
        config = replace(config or TinyTextConfig(), **overrides)
        self.config = config
        self.dim = config.dim
        self.max_length = config.max_length
        self.model = _TinyModel(config).eval().requires_grad_(False)

    @property
    def identity(self) -> str:
        fields = ",".join(f"{k}={v}" for k, v in asdict(self.config).items())
        return f"tiny({fields})"

    def tokenize(self, prompt: str) -> list[int]:
        """Token ids of one prompt: bytes, then the end token; cut to `max_length`."""
        ids = [2 + b % (self.config.vocab - 2) for b in prompt.encode("utf-8")]
        return [*ids[: self.max_length - 1], END]

    def _encode_batch(self, prompts: list[str]) -> list[Tensor]:
        ids = [self.tokenize(p) for p in prompts]
        warn_truncated(
            sum(len(p.encode("utf-8")) + 1 > self.max_length for p in prompts), self.max_length
        )
        lengths = torch.tensor([len(i) for i in ids])  # (N,)
        padded = torch.full((len(ids), int(lengths.max())), PAD)  # (N, S)
        for row, row_ids in enumerate(ids):
            padded[row, : len(row_ids)] = torch.tensor(row_ids)
        mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]  # (N, S)
        hidden = self.model(padded, mask)  # (N, S, D)
        return [hidden[i, :n] for i, n in enumerate(lengths.tolist())]
