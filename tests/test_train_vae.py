"""Training and evaluating the VAE: exact resume, corrupt clips, metrics, CLI smoke tests."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from kinetoscope.checkpoint import save_model
from kinetoscope.cli import main
from kinetoscope.data.manifest import ManifestRecord, read_manifest, write_manifest
from kinetoscope.data.world import WorldConfig, write_world
from kinetoscope.evaluate.vae import latent_bits_per_pixel, ssim
from kinetoscope.train.distributed import load_sharded
from kinetoscope.train.vae import train_vae
from kinetoscope.vae import VAE_PRESETS, VideoVAE, load_vae
from kinetoscope.vae.losses import psnr

SMALL = WorldConfig(min_side=32, max_side=64, aspect_ratios=("1:1", "2:1"), max_frames=9)
TRAIN = {"preset": "tiny", "batch": 2, "crop": 32, "max_frames": 5, "holdout": 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Six small world clips and a manifest."""
    out = tmp_path_factory.mktemp("world")
    return write_world(out, clips=6, seed=5, config=SMALL, workers=1, progress=False).manifest


def _state(folder: Path) -> dict[str, torch.Tensor]:
    return load_vae(folder).state_dict()


def test_resume_after_n_steps_equals_an_uninterrupted_run(world, tmp_path):
    run = {**TRAIN, "steps": 4, "eval_every": 2, "stats_clips": 2, "progress": False}
    # Single frames mixed in, and an images-only start that ends after the stop.
    run |= {"images": 1, "image_steps": 3}
    whole = train_vae(world, tmp_path / "whole", **run)
    stopped = train_vae(world, tmp_path / "parts", stop_at=2, **run)
    assert stopped == {"steps": 2, "stopped": True}
    assert (tmp_path / "parts" / "checkpoint" / "train_state" / "sharded").is_dir()
    resumed = train_vae(world, tmp_path / "parts", resume=True, **run)
    a, b = _state(tmp_path / "whole"), _state(tmp_path / "parts")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed["final_loss"] == whole["final_loss"]
    assert resumed["heldout_psnr"] == whole["heldout_psnr"]
    assert resumed["weights_sha256"] == whole["weights_sha256"]
    # The latent statistics were measured and stored with the weights.
    assert not torch.equal(a["latent_scale"], torch.ones_like(a["latent_scale"]))
    # The shared checkpoint holds the same optimizer moments and loop state, and the resumed
    # metrics log is the uninterrupted one, line for line.
    moments = [_moments(tmp_path / name) for name in ("whole", "parts")]
    assert moments[0].keys() == moments[1].keys() and moments[0]
    assert all(torch.equal(moments[0][k], moments[1][k]) for k in moments[0])
    states = [_loop_state(tmp_path / name) for name in ("whole", "parts")]
    for state in states:
        del state["seconds"], state["data_source"]
    assert states[0] == states[1] and states[0]["step"] == 4 and len(states[0]["history"]) == 2
    drop = ("seconds", "frames_per_s")
    logs = [[{k: v for k, v in row.items() if k not in drop} for row in _rows(tmp_path / name)]
            for name in ("whole", "parts")]  # fmt: skip
    assert logs[0] == logs[1] and [row["step"] for row in logs[0]] == [1, 2, 3, 4]


def _moments(run: Path) -> dict[str, torch.Tensor]:
    """The optimizer moments of a run's checkpoint, read back by one process."""
    vae = load_vae(run)
    optimizer = torch.optim.AdamW(vae.parameters())
    load_sharded(run / "checkpoint" / "train_state" / "sharded", vae, None, optimizer)
    return {f"{index}.{name}": value for index, moments in optimizer.state_dict()["state"].items()
            for name, value in moments.items()}  # fmt: skip


def _loop_state(run: Path) -> dict:
    return json.loads((run / "checkpoint" / "train_state" / "state.json").read_text())


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_image_steps_train_on_single_frames_then_videos(tmp_path):
    five = WorldConfig(min_side=32, max_side=32, aspect_ratios=("1:1",), min_frames=5, max_frames=5)
    clips = write_world(tmp_path / "w", clips=4, seed=3, config=five, workers=1, progress=False)

    def frames_after(steps: int) -> int:
        out = tmp_path / f"run{steps}"
        run = {**TRAIN, "steps": steps, "eval_every": 10, "stats_clips": 1, "progress": False}
        train_vae(clips.manifest, out, images=2, image_steps=2, overwrite=True, **run)
        return _loop_state(out)["frames"]

    # Two image steps: batch 2 + 2 images, one frame each.
    assert frames_after(2) == 2 * (2 + 2)
    # The third step trains 2 videos of 5 frames and 2 images.
    assert frames_after(3) - frames_after(2) == 2 * 5 + 2


def test_init_starts_from_a_trained_vae(world, tmp_path):
    run = {**TRAIN, "steps": 2, "eval_every": 2, "stats_clips": 1, "progress": False}
    train_vae(world, tmp_path / "source", **run)
    # One step at a tiny learning rate stays next to the source's weights...
    tuned = {**run, "steps": 1, "lr": 1e-9, "warmup": 1}
    train_vae(world, tmp_path / "tuned", init=tmp_path / "source", **tuned)
    fresh = train_vae(world, tmp_path / "fresh", **tuned)
    source, after = _state(tmp_path / "source"), _state(tmp_path / "tuned")
    weights = [name for name in source if not name.startswith("latent_")]
    assert all(torch.allclose(source[n], after[n], atol=1e-6) for n in weights)
    # ... which a fresh model is not.
    other = _state(tmp_path / "fresh")
    assert fresh["steps"] == 1
    assert not all(torch.allclose(source[n], other[n], atol=1e-6) for n in weights)
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["config"]["init"] == str(tmp_path / "source")
    # The model's meta names the source relative to the model folder, no absolute path.
    meta = json.loads((tmp_path / "tuned" / "checkpoint" / "model" / "config.json").read_text())
    assert meta["meta"]["train"]["init"] == "../../../source"
    assert str(tmp_path) not in json.dumps(meta)


def test_corrupt_clips_are_counted_not_fatal(world, tmp_path):
    records = read_manifest(world)
    bad = tmp_path / "broken.mkv"
    bad.write_bytes(b"not a video at all" * 10)
    records.insert(0, ManifestRecord(path=str(bad), width=32, height=32, frames=5, fps=8.0))
    manifest = write_manifest(tmp_path / "manifest.jsonl", records)
    summary = train_vae(
        manifest, tmp_path / "run", steps=4, eval_every=4, stats_clips=2, progress=False, **TRAIN
    )
    assert summary["skipped"] >= 1
    assert math.isfinite(summary["final_loss"])


def test_bad_arguments_are_user_errors(world, tmp_path):
    with pytest.raises(ValueError, match="unknown VAE preset"):
        train_vae(world, tmp_path, preset="huge", steps=1)
    with pytest.raises(ValueError, match="precision must be one of"):
        train_vae(world, tmp_path, precision="fp8", steps=1)


@pytest.fixture(scope="module")
def stopped_run(world, tmp_path_factory) -> Path:
    """A tiny VAE run stopped after its first step, to resume."""
    out = tmp_path_factory.mktemp("stopped-vae") / "run"
    train_vae(world, out, steps=2, stop_at=1, eval_every=1, precision="fp32", progress=False,
              **{**TRAIN, "batch": 1})  # fmt: skip
    return out


@pytest.mark.parametrize(
    ("file", "change", "names"),
    [
        ("checkpoint/model/config.json", {"latent_channels": "4"}, ["'latent_channels'", '"4"']),
        (
            "checkpoint/model/config.json",
            {"temporal_down": [1, 0]},
            ["'temporal_down'", "true/false"],
        ),
        ("checkpoint/train_state/state.json", {"step": "one"}, ["'step'", "whole number", '"one"']),
        ("checkpoint/train_state/state.json", {"seconds": -5}, ["'seconds'", "-5"]),
        ("checkpoint/train_state/state.json", {"optimizer": [1]}, ["'optimizer'", "JSON object"]),
        ("checkpoint/train_state/state.json", '{"step": 1', ["not JSON"]),
        ("checkpoint/train_state/state.json", {"config": {"crop": "32"}}, ["'config.crop'"]),
    ],
)
def test_resume_names_a_bad_saved_value_and_writes_nothing(
    file, change, names, stopped_run, world, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    path = run / file
    if isinstance(change, str):
        path.write_text(change)
    else:
        document = json.loads(path.read_text())
        (document["config"] if file.endswith("config.json") else document).update(change)
        path.write_text(json.dumps(document))
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    code = main(["train-vae", "--data", str(world), "--out", str(run), "--steps", "2", "--resume",
                 "--preset", "tiny", "--batch", "1", "--max-frames", "5", "--holdout", "1",
                 "--eval-every", "1", "--precision", "fp32", "--threads", "1"])  # fmt: skip
    message = capsys.readouterr().err
    assert code == 2 and str(path) in message and "Traceback" not in message
    assert all(name in message for name in names), message
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before


def test_a_folder_of_the_earlier_layout_loads_and_is_not_resumed(world, tmp_path):
    # Weights and config at the top, train_state/ beside them: what train-vae used to write.
    vae = VideoVAE(VAE_PRESETS["tiny"])
    save_model(tmp_path / "old", vae, vae.config, meta={"data": "manifest.jsonl"})
    (tmp_path / "old" / "train_state").mkdir()
    (tmp_path / "old" / "train_state" / "state.json").write_text('{"step": 1}')
    loaded = load_vae(tmp_path / "old")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in vae.state_dict().items())
    with pytest.raises(ValueError, match="cannot --resume.*--init"):
        train_vae(world, tmp_path / "old", steps=1, resume=True, progress=False, **TRAIN)
    with pytest.raises(ValueError, match="already holds a run"):  # never written over unasked
        train_vae(world, tmp_path / "old", steps=1, progress=False, **TRAIN)
    # ... and starts a new run as its --init.
    summary = train_vae(world, tmp_path / "new", init=str(tmp_path / "old"), steps=1,
                        progress=False, **TRAIN)  # fmt: skip
    assert summary["steps"] == 1 and (tmp_path / "old" / "model.safetensors").is_file()


def test_ssim_and_psnr_behave():
    torch.manual_seed(0)
    video = torch.rand(3, 5, 32, 32) * 2 - 1
    assert ssim(video, video) == pytest.approx(1.0, abs=1e-5)
    assert psnr(video, video) == math.inf
    slightly = (video + 0.02 * torch.randn_like(video)).clamp(-1, 1)
    badly = (video + 0.3 * torch.randn_like(video)).clamp(-1, 1)
    assert 1.0 > ssim(slightly, video) > ssim(badly, video) > 0.0
    assert ssim(slightly, video) == pytest.approx(ssim(video, slightly), abs=1e-6)
    assert psnr(slightly, video) > psnr(badly, video)
    # A constant offset keeps the structure: SSIM stays far above that of noise of equal MSE.
    offset = (video * 0.8 + 0.1).clamp(-1, 1)
    assert ssim(offset, video) > ssim(badly, video)
    with pytest.raises(ValueError, match="same shape"):
        ssim(video, video[:, :1])


def test_latent_bits_per_pixel():
    vae = VideoVAE(VAE_PRESETS["world"])  # 16 channels, 4x8x8
    assert latent_bits_per_pixel(vae, 17, 64, 64) == pytest.approx(
        16 * 5 * 8 * 8 * 16 / (17 * 64 * 64)
    )
    assert latent_bits_per_pixel(vae, 1, 64, 64) == pytest.approx(16 * 16 / 64)


def test_cli_train_vae_and_eval_vae(world, tmp_path, capsys):
    out = tmp_path / "vae"
    code = main(
        ["train-vae", "--data", str(world), "--preset", "tiny", "--out", str(out),
         "--steps", "2", "--batch", "2", "--eval-every", "2", "--max-frames", "5",
         "--mse-weight", "3"]
    )  # fmt: skip
    assert code == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert {"config.json", "checkpoint", "metrics.jsonl", "loss.png"} <= {
        p.name for p in out.iterdir()
    }
    assert (out / "checkpoint" / "model" / "model.safetensors").is_file()
    assert '"mse_weight": 3.0' in (out / "config.json").read_text()
    report_dir = tmp_path / "report"
    code = main(
        ["eval", "vae", "--vae", str(out), "--data", str(world), "--limit", "3",
         "--out", str(report_dir), "--max-frames", "5"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "PSNR" in printed and printed.count("worst: ") == 3
    report = json.loads((report_dir / "report.json").read_text())
    assert report["clips"] == 3 and math.isfinite(report["psnr"]) and 0 < report["ssim"] <= 1
    clips = report["per_clip"]
    assert [c["path"] for c in clips] == [r.path for r in read_manifest(world)[:3]]
    assert min(c["psnr"] for c in clips) == report["min_psnr"]
    assert all(c["frames"] <= 5 and c["width"] % 16 == 0 for c in clips)
    assert (report_dir / "example-0.gif").stat().st_size > 0
    assert (report_dir / "example-0.png").stat().st_size > 0


def test_cli_reports_a_missing_manifest(tmp_path, capsys):
    code = main(["eval", "vae", "--vae", str(tmp_path), "--data", str(tmp_path / "none.jsonl")])
    assert code == 2
    assert "error" in capsys.readouterr().err
