"""Fixed, versioned benchmark suites of the world: prompts with the scene specs behind them.

- `standard`: combinations seen in training. Every motion with every shape as one object,
  then scenes of two and three objects, and a few one-frame images; together they cover
  every color, shape, size, motion and background, several canvas sizes and aspect ratios,
  and several durations.
- `heldout`: the world's held-out (color, shape, motion) combinations (`DEFAULT_HELDOUT`),
  each alone and beside an object seen in training: generalisation to combinations the
  model never saw.

Suites are built by fixed rules, not drawn at random, so they do not depend on a random
number generator's version. Changing a rule changes the suite: bump `SUITE_VERSION` then.
A suite is written to (and read from) a JSON Lines file of {"name", "prompt", "spec"}.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from kinetoscope.data.world import (
    COLORS,
    DEFAULT_HELDOUT,
    DIRECTIONS,
    MOTIONS,
    SHAPES,
    SIZES,
    ObjectSpec,
    SceneSpec,
)

SUITE_VERSION = 1
SUITES = ("standard", "heldout")

_COLORS = tuple(COLORS)
_SIZES = tuple(SIZES)
_BACKGROUNDS = ("black", "gray", "navy", "beige")
_CANVASES = ((64, 64), (96, 64), (64, 96), (128, 64), (96, 96), (128, 96))
_WIDE = ((96, 64), (128, 64), (128, 96), (96, 96))  # room for three objects side by side
_DURATIONS = (17, 9, 33, 17, 25)
_SPEED = 0.6  # shorter sides per second: crosses a canvas in about 1.5 s
_FPS = 8


@dataclass(frozen=True)
class SuiteEntry:
    """One benchmark item: a prompt, the scene it asks for, and a file-name-safe name."""

    name: str
    prompt: str
    spec: SceneSpec

    def to_dict(self) -> dict:
        """A JSON-ready dict; `SuiteEntry.from_dict` reverses it."""
        return {"name": self.name, "prompt": self.prompt, "spec": self.spec.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> SuiteEntry:
        """Build (and validate) an entry from `to_dict`'s output."""
        return cls(str(data["name"]), str(data["prompt"]), SceneSpec.from_dict(data["spec"]))


def prompt(spec: SceneSpec) -> str:
    """The suite's prompt for a spec: every object's size, color, shape and motion."""
    objects = [(o.color, o.shape, o.size, o.motion) for o in spec.objects]
    return describe(objects, spec.background, video=spec.frames > 1)


def describe(objects: list[tuple[str, str, str, str]], background: str, video: bool = True) -> str:
    """The suite's prompt for (color, shape, size, motion) objects on a background."""
    parts = []
    for color, shape, size, motion in objects:
        words = f"a {size} {color} {shape}"
        if video:
            if motion == "still":
                words += " staying still"
            elif motion == "fall":
                words += " falling"
            else:
                words += f" moving {motion}"
        parts.append(words)
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{listed}, on a {background} background"


def _start(motion: str, x: float) -> tuple[float, float]:
    """A start centre that leaves room for the motion to be seen before a wall."""
    if motion == "fall":
        return x, 0.3
    dy = DIRECTIONS.get(motion, (0.0, 0.0))[1]
    return x, 0.5 - 0.2 * (dy > 0) + 0.2 * (dy < 0)


def _object(color: str, shape: str, size: str, motion: str, x: float) -> ObjectSpec:
    dx = DIRECTIONS.get(motion, (0.0, 0.0))[0]
    if x == 0.5:  # a single object starts away from the side it moves to
        x = 0.5 - 0.2 * (dx > 0) + 0.2 * (dx < 0)
    cx, cy = _start(motion, x)
    speed = _SPEED if motion in DIRECTIONS else 0.0
    return ObjectSpec(color, shape, size, motion, cx, cy, speed)


def _color(start: int, shape: str, motion: str, taken: set, held: set) -> str:
    """The first color from `start` (cycling) that is free for this shape and allowed."""
    for k in range(len(_COLORS)):
        color = _COLORS[(start + k) % len(_COLORS)]
        if (color, shape) not in taken and (color, shape, motion) not in held:
            return color
    raise AssertionError("no color left")


def _scene(index: int, objects: list[tuple[str, str, str]], held: set, canvases, frames: int):
    """A scene of (shape, size, motion) objects, colors picked by rule; slots left to right."""
    width, height = canvases[index % len(canvases)]
    slots = {1: (0.5,), 2: (0.28, 0.72), 3: (0.2, 0.5, 0.8)}[len(objects)]
    taken: set = set()
    specs = []
    for j, (shape, size, motion) in enumerate(objects):
        color = _color(3 * index + j, shape, motion, taken, held)
        taken.add((color, shape))
        specs.append(_object(color, shape, size, motion, slots[j]))
    background = _BACKGROUNDS[index % len(_BACKGROUNDS)]
    return SceneSpec(width, height, frames, _FPS, background, tuple(specs))


def _standard() -> list[SceneSpec]:
    held = set(DEFAULT_HELDOUT)
    scenes = []
    # Every motion with every shape, alone.
    for i, (motion, shape) in enumerate((m, s) for m in MOTIONS for s in SHAPES):
        objects = [(shape, _SIZES[i % 3], motion)]
        scenes.append(_scene(i, objects, held, _CANVASES, _DURATIONS[i % len(_DURATIONS)]))
    # Two and three objects; sizes stay small or medium so three fit side by side.
    for n, count in ((2, 12), (3, 12)):
        for i in range(count):
            objects = [
                (
                    SHAPES[(i + j) % 3],
                    _SIZES[(i + 2 * j) % (3 if n == 2 else 2)],
                    MOTIONS[(3 * i + 5 * j + n) % len(MOTIONS)],
                )
                for j in range(n)
            ]
            canvases = _CANVASES if n == 2 else _WIDE
            scenes.append(_scene(i + n, objects, held, canvases, _DURATIONS[i % len(_DURATIONS)]))
    # One-frame images of one to three objects.
    for i in range(6):
        n = 1 + i % 3
        objects = [(SHAPES[(i + j) % 3], _SIZES[(i + j) % 2], "still") for j in range(n)]
        scenes.append(_scene(i + 1, objects, held, _WIDE, 1))
    return scenes


def _heldout() -> list[SceneSpec]:
    scenes = []
    for i, (color, shape, motion) in enumerate(DEFAULT_HELDOUT):
        width, height = _CANVASES[i % len(_CANVASES)]
        frames = _DURATIONS[i % len(_DURATIONS)]
        background = next(b for b in _BACKGROUNDS[i % 4 :] + _BACKGROUNDS if b != color)
        alone = _object(color, shape, "medium", motion, 0.5)
        scenes.append(SceneSpec(width, height, frames, _FPS, background, (alone,)))
        # Beside a companion of another shape whose combination training has seen.
        other = SHAPES[(SHAPES.index(shape) + 1) % 3]
        mate_color = _COLORS[(_COLORS.index(color) + 3) % len(_COLORS)]
        mate_motion = "still" if motion != "still" else "right"
        pair = (
            _object(color, shape, "small", motion, 0.28),
            _object(mate_color, other, "medium", mate_motion, 0.72),
        )
        scenes.append(SceneSpec(*_WIDE[i % len(_WIDE)], frames, _FPS, background, pair))
    return scenes


def suite(name: str) -> list[SuiteEntry]:
    """The entries of a named suite ("standard" or "heldout"), in a fixed order."""
    builders = {"standard": _standard, "heldout": _heldout}
    if name not in builders:
        raise ValueError(f"unknown suite {name!r}; choose one of: {', '.join(SUITES)}")
    return [
        SuiteEntry(f"{name}-{i:03d}", prompt(spec), spec) for i, spec in enumerate(builders[name]())
    ]


def write_suite(path: str | os.PathLike, entries: list[SuiteEntry]) -> Path:
    """Write entries as JSON Lines (one {"name", "prompt", "spec"} a line); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"version": SUITE_VERSION, **e.to_dict()}) for e in entries]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_suite(path: str | os.PathLike) -> list[SuiteEntry]:
    """Entries from a JSON Lines file of {"name", "prompt", "spec"} (see `write_suite`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"specs file {path} does not exist; write one with write_suite")
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(SuiteEntry.from_dict(json.loads(line)))
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise ValueError(
                f"{path}:{number}: each line must be a JSON object with name, prompt and "
                f"spec ({error})"
            ) from error
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: entry names must be unique (they name the video files)")
    return entries


def render_suite(
    entries: list[SuiteEntry], folder: str | os.PathLike, extension: str = ".mp4"
) -> list[Path]:
    """Render each entry's ground-truth video to `folder/<name><extension>`.

    The reference a perfect generator would make: scoring it checks the harness end to end
    (it scores near 1.0) and shows how to name generated videos for `evaluate_folder`.
    Images are written as `extension` too; an image extension falls back to .mp4 for videos.
    """
    from kinetoscope.data.world import clip_from_scene
    from kinetoscope.io import IMAGE_EXTENSIONS, write_video

    paths = []
    for entry in entries:
        frames = clip_from_scene(entry.spec).frames
        suffix = ".mp4" if extension in IMAGE_EXTENSIONS and len(frames) > 1 else extension
        paths.append(write_video(Path(folder) / f"{entry.name}{suffix}", frames, entry.spec.fps))
    return paths
