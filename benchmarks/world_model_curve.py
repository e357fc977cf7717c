"""Quality against training compute: world-benchmark scores of a run's checkpoints.

    python benchmarks/world_model_curve.py RUN/snapshots --record
    python benchmarks/world_model_curve.py RUN/snapshots --every 3 --steps 30 --out curve

Each checkpoint folder in the given folder (`step-N`, EMA weights written by `kinetoscope
train`; every checkpoint of a run can be kept by copying `RUN/checkpoint/ema` as it changes)
generates the `standard` suite (every `--every`-th entry, the same entries for every
checkpoint) with the same seeds and settings, and is scored from pixels. Training time comes
from the checkpoint's own record (`seconds` of the run at that step) where there is one.
Writes `curve.json` and `curve.png` (scores against training time) to `--out`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from PIL import Image, ImageDraw

from kinetoscope.checkpoint import load_meta
from kinetoscope.evaluate.world import evaluate_folder, generate_suite, suite
from kinetoscope.pipeline import Pipeline
from record import markdown_table, record_or_print

SHOWN = ("overall", "adherence", "color", "motion_direction", "permanence")
COLORS = ((0, 0, 0), (30, 90, 200), (200, 60, 40), (40, 150, 60), (150, 60, 200))


def plot(points: list[dict], path: Path, size: tuple[int, int] = (720, 400)) -> Path:
    """Scores (0..1) against training minutes, one line per score of `SHOWN`."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    width, height = size
    left, right, top, bottom = 50, 150, 20, 40
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    xs = [p["minutes"] for p in points]
    x0, x1 = 0.0, max(max(xs), 1e-3)

    def xy(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (width - left - right),
            height - bottom - y * (height - top - bottom),
        )

    for level in (0.25, 0.5, 0.75):
        draw.line([xy(x0, level), xy(x1, level)], fill=(225, 225, 225))
    for k, (name, color) in enumerate(zip(SHOWN, COLORS, strict=True)):
        line = [
            xy(p["minutes"], p["mean"][name]) for p in points if p["mean"].get(name) is not None
        ]
        if line:
            draw.line(line if len(line) > 1 else line * 2, fill=color, width=2)
            for x, y in line:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        draw.text((width - right + 10, top + 16 * k), name, fill=color)
    draw.text((4, top - 4), "1.0", fill="black")
    draw.text((4, height - bottom - 10), "0.0", fill="black")
    draw.text((left, height - bottom + 8), "0 min", fill="black")
    draw.text((width - right - 60, height - bottom + 8), f"{x1:.0f} min", fill="black")
    draw.text((left + (width - left - right) // 2 - 60, height - bottom + 22),
              "training time (minutes)", fill="black")  # fmt: skip
    image.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", help="folder of step-N checkpoint folders")
    parser.add_argument("--every", type=int, default=1, help="score every k-th suite entry")
    parser.add_argument("--steps", type=int, default=30, help="sampler steps")
    parser.add_argument("--guidance", type=float, default=4.0, help="guidance scale")
    parser.add_argument("--out", default="world-curve", help="folder for videos, JSON, PNG")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()

    folders = sorted(
        (f for f in Path(args.checkpoints).iterdir() if re.fullmatch(r"step-\d+", f.name)),
        key=lambda f: int(f.name.split("-")[1]),
    )
    if not folders:
        raise SystemExit(f"{args.checkpoints} holds no step-N checkpoint folders")
    entries = suite("standard")[:: args.every]
    out = Path(args.out)
    points = []
    for folder in folders:
        meta = load_meta(folder)
        step = int(folder.name.split("-")[1])
        pipe = Pipeline.load(folder)
        videos = out / folder.name
        generate_suite(pipe, entries, videos, steps=args.steps, guidance=args.guidance)
        report = evaluate_folder(videos, entries, log=None)
        minutes = float(meta.get("seconds", 0.0)) / 60
        points.append({"step": step, "minutes": minutes, "mean": report["mean"]})
        print(f"step {step}: " + ", ".join(f"{k} {report['mean'][k]:.3f}" for k in SHOWN))
    (out / "curve.json").write_text(json.dumps(points, indent=1))
    png = plot(points, out / "curve.png")
    rows = [
        [p["step"], f"{p['minutes']:.0f}", *(f"{p['mean'][k]:.3f}" for k in SHOWN)] for p in points
    ]
    table = markdown_table(["step", "train min", *SHOWN], rows)
    body = (
        f"The `standard` suite ({len(entries)} entries: every {args.every}th), one sample per "
        f"prompt, {args.steps} Euler steps, guidance {args.guidance:g}, seeds fixed; each row is "
        f"one checkpoint of the run (EMA weights). Plot: `{png}`.\n\n{table}"
    )
    record_or_print(
        "world-curve",
        "World model: quality against training compute",
        body,
        "world_model_curve.py",
        args.record,
    )


if __name__ == "__main__":
    main()
