"""The world analyzer: background, objects, shapes, sizes and motion from pixels alone."""

import numpy as np
import pytest

from kinetoscope.data.world import (
    BACKGROUNDS,
    DIRECTIONS,
    SHAPES,
    SIZES,
    ObjectSpec,
    SceneSpec,
    make_clip,
    render,
    simulate,
)
from kinetoscope.evaluate.world import AGREEMENT, agreement, analyze, fit_motion


def _frames(spec: SceneSpec) -> np.ndarray:
    frames, _ = render(spec, simulate(spec))
    return frames


def _by_color(analysis, color):
    found = [o for o in analysis.objects if o.color == color]
    assert len(found) == 1, [(o.color, o.shape) for o in analysis.objects]
    return found[0]


def test_hand_built_scene_is_recovered():
    spec = SceneSpec(
        96,
        64,
        17,
        8,
        "navy",
        (
            ObjectSpec("red", "circle", "medium", "right", 0.2, 0.3, 0.6),
            ObjectSpec("green", "square", "small", "still", 0.5, 0.75),
            ObjectSpec("yellow", "triangle", "large", "fall", 0.85, 0.2),
        ),
    )
    trajectory = simulate(spec)
    frames, _ = render(spec, trajectory)
    analysis = analyze(frames)
    assert analysis.background == "navy"
    assert (analysis.width, analysis.height, analysis.frames) == (96, 64, 17)
    assert len(analysis.objects) == 3
    for want, true_centres in zip(spec.objects, trajectory.positions, strict=True):
        got = _by_color(analysis, want.color)
        assert (got.shape, got.size, got.motion.motion) == (want.shape, want.size, want.motion)
        assert got.size_px == pytest.approx(spec.size_px(spec.objects.index(want)), rel=0.03)
        # Centres of fully visible frames are sub-pixel accurate.
        seen = ~np.isnan(got.centres).any(-1)
        assert seen.sum() >= 14
        assert np.abs(got.centres[seen] - true_centres[seen]).max() < 0.3
    fall = _by_color(analysis, "yellow").motion
    g_true = simulate(spec).gravity[2]
    assert fall.gravity == pytest.approx(g_true, rel=0.05)
    # The floor bounce is found and explained by the floor.
    assert any(what == "floor" for _, what in fall.events)


@pytest.mark.parametrize("background", list(BACKGROUNDS))
def test_every_shape_and_size_on_the_smallest_canvas(background):
    # 32 px canvas: a small object is 5 px across, the hardest case for shape.
    color = "white" if background != "beige" else "blue"
    for shape in SHAPES:
        for size in SIZES:
            spec = SceneSpec(
                32, 32, 1, 8, background, (ObjectSpec(color, shape, size, "still", 0.47, 0.53),)
            )
            analysis = analyze(_frames(spec))
            assert analysis.background == background
            [got] = analysis.objects
            assert (got.color, got.shape, got.size) == (color, shape, size)
            assert got.motion.motion is None  # one frame: motion cannot be seen


@pytest.mark.parametrize("motion", ["still", *DIRECTIONS, "fall"])
def test_every_motion(motion):
    speed = 0.0 if motion in ("still", "fall") else 0.5
    spec = SceneSpec(
        64, 64, 9, 8, "gray", (ObjectSpec("orange", "square", "medium", motion, 0.5, 0.3, speed),)
    )
    [got] = analyze(_frames(spec)).objects
    assert got.motion.motion == motion
    assert got.motion.kind == {"still": "still", "fall": "fall"}.get(motion, "linear")


def test_direction_is_that_before_a_wall_bounce():
    # Starts near the right wall moving right: bounces at once, then moves left for long.
    spec = SceneSpec(
        64, 32, 17, 8, "black", (ObjectSpec("cyan", "circle", "small", "right", 0.8, 0.5, 1.0),)
    )
    trajectory = simulate(spec)
    first = min(e["frame"] for e in trajectory.events)
    assert 2 <= first <= 4  # a clean step or more, then the bounce
    [got] = analyze(_frames(spec)).objects
    assert got.motion.direction == "right"
    assert got.motion.events[0] == (first, "right")


def test_collision_and_occlusion():
    # Two objects run into each other head on; their corners overlap as they meet.
    spec = SceneSpec(
        128,
        64,
        25,
        8,
        "beige",
        (
            ObjectSpec("purple", "square", "large", "right", 0.2, 0.5, 0.8),
            ObjectSpec("green", "triangle", "large", "left", 0.8, 0.5, 0.8),
        ),
    )
    trajectory = simulate(spec)
    assert any(e["type"] == "collision" for e in trajectory.events)
    frames, visibility = render(spec, trajectory)
    assert visibility.min() < 1.0  # some occlusion happens
    analysis = analyze(frames)
    assert [(o.color, o.shape) for o in sorted(analysis.objects, key=lambda o: o.color)] == [
        ("green", "triangle"),
        ("purple", "square"),
    ]
    for want in spec.objects:
        got = _by_color(analysis, want.color)
        assert got.motion.motion == want.motion
        assert got.present.all()
        assert "object" in [what for _, what in got.motion.events]


def test_two_objects_of_one_color():
    spec = SceneSpec(
        96,
        96,
        13,
        8,
        "gray",
        (
            ObjectSpec("red", "circle", "medium", "down", 0.3, 0.3, 0.5),
            ObjectSpec("red", "triangle", "medium", "up", 0.7, 0.7, 0.5),
        ),
    )
    analysis = analyze(_frames(spec))
    assert sorted((o.color, o.shape, o.motion.motion) for o in analysis.objects) == [
        ("red", "circle", "down"),
        ("red", "triangle", "up"),
    ]


def test_agreement_on_the_default_mix():
    # The full check (1000 clips, at least 98% on every attribute) is the benchmark's
    # --validate mode; here a small sample keeps the test fast.
    totals = {k: [] for k in AGREEMENT}
    for seed in range(30):
        clip = make_clip(seed)
        for key, votes in agreement(analyze(clip.frames), clip.truth).items():
            totals[key] += votes
    for key, votes in totals.items():
        assert votes, key
        assert np.mean(votes) >= 0.95, (key, np.mean(votes))


@pytest.mark.slow
def test_agreement_on_more_of_the_default_mix():
    totals = {k: [] for k in AGREEMENT}
    for seed in range(1000, 1300):
        clip = make_clip(seed)
        for key, votes in agreement(analyze(clip.frames), clip.truth).items():
            totals[key] += votes
    for key, votes in totals.items():
        assert np.mean(votes) >= 0.98, (key, np.mean(votes))


def test_fit_motion_on_tracks():
    t = np.arange(20, dtype=np.float64)
    good = np.ones(20, dtype=bool)
    # A fall from rest with g = 1 bouncing on a floor at y = 50 (elastic: mirror the parabola).
    y = 0.5 * t**2
    y = np.where(y > 50, 100 - y, y)
    fit = fit_motion(np.stack([np.full(20, 10.0), y], -1), good, size_px=10)
    assert fit.kind == "fall" and fit.gravity == pytest.approx(1.0, abs=0.05)
    # Constant velocity up-left, with one bad frame hiding nothing.
    track = np.stack([50 - 2 * t, 60 - 2 * t], -1)
    bad = good.copy()
    bad[7] = False
    fit = fit_motion(track, bad, size_px=10)
    assert fit.motion == "up-left" and fit.residual < 1e-6 and fit.events == []
    # Still, with one frame a little off (a touching object hid an edge).
    still = np.tile([30.0, 40.0], (20, 1))
    still[5] += 1.0
    assert fit_motion(still, good, size_px=10).motion == "still"
    # A turn hidden in missing frames is still found, and breaks the fit there.
    turn = np.where(
        t[:, None] < 10, np.stack([3 * t, 0 * t], -1), np.stack([30 - 3 * (t - 10), 0 * t], -1)
    )
    hidden = good.copy()
    hidden[9:12] = False
    fit = fit_motion(turn, hidden, size_px=10)
    assert fit.direction == "right" and len(fit.events) == 1 and fit.residual < 1e-6
    # A single frame tells nothing.
    assert fit_motion(track[:1], good[:1], size_px=10).kind is None


def test_rejects_what_is_not_a_video():
    with pytest.raises(ValueError, match="T H W 3 uint8"):
        analyze(np.zeros((4, 32, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="T H W 3 uint8"):
        analyze(np.zeros((4, 32, 32, 4), dtype=np.uint8))
