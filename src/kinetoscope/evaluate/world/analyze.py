"""Pixel analyzer of world videos: background, objects, tracks and motion, from frames alone.

The analyzer uses no trained model, only image analysis with the world's palette, so it
cannot share a generator's mistakes. Steps, for a video `T H W 3` uint8:

1. Background: the per-channel median of the frames, named by the nearest palette canvas.
2. Pixels: each pixel is explained as a blend of the background and one object color,
   `p = bg + alpha (c - bg)` (in YCbCr with chroma down-weighted, for lossy video); a
   lookup table over quantized RGB gives the color with the smallest residual and its
   coverage `alpha`. Anti-aliased edges get fractional coverage, which makes areas and
   centroids sub-pixel accurate.
3. Segments: connected components per color and frame. Thin or core-less components (blends
   where two objects touch) are dropped.
4. Tracks: components of one color are linked over frames by optimal assignment to predicted
   positions; two objects may share a color only if their shapes differ. Visibility of a
   frame is its covered area over the object's full area.
5. Shape and size: the coverage of the least-occluded frames is compared with the world's
   three shapes, each scaled to the same area and placed at the same centroid; the closest
   wins. Size is the fitted extent over the shorter side, named by the nearest size class.
6. Motion (`motion.fit_motion`): centres of mostly visible frames are fitted with constant
   velocity or constant downward acceleration between events (bounces, collisions), found
   as outliers of the second differences or where one line fits a run badly. Direction is
   that of the velocity before the first event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

from kinetoscope.data.world import BACKGROUNDS, COLORS, SHAPES, SIZES
from kinetoscope.data.world.render import signed_distance

from .motion import MotionFit, fit_motion

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
_COLOR_RGB = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float64)  # (K, 3)
# Colors are compared in YCbCr (BT.601) with chroma at half weight: video codecs keep luma at
# full resolution but subsample chroma (yuv420p), so edges are sharper in luma. A linear map,
# so an exact blend of two colors stays an exact blend.
CHROMA_WEIGHT = 0.5
_YCC = np.array(
    [[0.299, 0.587, 0.114], [-0.1687, -0.3313, 0.5], [0.5, -0.4187, -0.0813]]
) * np.array([[1.0], [CHROMA_WEIGHT], [CHROMA_WEIGHT]])
_UNKNOWN = 255  # pixel label: no palette color explains it
_BACKGROUND = 254  # pixel label: background

QUANT = 2  # RGB bits dropped by the lookup table (64 levels per channel, 256K entries)
MIN_ALPHA = 0.08  # coverage below this is background noise, not an object's edge
CORE_ALPHA = 0.5  # a segment needs pixels at least this covered
MIN_CORE_PIXELS = 2
MIN_THICKNESS = 1.5  # area over longer bounding-box side: drops 1-px blend lines
VISIBLE = 0.9  # frames with this much of the full area are used for shape
MERGED = 0.15  # a segment this much larger than usual holds two touching objects
STEADY = 0.97  # frames with this much are used for motion: occlusion shifts the centroid
SHAPE_FRAMES = 12  # frames classified for the shape vote (evenly spread over good frames)


@dataclass
class ObjectTrack:
    """One object found in a video, with per-frame measurements (NaN where not seen)."""

    color: str
    shape: str
    size: str
    size_px: float  # fitted diameter or side in pixels
    centres: np.ndarray  # (T, 2) float: box centre in pixels (x right, y down), NaN if unseen
    area: np.ndarray  # (T,) float: visible coverage in pixels (0 if unseen)
    visibility: np.ndarray  # (T,) float in [0, 1]: visible area over the full area
    colors: list[str | None]  # (T,) per-frame color (None if unseen)
    shapes: list[str | None]  # (T,) per-frame shape (None unless mostly visible)
    boxes: np.ndarray  # (T, 4) float: x0, y0, x1, y1 of covered pixels, NaN if unseen
    merged: np.ndarray  # (T,) bool: seen only merged with a touching object of its color
    shape_error: float  # mean coverage mismatch of the chosen shape, relative to the area
    motion: MotionFit

    @property
    def present(self) -> np.ndarray:
        """(T,) bool: frames where any of the object is seen."""
        return self.area > 0


@dataclass
class SceneAnalysis:
    """What `analyze` found in a video."""

    width: int
    height: int
    frames: int
    background: str
    background_rgb: np.ndarray  # (T, 3) float: measured per-frame background color
    noise: float  # robust standard deviation (0-255) of background pixels
    sharpness: float  # gradient-weighted mean gradient of object coverage (NaN: no objects)
    objects: list[ObjectTrack]

    def summary(self) -> dict:
        """A JSON-ready dict of the scene-level findings."""
        return {
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "background": self.background,
            "noise": round(float(self.noise), 3),
            "sharpness": round(float(self.sharpness), 4),
            "objects": [
                {
                    "color": o.color,
                    "shape": o.shape,
                    "size": o.size,
                    "size_px": round(float(o.size_px), 2),
                    "motion": o.motion.motion,
                    "residual_px": round(float(o.motion.residual), 3),
                    "events": o.motion.events,
                }
                for o in self.objects
            ],
        }


# ---------------------------------------------------------------------------------------------
# Pixels


def _explain_colors(rgb: np.ndarray, bg: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Label (uint8) and coverage (float32) of RGB values (N, 3) on background `bg`."""
    p = (rgb - bg) @ _YCC.T  # (N, 3) offset from background
    u = (_COLOR_RGB - bg) @ _YCC.T  # (K, 3) from background to each color
    alpha = np.clip(p @ u.T / (u * u).sum(-1), 0.0, 1.0)  # (N, K)
    residual = np.linalg.norm(p[:, None, :] - alpha[..., None] * u[None], axis=-1)  # (N, K)
    best = residual.argmin(-1)
    rows = np.arange(len(p))
    label = best.astype(np.uint8)
    cover = alpha[rows, best].astype(np.float32)
    # Thresholds widen with measured noise so that noisy videos still segment.
    label[residual[rows, best] > max(40.0, 4.0 * noise)] = _UNKNOWN
    near_bg = np.linalg.norm(p, axis=-1) < max(10.0, 3.0 * noise)
    label[near_bg | (cover < MIN_ALPHA)] = _BACKGROUND
    cover[label >= _BACKGROUND] = 0.0
    return label, cover


def _classify(frames: np.ndarray, bg: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel color label `T H W` uint8 and coverage `T H W` float32."""
    bits = 8 - QUANT
    q = frames >> QUANT  # T H W 3
    index = (q[..., 0].astype(np.int32) << (2 * bits)) | (q[..., 1].astype(np.int32) << bits)
    index |= q[..., 2]  # T H W: quantized RGB as one integer
    # A lookup table over the quantized values that occur (few in a flat-colored world).
    used = np.flatnonzero(np.bincount(index.ravel(), minlength=1 << (3 * bits)))
    levels = np.stack(
        [used >> (2 * bits), (used >> bits) & ((1 << bits) - 1), used & ((1 << bits) - 1)], -1
    )
    rgb = (levels << QUANT) + ((1 << QUANT) - 1) / 2  # (N, 3) bin centres
    label_lut = np.full(1 << (3 * bits), _BACKGROUND, dtype=np.uint8)
    cover_lut = np.zeros(1 << (3 * bits), dtype=np.float32)
    label_lut[used], cover_lut[used] = _explain_colors(rgb, bg, noise)
    return label_lut[index], cover_lut[index]


def _background(frames: np.ndarray) -> tuple[str, np.ndarray, np.ndarray, float]:
    """Background name, per-frame color (T, 3), overall color (3,) and noise level (0-255)."""
    n_frames, height, width = frames.shape[:3]
    step = max(1, int(math.sqrt(height * width / 1024)))  # about 1K pixels a frame
    sample = frames[:, ::step, ::step].reshape(n_frames, -1, 3).astype(np.float32)  # (T, N, 3)
    # Objects cover well under half of a world frame, so the median is the canvas.
    some = sample[np.linspace(0, n_frames - 1, min(n_frames, 8)).round().astype(int)]
    overall = np.median(some.reshape(-1, 3), axis=0).astype(np.float64)
    names = list(BACKGROUNDS)
    rgb = np.array([BACKGROUNDS[n] for n in names], dtype=np.float64)
    name = names[int(np.linalg.norm(rgb - overall, axis=-1).argmin())]
    # Per-frame color: the mean of pixels near the canvas color (objects left out); then
    # again with a window that noise sets, which also leaves anti-aliased edges out.
    per_frame = np.tile(overall, (n_frames, 1))  # (T, 3)
    noise, window = 0.0, 48.0
    for _ in range(2):
        centre = per_frame[:, None].astype(np.float32)  # (T, 1, 3)
        near = np.abs(sample - centre).max(-1) < window  # (T, N)
        count = near.sum(1, keepdims=True)  # (T, 1)
        mean = (sample * near[..., None]).sum(1) / np.maximum(count, 1)  # (T, 3)
        per_frame = np.where(count > 0, mean, per_frame).astype(np.float64)
        if window == 48.0:
            resid = (sample - per_frame[:, None].astype(np.float32))[near]
            noise = float(1.4826 * np.median(np.abs(resid))) if resid.size else 0.0
        window = max(6.0, 4.0 * noise)
    return name, per_frame, overall, noise


def edge_sharpness(cover: np.ndarray, frames: int = 8) -> float:
    """Sharpness of object edges: sum |grad c|^2 / sum |grad c| over object coverage `T H W`.

    A one-pixel anti-aliased edge scores 0.5 to 1 (about 0.7 on average); blur by a
    Gaussian of sigma pixels gives about 1 / (2 sigma sqrt(pi)). A 3x3 median first keeps
    pixel noise out (it leaves straight edges alone). Up to `frames` frames, evenly spread,
    are measured. NaN when there is no edge at all.
    """
    picks = np.linspace(0, len(cover) - 1, min(len(cover), frames)).round().astype(int)
    c = ndimage.median_filter(cover[np.unique(picks)].astype(np.float32), size=(1, 3, 3))  # t H W
    gx = np.diff(c, axis=2)[:, :-1, :]  # t H-1 W-1
    gy = np.diff(c, axis=1)[:, :, :-1]
    g = np.sqrt(gx * gx + gy * gy)
    total = float(g.sum(dtype=np.float64))
    return float((g * g).sum(dtype=np.float64)) / total if total > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# Segments


@dataclass
class _Segment:
    frame: int
    color: int
    area: float  # sum of coverage (pixels)
    cx: float  # coverage-weighted centroid, canvas coordinates (pixel centres at +0.5)
    cy: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive pixel indices)


_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = True  # 8-connected within a frame, never across frames


def _segments(label: np.ndarray, cover: np.ndarray, min_area: float) -> list[_Segment]:
    """Connected components of every color in every frame, minus blend lines and specks."""
    _, height, width = label.shape
    core_counts = np.bincount(label[cover >= CORE_ALPHA].ravel(), minlength=256)
    found = []
    for k in np.flatnonzero(core_counts[: len(COLOR_NAMES)] >= MIN_CORE_PIXELS):
        mask = label == k
        labels, n = ndimage.label(mask, structure=_IN_PLANE)
        if n == 0:
            continue
        flat = np.flatnonzero(labels)
        ids = labels.ravel()[flat]
        w = cover.ravel()[flat].astype(np.float64)
        y, x = np.divmod(flat % (height * width), width)
        area = np.bincount(ids, weights=w, minlength=n + 1)
        sx = np.bincount(ids, weights=w * (x + 0.5), minlength=n + 1)
        sy = np.bincount(ids, weights=w * (y + 0.5), minlength=n + 1)
        core = np.bincount(ids, weights=(w >= CORE_ALPHA), minlength=n + 1)
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None or area[i] < min_area or core[i] < MIN_CORE_PIXELS:
                continue
            y0, y1, x0, x1 = sl[1].start, sl[1].stop - 1, sl[2].start, sl[2].stop - 1
            if area[i] / max(x1 - x0 + 1, y1 - y0 + 1) < MIN_THICKNESS:
                continue
            found.append(
                _Segment(
                    sl[0].start, int(k), area[i], sx[i] / area[i], sy[i] / area[i], (x0, y0, x1, y1)
                )
            )
    return found


# ---------------------------------------------------------------------------------------------
# Tracks


def _link(segments: list[_Segment], frames: int, gate: float) -> list[list[_Segment]]:
    """Tracks of one color: segments linked over frames by optimal assignment."""
    by_frame: list[list[_Segment]] = [[] for _ in range(frames)]
    for s in segments:
        by_frame[s.frame].append(s)
    tracks: list[list[_Segment]] = []
    for t in range(frames):
        now = by_frame[t]
        if not now:
            continue
        predicted = []
        for track in tracks:
            last = track[-1]
            p = np.array([last.cx, last.cy])
            if len(track) > 1:
                prev = track[-2]
                velocity = (p - [prev.cx, prev.cy]) / (last.frame - prev.frame)
                p = p + velocity * (t - last.frame)
            predicted.append(p)
        matched: set[int] = set()
        if tracks:
            cost = np.array(
                [[math.dist(p, (s.cx, s.cy)) for s in now] for p in predicted]
            )  # (tracks, segments)
            # Size changes cost as much as distance, so pieces do not steal a track.
            cost += np.array(
                [[abs(math.sqrt(tr[-1].area) - math.sqrt(s.area)) for s in now] for tr in tracks]
            )
            rows, cols = optimize.linear_sum_assignment(cost)
            for r, c in zip(rows, cols, strict=True):
                if cost[r, c] <= gate and tracks[r][-1].frame < t:
                    tracks[r].append(now[c])
                    matched.add(c)
        tracks.extend([s] for c, s in enumerate(now) if c not in matched)
    return tracks


def _join_color_changes(tracks: list[list[_Segment]], gate: float) -> list[list[_Segment]]:
    """Join a track that ends to one of another color that starts next, at the same place."""
    tracks = sorted(tracks, key=lambda tr: tr[0].frame)
    joined = True
    while joined:
        joined = False
        for a in tracks:
            for b in tracks:
                if a is b or b[0].frame != a[-1].frame + 1 or b[0].color == a[-1].color:
                    continue
                # Only when no other track of b's color was there before: a new color, not a
                # second object of that color appearing.
                near = math.dist((a[-1].cx, a[-1].cy), (b[0].cx, b[0].cy)) <= gate
                similar = 0.5 < b[0].area / a[-1].area < 2.0
                if near and similar:
                    a.extend(b)
                    tracks.remove(b)
                    joined = True
                    break
            if joined:
                break
    return tracks


# ---------------------------------------------------------------------------------------------
# Shape and size


def _scale_for_area(shape: str, area: float) -> float:
    """Size s (diameter or side) of a shape with that area."""
    return math.sqrt(area / {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}[shape])


def _shape_errors(label: np.ndarray, cover: np.ndarray, seg: _Segment, area: float) -> np.ndarray:
    """(3,) coverage mismatch of each shape (SHAPES order) scaled to `area`, over `area`."""
    _, height, width = label.shape
    errors = np.empty(len(SHAPES))
    s_max = max(_scale_for_area(s, area) for s in SHAPES)
    pad = math.ceil(s_max / 2) + 2
    x0, x1 = max(0, int(seg.cx - pad)), min(width, int(seg.cx + pad) + 1)
    y0, y1 = max(0, int(seg.cy - pad)), min(height, int(seg.cy + pad) + 1)
    lab = label[seg.frame, y0:y1, x0:x1]
    seen = np.where(lab == seg.color, cover[seg.frame, y0:y1, x0:x1], 0.0)  # h w
    # Pixels of other objects may hide part of this one: leave them out of the comparison.
    weight = ((lab == seg.color) | (lab == _BACKGROUND)).astype(np.float32)
    dx = (np.arange(x0, x1) + 0.5 - seg.cx)[None, :]
    dy = (np.arange(y0, y1) + 0.5 - seg.cy)[:, None]
    for i, shape in enumerate(SHAPES):
        s = _scale_for_area(shape, area)
        # The triangle's centroid lies s / 6 below the centre of its box.
        shift = s / 6 if shape == "triangle" else 0.0
        template = np.clip(0.5 - signed_distance(shape, dx, dy + shift, s / 2), 0, 1)
        errors[i] = float((np.abs(seen - template) * weight).sum()) / area
    return errors


def _size_name(size_px: float, short: int) -> str:
    fraction = size_px / short
    return min(SIZES, key=lambda n: abs(math.log(fraction / SIZES[n])))


# ---------------------------------------------------------------------------------------------
# The analyzer


def analyze(frames: np.ndarray) -> SceneAnalysis:
    """Find the background and every object of a world video, track them and fit their motion.

    `frames` is `T H W 3` uint8 (a single image is T = 1). Works at any size and length;
    motion is None for objects seen in fewer than two mostly visible frames.
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"analyze expects frames T H W 3 uint8, got shape {frames.shape} {frames.dtype}; "
            "read videos with kinetoscope.io.read_video"
        )
    n_frames, height, width = frames.shape[:3]
    short = min(width, height)
    background, bg_frames, bg, noise = _background(frames)
    label, cover = _classify(frames, bg, noise)
    # The smallest world object (a small triangle) covers 0.5 (0.16 short)^2; a quarter of it
    # still counts, so partly hidden objects are kept.
    min_area = max(3.0, 0.25 * 0.5 * (min(SIZES.values()) * short) ** 2)
    segments = _segments(label, cover, min_area)

    # Fast objects cross most of the canvas in a frame; new tracks start only for extra segments.
    gate = 1.5 * max(width, height)
    tracks: list[list[_Segment]] = []
    for k in sorted({s.color for s in segments}):
        tracks += _link([s for s in segments if s.color == k], n_frames, gate)
    tracks = _join_color_changes(tracks, gate=0.2 * max(width, height))
    # Specks that last a frame or two where objects touch are not objects, nor are fringes:
    # brief blends along another object's edge (after lossy coding) that never stand alone.
    least = 1 if n_frames <= 2 else max(2, math.ceil(0.1 * n_frames))
    tracks = [tr for tr in tracks if len(tr) >= least and not _fringe(tr, segments, n_frames)]

    objects = [_measure(tr, label, cover, n_frames, short) for tr in tracks]
    _share_merged(objects)
    # Motion last: events are explained with every object's boxes.
    boxes = np.stack([o.boxes for o in objects]) if objects else np.zeros((0, n_frames, 4))
    for i, o in enumerate(objects):
        # Occlusion shifts a centroid by about (1 - visibility) size / 2: allow 0.5 px.
        good = (o.visibility >= 1 - max(1 - STEADY, 1.0 / o.size_px)) & ~o.merged
        usable = (o.visibility >= VISIBLE) & ~o.merged
        o.motion = fit_motion(o.centres, good, o.size_px, boxes, i, (width, height), usable)
    # Drawing order is unknown from pixels; list objects top-left first for a stable order.
    first = [np.nanargmax(o.present) for o in objects]
    order = sorted(
        range(len(objects)),
        key=lambda i: (
            objects[i].centres[first[i], 1] // max(1, short // 3),
            objects[i].centres[first[i], 0],
        ),
    )
    return SceneAnalysis(
        width=width,
        height=height,
        frames=n_frames,
        background=background,
        background_rgb=bg_frames,
        noise=noise,
        sharpness=edge_sharpness(cover),
        objects=[objects[i] for i in order],
    )


def _fringe(track: list[_Segment], segments: list[_Segment], frames: int) -> bool:
    """Whether a track is brief (under half the frames) and always beside a larger segment."""
    if 2 * len(track) >= frames:
        return False
    by_frame: dict[int, list[_Segment]] = {}
    for s in segments:
        by_frame.setdefault(s.frame, []).append(s)
    for s in track:
        x0, y0, x1, y1 = s.box
        touching = any(
            o.color != s.color
            and o.area > s.area
            and max(o.box[0] - x1, x0 - o.box[2], o.box[1] - y1, y0 - o.box[3]) <= 1
            for o in by_frame[s.frame]
        )
        if not touching:
            return False
    return True


def _share_merged(objects: list[ObjectTrack]) -> None:
    """Mark an object present where it is hidden in a merged segment of its own color.

    Two objects of one color that touch make one segment, which tracking gives to one of
    them; the other has a gap there, and both get `merged` set and no centroid.
    """
    for o in objects:
        seen = np.flatnonzero(o.present)
        if len(seen) < 2:
            continue
        for f in range(seen[0] + 1, seen[-1]):
            if o.present[f]:
                continue
            # Where it should be: interpolated between the frames around the gap.
            lo, hi = seen[seen < f][-1], seen[seen > f][0]
            w = (f - lo) / (hi - lo)
            x0, y0, x1, y1 = (1 - w) * o.boxes[lo] + w * o.boxes[hi]
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            for other in objects:
                if other is o or other.colors[f] != o.colors[lo]:
                    continue
                bx0, by0, bx1, by1 = other.boxes[f]
                if bx0 - 1 <= cx <= bx1 + 1 and by0 - 1 <= cy <= by1 + 1:
                    o.area[f] = o.area[lo]
                    o.visibility[f] = 1.0
                    o.merged[f] = True
                    o.boxes[f] = other.boxes[f]
                    o.colors[f] = o.colors[lo]
                    # The host's centroid is that of both objects.
                    other.merged[f] = True
                    other.centres[f] = np.nan
                    break


def _measure(
    track: list[_Segment], label: np.ndarray, cover: np.ndarray, n_frames: int, short: int
) -> ObjectTrack:
    """Per-frame measurements, shape, size and color of one linked track."""
    area = np.zeros(n_frames)
    centroid = np.full((n_frames, 2), np.nan)
    boxes = np.full((n_frames, 4), np.nan)
    colors: list[str | None] = [None] * n_frames
    by_frame: dict[int, _Segment] = {}
    for s in track:
        area[s.frame] = s.area
        centroid[s.frame] = (s.cx, s.cy)
        boxes[s.frame] = s.box
        colors[s.frame] = COLOR_NAMES[s.color]
        by_frame[s.frame] = s
    seen = area[area > 0]
    # Full area: the median, robust both to occlusion (less) and to frames where an object
    # of the same color touches this one and their segments merge (more).
    full = float(np.median(seen))
    merged = area > (1 + MERGED) * full
    visibility = np.clip(area / full, 0.0, 1.0)
    centroid[merged] = np.nan  # the centroid of two objects

    # Shape: vote over up to SHAPE_FRAMES of the most visible frames, spread over the clip.
    good = np.flatnonzero((visibility >= VISIBLE) & ~merged)
    if len(good) == 0:
        good = np.array([int(area.argmax())])
    shapes: list[str | None] = [None] * n_frames
    picks = good[np.linspace(0, len(good) - 1, min(len(good), SHAPE_FRAMES)).round().astype(int)]
    total = np.zeros(len(SHAPES))
    for f in np.unique(picks):
        errors = _shape_errors(label, cover, by_frame[int(f)], area[f])
        shapes[int(f)] = SHAPES[int(errors.argmin())]
        total += errors
    best = int(total.argmin())
    shape = SHAPES[best]
    size_px = _scale_for_area(shape, full)
    centres = centroid.copy()
    if shape == "triangle":
        centres[:, 1] -= size_px / 6  # centroid -> centre of the box
    named = [c for c in colors if c is not None]
    color = max(set(named), key=named.count)
    return ObjectTrack(
        color=color,
        shape=shape,
        size=_size_name(size_px, short),
        size_px=size_px,
        centres=centres,
        area=area,
        visibility=visibility,
        colors=colors,
        shapes=shapes,
        boxes=boxes,
        merged=merged,
        shape_error=float(total[best] / len(np.unique(picks))),
        motion=MotionFit(kind=None, direction=None),
    )
