"""The one text-encoder interface, and the padding helpers every encoder shares.

    embeddings, mask = encoder.encode(["a red circle moves right", "a blue square falls"])
    # embeddings (N, S, D) float32 on the CPU; mask (N, S) bool

The contract, for every encoder:

- `S` is the longest prompt of the batch in tokens (special tokens included), at most
  `encoder.max_length`. Batches are padded to their longest prompt, not to `max_length`:
  captions run to tens of tokens against limits of 256 or 512, the DiT's cross-attention takes
  the mask, so a variable `S` changes nothing but the cost, and fixed-length padding would make
  every cross-attention pay for `max_length` keys.
- `mask` is True on a prefix of each row (the prompt's tokens) and False on the padding after
  it. Every row has at least one True: an empty prompt still has its special tokens, so masked
  attention never meets a row with no keys.
- Padding positions of `embeddings` hold zeros.
- A prompt longer than `max_length` tokens is truncated to it (the tokenizer keeps its end
  token) and a `UserWarning` says so.
- Results are deterministic and carry no autograd history. Encoding runs under
  `torch.no_grad()`, not `inference_mode()`: inference tensors cannot be saved for backward,
  and the DiT's cross-attention projections must save their text input to train.

`empty()` is the embedding of the empty prompt, the "unconditional" branch of classifier-free
guidance; `concat_text` pads batches of different `S` to one, e.g. to put the conditional and
unconditional prompts in one doubled batch.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """`prompts` as a list after checking it is a non-empty list of strings."""
    if isinstance(prompts, str):
        raise ValueError(f"pass a list of prompts, e.g. [{prompts!r}], not a single string")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("pass at least one prompt (use [''] for the empty prompt)")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise ValueError(f"prompts must be strings; got {type(bad[0]).__name__}: {bad[0]!r}")
    return prompts


def pad_embeddings(items: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack per-prompt embeddings `(S_i, D)` into `(N, S, D)` zeros-padded and a `(N, S)` mask."""
    assert items, "pad_embeddings needs at least one item"
    lengths = [item.shape[0] for item in items]
    dim = items[0].shape[1]
    assert all(n >= 1 for n in lengths), "every prompt has at least one token"
    assert all(item.shape[1] == dim for item in items), "one width D for the batch"
    out = items[0].new_zeros(len(items), max(lengths), dim)  # (N, S, D)
    for i, item in enumerate(items):
        out[i, : item.shape[0]] = item
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]  # (N, S)
    return out, mask


def concat_text(parts: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Concatenate `(embeddings (N_k, S_k, D), mask (N_k, S_k))` batches along N.

    Shorter batches are padded with zeros and False up to the longest `S_k`. For guidance:
    `concat_text([encoder.encode(prompts), (e.expand(n, -1, -1), m.expand(n, -1))])` with
    `e, m = encoder.empty()` gives the conditional half first, the unconditional half second.
    """
    if not parts:
        raise ValueError("concat_text needs at least one (embeddings, mask) pair")
    length = max(emb.shape[1] for emb, _ in parts)
    embs, masks = [], []
    for emb, mask in parts:
        assert emb.shape[:2] == mask.shape, f"embeddings {emb.shape} do not match mask {mask.shape}"
        pad = length - emb.shape[1]
        embs.append(torch.nn.functional.pad(emb, (0, 0, 0, pad)))  # (N_k, S, D)
        masks.append(torch.nn.functional.pad(mask, (0, pad), value=False))  # (N_k, S)
    return torch.cat(embs), torch.cat(masks)


def warn_truncated(count: int, max_length: int) -> None:
    """Warn that `count` prompts were cut to `max_length` tokens (one message, so it dedupes)."""
    if count:
        warnings.warn(
            f"prompts longer than max_length={max_length} tokens were truncated to it; "
            "shorten them or load the encoder with a larger max_length",
            UserWarning,
            stacklevel=4,
        )


class TextEncoder(ABC):
    """A frozen text encoder: prompts in, token embeddings and a mask out (see the module doc).

    Subclasses set `dim` (D) and `max_length` (the most tokens per prompt), implement
    `_encode_batch` and `identity`; the base class checks input, batches, pads and caches the
    empty prompt.
    """

    dim: int  # D, the width of each token embedding
    max_length: int  # the most tokens per prompt, special tokens included
    batch_size: int = 64  # prompts per forward pass: bounds memory when encoding a dataset

    @property
    @abstractmethod
    def identity(self) -> str:
        """A string that changes whenever the encoder's outputs could: the embedding-cache key."""

    @abstractmethod
    def _encode_batch(self, prompts: list[str]) -> list[Tensor]:
        """Per-prompt embeddings `(S_i, D)`, float32 on the CPU, trimmed to each prompt's tokens."""

    def encode_each(self, prompts: Sequence[str]) -> list[Tensor]:
        """Per-prompt embeddings `(S_i, D)` trimmed to each prompt's true length, in order."""
        prompts = check_prompts(prompts)
        out: list[Tensor] = []
        with torch.no_grad():
            for start in range(0, len(prompts), self.batch_size):
                out.extend(self._encode_batch(prompts[start : start + self.batch_size]))
        return out

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Embeddings `(N, S, D)` float32 (zeros at padding) and mask `(N, S)`, True on tokens."""
        return pad_embeddings(self.encode_each(prompts))

    def empty(self) -> tuple[Tensor, Tensor]:
        """The empty prompt's embeddings `(1, S, D)` and mask `(1, S)`, for guidance (cached)."""
        cached = getattr(self, "_empty", None)
        if cached is None:
            cached = self._empty = self.encode([""])
        return cached[0].clone(), cached[1].clone()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, max_length={self.max_length})"
