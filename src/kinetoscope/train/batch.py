"""One training batch of the DiT: captions dropped, given frames chosen, timesteps and noise
drawn, tokens packed and noised (`make_batch`); every draw from one generator, in a fixed order,
so a batch is a function of its seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kinetoscope.diffusion import (
    interpolate,
    token_timesteps,
    training_timesteps,
    velocity_target,
)
from kinetoscope.patches import PackedBatch, pack
from kinetoscope.text.base import TextEncoder


@dataclass
class TrainBatch:
    """One batch ready for the DiT: packed clean tokens, their noisy version and the target."""

    packed: PackedBatch
    x_t: Tensor  # (N, L, Din) noisy tokens; given tokens are clean
    t: Tensor  # (N, L) per-token timesteps; 0 on given tokens and padding
    target: Tensor  # (N, L, Din) velocity noise - x0
    text: Tensor  # (B, S, Dtxt) one caption per sample
    text_mask: Tensor  # (B, S) bool
    captions: list[str]  # after dropout ("" where dropped)


# Which temporal patches of a video are given when some are (Open-Sora-Plan's curriculum of
# masks): the first frame (image to video), a prefix (extend forward), a suffix (extend
# backward), both ends (connect, loop) or a block in the middle (keyframes).
GIVEN_MASKS = ("first", "prefix", "suffix", "ends", "middle")


def given_patches(kind: str, patches: int, fraction: float) -> list[int]:
    """The given temporal patches (of `patches` >= 2) for a mask of `GIVEN_MASKS`; `fraction`
    in [0, 1) sets how many, and at least one patch is always left to learn."""
    k = 1 + int(fraction * (patches - 1))  # 1 .. gt-1
    if kind == "first" or (kind in ("ends", "middle") and patches < 3):
        return [0]
    if kind == "prefix":
        return list(range(k))
    if kind == "suffix":
        return list(range(patches - k, patches))
    k = 1 + int(fraction * (patches - 2))  # 1 .. gt-2 given, split or in one block
    if kind == "ends":
        head = max(1, k // 2)
        return sorted({*range(head), *range(patches - max(1, k - head), patches)})
    start = 1 + int(fraction * (patches - 1 - k))  # a block that leaves both ends to learn
    return list(range(start, min(start + k, patches - 1)))


def make_batch(
    latents: list[Tensor],
    captions: list[str],
    text: TextEncoder,
    generator: torch.Generator,
    *,
    token_budget: int,
    sequences: int,
    patch: tuple[int, int, int],
    caption_dropout: float,
    given_prob: float,
    timestep_mean: float = 0.0,
    twin_of: list[int] | None = None,
    given_masks: tuple[str, ...] = GIVEN_MASKS,
) -> TrainBatch:
    """Pack latents (c, t, h, w) with their captions into a training batch, drawing from
    `generator` in a fixed order (dropout, given frames, timesteps, noise).

    `twin_of[i]` = j < i makes sample i (the same size as j) reuse j's draws: dropout, given
    frames, timestep and noise (-1: its own)."""
    n = len(latents)
    twin_of = twin_of or [-1] * n
    source = torch.tensor([i if j < 0 else j for i, j in enumerate(twin_of)])  # (n,)
    dropped = (torch.rand(n, generator=generator) < caption_dropout)[source]
    captions = ["" if drop else caption for drop, caption in zip(dropped, captions, strict=True)]
    # Given frames, one mask of `given_masks` each (by default every mode generation offers);
    # a sample always keeps some tokens to learn.
    wants, kinds, fractions = torch.rand(3, n, generator=generator)[:, source]  # (n,) each
    given_frames: list[list[int] | None] = []
    for i, latent in enumerate(latents):
        patches = latent.shape[1] // patch[0]  # gt
        if patches < 2 or not bool(wants[i] < given_prob):
            given_frames.append(None)
            continue
        kind = given_masks[int(kinds[i] * len(given_masks))]
        given = given_patches(kind, patches, float(fractions[i]))
        given_frames.append([p * patch[0] + f for p in given for f in range(patch[0])])
    packed = pack(latents, token_budget, patch, given_frames, num_sequences=sequences)
    t = training_timesteps(packed.lengths, timestep_mean, generator=generator)[source]  # (B,)
    t_tok = token_timesteps(t, packed.sample_index, packed.given_mask)  # (N, L)
    noise = torch.randn(packed.tokens.shape, generator=generator)  # (N, L, Din)
    for i, j in enumerate(twin_of):
        if j >= 0:  # the twin's tokens get its original's noise, token for token
            (si, ti), (sj, tj), length = packed.placement[i], packed.placement[j], packed.lengths[i]
            assert packed.lengths[j] == length, "twins must have the same size"
            noise[si, ti : ti + length] = noise[sj, tj : tj + length]
    x_t = interpolate(packed.tokens, noise, t_tok)
    emb, mask = text.encode(captions)  # (B, S, Dtxt), (B, S)
    return TrainBatch(
        packed, x_t, t_tok, velocity_target(packed.tokens, noise), emb, mask, captions
    )


__all__ = ["GIVEN_MASKS", "TrainBatch", "given_patches", "make_batch"]
