"""A training run's plots, drawn with Pillow from its metrics JSON Lines file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

_PROBE_COLORS = {
    "direction": (200, 40, 40), "color": (30, 90, 200), "shape": (40, 160, 60),
    "size": (230, 140, 20), "background": (120, 120, 120), "count": (150, 60, 200),
}  # fmt: skip


def _panel(draw, box, lines: dict, title: str, log_y: bool) -> None:
    """Draw named polylines {name: ([(step, value)], rgb, width)} into box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    left, bottom = x0 + 60, y1 - 30
    draw.rectangle([left, y0, x1, bottom], outline="black")
    draw.text((left + 8, y0 + 4), title, fill="black")
    points = [p for pts, _, _ in lines.values() for p in pts]
    if not points:
        return
    fy = math.log10 if log_y else float
    lo, hi = min(fy(v) for _, v in points), max(fy(v) for _, v in points)
    hi = hi if hi > lo else lo + 1e-3
    s0 = min(s for s, _ in points)
    s1 = max(max(s for s, _ in points), s0 + 1)

    def xy(step: float, value: float) -> tuple[float, float]:
        x = left + (step - s0) / (s1 - s0) * (x1 - left)
        return x, bottom - (fy(value) - lo) / (hi - lo) * (bottom - y0)

    for name, (pts, rgb, width) in lines.items():
        if pts:
            line = [xy(s, v) for s, v in pts]
            draw.line(line if len(line) > 1 else line * 2, fill=rgb, width=width)
            if name:
                draw.text((line[-1][0] - 70, line[-1][1] - 12), name, fill=rgb)
    show = (lambda v: f"{10**v:.3g}") if log_y else (lambda v: f"{v:+.3f}")
    draw.text((x0 + 4, y0), show(hi), fill="black")
    draw.text((x0 + 4, bottom - 10), show(lo), fill="black")
    draw.text((left, bottom + 8), f"step {s0}", fill="black")
    draw.text((x1 - 80, bottom + 8), f"step {max(s for s, _ in points)}", fill="black")


def plot_loss(metrics: str | os.PathLike, path: str | os.PathLike, size=(640, 360)) -> Path:
    """Draw a run's curves from its metrics JSON Lines file into a PNG with Pillow: the loss
    (log scale; each step in grey, a running mean in blue) and, where the run logged the
    text-sensitivity probe, its relative gap per attribute in a panel beside it."""
    from PIL import Image, ImageDraw

    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line.strip()]
    points = [(r["step"], r["loss"]) for r in rows if r.get("loss") and math.isfinite(r["loss"])]
    points = [(s, loss) for s, loss in points if loss > 0]
    smooth, mean = [], math.log(points[0][1]) if points else 0.0
    for s, loss in points:
        mean = 0.9 * mean + 0.1 * math.log(loss)
        smooth.append((s, math.exp(mean)))
    probes = [r for r in rows if r.get("probe")]
    width, height = size
    image = Image.new("RGB", (width * (2 if probes else 1), height), "white")
    draw = ImageDraw.Draw(image)
    loss_lines = {"": (points, (180, 180, 180), 1), " ": (smooth, (30, 90, 200), 2)}
    _panel(draw, (0, 15, width - 15, height), loss_lines, "loss (log scale)", log_y=True)
    if probes:
        gap_lines = {
            name: ([(r["step"], r["probe"][f"gap_{name}"]) for r in probes], rgb, 2)
            for name, rgb in _PROBE_COLORS.items()
        }
        box = (width, 15, 2 * width - 15, height)
        _panel(draw, box, gap_lines, "text-sensitivity gap (relative loss)", log_y=False)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)  # atomic, like every other file of the run
    return path
