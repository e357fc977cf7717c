"""Image and video prompting on world clips, whose ground truth is known.

For each moving one-object scene of the standard suite (`--scenes`), the world renders the
scene at twice its length; the first half is the user's video and the second half is the
ground-truth continuation. Then, with the model (`--model`, default the bundled one):

- animate: the first frame and the prompt; the first output frame's PSNR against the fitted
  image, and the analyzer's motion adherence, beside text to video on the same prompt.
- extend forward / backward: the first half (or the second) plus as many new frames; the
  seam ratio (largest frame-to-frame change across the seam over the median change inside
  the given video), whether the analyzer finds one object in the new frames with the truth's
  direction, and the mean distance in pixels of its centre from the truth's continuation.
- connect: this scene's first half, 16 new frames, the next scene's first half (rendered on
  this scene's background: a change of background cannot pass the seam bound); seam ratio.
- loop: from the first frame; seam ratio of last -> first over the loop's own median change.
- edit: the first half under a prompt with the object's colour changed, for a sweep of
  strengths: the share of outputs whose object took the new colour, and how far (pixels) its
  track moved from the input's.
- long video (`--long`): peak memory of 65 and 1025 frames, each in a fresh process (its
  peak resident set, the model and the output frames included), and on `--long-prompts` world prompts of 257 frames the
  permanence and the background colour's drift (largest distance from its first-frame
  colour, 0-255 RGB).

    python benchmarks/bench_conditioning.py [--model DIR] [--scenes 8] [--steps 30]
        [--long] [--threads 2] [--record]
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from kinetoscope import conditioning as C
from kinetoscope.data.world import DIRECTIONS, clip_from_scene
from kinetoscope.evaluate.sensitivity import altered_captions
from kinetoscope.evaluate.world import analyze, score_video, suite
from kinetoscope.pipeline import Pipeline
from record import markdown_table, record

SEAM_BOUND = 1.5  # the floor: a seam changes at most 1.5x the median inside
STRENGTHS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def scenes(count: int) -> list:
    """Moving one-object scenes of the standard suite, at 17 frames (doubled: 33)."""
    entries = [e for e in suite("standard")
               if len(e.spec.objects) == 1 and e.spec.objects[0].motion in DIRECTIONS]  # fmt: skip
    return [replace(e, spec=replace(e.spec, frames=17)) for e in entries[:count]]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def follows(video: np.ndarray, motion: str, truth: np.ndarray | None = None) -> tuple[bool, float]:
    """(one object moving in `motion`, mean centre distance in px from `truth` (T, 2))."""
    objects = analyze(video).objects
    if len(objects) != 1:
        return False, float("nan")
    found = objects[0]
    distance = float("nan")
    if truth is not None:
        distance = float(np.nanmean(np.linalg.norm(found.centres - truth, axis=1)))
    return found.motion.motion == motion, distance


def run_scene(pipe: Pipeline, entry, other, options: dict) -> dict:
    """Every mode on one scene; `other` is the next scene (for connect)."""
    spec = replace(entry.spec, frames=33)
    clip = clip_from_scene(spec)
    frames, truth = clip.frames, np.array(clip.truth["tracks"][0]["position"])  # (33, 2)
    first, second = frames[:17], frames[17:]
    motion = entry.spec.objects[0].motion
    row: dict = {}

    animated = C.animate(pipe, entry.prompt, first[0], frames=17, **options).video
    plain = C.text_to_video(pipe, entry.prompt, width=spec.width, height=spec.height,
                            frames=17, **options).video  # fmt: skip
    row["animate_psnr"] = psnr(animated[0], first[0])
    row["animate_motion"] = score_video(animated, entry.spec)["motion"]
    row["t2v_motion"] = score_video(plain, entry.spec)["motion"]

    forward = C.extend(pipe, entry.prompt, first, frames=16, **options).video
    row["forward_seam"] = C.seam_ratio(forward, [17], first)
    row["forward_follows"], row["forward_px"] = follows(forward[17:], motion, truth[17:])
    backward = C.extend(pipe, entry.prompt, second, frames=16, direction="backward", **options)
    row["backward_seam"] = C.seam_ratio(backward.video, [16], second)
    row["backward_follows"], row["backward_px"] = follows(backward.video[:16], motion, truth[1:17])

    # The next scene on this one's background: a change of background cannot be seamless.
    other_spec = replace(other.spec, width=spec.width, height=spec.height,
                         background=spec.background)  # fmt: skip
    other_clip = clip_from_scene(other_spec).frames
    joined = C.connect(pipe, entry.prompt, first, other_clip, frames=16, **options).video
    inside = np.concatenate([first, other_clip])
    row["connect_seam"] = C.seam_ratio(joined, [17, 33], inside)

    looped = C.loop(pipe, entry.prompt, first[0], frames=17, **options).video
    row["loop_seam"] = C.seam_ratio(looped, [0], looped)

    recoloured = altered_captions(entry.spec)["color"]
    wanted = recoloured.split()[2]  # "a small <color> <shape> ..."
    for strength in STRENGTHS:
        edited = C.edit(pipe, recoloured, first, strength=strength, **options).video
        objects = analyze(edited).objects
        colour = objects[0].color if len(objects) == 1 else None
        row[f"edit_{strength:g}_recoloured"] = colour == wanted
        row[f"edit_{strength:g}_px"] = (
            float(np.nanmean(np.linalg.norm(objects[0].centres - truth[:17], axis=1)))
            if len(objects) == 1 else float("nan")
        )  # fmt: skip
    return row


def long_memory(model: str | None, frames: int, threads: int) -> float:
    """MiB of peak resident memory of a fresh process that loads the model and makes one
    `frames`-frame video (its output frames included)."""
    code = (
        "import resource, sys, torch; from kinetoscope.pipeline import Pipeline; "
        "from kinetoscope import conditioning as C; "
        f"torch.set_num_threads({threads}); pipe = Pipeline.load({model!r}); "
        f"C.text_to_video(pipe, 'a red circle moving right', frames={frames}, steps=2, "
        "progress=False); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def long_consistency(pipe: Pipeline, prompts: list[str], frames: int, options: dict) -> dict:
    """Mean permanence and largest background drift over world prompts of `frames` frames."""
    permanence, drift = [], []
    for entry in prompts:
        video = C.text_to_video(pipe, entry.prompt, width=entry.spec.width,
                                height=entry.spec.height, frames=frames, **options).video  # fmt: skip
        spec = replace(entry.spec, frames=frames)
        score = score_video(video, spec)
        if score["permanence"] is not None:
            permanence.append(score["permanence"])
        rgb = analyze(video).background_rgb  # (T, 3)
        drift.append(float(np.linalg.norm(rgb - rgb[0], axis=1).max()))
    return {"permanence": float(np.mean(permanence)) if permanence else float("nan"),
            "drift": max(drift)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the bundled world model)")
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--long", action="store_true", help="also measure long videos")
    parser.add_argument("--long-prompts", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = Pipeline.load(args.model)
    options = {"steps": args.steps, "progress": False}
    chosen = scenes(args.scenes + 1)
    start = time.perf_counter()
    rows = [run_scene(pipe, a, b, options) for a, b in itertools.pairwise(chosen)]
    seconds = time.perf_counter() - start

    def mean(key: str) -> float:
        return float(np.nanmean([float(r[key]) for r in rows]))

    def worst(key: str) -> float:
        return float(max(r[key] for r in rows))

    table = [
        ["animate: first frame PSNR (dB, min)", min(r["animate_psnr"] for r in rows), ">= 30"],
        ["animate: motion adherence", mean("animate_motion"), f">= t2v ({mean('t2v_motion'):.3f})"],
        ["extend forward: seam ratio (max)", worst("forward_seam"), f"<= {SEAM_BOUND}"],
        ["extend forward: one object, truth's direction", mean("forward_follows"), ""],
        ["extend forward: centre distance from truth (px)", mean("forward_px"), ""],
        ["extend backward: seam ratio (max)", worst("backward_seam"), f"<= {SEAM_BOUND}"],
        ["extend backward: one object, truth's direction", mean("backward_follows"), ""],
        ["extend backward: centre distance from truth (px)", mean("backward_px"), ""],
        ["connect: seam ratio (max)", worst("connect_seam"), f"<= {SEAM_BOUND}"],
        ["loop: seam ratio (max)", worst("loop_seam"), f"<= {SEAM_BOUND}"],
    ]
    for strength in STRENGTHS:
        table.append([f"edit at strength {strength:g}: recoloured / track distance (px)",
                      f"{mean(f'edit_{strength:g}_recoloured'):.2f} / "
                      f"{mean(f'edit_{strength:g}_px'):.1f}", ""])  # fmt: skip
    if args.long:
        memory = {f: long_memory(args.model, f, args.threads) for f in (65, 1025)}
        long = long_consistency(pipe, chosen[: args.long_prompts], 257, options)
        table += [
            ["long video: peak memory, 65 frames (MiB)", memory[65], ""],
            [
                "long video: peak memory, 1025 frames (MiB)",
                memory[1025],
                f"within 15% ({memory[1025] / memory[65] - 1:+.1%})",
            ],
            ["long video, 257 frames: permanence", long["permanence"], ">= 0.9"],
            ["long video, 257 frames: background drift (0-255)", long["drift"], ""],
        ]
    body = markdown_table(["measure", "value", "floor"], table)
    print(body)
    print(json.dumps(rows[:1], default=float)[:300])
    print(f"{len(rows)} scenes, {seconds:.0f} s")
    if args.record:
        model = args.model or "the bundled world model"
        record(
            "conditioning",
            "Image and video prompting on world clips",
            f"{len(rows)} moving one-object scenes of the standard suite, {args.steps} steps, "
            f"{model}; {seconds:.0f} s.\n\n{body}",
            "python benchmarks/bench_conditioning.py " + " ".join(sys.argv[1:]),
        )


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
