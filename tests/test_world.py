"""The synthetic world: specs and their validation, the default mix, held-out combinations,
determinism, the files `write_world` writes, and the `kinetoscope world` command."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from kinetoscope.cli import main
from kinetoscope.data.manifest import read_manifest
from kinetoscope.data.world import (
    BACKGROUNDS,
    COLORS,
    DEFAULT_HELDOUT,
    DIRECTIONS,
    MOTIONS,
    ObjectSpec,
    SceneSpec,
    WorldConfig,
    clip_seed,
    make_clip,
    parse_exclude,
    sample_scene,
    scene_from_truth,
    simulate,
    write_world,
)
from kinetoscope.io import probe, read_video


def _spec(**changes) -> dict:
    base = {"color": "red", "shape": "circle", "size": "small", "motion": "right"}
    return base | {"x": 0.5, "y": 0.5, "speed": 0.5} | changes


def _scene(objects=None, **changes) -> SceneSpec:
    objects = (ObjectSpec(**_spec()),) if objects is None else objects
    base = {"width": 64, "height": 48, "frames": 9, "fps": 8, "background": "black"}
    return SceneSpec(**(base | changes), objects=objects)


# --- specs and validation ---


def test_palette_matches_the_documented_names():
    assert BACKGROUNDS["navy"] == (24, 32, 80) and COLORS["orange"] == (245, 140, 30)
    assert ("still", *DIRECTIONS, "fall") == MOTIONS and len(DIRECTIONS) == 8
    for name, (dx, dy) in DIRECTIONS.items():
        assert dx * dx + dy * dy == pytest.approx(1.0)
        assert ("right" in name) == (dx > 0) and ("up" in name) == (dy < 0)  # y points down


def test_specs_round_trip_through_json():
    scene = sample_scene(np.random.default_rng(0), WorldConfig(min_objects=3))
    again = SceneSpec.from_dict(json.loads(json.dumps(scene.to_dict())))
    assert again == scene


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"color": "pink"}, "unknown color 'pink'; choose one of: red, green"),
        ({"shape": "star"}, "circle, square, triangle"),
        ({"size": "huge"}, "small, medium, large"),
        ({"motion": "sideways"}, "up-left"),
        ({"x": 1.2}, "strictly between 0 and 1"),
        ({"motion": "still"}, "set speed=0"),
        ({"motion": "fall"}, "starts at rest"),
        ({"speed": 0.0}, "0 < speed"),
        ({"speed": 50.0}, "0 < speed"),
    ],
)
def test_object_spec_errors_say_what_to_change(changes, message):
    with pytest.raises(ValueError, match=message):
        ObjectSpec(**_spec(**changes))


def test_scene_spec_errors_say_what_to_change():
    with pytest.raises(ValueError, match="nearest valid count is 9"):
        _scene(frames=10)
    with pytest.raises(ValueError, match="use 96 or 112"):
        _scene(width=100)
    with pytest.raises(ValueError, match="between 32 and"):
        _scene(height=16)
    with pytest.raises(ValueError, match="unknown background 'white'"):
        _scene(background="white")
    with pytest.raises(ValueError, match="sticks out of the canvas; keep x in"):
        _scene((ObjectSpec(**_spec(size="large", x=0.05)),))
    with pytest.raises(ValueError, match="overlap at the start"):
        _scene((ObjectSpec(**_spec()), ObjectSpec(**_spec(shape="square", x=0.52))))
    with pytest.raises(ValueError, match="change the color or shape"):
        _scene((ObjectSpec(**_spec(x=0.2)), ObjectSpec(**_spec(x=0.8))))
    with pytest.raises(ValueError, match="1 to 4 objects"):
        _scene(())


def test_config_errors_say_what_to_change():
    with pytest.raises(ValueError, match="nearest valid count is 5"):
        WorldConfig(min_frames=4)
    with pytest.raises(ValueError, match="16:9 has no size"):
        WorldConfig(max_side=128)
    with pytest.raises(ValueError, match="min_side 128 is above max_side 64"):
        WorldConfig(min_side=128, max_side=64)
    with pytest.raises(ValueError, match="like 4:3"):
        WorldConfig(aspect_ratios=("wide",))
    with pytest.raises(ValueError, match="max_objects"):
        WorldConfig(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="unknown motion 'hover'"):
        WorldConfig(exclude=(("red", "circle", "hover"),))
    every_pair = tuple((c, s, m) for c in COLORS for s in ("circle", "square") for m in MOTIONS)
    with pytest.raises(ValueError, match="exclude fewer"):
        WorldConfig(exclude=every_pair + tuple((c, "triangle", m) for c in COLORS for m in MOTIONS))
    WorldConfig(exclude=every_pair)  # triangles are left: still valid


def test_parse_exclude():
    assert parse_exclude("default") == DEFAULT_HELDOUT
    assert parse_exclude("none") == ()
    assert parse_exclude(" Red:circle:fall, blue:square:up-left ") == (
        ("red", "circle", "fall"),
        ("blue", "square", "up-left"),
    )
    with pytest.raises(ValueError, match="color:shape:motion"):
        parse_exclude("red:circle")
    with pytest.raises(ValueError, match="unknown color 'pink'"):
        parse_exclude("pink:circle:fall")


def test_default_heldout_covers_still_direction_and_fall():
    motions = {m for _, _, m in DEFAULT_HELDOUT}
    assert "still" in motions and "fall" in motions and motions & set(DIRECTIONS)
    assert 4 <= len(DEFAULT_HELDOUT) <= 8 and len(set(DEFAULT_HELDOUT)) == len(DEFAULT_HELDOUT)


# --- the default mix ---


def test_default_mix_covers_every_size_and_length_but_favours_small_clips():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, WorldConfig()) for _ in range(1500)]
    ratios = Counter()
    for s in scenes:
        assert s.width % 16 == 0 and s.height % 16 == 0
        assert min(s.width, s.height) >= 32 and max(s.width, s.height) <= 256
        ratio = s.width / s.height
        ratios[
            min(
                ("1:1", 1),
                ("4:3", 4 / 3),
                ("3:4", 3 / 4),
                ("16:9", 16 / 9),
                ("9:16", 9 / 16),
                ("2:1", 2),
                key=lambda r: abs(r[1] - ratio),
            )[0]
        ] += 1
    assert set(ratios) == {"1:1", "4:3", "3:4", "16:9", "9:16", "2:1"}
    assert {s.frames for s in scenes} == set(range(1, 66, 4))
    images = sum(s.frames == 1 for s in scenes) / len(scenes)
    assert 0.07 <= images <= 0.13
    assert sum(max(s.width, s.height) <= 128 for s in scenes) / len(scenes) > 0.65
    assert sum(s.frames <= 33 for s in scenes) / len(scenes) > 0.75
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    motions = Counter(o.motion for s in scenes for o in s.objects)
    assert set(motions) == set(MOTIONS)


def test_config_limits_are_respected():
    config = WorldConfig(
        min_side=64,
        max_side=128,
        aspect_ratios=("1:1", "2:1"),
        min_frames=5,
        max_frames=17,
        fps=12,
        min_objects=2,
        max_objects=2,
    )
    rng = np.random.default_rng(1)
    for _ in range(200):
        s = sample_scene(rng, config)
        assert min(s.width, s.height) >= 64 and max(s.width, s.height) <= 128
        assert s.width in (s.height, 2 * s.height)
        assert s.frames in (5, 9, 13, 17) and s.fps == 12 and len(s.objects) == 2


def test_sampled_objects_are_distinct_and_never_the_background_color():
    rng = np.random.default_rng(2)
    for _ in range(300):
        s = sample_scene(rng, WorldConfig(min_objects=3))
        pairs = [(o.color, o.shape) for o in s.objects]
        assert len(set(pairs)) == len(pairs)
        assert all(COLORS[o.color] != BACKGROUNDS[s.background] for o in s.objects)


def test_heldout_combinations_never_appear_when_excluded():
    def triples(config, seed):
        rng = np.random.default_rng(seed)
        return Counter(
            (o.color, o.shape, o.motion)
            for _ in range(600)
            for o in sample_scene(rng, config).objects
        )

    held = set(DEFAULT_HELDOUT)
    assert not held & set(triples(WorldConfig(), 3))
    # The same draw without exclusion does produce them, so the check above can fail.
    assert held & set(triples(WorldConfig(exclude=()), 3))
    custom = parse_exclude(",".join(f"red:circle:{m}" for m in MOTIONS))
    assert not any(
        c == "red" and s == "circle" for c, s, _ in triples(WorldConfig(exclude=custom), 4)
    )


# --- clips, determinism and files ---


def test_make_clip_is_deterministic_and_truth_rebuilds_the_scene():
    a, b = make_clip(11), make_clip(11)
    assert np.array_equal(a.frames, b.frames) and a.truth == b.truth and a.captions == b.captions
    assert make_clip(12).truth != a.truth
    assert a.frames.shape == (a.scene.frames, a.scene.height, a.scene.width, 3)
    scene = scene_from_truth(json.loads(json.dumps(a.truth)))
    assert scene == a.scene
    positions = np.array([track["position"] for track in a.truth["tracks"]])
    assert np.abs(positions - simulate(scene).positions).max() <= 5e-4
    assert a.truth["seed"] == 11 and a.truth["captions"] == a.captions


def test_clip_seeds_depend_on_seed_and_index_only():
    seeds = {clip_seed(0, i) for i in range(100)} | {clip_seed(1, i) for i in range(100)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)
    assert clip_seed(5, 7) == clip_seed(5, 7)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_write_world_gives_the_same_bytes_whatever_the_workers(tmp_path):
    one = write_world(tmp_path / "one", clips=6, seed=3, workers=1, progress=False)
    two = write_world(tmp_path / "two", clips=6, seed=3, workers=2, progress=False)
    files = _files(tmp_path / "one")
    assert files == _files(tmp_path / "two")
    assert len([f for f in files if f.startswith("clips/")]) == 6
    assert one.clips == two.clips == 6 and one.frames == two.frames
    other = write_world(tmp_path / "other", clips=6, seed=4, workers=1, progress=False)
    assert _files(tmp_path / "other") != files and other.manifest.name == "manifest.jsonl"


def test_written_files_match_the_clip_and_its_manifest_record(tmp_path):
    summary = write_world(tmp_path, clips=5, seed=9, workers=1, progress=False)
    records = read_manifest(summary.manifest)
    assert [r.extra["id"] for r in records] == [f"{i:06d}" for i in range(5)]
    assert summary.frames == sum(r.frames for r in records)
    for index, record in enumerate(records):
        assert record.extra["seed"] == clip_seed(9, index)
        clip = make_clip(record.extra["seed"])
        frames = read_video(record.path)
        assert np.array_equal(frames, clip.frames)  # lossless, bit exact
        truth = json.loads(Path(record.truth).read_text())
        assert truth == json.loads(json.dumps(clip.truth))
        assert set(record.captions) == {"short", "medium", "long"}
        assert record.captions == truth["captions"]
        assert (record.width, record.height, record.frames) == (
            truth["canvas"]["width"],
            truth["canvas"]["height"],
            truth["frames"],
        )
    world = json.loads((tmp_path / "world.json").read_text())
    assert world["seed"] == 9 and world["config"]["exclude"] == [list(t) for t in DEFAULT_HELDOUT]


def test_write_world_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="positive integer"):
        write_world(tmp_path, clips=0, seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        write_world(tmp_path, clips=1, seed=-1)


def test_cli_world_writes_readable_clips(tmp_path, capsys):
    out = tmp_path / "world"
    assert main(["world", "--out", str(out), "--clips", "4", "--seed", "1", "--workers", "1"]) == 0
    assert "wrote 4 clips" in capsys.readouterr().out
    records = read_manifest(out / "manifest.jsonl")
    assert len(records) == 4
    for record in records:
        info = probe(record.path)
        frames = read_video(record.path)
        assert frames.shape == (record.frames, record.height, record.width, 3)
        assert (info.width, info.height) == (record.width, record.height)


def test_cli_world_reports_bad_options(tmp_path, capsys):
    code = main(["world", "--out", str(tmp_path), "--clips", "1", "--min-frames", "4"])
    assert code == 2
    assert "nearest valid count is 5" in capsys.readouterr().err
    assert not (tmp_path / "manifest.jsonl").exists()


# --- the world-model mix: mirror twins, clean starts, promised shares ---


def test_world_model_mix_keeps_its_promised_shares(tmp_path):
    from kinetoscope.data.world import WORLD_MIXES

    config = WORLD_MIXES["world-model"]
    write_world(tmp_path, clips=400, seed=11, config=config, workers=1, progress=False)
    truths = [json.loads(p.read_text()) for p in sorted((tmp_path / "truth").iterdir())]
    sizes = {(t["canvas"]["width"], t["canvas"]["height"]) for t in truths}
    assert all(min(wh) >= 48 and max(wh) <= 128 for wh in sizes)
    ratios = {round(w / h, 2) for w, h in sizes}
    assert ratios == {1.0, 1.33, 0.75, 1.5, 0.67, 2.0, 0.5}  # every aspect ratio of the mix
    frames = [t["frames"] for t in truths]
    assert 0.05 <= sum(f == 1 for f in frames) / len(frames) <= 0.16  # some images
    assert sum(9 <= f <= 33 for f in frames) / len(frames) > 0.65  # the benchmark's lengths
    assert any(f > 33 for f in frames)  # and a few longer clips
    for t in truths:  # no bounce or collision hides the start motion (frames 1-4)
        assert all(e["frame"] >= 5 for e in t["events"])
        held = {(o["color"], o["shape"], o["motion"]) for o in t["objects"]}
        assert not held & set(DEFAULT_HELDOUT)
    records = read_manifest(tmp_path / "manifest.jsonl")
    twins = [r for r in records if "mirror_of" in r.extra]
    assert len(twins) / len(records) > 0.45  # nearly every odd clip is a mirror


def _swap_left_right(text: str) -> str:
    return text.replace("left", "\0").replace("right", "left").replace("\0", "right")


def test_a_mirror_twins_caption_matches_the_mirrored_clips_ground_truth(tmp_path):
    from kinetoscope.data.world import WORLD_MIXES

    config = WORLD_MIXES["world-model"]
    write_world(tmp_path, clips=40, seed=3, config=config, workers=1, progress=False)
    records = {r.extra["id"]: r for r in read_manifest(tmp_path / "manifest.jsonl")}
    checked = 0
    for twin in (r for r in records.values() if "mirror_of" in r.extra):
        original = records[twin.extra["mirror_of"]]
        a, b = (json.loads(Path(r.truth).read_text()) for r in (original, twin))
        assert a["canvas"] == b["canvas"] and a["frames"] == b["frames"]
        width = a["canvas"]["width"]
        for oa, ob, ta, tb in zip(
            a["objects"], b["objects"], a["tracks"], b["tracks"], strict=True
        ):
            # The twin's truth is the original reflected: x -> width - x, left <-> right.
            assert ob["motion"] == _swap_left_right(oa["motion"])
            xa, xb = np.array(ta["position"])[:, 0], np.array(tb["position"])[:, 0]
            np.testing.assert_allclose(xb, width - xa, atol=0.01)
        # Its captions say its own truth: the same words with left and right swapped.
        for level, text in original.captions.items():
            assert twin.captions[level] == _swap_left_right(text), level
        checked += 1
    assert checked >= 15
