"""Train the causal video VAE on a manifest of clips: one loop, one process or many.

    train_vae("world/manifest.jsonl", "runs/vae", preset="world", steps=1000)
    torchrun --nproc_per_node=2 -m kinetoscope train-vae ...   # the same loop, DDP
    torchrun ... train-vae --parallel fsdp ...   # weights, gradients, optimizer sharded

Steps, in the order the loop takes them:

1. Clips. A step takes the next `batch + images` clips of the epoch stream (one order a
   epoch, drawn from the seed), at native size up to `max_area` and `max_frames`, each cropped
   at random to at most `crop` pixels a side. Rank r takes the clips at r, r + world_size, ...
   of the step, so the global batch is the same at any world size.
2. Images and videos mixed. The first `batch` clips of a step train as videos, each of the
   others as one frame picked at random (an image, the k = 0 case of the same model); during
   the first `image_steps` steps every clip gives one frame. Why: frames of a clip are nearly
   the same picture, so a frame cut from a clip teaches the spatial code at a ninth of a
   9-frame video's cost. Measured on world crops (64x64, bf16, 2 cores): 4 minutes on images
   alone reached 31.6 dB on held-out first frames, where 22 minutes on 9-frame videos alone
   had reached 26 dB; the videos then only have to teach the temporal code.
3. Loss. Each clip goes through the VAE on its own, with its own posterior noise: L1 + MSE +
   KL (`vae.losses`). The step's loss is the mean over the global batch's readable clips.
4. Update. bf16 autocast where it is fast, AdamW with warm-up then cosine decay to a tenth of
   the rate, gradient clipping; a step whose loss or gradient is not finite is skipped.
5. Held-out PSNR every `eval_every` steps on the manifest's last `holdout` clips, and at the
   last step latent statistics on `stats_clips` training clips, stored with the weights.

Determinism. Every draw of a clip (its frame, crop and posterior noise) comes from generators
seeded by (seed, step, its place in the step), so resuming after N steps gives exactly the
weights of an uninterrupted run, and two ranks those of one process (up to the order of float
sums).

Run folder (`train/skeleton.py`): config.json, checkpoint/model (the VAE: what `load_vae(out)`
and `train --vae out` read), checkpoint/train_state (what --resume reads, at any world size),
metrics.jsonl and loss.png. A folder written before this layout (model.safetensors and
train_state/ at the top) still loads with `load_vae`; continue training it with `init`.

Safety, as in every trainer: an existing run is replaced only with `overwrite`; `resume`
refuses another manifest or data-order setting; SIGINT or SIGTERM saves a checkpoint and raises
`Interrupted`; `max_nonfinite_steps` non-finite steps in a row raise `Diverged` with the last
checkpoint kept as it was.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from kinetoscope.checkpoint import WEIGHTS, load_config
from kinetoscope.data.dataset import ClipDataset
from kinetoscope.data.manifest import read_manifest
from kinetoscope.nn import resolve_precision
from kinetoscope.train.distributed import CHECKPOINT, gradient_sync
from kinetoscope.train.skeleton import (
    Run,
    check_run_config,
    configure,
    draw_seed,
    open_run,
)
from kinetoscope.vae import VAE_PRESETS, VAEConfig, VideoVAE, compute_latent_stats, load_vae
from kinetoscope.vae.losses import VAELossConfig, psnr, vae_loss

__all__ = ["VAETrainConfig", "heldout_psnr", "train_vae"]

# What a VAE run writes besides the skeleton's files; and, for `overwrite`, the files of runs
# from before the skeleton (weights and train_state/ at the top).
RUN_FILES = (WEIGHTS, "train_state")
# Fields that fix the clips and draws of each step: a resumed run must keep them.
RESUME_FIELDS = ("preset", "seed", "batch", "images", "image_steps", "max_area", "max_frames",
                 "crop", "holdout")  # fmt: skip


@dataclass
class VAETrainConfig:
    """Everything that decides a VAE training run; stored in config.json and checkpoints."""

    preset: str = "world"  # VAE size (VAE_PRESETS): the bundled world VAE's
    steps: int = 1000  # optimizer steps in all (the schedule's length)
    batch: int = 4  # clips a step trained as videos, over all ranks
    images: int = 0  # clips a step trained as one frame each, on top of `batch`
    image_steps: int = 0  # first steps on single frames only (the spatial code is cheap)
    lr: float = 1e-3  # AdamW peak rate: the bundled world VAE's first part (its card)
    betas: tuple[float, float] = (0.9, 0.99)  # as the bundled world VAE trained
    weight_decay: float = 0.0  # none, as the bundled world VAE trained
    warmup: int = 100  # linear warm-up steps: Adam's first moment estimates are noisy
    schedule: str = "cosine"  # warm-up then cosine decay, as the bundled world VAE trained
    final_lr_scale: float = 0.1  # the cosine ends at a tenth of lr: late steps still learn
    grad_clip: float = 1.0  # max global gradient norm; rare spikes stay harmless
    loss: VAELossConfig = field(default_factory=VAELossConfig)  # L1, MSE and KL weights
    precision: str = "auto"  # bf16 autocast where bf16 is fast (GPUs, AVX512-BF16/AMX CPUs)
    max_area: int = 256 * 256  # pixel area cap of a clip (larger ones are downscaled)
    # Frames a clip (1 + 4k). Train on clips at least as long as the ones you will code: in
    # the world preset a decoded frame depends on the last 10 latent frames, and a VAE trained
    # on 9-frame clips decoded frames 9-16 of 17-frame clips at 23-30 dB, 1-8 at 32-34 dB.
    max_frames: int = 17
    crop: int = 32  # random crop side (px, a multiple of 16): small crops make cheap steps
    holdout: int = 8  # the manifest's last clips, never trained on, for held-out PSNR
    eval_every: int = 250  # steps between held-out PSNR measurements
    stats_clips: int = 64  # training clips the latent statistics are measured on
    init: str | None = None  # VAE folder or bundled name whose weights start the run
    # Under torchrun: "ddp" keeps the whole model on each rank; "fsdp" shards weights,
    # gradients and optimizer state. One process trains the bare model either way.
    parallel: str = "ddp"
    seed: int = 0  # init, clip order and every random draw
    checkpoint_every: int = 250  # steps between checkpoints (and one at the end)
    threads: int | None = None  # CPU threads (torch.set_num_threads); None: torch's default
    device: str | None = None  # "cpu", "cuda", "cuda:1"; None: this rank's GPU if any
    # Non-finite steps in a row before the run stops as diverged: one bad clip comes back
    # once an epoch; weights gone NaN fail every later step.
    max_nonfinite_steps: int = 20

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.init = None if self.init is None else str(self.init)  # a folder may come as a Path
        if self.init is None and self.preset not in VAE_PRESETS:
            raise ValueError(
                f"unknown VAE preset {self.preset!r}; choose one of {sorted(VAE_PRESETS)}"
            )
        check_run_config(self)
        if self.batch < 1 or self.eval_every < 1:
            raise ValueError("batch and eval_every must be at least 1")
        if self.images < 0 or self.image_steps < 0 or self.holdout < 0 or self.stats_clips < 0:
            raise ValueError("images, image_steps, holdout and stats_clips must be 0 or more")
        if self.crop < 16 or self.crop % 16:
            raise ValueError(f"crop must be a positive multiple of 16, got {self.crop}")


@torch.no_grad()
def heldout_psnr(vae: VideoVAE, videos: list[torch.Tensor], chunk_frames: int = 8) -> float:
    """Mean PSNR (dB) of the reconstructions (posterior mean) of `videos` (`3 T H W` each)."""
    was_training = vae.training
    vae.eval()
    scores = []
    for video in videos:
        latents = vae.encode(video[None].to(vae.latent_scale.device), chunk_frames=chunk_frames)
        scores.append(psnr(vae.decode(latents, chunk_frames=chunk_frames // 4)[0].cpu(), video))
    vae.train(was_training)
    return sum(scores) / max(1, len(scores))


def train_vae(
    data: str | os.PathLike,
    out: str | os.PathLike,
    config: VAETrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    **overrides,
) -> dict:
    """Train a VAE on the clips of manifest `data`; write checkpoints and metrics to `out` (see
    the module docstring). Runs unchanged under torchrun (DDP, or FSDP: `parallel`).

    `config` holds every setting; keyword `overrides` replace its fields (e.g. `steps=100`).
    `resume` continues exactly from the checkpoint in `out` (from scratch when there is none
    yet). Without `resume`, an `out` that holds a run is refused unless `overwrite`. `stop_at`
    ends this call at that step with a checkpoint (the schedule still runs over `steps`).

    Returns a summary on every rank: steps, final_loss, heldout_psnr, train_seconds,
    frames_per_second, skipped (clips that could not be read), nonfinite_steps, checkpoint
    and weights_sha256 (of the whole weights).
    """
    config = configure(VAETrainConfig, config, overrides)
    if resume and (Path(out) / "train_state").is_dir() and not (Path(out) / CHECKPOINT).is_dir():
        raise ValueError(
            f"{out} was written by an earlier train-vae (weights and train_state/ at the top), "
            f"which cannot --resume; `load_vae` still reads it: start a new --out with "
            f"--init {out} to train it further"
        )
    with open_run(out, config, name="train-vae", data=data, resume=resume, overwrite=overwrite,
                  run_files=RUN_FILES, resume_fields=RESUME_FIELDS, progress=progress) as run:  # fmt: skip
        return _train(run, Path(data), stop_at)


def _train(run: Run, data: Path, stop_at: int | None) -> dict:
    config, ddp = run.config, run.ddp
    # 1. Clips: the training stream, and the held-out few (rank 0 measures PSNR).
    records = read_manifest(data)
    holdout = min(config.holdout, len(records) - 1)
    dataset = ClipDataset(records[: len(records) - holdout], max_area=config.max_area,
                          max_frames=config.max_frames, seed=config.seed)  # fmt: skip
    held = _heldout(records[len(records) - holdout :], config) if run.main and holdout else []

    # 2. The model (same init on every rank), its rank's share, AdamW and the checkpoint.
    if run.checkpoint is not None:  # the weights come from the checkpoint
        vae = VideoVAE(load_config(run.checkpoint / "model", VAEConfig))
    elif config.init is not None:
        vae = load_vae(config.init)
    else:
        torch.manual_seed(config.seed)
        vae = VideoVAE(VAE_PRESETS[config.preset])
    # AVX2-only CPUs: bf16 is 10x slower; "auto" measures, on rank 0 only (ranks that measured
    # differently would not compute the same step).
    precision = ddp.agree(resolve_precision(config.precision, run.device) if run.main else None)
    net = run.attach(vae.to(run.device).train(), precision=precision)
    for counter in ("frames", "skipped"):
        run.state.setdefault(counter, 0)
    run.state.setdefault("history", [])  # (step, loss, held-out PSNR) at each evaluation
    run.meta = {"data": run.portable(data), "train": _portable(run)}
    autocast = torch.autocast(run.device.type, torch.bfloat16, enabled=precision == "bf16")

    # 3. The loop.
    while run.step < config.steps:
        if run.stopping(stop_at):
            return run.stopped()
        run.begin_step()
        clips, counts = _step_clips(dataset, run)
        count = counts[0]  # readable clips of the global batch
        loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
        for i, (video, noise, weight) in enumerate(clips if count else []):
            x = video[None].to(run.device)  # 1 3 T H W
            # Gradients are reduced over ranks once per step, on the last clip.
            with gradient_sync(net, enabled=i == len(clips) - 1):
                with autocast:
                    output = net(x, generator=noise)
                loss, _ = vae_loss(output, x, config.loss)
                # Each readable clip of the global batch weighs 1 / count; DDP and FSDP
                # average the ranks' gradients, hence the world size.
                (loss * (weight * ddp.world_size / count)).backward()
            loss_sum += loss.detach().double() * weight
        loss_value = float(ddp.all_reduce(loss_sum)) / max(count, 1)
        run.update(math.isfinite(loss_value))
        row = run.end_step(loss_value, {"frames": counts[1]})
        row["frames_per_s"] = counts[1] / run.seconds
        run.state["frames"] += counts[1]
        run.state["skipped"] += counts[2]
        if run.due(config.eval_every):
            row["psnr"] = run.measure(lambda whole: heldout_psnr(whole, held) if held else None)
            run.state["history"].append({"step": run.step, "loss": loss_value, "psnr": row["psnr"]})
        run.log(row, show={"frames/s": f"{counts[1] / run.seconds:.1f}"})
        if run.step == config.steps and config.stats_clips:  # stored with the last weights
            _set_latent_stats(run, vae, dataset)
        run.save_if_due()

    last = run.state["history"][-1]["psnr"] if run.state["history"] else None
    return run.summary(
        heldout_psnr=last,
        frames_per_second=run.state["frames"] / max(run.state["seconds"], 1e-9),
        skipped=run.state["skipped"],
        weights_sha256=run.weights_sha256(),
    )


def _heldout(records: list, config: VAETrainConfig) -> list[torch.Tensor]:
    held = ClipDataset(records, max_area=config.max_area, max_frames=config.max_frames,
                       temporal_crop="start")  # fmt: skip
    return [item["video"] for item in map(held.__getitem__, range(len(held))) if item]


def _portable(run: Run) -> dict:
    """The run's config for the model's meta, its `init` folder relative to the model's."""
    train = asdict(run.config)
    if train["init"] is not None and Path(train["init"]).exists():
        train["init"] = run.portable(train["init"])
    return train


@functools.lru_cache(maxsize=2)
def _order(count: int, seed: int, epoch: int) -> list[int]:
    """The clip order of `epoch`: a permutation drawn from (seed, epoch)."""
    generator = torch.Generator().manual_seed(draw_seed(seed, epoch))
    return torch.randperm(count, generator=generator).tolist()


def _crop(video: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    """A random crop of at most `crop` pixels a side (sizes stay multiples of 16)."""
    _, _, height, width = video.shape  # 3 T H W
    h, w = min(height, crop), min(width, crop)
    top = int(torch.randint(height - h + 1, (1,), generator=generator)) // 16 * 16
    left = int(torch.randint(width - w + 1, (1,), generator=generator)) // 16 * 16
    return video[:, :, top : top + h, left : left + w]


def _step_clips(dataset: ClipDataset, run: Run) -> tuple[list, list[int]]:
    """(this rank's clips of the step, as (video 3 T H W, noise generator, weight); the global
    batch's readable clips, their frames and its unreadable clips, summed over ranks).

    The step's clips are places step*n .. step*n + n - 1 of the epoch stream, n = batch +
    images; all but the first `batch` (all of them while step < image_steps) give one random
    frame. Each clip's draws come from (seed, step, its place): the same at any world size.
    Every rank takes as many clips, so that each makes as many forward passes (FSDP gathers
    the weights in each): a rank short of one, or holding one that cannot be read, takes a
    black frame of weight 0 in its place."""
    config, ddp, step = run.config, run.ddp, run.step
    per_step = config.batch + config.images
    as_videos = 0 if step < config.image_steps else config.batch
    black = (torch.zeros(3, 1, config.crop, config.crop), torch.Generator(run.device), 0.0)
    clips, frames, skipped = [], 0, 0
    places = math.ceil(per_step / ddp.world_size) * ddp.world_size  # the step's, padded
    for k in range(ddp.rank, places, ddp.world_size):
        item = None
        if k < per_step:
            epoch, offset = divmod(step * per_step + k, len(dataset))
            dataset.set_epoch(epoch)
            item = dataset[_order(len(dataset), config.seed, epoch)[offset]]
            skipped += item is None
        if item is None:
            clips.append(black)
            continue
        draws = torch.Generator().manual_seed(draw_seed(config.seed, step, k, 0))
        video = item["video"]  # 3 T H W
        if k >= as_videos:
            frame = int(torch.randint(video.shape[1], (1,), generator=draws))
            video = video[:, frame : frame + 1]  # 3 1 H W
        video = _crop(video, config.crop, draws)
        noise = torch.Generator(run.device).manual_seed(draw_seed(config.seed, step, k, 1))
        clips.append((video, noise, 1.0))
        frames += video.shape[1]
    readable = sum(weight > 0 for _, _, weight in clips)
    counts = torch.tensor([readable, frames, skipped], device=run.device)
    return clips, [int(n) for n in ddp.all_reduce(counts)]


def _set_latent_stats(run: Run, vae: VideoVAE, dataset: ClipDataset) -> None:
    """Measure the latent statistics on up to `stats_clips` training clips (rank 0) and store
    them in every rank's VAE, so the checkpoint's weights normalise their latents."""
    config = run.config

    def stats(whole: VideoVAE) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(config.seed)
        items = map(dataset.__getitem__, range(min(config.stats_clips, len(dataset))))
        clips = (_crop(item["video"], config.crop, generator) for item in items if item)
        # On a copy, in eval mode and on the CPU where compute_latent_stats sums.
        shift, scale = compute_latent_stats(
            copy.deepcopy(whole).cpu().eval(), clips, chunk_frames=8
        )
        return shift, scale

    shift, scale = run.measure(stats)
    with torch.no_grad():
        vae.latent_shift.copy_(shift)
        vae.latent_scale.copy_(scale)
