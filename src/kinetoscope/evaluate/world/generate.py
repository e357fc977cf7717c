"""Generate a benchmark suite with a model: one video per entry, named for `evaluate_folder`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from kinetoscope.io import write_video
from kinetoscope.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS, Pipeline

from .suites import SuiteEntry


def generate_suite(
    pipeline: Pipeline,
    entries: Sequence[SuiteEntry],
    folder: str | os.PathLike,
    *,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int = 0,
    sampler: str = "euler",
    progress: bool = True,
) -> list[Path]:
    """Generate each entry's prompt at its spec's size and frame rate into
    `folder/<entry name>.mp4` (images too, as `render_suite` writes them); returns the paths.

    Entry i is seeded with seed + i, so a suite run is reproducible and entries do not share
    noise. Every size is checked before the first video is generated.
    """
    sizes = [(e.spec.width, e.spec.height, e.spec.frames) for e in entries]
    pipeline.check_sizes(sizes)
    folder = Path(folder)
    paths = []
    for i, entry in enumerate(tqdm(entries, desc="generate suite", disable=not progress)):
        width, height, frames = sizes[i]
        [video] = pipeline.generate(
            entry.prompt,
            width=width,
            height=height,
            frames=frames,
            steps=steps,
            guidance=guidance,
            seed=seed + i,
            sampler=sampler,
            progress=False,
        )  # T H W 3 uint8
        paths.append(write_video(folder / f"{entry.name}.mp4", video, entry.spec.fps))
    return paths
