"""The one training skeleton: every trainer's run folder has the same layout, its model loads
from the run folder, the schedule, and the CLI's defaults come from the trainers' configs."""

import argparse
import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from kinetoscope.captioner import Captioner
from kinetoscope.checkpoint import load_config, load_meta, resolve_model_folder
from kinetoscope.cli import build_parser, main
from kinetoscope.pipeline import Pipeline
from kinetoscope.train.captioner import CaptionerTrainConfig, train_captioner
from kinetoscope.train.dit import DiTTrainConfig, load_dit, train_dit
from kinetoscope.train.skeleton import learning_rate
from kinetoscope.train.vae import VAETrainConfig, train_vae
from kinetoscope.vae import load_vae

pytestmark = [
    pytest.mark.filterwarnings("ignore:prompts longer than"),
    pytest.mark.usefixtures("one_thread"),
]

COMMON = {"steps": 2, "precision": "fp32", "progress": False}


@pytest.fixture(scope="module")
def runs(tiny_world, tmp_path_factory) -> dict[str, tuple[Path, type]]:
    """A 2-step run of each trainer (tiny sizes): {name: (run folder, config class)}."""
    manifest, vae = tiny_world
    root = tmp_path_factory.mktemp("skeleton")
    train_vae(manifest, root / "vae", preset="tiny", batch=1, crop=32, max_frames=5, holdout=1,
              eval_every=2, stats_clips=1, **COMMON)  # fmt: skip
    train_dit(manifest, root / "dit", vae=vae, preset="tiny", max_frames=9, preview_every=0,
              **COMMON)  # fmt: skip
    train_captioner(manifest, root / "captioner", vae=vae, batch=2, width=32, layers=1,
                    holdout=1, **COMMON)  # fmt: skip
    return {
        "vae": (root / "vae", VAETrainConfig),
        "dit": (root / "dit", DiTTrainConfig),
        "captioner": (root / "captioner", CaptionerTrainConfig),
    }


def test_every_trainer_writes_the_same_run_folder(runs):
    for name, (run, config_class) in runs.items():
        assert {"config.json", "checkpoint", "metrics.jsonl", "loss.png"} <= {
            p.name for p in run.iterdir()
        }, name
        # The training config, typed: load_config reads it back as the trainer's config.
        config = load_config(run, config_class)
        assert config.steps == 2 and config.precision == "fp32", name
        # One checkpoint: whole weights in model/, the loop state and sharded state beside.
        checkpoint = run / "checkpoint"
        assert (checkpoint / "model" / "model.safetensors").is_file(), name
        state = json.loads((checkpoint / "train_state" / "state.json").read_text())
        assert state["step"] == 2 and state["world_size"] == 1, name
        assert state["config"] == json.loads(json.dumps(dataclasses.asdict(config))), name
        assert (checkpoint / "train_state" / "sharded" / ".metadata").is_file(), name
        # One metrics line a step, with the fields every trainer logs.
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [row["step"] for row in rows] == [1, 2], name
        for row in rows:
            assert {"loss", "lr", "grad_norm", "seconds", "skipped", "nonfinite_steps"} <= set(row)
            assert math.isfinite(row["loss"]) and not row["skipped"], name
        # The exported weights carry no path of the machine that trained them.
        for part in ("model", "ema"):
            if (checkpoint / part).is_dir():
                meta = json.dumps(load_meta(checkpoint / part))
                assert str(run.parent) not in meta, (name, part, meta)
    # Only the DiT keeps an EMA; it is what a DiT run stands for.
    assert [name for name, (run, _) in runs.items() if (run / "checkpoint" / "ema").is_dir()] == [
        "dit"
    ]


def test_each_model_loads_from_its_run_folder(runs):
    vae_run, dit_run, captioner_run = (runs[name][0] for name in ("vae", "dit", "captioner"))
    assert resolve_model_folder(vae_run) == vae_run / "checkpoint" / "model"
    assert resolve_model_folder(dit_run) == dit_run / "checkpoint" / "ema"
    assert resolve_model_folder(dit_run / "checkpoint") == dit_run / "checkpoint" / "ema"
    vae = load_vae(vae_run)
    assert torch.equal(vae.latent_scale, load_vae(vae_run / "checkpoint" / "model").latent_scale)
    assert not torch.equal(vae.latent_scale, torch.ones_like(vae.latent_scale))  # measured
    captioner = Captioner.load(captioner_run)
    assert captioner.meta["step"] == 2 and Path(captioner.meta["vae"]).is_dir()
    pipe = Pipeline.load(dit_run, device="cpu", precision="fp32")
    ema = load_dit(dit_run)
    assert torch.equal(pipe.dit.state_dict()["final.linear.weight"],
                       ema.state_dict()["final.linear.weight"])  # fmt: skip
    assert pipe.files.vae == dit_run / "vae"
    with pytest.raises(ValueError, match="holds no model"):
        load_vae(vae_run / "checkpoint" / "train_state")


def test_one_schedule_warms_up_then_holds_or_decays():
    constant = DiTTrainConfig(lr=1e-3, warmup=4, steps=20)
    assert [learning_rate(s, constant) for s in (0, 1, 3, 4, 19)] == pytest.approx(
        [2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3]
    )
    cosine = VAETrainConfig(lr=1e-3, warmup=4, steps=20)  # decays to a tenth
    rates = [learning_rate(s, cosine) for s in range(20)]
    assert rates[3] == pytest.approx(1e-3) and rates[4] == pytest.approx(1e-3)
    assert all(a > b for a, b in itertools.pairwise(rates[4:]))
    assert learning_rate(20, cosine) == pytest.approx(1e-4)
    to_zero = CaptionerTrainConfig(lr=1e-3, warmup=0, steps=10)
    assert learning_rate(0, to_zero) == pytest.approx(1e-3)
    assert learning_rate(5, to_zero) == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="schedule must be one of"):
        VAETrainConfig(schedule="linear")


# ---------------------------------------------------------------------------------------------
# The CLI reads its defaults from the configs

COMMANDS = {"train-vae": VAETrainConfig, "train": DiTTrainConfig,
            "train-captioner": CaptionerTrainConfig}  # fmt: skip


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


def _config_field(config: type, dest: str) -> bool:
    names = {f.name for f in dataclasses.fields(config)}
    return dest in names or dest.split(".")[0] in names


def test_no_training_option_restates_a_default():
    for command, config in COMMANDS.items():
        options = [a for a in _subparser(command)._actions if _config_field(config, a.dest)]
        assert len(options) >= 10, command
        for action in options:
            # Either the config's own default, read from it, or None: the config decides.
            default = action.default
            assert default is None or type(default).__name__ == "_ConfigDefault", action.dest
            if default is not None:
                value = config()
                for part in action.dest.split("."):
                    value = getattr(value, part)
                assert default.value() == value, (command, action.dest)


def test_the_help_shows_the_configs_defaults(monkeypatch, capsys):
    import kinetoscope.train.vae as vae_module

    @dataclasses.dataclass
    class Changed(VAETrainConfig):
        lr: float = 0.123  # a default that lives nowhere but here
        crop: int = 48

    monkeypatch.setattr(vae_module, "VAETrainConfig", Changed)
    with pytest.raises(SystemExit):
        main(["train-vae", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(AdamW) (default: 0.123)" in text and "(px, a multiple of 16) (default: 48)" in text
    assert "(default: 1.0)" in text  # --l1-weight, from the nested loss config


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_passes_only_the_options_given(command, monkeypatch):
    import kinetoscope.train.captioner
    import kinetoscope.train.dit
    import kinetoscope.train.vae

    module, function = {
        "train-vae": (kinetoscope.train.vae, "train_vae"),
        "train": (kinetoscope.train.dit, "train_dit"),
        "train-captioner": (kinetoscope.train.captioner, "train_captioner"),
    }[command]
    seen = {}

    def record(data, out, **kwargs):
        seen.update(kwargs)
        return {"stopped": True, "steps": 0}

    monkeypatch.setattr(module, function, record)
    assert main([command, "--data", "m.jsonl", "--out", "run"]) == 0
    overrides = {k: v for k, v in seen.items() if k not in ("resume", "overwrite", "vae", "cache")}
    assert overrides == {}  # so the trainer runs its config's defaults
    argv = [command, "--data", "m.jsonl", "--out", "run", "--lr", "0.5", "--seed", "7"]
    if command == "train-vae":
        argv += ["--mse-weight", "3"]
    assert main(argv) == 0
    assert seen["lr"] == 0.5 and seen["seed"] == 7
    if command == "train-vae":
        assert seen["loss"] == dataclasses.replace(VAETrainConfig().loss, mse_weight=3.0)
