"""Training the DiT: latent cache, batches, exact resume, non-finite steps, overfitting (DDP and
FSDP: test_train_distributed.py)."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kinetoscope.checkpoint import load_tensors, save_model, save_tensors
from kinetoscope.data.dataset import ClipDataset
from kinetoscope.data.manifest import read_manifest, write_manifest
from kinetoscope.dit import DIT_PRESETS, DiT
from kinetoscope.patches import pack
from kinetoscope.text import load_text_encoder
from kinetoscope.train.batch import make_batch
from kinetoscope.train.distributed import load_sharded
from kinetoscope.train.dit import DiTTrainConfig, load_dit, plot_loss, sample_previews, train_dit
from kinetoscope.train.latents import LatentCache
from kinetoscope.vae import VAE_PRESETS, VideoVAE, load_vae

# World captions run past the tiny test encoder's 64 tokens; its truncation warning is noise.
pytestmark = [
    pytest.mark.filterwarnings("ignore:prompts longer than"),
    pytest.mark.usefixtures("one_thread"),
]

# Tiny everything, no previews: each step takes milliseconds.
FAST = {"preset": "tiny", "max_frames": 9, "lr": 3e-3, "warmup": 5, "preview_every": 0}


def _states(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A run's checkpoint: the exported model and EMA, and the sharded state resume reads."""
    checkpoint = folder / "checkpoint"
    model, ema = load_dit(checkpoint / "model"), load_dit(checkpoint / "ema")
    states = {"model": model.state_dict(), "ema": ema.state_dict()}
    model, ema = DiT(model.config), DiT(model.config)  # fresh weights, for load_sharded to fill
    optimizer = torch.optim.AdamW(model.parameters())
    load_sharded(checkpoint / "train_state" / "sharded", model, ema, optimizer)
    states["sharded_model"], states["sharded_ema"] = model.state_dict(), ema.state_dict()
    states["optimizer"] = {
        f"{index}.{name}": value
        for index, moments in optimizer.state_dict()["state"].items()
        for name, value in moments.items()
    }
    return states


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_latent_cache_encodes_each_clip_once_and_keys_on_the_vae(tiny_world, tmp_path):
    manifest, vae_folder = tiny_world
    vae = load_vae(vae_folder)
    dataset = ClipDataset(manifest, max_frames=9, temporal_crop="start")
    cache = LatentCache(dataset, vae, tmp_path)
    assert cache.fill(progress=False) == list(range(6))
    assert cache.stats["encoded"] == 6
    again = LatentCache(dataset, vae, tmp_path)
    assert again.fill(progress=False) == list(range(6)) and again.stats["encoded"] == 0
    # The cached latent is the VAE's normalised posterior mean of the clip.
    expected = vae.encode(dataset[2]["video"][None])[0]
    torch.testing.assert_close(again.load(2), expected, atol=1e-5, rtol=1e-5)
    # Another VAE (other weights) or other size choices are other keys.
    other = VideoVAE(VAE_PRESETS["tiny"])
    assert LatentCache(dataset, other, tmp_path).path(2) != cache.path(2)
    shorter = ClipDataset(manifest, max_frames=5, temporal_crop="start")
    assert LatentCache(shorter, vae, tmp_path).path(2) != cache.path(2)
    with pytest.raises(ValueError, match="temporal_crop='start'"):
        LatentCache(ClipDataset(manifest, max_frames=9), vae, tmp_path)
    # bf16-encoded latents are their own keys, and close to the fp32 ones.
    half = LatentCache(dataset, vae, tmp_path, precision="bf16")
    assert half.path(2) != cache.path(2)
    assert half.encode(2)
    spread = expected.std().item()
    assert (half.load(2) - expected).abs().max().item() < 0.1 * spread


def test_make_batch_gives_frames_drops_captions_and_is_deterministic():
    text = load_text_encoder("tiny")
    latents = [torch.randn(4, 3, 4, 4), torch.randn(4, 1, 4, 6), torch.randn(4, 5, 2, 2)]
    options = {"token_budget": 40, "sequences": 2, "patch": (1, 2, 2)}

    def batch(seed, **kwargs):
        generator = torch.Generator().manual_seed(seed)
        return make_batch(latents, ["a", "b", "c"], text, generator, **options, **kwargs)

    given = batch(0, caption_dropout=1.0, given_prob=1.0)
    assert given.captions == ["", "", ""]
    packed = given.packed
    for i, grid in enumerate(packed.grids):
        seq, start = packed.placement[i]
        mask = packed.given_mask[seq, start : start + packed.lengths[i]]
        if grid[0] == 1:  # an image has no frame to give
            assert not mask.any()
        else:  # some but not all of its frames are given
            assert mask.any() and not mask.all()
    # Given tokens are clean, at t = 0, and carry no loss; the rest are noisy.
    g = packed.given_mask
    assert torch.equal(given.x_t[g], packed.tokens[g]) and (given.t[g] == 0).all()
    assert not (packed.loss_mask & g).any()
    assert (given.t[packed.loss_mask] > 0).all()
    plain = batch(0, caption_dropout=0.0, given_prob=0.0)
    assert plain.captions == ["a", "b", "c"] and not plain.packed.given_mask.any()
    # The same generator seed gives the same draws; another seed, other ones.
    same = batch(0, caption_dropout=0.0, given_prob=0.0)
    assert torch.equal(same.x_t, plain.x_t) and torch.equal(same.t, plain.t)
    assert not torch.equal(batch(1, caption_dropout=0.0, given_prob=0.0).x_t, plain.x_t)
    expected = pack(latents, 40, (1, 2, 2), num_sequences=2)
    assert torch.equal(plain.packed.tokens, expected.tokens)
    # given_masks narrows the masks drawn: with "first" only, every video gives frame 0 alone.
    for seed in range(4):
        first = batch(seed, caption_dropout=0.0, given_prob=1.0, given_masks=("first",)).packed
        for i, grid in enumerate(first.grids):
            seq, start = first.placement[i]
            mask = first.given_mask[seq, start : start + first.lengths[i]].reshape(grid)
            assert mask[0].all() == (grid[0] > 1) and not mask[1:].any()
    with pytest.raises(ValueError, match="given_masks must name some of first, prefix"):
        DiTTrainConfig(given_masks=("first", "sideways"))


def test_resume_after_n_steps_equals_an_uninterrupted_run(tiny_world, tmp_path):
    manifest, vae = tiny_world
    run = {**FAST, "steps": 6, "checkpoint_every": 3, "given_prob": 0.5}
    cache = tmp_path / "cache"
    whole = train_dit(manifest, tmp_path / "whole", vae=vae, cache=cache, progress=False, **run)
    stopped = train_dit(
        manifest, tmp_path / "parts", vae=vae, cache=cache, stop_at=2, progress=False, **run
    )
    assert stopped == {"steps": 2, "stopped": True}
    resumed = train_dit(
        manifest, tmp_path / "parts", vae=vae, cache=cache, resume=True, progress=False, **run
    )
    a, b = _states(tmp_path / "whole"), _states(tmp_path / "parts")
    for name in a["model"]:  # the exports hold what the sharded state holds
        assert torch.equal(a["model"][name], a["sharded_model"][name])
        assert torch.equal(a["ema"][name], a["sharded_ema"][name])
    for part in a:
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    assert resumed["final_loss"] == whole["final_loss"]
    assert resumed["weights_sha256"] == whole["weights_sha256"]
    # The metrics log of the resumed run is the uninterrupted one, line for line.
    drop = ("seconds", "tokens_per_s")
    strip = [[{k: v for k, v in r.items() if k not in drop} for r in _metrics(tmp_path / x)]
             for x in ("whole", "parts")]  # fmt: skip
    assert strip[0] == strip[1] and [r["step"] for r in strip[0]] == list(range(1, 7))
    # Training moved the weights away from the EMA, and the EMA away from the init.
    assert not torch.equal(a["model"]["final.linear.weight"], a["ema"]["final.linear.weight"])
    assert a["ema"]["final.linear.weight"].abs().sum() > 0
    # The run folder is self-contained: the VAE it trained on is beside the DiT.
    assert (tmp_path / "whole" / "vae" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="cannot resume"):
        train_dit(manifest, tmp_path / "parts", vae=vae, cache=cache, resume=True,
                  progress=False, **{**run, "seed": 1})  # fmt: skip


def test_a_nonfinite_loss_skips_the_step_and_is_counted(tiny_world, tmp_path):
    manifest, vae_folder = tiny_world
    cache = tmp_path / "cache"
    dataset = ClipDataset(manifest, max_frames=9, temporal_crop="start")
    latents = LatentCache(dataset, load_vae(vae_folder), cache / "latents")
    latents.fill(progress=False)
    # A corrupt latent (NaN) for clip 0, with valid metadata: its batch must not train.
    path = latents.path(0)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    poisoned = {k: torch.full_like(v, float("nan")) for k, v in load_tensors(path).items()}
    save_tensors(path, poisoned, meta=meta)
    # fp32: the cache poisoned above is the fp32 one (bf16 runs key their own latents).
    summary = train_dit(manifest, tmp_path / "run", vae=vae_folder, cache=cache, steps=5,
                        precision="fp32", progress=False, **FAST)  # fmt: skip
    rows = _metrics(tmp_path / "run")
    skipped = [r for r in rows if r["skipped"]]
    assert summary["nonfinite_steps"] == len(skipped) >= 1
    assert all(r["loss"] is None for r in skipped)
    assert all(r["loss"] is not None and r["loss"] == r["loss"] for r in rows if not r["skipped"])
    for part in ("model", "ema"):
        model = load_dit(tmp_path / "run" / "checkpoint" / part)
        assert all(torch.isfinite(p).all() for p in model.parameters()), part


def test_previews_decode_a_noise_grid_of_the_asked_size(tiny_world):
    _, vae_folder = tiny_world
    vae, text = load_vae(vae_folder), load_text_encoder("tiny")
    torch.manual_seed(0)
    dit = DiT(DIT_PRESETS["tiny"]).eval()
    for p in dit.final.parameters():  # a fresh DiT predicts 0; give it a velocity to follow
        torch.nn.init.normal_(p, std=0.1)
    kwargs = {"seed": 3, "steps": 3}
    videos = sample_previews(dit, vae, text, ["a red circle", "x"], (32, 16, 5), **kwargs)
    assert [v.shape for v in videos] == [(5, 16, 32, 3)] * 2
    assert all(v.dtype == np.uint8 for v in videos)
    again = sample_previews(dit, vae, text, ["a red circle", "x"], (32, 16, 5), **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(videos, again, strict=True))


def test_init_starts_a_run_from_a_models_weights(tiny_world, tmp_path):
    manifest, vae = tiny_world
    common = {"vae": vae, "cache": tmp_path / "cache", "progress": False}
    train_dit(manifest, tmp_path / "first", **common, **{**FAST, "steps": 3})
    source = tmp_path / "first" / "checkpoint" / "model"
    # One step at a negligible rate: the tuned run still holds the source's weights ...
    still = {**FAST, "steps": 1, "lr": 1e-12, "warmup": 0}
    train_dit(manifest, tmp_path / "tuned", init=str(source), **common, **still)
    train_dit(manifest, tmp_path / "fresh", **common, **still)
    a = load_dit(source).state_dict()
    tuned, fresh = _states(tmp_path / "tuned")["model"], _states(tmp_path / "fresh")["model"]
    assert all(torch.allclose(a[name], tuned[name], atol=1e-6) for name in a)
    # ... which a run from a random init does not (adaLN-Zero layers start at zero).
    assert not torch.allclose(a["final.linear.weight"], fresh["final.linear.weight"], atol=1e-6)
    # A model made for other latents is refused before training, with both widths named.
    other = VideoVAE(replace(VAE_PRESETS["tiny"], latent_channels=8))
    save_model(tmp_path / "vae8", other, other.config)
    with pytest.raises(ValueError, match="takes 4 latent channels"):
        train_dit(manifest, tmp_path / "bad", init=str(source), **{**common, "vae": tmp_path / "vae8"},
                  **still)  # fmt: skip


def test_bad_options_are_user_errors(tiny_world, tmp_path):
    manifest, vae = tiny_world
    with pytest.raises(ValueError, match="unknown DiT preset"):
        train_dit(manifest, tmp_path, vae=vae, preset="huge")
    with pytest.raises(ValueError, match="unknown training option"):
        train_dit(manifest, tmp_path, vae=vae, stpes=3)
    with pytest.raises(ValueError, match="not a VAE folder"):
        train_dit(manifest, tmp_path, vae=tmp_path / "nothing")
    with pytest.raises(ValueError, match="precision must be one of"):
        train_dit(manifest, tmp_path, vae=vae, precision="fp8")
    with pytest.raises(ValueError, match="parallel must be one of"):
        train_dit(manifest, tmp_path, vae=vae, parallel="zero")


def test_plot_loss_draws_a_falling_curve(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 2.0 / s} for s in range(1, 41)] + [{"step": 41, "loss": None}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    image = Image.open(plot_loss(metrics, tmp_path / "loss.png", size=(320, 200))).convert("RGB")
    assert image.size == (320, 200)
    blue = [
        (x, y) for x in range(320) for y in range(200) if image.getpixel((x, y)) == (30, 90, 200)
    ]
    # The curve starts high on the left and ends low on the right.
    left = min(blue)
    right = max(blue)
    assert left[0] < 100 < 250 < right[0] and left[1] < right[1]


@pytest.mark.slow
def test_a_tiny_dit_overfits_a_handful_of_world_clips(tiny_world, tmp_path):
    manifest, vae = tiny_world
    four = write_manifest(tmp_path / "four.jsonl", read_manifest(manifest)[:4])
    steps = 300
    summary = train_dit(four, tmp_path / "run", vae=vae, steps=steps, progress=False,
                        **{**FAST, "caption_dropout": 0.0, "given_prob": 0.0,
                           "preview_every": steps, "checkpoint_every": steps})  # fmt: skip
    losses = [r["loss"] for r in _metrics(tmp_path / "run")]
    assert len(losses) == steps and summary["nonfinite_steps"] == 0
    start, end = sum(losses[:10]) / 10, sum(losses[-30:]) / 30
    assert end < start / 2, (start, end)  # the loss falls by more than a factor of 2
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    previews = sorted((tmp_path / "run" / "previews").iterdir())
    assert [p.name for p in previews] == [f"step-{steps:06d}-0.mp4", f"step-{steps:06d}-1.mp4"]


def test_cli_train_runs_and_reports(tiny_world, tmp_path, capsys):
    from kinetoscope.cli import main

    manifest, vae = tiny_world
    argv = ["train", "--data", str(manifest), "--preset", "tiny", "--out", str(tmp_path / "run"),
            "--steps", "2", "--vae", str(vae), "--max-frames", "9", "--text-encoder", "tiny",
            "--preview-every", "0", "--threads", "1", "--accumulate", "2",
            "--gradient-checkpointing", "--parallel", "fsdp"]  # fmt: skip
    assert main(argv) == 0  # fsdp in one process: the bare model, as with ddp
    out = capsys.readouterr().out
    assert "trained 2 steps" in out and "checkpoint:" in out
    assert (tmp_path / "run" / "checkpoint" / "model" / "model.safetensors").is_file()
    assert main(["train", "--data", str(manifest), "--out", str(tmp_path / "x"),
                 "--vae", str(tmp_path / "missing")]) == 2  # fmt: skip


def test_the_probe_is_logged_every_n_steps_and_drawn_beside_the_loss(tiny_world, tmp_path):
    manifest, vae = tiny_world
    train_dit(manifest, tmp_path / "run", vae=vae, steps=4, progress=False,
              **{**FAST, "probe_every": 2, "probe_clips": 2, "checkpoint_every": 4})  # fmt: skip
    rows = _metrics(tmp_path / "run")
    assert [r["step"] for r in rows if "probe" in r] == [2, 4]
    probe = rows[-1]["probe"]
    assert probe["loss"] > 0
    assert {f"gap_{name}" for name in ("direction", "color", "count")} <= set(probe)
    image = Image.open(tmp_path / "run" / "loss.png")
    assert image.size == (2 * 640, 360)  # the probe's panel beside the loss


def test_device_option_trains_on_cpu_under_bf16_and_refuses_devices_it_lacks(tiny_world, tmp_path):
    manifest, vae = tiny_world
    summary = train_dit(manifest, tmp_path / "run", vae=vae, steps=2, progress=False,
                        **{**FAST, "device": "cpu", "precision": "bf16"})  # fmt: skip
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    for device, message in (("tpu", "unknown device"), ("mps", "cpu or cuda")):
        with pytest.raises(ValueError, match=message):
            train_dit(manifest, tmp_path / device, vae=vae, steps=1, device=device, **FAST)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            train_dit(manifest, tmp_path / "cuda", vae=vae, steps=1, device="cuda", **FAST)


def test_mirror_twins_share_a_batch_their_timestep_and_their_noise(tmp_path):
    from kinetoscope.data.world import WORLD_MIXES, write_world
    from kinetoscope.train.dit import _mirror_pairs, _sampling_units

    text = load_text_encoder("tiny")
    original, other = torch.randn(4, 3, 4, 4), torch.randn(4, 2, 2, 2)
    mirrored = original.flip(-1)
    generator = torch.Generator().manual_seed(0)
    batch = make_batch([original, other, mirrored], ["a right", "b", "a left"], text, generator,
                       token_budget=200, sequences=1, patch=(1, 2, 2), caption_dropout=0.5,
                       given_prob=0.5, twin_of=[-1, -1, 0])  # fmt: skip
    packed = batch.packed

    def tokens(tensor, i):
        seq, start = packed.placement[i]
        return tensor[seq, start : start + packed.lengths[i]]

    noise = batch.target + packed.tokens  # velocity = noise - x0
    torch.testing.assert_close(tokens(noise, 0), tokens(noise, 2))  # the same noise, per token
    assert torch.equal(tokens(batch.t, 0), tokens(batch.t, 2))  # the same timesteps
    assert not torch.equal(tokens(noise, 0)[: packed.lengths[1]], tokens(noise, 1))
    assert (batch.captions[0] == "") == (batch.captions[2] == "")  # dropped together
    # The sampler draws each original with its twin as one unit.
    write_world(tmp_path, clips=12, seed=2, config=WORLD_MIXES["world-model"], workers=1,
                progress=False)  # fmt: skip
    dataset = ClipDataset(tmp_path / "manifest.jsonl", max_frames=9, temporal_crop="start")
    valid = list(range(len(dataset)))
    pairs = _mirror_pairs(dataset, valid, [10] * len(valid), budget=20)
    assert pairs and all(dataset.records[j].extra["id"] == dataset.records[i].extra["mirror_of"]
                         for i, j in pairs.items())  # fmt: skip
    units = _sampling_units(valid, pairs)
    assert sorted(k for unit in units for k in unit) == valid  # every clip exactly once
    assert {tuple(u) for u in units if len(u) == 2} == {(j, i) for i, j in pairs.items()}
    assert _mirror_pairs(dataset, valid, [10] * len(valid), budget=15) == {}  # pairs must fit


def test_given_masks_cover_every_mode_and_leave_frames_to_learn():
    from kinetoscope.train.batch import GIVEN_MASKS, given_patches

    fractions = [i / 16 for i in range(16)]
    for patches in (2, 3, 5, 9):
        for kind in GIVEN_MASKS:
            for fraction in fractions:
                given = given_patches(kind, patches, fraction)
                assert given and len(given) < patches and set(given) <= set(range(patches))
    assert given_patches("first", 9, 0.9) == [0]
    assert given_patches("suffix", 9, 0.0) == [8]
    ends = given_patches("ends", 9, 0.5)
    assert 0 in ends and 8 in ends and len(ends) < 9
    middle = given_patches("middle", 9, 0.5)
    assert 0 not in middle and 8 not in middle
