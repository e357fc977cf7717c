"""Score a folder of generated videos against their specs: JSON report, table, contact sheet.

The video of entry `name` is `videos/<name>.<ext>` with any readable video or image
extension (`.mp4`, `.mkv`, `.gif`, `.png`, ...). Entries without a video are listed as
missing and left out of the means.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kinetoscope.io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, read_video

from .analyze import analyze
from .scores import SCORE_NAMES, reference_analysis, score
from .suites import SUITE_VERSION, SuiteEntry, read_suite

SHEET_FRAMES = 6  # frames shown per video in the contact sheet
SHEET_HEIGHT = 72  # pixels per row of the contact sheet
SUMMARY = ("overall", "adherence", "consistency", "quality")


def _find_video(folder: Path, name: str) -> Path | None:
    for ext in sorted(VIDEO_EXTENSIONS | IMAGE_EXTENSIONS):
        path = folder / f"{name}{ext}"
        if path.is_file():
            return path
    return None


def _means(rows: list[dict]) -> dict[str, float | None]:
    means = {}
    for key in SCORE_NAMES:
        values = [r["scores"][key] for r in rows if r["scores"][key] is not None]
        means[key] = round(float(np.mean(values)), 4) if values else None
    return means


def summary_table(report: dict) -> str:
    """A markdown table of a report's mean scores, one row per score."""
    lines = ["| score | mean |", "|---|---|"]
    for key, value in report["mean"].items():
        lines.append(f"| {key} | {'-' if value is None else f'{value:.3f}'} |")
    return "\n".join(lines)


def contact_sheet(rows: list[tuple[str, float, np.ndarray]], path: Path) -> Path:
    """A PNG with one row per video: its label and SHEET_FRAMES frames spread over time.

    `rows` holds (label, overall score, frames `T H W 3` uint8).
    """
    tiles = []
    for label, overall, frames in rows:
        picks = np.linspace(0, len(frames) - 1, min(len(frames), SHEET_FRAMES)).round()
        images = []
        for t in np.unique(picks.astype(int)):
            image = Image.fromarray(frames[t])
            width = max(1, round(image.width * SHEET_HEIGHT / image.height))
            images.append(image.resize((width, SHEET_HEIGHT), Image.Resampling.NEAREST))
        text = Image.new("RGB", (180, SHEET_HEIGHT), (255, 255, 255))
        ImageDraw.Draw(text).text((4, 4), f"{label}\noverall {overall:.3f}", fill=(0, 0, 0))
        row = [text, *images]
        canvas = Image.new("RGB", (sum(i.width + 4 for i in row), SHEET_HEIGHT), (255, 255, 255))
        x = 0
        for image in row:
            canvas.paste(image, (x, 0))
            x += image.width + 4
        tiles.append(canvas)
    width = max((t.width for t in tiles), default=1)
    sheet = Image.new("RGB", (width, max(1, len(tiles) * (SHEET_HEIGHT + 4))), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (0, i * (SHEET_HEIGHT + 4)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def evaluate_folder(
    videos: str | os.PathLike,
    specs: str | os.PathLike | Sequence[SuiteEntry],
    out: str | os.PathLike | None = None,
    worst: int = 8,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Score every video of a folder against its spec; write a report and a contact sheet.

    `specs` is a suite file (`write_suite`) or a list of entries. Writes `out` (default
    `videos/world_report.json`) and, beside it, `<report stem>_worst.png` with the `worst` videos
    of lowest overall score. Returns the report: {"suite_version", "videos", "missing",
    "mean": {score: mean}, "entries": [{"name", "prompt", "video", "scores", "analysis"}]}.
    `log` receives the summary table (None: quiet).
    """
    folder = Path(videos)
    if not folder.is_dir():
        raise ValueError(f"videos folder {folder} does not exist")
    entries = read_suite(specs) if isinstance(specs, str | os.PathLike) else list(specs)
    if not entries:
        raise ValueError("no specs to evaluate: give a suite file or a non-empty list of entries")
    out = Path(out) if out is not None else folder / "world_report.json"
    rows, missing, sheet_rows = [], [], []
    for entry in entries:
        path = _find_video(folder, entry.name)
        if path is None:
            missing.append(entry.name)
            continue
        frames = read_video(path)
        analysis = analyze(frames)
        # The reference goes through the video's own format, so lossy coding is not blamed.
        scores = score(analysis, entry.spec, reference_analysis(entry.spec, codec=path.suffix))
        rows.append(
            {
                "name": entry.name,
                "prompt": entry.prompt,
                "video": path.name,
                "scores": {k: None if v is None else round(v, 4) for k, v in scores.items()},
                "analysis": analysis.summary(),
            }
        )
        sheet_rows.append((entry.name, scores["overall"] or 0.0, frames))
    if not rows:
        raise ValueError(
            f"none of the {len(entries)} videos was found in {folder}; name each "
            f"<entry name>.mp4 (or another video extension), like {entries[0].name}.mp4"
        )
    report = {
        "suite_version": SUITE_VERSION,
        "videos": len(rows),
        "missing": missing,
        "mean": _means(rows),
        "entries": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    order = sorted(range(len(rows)), key=lambda i: sheet_rows[i][1])[: max(0, worst)]
    if order:
        contact_sheet([sheet_rows[i] for i in order], out.with_name(f"{out.stem}_worst.png"))
    if log is not None:
        log(summary_table(report))
        log(f"{len(rows)} videos scored, {len(missing)} missing; report: {out}")
        if order:
            log(
                f"contact sheet of the {len(order)} worst: {out.with_name(f'{out.stem}_worst.png')}"
            )
        for i in order[:3]:
            r = rows[i]["scores"]
            parts = " ".join(f"{k} {r[k]:.3f}" for k in SUMMARY if r[k] is not None)
            log(f"worst: {rows[i]['name']}: {parts}")
    return report
