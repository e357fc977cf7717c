"""Rendering of the synthetic world: flat colors, anti-aliased edges, sizes, occlusion."""

import math

import numpy as np
import pytest

from kinetoscope.data.world import (
    BACKGROUNDS,
    COLORS,
    ObjectSpec,
    SceneSpec,
    WorldConfig,
    render,
    sample_scene,
    simulate,
)

AREA = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}  # in units of size^2


def _draw(scene: SceneSpec):
    traj = simulate(scene)
    frames, visibility = render(scene, traj)
    return traj, frames, visibility


def _coverage(frame: np.ndarray, background: str, color: str) -> np.ndarray:
    """Per-pixel coverage of one object over the background, recovered from the pixels."""
    bg = np.array(BACKGROUNDS[background], dtype=np.float64)
    fg = np.array(COLORS[color], dtype=np.float64)
    channel = int(np.argmax(np.abs(fg - bg)))  # the channel with the most contrast
    return (frame[..., channel] - bg[channel]) / (fg[channel] - bg[channel])


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
@pytest.mark.parametrize("size", ["small", "large"])
def test_area_and_centre_match_the_spec(shape, size):
    obj = ObjectSpec("yellow", shape, size, "down-right", 0.43, 0.41, 0.5)
    scene = SceneSpec(128, 96, 5, 8, "navy", (obj,))
    traj, frames, _ = _draw(scene)
    s = scene.size_px(0)
    for t in range(scene.frames):
        cover = _coverage(frames[t], "navy", "yellow")
        # Rounding to uint8 costs at most half a level per pixel along the edge.
        assert cover.sum() == pytest.approx(AREA[shape] * s * s, rel=0.02)
        rows, cols = np.mgrid[0 : scene.height, 0 : scene.width] + 0.5
        cx = (cover * cols).sum() / cover.sum()
        cy = (cover * rows).sum() / cover.sum()
        x, y = traj.positions[0, t]
        # The triangle's centre is its bounding box's centre; its centroid lies s / 6 lower.
        assert cx == pytest.approx(x, abs=0.05)
        assert cy == pytest.approx(y + (s / 6 if shape == "triangle" else 0.0), abs=0.05)


def test_flat_colors_and_anti_aliased_edges():
    obj = ObjectSpec("red", "circle", "large", "still", 0.5, 0.5)
    scene = SceneSpec(64, 64, 1, 8, "beige", (obj,))
    _, frames, visibility = _draw(scene)
    frame = frames[0]
    assert frames.shape == (1, 64, 64, 3) and frames.dtype == np.uint8
    assert tuple(frame[0, 0]) == BACKGROUNDS["beige"]
    assert tuple(frame[32, 32]) == COLORS["red"]
    cover = _coverage(frame, "beige", "red")
    edge = (cover > 0.02) & (cover < 0.98)
    # Anti-aliasing: a ring of partly covered pixels around the circle, about its perimeter.
    assert edge.sum() >= 0.8 * math.pi * scene.size_px(0)
    # Every pixel is a blend of exactly the two colors (no textures, no noise).
    bg, fg = np.array(BACKGROUNDS["beige"]), np.array(COLORS["red"])
    blend = bg + np.clip(cover, 0, 1)[..., None] * (fg - bg)
    assert np.abs(frame - blend).max() <= 1.0
    assert visibility.shape == (1, 1) and visibility[0, 0] == 1.0


def test_later_objects_are_drawn_on_top_and_visibility_measures_occlusion():
    # Two squares on a diagonal: bounding circles apart, but their corners overlap.
    s = 0.32 * 64
    d = s / math.sqrt(2) + 0.5  # centre offset along each axis
    first = ObjectSpec("green", "square", "large", "still", 0.4, 0.4)
    second = ObjectSpec(
        "purple", "square", "large", "still", (0.4 * 64 + d) / 64, (0.4 * 64 + d) / 64
    )
    scene = SceneSpec(64, 64, 5, 8, "black", (first, second))
    _, frames, visibility = _draw(scene)
    overlap = (s - d) ** 2  # the shared corner region of the two squares
    assert visibility[0] == pytest.approx(1 - overlap / s**2, abs=0.01)
    assert np.all(visibility[1] == 1.0)
    # Inside the shared corner, the later (purple) square is what shows.
    inside = int(0.4 * 64 + d - s / 2) + 1
    assert tuple(frames[0, inside, inside]) == COLORS["purple"]


def test_visibility_is_a_fraction_and_occlusion_only_between_objects():
    rng = np.random.default_rng(0)
    config = WorldConfig(exclude=(), min_objects=3, max_objects=3, min_frames=17)
    occluded = 0
    for _ in range(40):
        scene = sample_scene(rng, config)
        _, _, visibility = _draw(scene)
        assert visibility.shape == (3, scene.frames)
        assert np.all(visibility >= 0) and np.all(visibility <= 1)
        assert np.all(visibility[-1] == 1.0)  # nothing is drawn over the last object
        occluded += int((visibility < 1).any())
    assert occluded > 0, "collisions should overlap objects now and then"


def test_rendering_is_deterministic():
    scene = sample_scene(np.random.default_rng(7), WorldConfig(min_frames=9))
    traj = simulate(scene)
    a, va = render(scene, traj)
    b, vb = render(scene, traj)
    assert np.array_equal(a, b) and np.array_equal(va, vb)
