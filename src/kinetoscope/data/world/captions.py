"""Captions at three levels, each true of its clip and phrased several ways.

- short: the objects, by color and shape, and in a video how each one moves, in a user's
  few words ("a red circle moving right and a blue square falling").
- medium: every object's size, color, shape and motion, and the background
  ("a small red circle moves right across a black background").
- long: every object's size, color, shape, start region (3x3 grid), motion, the walls or
  floor it bounces off and the objects it collides with, and the background.

Captions use exactly the palette's names (colors, sizes, shapes, backgrounds, direction
words such as "up-left" or "up and to the left") so they can be parsed back. Objects are named
by color and shape ("the red circle"), which is unique within a clip. For a one-frame clip
(an image) captions describe appearance and position only, never motion.

Motion words describe how an object starts: a collision may later turn a "moves right" object
around; the long caption says which walls and objects it meets.
"""

from __future__ import annotations

import re

import numpy as np

from .palette import DIRECTIONS, REGIONS, region
from .physics import Trajectory
from .scene import SceneSpec

NUMBERS = ("no", "one", "two", "three", "four", "five", "six")

_MOVE_VERBS = ("moves", "travels", "glides", "slides")
_DIRECTION_PHRASES = {
    "right": ("right", "to the right"),
    "left": ("left", "to the left"),
    "up": ("up", "upward"),
    "down": ("down", "downward"),
}
for _d in ("up-right", "up-left", "down-right", "down-left"):
    _vertical, _horizontal = _d.split("-")
    _DIRECTION_PHRASES[_d] = (_d, f"diagonally {_d}", f"{_vertical} and to the {_horizontal}")
_STILL = ("stays still", "rests", "does not move", "sits still")
_STILL_SHORT = ("staying still", "not moving", "resting", "sitting still")
_MOVING = ("moving", "going", "heading", "sliding", "drifting")
_FALL_SHORT = ("falling", "dropping", "falling down")
_FALL = ("falls", "drops", "falls under gravity")
_FALL_BOUNCE = (
    "falls and bounces on the floor",
    "drops and bounces on the floor",
    "falls, bouncing on the floor",
)
_WALL_NAMES = {"left": "the left wall", "right": "the right wall", "top": "the top wall"}
_WALL_NAMES["floor"] = "the floor"


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _join(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _name(scene: SceneSpec, index: int) -> str:
    obj = scene.objects[index]
    return f"the {obj.color} {obj.shape}"


def _object_events(scene: SceneSpec, trajectory: Trajectory) -> list[tuple[list[str], list[int]]]:
    """Per object: walls it bounced off and objects it collided with, in first-seen order."""
    found: list[tuple[list[str], list[int]]] = [([], []) for _ in scene.objects]
    for event in trajectory.events:
        if event["type"] == "bounce":
            walls = found[event["object"]][0]
            if event["wall"] not in walls:
                walls.append(event["wall"])
        else:
            i, j = event["objects"]
            for a, b in ((i, j), (j, i)):
                if b not in found[a][1]:
                    found[a][1].append(b)
    return found


def _motion(rng: np.random.Generator, motion: str, floor_bounce: bool) -> str:
    """The motion words of the medium caption."""
    if motion == "still":
        return _pick(rng, _STILL)
    if motion == "fall":
        return _pick(rng, _FALL_BOUNCE if floor_bounce else _FALL)
    return f"{_pick(rng, _MOVE_VERBS)} {_pick(rng, _DIRECTION_PHRASES[motion])}"


def _where(obj) -> str:
    return f"in the {region(obj.x, obj.y)}"


def _short_motion(rng: np.random.Generator, motion: str) -> str:
    """A user's few words for a motion: 'moving left', 'falling', 'staying still'."""
    if motion == "still":
        return _pick(rng, _STILL_SHORT)
    if motion == "fall":
        return _pick(rng, _FALL_SHORT)
    return f"{_pick(rng, _MOVING)} {_pick(rng, _DIRECTION_PHRASES[motion])}"


def _short(scene: SceneSpec, rng: np.random.Generator) -> str:
    if scene.frames == 1:
        names = _join([f"a {o.color} {o.shape}" for o in scene.objects])
    else:  # every video caption names each object's motion, as a user's prompt would
        names = _join(
            [f"a {o.color} {o.shape} {_short_motion(rng, o.motion)}" for o in scene.objects]
        )
    template = _pick(rng, ("{o}", "{o} on a {bg} background", "{o}, {bg} background"))
    return template.format(o=names, bg=scene.background)


def _medium(scene: SceneSpec, events, rng: np.random.Generator) -> str:
    objects = [(o.color, o.shape, o.size, o.motion) for o in scene.objects]
    bounces = ["floor" in walls for walls, _ in events]
    return medium_caption(objects, scene.background, rng, video=scene.frames > 1, floor=bounces)


def medium_caption(
    objects: list[tuple[str, str, str, str]],
    background: str,
    rng: np.random.Generator,
    video: bool = True,
    floor: list[bool] | None = None,
) -> str:
    """The medium caption of (color, shape, size, motion) objects on a background, phrasings
    drawn with `rng`; `floor[i]` says object i bounces on the floor (a fall's wording)."""
    clauses = []
    for i, (color, shape, size, motion) in enumerate(objects):
        clause = f"a {size} {color} {shape}"
        if video:
            clause += " " + _motion(rng, motion, bool(floor and floor[i]))
        clauses.append(clause)
    if not video:
        templates = ("{c} on a {bg} background", "{c} against a {bg} background")
        templates += ("a {bg} background with {c}",)
    elif len(clauses) == 1:
        templates = ("{c} across a {bg} background", "{c} on a {bg} background")
        templates += ("on a {bg} background, {c}",)
    else:
        templates = ("{c} on a {bg} background", "on a {bg} background, {c}")
        templates += ("{c}; the background is {bg}",)
    return _pick(rng, templates).format(c=_join(clauses), bg=background)


def _long_sentence(scene: SceneSpec, index: int, walls: list[str], partners: list[int], rng) -> str:
    """One object's sentence of the long caption."""
    obj = scene.objects[index]
    subject = f"A {obj.size} {obj.color} {obj.shape}"
    where = _where(obj)
    if scene.frames == 1:
        return f"{subject} {_pick(rng, ('is', 'appears', 'can be seen'))} {where}."
    others = _join([_name(scene, j) for j in partners])
    if obj.motion == "still":
        parts = [f"{_pick(rng, ('stays still', 'rests', 'sits still'))} {where}"]
        if partners:
            parts.append(f"is hit by {others}")
        return f"{subject} {_join(parts)}."
    if obj.motion == "fall":
        start = where.removeprefix("in ")  # "the top left"
        parts = [_pick(rng, (f"starts at rest {where} and falls", f"falls from {start}"))]
    else:
        moves = f"{_pick(rng, _MOVE_VERBS)} {_pick(rng, _DIRECTION_PHRASES[obj.motion])}"
        parts = [f"starts {where}", moves]
    if walls:
        parts.append("bounces off " + _join([_WALL_NAMES[w] for w in walls]))
    if partners:
        parts.append(f"{_pick(rng, ('collides with', 'bumps into'))} {others}")
    return f"{subject} {_join(parts)}."


def _long(scene: SceneSpec, events, rng: np.random.Generator) -> str:
    n = len(scene.objects)
    count = f"{NUMBERS[n]} object{'s' if n > 1 else ''}"
    if scene.frames == 1:
        openers = ("", f"An image of {count}. ", f"A picture of {count}. ")
    else:
        openers = ("", f"A video of {count}. ", f"This clip shows {count}. ")
    sentences = [
        _long_sentence(scene, i, walls, partners, rng) for i, (walls, partners) in enumerate(events)
    ]
    bg = scene.background
    background = _pick(
        rng,
        (
            f"The background is {bg}.",
            f"The background is a flat {bg}.",
            f"Everything happens on a {bg} background.",
        ),
    )
    if scene.frames == 1 and background.startswith("Everything"):
        background = f"The background is plain {bg}."
    body = [background, *sentences] if rng.random() < 0.3 else [*sentences, background]
    return _pick(rng, openers) + " ".join(body)


def alt_text(objects: list[dict], background: str, rng: np.random.Generator) -> str:
    """What alt-text says of a clip: its objects by colour and shape, sometimes the
    background; never their size, motion or place. `objects`: the truth file's. The captions
    a web-scraped video comes with, against which the recaptioning study measures the
    captioner's."""
    names = _join([f"a {o['color']} {o['shape']}" for o in objects])
    template = _pick(rng, ("{o}", "{o} on a {bg} background", "a video of {o}", "{o}, {bg}"))
    return template.format(o=names, bg=background)


def in_reading_order(caption: str, objects: list[dict]) -> str:
    """A long caption with its object sentences in reading order of where the objects start
    (by 3x3 region, rows top to bottom, then left to right; then by exact start), the other
    sentences where they were. `objects`: the truth file's. A caption whose sentences are not
    one per object (other levels, other footage) comes back unchanged.

    The world names objects in the random order it drew them; a captioner cannot see that
    order, but it can see where objects start, so it learns to write them in this one."""
    sentences = re.split(r"(?<=\.)\s+", caption.strip())
    slots = {}
    for index, obj in enumerate(objects):
        subject = f"A {obj['size']} {obj['color']} {obj['shape']} "
        found = [k for k, sentence in enumerate(sentences) if sentence.startswith(subject)]
        if len(found) != 1:
            return caption
        slots[found[0]] = index  # one sentence each: no two objects share colour and shape

    def place(index: int) -> tuple:
        x, y = objects[index]["start"]
        row = next(r for r, names in enumerate(REGIONS) if objects[index]["region"] in names)
        return row, REGIONS[row].index(objects[index]["region"]), y, x

    ordered = iter(sorted(slots.values(), key=place))
    by_object = {slots[k]: sentences[k] for k in slots}
    return " ".join(by_object[next(ordered)] if k in slots else s for k, s in enumerate(sentences))


def captions(scene: SceneSpec, trajectory: Trajectory, rng: np.random.Generator) -> dict[str, str]:
    """Short, medium and long captions of a simulated scene, phrasings drawn with `rng`."""
    events = _object_events(scene, trajectory)
    return {
        "short": _short(scene, rng),
        "medium": _medium(scene, events, rng),
        "long": _long(scene, events, rng),
    }


assert set(_DIRECTION_PHRASES) == set(DIRECTIONS)
