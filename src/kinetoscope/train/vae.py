"""Train the causal video VAE on a manifest of clips.

One readable loop: clips at native size (up to `max_area` and `max_frames`), a random
spatial crop of at most `crop` pixels per side, gradients accumulated over the clips of a
step (equal sizes are stacked into one forward), AdamW with warm-up and cosine decay,
gradient clipping, periodic held-out PSNR and checkpoints that resume to the same state.

Images and videos mixed. A step draws `batch + images` clips: the first `batch` are trained
as videos, each of the others as one frame picked at random (an image, the k = 0 case of the
same model). During the first `image_steps` steps every clip gives one frame. Why: frames of
a clip are nearly the same picture, so a frame cut from a clip teaches the spatial code at a
ninth of a 9-frame video's cost. Measured on world crops (64x64, bf16, 2 cores): 4 minutes
on images alone reached 31.6 dB on held-out first frames, where 22 minutes on 9-frame videos
alone had reached 26 dB; the videos then only have to teach the temporal code.

Determinism. The clip order is a permutation drawn from (seed, epoch), so the clips of step s
depend on s alone; crops and posterior noise come from two `torch.Generator`s whose states are
checkpointed with the optimizer. Resuming after N steps therefore gives exactly the weights of
an uninterrupted run.

A checkpoint folder holds `model.safetensors` + `config.json` (loadable on their own with
`load_vae`) and `train_state/` (optimizer moments, generator states and step, as safetensors
and JSON; nothing pickled).

Safety, as in the DiT trainer: an existing run is replaced only with `overwrite`; `resume`
refuses another manifest; SIGINT or SIGTERM saves a checkpoint and raises `Interrupted`; a
step whose loss or gradient is not finite is skipped, and `max_nonfinite_steps` of them in a
row raise `Diverged` with the last checkpoint kept as it was.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from kinetoscope.checkpoint import (
    load_config,
    load_tensors,
    load_weights,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    save_json,
    save_model,
    save_tensors,
)
from kinetoscope.data.dataset import ClipDataset
from kinetoscope.data.manifest import read_manifest
from kinetoscope.nn import resolve_precision
from kinetoscope.train.run import (
    Diverged,
    Interrupted,
    StopSignals,
    clear_run,
    data_digest,
    prepare_run_folder,
    read_run_state,
)
from kinetoscope.vae import VAE_PRESETS, VAEConfig, VideoVAE, compute_latent_stats, load_vae
from kinetoscope.vae.losses import VAELossConfig, psnr, vae_loss

__all__ = ["heldout_psnr", "train_vae"]

log = logging.getLogger("kinetoscope.train")

STATE = "train_state"
RUN_FILES = ("model.safetensors", "config.json", STATE)  # what `overwrite` replaces


def _learning_rate(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of `lr` at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def _order(count: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(count, generator=generator).tolist()


def _crop(video: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    """A random crop of at most `crop` pixels per side (sizes stay multiples of 16)."""
    _, _, height, width = video.shape  # 3 T H W
    h, w = min(height, crop), min(width, crop)
    top = int(torch.randint(height - h + 1, (1,), generator=generator)) // 16 * 16
    left = int(torch.randint(width - w + 1, (1,), generator=generator)) // 16 * 16
    return video[:, :, top : top + h, left : left + w]


def _save(
    out: Path,
    vae: VideoVAE,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    state: dict,
    meta: dict,
) -> None:
    save_model(out, vae, vae.config, meta=meta)
    tensors, rest = optimizer_state_to_tensors(optimizer)
    for name, generator in generators.items():
        tensors[f"generator.{name}"] = generator.get_state()
    save_tensors(out / STATE / "optimizer.safetensors", tensors)
    save_json(out / STATE / "state.json", {**state, "optimizer": rest})


@torch.no_grad()
def heldout_psnr(vae: VideoVAE, videos: list[torch.Tensor], chunk_frames: int = 8) -> float:
    """Mean PSNR (dB) of the reconstructions (posterior mean) of `videos` (`3 T H W` each)."""
    was_training = vae.training
    vae.eval()
    scores = []
    for video in videos:
        latents = vae.encode(video[None], chunk_frames=chunk_frames)
        scores.append(psnr(vae.decode(latents, chunk_frames=chunk_frames // 4)[0], video))
    vae.train(was_training)
    return sum(scores) / max(1, len(scores))


def train_vae(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    preset: str = "world",
    steps: int = 1000,
    batch: int = 4,
    lr: float = 1e-3,
    precision: str = "auto",
    eval_every: int = 250,
    checkpoint_every: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    max_area: int = 256 * 256,
    max_frames: int = 17,
    crop: int = 32,
    images: int = 0,
    image_steps: int = 0,
    init: str | os.PathLike | None = None,
    warmup: int = 100,
    holdout: int = 8,
    stats_clips: int = 64,
    loss_config: VAELossConfig | None = None,
    stop_at: int | None = None,
    threads: int | None = None,
    max_nonfinite_steps: int = 20,
    progress: bool = True,
) -> dict:
    """Train a VAE of `preset` on the clips of manifest `data`; write checkpoints to `out`.

    `holdout` clips at the end of the manifest are kept out of training for the periodic
    PSNR. Each step trains on `batch` videos and `images` single frames of other clips; the
    first `image_steps` steps on single frames only (see the module docstring). Train on clips
    at least as long as the clips you will code: in the `world` preset a decoded frame depends
    on the last 10 latent frames (a latent frame on the last 31 pixel frames), and a model
    trained on 9-frame clips (3 latent frames) decoded frames 9-16 of 17-frame clips at 23-30
    dB against 32-34 dB for frames 1-8. At the end, latent statistics on up to `stats_clips`
    training clips are stored with the weights. `precision="bf16"` runs forward and backward
    under bf16 autocast (a speed-up only on GPUs and CPUs with native bf16, such as
    AVX512-BF16 or AMX; elsewhere fp32 is faster); "auto" picks between them with
    `kinetoscope.nn.resolve_precision`. `init` (a VAE folder or bundled name) starts the run
    from that model's weights and architecture instead of a fresh `preset` (fine-tuning, with
    a new optimizer and schedule). `stop_at` ends this run early at that step, with a
    checkpoint to `resume` from later (the schedule still runs over `steps`). An `out` that
    holds a run is refused unless `resume` (same manifest) or `overwrite`. A step whose loss or
    gradient is not finite is skipped; `max_nonfinite_steps` in a row (weights gone NaN fail
    every later step; one bad clip comes back once an epoch) raise `Diverged`. Returns a
    summary dict (steps, final loss, held-out PSNR, wall time, skipped clips, non-finite
    steps).
    """
    precision = resolve_precision(precision)
    if preset not in VAE_PRESETS:
        raise ValueError(f"unknown VAE preset {preset!r}; choose one of {sorted(VAE_PRESETS)}")
    if steps < 1 or batch < 1 or eval_every < 1:
        raise ValueError("steps, batch and eval_every must be at least 1")
    if images < 0 or image_steps < 0:
        raise ValueError(f"images and image_steps must be >= 0, got {images}, {image_steps}")
    if crop < 16 or crop % 16:
        raise ValueError(f"crop must be a positive multiple of 16, got {crop}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1 (or None: torch's choice), got {threads}")
    if max_nonfinite_steps < 1 or holdout < 0:
        raise ValueError("max_nonfinite_steps must be at least 1 and holdout at least 0")
    if threads:
        torch.set_num_threads(threads)
    checkpoint_every = checkpoint_every or eval_every
    loss_config = loss_config or VAELossConfig()
    out = prepare_run_folder(out, resume=resume, overwrite=overwrite, run_files=RUN_FILES)
    with StopSignals() as signals:  # run.StopSignals: a signal in the loop saves first
        # 1. Data: training clips and a held-out few for PSNR.
        records = read_manifest(data)
        holdout = min(holdout, len(records) - 1)
        train_records, held_records = records[: len(records) - holdout], records[-holdout:]
        dataset = ClipDataset(train_records, max_area=max_area, max_frames=max_frames, seed=seed)
        held_videos = []
        if holdout > 0:
            held = ClipDataset(
                held_records, max_area=max_area, max_frames=max_frames, temporal_crop="start"
            )
            held_videos = [item["video"] for item in map(held.__getitem__, range(holdout)) if item]

        # 2. Model, optimizer, generators; or all of them from a checkpoint.
        state = {"step": 0, "skipped": 0, "frames": 0, "seconds": 0.0, "history": []}
        crop_generator = torch.Generator().manual_seed(seed)
        noise_generator = torch.Generator().manual_seed(seed + 1)
        generators = {"crop": crop_generator, "noise": noise_generator}
        resuming = resume and (out / STATE / "state.json").is_file()
        if resuming:
            vae = VideoVAE(load_config(out, VAEConfig))
            load_weights(out, vae)
        elif init is not None:
            vae = load_vae(init)
        else:
            torch.manual_seed(seed)
            vae = VideoVAE(VAE_PRESETS[preset])
        vae.train()
        optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
        if resuming:
            saved = read_run_state(out / STATE / "state.json")
            tensors = load_tensors(out / STATE / "optimizer.safetensors")
            for name, generator in generators.items():
                generator.set_state(tensors.pop(f"generator.{name}"))
            optimizer_state_from_tensors(optimizer, tensors, saved.pop("optimizer"))
            if saved.get("data") not in (None, data_digest(data)):
                raise ValueError(
                    f"cannot resume {out}: it started with --data {saved.get('data_source')}, "
                    f"and --data {data} has other content; pass the manifest the run started "
                    "with or start a new --out"
                )
            state.update(saved)
            log.info("resumed from %s at step %d", out, state["step"])
        state.update({"data": data_digest(data), "data_source": str(data)})
        state.setdefault("nonfinite_steps", 0)
        if overwrite:
            clear_run(out, RUN_FILES)
        meta = {
            "preset": preset,
            "data": str(data),
            "seed": seed,
            "batch": batch,
            "lr": lr,
            "precision": precision,
            "max_area": max_area,
            "max_frames": max_frames,
            "crop": crop,
            "images": images,
            "image_steps": image_steps,
            "init": None if init is None else str(init),
            "loss": asdict(loss_config),
        }

        # 3. The loop.
        bar = tqdm(total=steps, initial=state["step"], desc="train-vae", disable=not progress)
        loss_value = state.get("loss", float("nan"))
        last_psnr = state["history"][-1]["psnr"] if state["history"] else None
        saved_step = state["step"] if resuming else None
        in_a_row = 0  # non-finite steps since the last finite one

        def save() -> None:
            nonlocal saved_step
            if not all(bool(torch.isfinite(p).all()) for p in vae.parameters()):
                raise diverged(f"the weights hold NaN or infinity at step {state['step']}")
            _save(out, vae, optimizer, generators, state, meta)
            saved_step = state["step"]

        def diverged(why: str) -> Diverged:
            bar.close()
            kept = (
                f"the last good checkpoint (step {saved_step}) is in {out}"
                if saved_step is not None
                else "no checkpoint was saved"
            )
            return Diverged(f"training diverged: {why} (lower --lr?); {kept}")

        signals.arm()  # from here a signal ends the step and saves
        while state["step"] < steps:
            if stop_at is not None and state["step"] >= stop_at:
                save()
                bar.close()
                return {"steps": state["step"], "stopped": True}
            if signals.signum is not None:
                save()
                bar.close()
                raise Interrupted(
                    f"stopped by {signal.Signals(signals.signum).name} after step "
                    f"{state['step']}: checkpoint saved in {out}; continue with --resume",
                    signals.signum,
                )
            step = state["step"]
            start = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(step, steps, lr, warmup)
            # Clips of this step: positions step*n .. step*n+n-1 of the epoch stream, n = batch +
            # images; all but the first `batch` (all of them while step < image_steps) give one
            # random frame.
            per_step = batch + images
            items = []
            for position in range(step * per_step, (step + 1) * per_step):
                epoch, offset = divmod(position, len(dataset))
                dataset.set_epoch(epoch)
                items.append(dataset[_order(len(dataset), seed, epoch)[offset]])
            as_videos = 0 if step < image_steps else batch
            videos = []
            for index, item in enumerate(items):
                if item is None:
                    state["skipped"] += 1
                    continue
                video = item["video"]  # 3 T H W
                if index >= as_videos:
                    frame = int(torch.randint(video.shape[1], (1,), generator=crop_generator))
                    video = video[:, frame : frame + 1]  # 3 1 H W
                videos.append(_crop(video, crop, crop_generator))
            optimizer.zero_grad(set_to_none=True)
            # Equal sizes go through one forward; each group's loss is weighted by its share.
            groups: dict[tuple, list[torch.Tensor]] = {}
            for video in videos:
                groups.setdefault(tuple(video.shape), []).append(video)
            loss_value = 0.0
            for group in groups.values():
                x = torch.stack(group)  # B 3 T H W
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    output = vae(x, generator=noise_generator)
                loss, _ = vae_loss(output, x, loss_config)
                (loss * len(group) / len(videos)).backward()
                loss_value += loss.item() * len(group) / len(videos)
            finite = math.isfinite(loss_value)
            if videos and finite:
                finite = math.isfinite(float(torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)))
                if finite:
                    optimizer.step()
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                state["nonfinite_steps"] += 1
                log.warning("step %d: non-finite loss or gradient, step skipped", step)
            in_a_row = 0 if finite else in_a_row + 1
            if in_a_row >= max_nonfinite_steps:
                raise diverged(f"{in_a_row} non-finite steps in a row up to step {step + 1}")
            frames = sum(v.shape[1] for v in videos)
            seconds = time.perf_counter() - start
            state["step"] = step + 1
            state["loss"] = loss_value
            state["frames"] += frames
            state["seconds"] += seconds
            if state["step"] % eval_every == 0 or state["step"] == steps:
                last_psnr = heldout_psnr(vae, held_videos) if held_videos else None
                state["history"].append(
                    {"step": state["step"], "loss": loss_value, "psnr": last_psnr}
                )
                log.info("step %d loss %.5f held-out psnr %s", state["step"], loss_value, last_psnr)
            # After a non-finite step the checkpoint waits for a finite one (see train/dit.py).
            if state["step"] % checkpoint_every == 0 and state["step"] < steps and in_a_row == 0:
                save()
            postfix = {"loss": f"{loss_value:.4f}", "frames/s": f"{frames / seconds:.1f}"}
            if last_psnr is not None:
                postfix["psnr"] = f"{last_psnr:.2f}"
            if state["skipped"]:
                postfix["skipped"] = state["skipped"]
            bar.set_postfix(postfix)
            bar.update(1)
        bar.close()

        # 4. Latent statistics on training clips, stored with the weights.
        if not all(bool(torch.isfinite(p).all()) for p in vae.parameters()):
            raise diverged(f"the weights hold NaN or infinity at step {state['step']}")
        vae.eval()
        stats_generator = torch.Generator().manual_seed(seed)
        items = map(dataset.__getitem__, range(min(stats_clips, len(dataset))))
        clips = (_crop(item["video"], crop, stats_generator) for item in items if item)
        shift, scale = compute_latent_stats(vae, clips, chunk_frames=8)
        vae.latent_shift.copy_(shift)
        vae.latent_scale.copy_(scale)
        summary = {
            "steps": state["step"],
            "final_loss": loss_value,
            "heldout_psnr": last_psnr,
            "train_seconds": state["seconds"],
            "frames_per_second": state["frames"] / max(state["seconds"], 1e-9),
            "skipped": state["skipped"],
            "nonfinite_steps": state["nonfinite_steps"],
        }
        _save(out, vae, optimizer, generators, state, {**meta, **summary})
        return summary
