"""Deterministic 2D physics of the world: walls, gravity and elastic collisions.

Units are pixels and frames: positions are object centres in pixels (x right, y down, the
canvas spans [0, W] x [0, H]) and velocities are pixels per frame. Each frame is split into
sub-steps short enough that no object moves more than a quarter of the smallest object's
size in one, so collisions are never stepped over.

- Walls: an object's extent (half its size on every side, for every shape) never leaves the
  canvas. Wall contacts are solved exactly within a sub-step (the crossing time of the
  free-flight parabola), so the normal velocity is reversed and no energy is lost, with or
  without gravity.
- Gravity acts on "fall" objects only; they start at rest and bounce on the floor back to
  their start height.
- Collisions use a bounding circle of radius size / 2 for every shape. That circle is exact
  for a circle; it is inscribed in a square and a triangle, so their corners may overlap a
  little before they collide. Moving objects collide elastically with mass proportional to
  their area; a "still" object is an immovable obstacle (infinite mass) that never moves.
  A pair that overlaps at the end of a sub-step and approaches gets the elastic impulse;
  positions are not moved, so energy is conserved exactly.

Energy: without gravity, total kinetic energy is conserved to float rounding (relative error
below 1e-9); with gravity, kinetic plus potential energy is conserved to the same tolerance,
since wall contacts are solved exactly and impulses leave positions alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .palette import DIRECTIONS, GRAVITY
from .scene import SceneSpec

MIN_SUBSTEPS = 4
MAX_STEP = 0.25  # most an object moves per sub-step, as a fraction of the smallest size

# Area of a shape of size s, in units of s^2 (the triangle's base and height are both s).
AREA = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}


@dataclass
class Trajectory:
    """What `simulate` returns. Frame k is time k / fps; frame 0 is the spec's start state."""

    positions: np.ndarray  # (n_obj, T, 2) float64: centre in pixels
    velocities: np.ndarray  # (n_obj, T, 2) float64: pixels per frame
    # {"frame": k, "type": "bounce", "object": i, "wall": "left"|"right"|"top"|"floor"} and
    # {"frame": k, "type": "collision", "objects": [i, j]}; frame k means the event happened
    # between frames k - 1 and k.
    events: list[dict] = field(default_factory=list)
    mass: np.ndarray | None = None  # (n_obj,) area in px^2; inf for a still object
    gravity: np.ndarray | None = None  # (n_obj,) px / frame^2; 0 unless the object falls
    substeps: int = MIN_SUBSTEPS


def _first_root(a: float, b: float, c: float, limit: float) -> float | None:
    """Smallest t in (0, limit] with a t^2 + b t + c = 0, or None (numerically stable)."""
    if a == 0.0:
        if b == 0.0:
            return None
        t = -c / b
        return t if 0.0 < t <= limit else None
    disc = b * b - 4.0 * a * c
    if disc < 0.0:
        return None
    q = -0.5 * (b + math.copysign(math.sqrt(disc), b))
    roots = (q / a, c / q) if q != 0.0 else (-b / (2.0 * a),)
    valid = [t for t in roots if 0.0 < t <= limit]
    return min(valid) if valid else None


def _advance(
    x: float, v: float, a: float, dt: float, lo: float, hi: float
) -> tuple[float, float, list[int]]:
    """Move along one axis for dt under acceleration a >= 0, reflecting off lo and hi exactly.

    Returns the new position, velocity and the walls hit in order (0 = lo, 1 = hi).
    """
    # Fast path: the free-flight end point is inside and the path cannot have left between
    # (linear motion is monotonic; under gravity (a >= 0) only the top can be passed mid-step).
    end = x + v * dt + 0.5 * a * dt * dt
    passes_top = v < 0.0 < v + a * dt and x - v * v / (2.0 * a) <= lo
    if lo < x < hi and lo < end < hi and not passes_top:
        return end, v + a * dt, []
    hits: list[int] = []
    remaining = dt
    while True:
        # A position a rounding error outside, moving out, bounces at once.
        if x >= hi and v > 0.0:
            x, v = hi, -v
            hits.append(1)
            continue
        if x <= lo and v < 0.0:
            x, v = lo, -v
            hits.append(0)
            continue
        t_lo = _first_root(0.5 * a, v, x - lo, remaining)
        t_hi = _first_root(0.5 * a, v, x - hi, remaining)
        if t_lo is None and t_hi is None:
            x += v * remaining + 0.5 * a * remaining * remaining
            v += a * remaining
            return min(max(x, lo), hi), v, hits
        wall, t = (0, t_lo) if t_hi is None or (t_lo is not None and t_lo < t_hi) else (1, t_hi)
        v = -(v + a * t)
        x = lo if wall == 0 else hi
        remaining -= t
        hits.append(wall)
        assert len(hits) < 64, "an object bounced between walls without end"


def simulate(scene: SceneSpec) -> Trajectory:
    """Simulate a scene: per-frame centres and velocities of every object, and events."""
    n, frames = len(scene.objects), scene.frames
    width, height = scene.width, scene.height
    short = min(width, height)
    half = [scene.size_px(i) / 2 for i in range(n)]
    # Clamp: a spec may sit a rounding error outside (fractions like 0.92 are inexact).
    x = [min(max(o.x * width, h), width - h) for o, h in zip(scene.objects, half, strict=True)]
    y = [min(max(o.y * height, h), height - h) for o, h in zip(scene.objects, half, strict=True)]
    # Speeds are shorter sides per second; the simulation runs in pixels per frame.
    step = [o.speed * short / scene.fps for o in scene.objects]
    unit = [DIRECTIONS.get(o.motion, (0.0, 0.0)) for o in scene.objects]
    vx = [u[0] * s for u, s in zip(unit, step, strict=True)]
    vy = [u[1] * s for u, s in zip(unit, step, strict=True)]
    g = [GRAVITY * short / scene.fps**2 if o.motion == "fall" else 0.0 for o in scene.objects]
    moving = [o.motion != "still" for o in scene.objects]
    mass = [AREA[o.shape] * scene.size_px(i) ** 2 for i, o in enumerate(scene.objects)]
    inv_mass = [1.0 / m if mov else 0.0 for m, mov in zip(mass, moving, strict=True)]

    # Sub-steps: bound every speed the clip can reach (a fall from the top, doubled for what an
    # elastic collision can hand on) so that no object moves more than MAX_STEP of the
    # smallest size per sub-step.
    fastest = 2 * max(math.sqrt(vx[i] ** 2 + vy[i] ** 2 + 2 * g[i] * height) for i in range(n))
    substeps = max(MIN_SUBSTEPS, math.ceil(fastest / (MAX_STEP * 2 * min(half))))
    dt = 1.0 / substeps

    positions = np.empty((n, frames, 2))
    velocities = np.empty((n, frames, 2))
    positions[:, 0] = np.array([x, y]).T
    velocities[:, 0] = np.array([vx, vy]).T
    events: list[dict] = []
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if moving[i] or moving[j]]
    for frame in range(1, frames):
        seen: set = set()
        for _ in range(substeps):
            for i in range(n):
                if not moving[i]:
                    continue
                x[i], vx[i], hits_x = _advance(x[i], vx[i], 0.0, dt, half[i], width - half[i])
                y[i], vy[i], hits_y = _advance(y[i], vy[i], g[i], dt, half[i], height - half[i])
                for wall in [("left", "right")[h] for h in hits_x] + [
                    ("top", "floor")[h] for h in hits_y
                ]:
                    if ("bounce", i, wall) not in seen:
                        seen.add(("bounce", i, wall))
                        events.append({"frame": frame, "type": "bounce", "object": i, "wall": wall})
            for i, j in pairs:
                dx, dy = x[j] - x[i], y[j] - y[i]
                reach = half[i] + half[j]
                dist2 = dx * dx + dy * dy
                if dist2 >= reach * reach or dist2 == 0.0:
                    continue
                dist = math.sqrt(dist2)
                nx, ny = dx / dist, dy / dist
                closing = (vx[j] - vx[i]) * nx + (vy[j] - vy[i]) * ny
                if closing >= 0.0:
                    continue  # already separating
                # Elastic impulse along the normal; a still object has zero inverse mass.
                k = 2.0 * closing / (inv_mass[i] + inv_mass[j])
                vx[i] += k * inv_mass[i] * nx
                vy[i] += k * inv_mass[i] * ny
                vx[j] -= k * inv_mass[j] * nx
                vy[j] -= k * inv_mass[j] * ny
                if ("collision", i, j) not in seen:
                    seen.add(("collision", i, j))
                    events.append({"frame": frame, "type": "collision", "objects": [i, j]})
        positions[:, frame] = np.array([x, y]).T
        velocities[:, frame] = np.array([vx, vy]).T
    return Trajectory(
        positions=positions,
        velocities=velocities,
        events=events,
        mass=np.array([m if mov else np.inf for m, mov in zip(mass, moving, strict=True)]),
        gravity=np.array(g),
        substeps=substeps,
    )


def energy(trajectory: Trajectory) -> np.ndarray:
    """(T,) total kinetic plus gravitational potential energy of the moving objects.

    Units: mass in px^2 (area), so energy is px^4 / frame^2. Still objects never move and
    contribute nothing.
    """
    assert trajectory.mass is not None and trajectory.gravity is not None
    moving = np.isfinite(trajectory.mass)
    m = trajectory.mass[moving][:, None]  # (n_moving, 1)
    v2 = (trajectory.velocities[moving] ** 2).sum(-1)  # (n_moving, T)
    # Height above the canvas origin grows as y shrinks (y points down).
    potential = -m * trajectory.gravity[moving][:, None] * trajectory.positions[moving, :, 1]
    return (0.5 * m * v2 + potential).sum(0)
