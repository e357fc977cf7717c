"""The recaptioning study: does a world model trained on the captioner's descriptive captions
follow prompts better than one trained on alt-text, at the same compute?

The steps, each a command (docs/recaptioning.md gives the whole run):

- `manifests`: from a world's manifest, `alt.jsonl` (each clip with alt-text only: its
  objects by colour and shape, sometimes the background, as `alt_text` writes it) and, from
  the same world recaptioned by the captioner (`kinetoscope recaption`), `descriptive.jsonl`
  (each clip with the generated caption only). It prints how right the generated captions
  are (`caption_accuracy` against the ground truth).
- `user`: a model's adherence on the standard suite's scenes prompted in a user's short
  style (`bench_expand.user_prompt`, every attribute stated), written to a JSON file.
- `report`: the two arms' world-benchmark reports and user-style adherence side by side, as
  a markdown table and a bar plot.

    python benchmarks/recaption_study.py manifests --world W/manifest.jsonl [--recaptioned R]
    python benchmarks/recaption_study.py user --model RUN --out user.json [--scenes 40]
    python benchmarks/recaption_study.py report --arm alt=EVAL,USER --arm descriptive=...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from kinetoscope.data.manifest import read_manifest, write_manifest
from kinetoscope.data.world.captions import alt_text
from kinetoscope.train.captioner import caption_accuracy
from record import markdown_table

SCORES = ("overall", "adherence", "color", "shape", "size", "motion_direction", "permanence",
          "quality")  # fmt: skip


def manifests(world: Path, recaptioned: Path | None, seed: int) -> None:
    """Write alt.jsonl (and descriptive.jsonl) beside `world`."""
    records = read_manifest(world)
    truths = [json.loads(Path(r.truth).read_text()) for r in records]
    for i, (record, truth) in enumerate(zip(records, truths, strict=True)):
        rng = np.random.default_rng([seed, i])
        record.captions = {"alt": alt_text(truth["objects"], truth["canvas"]["background"], rng)}
    _write(world.parent / "alt.jsonl", records)
    if recaptioned is None:
        return
    described = read_manifest(recaptioned)
    if [r.path for r in described] != [r.path for r in records]:
        raise SystemExit(f"{recaptioned} does not list the clips of {world} in order")
    for record in described:
        record.captions = {"generated": record.captions["generated"]}
    accuracy = caption_accuracy([r.captions["generated"] for r in described], truths)
    print("generated captions:", {k: round(v, 3) for k, v in accuracy.items()})
    _write(world.parent / "descriptive.jsonl", described)


def _write(path: Path, records: list) -> None:
    """Write a manifest, keeping one already there (an arm may be training on it)."""
    if path.exists():
        print("kept", path, "(delete it to write it again)")
    else:
        print("wrote", write_manifest(path, records))


def user_adherence(model: str, scenes: int, steps: int, out: Path) -> None:
    """Mean adherence on `scenes` standard-suite scenes prompted in a user's words."""
    from bench_expand import user_prompt
    from kinetoscope.evaluate.world import score_video, suite
    from kinetoscope.pipeline import Pipeline

    pipe, rng, scores = Pipeline.load(model), np.random.default_rng(1), []
    for i, entry in enumerate(suite("standard")[:scenes]):
        prompt, _ = user_prompt(entry.spec, rng, complete=True)
        [video] = pipe.generate(prompt, width=entry.spec.width, height=entry.spec.height,
                                frames=entry.spec.frames, steps=steps, seed=i, progress=False)  # fmt: skip
        scores.append(score_video(video, entry.spec)["adherence"] or 0.0)
        print(f"{i + 1}/{scenes} {scores[-1]:.2f} {prompt}", flush=True)
    result = {"model": model, "scenes": scenes, "steps": steps, "adherence": float(np.mean(scores))}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(result)


def report(arms: list[str], plot: Path | None) -> None:
    """Print the arms side by side; draw them to `plot`."""
    columns = {}
    for arm in arms:
        name, paths = arm.split("=", 1)
        eval_folder, user = paths.split(",")
        standard = json.loads((Path(eval_folder) / "world_standard.json").read_text())["mean"]
        heldout = json.loads((Path(eval_folder) / "world_heldout.json").read_text())["mean"]
        columns[name] = {key: standard[key] for key in SCORES}
        columns[name]["heldout overall"] = heldout["overall"]
        columns[name]["user-style adherence"] = json.loads(Path(user).read_text())["adherence"]
    keys = list(next(iter(columns.values())))
    print(markdown_table(["score", *columns], [[k, *(c[k] for c in columns.values())]
                                                for k in keys]))  # fmt: skip
    if plot is not None:
        draw_bars(columns, keys, plot)


def draw_bars(columns: dict[str, dict], keys: list[str], path: Path) -> None:
    """One group of bars per score, one bar per arm, on a 0-1 scale (Pillow, as the run
    plots are drawn)."""
    from PIL import Image, ImageDraw

    colors = [(120, 120, 120), (30, 90, 200), (200, 40, 40), (40, 160, 60)]
    width, height, left, bottom = 90 * len(keys) + 80, 360, 50, 300
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 6), "World benchmark: alt-text against the captioner's captions", fill="black")
    for tick in (0.0, 0.5, 1.0):
        y = bottom - tick * 260
        draw.line([left, y, width - 10, y], fill=(220, 220, 220))
        draw.text((10, y - 6), f"{tick:.1f}", fill="black")
    bar = 70 // len(columns)
    for k, key in enumerate(keys):
        x = left + 10 + 90 * k
        for a, values in enumerate(columns.values()):
            top = bottom - values[key] * 260
            draw.rectangle([x + a * bar, top, x + (a + 1) * bar - 2, bottom], fill=colors[a % 4])
        draw.text((x, bottom + 6 + 12 * (k % 2)), key[:14], fill="black")
    for a, name in enumerate(columns):
        draw.rectangle([width - 150, 24 + 14 * a, width - 140, 34 + 14 * a], fill=colors[a % 4])
        draw.text((width - 134, 22 + 14 * a), name, fill="black")
    image.save(path)
    print("wrote", path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    make = sub.add_parser("manifests", help="alt.jsonl and descriptive.jsonl beside --world")
    make.add_argument("--world", type=Path, required=True, help="a world's manifest.jsonl")
    make.add_argument("--recaptioned", type=Path, help="that manifest after kinetoscope recaption")
    make.add_argument("--seed", type=int, default=0, help="seed of the alt-text phrasings")
    user = sub.add_parser("user", help="adherence on user-style prompts")
    user.add_argument("--model", required=True, help="a train run or model folder")
    user.add_argument("--out", type=Path, required=True, help="JSON file to write")
    user.add_argument("--scenes", type=int, default=40, help="standard-suite scenes")
    user.add_argument("--steps", type=int, default=30, help="sampler steps")
    side = sub.add_parser("report", help="the arms side by side")
    side.add_argument("--arm", action="append", required=True,
                      help="NAME=EVAL_FOLDER,USER_JSON (eval world --out, user --out)")  # fmt: skip
    side.add_argument("--plot", type=Path, help="PNG to draw")
    args = parser.parse_args(argv)
    if args.step == "manifests":
        manifests(args.world, args.recaptioned, args.seed)
    elif args.step == "user":
        user_adherence(args.model, args.scenes, args.steps, args.out)
    else:
        report(args.arm, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
