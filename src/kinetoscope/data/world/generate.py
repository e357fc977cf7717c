"""Clips and datasets: sample, simulate, render, caption, and write to disk.

A world folder looks like this:

    out/clips/000000.mkv     lossless FFV1 video (T H W 3, bit-exact)
    out/truth/000000.json    ground truth of the clip (see `ground_truth`)
    out/manifest.jsonl       one ManifestRecord per clip, captions short / medium / long
    out/world.json           the seed and configuration that made the folder

Clip `i` is drawn from its own seed, `clip_seed(seed, i)`, so the bytes of every file depend
only on the seed and configuration, never on the number of worker processes.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.pool
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from kinetoscope import __version__
from kinetoscope.io import write_video

from ..manifest import ManifestRecord, write_manifest
from .captions import captions
from .palette import BACKGROUNDS, COLORS, region
from .physics import Trajectory, simulate
from .render import render
from .scene import ObjectSpec, SceneSpec, WorldConfig, mirror_scene, sample_scene

DIGITS = 6  # file names 000000.mkv ... 999999.mkv


@dataclass
class Clip:
    """One rendered clip and everything known about it."""

    seed: int | None  # the int that `make_clip` was given, if it was an int
    scene: SceneSpec
    trajectory: Trajectory
    frames: np.ndarray  # T H W 3 uint8
    visibility: np.ndarray  # (n_obj, T) float64
    captions: dict[str, str]
    truth: dict[str, Any]


@dataclass
class WorldSummary:
    """What `write_world` wrote."""

    out: Path
    clips: int
    frames: int  # total over all clips
    manifest: Path


def clip_seed(seed: int, index: int) -> int:
    """The seed of clip `index` of a world drawn with `seed`: a 63-bit integer.

    `make_clip(clip_seed(seed, index), config)` remakes that clip exactly.
    """
    state = np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def _rounded(array: np.ndarray) -> list:
    # 3 decimals keep files small; adding 0.0 turns -0.0 into 0.0.
    return (np.round(array, 3) + 0.0).tolist()


def ground_truth(
    scene: SceneSpec,
    trajectory: Trajectory,
    visibility: np.ndarray,
    caption: dict[str, str],
    seed: int | None = None,
) -> dict[str, Any]:
    """The ground-truth JSON of a clip.

    Positions are object centres in pixels (x right, y down, the canvas spans [0, W] x [0, H]),
    velocities are pixels per frame, visibility is the unoccluded fraction of each object.
    Per object, `start` is the spec's start centre as fractions of width and height, `speed`
    is in shorter sides per second, `size_px` is the diameter or side length in pixels.
    Events: bounce (object, wall) and collision (objects) at frame k, meaning between frames
    k - 1 and k. `scene_from_truth` rebuilds the scene.
    """
    objects = []
    for i, obj in enumerate(scene.objects):
        objects.append(
            {
                "color": obj.color,
                "rgb": list(COLORS[obj.color]),
                "shape": obj.shape,
                "size": obj.size,
                "size_px": round(scene.size_px(i), 3),
                "motion": obj.motion,
                "speed": obj.speed,
                "start": [obj.x, obj.y],
                "region": region(obj.x, obj.y),
            }
        )
    tracks = [
        {
            "position": _rounded(trajectory.positions[i]),
            "velocity": _rounded(trajectory.velocities[i]),
            "visibility": _rounded(visibility[i]),
        }
        for i in range(len(scene.objects))
    ]
    return {
        "seed": seed,
        "canvas": {
            "width": scene.width,
            "height": scene.height,
            "background": scene.background,
            "rgb": list(BACKGROUNDS[scene.background]),
        },
        "fps": scene.fps,
        "frames": scene.frames,
        "objects": objects,
        "tracks": tracks,
        "events": trajectory.events,
        "captions": caption,
    }


def scene_from_truth(truth: dict[str, Any]) -> SceneSpec:
    """The scene a ground-truth dict describes (simulating it gives the same tracks)."""
    canvas = truth["canvas"]
    objects = tuple(
        ObjectSpec(o["color"], o["shape"], o["size"], o["motion"], *o["start"], o["speed"])
        for o in truth["objects"]
    )
    return SceneSpec(
        canvas["width"],
        canvas["height"],
        truth["frames"],
        truth["fps"],
        canvas["background"],
        objects,
    )


def _finish(scene: SceneSpec, rng: np.random.Generator, seed: int | None) -> Clip:
    trajectory = simulate(scene)
    frames, visibility = render(scene, trajectory)
    caption = captions(scene, trajectory, rng)
    truth = ground_truth(scene, trajectory, visibility, caption, seed)
    return Clip(seed, scene, trajectory, frames, visibility, caption, truth)


def _first_event(trajectory: Trajectory) -> int | None:
    """The frame of a trajectory's first bounce or collision (None if it has none)."""
    return min((e["frame"] for e in trajectory.events), default=None)


def _draw_scene(rng: np.random.Generator, config: WorldConfig) -> SceneSpec:
    """A scene of `config`'s mix, drawn again while its first event comes too early."""
    for _ in range(1000):
        scene = sample_scene(rng, config)
        first = _first_event(simulate(scene)) if config.min_event_frame else None
        if first is None or first >= config.min_event_frame:
            return scene
    raise ValueError(
        f"no scene of this mix keeps its first event at frame {config.min_event_frame} or later "
        "in 1000 draws; lower min_event_frame or use larger canvases"
    )


def make_clip(
    seed: int | np.random.SeedSequence, config: WorldConfig | None = None, mirrored: bool = False
) -> Clip:
    """Draw a scene from `config`'s mix with `seed`, then simulate, render and caption it.

    `mirrored` makes the scene's left-right mirror instead (`mirror_scene`), captioned with
    the same phrasings, so the two clips' captions differ only in their direction words.
    """
    rng = np.random.default_rng(seed)
    scene = _draw_scene(rng, config or WorldConfig())
    if mirrored:
        scene = mirror_scene(scene)
    return _finish(scene, rng, int(seed) if isinstance(seed, int | np.integer) else None)


def _is_held_out(scene: SceneSpec, config: WorldConfig) -> bool:
    held = set(config.exclude)
    return any((o.color, o.shape, o.motion) in held for o in scene.objects)


def _clip_of_index(seed: int, index: int, config: WorldConfig) -> tuple[Clip, bool]:
    """Clip `index` of a world: its own draw, or with `mirror_twins` the mirror of clip
    `index - 1` at odd indices (its own draw where the mirror is a held-out combination).
    Returns the clip and whether it is a mirror."""
    if not config.mirror_twins:
        return make_clip(clip_seed(seed, index), config), False
    pair_seed = clip_seed(seed, index - index % 2)
    if index % 2 == 0:
        return make_clip(pair_seed, config), False
    twin = make_clip(pair_seed, config, mirrored=True)
    if not _is_held_out(twin.scene, config):
        return twin, True
    return make_clip(clip_seed(seed, index), config), False


def clip_from_scene(scene: SceneSpec, seed: int = 0) -> Clip:
    """Simulate, render and caption a given scene; `seed` picks the caption phrasings."""
    return _finish(scene, np.random.default_rng(seed), seed)


def _write_one(job: tuple[Path, int, int, WorldConfig]) -> ManifestRecord:
    out, seed, index, config = job
    name = f"{index:0{DIGITS}d}"
    clip, mirrored = _clip_of_index(seed, index, config)
    video = write_video(out / "clips" / f"{name}.mkv", clip.frames, clip.scene.fps)
    truth = out / "truth" / f"{name}.json"
    truth.write_text(json.dumps(clip.truth) + "\n", encoding="utf-8")
    scene = clip.scene
    return ManifestRecord(
        path=str(video),
        width=scene.width,
        height=scene.height,
        frames=scene.frames,
        fps=float(scene.fps),
        captions=clip.captions,
        truth=str(truth),
        extra={"id": name, "seed": clip.seed}
        | ({"mirror_of": f"{index - 1:0{DIGITS}d}"} if mirrored else {}),
    )


def _pool(workers: int) -> multiprocessing.pool.Pool:
    """A pool of worker processes, started the cheapest safe way for this platform."""
    if not sys.platform.startswith("linux"):
        return multiprocessing.get_context().Pool(workers)  # spawn on macOS and Windows
    # Linux: fork, as torch's DataLoader does. Workers start at once with everything imported
    # (spawn would re-import torch in each, seconds), and they run only numpy and FFmpeg code,
    # so threads the parent may hold (BLAS, torch) cannot deadlock them.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*multi-threaded.*fork", category=DeprecationWarning
        )
        return multiprocessing.get_context("fork").Pool(workers)


def write_world(
    out: Path,
    clips: int,
    seed: int,
    config: WorldConfig = WorldConfig(),  # noqa: B008 (frozen, so sharing it is safe)
    workers: int = 0,
    progress: bool = True,
) -> WorldSummary:
    """Render `clips` clips drawn with `seed` into `out` (see the module docstring for layout).

    `workers` processes render in parallel (0: one per CPU core). The same seed and config
    give the same bytes in every file, whatever the number of workers. Existing files of the
    same names are overwritten.
    """
    if not isinstance(clips, int) or clips < 1:
        raise ValueError(f"clips must be a positive integer, got {clips!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be 0 (one per core) or more, got {workers!r}")
    if clips >= 10**DIGITS:
        raise ValueError(f"at most {10**DIGITS - 1} clips per folder; split into several")
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    workers = min(workers or os.cpu_count() or 1, clips)
    jobs = [(out, seed, index, config) for index in range(clips)]
    records: list[ManifestRecord] = []
    if workers == 1:
        for job in tqdm(jobs, disable=not progress, unit="clip", desc="world"):
            records.append(_write_one(job))
    else:
        chunk = max(1, min(16, clips // (workers * 8)))
        # The pool forks before the progress bar starts its monitor thread.
        with _pool(workers) as pool:
            done = pool.imap(_write_one, jobs, chunksize=chunk)
            records = list(tqdm(done, total=clips, disable=not progress, unit="clip", desc="world"))
    manifest = write_manifest(out / "manifest.jsonl", records)
    info = {"seed": seed, "clips": clips, "config": config.to_dict(), "version": __version__}
    (out / "world.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return WorldSummary(out, clips, sum(r.frames for r in records), manifest)
