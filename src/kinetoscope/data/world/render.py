"""Rendering: flat-colored shapes with anti-aliased edges on a solid background.

Shapes, for an object of size s (pixels) centred at (cx, cy):

- circle: diameter s.
- square: axis-aligned, side s.
- triangle: isosceles, pointing up, base s and height s, so it fills the same s x s box as
  the square; its centre is the centre of that box (its centroid lies s / 6 lower). Its
  sides are about 1.12 s long, close to equilateral.

Each pixel's coverage is clip(0.5 - d, 0, 1), with d the signed distance (pixels) from the
pixel's centre to the shape's edge, negative inside: a box filter one pixel wide, exact for
straight edges. Coverage is computed only inside each object's bounding box, for all frames
at once. Objects are drawn in index order, later ones on top, so occlusion is consistent.
"""

from __future__ import annotations

import math

import numpy as np

from .palette import BACKGROUNDS, COLORS
from .physics import Trajectory
from .scene import SceneSpec

_SQRT5 = math.sqrt(5.0)


def signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) of offsets from a shape's centre.

    `dx` (..., 1, w) and `dy` (..., h, 1) broadcast to (..., h, w). Outside a square's
    corners and the triangle's vertices the triangle uses the largest distance to its
    edge lines, which is exact inside and along the edges, where anti-aliasing needs it.
    """
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - half
    if shape == "square":
        qx, qy = np.abs(dx) - half, np.abs(dy) - half
        outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
        return outside + np.minimum(np.maximum(qx, qy), 0)
    if shape == "triangle":
        # Apex (0, -half), base corners (+-half, half); outward normals (-+2, -1) / sqrt(5).
        below_apex = dy + half
        left = (-2.0 * dx - below_apex) / _SQRT5
        right = (2.0 * dx - below_apex) / _SQRT5
        return np.maximum(np.maximum(left, right), dy - half)
    raise ValueError(f"unknown shape {shape!r}")


def _object_coverage(
    scene: SceneSpec, index: int, centres: np.ndarray
) -> tuple[np.ndarray, list[int], list[int]]:
    """Coverage (T, b, b) float32 of one object inside its b x b box, and the boxes' corners."""
    width, height = scene.width, scene.height
    half = scene.size_px(index) / 2
    box = math.ceil(2 * half) + 1  # wide enough for any sub-pixel offset of the extent
    assert box <= min(width, height)
    cx, cy = centres[:, 0], centres[:, 1]  # (T,)
    # Walls keep the extent inside the canvas, so a clamped box still holds all of it.
    x0 = np.clip(np.floor(cx - half).astype(np.int64), 0, width - box)  # (T,)
    y0 = np.clip(np.floor(cy - half).astype(np.int64), 0, height - box)
    steps = np.arange(box)
    dx = (x0[:, None] + steps + 0.5 - cx[:, None]).astype(np.float32)[:, None, :]  # (T, 1, b)
    dy = (y0[:, None] + steps + 0.5 - cy[:, None]).astype(np.float32)[:, :, None]  # (T, b, 1)
    distance = signed_distance(scene.objects[index].shape, dx, dy, np.float32(half))
    coverage = np.clip(np.float32(0.5) - distance, 0, 1)  # (T, b, b)
    return coverage, x0.tolist(), y0.tolist()


def _visible(boxes: list, i: int, t: int) -> float:
    """Fraction of object i's coverage at frame t that no later object covers."""
    coverage, x0, y0 = boxes[i]
    box = coverage.shape[1]
    xi, yi = x0[t], y0[t]
    seen = None
    for later, lx0, ly0 in boxes[i + 1 :]:
        other = later.shape[1]
        xs, xe = max(xi, lx0[t]), min(xi + box, lx0[t] + other)
        ys, ye = max(yi, ly0[t]), min(yi + box, ly0[t] + other)
        if xs >= xe or ys >= ye:
            continue  # boxes do not overlap
        if seen is None:
            seen = coverage[t].copy()
        seen[ys - yi : ye - yi, xs - xi : xe - xi] *= (
            1 - later[t, ys - ly0[t] : ye - ly0[t], xs - lx0[t] : xe - lx0[t]]
        )
    if seen is None:
        return 1.0
    return float(seen.sum(dtype=np.float64) / coverage[t].sum(dtype=np.float64))


def render(scene: SceneSpec, trajectory: Trajectory) -> tuple[np.ndarray, np.ndarray]:
    """Draw a simulated scene.

    Returns frames `T H W 3` uint8 and visibility (n_obj, T) float64: the fraction of each
    object's own coverage that no later-drawn object covers (1 = fully visible).
    """
    n, frames_n, width, height = len(scene.objects), scene.frames, scene.width, scene.height
    assert trajectory.positions.shape[:2] == (n, frames_n)
    # Filling one repeated pattern is much faster than broadcasting an RGB triple.
    pattern = np.tile(np.array(BACKGROUNDS[scene.background], dtype=np.uint8), height * width)
    frames = np.empty((frames_n, height, width, 3), dtype=np.uint8)  # T H W 3
    frames.reshape(frames_n, -1)[:] = pattern
    boxes = []
    for i, obj in enumerate(scene.objects):
        coverage, x0, y0 = _object_coverage(scene, i, trajectory.positions[i])
        alpha = coverage[..., None]  # (T, b, b, 1)
        color = np.array(COLORS[obj.color], dtype=np.float32)
        box = coverage.shape[1]
        for t in range(frames_n):
            region = frames[t, y0[t] : y0[t] + box, x0[t] : x0[t] + box]  # b b 3 view
            under = region.astype(np.float32)
            # Blend over what is already drawn; rounding once per object keeps edges exact.
            region[...] = np.rint(under + (color - under) * alpha[t])
        boxes.append((coverage, x0, y0))
    visibility = np.ones((n, frames_n))
    for i in range(n - 1):
        for t in range(frames_n):
            visibility[i, t] = _visible(boxes, i, t)
    return frames, visibility
