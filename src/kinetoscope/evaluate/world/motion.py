"""Motion of one object from its centre track: still, constant velocity, or gravity with bounces.

Pure geometry on a `(T, 2)` track of centres in pixels (x right, y down): no pixels here.
Second differences of the centres are the accelerations; the one most steps share is the
model (zero, or gravity pointing down), and steps out of line are events (a bounce off a
wall, a collision). An event is explained when the object touches a wall and its step is
mirrored across it, or when it touches another object.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from kinetoscope.data.world import DIRECTIONS

STILL_PX = 0.5  # most a still object's centre may wander (pixels)
# Second differences of centres beyond this (pixels per frame^2) are events: world centroids
# are good to about 0.15 px, and a generated object's jitter grows with its size.
EVENT_PX = 0.4
EVENT_SIZE = 0.01
SPLIT_PX = 1.0  # a run of centres a line misses by more than this (plus a share of the
SPLIT_SIZE = 0.05  # size) is split in two where two lines fit best
NOISY_STEPS = 6  # accelerations needed to measure a track's own noise
NOISY_SIGMAS = 3.5  # events lie beyond this many of its standard deviations


@dataclass
class MotionFit:
    """Fitted motion of one object's centre track.

    `motion` uses the world's names: "still", a direction from DIRECTIONS, or "fall"; None
    when the track is too short to tell (a single frame). Velocity and gravity are in
    pixels per frame (squared); `residual` is the RMS distance (pixels) of the centres from
    the piecewise model; `events` are the frames k at which the course changed between
    frames k - 1 and k, with what explains each ("left", "right", "top", "floor" for a wall,
    "object" for a collision, or None).
    """

    kind: str | None  # "still" | "linear" | "fall" | None
    direction: str | None  # of the velocity before the first event (moving objects)
    velocity: tuple[float, float] = (0.0, 0.0)
    gravity: float = 0.0
    residual: float = 0.0
    events: list[tuple[int, str | None]] = field(default_factory=list)
    smooth: float = 1.0  # share of measured steps outside every event
    fitted_frames: int = 0

    @property
    def motion(self) -> str | None:
        """The world's motion name: "still", a direction, "fall", or None if unknown."""
        if self.kind == "linear":
            return self.direction
        return self.kind


def _direction(v: np.ndarray) -> str:
    return max(DIRECTIONS, key=lambda n: v[0] * DIRECTIONS[n][0] + v[1] * DIRECTIONS[n][1])


def _wall(box: np.ndarray, axis: int, width: int, height: int, margin: float) -> str | None:
    """The wall across `axis` that `box` touches within `margin` pixels, if any."""
    lo, hi = (box[0], box[2]) if axis == 0 else (box[1], box[3])
    extent = width if axis == 0 else height
    if lo <= margin:
        return "left" if axis == 0 else "top"
    if hi >= extent - 1 - margin:
        return "right" if axis == 0 else "floor"
    return None


def _explain(
    frames: range,
    before: np.ndarray | None,
    after: np.ndarray | None,
    slack: float,
    track: int,
    boxes: np.ndarray,
    canvas: tuple[int, int],
) -> str | None:
    """What turned object `track` from step `before` to step `after` within `frames`.

    A wall, if the object touches it and the step is mirrored across it (elastic bounce:
    the normal component flips, the other is kept, within `slack`); another object, if
    the two touch. None if nothing explains the turn.
    """
    known = before is not None and after is not None
    reach = max(
        np.linalg.norm(before) if before is not None else 0.0,
        np.linalg.norm(after) if after is not None else 0.0,
    )
    for flips in ((0,), (1,), (0, 1)):
        if known:
            mirrored = before.copy()
            mirrored[list(flips)] *= -1
            if np.linalg.norm(after - mirrored) > slack:
                continue
        for f in frames:
            box = boxes[track, f]
            if np.isnan(box).any():
                continue
            walls = [_wall(box, axis, *canvas, 1.5 + reach) for axis in flips]
            if all(walls):
                return walls[0]
    for other in range(boxes.shape[0]):
        if other == track:
            continue
        # Objects that meet between two frames are apart on both by up to half their
        # closing speed: allow half of both objects' steps.
        theirs = _box_steps(boxes[other], frames)
        for f in frames:
            box, ob = boxes[track, f], boxes[other, f]
            if np.isnan(box).any() or np.isnan(ob).any():
                continue
            gap = max(ob[0] - box[2], box[0] - ob[2], ob[1] - box[3], box[1] - ob[3])
            if gap <= 1.5 + 0.5 * (reach + theirs):
                return "object"
    return None


def _box_steps(boxes: np.ndarray, frames: range) -> float:
    """Largest move (pixels) of a box centre between neighbouring frames of `frames`."""
    centres = (boxes[list(frames), :2] + boxes[list(frames), 2:]) / 2  # (n, 2)
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=-1)
    steps = steps[~np.isnan(steps)]
    return float(steps.max()) if len(steps) else 0.0


def _typical_acceleration(a: np.ndarray, tol: float) -> np.ndarray:
    """The acceleration (2,) that most steps share: events are outliers, not the rule.

    Candidates are zero and each measured value; the one with the most others within `tol`
    wins, ties going to zero and then to the earliest (events come after a clean start).
    An upward winner needs the support of at least half the values.
    """
    candidates = np.concatenate([np.zeros((1, 2)), a])  # (1 + n, 2)
    close = np.linalg.norm(a[None] - candidates[:, None], axis=-1) <= tol  # (1 + n, n)
    best = int(close.sum(1).argmax())  # argmax takes the first of equal counts
    # Upward acceleration (never seen in the world) must be shared by at least half the
    # steps to be claimed: a crowd of bounces must not pass for it.
    if best > 0 and candidates[best, 1] < 0 and 2 * close[best].sum() < len(a):
        best = 0
    return a[close[best]].mean(0) if close[best].any() else np.zeros(2)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True."""
    runs, k = [], 0
    while k < len(flags):
        if flags[k]:
            m = k
            while m + 1 < len(flags) and flags[m + 1]:
                m += 1
            runs.append((k, m))
            k = m + 1
        else:
            k += 1
    return runs


def fit_motion(
    centres: np.ndarray,
    good: np.ndarray,
    size_px: float,
    boxes: np.ndarray | None = None,
    index: int = 0,
    canvas: tuple[int, int] | None = None,
    usable: np.ndarray | None = None,
) -> MotionFit:
    """Fit still / constant velocity / gravity with bounces to one centre track.

    `centres` (T, 2) pixels; `good` (T,) bool marks frames whose centre can be trusted
    (mostly visible). `boxes` (n_obj, T, 4) and `canvas` (width, height), when given, are
    used to explain events by walls and other objects. `usable` (T,) bool, when given, marks
    frames good enough for the first step's direction though not for event detection.

    The direction is that of the first clean steps: those before the first step whose
    change breaks the fitted model (a bounce or collision). A course changed between frames
    0 and 1 leaves no clean step, so its direction is that of the mixed first step.
    """
    frames = len(centres)
    idx = np.flatnonzero(good)
    if len(idx) < 2:
        return MotionFit(kind=None, direction=None, fitted_frames=len(idx))
    p = centres[idx]
    # Still: nearly every centre at the same place (a moving object passes a point once);
    # a frame or two may be off where a touching object hides an edge.
    off = np.linalg.norm(p - np.median(p, axis=0), axis=-1)
    if (off <= max(STILL_PX, 0.02 * size_px)).mean() >= 0.8:
        residual = float(np.sqrt(np.mean(off**2)))
        return MotionFit("still", None, residual=residual, fitted_frames=len(idx))

    # Steps between neighbouring good frames; accelerations between neighbouring steps.
    d = np.full((frames - 1, 2), np.nan)  # d[i]: frame i -> i + 1
    both = good[:-1] & good[1:]
    d[both] = centres[1:][both] - centres[:-1][both]
    a = d[1:] - d[:-1]  # (T-2, 2): a[i] spans frames i .. i + 2
    valid = ~np.isnan(a).any(-1)
    base = tol = EVENT_PX + EVENT_SIZE * size_px
    gravity = 0.0
    if valid.any():
        ax, ay = _typical_acceleration(a[valid], tol)
        if valid.sum() >= NOISY_STEPS:
            # A noisy track (lossy video, jitter) widens the tolerance to its own spread:
            # the lower quartile of the deviations (0.76 sigma for a 2D Gaussian) ignores
            # events as long as they are fewer than three in four.
            deviation = np.linalg.norm(a[valid] - (ax, ay), axis=-1)
            tol = max(base, NOISY_SIGMAS * float(np.percentile(deviation, 25)) / 0.76)
            ax, ay = _typical_acceleration(a[valid], tol)
        # Kept with its sign: an upward acceleration is a physics error the scores report.
        if abs(ay) > base and abs(ax) < 0.5 * abs(ay):
            gravity = float(ay)
    expected = np.array([0.0, gravity])
    outlier = valid & (np.linalg.norm(np.nan_to_num(a) - expected, axis=-1) > tol)
    runs = _runs(outlier)
    n_steps = len(d)
    # Events as windows (first frame, last frame, step before, step after; a step is None
    # where unknown):
    # a[j] alone out of line means the course changed exactly at frame j + 1; a run a[j..m]
    # means steps j + 1 .. m changed it (once, or a few times in a corner or a crowd).
    windows: list[tuple[int, int, np.ndarray | None, np.ndarray | None]] = []
    for j, m in runs:
        lo, hi = (j + 1, j + 1) if m == j else (j + 1, m + 1)
        # At the ends of the track the outer step may itself be mixed: leave it unknown.
        before = j if (j > 0 or m > j) else None
        after = m + 1 if m + 1 < n_steps and m < len(a) - 1 else None
        if before is not None and after is not None:
            # The course after is the course before: one centre was off (lossy video, a
            # touching edge), not an event; the residual keeps the wobble.
            change = d[after] - d[before] - expected * (after - before)
            if np.linalg.norm(change) <= tol:
                continue
        windows.append(
            (
                lo,
                hi,
                d[before] if before is not None else None,
                d[after] if after is not None else None,
            )
        )

    # Velocity at frame 0 from the first clean steps (at most 3, before the first event).
    last_clean = runs[0][0] if runs else frames - 2
    steps = [i for i in range(last_clean + 1) if not np.isnan(d[i]).any()]
    if not steps:
        steps = [i for i in range(frames - 1) if not np.isnan(d[i]).any()]
    if usable is not None and usable[:2].all() and (not steps or steps[0] > 0):
        # The first step is hidden from the strict mask by a small occlusion, but a centroid
        # a fraction of a pixel off still gives the direction; later steps may be past an event.
        v0 = centres[1] - centres[0] - expected * 0.5
    elif steps:
        first = [steps[0]]
        for i in steps[1:3]:
            if i != first[-1] + 1:
                break
            first.append(i)
        v0 = np.mean([d[i] - expected * (i + 0.5) for i in first], axis=0)
    else:
        # Good frames never neighbour each other: use the first two.
        v0 = (p[1] - p[0]) / (idx[1] - idx[0])

    # Events hidden where frames are not good: the steps around the gap disagree.
    for g0, g1 in itertools.pairwise(idx):
        if g1 - g0 < 2 or g0 < 1 or g1 > frames - 2:
            continue
        if np.isnan(d[g0 - 1]).any() or np.isnan(d[g1]).any():
            continue
        predicted = d[g0 - 1] + expected * (g1 - g0 + 1)
        if np.linalg.norm(d[g1] - predicted) > tol:
            windows.append((g0, g1, d[g0 - 1], d[g1]))

    # Piecewise fit: x linear, y linear after removing the fitted gravity, over each run of
    # consecutive good frames between events (an event may hide where frames are missing).
    breaks = np.zeros(frames + 1, dtype=bool)
    for lo, hi, _, _ in windows:
        breaks[lo if lo == hi else lo + 1 : hi + 1] = True
    pending: list[list[int]] = []
    run: list[int] = []
    for f in [*idx.tolist(), frames + 1]:
        if run and (f != run[-1] + 1 or (f <= frames and breaks[f])):
            pending.append(run)
            run = []
        run.append(f)

    def line(frames_in: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Residuals (n, 2) of the best line through a run, and its velocity at frame 0."""
        t = np.array(frames_in, dtype=np.float64)
        q = centres[frames_in] - np.outer(0.5 * t * t, expected)
        slope, offset = np.polyfit(t, q, 1)
        return q - (np.outer(t, slope) + offset), slope

    # A run that a line fits badly hides a change of course that noise kept from the
    # second differences: split it where two lines fit best (top-down segmentation).
    split_px = SPLIT_PX + SPLIT_SIZE * size_px
    residuals = []
    while pending:
        run = pending.pop()
        if len(run) < 3:
            continue
        res, _ = line(run)
        if len(run) >= 6 and np.abs(res).max() > split_px:
            costs = [
                ((line(run[:k])[0] ** 2).sum() + (line(run[k:])[0] ** 2).sum(), k)
                for k in range(3, len(run) - 2)
            ]
            cost, k = min(costs)
            if cost < 0.25 * (res**2).sum():
                left, right = run[:k], run[k:]
                before = line(left)[1] + expected * (left[-1] - 0.5)
                after = line(right)[1] + expected * (right[0] + 0.5)
                windows.append((left[-1], right[0], before, after))
                pending += [left, right]
                continue
        residuals.append(res.ravel())
    residual = float(np.sqrt(2 * np.mean(np.concatenate(residuals) ** 2))) if residuals else 0.0
    windows.sort(key=lambda w: (w[0], w[1]))

    explained: list[tuple[int, str | None]] = []
    for lo, hi, before, after in windows:
        what = None
        if boxes is not None and canvas is not None:
            # Gravity changes the step by up to 2 g around a floor bounce; the rest is
            # measurement, and a sub-frame bounce blurs the mirrored step a little.
            slack = 2 * tol + 2 * abs(gravity)
            if before is not None:
                slack += 0.15 * float(np.linalg.norm(before))
            near = range(max(0, lo - 1), min(frames, hi + 1))
            what = _explain(near, before, after, slack, index, boxes, canvas)
        explained.append((int(lo + 1 if hi > lo else lo), what))
    # Share of measured steps that the smooth model explains (outside every event window).
    inside = np.zeros(n_steps, dtype=bool)
    for lo, hi, _, _ in windows:
        inside[max(0, lo - 1) : hi] = True
    measured = ~np.isnan(d).any(-1)
    smooth = float((measured & ~inside).sum() / max(1, measured.sum()))
    kind = "fall" if gravity > 0 else "linear"
    return MotionFit(
        kind=kind,
        direction=_direction(v0) if kind == "linear" else None,
        velocity=(float(v0[0]), float(v0[1])),
        gravity=gravity,
        residual=residual,
        events=explained,
        smooth=smooth,
        fitted_frames=len(idx),
    )
