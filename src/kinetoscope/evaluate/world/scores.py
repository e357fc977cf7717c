"""Scores of a world video against the scene spec it was made from, each in [0, 1].

Three families, each the mean of its available members, and `overall`, their mean:

- Prompt adherence (`adherence`): `count` of objects, and per spec object (matched to a found
  object by optimal assignment) its `color`, `shape`, `size` and `motion` (kind and
  direction both right; also reported apart as `motion_kind` and `motion_direction`).
  Motion is compared before the first bounce or collision (see `fit_motion`), and is not
  scored for one-frame images.
- World consistency (`consistency`): `permanence` (objects neither vanish nor appear, except
  at the frame's edge or behind another object; the worst object counts), `shape_stability`
  and `color_stability` (per-frame shape and color agree with the object's), and `physics`
  (the fitted motion model's residual, course changes explained as mirror bounces off a
  wall or the floor or by touching another object, gravity pointing down, and enough smooth
  steps between events; the worst object counts).
- Frame quality (`quality`): `sharpness` and `noise` against the same spec rendered by the
  world (and passed through the video's own file format, when given), and `flicker`
  (frame-to-frame change of the background color).

A score that does not apply (motion of an image, flicker of one frame, direction when no
object moves in a direction) is None and left out of the means.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import numpy as np
from scipy import optimize

from kinetoscope.data.world import DIRECTIONS, SceneSpec, render, simulate
from kinetoscope.io import read_video, write_video

from .analyze import SceneAnalysis, analyze

ADHERENCE = ("count", "color", "shape", "size", "motion")
CONSISTENCY = ("permanence", "shape_stability", "color_stability", "physics")
QUALITY = ("sharpness", "noise", "flicker")
SCORE_NAMES = (
    "overall",
    "adherence",
    *ADHERENCE,
    "motion_kind",
    "motion_direction",
    "consistency",
    *CONSISTENCY,
    "quality",
    *QUALITY,
)

# Scales of the soft scores 1 / (1 + (x / scale)^2): the value that halves a score.
RESIDUAL_PX = 1.0  # fitted-motion residual (pixels, at least; see _physics)
NOISE_LEVEL = 4.0  # background noise standard deviation (0-255) above the reference's
FLICKER_LEVEL = 2.0  # mean frame-to-frame change of the background color (0-255, RGB norm)
SMOOTH_STEPS = 0.3  # share of smooth steps below which physics is scaled down
REFERENCE_FRAMES = 9  # frames of the spec rendered for the quality reference
LOSSLESS = (".mkv", ".png", ".bmp")  # formats that keep world frames bit-exact


def _soft(x: float, scale: float) -> float:
    return 1.0 / (1.0 + (max(0.0, x) / scale) ** 2)


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def motion_kind(motion: str | None) -> str | None:
    """The kind of a world motion name: "still", "linear" (a direction) or "fall"."""
    if motion is None:
        return None
    return "linear" if motion in DIRECTIONS else motion


def match_objects(analysis: SceneAnalysis, spec: SceneSpec) -> list[tuple[int, int]]:
    """Pairs (spec index, found index) of an optimal assignment (Hungarian algorithm).

    The cost of a pair is the number of appearance attributes that differ (color, shape,
    size) plus, to break ties, the share of frames the found object is missing from. Neither
    motion nor position enters: a prompt does not state where objects start, and matching
    on motion would let a video with extra objects score the motion of whichever one
    happens to move as asked.
    """
    found = analysis.objects
    if not spec.objects or not found:
        return []
    cost = np.zeros((len(spec.objects), len(found)))
    for i, want in enumerate(spec.objects):
        for j, got in enumerate(found):
            cost[i, j] = (
                (want.color != got.color)
                + (want.shape != got.shape)
                + (want.size != got.size)
                + 0.5 * (1.0 - float(np.mean(got.present)))
            )
    rows, cols = optimize.linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


def _adherence(analysis: SceneAnalysis, spec: SceneSpec) -> dict[str, float | None]:
    n_spec, n_found = len(spec.objects), len(analysis.objects)
    pairs = dict(match_objects(analysis, spec))
    out: dict[str, float | None] = {"count": 1.0 - abs(n_found - n_spec) / max(n_spec, n_found, 1)}
    for attribute in ("color", "shape", "size"):
        right = sum(
            getattr(want, attribute) == getattr(analysis.objects[pairs[i]], attribute)
            for i, want in enumerate(spec.objects)
            if i in pairs
        )
        out[attribute] = right / n_spec
    if spec.frames == 1 or analysis.frames == 1:
        out.update(motion=None, motion_kind=None, motion_direction=None)
        return out
    motion = kind = direction = 0
    n_directed = 0
    for i, want in enumerate(spec.objects):
        got = analysis.objects[pairs[i]].motion.motion if i in pairs else None
        motion += got == want.motion
        kind += got is not None and motion_kind(got) == motion_kind(want.motion)
        if want.motion in DIRECTIONS:
            n_directed += 1
            direction += got == want.motion
    out["motion"] = motion / n_spec
    out["motion_kind"] = kind / n_spec
    out["motion_direction"] = direction / n_directed if n_directed else None
    return out


def _touches_edge(box: np.ndarray, width: int, height: int, margin: float = 2.0) -> bool:
    x0, y0, x1, y1 = box
    return x0 <= margin or y0 <= margin or x1 >= width - 1 - margin or y1 >= height - 1 - margin


def _permanence(analysis: SceneAnalysis) -> float | None:
    """1 - the largest fraction of frames in which an object is missing without a reason."""
    if analysis.frames == 1 or not analysis.objects:
        return None
    worst = 1.0
    for o in analysis.objects:
        seen = np.flatnonzero(o.present)
        missing = 0
        for f in np.flatnonzero(~o.present):
            # Where it was last (or will first be) seen: gone through an edge, or behind
            # another object, is a reason to be missing.
            before, after = seen[seen < f], seen[seen > f]
            near = [before[-1]] if len(before) else []
            near += [after[0]] if len(after) else []
            if any(_touches_edge(o.boxes[k], analysis.width, analysis.height) for k in near):
                continue
            x0, y0, x1, y1 = np.mean([o.boxes[k] for k in near], axis=0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            hidden = any(
                other is not o
                and other.present[f]
                and other.boxes[f][0] <= cx <= other.boxes[f][2]
                and other.boxes[f][1] <= cy <= other.boxes[f][3]
                for other in analysis.objects
            )
            missing += not hidden
        worst = min(worst, 1.0 - missing / analysis.frames)
    return worst


def _stability(analysis: SceneAnalysis) -> tuple[float | None, float | None]:
    """Mean over objects of the fraction of frames whose shape (color) is the object's."""
    if analysis.frames == 1 or not analysis.objects:
        return None, None
    shapes, colors = [], []
    for o in analysis.objects:
        per_shape = [s for s in o.shapes if s is not None]
        if per_shape:
            shapes.append(np.mean([s == o.shape for s in per_shape]))
        per_color = [c for c in o.colors if c is not None]
        colors.append(np.mean([c == o.color for c in per_color]))
    return _mean(shapes), _mean(colors)


def _physics(analysis: SceneAnalysis) -> float | None:
    """Worst over objects of: residual score x explained events x gravity down x smoothness."""
    short = min(analysis.width, analysis.height)
    per_object = []
    for o in analysis.objects:
        fit = o.motion
        if fit.kind is None:
            continue
        if fit.kind == "still":
            per_object.append(1.0)
            continue
        # Generated videos jitter by about a pixel on small canvases, more on large ones.
        residual = _soft(fit.residual, max(RESIDUAL_PX, 0.005 * short))
        explained = np.mean([what is not None for _, what in fit.events]) if fit.events else 1.0
        down = 0.0 if fit.gravity < 0 else 1.0  # things fall down, never up
        # Events every step or two are jitter, not bounces: even a crowded world clip moves
        # smoothly over more than a third of its steps.
        smooth = min(1.0, fit.smooth / SMOOTH_STEPS)
        per_object.append(residual * float(explained) * down * smooth)
    # One object that breaks physics breaks the world: the worst object counts.
    return min(per_object) if per_object else None


def _quality(analysis: SceneAnalysis, reference: SceneAnalysis) -> dict[str, float | None]:
    sharpness = None
    if math.isfinite(analysis.sharpness) and math.isfinite(reference.sharpness):
        sharpness = min(1.0, analysis.sharpness / reference.sharpness)
    elif math.isfinite(reference.sharpness):
        sharpness = 0.0  # the spec has objects with edges; this video has none
    flicker = None
    if analysis.frames > 1:
        change = np.linalg.norm(np.diff(analysis.background_rgb, axis=0), axis=-1).mean()
        flicker = _soft(float(change), FLICKER_LEVEL)
    return {
        "sharpness": sharpness,
        "noise": _soft(analysis.noise - reference.noise, NOISE_LEVEL),
        "flicker": flicker,
    }


def reference_analysis(
    spec: SceneSpec, frames: int = REFERENCE_FRAMES, codec: str | None = None
) -> SceneAnalysis:
    """The analysis of the spec rendered by the world (its first `frames` frames).

    `codec`, a file suffix such as ".mp4", passes the reference through that format first
    (written and read back with kinetoscope.io), so that a video stored lossy is measured
    against a reference that went through the same loss; lossless suffixes change nothing.
    """
    short = dataclasses.replace(spec, frames=min(spec.frames, frames))
    video, _ = render(short, simulate(short))
    if codec is not None and codec.lower() not in LOSSLESS:
        with tempfile.TemporaryDirectory() as folder:
            path = write_video(Path(folder) / f"reference{codec.lower()}", video, fps=spec.fps)
            video = read_video(path)
    return analyze(video)


def score(
    analysis: SceneAnalysis, spec: SceneSpec, reference: SceneAnalysis | None = None
) -> dict[str, float | None]:
    """Named scores in [0, 1] (None where one does not apply) of an analyzed video.

    `reference` is the analysis of the spec rendered by the world (`reference_analysis`,
    computed when not given); frame quality is measured against it.
    """
    reference = reference if reference is not None else reference_analysis(spec)
    scores: dict[str, float | None] = dict(_adherence(analysis, spec))
    shape_stability, color_stability = _stability(analysis)
    scores.update(
        permanence=_permanence(analysis),
        shape_stability=shape_stability,
        color_stability=color_stability,
        physics=_physics(analysis),
    )
    scores.update(_quality(analysis, reference))
    scores["adherence"] = _mean(scores[k] for k in ADHERENCE)
    scores["consistency"] = _mean(scores[k] for k in CONSISTENCY)
    scores["quality"] = _mean(scores[k] for k in QUALITY)
    scores["overall"] = _mean(scores[k] for k in ("adherence", "consistency", "quality"))
    assert all(v is None or 0.0 <= v <= 1.0 for v in scores.values()), scores
    return {name: scores[name] for name in SCORE_NAMES}


def score_video(
    frames: np.ndarray, spec: SceneSpec, codec: str | None = None
) -> dict[str, float | None]:
    """Analyze a video `T H W 3` uint8 and score it against the spec it was made from.

    `codec` is the suffix of the file the frames were read from (see `reference_analysis`).
    """
    return score(analyze(frames), spec, reference_analysis(spec, codec=codec))


# ---------------------------------------------------------------------------------------------
# Agreement with ground truth (validation of the analyzer itself)

AGREEMENT = ("count", "color", "shape", "size", "motion_kind", "direction", "motion")


def _motion_scored(truth: dict, index: int) -> bool:
    """Whether object `index`'s motion can be seen: a video, and a clean first step.

    A directed object whose first bounce or collision falls between frames 0 and 1 never
    shows the direction it was given, so its motion is not compared.
    """
    if truth["frames"] == 1:
        return False
    if truth["objects"][index]["motion"] not in DIRECTIONS:
        return True
    frames = [
        e["frame"]
        for e in truth["events"]
        if e.get("object") == index or index in e.get("objects", ())
    ]
    return not frames or min(frames) >= 2


def agreement(analysis: SceneAnalysis, truth: dict) -> dict[str, list[bool]]:
    """Per-attribute agreement of an analysis with a world clip's ground-truth dict.

    Found objects are matched to true ones by their tracks alone (mean distance between
    centres over the frames both are seen), never by the attributes being checked. Each
    key lists one bool per compared item: `count` one per clip; `color`, `shape`, `size` one
    per true object (False if unmatched); `motion_kind`, `motion` (kind and direction) one
    per object whose motion is scored (see `_motion_scored`); `direction` one per such
    object given a direction.
    """
    objects = truth["objects"]
    found = analysis.objects
    cost = np.full((len(objects), len(found)), 1e6)
    for i, track in enumerate(truth["tracks"]):
        true_centres = np.asarray(track["position"], dtype=np.float64)  # (T, 2)
        for j, o in enumerate(found):
            both = ~np.isnan(o.centres).any(-1)
            if both.any():
                cost[i, j] = np.linalg.norm(o.centres[both] - true_centres[both], axis=-1).mean()
    pairs = {}
    if len(objects) and len(found):
        rows, cols = optimize.linear_sum_assignment(cost)
        pairs = {int(r): int(c) for r, c in zip(rows, cols, strict=True)}
    out: dict[str, list[bool]] = {k: [] for k in AGREEMENT}
    out["count"].append(len(found) == len(objects))
    for i, want in enumerate(objects):
        got = found[pairs[i]] if i in pairs else None
        for attribute in ("color", "shape", "size"):
            out[attribute].append(got is not None and getattr(got, attribute) == want[attribute])
        if not _motion_scored(truth, i):
            continue
        motion = got.motion.motion if got is not None else None
        out["motion_kind"].append(motion_kind(motion) == motion_kind(want["motion"]))
        out["motion"].append(motion == want["motion"])
        if want["motion"] in DIRECTIONS:
            out["direction"].append(motion == want["motion"])
    return out
