"""Padding of packed batches against per-shape bucketing, on the world's default mix of sizes.

Both methods fill batches of `sequences x token_budget` token slots from one epoch of items
whose sizes the world generator draws (`sample_scene` with the default `WorldConfig`):

- packed: `TokenBudgetBatchSampler` mixes images and videos of any size in a batch; each
  batch then packs into its sequences (`plan_sequences`, what `pack` does);
- per-shape bucketing: a batch holds items of one latent shape only (as many as fit, several
  per sequence when they are small), so every bucket ends with a partly empty batch.

Padding is the fraction of token slots of the epoch's batches that hold no token.

    python benchmarks/bench_packing.py [--items 3000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter

import numpy as np
import torch

from kinetoscope.data.world.scene import WorldConfig, sample_scene
from kinetoscope.patches import (
    DEFAULT_PATCH,
    TokenBudgetBatchSampler,
    latent_size,
    pack,
    patch_grid,
    plan_sequences,
)
from record import markdown_table, record


def world_sizes(items: int, seed: int) -> list[tuple[int, int, int]]:
    """(frames, height, width) in pixels of `items` scenes of the world's default mix."""
    rng, config = np.random.default_rng(seed), WorldConfig()
    return [
        (s.frames, s.height, s.width) for s in (sample_scene(rng, config) for _ in range(items))
    ]


def packed_padding(counts: list[int], budget: int, sequences: int, seed: int) -> tuple:
    """Padding of one epoch of TokenBudgetBatchSampler batches, and the planning time."""
    start = time.perf_counter()
    batches = TokenBudgetBatchSampler(counts, budget, sequences, seed=seed).plan(0)
    seconds = time.perf_counter() - start
    for batch in batches:  # every batch fits its sequences, as pack(num_sequences=...) needs
        assert len(plan_sequences([counts[i] for i in batch], budget)) <= sequences
    slots = len(batches) * sequences * budget
    return 1 - sum(counts) / slots, len(batches), seconds


def bucketed_padding(grids: list[tuple[int, int, int]], budget: int, sequences: int) -> tuple:
    """Padding of one epoch of per-shape buckets: each batch holds one latent shape."""
    batches = 0
    for grid, n in Counter(grids).items():
        per_sequence = budget // math.prod(grid)
        batches += math.ceil(n / (per_sequence * sequences))
    tokens = sum(math.prod(g) for g in grids)
    return 1 - tokens / (batches * sequences * budget), batches


def pack_speed(grids: list[tuple[int, int, int]], budget: int, sequences: int) -> tuple:
    """pack() of one sampled batch: padding, tokens, best-of-3 seconds, and the seconds of a
    plain copy of the same latents (a yardstick for the machine's memory speed)."""
    counts = [math.prod(g) for g in grids]
    batch = next(iter(TokenBudgetBatchSampler(counts, budget, sequences, seed=1)))
    pt, ph, pw = DEFAULT_PATCH
    latents = [torch.randn(16, t * pt, h * ph, w * pw) for t, h, w in (grids[i] for i in batch)]
    pack_s, copy_s = [], []
    for _ in range(3):
        start = time.perf_counter()
        packed = pack(latents, budget, num_sequences=sequences)
        pack_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        _ = [x.clone() for x in latents]
        copy_s.append(time.perf_counter() - start)
    return packed.padding_fraction, sum(packed.lengths), min(pack_s), min(copy_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=3000, help="items in the epoch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    sizes = world_sizes(args.items, args.seed)
    grids = [patch_grid(latent_size(*s), DEFAULT_PATCH) for s in sizes]
    counts = [math.prod(g) for g in grids]
    images = sum(f == 1 for f, _, _ in sizes)
    longest = max(counts)
    rows = []
    for budget in (longest, 8192, 16384):
        for sequences in (1, 4):
            ours, our_batches, seconds = packed_padding(counts, budget, sequences, args.seed)
            theirs, their_batches = bucketed_padding(grids, budget, sequences)
            rows.append(
                [budget, sequences, ours, our_batches, theirs, their_batches, seconds * 1e3]
            )
    table = markdown_table(
        [
            "token budget",
            "sequences / batch",
            "packed padding",
            "packed batches",
            "bucketed padding",
            "bucketed batches",
            "plan ms / epoch",
        ],
        rows,
    )
    pad, tokens, seconds, copy = pack_speed(grids, 8192, 4)
    body = (
        f"{args.items} items of the world's default mix (seed {args.seed}): {images} images and "
        f"{args.items - images} videos in {len(set(grids))} latent shapes, {min(counts)} to "
        f"{longest} tokens (mean {sum(counts) / len(counts):.0f}), patch {DEFAULT_PATCH}. "
        f"Padding is over all batches of one epoch, the last partial one included.\n\n"
        f"{table}\n\n"
        f"`pack` of one sampled batch into 4 x 8192 slots (16 latent channels): {tokens} tokens, "
        f"{pad:.2%} padding, {seconds * 1e3:.0f} ms (a plain copy of the same latents: "
        f"{copy * 1e3:.0f} ms)."
    )
    record("packing", "Packing padding", body, "python benchmarks/bench_packing.py")


if __name__ == "__main__":
    main()
