"""Physics of the synthetic world: bounds, wall bounces, collisions, energy, gravity."""

import math

import numpy as np
import pytest

from kinetoscope.data.world import (
    DIRECTIONS,
    ObjectSpec,
    SceneSpec,
    WorldConfig,
    energy,
    sample_scene,
    simulate,
)

OPEN = WorldConfig(exclude=())


def _scenes(count: int, seed: int = 0, config: WorldConfig = OPEN) -> list[SceneSpec]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, config) for _ in range(count)]


def _halves(scene: SceneSpec) -> np.ndarray:
    return np.array([scene.size_px(i) / 2 for i in range(len(scene.objects))])


def test_objects_stay_inside_the_canvas():
    for scene in _scenes(150):
        traj = simulate(scene)
        half = _halves(scene)[:, None]  # (n_obj, 1)
        x, y = traj.positions[..., 0], traj.positions[..., 1]  # (n_obj, T)
        assert np.all(x >= half - 1e-9) and np.all(x <= scene.width - half + 1e-9)
        assert np.all(y >= half - 1e-9) and np.all(y <= scene.height - half + 1e-9)


def test_start_state_matches_the_spec():
    for scene in _scenes(50, seed=1):
        traj = simulate(scene)
        short = min(scene.width, scene.height)
        for i, obj in enumerate(scene.objects):
            assert traj.positions[i, 0] == pytest.approx(
                [obj.x * scene.width, obj.y * scene.height]
            )
            direction = DIRECTIONS.get(obj.motion, (0.0, 0.0))
            expected = np.array(direction) * obj.speed * short / scene.fps
            assert traj.velocities[i, 0] == pytest.approx(expected)


def test_moving_objects_move_at_least_a_pixel_per_frame():
    for scene in _scenes(200, seed=2):
        traj = simulate(scene)
        for i, obj in enumerate(scene.objects):
            if obj.motion in DIRECTIONS:
                assert np.linalg.norm(traj.velocities[i, 0]) >= 1.0 - 1e-9


def test_a_wall_bounce_reverses_the_normal_velocity():
    # A square moving right and down at 45 degrees, near the right wall.
    obj = ObjectSpec("red", "square", "small", "down-right", 0.8, 0.3, 0.6)
    scene = SceneSpec(64, 64, 9, 8, "black", (obj,))
    traj = simulate(scene)
    bounces = [e for e in traj.events if e["type"] == "bounce"]
    assert bounces and bounces[0]["wall"] == "right"
    k = bounces[0]["frame"]
    before, after = traj.velocities[0, k - 1], traj.velocities[0, k]
    assert after[0] == pytest.approx(-before[0])  # normal component reversed
    assert after[1] == pytest.approx(before[1])  # tangential component kept
    # The position was reflected: it lies where the unfolded straight path says.
    unfolded = scene.objects[0].x * 64 + before[0] * k
    wall = 64 - scene.size_px(0) / 2
    assert traj.positions[0, k, 0] == pytest.approx(2 * wall - unfolded)


def test_every_bounce_of_a_free_object_reverses_its_normal_velocity():
    checked = 0
    for scene in _scenes(150, seed=3):
        traj = simulate(scene)
        collided = {
            (e["frame"], i) for e in traj.events if e["type"] == "collision" for i in e["objects"]
        }
        for event in traj.events:
            i, k = event.get("object"), event["frame"]
            if event["type"] != "bounce" or scene.objects[i].motion == "fall" or (k, i) in collided:
                continue
            axis = 0 if event["wall"] in ("left", "right") else 1
            before, after = traj.velocities[i, k - 1], traj.velocities[i, k]
            assert after[axis] == pytest.approx(-before[axis])
            corner = sum(e.get("object") == i and e["frame"] == k for e in traj.events) > 1
            if not corner:  # a corner bounce reverses both components
                assert after[1 - axis] == pytest.approx(before[1 - axis])
            checked += 1
    assert checked > 50


def test_kinetic_energy_is_conserved_without_gravity():
    config = WorldConfig(exclude=(), min_objects=3, max_objects=3, min_frames=33)
    collisions = 0
    for scene in _scenes(120, seed=4, config=config):
        if any(o.motion == "fall" for o in scene.objects):
            continue
        traj = simulate(scene)
        collisions += sum(e["type"] == "collision" for e in traj.events)
        e = energy(traj)
        if e[0] > 0:
            assert np.abs(e - e[0]).max() <= 1e-9 * e[0]
    assert collisions > 10, "the scenes should exercise collisions"


def test_energy_with_gravity_is_conserved():
    config = WorldConfig(exclude=(), min_objects=2, max_objects=3, min_frames=33)
    checked = 0
    for scene in _scenes(150, seed=5, config=config):
        if not any(o.motion == "fall" for o in scene.objects):
            continue
        traj = simulate(scene)
        e = energy(traj)
        # Scale: the potential energy of falling the whole canvas plus the starting energy.
        moving = np.isfinite(traj.mass)
        scale = (traj.mass[moving] * traj.gravity[moving]).sum() * scene.height + np.abs(e[0])
        assert np.abs(e - e[0]).max() <= 1e-9 * scale
        checked += 1
    assert checked > 20


def test_a_falling_object_bounces_back_to_its_start_height():
    obj = ObjectSpec("orange", "circle", "medium", "fall", 0.5, 0.2)
    scene = SceneSpec(64, 64, 65, 8, "navy", (obj,))
    traj = simulate(scene)
    y = traj.positions[0, :, 1]
    floors = [e["frame"] for e in traj.events if e["wall"] == "floor"]
    assert len(floors) >= 2, "8 s is enough for several bounces"
    assert y.min() >= y[0] - 1e-9  # never higher than where it started
    g = traj.gravity[0]
    # Between the first two bounces the frame nearest the apex is within half a frame of it.
    apex = y[floors[0] : floors[1]].min()
    assert apex - y[0] <= g / 8 + 1e-9
    assert np.all(traj.positions[0, :, 0] == traj.positions[0, 0, 0])  # falls straight down
    assert traj.velocities[0, 1, 1] > 0  # starts by falling, y points down


def test_a_still_object_never_moves_and_deflects_a_mover():
    mover = ObjectSpec("red", "circle", "medium", "right", 0.25, 0.5, 0.8)
    wall = ObjectSpec("white", "square", "large", "still", 0.7, 0.5)
    scene = SceneSpec(96, 64, 17, 8, "gray", (mover, wall))
    traj = simulate(scene)
    assert np.all(traj.positions[1] == traj.positions[1, 0])
    assert np.all(traj.velocities[1] == 0)
    hits = [e for e in traj.events if e["type"] == "collision"]
    assert hits and hits[0]["objects"] == [0, 1]
    k = hits[0]["frame"]
    # Head-on against an immovable obstacle: the speed is kept and the direction reversed.
    assert traj.velocities[0, k] == pytest.approx(-traj.velocities[0, k - 1])


def test_head_on_collision_is_elastic_with_mass_by_area():
    big = ObjectSpec("blue", "square", "large", "right", 0.2, 0.5, 0.5)
    small = ObjectSpec("yellow", "circle", "small", "left", 0.8, 0.5, 0.5)
    scene = SceneSpec(128, 64, 17, 8, "black", (big, small))
    traj = simulate(scene)
    k = next(e["frame"] for e in traj.events if e["type"] == "collision")
    assert not [e for e in traj.events if e["type"] == "bounce" and e["frame"] <= k]
    m = traj.mass
    s_big, s_small = scene.size_px(0), scene.size_px(1)
    assert m[0] / m[1] == pytest.approx(s_big**2 / (math.pi / 4 * s_small**2))
    u = traj.velocities[:, k - 1, 0]
    v = traj.velocities[:, k, 0]
    assert (m * v).sum() == pytest.approx((m * u).sum())  # momentum
    assert (m * v**2).sum() == pytest.approx((m * u**2).sum())  # kinetic energy
    # Closed form of a 1D elastic collision.
    expected0 = ((m[0] - m[1]) * u[0] + 2 * m[1] * u[1]) / (m[0] + m[1])
    assert v[0] == pytest.approx(expected0)
    assert v[1] > 0 > u[1]  # the light object is thrown back


def test_events_are_ordered_and_name_real_objects():
    for scene in _scenes(100, seed=6):
        traj = simulate(scene)
        frames = [e["frame"] for e in traj.events]
        assert frames == sorted(frames)
        for e in traj.events:
            assert 1 <= e["frame"] < scene.frames
            if e["type"] == "bounce":
                assert e["wall"] in ("left", "right", "top", "floor")
                assert scene.objects[e["object"]].motion != "still"
            else:
                i, j = e["objects"]
                assert 0 <= i < j < len(scene.objects)


def test_a_single_frame_has_no_events():
    obj = ObjectSpec("red", "circle", "small", "right", 0.5, 0.5, 0.5)
    traj = simulate(SceneSpec(32, 32, 1, 8, "black", (obj,)))
    assert traj.positions.shape == (1, 1, 2) and traj.events == []


def test_an_object_on_the_boundary_moving_away_does_not_bounce():
    # 0.92 * 96 lies a rounding error beyond the right limit 96 - 7.68.
    obj = ObjectSpec("blue", "square", "small", "down-left", 0.92, 0.265, 0.5)
    traj = simulate(SceneSpec(96, 128, 9, 8, "black", (obj,)))
    assert traj.events == []
    assert np.all(traj.velocities[0] == traj.velocities[0, 0])
    assert traj.velocities[0, 0, 0] < 0
