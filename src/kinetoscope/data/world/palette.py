"""The world's vocabulary: backgrounds, colors, shapes, sizes, directions and motions.

Captions use exactly these names, so a test or a benchmark can parse them back. Colors are
flat and far apart so that a pixel analyzer can segment objects by color alone.
"""

from __future__ import annotations

import math

# name -> RGB of the solid canvas.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (16, 16, 16),
    "gray": (96, 96, 96),
    "navy": (24, 32, 80),
    "beige": (220, 205, 170),
}

# name -> RGB of an object.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "cyan": (40, 200, 210),
    "white": (240, 240, 240),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# name -> diameter (circle) or side length (square; triangle base and height) as a fraction
# of the canvas's shorter side.
SIZES: dict[str, float] = {"small": 0.16, "medium": 0.24, "large": 0.32}

_D = 1 / math.sqrt(2)

# name -> unit vector (dx, dy) in image coordinates: x to the right, y down.
DIRECTIONS: dict[str, tuple[float, float]] = {
    "right": (1.0, 0.0),
    "left": (-1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-right": (_D, -_D),
    "up-left": (-_D, -_D),
    "down-right": (_D, _D),
    "down-left": (-_D, _D),
}

# "still": never moves (an immovable obstacle); a direction: constant velocity until a wall or
# another object deflects it; "fall": starts at rest and falls under gravity.
MOTIONS: tuple[str, ...] = ("still", *DIRECTIONS, "fall")

# Start regions of the long caption: a 3x3 grid over the canvas, indexed [row][column].
REGIONS: tuple[tuple[str, ...], ...] = (
    ("top left", "top center", "top right"),
    ("center left", "center", "center right"),
    ("bottom left", "bottom center", "bottom right"),
)

# Walls as they are named in events and captions ("floor" is the bottom wall).
WALLS: tuple[str, ...] = ("left", "right", "top", "floor")

# Gravity of falling objects, in shorter sides per second squared: a fall across a square
# canvas takes about 1 s (8 frames at the default fps), short enough for 17-frame clips.
GRAVITY = 1.5


def region(x: float, y: float) -> str:
    """The 3x3 grid region of a point given as fractions of width and height."""
    column = min(int(x * 3), 2)
    row = min(int(y * 3), 2)
    return REGIONS[row][column]


def _names(names) -> str:
    return ", ".join(names)


def check_name(kind: str, name: str, valid) -> None:
    """Raise ValueError naming the valid choices if `name` is not one of them."""
    if name not in valid:
        raise ValueError(f"unknown {kind} {name!r}; choose one of: {_names(valid)}")


# Object colors must never be a background's own color (the analyzer separates them by color).
assert not set(COLORS.values()) & set(BACKGROUNDS.values())
