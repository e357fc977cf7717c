"""Synthetic world generation speed on the default mix, and the statistics of that mix.

Three rates, in clips per second:

- render only: sample, simulate, render and caption in memory (`make_clip`), one process;
- write_world with 1 and 2 workers: the same plus lossless FFV1 video, ground-truth JSON and
  the manifest on disk, pool start-up included.

    python benchmarks/bench_world.py [--clips 500] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from kinetoscope.data.world import WorldConfig, clip_seed, make_clip, sample_scene, write_world
from record import markdown_table, record


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def render_rate(clips: int, seed: int) -> tuple[float, float, int]:
    """Wall and CPU seconds to make `clips` clips in memory, and their total frames."""
    config = WorldConfig()
    start, cpu = time.perf_counter(), cpu_seconds()
    frames = sum(make_clip(clip_seed(seed, i), config).scene.frames for i in range(clips))
    return time.perf_counter() - start, cpu_seconds() - cpu, frames


def write_rate(clips: int, seed: int, workers: int) -> tuple[float, float, int, int]:
    """Wall and CPU seconds to write `clips` clips with `workers` processes, frames, bytes."""
    with tempfile.TemporaryDirectory() as folder:
        start, cpu = time.perf_counter(), cpu_seconds()
        summary = write_world(Path(folder), clips, seed, workers=workers, progress=False)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        size = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
    return seconds, cpu, summary.frames, size


def mix_statistics(scenes: int, seed: int) -> str:
    """A markdown summary of the default mix: sizes, lengths, objects and motions."""
    rng = np.random.default_rng(seed)
    drawn = [sample_scene(rng, WorldConfig()) for _ in range(scenes)]
    longest = np.array([max(s.width, s.height) for s in drawn])
    frames = np.array([s.frames for s in drawn])
    ratios = Counter(_ratio(s.width, s.height) for s in drawn)
    objects = Counter(len(s.objects) for s in drawn)
    motions = Counter(
        "direction" if o.motion not in ("still", "fall") else o.motion
        for s in drawn
        for o in s.objects
    )
    total_objects = sum(motions.values())

    def share(counter: Counter, total: int) -> str:
        return ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(counter.items()))

    return "\n".join(
        [
            f"Default mix over {scenes} drawn scenes:",
            "",
            f"- longer side <= 128 px: {np.mean(longest <= 128):.0%}; "
            f"frames <= 33: {np.mean(frames <= 33):.0%}; images (1 frame): "
            f"{np.mean(frames == 1):.0%}; mean frames {frames.mean():.1f}; "
            f"mean pixels per frame {np.mean([s.width * s.height for s in drawn]):.0f}",
            f"- aspect ratios: {share(ratios, scenes)}",
            f"- distinct sizes: {len({(s.width, s.height) for s in drawn})}; distinct frame "
            f"counts: {len(set(frames.tolist()))} (all of 1, 5, ..., 65)",
            f"- objects per clip: {share(objects, scenes)}",
            f"- motions: {share(motions, total_objects)}",
        ]
    )


def _ratio(width: int, height: int) -> str:
    from math import gcd

    d = gcd(width, height)
    return f"{width // d}:{height // d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=500, help="clips per measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = []
    seconds, cpu, frames = render_rate(args.clips, args.seed)
    rows.append(
        ["render only (make_clip)", 1, seconds, args.clips / seconds, cpu / args.clips * 1e3, "-"]
    )
    for workers in (1, 2):
        seconds, cpu, frames, size = write_rate(args.clips, args.seed, workers)
        per_clip = f"{size / args.clips / 1024:.0f} KiB"
        rows.append(
            [
                "write_world",
                workers,
                seconds,
                args.clips / seconds,
                cpu / args.clips * 1e3,
                per_clip,
            ]
        )
    table = markdown_table(
        ["what", "workers", "seconds", "clips / s", "CPU ms / clip", "disk / clip"], rows
    )
    load = os.getloadavg()[0]
    table += (
        f"\n\n{args.clips} clips of the default mix ({frames} frames). CPU ms / clip counts "
        f"every process, so it varies less with other load than wall time (two idle cores give "
        f"at most 2000 / that clips / s); the 1-minute load average was {load:.1f} at the end."
    )
    body = f"{table}\n\n{mix_statistics(5000, args.seed)}"
    record("world", "Synthetic world generation", body, "python benchmarks/bench_world.py")


if __name__ == "__main__":
    main()
