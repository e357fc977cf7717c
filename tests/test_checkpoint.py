"""Checkpoints: safetensors + config.json round trips, atomic writes, clear errors."""

import json
from dataclasses import dataclass

import pytest
import torch

from kinetoscope.checkpoint import (
    load_config,
    load_meta,
    load_tensors,
    load_weights,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    save_model,
    save_tensors,
)
from kinetoscope.vae import VAE_PRESETS, VAEConfig, VideoVAE


@dataclass
class Inner:
    sizes: tuple[int, ...] = (1, 2)


@dataclass
class Outer:
    name: str = "x"
    inner: Inner | None = None
    pair: tuple[int, float] = (1, 2.0)


def test_vae_round_trip_restores_config_weights_buffers_and_extras(tmp_path):
    config = VAE_PRESETS["tiny"]
    torch.manual_seed(0)
    vae = VideoVAE(config)
    vae.latent_shift.normal_()
    vae.latent_scale.uniform_(0.5, 2.0)
    extra = {"note": torch.arange(5)}
    save_model(tmp_path, vae, config, extra_tensors=extra, meta={"steps": 12})
    loaded_config = load_config(tmp_path, VAEConfig)
    assert loaded_config == config and isinstance(loaded_config.channels, tuple)
    loaded = VideoVAE(loaded_config)
    extras = load_weights(tmp_path, loaded)
    assert torch.equal(extras["note"], extra["note"])
    for (name, a), b in zip(vae.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert load_meta(tmp_path) == {"steps": 12}
    document = json.loads((tmp_path / "config.json").read_text())
    assert document["kind"] == "VAEConfig" and document["version"] == 1
    # Written atomically: no temporary files are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_weights_can_be_stored_in_half_precision(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    save_model(tmp_path / "full", model, Outer())
    save_model(tmp_path / "half", model, Outer(), dtype=torch.float16)
    assert load_tensors(tmp_path / "half" / "model.safetensors")["weight"].dtype == torch.float16
    size = {
        name: (tmp_path / name / "model.safetensors").stat().st_size for name in ("full", "half")
    }
    assert size["half"] < 0.6 * size["full"]
    loaded = torch.nn.Linear(64, 64)
    load_weights(tmp_path / "half", loaded)
    assert loaded.weight.dtype == torch.float32
    assert torch.allclose(loaded.weight, model.weight, atol=1e-3)
    assert not torch.equal(loaded.weight, model.weight)


def test_nested_and_tuple_fields_come_back_typed(tmp_path):
    config = Outer(name="y", inner=Inner(sizes=(3, 4, 5)), pair=(7, 0.5))
    save_model(tmp_path, torch.nn.Linear(2, 2), config)
    assert load_config(tmp_path, Outer) == config


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(ValueError, match="lacks config.json"):
        load_config(tmp_path, VAEConfig)
    with pytest.raises(ValueError, match="lacks model.safetensors"):
        load_weights(tmp_path, torch.nn.Linear(2, 2))


def test_unknown_fields_and_wrong_kinds_are_reported(tmp_path):
    save_model(tmp_path, torch.nn.Linear(2, 2), Outer())
    with pytest.raises(ValueError, match="holds a Outer checkpoint, not a VAEConfig"):
        load_config(tmp_path, VAEConfig)
    document = json.loads((tmp_path / "config.json").read_text())
    document["config"]["colour"] = "red"
    (tmp_path / "config.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="unknown field\\(s\\) colour"):
        load_config(tmp_path, Outer)


def test_weights_of_another_architecture_are_refused(tmp_path):
    save_model(tmp_path, torch.nn.Linear(2, 2), Outer())
    with pytest.raises(ValueError, match="does not match the model: missing"):
        load_weights(tmp_path, torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match=r"bias has shape \(2,\), the model \(3,\)"):
        load_weights(tmp_path, torch.nn.Linear(2, 3))


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        return model, torch.optim.AdamW(model.parameters(), lr=0.1)

    def step(model, optimizer, seed):
        torch.manual_seed(seed)
        optimizer.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        optimizer.step()

    model, optimizer = make()
    for seed in range(3):
        step(model, optimizer, seed)
    tensors, rest = optimizer_state_to_tensors(optimizer)
    save_tensors(tmp_path / "optimizer.safetensors", tensors)
    (tmp_path / "rest.json").write_text(json.dumps(rest))
    save_model(tmp_path, model, Outer())

    resumed, resumed_optimizer = make()
    load_weights(tmp_path, resumed)
    optimizer_state_from_tensors(
        resumed_optimizer,
        load_tensors(tmp_path / "optimizer.safetensors"),
        json.loads((tmp_path / "rest.json").read_text()),
    )
    step(model, optimizer, 10)
    step(resumed, resumed_optimizer, 10)
    assert torch.equal(model.weight, resumed.weight) and torch.equal(model.bias, resumed.bias)
