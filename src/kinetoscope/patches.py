"""Spacetime patches: latent videos <-> packed token sequences, coords and masks.

A latent video `c t h w` is cut into patches of `pt x ph x pw` latent voxels; each patch is one
token of width `c * pt * ph * pw`. Tokens are laid out t-major (then h, then w), and the
feature order inside a token is `(c pt ph pw)`, the layout of a `Conv3d` weight, so a linear
patch embedding equals a strided `Conv3d`. An image is a video of one latent frame.

Where a token sits is said only by its integer coords `(sample, t, h, w)`, in patch units.
Differently-sized videos are packed into sequences of `token_budget` tokens each:

    packed = pack(latents, token_budget=1024, given_frames=[[0], None, ...])
    packed.tokens            # (N, L, D)  N sequences of L = token_budget tokens
    packed.coords            # (N, L, 4)  (sample, t, h, w); padding is (-1, 0, 0, 0)
    packed.sample_index      # (N, L)     which sample each token is; attention stays inside it
    packed.loss_mask         # (N, L)     real tokens that are not given
    unpack(packed, velocity) # list of (c, t, h, w), one per input latent, in input order

`TokenBudgetBatchSampler` chooses which dataset items go into one such batch from per-item
token counts alone (see `item_tokens`), deterministically and resumably.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

Patch = tuple[int, int, int]
Grid = tuple[int, int, int]

DEFAULT_PATCH: Patch = (1, 2, 2)  # (pt, ph, pw): the DiT/SD3 choice, no patching in time
TIME_FACTOR = 4  # the VAE's temporal compression: 1 + 4k frames -> 1 + k latent frames
SPACE_FACTOR = 8  # the VAE's spatial compression


# ---------------------------------------------------------------------------------------------
# Sizes: pixels -> latent -> tokens, computed without decoding anything
# ---------------------------------------------------------------------------------------------


def _check_patch(patch: Sequence[int]) -> Patch:
    if len(patch) != 3 or any(int(p) != p or p < 1 for p in patch):
        raise ValueError(f"patch must be three positive integers (pt, ph, pw), got {patch}")
    return int(patch[0]), int(patch[1]), int(patch[2])


def latent_size(
    frames: int,
    height: int,
    width: int,
    time_factor: int = TIME_FACTOR,
    space_factor: int = SPACE_FACTOR,
) -> Grid:
    """Latent (t, h, w) of a pixel video of `frames` frames of `height x width`.

    Frame counts are `1 + time_factor * k` (the first frame is coded alone); height and width
    are multiples of `space_factor`.
    """
    if frames < 1 or (frames - 1) % time_factor:
        raise ValueError(
            f"a video must have 1 + {time_factor}k frames (1, {1 + time_factor}, "
            f"{1 + 2 * time_factor}, ...), got {frames}; trim it to the nearest such count"
        )
    if height < 1 or width < 1 or height % space_factor or width % space_factor:
        raise ValueError(
            f"height and width must be positive multiples of {space_factor}, got "
            f"{height}x{width}; crop to a multiple of {space_factor}"
        )
    return 1 + (frames - 1) // time_factor, height // space_factor, width // space_factor


def patch_grid(size: Sequence[int], patch: Sequence[int] = DEFAULT_PATCH) -> Grid:
    """Patch grid (gt, gh, gw) of a latent of size (t, h, w); each side must divide evenly."""
    pt, ph, pw = _check_patch(patch)
    t, h, w = size
    if t % pt or h % ph or w % pw or min(t, h, w) < 1:
        raise ValueError(
            f"latent size (t, h, w) = {tuple(size)} is not divisible by the patch {(pt, ph, pw)}; "
            "choose a pixel size (and frame count) whose latent is a multiple of the patch"
        )
    return t // pt, h // ph, w // pw


def item_tokens(
    frames: int,
    height: int,
    width: int,
    patch: Sequence[int] = DEFAULT_PATCH,
    time_factor: int = TIME_FACTOR,
    space_factor: int = SPACE_FACTOR,
) -> int:
    """Token count of a pixel video of `frames x height x width` (no decoding needed)."""
    gt, gh, gw = patch_grid(latent_size(frames, height, width, time_factor, space_factor), patch)
    return gt * gh * gw


# ---------------------------------------------------------------------------------------------
# Patchify / unpatchify one latent video
# ---------------------------------------------------------------------------------------------


def grid_coords(grid: Sequence[int], sample: int = 0, device=None) -> Tensor:
    """Integer coords (L, 4) = (sample, t, h, w) of a patch grid, in token (t-major) order."""
    gt, gh, gw = grid
    index = torch.arange(gt * gh * gw, device=device)  # (L,) flat t-major grid position
    columns = [torch.full_like(index, sample), index // (gh * gw), index // gw % gh, index % gw]
    return torch.stack(columns, dim=1)  # (L, 4)


def patchify(
    latent: Tensor, patch: Sequence[int] = DEFAULT_PATCH, sample: int = 0
) -> tuple[Tensor, Tensor]:
    """Cut a latent video (c, t, h, w) into tokens (L, c*pt*ph*pw) and coords (L, 4)."""
    if latent.ndim != 4:
        raise ValueError(f"patchify takes one latent video (c, t, h, w), got shape {latent.shape}")
    pt, ph, pw = _check_patch(patch)
    grid = patch_grid(latent.shape[1:], patch)
    # Two copies with long contiguous runs are ~3x faster on a CPU than one 7-axis permute.
    rows = rearrange(latent, "c (t pt) (h ph) w -> t h c pt ph w", pt=pt, ph=ph).contiguous()
    tokens = rearrange(rows, "t h c pt ph (w pw) -> (t h w) (c pt ph pw)", pw=pw)  # (L, D)
    return tokens, grid_coords(grid, sample, device=latent.device)


def unpatchify(
    tokens: Tensor,
    layout: Sequence[int] | Tensor,
    patch: Sequence[int] = DEFAULT_PATCH,
    channels: int | None = None,
) -> Tensor:
    """Inverse of `patchify`: tokens (L, D) -> latent (c, t, h, w).

    `layout` is the patch grid (gt, gh, gw), for tokens in patchify's order, or coords (L, 4)
    (or (L, 3) without the sample column) for tokens in any order; then every grid position
    must appear exactly once. `channels` defaults to D / (pt*ph*pw).
    """
    pt, ph, pw = _check_patch(patch)
    if tokens.ndim != 2:
        raise ValueError(f"unpatchify takes tokens (L, D) of one sample, got {tokens.shape}")
    volume = pt * ph * pw
    if channels is None:
        if tokens.shape[1] % volume:
            raise ValueError(f"token width {tokens.shape[1]} is not a multiple of {volume}")
        channels = tokens.shape[1] // volume
    if tokens.shape[1] != channels * volume:
        raise ValueError(
            f"token width {tokens.shape[1]} != channels {channels} x patch volume {volume}"
        )
    if isinstance(layout, Tensor):
        thw = layout[:, -3:].long()  # (L, 3)
        if thw.shape[0] != tokens.shape[0]:
            raise ValueError(f"{thw.shape[0]} coords for {tokens.shape[0]} tokens")
        gt, gh, gw = (int(n) + 1 for n in thw.max(dim=0).values)
        order = (thw[:, 0] * gh + thw[:, 1]) * gw + thw[:, 2]  # flat grid position per token
        if thw.min() < 0 or gt * gh * gw != len(order) or len(torch.unique(order)) != len(order):
            raise ValueError("coords must cover a (t, h, w) grid with each position exactly once")
        tokens = torch.empty_like(tokens).index_copy_(0, order, tokens)
    else:
        gt, gh, gw = layout
        if gt * gh * gw != tokens.shape[0]:
            raise ValueError(f"grid {tuple(layout)} holds {gt * gh * gw}, not {len(tokens)} tokens")
    return rearrange(
        tokens,
        "(t h w) (c pt ph pw) -> c (t pt) (h ph) (w pw)",
        t=gt,
        h=gh,
        w=gw,
        c=channels,
        pt=pt,
        ph=ph,
        pw=pw,
    )


def given_token_mask(
    grid: Sequence[int], patch: Sequence[int], frames: Sequence[int] | None
) -> Tensor:
    """Boolean (L,) mask of the tokens of the given (known, clean) latent frames.

    `frames` are latent frame indices; negative ones count from the end (-1 is the last). With
    pt > 1 a token spans pt latent frames, so given frames must cover whole temporal patches.
    """
    gt, gh, gw = grid
    pt = _check_patch(patch)[0]
    num_frames = gt * pt
    frame_given = torch.zeros(num_frames, dtype=torch.bool)
    for f in frames or ():
        if not -num_frames <= f < num_frames:
            raise ValueError(
                f"given frame {f} is out of range for a latent of {num_frames} frames; "
                f"use an index in [{-num_frames}, {num_frames})"
            )
        frame_given[f] = True
    per_patch = frame_given.view(gt, pt)  # (gt, pt)
    if (per_patch.any(1) != per_patch.all(1)).any():
        raise ValueError(
            f"given frames {list(frames or ())} cut through a temporal patch of {pt} latent "
            f"frames; give all {pt} frames of a patch or none"
        )
    return per_patch.all(1).repeat_interleave(gh * gw)  # (L,)


# ---------------------------------------------------------------------------------------------
# Packing: which samples share a sequence
# ---------------------------------------------------------------------------------------------


def _first_fit(lengths: Sequence[int], order: Sequence[int], capacity: int) -> list[list[int]]:
    """Each item (in `order`) goes to the first sequence with room, else to a new one."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def plan_sequences(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Assign items of `lengths` tokens to sequences of `capacity`: a list of item indices each.

    First-fit decreasing (Johnson 1973), or first-fit in the given order where that needs fewer
    sequences; a batch of `TokenBudgetBatchSampler` was formed first-fit in its order, so it
    always fits in the sequences the sampler planned. Deterministic; ties keep input order.
    Items inside a sequence, and sequences by their first item, are in input order.
    """
    if any(n > capacity for n in lengths):
        raise ValueError(
            f"an item of {max(lengths)} tokens exceeds the token budget {capacity}; "
            "raise the token budget or use smaller videos"
        )
    if any(n < 1 for n in lengths):
        raise ValueError("every item needs at least one token")
    decreasing = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins = _first_fit(lengths, decreasing, capacity)
    in_order = _first_fit(lengths, range(len(lengths)), capacity)
    if len(in_order) < len(bins):
        bins = in_order
    return sorted((sorted(b) for b in bins), key=lambda b: b[0])


# ---------------------------------------------------------------------------------------------
# Packed batches
# ---------------------------------------------------------------------------------------------


def block_attention_mask(sample_index: Tensor) -> Tensor:
    """Block-diagonal mask (N, L, L) from sample_index (N, L): True where attention is allowed.

    A token attends only to tokens of its own sample. Padding (index -1) attends only to
    padding, so no row is empty (an all-False row makes softmax attention NaN) and no real token
    ever sees padding. For `scaled_dot_product_attention` add a head axis: `mask[:, None]`.

    The dense reference of the DiT's self-attention: it takes L^2 memory, so the DiT attends
    within samples with `kinetoscope.nn.packed_attention` instead, which needs no mask.
    """
    return sample_index[:, :, None] == sample_index[:, None, :]


@dataclass
class PackedBatch:
    """Variable-size latent videos packed into N sequences of L tokens, with their layout."""

    tokens: Tensor  # (N, L, D) patch tokens; zeros at padding
    coords: Tensor  # (N, L, 4) long (sample, t, h, w); padding is (-1, 0, 0, 0)
    given_mask: Tensor  # (N, L) bool: clean conditioning tokens (timestep 0, no loss)
    grids: list[Grid]  # per sample: its patch grid (gt, gh, gw)
    placement: list[tuple[int, int]]  # per sample: (sequence, index of its first token)
    patch: Patch
    channels: int  # latent channels c; D = c * pt * ph * pw

    @property
    def sample_index(self) -> Tensor:
        """(N, L) long: which input latent each token comes from; -1 at padding."""
        return self.coords[..., 0]

    @property
    def valid_mask(self) -> Tensor:
        """(N, L) bool: real (non-padding) tokens."""
        return self.sample_index >= 0

    @property
    def loss_mask(self) -> Tensor:
        """(N, L) bool: tokens that carry loss (real and not given)."""
        return self.valid_mask & ~self.given_mask

    @property
    def lengths(self) -> list[int]:
        """Tokens per sample, in input order."""
        return [gt * gh * gw for gt, gh, gw in self.grids]

    @property
    def num_samples(self) -> int:
        return len(self.grids)

    @property
    def num_sequences(self) -> int:
        return self.tokens.shape[0]

    @property
    def sequence_length(self) -> int:
        return self.tokens.shape[1]

    @property
    def sequences(self) -> list[list[int]]:
        """Sample indices in each sequence, in token order."""
        out: list[list[tuple[int, int]]] = [[] for _ in range(self.num_sequences)]
        for i, (seq, start) in enumerate(self.placement):
            out[seq].append((start, i))
        return [[i for _, i in sorted(seq)] for seq in out]

    @property
    def padding_fraction(self) -> float:
        """Fraction of the N x L token slots that are padding."""
        return 1.0 - sum(self.lengths) / (self.num_sequences * self.sequence_length)

    def per_token(self, values: Tensor, fill: float = 0) -> Tensor:
        """Spread per-sample values (num_samples, ...) to tokens (N, L, ...); padding gets fill.

        E.g. per-sample timesteps or timestep shifts; `values` may hold trailing axes.
        """
        if values.shape[0] != self.num_samples:
            raise ValueError(f"need one value per sample ({self.num_samples}), got {values.shape}")
        index = self.sample_index.to(values.device)
        out = values[index.clamp(min=0)]  # (N, L, ...)
        pad = ~(index >= 0)
        return out.masked_fill(pad.view(*pad.shape, *([1] * (out.ndim - 2))), fill)

    def sample_tokens(self, i: int, tokens: Tensor | None = None) -> Tensor:
        """The (L_i, D) tokens of sample i, from `tokens` (N, L, D) or the packed ones."""
        tokens = self.tokens if tokens is None else tokens
        seq, start = self.placement[i]
        return tokens[seq, start : start + self.lengths[i]]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        """A copy with its tensors on `device`."""
        return replace(
            self,
            tokens=self.tokens.to(device, non_blocking=non_blocking),
            coords=self.coords.to(device, non_blocking=non_blocking),
            given_mask=self.given_mask.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> PackedBatch:
        """A copy in pinned memory (a DataLoader with `pin_memory=True` calls this)."""
        return replace(
            self,
            tokens=self.tokens.pin_memory(),
            coords=self.coords.pin_memory(),
            given_mask=self.given_mask.pin_memory(),
        )


def pack(
    latents: Sequence[Tensor],
    token_budget: int | None = None,
    patch: Sequence[int] = DEFAULT_PATCH,
    given_frames: Sequence[Sequence[int] | None] | None = None,
    num_sequences: int | None = None,
) -> PackedBatch:
    """Patchify latent videos (c, t_i, h_i, w_i) and pack them into sequences of token_budget.

    Samples are assigned to sequences by `plan_sequences`; each sample's tokens stay contiguous
    in one sequence. `token_budget` defaults to the longest sample (no sample is split).
    `given_frames[i]` lists latent frame indices of sample i that are known (conditioning);
    their tokens are marked in `given_mask`. `num_sequences` pads the batch with empty
    sequences up to a fixed N (same shapes every step, e.g. across ranks).
    """
    if len(latents) == 0:
        raise ValueError("pack needs at least one latent video")
    patch = _check_patch(patch)
    if given_frames is not None and len(given_frames) != len(latents):
        raise ValueError(f"given_frames has {len(given_frames)} entries for {len(latents)} latents")
    channels = latents[0].shape[0] if latents[0].ndim == 4 else -1
    if any(x.ndim != 4 or x.shape[0] != channels for x in latents):
        shapes = [tuple(x.shape) for x in latents]
        raise ValueError(f"latents must all be (c, t, h, w) with the same c, got {shapes}")
    pieces = [patchify(x, patch, sample=i) for i, x in enumerate(latents)]
    grids = [patch_grid(x.shape[1:], patch) for x in latents]
    lengths = [len(tok) for tok, _ in pieces]
    budget = max(lengths) if token_budget is None else int(token_budget)
    plan = plan_sequences(lengths, budget)
    if num_sequences is not None:
        if len(plan) > num_sequences:
            raise ValueError(
                f"{len(latents)} samples need {len(plan)} sequences of {budget} tokens, more "
                f"than num_sequences={num_sequences}; raise it or pass fewer samples"
            )
        plan += [[] for _ in range(num_sequences - len(plan))]

    first = pieces[0][0]
    tokens = first.new_zeros(len(plan), budget, first.shape[1])  # (N, L, D)
    coords = torch.zeros(len(plan), budget, 4, dtype=torch.long, device=first.device)
    coords[..., 0] = -1
    given = torch.zeros(len(plan), budget, dtype=torch.bool, device=first.device)
    placement: list[tuple[int, int]] = [(-1, -1)] * len(latents)
    for seq, members in enumerate(plan):
        start = 0
        for i in members:
            tok, xyz = pieces[i]
            end = start + len(tok)
            tokens[seq, start:end] = tok
            coords[seq, start:end] = xyz
            frames = None if given_frames is None else given_frames[i]
            given[seq, start:end] = given_token_mask(grids[i], patch, frames)
            placement[i] = (seq, start)
            start = end
    return PackedBatch(tokens, coords, given, grids, placement, patch, channels)


def unpack(packed: PackedBatch, tokens: Tensor | None = None) -> list[Tensor]:
    """Latent videos (c, t, h, w) in input order, from `tokens` (N, L, D') or packed.tokens.

    `tokens` is typically a model's output over the packed sequences (a velocity); its width
    D' may differ from the input's, and sets c = D' / (pt*ph*pw).
    """
    tokens = packed.tokens if tokens is None else tokens
    if tokens.shape[:2] != packed.tokens.shape[:2]:
        raise ValueError(
            f"tokens {tuple(tokens.shape)} do not match the packing {packed.tokens.shape}"
        )
    return [
        unpatchify(packed.sample_tokens(i, tokens), grid, packed.patch)
        for i, grid in enumerate(packed.grids)
    ]


# ---------------------------------------------------------------------------------------------
# Token-budget batch sampler
# ---------------------------------------------------------------------------------------------


class TokenBudgetBatchSampler:
    """Batches of dataset indices whose items pack into `sequences_per_batch` x `token_budget`.

    Works from per-item token counts only (`item_tokens` of each item's pixel size), so images
    and videos of any size mix freely. Each epoch the items are shuffled (seeded by `seed` and
    the epoch), then batches are filled first-fit from that stream: an item that fits in none of
    the batch's sequences waits, with up to `lookahead` others, for the next batch, which it
    heads. `pack(..., token_budget, num_sequences=sequences_per_batch)` of a batch always fits.

    Use as a DataLoader `batch_sampler`. With `world_size > 1` rank r takes every world_size-th
    batch, and the epoch is cut to a multiple of world_size batches so ranks step together.
    Resumable mid-epoch: `state_dict` / `load_state_dict` save the epoch and the number of
    batches done in it. An exhausted iteration moves on to the next epoch.
    """

    def __init__(
        self,
        token_counts: Sequence[int],
        token_budget: int,
        sequences_per_batch: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        lookahead: int = 64,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        counts = np.asarray(token_counts, dtype=np.int64)
        if counts.ndim != 1 or len(counts) == 0:
            raise ValueError("token_counts must be a non-empty list of per-item token counts")
        if counts.min() < 1:
            raise ValueError(f"item {int(counts.argmin())} has no tokens; drop it from the dataset")
        if counts.max() > token_budget:
            raise ValueError(
                f"item {int(counts.argmax())} has {int(counts.max())} tokens, more than the token "
                f"budget {token_budget}; raise the budget or drop the item"
            )
        if sequences_per_batch < 1 or lookahead < 0:
            raise ValueError("sequences_per_batch must be >= 1 and lookahead >= 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
        self.token_counts = counts
        self.token_budget = int(token_budget)
        self.sequences_per_batch = int(sequences_per_batch)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.lookahead = int(lookahead)
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0  # batches of this rank already yielded in this epoch
        self._plan_cache: tuple[int, list[list[int]]] | None = None

    def _fill(self, pending: deque[int]) -> list[int]:
        """Take one batch from the front of `pending`: first-fit into the batch's sequences."""
        counts, budget = self.token_counts, self.token_budget
        smallest = int(counts.min())
        room: list[int] = []
        batch: list[int] = []
        waiting: list[int] = []
        while pending and len(waiting) <= self.lookahead:
            i = pending.popleft()
            n = int(counts[i])
            for b, free in enumerate(room):
                if n <= free:
                    room[b] -= n
                    break
            else:
                if len(room) == self.sequences_per_batch:
                    waiting.append(i)
                    continue
                room.append(budget - n)
            batch.append(i)
            if len(room) == self.sequences_per_batch and max(room) < smallest:
                break  # nothing can fit any more
        pending.extendleft(reversed(waiting))
        return batch

    def plan(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of `epoch` (default: the current one) for all ranks, in order."""
        epoch = self.epoch if epoch is None else epoch
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        order = np.arange(len(self.token_counts))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        pending = deque(order.tolist())
        batches = []
        while pending:
            batches.append(self._fill(pending))
        if self.drop_last and len(batches) > 1:
            batches.pop()
        batches = batches[: len(batches) - len(batches) % self.world_size]
        self._plan_cache = (epoch, batches)
        return batches

    def _rank_batches(self) -> list[list[int]]:
        return self.plan()[self.rank :: self.world_size]

    def __len__(self) -> int:
        """Batches of this rank in the current epoch (including any already yielded)."""
        return len(self._rank_batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        while self.position < len(batches):
            self.position += 1
            yield list(batches[self.position - 1])
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch."""
        self.epoch = int(epoch)
        self.position = 0

    def state_dict(self, position: int | None = None) -> dict:
        """Where the sampler stands. A DataLoader fetches ahead of the training loop, so pass
        `position` = batches consumed in this epoch to resume at exactly that batch."""
        return {
            "epoch": self.epoch,
            "position": self.position if position is None else int(position),
            "seed": self.seed,
            "num_items": len(self.token_counts),
            "token_budget": self.token_budget,
            "sequences_per_batch": self.sequences_per_batch,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; the dataset and batch settings must be the same."""
        mine = self.state_dict()
        for key in ("seed", "num_items", "token_budget", "sequences_per_batch", "world_size"):
            if state[key] != mine[key]:
                raise ValueError(
                    f"sampler state has {key}={state[key]} but this sampler has {mine[key]}; "
                    "resume with the same dataset and batch settings"
                )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


def padding_fraction(lengths: Sequence[int], num_sequences: int, sequence_length: int) -> float:
    """Fraction of `num_sequences x sequence_length` token slots left as padding."""
    total = num_sequences * sequence_length
    assert sum(lengths) <= total, "more tokens than slots"
    return 1.0 - sum(lengths) / total if total else 0.0


__all__ = [
    "DEFAULT_PATCH",
    "SPACE_FACTOR",
    "TIME_FACTOR",
    "PackedBatch",
    "TokenBudgetBatchSampler",
    "block_attention_mask",
    "given_token_mask",
    "grid_coords",
    "item_tokens",
    "latent_size",
    "pack",
    "padding_fraction",
    "patch_grid",
    "patchify",
    "plan_sequences",
    "unpack",
    "unpatchify",
]
