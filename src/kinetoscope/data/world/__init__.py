"""The synthetic world: a deterministic 2D physics world of captioned clips with exact truth.

Flat-colored circles, squares and triangles stay still, move in one of 8 directions or fall
under gravity on a solid background; they bounce off walls and collide elastically. Every
clip comes with captions at three levels and per-frame ground truth (positions, velocities,
visibility, bounce and collision events). It is the project's training set, test bed and the
benchmark of how well a model simulates a world.

    scene = sample_scene(rng, WorldConfig())    # or SceneSpec(...) by hand
    trajectory = simulate(scene)                # centres, velocities, events
    frames, visibility = render(scene, trajectory)
    text = captions(scene, trajectory, rng)     # {"short", "medium", "long"}
    parse_caption(text["medium"])               # back to objects, motions, background
    write_world(Path("world"), clips=100, seed=0)
"""

from .captions import captions
from .generate import (
    Clip,
    WorldSummary,
    clip_from_scene,
    clip_seed,
    ground_truth,
    make_clip,
    scene_from_truth,
    write_world,
)
from .palette import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    GRAVITY,
    MOTIONS,
    REGIONS,
    SHAPES,
    SIZES,
    WALLS,
    region,
)
from .parse import ParsedCaption, ParsedObject, parse_caption
from .physics import Trajectory, energy, simulate
from .render import render
from .scene import (
    DEFAULT_HELDOUT,
    WORLD_MIXES,
    ObjectSpec,
    SceneSpec,
    WorldConfig,
    mirror_scene,
    parse_exclude,
    sample_scene,
)

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "DEFAULT_HELDOUT",
    "DIRECTIONS",
    "GRAVITY",
    "MOTIONS",
    "REGIONS",
    "SHAPES",
    "SIZES",
    "WALLS",
    "WORLD_MIXES",
    "Clip",
    "ObjectSpec",
    "ParsedCaption",
    "ParsedObject",
    "SceneSpec",
    "Trajectory",
    "WorldConfig",
    "WorldSummary",
    "captions",
    "clip_from_scene",
    "clip_seed",
    "energy",
    "ground_truth",
    "make_clip",
    "mirror_scene",
    "parse_caption",
    "parse_exclude",
    "region",
    "render",
    "sample_scene",
    "scene_from_truth",
    "simulate",
    "write_world",
]
