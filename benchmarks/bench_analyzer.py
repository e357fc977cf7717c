"""World analyzer: speed on the default mix, and agreement with ground truth.

    python benchmarks/bench_analyzer.py                  # speed (clips/s) on 200 clips
    python benchmarks/bench_analyzer.py --validate 1000  # agreement on 1000 clips
    python benchmarks/bench_analyzer.py --validate 1000 --codec .mp4  # through H.264

Clips are made in memory by the world (`make_clip`, seeds 0..N-1 of the default mix), so
only the analyzer (and, for speed, the scores) is timed. Both modes record their table in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# record.py is a sibling script of this one, not part of the package.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kinetoscope.data.world import make_clip
from kinetoscope.evaluate.world import AGREEMENT, agreement, analyze, score
from kinetoscope.evaluate.world.scores import reference_analysis
from kinetoscope.io import read_video, write_video
from record import markdown_table, record


def speed(clips: int) -> None:
    made = [make_clip(seed) for seed in range(clips)]
    frames = sum(c.frames.shape[0] for c in made)
    pixels = sum(c.frames[..., 0].size for c in made)
    analyze(made[0].frames)  # warm up imports and caches
    start = time.perf_counter()
    for c in made:
        analyze(c.frames)
    analyze_s = time.perf_counter() - start
    start = time.perf_counter()
    for clip in made:
        # What scoring one video costs: analyze it, render and analyze the spec's reference.
        score(analyze(clip.frames), clip.scene, reference_analysis(clip.scene))
    score_s = time.perf_counter() - start
    # The slowest sizes: the largest canvases with the most frames.
    big = sorted(made, key=lambda c: c.frames.size)[-10:]
    start = time.perf_counter()
    for c in big:
        analyze(c.frames)
    big_s = (time.perf_counter() - start) / len(big)
    rows = [
        [
            "analyze",
            clips,
            frames,
            f"{clips / analyze_s:.1f}",
            f"{frames / analyze_s:.0f}",
            f"{pixels / analyze_s / 1e6:.1f}",
            f"{1000 * analyze_s / clips:.0f}",
        ],
        [
            "score (analyze + render and analyze the spec)",
            clips,
            frames,
            f"{clips / score_s:.1f}",
            f"{frames / score_s:.0f}",
            f"{pixels / score_s / 1e6:.1f}",
            f"{1000 * score_s / clips:.0f}",
        ],
    ]
    table = markdown_table(
        ["step", "clips", "frames", "clips/s", "frames/s", "Mpixel/s", "ms/clip"], rows
    )
    largest = big[-1].frames.shape
    table += (
        f"\n\nThe 10 largest clips (up to {largest[0]} frames of {largest[2]}x{largest[1]}) take "
        f"{1000 * big_s:.0f} ms each to analyze. Default mix, seeds 0..{clips - 1}; one process."
    )
    record(
        "analyzer", "World analyzer", table, f"python benchmarks/bench_analyzer.py --clips {clips}"
    )


def _agree(job: tuple[int, str | None]) -> tuple[int, dict[str, list[bool]]]:
    seed, codec = job
    clip = make_clip(seed)
    frames = clip.frames
    if codec:
        # Through a lossy file and back, as generated videos arrive.
        with tempfile.TemporaryDirectory() as folder:
            frames = read_video(write_video(Path(folder) / f"clip{codec}", frames, fps=8))
    return clip.scene.frames, agreement(analyze(frames), clip.truth)


def validate(clips: int, workers: int, codec: str | None) -> None:
    start = time.perf_counter()
    with multiprocessing.Pool(workers) as pool:
        results = pool.map(_agree, [(seed, codec) for seed in range(clips)], chunksize=8)
    seconds = time.perf_counter() - start
    rows = []
    for key in AGREEMENT:
        votes = [v for _, r in results for v in r[key]]
        unit = "clips" if key == "count" else "objects"
        rows.append([key, f"{np.mean(votes):.2%}", f"{sum(votes)} / {len(votes)} {unit}"])
    objects = sum(len(r["color"]) for _, r in results)
    images = sum(len(r["color"]) for frames, r in results if frames == 1)
    early = objects - images - sum(len(r["motion"]) for _, r in results)
    table = markdown_table(["attribute", "agreement", "agree / compared"], rows)
    stored = f"stored as {codec} (kinetoscope.io defaults) and read back" if codec else "lossless"
    table += (
        f"\n\n{clips} clips of the default mix (seeds 0..{clips - 1}, {stored}), {objects} "
        "objects. Motion is compared before the first bounce or collision; it is not compared "
        f"for the {images} objects of one-frame images nor for the {early} directed objects "
        f"whose course changes between frames 0 and 1 (no clean step shows their direction). "
        f"Took {seconds:.0f} s with {workers} processes."
    )
    section = "analyzer-validation" + (f"-{codec.strip('.')}" if codec else "")
    title = "World analyzer: agreement with ground truth" + (f" ({codec} video)" if codec else "")
    command = f"python benchmarks/bench_analyzer.py --validate {clips}"
    record(section, title, table, command + (f" --codec {codec}" if codec else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200, help="clips timed for speed")
    parser.add_argument(
        "--validate", type=int, metavar="N", help="check agreement with ground truth on N clips"
    )
    parser.add_argument(
        "--codec", help="validate on clips stored in this format and read back, like .mp4"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    args = parser.parse_args()
    if args.validate:
        validate(args.validate, args.workers, args.codec)
    else:
        speed(args.clips)


if __name__ == "__main__":
    main()
