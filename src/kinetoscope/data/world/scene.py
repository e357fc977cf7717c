"""Scene specifications, the generator's configuration, and the default mix of scenes.

A `SceneSpec` says everything needed to simulate and render one clip. Object positions are
fractions of the canvas and speeds are in shorter sides per second, so one spec describes the
same scene at any resolution. Specs can be written by hand (the world benchmark builds fixed
suites of them) or drawn from the default mix with `sample_scene`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .palette import BACKGROUNDS, COLORS, DIRECTIONS, MOTIONS, SHAPES, SIZES, check_name

SIDE_MULTIPLE = 16  # the VAE's spatial factor times the patch size
MIN_SIDE, MAX_SIDE = 32, 1024  # below 32 px a small object is under 6 px; above, rendering cost
MAX_FRAMES = 257  # 1 + 4k frames; longer clips cost memory per clip without teaching more
MAX_FPS = 60
MAX_OBJECTS = 4  # more objects crowd a 32-pixel canvas and make captions run on
MAX_SPEED = 4.0  # shorter sides per second; faster objects jump too far between frames

# (color, shape, motion) combinations held out of generated training data by default, so the
# world benchmark can measure generalisation to combinations never seen: every color, shape
# and motion here appears in training in other combinations.
DEFAULT_HELDOUT: tuple[tuple[str, str, str], ...] = (
    ("red", "circle", "fall"),
    ("blue", "square", "left"),
    ("green", "triangle", "still"),
    ("yellow", "square", "up-right"),
    ("purple", "circle", "down"),
    ("cyan", "triangle", "fall"),
)

# Default mix (about 73% of clips at most 128 px on the longer side, 82% at most 33 frames).
# Aspect-ratio weights favour the ratios that have small sizes: 16:9 and 9:16 exist only as
# 256x144 and 144x256 within 32..256, so they stay rare to keep CPU training fast.
ASPECT_WEIGHTS = {"1:1": 0.42, "4:3": 0.16, "3:4": 0.16, "2:1": 0.16, "16:9": 0.05, "9:16": 0.05}
OTHER_ASPECT_WEIGHT = 0.1  # a ratio the caller adds that is not in the table above
SMALL_LONG_SIDE = 128  # sizes up to this longer side are drawn at full weight
SIZE_FALLOFF = 4  # larger ones at (128 / longer side) ** 4: 256 px is 16 times rarer
STILL_IMAGE_FRACTION = 0.1  # one-frame clips (images)
SHORT_CLIP_FRAMES = 33  # clips up to this many frames are drawn at full weight
LONG_CLIP_WEIGHT = 0.25  # relative weight of each longer frame count
MOTION_WEIGHTS = {
    "still": 0.15,
    "fall": 0.15,
    **{name: 0.7 / len(DIRECTIONS) for name in DIRECTIONS},
}
MIN_SPEED = 0.3  # shorter sides per second; also at least 1 px per frame (see sample_scene)
START_MARGIN_PX = 1.0  # gap between objects' bounding circles at the start


def _nearest_frames(frames: int) -> int:
    return max(1, 1 + 4 * round((frames - 1) / 4))


def check_frames(frames: int, what: str = "frames") -> None:
    """Raise ValueError unless `frames` is 1 + 4k within 1..MAX_FRAMES, naming the nearest."""
    if not isinstance(frames, int | np.integer) or frames < 1 or frames > MAX_FRAMES:
        raise ValueError(
            f"{what} must be an integer 1 + 4k between 1 and {MAX_FRAMES}, got {frames}"
        )
    if (frames - 1) % 4:
        raise ValueError(
            f"{what} must be 1 + 4k (1, 5, 9, ..., 65); {frames} is not, "
            f"the nearest valid count is {_nearest_frames(frames)}"
        )


def check_side(side: int, what: str) -> None:
    """Raise ValueError unless `side` is a multiple of 16 within MIN_SIDE..MAX_SIDE."""
    if not isinstance(side, int | np.integer) or not MIN_SIDE <= side <= MAX_SIDE:
        raise ValueError(f"{what} must be an integer between {MIN_SIDE} and {MAX_SIDE}, got {side}")
    if side % SIDE_MULTIPLE:
        low = side - side % SIDE_MULTIPLE
        raise ValueError(
            f"{what} must be a multiple of {SIDE_MULTIPLE}; {side} is not, "
            f"use {low} or {low + SIDE_MULTIPLE}"
        )


@dataclass(frozen=True)
class ObjectSpec:
    """One object: what it is, where its centre starts and how it moves.

    `x`, `y` are the start centre as fractions of width and height; `speed` is in shorter
    sides per second (0 for "still" and "fall": a falling object starts at rest).
    """

    color: str
    shape: str
    size: str
    motion: str
    x: float
    y: float
    speed: float = 0.0

    def __post_init__(self) -> None:
        check_name("color", self.color, COLORS)
        check_name("shape", self.shape, SHAPES)
        check_name("size", self.size, SIZES)
        check_name("motion", self.motion, MOTIONS)
        for name in ("x", "y"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 < value < 1.0):
                raise ValueError(
                    f"{name} is the start centre as a fraction of the canvas; "
                    f"give a number strictly between 0 and 1, not {value!r}"
                )
        if not (isinstance(self.speed, int | float) and math.isfinite(self.speed)):
            raise ValueError(f"speed must be a finite number, got {self.speed!r}")
        if self.motion in ("still", "fall") and self.speed != 0:
            start = "stays still" if self.motion == "still" else "starts at rest"
            raise ValueError(f"a {self.motion!r} object {start}: set speed=0, not {self.speed}")
        if self.motion in DIRECTIONS and not 0 < self.speed <= MAX_SPEED:
            raise ValueError(
                f"a moving object needs 0 < speed <= {MAX_SPEED} shorter sides per second, "
                f"got {self.speed}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `ObjectSpec.from_dict` reverses it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObjectSpec:
        """Build (and validate) an object from `to_dict`'s output."""
        return cls(**data)


def size_px(obj: ObjectSpec, width: int, height: int) -> float:
    """Diameter or side length of an object in pixels on a `width` x `height` canvas."""
    return SIZES[obj.size] * min(width, height)


@dataclass(frozen=True)
class SceneSpec:
    """One clip: canvas, duration and objects. Validated on construction.

    Objects are drawn in list order (later ones on top) and must start fully inside the
    canvas with their bounding circles (radius = size / 2) not overlapping.
    """

    width: int
    height: int
    frames: int
    fps: float
    background: str
    objects: tuple[ObjectSpec, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        check_side(self.width, "width")
        check_side(self.height, "height")
        check_frames(self.frames)
        if not (isinstance(self.fps, int | float) and 0 < self.fps <= MAX_FPS):
            raise ValueError(f"fps must be a number in (0, {MAX_FPS}], got {self.fps!r}")
        check_name("background", self.background, BACKGROUNDS)
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        seen = set()
        for i, obj in enumerate(self.objects):
            if not isinstance(obj, ObjectSpec):
                raise ValueError(f"object {i} must be an ObjectSpec, got {type(obj).__name__}")
            if COLORS[obj.color] == BACKGROUNDS[self.background]:
                raise ValueError(f"object {i} is the background's own color; pick another color")
            if (obj.color, obj.shape) in seen:
                raise ValueError(
                    f"two objects are both {obj.color} {obj.shape}s; captions could not tell "
                    "them apart, change the color or shape of one"
                )
            seen.add((obj.color, obj.shape))
            half = size_px(obj, self.width, self.height) / 2
            cx, cy = obj.x * self.width, obj.y * self.height
            # 1e-6 px of slack: fractions like 0.92 are not exact in binary.
            lo, hi_x, hi_y = half - 1e-6, self.width - half + 1e-6, self.height - half + 1e-6
            if not (lo <= cx <= hi_x and lo <= cy <= hi_y):
                lo_x, lo_y = half / self.width, half / self.height
                raise ValueError(
                    f"object {i} ({obj.size} {obj.color} {obj.shape}) sticks out of the canvas; "
                    f"keep x in [{lo_x:.3f}, {1 - lo_x:.3f}] and y in [{lo_y:.3f}, {1 - lo_y:.3f}]"
                )
        centres = self.centres_px()
        for i in range(len(self.objects)):
            for j in range(i):
                gap = math.dist(centres[i], centres[j]) - self.radius_px(i) - self.radius_px(j)
                if gap < -1e-9:
                    raise ValueError(
                        f"objects {j} and {i} overlap at the start by {-gap:.1f} px "
                        "(bounding circles); move them apart"
                    )

    def size_px(self, index: int) -> float:
        """Diameter or side length of object `index` in pixels."""
        return size_px(self.objects[index], self.width, self.height)

    def radius_px(self, index: int) -> float:
        """Radius of object `index`'s collision circle (size / 2) in pixels."""
        return self.size_px(index) / 2

    def centres_px(self) -> list[tuple[float, float]]:
        """Start centres in pixels (x right, y down; the canvas spans [0, W] x [0, H])."""
        return [(o.x * self.width, o.y * self.height) for o in self.objects]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `SceneSpec.from_dict` reverses it exactly."""
        data = asdict(self)
        data["objects"] = [o.to_dict() for o in self.objects]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneSpec:
        """Build (and validate) a scene from `to_dict`'s output."""
        data = dict(data)
        data["objects"] = tuple(ObjectSpec.from_dict(o) for o in data.get("objects", ()))
        return cls(**data)


def parse_aspect(text: str) -> tuple[int, int]:
    """'16:9' -> (16, 9); ValueError if it is not two positive integers."""
    parts = str(text).split(":")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        w = h = 0
    if len(parts) != 2 or w <= 0 or h <= 0:
        raise ValueError(f"aspect ratio must look like 4:3 (width:height), got {text!r}")
    return w, h


def aspect_sizes(aspect: str, min_side: int, max_side: int) -> list[tuple[int, int]]:
    """Every (width, height) with that aspect and both sides multiples of 16 in range."""
    a, b = parse_aspect(aspect)
    sizes = []
    for width in range(min_side, max_side + 1, SIDE_MULTIPLE):
        if (width * b) % a == 0:
            height = width * b // a
            if height % SIDE_MULTIPLE == 0 and min_side <= height <= max_side:
                sizes.append((width, height))
    return sizes


def _check_triple(triple: Any) -> tuple[str, str, str]:
    if not (isinstance(triple, tuple | list) and len(triple) == 3):
        raise ValueError(f"an excluded combination is (color, shape, motion), got {triple!r}")
    color, shape, motion = (str(t).strip().lower() for t in triple)
    check_name("color", color, COLORS)
    check_name("shape", shape, SHAPES)
    check_name("motion", motion, MOTIONS)
    return color, shape, motion


def parse_exclude(text: str) -> tuple[tuple[str, str, str], ...]:
    """Held-out combinations from text: 'default', 'none', or 'red:circle:fall,blue:square:left'."""
    text = text.strip().lower()
    if text == "default":
        return DEFAULT_HELDOUT
    if text in ("none", ""):
        return ()
    triples = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 3:
            raise ValueError(
                f"write each excluded combination as color:shape:motion (like red:circle:fall), "
                f"got {item.strip()!r}"
            )
        triples.append(_check_triple(parts))
    return tuple(triples)


@dataclass(frozen=True)
class WorldConfig:
    """What the generator draws from. Validated on construction, before any work."""

    min_side: int = 32  # smallest width or height: small objects stay at least 5 px
    max_side: int = 256  # largest width or height: keeps CPU training fast
    aspect_ratios: tuple[str, ...] = ("1:1", "4:3", "3:4", "16:9", "9:16", "2:1")  # width:height
    min_frames: int = 1  # 1 frame is a still image: images and videos share one model
    max_frames: int = 65  # 8 s at 8 fps: long enough for several bounces
    fps: int = 8  # low fps keeps clips short in frames while motion stays readable
    min_objects: int = 1  # a single object is the easiest case to learn
    max_objects: int = 3  # up to 3 objects gives collisions and occlusion, captions stay short
    exclude: tuple[tuple[str, str, str], ...] = DEFAULT_HELDOUT  # held out for the benchmark
    long_clip_weight: float = LONG_CLIP_WEIGHT  # weight of each count above 33 frames (<= 1)
    # Scenes whose first bounce or collision comes before this frame are drawn again: the
    # VAE folds frames 1-4 into one latent frame, so an event there hides the start motion.
    min_event_frame: int = 0
    # Every even clip is followed by its left-right mirror (left and right swapped in its
    # captions): pairs that differ only in the direction words (see `mirror_scene`).
    mirror_twins: bool = False
    # A moving object starts within this share of the room behind it along each axis it moves
    # on (1: anywhere): less makes where objects start tell their direction.
    start_room: float = 0.6

    def __post_init__(self) -> None:
        check_side(self.min_side, "min_side")
        check_side(self.max_side, "max_side")
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} is above max_side {self.max_side}")
        if isinstance(self.aspect_ratios, str) or not self.aspect_ratios:
            raise ValueError("aspect_ratios must be a non-empty list like ('1:1', '4:3')")
        ratios = tuple(str(r).strip() for r in self.aspect_ratios)
        object.__setattr__(self, "aspect_ratios", ratios)
        for ratio in ratios:
            if not aspect_sizes(ratio, self.min_side, self.max_side):
                raise ValueError(
                    f"aspect ratio {ratio} has no size with both sides multiples of "
                    f"{SIDE_MULTIPLE} between {self.min_side} and {self.max_side}; "
                    "widen the side range or drop that ratio"
                )
        check_frames(self.min_frames, "min_frames")
        check_frames(self.max_frames, "max_frames")
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames {self.min_frames} is above max_frames {self.max_frames}")
        if not isinstance(self.fps, int | np.integer) or not 1 <= self.fps <= MAX_FPS:
            raise ValueError(f"fps must be an integer between 1 and {MAX_FPS}, got {self.fps!r}")
        if not 1 <= self.min_objects <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, "
                f"got {self.min_objects} and {self.max_objects}"
            )
        if not 0 < self.long_clip_weight <= 1:
            raise ValueError(f"long_clip_weight must be in (0, 1], got {self.long_clip_weight}")
        if not (isinstance(self.start_room, int | float) and 0 < self.start_room <= 1):
            raise ValueError(f"start_room must be in (0, 1], got {self.start_room!r}")
        if not isinstance(self.min_event_frame, int) or self.min_event_frame < 0:
            raise ValueError(f"min_event_frame must be 0 or more, got {self.min_event_frame!r}")
        if isinstance(self.exclude, str):
            raise ValueError("exclude is a list of (color, shape, motion); use parse_exclude(text)")
        exclude = tuple(_check_triple(t) for t in self.exclude)
        object.__setattr__(self, "exclude", exclude)
        for background in BACKGROUNDS:
            pairs = {(c, s) for c, s, _ in _allowed_triples(background, exclude, ())}
            if len(pairs) < self.max_objects:
                raise ValueError(
                    f"exclude leaves only {len(pairs)} color-shape pairs on a {background} "
                    f"background, fewer than max_objects={self.max_objects}; exclude fewer"
                )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        data["aspect_ratios"] = list(self.aspect_ratios)
        data["exclude"] = [list(t) for t in self.exclude]
        return data


def _allowed_triples(
    background: str, exclude: tuple, used: tuple | set
) -> list[tuple[str, str, str]]:
    bg = BACKGROUNDS[background]
    held = set(exclude)
    return [
        (c, s, m)
        for c in COLORS
        if COLORS[c] != bg
        for s in SHAPES
        if (c, s) not in used
        for m in MOTIONS
        if (c, s, m) not in held
    ]


def frame_weights(config: WorldConfig) -> dict[int, float]:
    """Probability of each frame count in the default mix (about 10% one-frame images)."""
    counts = list(range(config.min_frames, config.max_frames + 1, 4))
    long = config.long_clip_weight
    clips = {f: (1.0 if f <= SHORT_CLIP_FRAMES else long) for f in counts if f > 1}
    total = sum(clips.values())
    if 1 not in counts:
        return {f: w / total for f, w in clips.items()}
    if not clips:
        return {1: 1.0}
    return {1: STILL_IMAGE_FRACTION} | {
        f: (1 - STILL_IMAGE_FRACTION) * w / total for f, w in clips.items()
    }


def size_weights(config: WorldConfig) -> dict[tuple[int, int], float]:
    """Probability of each (width, height) in the default mix, favouring small canvases."""
    given = {r: ASPECT_WEIGHTS.get(r, OTHER_ASPECT_WEIGHT) for r in config.aspect_ratios}
    norm = sum(given.values())
    weights: dict[tuple[int, int], float] = {}
    for ratio, ratio_weight in given.items():
        sizes = aspect_sizes(ratio, config.min_side, config.max_side)
        raw = [min(1.0, (SMALL_LONG_SIDE / max(w, h)) ** SIZE_FALLOFF) for w, h in sizes]
        for wh, r in zip(sizes, raw, strict=True):
            weights[wh] = weights.get(wh, 0.0) + ratio_weight / norm * r / sum(raw)
    return weights


def _table(weights: dict) -> tuple[list, np.ndarray]:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=np.float64)
    return keys, p / p.sum()


def _choice(rng: np.random.Generator, table: tuple[list, np.ndarray]) -> Any:
    keys, p = table
    return keys[rng.choice(len(keys), p=p)]


@functools.lru_cache(maxsize=16)
def _mix(config: WorldConfig) -> tuple[tuple[list, np.ndarray], tuple[list, np.ndarray]]:
    """Frame-count and canvas-size tables of a config, built once."""
    return _table(frame_weights(config)), _table(size_weights(config))


@functools.lru_cache(maxsize=4096)
def _triple_table(background: str, exclude: tuple, used: frozenset) -> tuple[list, np.ndarray]:
    """(color, shape, motion) choices: the motion by MOTION_WEIGHTS, then a pair uniformly."""
    triples = _allowed_triples(background, exclude, used)
    per_motion: dict[str, int] = {}
    for _c, _s, m in triples:
        per_motion[m] = per_motion.get(m, 0) + 1
    return _table({t: MOTION_WEIGHTS[t[2]] / per_motion[t[2]] for t in triples})


def _round_inside(value: float, lo: float, hi: float) -> float:
    # 3 decimals keep specs readable and make JSON round trips exact; stay inside [lo, hi].
    lo_r, hi_r = math.ceil(lo * 1000) / 1000, math.floor(hi * 1000) / 1000
    return min(max(round(value, 3), lo_r), hi_r)


def _place(
    rng: np.random.Generator,
    motion: str,
    half: float,
    width: int,
    height: int,
    placed: list[tuple[float, float, float]],
    room: float = 0.6,
) -> tuple[float, float] | None:
    """A start centre (fractions) for an object of half-extent `half` px, or None if crowded."""
    ranges = []
    for extent, axis in ((width, 0), (height, 1)):
        lo, hi = half / extent, 1 - half / extent
        # Moving objects start with room ahead, so the motion is seen before the first bounce.
        step = DIRECTIONS[motion][axis] if motion in DIRECTIONS else 0.0
        if step > 0:
            hi = lo + room * (hi - lo)
        elif step < 0:
            lo = lo + (1 - room) * (hi - lo)
        if motion == "fall" and axis == 1:
            hi = lo + 0.35 * (hi - lo)  # falling objects start high, so they fall far
        ranges.append((lo, hi))
    for _ in range(50):
        x = _round_inside(rng.uniform(*ranges[0]), *ranges[0])
        y = _round_inside(rng.uniform(*ranges[1]), *ranges[1])
        if all(
            math.dist((x * width, y * height), (px, py)) >= half + r + START_MARGIN_PX
            for px, py, r in placed
        ):
            return x, y
    return None


def sample_scene(rng: np.random.Generator, config: WorldConfig | None = None) -> SceneSpec:
    """Draw one scene from the default mix of `config` (the weights are the constants above).

    Objects start fully inside the canvas, at least 1 px apart (bounding circles), moving ones
    with room ahead and falling ones high up. The held-out combinations of `config.exclude`
    are never drawn.
    """
    config = config or WorldConfig()
    frame_table, size_table = _mix(config)
    frames = _choice(rng, frame_table)
    width, height = _choice(rng, size_table)
    short = min(width, height)
    background = str(rng.choice(list(BACKGROUNDS)))
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    # At least 1 px per frame, so motion is visible even on a 32-pixel canvas.
    min_speed = max(MIN_SPEED, config.fps / short)
    for _ in range(1000):  # restart when the objects drawn do not fit; rare, and deterministic
        objects: list[ObjectSpec] = []
        placed: list[tuple[float, float, float]] = []
        for _ in range(count):
            used = frozenset((o.color, o.shape) for o in objects)
            color, shape, motion = _choice(rng, _triple_table(background, config.exclude, used))
            size = str(rng.choice(list(SIZES)))
            half = SIZES[size] * short / 2
            spot = _place(rng, motion, half, width, height, placed, config.start_room)
            if spot is None:
                break
            speed = 0.0
            if motion in DIRECTIONS:
                # Rounded up to 3 decimals, so never below the minimum.
                speed = math.ceil(rng.uniform(min_speed, 2 * min_speed) * 1000) / 1000
            objects.append(ObjectSpec(color, shape, size, motion, spot[0], spot[1], speed))
            placed.append((spot[0] * width, spot[1] * height, half))
        if len(objects) == count:
            return SceneSpec(width, height, int(frames), config.fps, background, tuple(objects))
    raise AssertionError(f"could not place {count} objects on a {width}x{height} canvas")


MIRRORED_MOTIONS = {"left": "right", "right": "left", "up-left": "up-right"}
MIRRORED_MOTIONS |= {"up-right": "up-left", "down-left": "down-right", "down-right": "down-left"}


def mirror_scene(scene: SceneSpec) -> SceneSpec:
    """The scene reflected left to right: x -> 1 - x, left and right swapped in every motion.

    The world's physics and shapes are symmetric under this reflection (gravity is vertical,
    triangles point up), so the mirror's clip is the original's, flipped.
    """
    objects = tuple(
        replace(o, x=round(1.0 - o.x, 3), motion=MIRRORED_MOTIONS.get(o.motion, o.motion))
        for o in scene.objects
    )
    return replace(scene, objects=objects)


# Named mixes of `kinetoscope world --mix`. "world-model" spends tokens where the world
# benchmark asks (canvases up to 128 px, 9-33 frames) while keeping every aspect ratio, some
# images and a few longer clips; it drops clips whose first event hides the start motion and
# pairs every clip with its mirror, so direction words carry a signal the loss can see.
WORLD_MIXES: dict[str, WorldConfig] = {
    "default": WorldConfig(),
    "world-model": WorldConfig(
        min_side=48,  # below 48 px a small object is under 8 px: mostly one latent pixel
        max_side=128,  # the benchmark's largest canvas
        aspect_ratios=("1:1", "4:3", "3:4", "3:2", "2:3", "2:1", "1:2"),
        max_frames=49,
        long_clip_weight=0.1,  # 37-49 frames: about 4% of clips, to keep length generalising
        min_event_frame=5,
        mirror_twins=True,
    ),
}
