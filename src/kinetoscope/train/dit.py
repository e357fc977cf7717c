"""Train the diffusion transformer on a manifest of clips: one loop, one process or many.

    train_dit("world/manifest.jsonl", "runs/dit", preset="tiny", steps=1000, vae="runs/vae")
    torchrun --nproc_per_node=2 -m kinetoscope train --data ... --out ...   # the same loop, DDP
    torchrun ... train --parallel fsdp ...   # FSDP2: weights, gradients, optimizer sharded

Steps, in the order the loop takes them:

1. Latents. Clips are read at native size (`ClipDataset`, window at the start), encoded once
   by the frozen VAE into a latent cache on disk (`train/latents.py`; each rank encodes its
   share), then read back as normalised posterior means (c, t, h, w).
2. Batches. `TokenBudgetBatchSampler` groups clips by token count into `sequences_per_batch`
   sequences of `token_budget` tokens, in one order for every world size; a global step takes
   the next world_size x accumulate batches of it, rank r those at r, r + world_size, ...
3. Conditioning. Captions (one random level per clip and epoch) are replaced by the empty
   prompt with probability `caption_dropout` (for classifier-free guidance); with probability
   `given_prob` a video keeps some latent frames clean (timestep 0, no loss): the first frame,
   a prefix, a suffix, both ends or a middle block (`train/batch.py`), so the same model later
   animates images, extends, connects and loops videos.
4. Flow. A logit-normal timestep per sample, shifted by its token count (SD3), noise, the
   rectified-flow interpolation and velocity target (`kinetoscope.diffusion`).
5. Loss. Mean squared error over the non-given tokens of a batch: every token counts the same,
   so a long video weighs more than a still image, as its tokens carry more to learn; a step
   averages its batches (and DDP or FSDP its ranks) with equal weight.
6. Update. bf16 autocast forward (under FSDP also bf16 gathered weights, fp32 gradient
   reductions), fp32 loss and weights, gradient clipping, AdamW with linear
   warm-up then a constant rate (DiT, SD3; `schedule="cosine"` decays it), and an EMA of the
   weights for sampling (`train/skeleton.py` holds what every trainer shares). A step
   whose loss or gradient norm is not finite on any rank is skipped by all of them, counted
   and logged.

Determinism. Every random draw of a batch (dropout, given frames, timesteps, noise) comes from
a generator seeded by (seed, epoch, the batch's index in the epoch), and the sampler's place is
checkpointed, so `resume` continues with exactly the batches and draws an uninterrupted run
would take. The batches and draws do not depend on the world size either: one process with
`accumulate=2` sees the same global batches as two ranks with `accumulate=1`, so a run may
resume at another world size that keeps world_size x accumulate.

Output folder (every trainer's layout, `train/skeleton.py`, and the DiT's own outputs):

    config.json         the training config
    checkpoint/model/   DiT weights being trained (model.safetensors + config.json)
    checkpoint/ema/     their EMA: the weights to sample from (`Pipeline.load(out)`,
                        `load_dit`); their meta names the VAE (a bundled name, or ../../vae)
    checkpoint/train_state/  loop state (state.json) and sharded/, model, EMA and optimizer
                        moments as a torch.distributed.checkpoint: what --resume reads, at
                        any world size, with DDP or FSDP (`train/distributed.py`)
    vae/                the VAE the latents came from, so the folder is self-contained
                        (rewritten whenever it is not the VAE this run trains on)
    metrics.jsonl       one JSON line per step; loss.png, the loss curve
    previews/           step-NNNNNN-K.mp4 from fixed prompts and seeds (EMA weights)

A checkpoint is written into a fresh folder and swapped in with renames, so a crash leaves
the previous one whole. Under torchrun every rank writes its shards into it: `out` must be on
storage that all ranks see. Runs saved before sharded checkpoints (optimizer.safetensors in
train_state/) still resume.

Safety. An existing run is never replaced unless `overwrite` says so, and `resume` refuses a
different VAE or manifest than the run started with (their digests are in the checkpoint).
SIGINT or SIGTERM during the loop ends the current step, saves a checkpoint and raises
`Interrupted`; `max_nonfinite_steps` non-finite steps in a row raise `Diverged` and keep the
last checkpoint as it was (weights that are not finite are never saved).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from kinetoscope.checkpoint import load_config, load_weights, resolve_model_folder, save_model
from kinetoscope.data.dataset import ClipDataset
from kinetoscope.diffusion import flow_loss
from kinetoscope.dit import DIT_PRESETS, DiT, DiTConfig
from kinetoscope.evaluate.sensitivity import ATTRIBUTES, build_probe, text_sensitivity
from kinetoscope.io import write_video
from kinetoscope.nn import resolve_precision
from kinetoscope.patches import TokenBudgetBatchSampler, item_tokens
from kinetoscope.pipeline import Pipeline
from kinetoscope.text import EmbeddingCache, load_text_encoder
from kinetoscope.text.base import TextEncoder
from kinetoscope.train.batch import GIVEN_MASKS, TrainBatch, make_batch
from kinetoscope.train.distributed import (
    check_global_batch,
    consolidated,
    gradient_sync,
)
from kinetoscope.train.latents import LatentCache, vae_identity
from kinetoscope.train.plots import plot_loss  # noqa: F401 (re-exported, as before)
from kinetoscope.train.skeleton import (
    Run,
    check_run_config,
    check_same,
    configure,
    draw_seed,
    open_run,
)
from kinetoscope.vae import BUNDLED, VideoVAE, load_vae

log = logging.getLogger("kinetoscope.train")

# What a DiT run writes besides the skeleton's files (`overwrite` deletes these; cache/ stays).
RUN_FILES = ("previews", "vae", ".vae.partial")


@dataclass
class DiTTrainConfig:
    """Everything that decides a DiT training run; stored in config.json and checkpoints."""

    preset: str = "tiny"  # transformer size (DIT_PRESETS); in/out widths follow VAE and text
    steps: int = 1000  # optimizer steps in all (the schedule's length)
    lr: float = 1e-4  # AdamW peak rate: DiT's constant 1e-4; tiny models take 1e-3
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW defaults, as DiT and SD3 train
    weight_decay: float = 0.0  # DiT trains without it
    warmup: int = 100  # linear warm-up steps: adaLN-Zero starts calm, Adam's moments do not
    schedule: str = "constant"  # DiT and SD3 train at a constant rate; the EMA smooths it
    final_lr_scale: float = 0.1  # where schedule is "cosine": it ends at a tenth of lr
    grad_clip: float = 1.0  # max global gradient norm; rare spikes stay harmless
    ema_decay: float = 0.999  # EMA of the weights for sampling (ramped in, see _ema_decay)
    token_budget: int | None = None  # tokens per sequence; None: the longest clip's count
    sequences_per_batch: int = 1  # sequences per batch (and forward) on each rank
    accumulate: int = 1  # batches per step per rank (gradient accumulation)
    precision: str = "auto"  # bf16 autocast where bf16 is fast (GPUs, AVX512-BF16/AMX CPUs)
    caption_dropout: float = 0.1  # empty-prompt rate for classifier-free guidance (Ho 2022)
    given_prob: float = 0.1  # rate of videos with clean given frames (image-to-video, extend)
    # The masks such a video draws from, uniformly (batch.GIVEN_MASKS; a kind listed twice
    # is drawn twice as often). Only with the first frame given does the start of each
    # object's path show while the rest is noise, so that the direction words alone tell
    # where it goes.
    given_masks: tuple[str, ...] = GIVEN_MASKS
    # Location of the logit-normal timestep density (SD3 uses 0). Where each object is and
    # which way it goes is settled at high noise: the text-sensitivity probe's direction gap
    # shows at t = 0.7-0.9, so the world model trains with more weight there.
    timestep_mean: float = 0.0
    # Mirror twins (records whose `mirror_of` names another) share a batch, caption level,
    # timestep and noise. At high noise their inputs then nearly match and only the direction
    # words tell their targets apart: common random numbers put the loss difference on those
    # words. Needs sequences_per_batch = 1 (a pair is packed whole into the one sequence).
    twin_batches: bool = False
    max_area: int = 256 * 256  # pixel area cap of a clip (larger ones are downscaled)
    max_frames: int = 17  # frames per clip (1 + 4k): 5 latent frames with the 4x VAE
    fps: float | None = None  # resample clips to this rate; None keeps each clip's
    text_encoder: str | None = None  # "tiny", "minilm" or a folder; None: by preset
    gradient_checkpointing: bool = False  # recompute blocks in backward: less memory
    # Under torchrun: "ddp" keeps the whole model on each rank (simplest, fastest while it
    # fits); "fsdp" shards weights, gradients and optimizer state (FSDP2) for models that do
    # not. One process trains the bare model either way.
    parallel: str = "ddp"
    seed: int = 0  # init, data order and every random draw
    init: str | None = None  # model folder whose weights start the run (fine-tuning)
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    preview_every: int = 500  # steps between preview videos; 0 turns them off
    preview_prompts: tuple[str, ...] = ()  # fixed prompts; empty: the first clips' captions
    preview_count: int = 2  # previews when the prompts come from the data
    preview_steps: int = 20  # Euler steps per preview
    preview_guidance: float = 4.0  # classifier-free guidance scale of previews
    threads: int | None = None  # CPU threads (torch.set_num_threads); None: torch's default
    device: str | None = None  # "cpu", "cuda", "cuda:1"; None: this rank's GPU if any
    probe_every: int = 0  # steps between text-sensitivity probes of the EMA; 0: never
    probe_clips: int = 32  # probe clips (evaluate.sensitivity): about 8 s of a mini model
    # Non-finite steps in a row before the run stops as diverged. A bad batch is skipped and
    # the next one trains; weights gone NaN make every later step fail. 20 in a row is far
    # beyond what one corrupt clip causes (it comes back once an epoch) and costs 20 steps.
    max_nonfinite_steps: int = 20

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.preview_prompts = tuple(self.preview_prompts)
        self.given_masks = tuple(self.given_masks)
        unknown = set(self.given_masks) - set(GIVEN_MASKS)
        if unknown or not self.given_masks:
            raise ValueError(
                f"given_masks must name some of {', '.join(GIVEN_MASKS)}; got {self.given_masks}"
            )
        self.init = None if self.init is None else str(self.init)  # a folder may come as a Path
        if self.preset not in DIT_PRESETS:
            raise ValueError(
                f"unknown DiT preset {self.preset!r}; choose one of {list(DIT_PRESETS)}"
            )
        check_run_config(self)
        if self.sequences_per_batch < 1 or self.accumulate < 1:
            raise ValueError("sequences_per_batch and accumulate must be at least 1")
        for name in ("caption_dropout", "given_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not np.isfinite(self.timestep_mean):
            raise ValueError(f"timestep_mean must be a finite number, got {self.timestep_mean}")
        if self.preview_every < 0:
            raise ValueError(f"preview_every must be 0 (off) or more, got {self.preview_every}")
        if self.twin_batches and self.sequences_per_batch != 1:
            raise ValueError("twin_batches packs each pair into one sequence: set sequences to 1")
        if self.probe_every < 0 or self.probe_clips < 1:
            raise ValueError("probe_every must be 0 (off) or more, probe_clips at least 1")
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError(f"token_budget must be positive or None, got {self.token_budget}")


# Fields that fix the data order and the draws: a resumed run must keep them (and
# world_size x accumulate, the batches of a step: `check_global_batch`).
RESUME_FIELDS = (
    "preset", "seed", "token_budget", "sequences_per_batch", "max_area",
    "max_frames", "fps", "caption_dropout", "given_prob", "text_encoder", "timestep_mean", "twin_batches",
    "given_masks",
)  # fmt: skip


def load_dit(folder: str | os.PathLike) -> DiT:
    """A DiT from a model folder (e.g. `out/checkpoint/ema`) or a run folder, in eval mode."""
    folder = resolve_model_folder(folder)
    dit = DiT(load_config(folder, DiTConfig))
    load_weights(folder, dit)
    return dit.eval()


def _ema_decay(step: int, decay: float) -> float:
    """`decay`, ramped in as (1 + n) / (10 + n) so early EMA weights are not mostly init."""
    return min(decay, (1 + step) / (10 + step))


def sample_previews(
    dit: DiT,
    vae: VideoVAE,
    text: TextEncoder,
    prompts: list[str],
    size: tuple[int, int, int],
    *,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 4.0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> list[np.ndarray]:
    """uint8 videos `T H W 3` of `prompts` at `size` (width, height, frames), each prompt i
    seeded with seed + i: the generation pipeline (Euler, classifier-free guidance) over the
    model being trained."""
    pipeline = Pipeline(dit, vae, text, device=device, precision=precision)
    sizes = [size] * len(prompts)
    return pipeline.generate(
        prompts, sizes=sizes, steps=steps, guidance=guidance, seed=seed, progress=False
    )


# ---------------------------------------------------------------------------------------------
# The run


def train_dit(
    data: str | os.PathLike,
    out: str | os.PathLike,
    config: DiTTrainConfig | None = None,
    *,
    vae: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    **overrides,
) -> dict:
    """Train a DiT on the clips of manifest `data`; write checkpoints, metrics and previews to
    `out` (see the module docstring). Runs unchanged under torchrun (DDP, or FSDP: `parallel`).

    `config` holds every setting; keyword `overrides` replace its fields (e.g. `steps=100`).
    `vae` is a VAE folder, a train-vae run or a bundled name (default: the bundled world VAE).
    `cache` is the latent and text embedding cache folder (default `out/cache`; share it
    between runs of the same data; all ranks must see it). `resume` continues exactly from the
    checkpoint in `out` (from scratch when there is none yet), and refuses a different VAE,
    manifest or data-order setting. Without `resume`, an `out` that holds a run is refused
    unless `overwrite` (its run files are then replaced; a cache inside it is kept). `stop_at`
    ends this call at that step with a checkpoint (the run still counts `steps`). SIGINT or
    SIGTERM saves a checkpoint and raises `Interrupted`; a run that diverges raises `Diverged`
    (see the module docstring).

    Returns a summary on every rank: steps, first and final loss, nonfinite_steps,
    skipped_clips, tokens_per_second, padding_fraction, train_seconds, checkpoint, and
    weights_sha256 of this rank's weights (of the whole gathered weights under FSDP).
    """
    config = configure(DiTTrainConfig, config, overrides)
    vae_folder = _resolve_vae(vae)
    with open_run(out, config, name="train-dit", data=data, resume=resume, overwrite=overwrite,
                  run_files=RUN_FILES, resume_fields=RESUME_FIELDS, progress=progress) as run:  # fmt: skip
        if run.saved is not None:
            saved_accumulate = run.saved_config["accumulate"]
            check_global_batch(run.out, run.saved, saved_accumulate, config.accumulate, run.ddp)
        cache = Path(cache) if cache is not None else run.out / "cache"
        return _train(run, Path(data), vae_folder, cache, stop_at)


def _train(run: Run, data: Path, vae_folder: Path, cache: Path, stop_at: int | None) -> dict:
    config, ddp, device = run.config, run.ddp, run.device
    # 1. Frozen VAE and text encoder; latents of every clip in the cache (each rank a share).
    vae = load_vae(vae_folder).to(device).requires_grad_(False)
    identity = vae_identity(vae)
    if run.saved is not None:
        check_same(run.out, "vae", run.saved, identity, str(vae_folder))
    text_name = config.text_encoder or ("tiny" if config.preset == "tiny" else "minilm")
    text = EmbeddingCache(load_text_encoder(text_name), cache / "text")
    dataset = ClipDataset(data, max_area=config.max_area, max_frames=config.max_frames,
                          fps=config.fps, temporal_crop="start", seed=config.seed)  # fmt: skip
    # AVX2-only CPUs: bf16 is 10x slower; "auto" measures (kinetoscope.nn.resolve_precision),
    # on rank 0 only: ranks that measured differently would not compute the same step.
    precision = ddp.agree(resolve_precision(config.precision, device) if run.main else None)
    latents = LatentCache(dataset, vae, cache / "latents", precision)
    valid = latents.fill_over_ranks(ddp, device, run.progress)
    if not valid:
        raise ValueError(f"no clip of {data} could be read; check the manifest's files")

    # 2. The model (same init on every rank; DDP also broadcasts rank 0's), its EMA, wrapped
    #    for DDP or sharded by FSDP (the EMA like the model), AdamW, the checkpoint.
    model = _model(run, vae, text)
    ema = copy.deepcopy(model).requires_grad_(False)  # fp32; not DDP's, FSDP shards it too
    model.gradient_checkpointing = config.gradient_checkpointing
    net = run.attach(model.to(device).train(), ema.to(device).eval(), precision)
    for counter in ("tokens",):
        run.state.setdefault(counter, 0)
    batches = Batches(run, dataset, valid, vae, model.config.patch)
    run.meta = _meta(run, data, vae_folder, text_name)
    if run.main:
        _write_run_vae(run.out, vae, identity)
    run.state.update({"vae": identity, "vae_source": str(vae_folder)})
    # Text-sensitivity probe (rank 0): fixed rendered clips through this run's VAE. Previews:
    # fixed prompts and seed, at the size of the first clip.
    probing = config.probe_every and run.main
    probe = build_probe(vae, config.probe_clips, device=device) if probing else None
    prompts = list(config.preview_prompts) or [
        next(iter(dataset.records[i].captions.values()), "") for i in valid[: config.preview_count]
    ]
    frames, height, width = dataset.item_size(valid[0])

    # 3. The loop.
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")
    paddings = []
    while run.step < config.steps:
        if run.stopping(stop_at):
            return run.stopped()
        run.begin_step()
        last_epoch, micro = batches.next_step()  # taken even if skipped
        loss_sum, tokens, padding, finite = 0.0, 0, 0.0, True
        for m, (epoch, number, indices) in enumerate(micro):
            batch = batches.make(epoch, number, indices, latents, text)
            packed = batch.packed.to(device)
            # Gradients are reduced over ranks once per step, on the last batch.
            with gradient_sync(net, enabled=m == len(micro) - 1):
                with autocast:
                    prediction = net(
                        batch.x_t.to(device),
                        packed.coords,
                        batch.t.to(device),
                        batch.text.to(device),
                        batch.text_mask.to(device),
                        packed.sample_index,
                    )  # (N, L, Din)
                # The loss is reduced in fp32 (flow_loss) whatever the autocast dtype.
                loss = flow_loss(prediction, batch.target.to(device), packed.loss_mask)
                # Every rank must take the same branch, or DDP's all-reduce would hang.
                if not bool(ddp.all_reduce(torch.isfinite(loss.detach()).float(), "min")):
                    finite = False
                    break
                (loss / config.accumulate).backward()
            loss_sum += loss.item()
            tokens += sum(batch.packed.lengths)
            padding += batch.packed.padding_fraction / config.accumulate
        if run.update(finite):
            decay = _ema_decay(run.step, config.ema_decay)
            with torch.no_grad():
                ema_params, params = list(ema.parameters()), list(model.parameters())
                torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        # Step metrics over all ranks: the mean loss of the global batch, the tokens it held.
        totals = torch.tensor([loss_sum / config.accumulate, tokens, padding], device=device)
        totals = ddp.all_reduce(totals.double())
        loss_value = float(totals[0]) / ddp.world_size if run.finite else float("nan")
        global_tokens, padding = int(totals[1]), float(totals[2]) / ddp.world_size
        run.state["tokens"] += global_tokens
        run.state["sampler"] = batches.sampler.state_dict()
        paddings.append(padding)
        row = run.end_step(loss_value, {"epoch": last_epoch, "tokens": global_tokens})
        row.update(tokens_per_s=global_tokens / run.seconds, padding=padding)
        probe_due, preview_due = run.due(config.probe_every), run.due(config.preview_every)
        if probe_due or preview_due:  # the whole EMA on rank 0 (FSDP gathers it from all)
            sampling = consolidated(ema, run.whole, ddp)
        if probe is not None and probe_due:
            row["probe"] = text_sensitivity(sampling, text, probe, device, precision)
            gaps = ", ".join(f"{k} {row['probe'][f'gap_{k}']:+.2%}" for k in ATTRIBUTES)
            log.info("step %d probe gaps: %s", run.step, gaps)
        run.log(row, show={"tok/s": f"{global_tokens / run.seconds:.0f}", "pad": f"{padding:.0%}"})
        if preview_due and run.main:
            videos = sample_previews(
                sampling, vae, text, prompts, (width, height, frames), seed=config.seed,
                steps=config.preview_steps, guidance=config.preview_guidance, device=device,
                precision=precision,
            )  # fmt: skip
            for k, video in enumerate(videos):
                write_video(run.out / "previews" / f"step-{run.step:06d}-{k}.mp4", video)
        run.save_if_due()
    return run.summary(
        skipped_clips=len(dataset) - len(valid),
        tokens_per_second=run.state["tokens"] / max(run.state["seconds"], 1e-9),
        padding_fraction=sum(paddings) / max(1, len(paddings)),
        weights_sha256=run.weights_sha256(),
    )


# ---------------------------------------------------------------------------------------------
# The steps of a run


def _resolve_vae(vae: str | os.PathLike | None) -> Path:
    """The VAE model folder of `vae`: a bundled name (default "world"), a model folder or a
    train-vae run."""
    name = "world" if vae is None else str(vae)
    if name in BUNDLED:
        if not (BUNDLED[name] / "config.json").is_file():
            raise ValueError(
                f"no bundled {name} VAE in this installation: pass vae=DIR (--vae DIR), a "
                "folder written by `kinetoscope train-vae`"
            )
        return BUNDLED[name]
    try:
        return resolve_model_folder(name)
    except ValueError:
        raise ValueError(
            f"{vae} is not a VAE folder: pass vae=DIR (--vae DIR), a folder written by "
            "`kinetoscope train-vae`"
        ) from None


def _model(run: Run, vae: VideoVAE, text: TextEncoder) -> DiT:
    """The DiT this run trains: the checkpoint's shape (its weights come with it), `init`'s
    weights (fine-tuning), or a fresh `preset` fitted to the VAE and text encoder; seeded, so
    every rank builds the same one."""
    config = run.config
    widths = (vae.config.latent_channels, text.dim)
    if run.checkpoint is not None:
        dit_config = load_config(run.checkpoint / "model", DiTConfig)
    elif config.init is not None:
        init = resolve_model_folder(Path(config.init).expanduser())  # a model, or a run's EMA
        dit_config = load_config(init, DiTConfig)
        if (dit_config.latent_channels, dit_config.text_dim) != widths:
            raise ValueError(
                f"--init {config.init} takes {dit_config.latent_channels} latent channels and "
                f"{dit_config.text_dim}-wide text, this run's VAE and text encoder give "
                f"{widths[0]} and {widths[1]}"
            )
    else:
        dit_config = replace(DIT_PRESETS[config.preset], latent_channels=widths[0],
                             text_dim=widths[1])  # fmt: skip
    torch.manual_seed(config.seed)
    model = DiT(dit_config)
    if run.checkpoint is None and config.init is not None:
        load_weights(init, model)
    return model


class Batches:
    """The DiT's batches: token counts from the clips' sizes alone, grouped into sequences by
    `TokenBudgetBatchSampler` in one order for every world size (mirror twins drawn as one
    unit with `twin_batches`), and each batch's draws seeded by (seed, epoch, its number)."""

    def __init__(
        self,
        run: Run,
        dataset: ClipDataset,
        valid: list[int],
        vae: VideoVAE,
        patch: tuple[int, int, int],
    ) -> None:
        config, vc = run.config, vae.config
        self.config, self.ddp, self.dataset, self.valid = config, run.ddp, dataset, valid
        self.patch = patch
        counts = [
            item_tokens(*dataset.item_size(i), patch, vc.temporal_factor, vc.spatial_factor)
            for i in valid
        ]
        self.budget = config.token_budget or max(counts)
        # Sampling units: single clips, or mirror twins kept together (twin_batches).
        twins = config.twin_batches
        self.original_of = _mirror_pairs(dataset, valid, counts, self.budget) if twins else {}
        self.units = _sampling_units(valid, self.original_of)
        counts = [sum(counts[k] for k in unit) for unit in self.units]
        self.sampler = TokenBudgetBatchSampler(
            counts, self.budget, config.sequences_per_batch, seed=config.seed
        )
        saved = _one_order(run.state.get("sampler"))
        if saved is not None:
            self.sampler.load_state_dict(saved)
        self.batches = iter(self.sampler)

    def _next(self) -> tuple[int, int, list[int]]:
        """(epoch, index of the batch in the epoch, clip indices) of the next batch."""
        for _ in range(2):  # an exhausted epoch moves the sampler on to the next one
            epoch, position = self.sampler.epoch, self.sampler.position
            try:
                indices = next(self.batches)
            except StopIteration:
                self.batches = iter(self.sampler)
                continue
            return epoch, position, [self.valid[k] for j in indices for k in self.units[j]]
        raise AssertionError("the sampler yields no batch")

    def next_step(self) -> tuple[int, list[tuple[int, int, list[int]]]]:
        """(epoch of the step's last batch, this rank's batches): of the next world_size x
        accumulate batches, those at rank, rank + world_size, ..."""
        ddp = self.ddp
        taken = [self._next() for _ in range(ddp.world_size * self.config.accumulate)]
        return taken[-1][0], taken[ddp.rank :: ddp.world_size]

    def make(
        self, epoch: int, number: int, indices: list[int], latents: LatentCache, text: TextEncoder
    ) -> TrainBatch:
        """Batch `number` of `epoch` (clips `indices`) with its draws (`train/batch.py`)."""
        config = self.config
        self.dataset.set_epoch(epoch)
        place = {clip: p for p, clip in enumerate(indices)}
        twin_of = [place.get(self.original_of.get(i, -1), -1) for i in indices]
        return make_batch(
            [latents.load(i) for i in indices],
            [self.dataset.caption(i, self.original_of.get(i)) for i in indices],
            text,
            torch.Generator().manual_seed(draw_seed(config.seed, epoch, number)),
            token_budget=self.budget, sequences=config.sequences_per_batch, patch=self.patch,
            caption_dropout=config.caption_dropout, given_prob=config.given_prob,
            given_masks=config.given_masks,
            timestep_mean=config.timestep_mean, twin_of=twin_of,
        )  # fmt: skip


def _meta(run: Run, data: Path, vae_folder: Path, text_name: str) -> dict:
    """What the exported weights record: preset, text encoder and VAE (bundled names, or
    folders relative to the weights' own: the run's copy of the VAE), data and config."""
    named = {folder: name for name, folder in BUNDLED.items()}
    vae = named.get(vae_folder, run.portable(run.out / "vae"))
    local = text_name not in ("tiny", "minilm")
    train = asdict(run.config)
    for key in ("init", "text_encoder"):
        if train[key] is not None and Path(train[key]).exists():
            train[key] = run.portable(train[key])
    return {
        "preset": run.config.preset,
        "text_encoder": run.portable(text_name) if local else text_name,
        "vae": vae,
        "data": run.portable(data),
        "train": train,
    }


def _write_run_vae(out: Path, vae: VideoVAE, identity: str) -> None:
    """Make `out/vae` the VAE this run trains on: kept if it is that one, else replaced
    (written beside it and swapped in, so it is never half one VAE and half another)."""
    folder = out / "vae"
    try:
        if vae_identity(load_vae(folder)) == identity:
            return
    except (ValueError, OSError):
        pass  # missing or unreadable: write it
    partial = out / ".vae.partial"
    shutil.rmtree(partial, ignore_errors=True)
    save_model(partial, vae, vae.config, meta={"identity": identity})
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)


def _one_order(sampler_state: dict | None) -> dict | None:
    """A saved sampler state in the one batch order of every world size. Runs from before it
    dealt rank r every world_size-th batch; their position counted this rank's batches."""
    if sampler_state is None or sampler_state["world_size"] == 1:
        return sampler_state
    position = sampler_state["position"] * sampler_state["world_size"]
    return {**sampler_state, "position": position, "world_size": 1}


def _mirror_pairs(
    dataset: ClipDataset, valid: list[int], counts: list[int], budget: int
) -> dict[int, int]:
    """{twin clip: its original} for valid clips whose record says `mirror_of` a valid clip
    of the same token count, where the pair fits in one sequence of `budget` tokens."""
    position = {i: k for k, i in enumerate(valid)}
    by_id = {str(dataset.records[i].extra.get("id")): i for i in valid}
    pairs = {}
    for i in valid:
        j = by_id.get(str(dataset.records[i].extra.get("mirror_of")))
        if j is None or j == i or "mirror_of" in dataset.records[j].extra:
            continue  # no original, or one that is itself a twin
        n = counts[position[i]]
        if n == counts[position[j]] and 2 * n <= budget:
            pairs[i] = j
    return pairs


def _sampling_units(valid: list[int], original_of: dict[int, int]) -> list[list[int]]:
    """Positions in `valid` the batch sampler draws as one: a clip, or an original then its
    twin."""
    position = {i: k for k, i in enumerate(valid)}
    twin = {j: i for i, j in original_of.items()}
    return [
        [position[i]] + ([position[twin[i]]] if i in twin else [])
        for i in valid
        if i not in original_of
    ]
