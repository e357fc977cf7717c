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
   warm-up then a constant rate (DiT, SD3), and an EMA of the weights for sampling. A step
   whose loss or gradient norm is not finite on any rank is skipped by all of them, counted
   and logged.

Determinism. Every random draw of a batch (dropout, given frames, timesteps, noise) comes from
a generator seeded by (seed, epoch, the batch's index in the epoch), and the sampler's place is
checkpointed, so `resume` continues with exactly the batches and draws an uninterrupted run
would take. The batches and draws do not depend on the world size either: one process with
`accumulate=2` sees the same global batches as two ranks with `accumulate=1`, so a run may
resume at another world size that keeps world_size x accumulate.

Output folder:

    checkpoint/model/   DiT weights being trained (model.safetensors + config.json)
    checkpoint/ema/     their EMA: the weights to sample from (load with `load_dit`)
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
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from kinetoscope.checkpoint import load_config, load_weights, save_model
from kinetoscope.data.dataset import ClipDataset
from kinetoscope.diffusion import flow_loss
from kinetoscope.dit import DIT_PRESETS, DiT, DiTConfig
from kinetoscope.evaluate.sensitivity import ATTRIBUTES, build_probe, text_sensitivity
from kinetoscope.io import write_video
from kinetoscope.nn import PRECISIONS, resolve_precision
from kinetoscope.patches import TokenBudgetBatchSampler, item_tokens
from kinetoscope.pipeline import Pipeline, dit_folder
from kinetoscope.text import EmbeddingCache, load_text_encoder
from kinetoscope.text.base import TextEncoder
from kinetoscope.train.batch import make_batch
from kinetoscope.train.distributed import (
    CHECKPOINT,
    PARALLEL,
    STATE,
    all_finite,
    check_global_batch,
    checkpoint_folder,
    clip_grad_norm,
    consolidated,
    gradient_sync,
    is_sharded,
    load_checkpoint,
    parallelize,
    save_checkpoint,
)
from kinetoscope.train.latents import LatentCache, vae_identity
from kinetoscope.train.plots import plot_loss
from kinetoscope.train.run import (
    Distributed,
    Diverged,
    Interrupted,
    StopSignals,
    clear_run,
    data_digest,
    prepare_run_folder,
    read_run_state,
    setup_distributed,
)
from kinetoscope.vae import VideoVAE, load_vae

log = logging.getLogger("kinetoscope.train")

# What a DiT run writes into its folder (`overwrite` deletes these; a shared cache/ stays).
RUN_FILES = (
    CHECKPOINT, f".{CHECKPOINT}.old", f".{CHECKPOINT}.partial", "metrics.jsonl", "loss.png",
    "previews", "vae", ".vae.partial",
)  # fmt: skip
# The bundled world VAE, shipped as package data beside the code.
BUNDLED_VAE = Path(__file__).resolve().parents[1] / "weights" / "world-vae"


@dataclass
class DiTTrainConfig:
    """Everything that decides a DiT training run; stored in the checkpoint's state."""

    preset: str = "tiny"  # transformer size (DIT_PRESETS); in/out widths follow VAE and text
    steps: int = 1000  # optimizer steps in all (the schedule's length)
    lr: float = 1e-4  # AdamW peak rate: DiT's constant 1e-4; tiny models take 1e-3
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW defaults, as DiT and SD3 train
    weight_decay: float = 0.0  # DiT trains without it
    warmup: int = 100  # linear warm-up steps: adaLN-Zero starts calm, Adam's moments do not
    grad_clip: float = 1.0  # max global gradient norm; rare spikes stay harmless
    ema_decay: float = 0.999  # EMA of the weights for sampling (ramped in, see _ema_decay)
    token_budget: int | None = None  # tokens per sequence; None: the longest clip's count
    sequences_per_batch: int = 1  # sequences per batch (and forward) on each rank
    accumulate: int = 1  # batches per step per rank (gradient accumulation)
    precision: str = "auto"  # bf16 autocast where bf16 is fast (GPUs, AVX512-BF16/AMX CPUs)
    caption_dropout: float = 0.1  # empty-prompt rate for classifier-free guidance (Ho 2022)
    given_prob: float = 0.1  # rate of videos with clean given frames (image-to-video, extend)
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
        if self.preset not in DIT_PRESETS:
            raise ValueError(
                f"unknown DiT preset {self.preset!r}; choose one of {list(DIT_PRESETS)}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"parallel must be one of {PARALLEL}, got {self.parallel!r}")
        names = ("steps", "sequences_per_batch", "accumulate", "checkpoint_every",
                 "max_nonfinite_steps")  # fmt: skip
        for name in names:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("caption_dropout", "given_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in ("lr", "timestep_mean"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.lr <= 0 or self.warmup < 0 or not self.grad_clip > 0 or self.preview_every < 0:
            raise ValueError("lr and grad_clip must be positive, warmup and preview_every >= 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError(
                f"threads must be at least 1 (or None: torch's choice), got {self.threads}"
            )
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
)  # fmt: skip


def load_dit(folder: str | os.PathLike) -> DiT:
    """A DiT from a model folder (e.g. `out/checkpoint/ema`), in eval mode."""
    dit = DiT(load_config(folder, DiTConfig))
    load_weights(folder, dit)
    return dit.eval()


# ---------------------------------------------------------------------------------------------
# Helpers of the loop


def _learning_rate(step: int, lr: float, warmup: int) -> float:
    """Linear warm-up to `lr`, then constant (DiT and SD3 train at a constant rate)."""
    return lr * min(1.0, (step + 1) / warmup) if warmup else lr


def _ema_decay(step: int, decay: float) -> float:
    """`decay`, ramped in as (1 + n) / (10 + n) so early EMA weights are not mostly init."""
    return min(decay, (1 + step) / (10 + step))


def _batch_seed(seed: int, epoch: int, number: int) -> int:
    """Seed of the draws of batch `number` of `epoch`: the same on any rank and world size."""
    key = f"{seed}:{epoch}:{number}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


def weights_digest(model: nn.Module) -> str:
    """sha256 of a model's parameters, to compare ranks and runs bit for bit."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


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


def _one_order(sampler_state: dict | None) -> dict | None:
    """A saved sampler state in the one batch order of every world size. Runs from before it
    dealt rank r every world_size-th batch; their position counted this rank's batches."""
    if sampler_state is None or sampler_state["world_size"] == 1:
        return sampler_state
    position = sampler_state["position"] * sampler_state["world_size"]
    return {**sampler_state, "position": position, "world_size": 1}


def _append_metrics(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines of steps after `step` (logged after the checkpoint a run resumes)."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)


def _check_same(out: Path, what: str, saved: dict, digest: str, given: str) -> None:
    """ValueError unless a resumed run's VAE or manifest (`what`) has the digest it started
    with (runs from before digests were stored are not checked)."""
    if saved.get(what) not in (None, digest):
        option = {"vae": "--vae", "data": "--data"}[what]
        raise ValueError(
            f"cannot resume {out}: it started with {option} {saved.get(f'{what}_source')}, and "
            f"{option} {given} is different (its content differs: digest {digest[:12]}, the "
            f"run's {saved[what][:12]}); pass what the run started with or start a new --out"
        )


def _write_run_vae(out: Path, vae: VideoVAE, identity: str, source: Path) -> None:
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
    save_model(partial, vae, vae.config, meta={"source": str(source), "identity": identity})
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)


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


def _resolve_vae(vae: str | os.PathLike | None) -> Path:
    folder = Path(vae) if vae is not None else BUNDLED_VAE
    if not (folder / "config.json").is_file():
        what = f"{folder} is not a VAE folder" if vae is not None else "no bundled world VAE"
        raise ValueError(
            f"{what}: pass vae=DIR (--vae DIR), a folder written by `kinetoscope train-vae`"
        )
    return folder


# ---------------------------------------------------------------------------------------------
# The loop


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
    `vae` is a VAE folder (default: the bundled world VAE). `cache` is the latent and text
    embedding cache folder (default `out/cache`; share it between runs of the same data; all
    ranks must see it). `resume` continues exactly from the checkpoint in `out` (from scratch
    when there is none yet), and refuses a different VAE, manifest or data-order setting.
    Without `resume`, an `out` that holds a run is refused unless `overwrite` (its run files
    are then replaced; a cache inside it is kept). `stop_at` ends this call at that step with
    a checkpoint (the run still counts `steps`). SIGINT or SIGTERM saves a checkpoint and
    raises `Interrupted`; a run that diverges raises `Diverged` (see the module docstring).

    Returns a summary on every rank: steps, first and final loss, nonfinite_steps,
    skipped_clips, tokens_per_second, padding_fraction, train_seconds, checkpoint, and
    weights_sha256 of this rank's weights (of the whole gathered weights under FSDP).
    """
    known = {f.name for f in fields(DiTTrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
    config = replace(config or DiTTrainConfig(), **overrides)
    if config.threads:
        torch.set_num_threads(config.threads)
    vae_folder = _resolve_vae(vae)
    if not Path(data).is_file():
        raise ValueError(f"manifest {data} does not exist; make one with `kinetoscope index`")
    out = prepare_run_folder(out, resume=resume, overwrite=overwrite, run_files=RUN_FILES)
    ddp = setup_distributed(config.device)
    try:
        paths = Path(data), out, vae_folder, Path(cache) if cache is not None else None
        with StopSignals() as signals:
            return _train(*paths, config, resume, overwrite, stop_at, progress, ddp, signals)
    finally:
        if ddp.started_here:
            dist.destroy_process_group()


def _train(
    data: Path,
    out: Path,
    vae_folder: Path,
    cache: Path | None,
    config: DiTTrainConfig,
    resume: bool,
    overwrite: bool,
    stop_at: int | None,
    progress: bool,
    ddp: Distributed,
    signals: StopSignals,
) -> dict:
    main, device = ddp.rank == 0, ddp.device
    cache_dir = cache if cache is not None else out / "cache"
    checkpoint = checkpoint_folder(out) if resume else None
    data_sha = data_digest(data)
    saved_state: dict | None = None
    if checkpoint is not None:
        saved_state = read_run_state(checkpoint / STATE / "state.json", DiTTrainConfig)
        saved = {**asdict(DiTTrainConfig()), **saved_state["config"]}  # older runs lack new fields
        changed = [k for k in RESUME_FIELDS if saved[k] != asdict(config)[k]]
        if changed:
            raise ValueError(
                f"cannot resume {out} with different {changed}: they fix the data order; "
                "pass the values of the first run or start a new --out"
            )
        check_global_batch(out, saved_state, saved["accumulate"], config.accumulate, ddp)
        _check_same(out, "data", saved_state, data_sha, str(data))

    # 1. Frozen VAE and text encoder; latents of every clip in the cache (each rank a share).
    vae = load_vae(vae_folder).to(device).requires_grad_(False)
    identity = vae_identity(vae)
    if saved_state is not None:
        _check_same(out, "vae", saved_state, identity, str(vae_folder))
    text_name = config.text_encoder or ("tiny" if config.preset == "tiny" else "minilm")
    text = EmbeddingCache(load_text_encoder(text_name), cache_dir / "text")
    dataset = ClipDataset(
        data,
        max_area=config.max_area,
        max_frames=config.max_frames,
        fps=config.fps,
        temporal_crop="start",
        seed=config.seed,
    )
    # AVX2-only CPUs: bf16 is 10x slower; "auto" measures (kinetoscope.nn.resolve_precision),
    # on rank 0 only: ranks that measured differently would not compute the same step.
    precision = ddp.agree(resolve_precision(config.precision, device) if main else None)
    latents = LatentCache(dataset, vae, cache_dir / "latents", precision)
    latents.fill(list(range(ddp.rank, len(dataset), ddp.world_size)), device, progress and main)
    ddp.barrier()  # every rank's share is on disk before anyone looks for it
    valid = [i for i in range(len(dataset)) if latents.has(i)]  # the same list on every rank
    if not valid:
        raise ValueError(f"no clip of {data} could be read; check the manifest's files")
    skipped_clips = len(dataset) - len(valid)

    # 2. The model (same init on every rank; DDP also broadcasts rank 0's), EMA, optimizer;
    #    wrapped for DDP or sharded by FSDP, the EMA sharded like the model.
    if checkpoint is not None:
        dit_config = load_config(checkpoint / "model", DiTConfig)
    elif config.init is not None:
        init = dit_folder(Path(config.init).expanduser())  # a model folder, or a run's EMA
        dit_config = load_config(init, DiTConfig)
        widths = (vae.config.latent_channels, text.dim)
        if (dit_config.latent_channels, dit_config.text_dim) != widths:
            raise ValueError(
                f"--init {config.init} takes {dit_config.latent_channels} latent channels and "
                f"{dit_config.text_dim}-wide text, this run's VAE and text encoder give "
                f"{widths[0]} and {widths[1]}"
            )
    else:
        dit_config = replace(
            DIT_PRESETS[config.preset],
            latent_channels=vae.config.latent_channels,
            text_dim=text.dim,
        )
    plain_dit = functools.partial(DiT, dit_config)  # the model's shape, for whole copies
    torch.manual_seed(config.seed)
    model = DiT(dit_config)
    if checkpoint is None and config.init is not None:
        load_weights(init, model)
    ema = copy.deepcopy(model).requires_grad_(False)  # fp32; not DDP's, FSDP shards it too
    model.to(device).train()
    ema.to(device).eval()
    model.gradient_checkpointing = config.gradient_checkpointing
    # DDP averages gradients over ranks in backward, FSDP reduce-scatters them to the shards;
    # world size 1 trains the bare module.
    net = parallelize(model, ema, config.parallel, ddp, precision)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    state = {"step": 0, "nonfinite_steps": 0, "tokens": 0, "seconds": 0.0, "sampler": None}
    if checkpoint is not None:
        assert saved_state is not None
        load_checkpoint(checkpoint, model, ema, optimizer, saved_state)
        state.update({k: v for k, v in saved_state.items() if k != "optimizer"})
        state["sampler"] = _one_order(state["sampler"])
        log.info("resumed from %s at step %d", checkpoint, state["step"])
    state["world_size"] = ddp.world_size

    # 3. Batches: token counts from sizes alone, in one order whatever the world size.
    patch = dit_config.patch
    vc = vae.config
    counts = [
        item_tokens(*dataset.item_size(i), patch, vc.temporal_factor, vc.spatial_factor)
        for i in valid
    ]
    budget = config.token_budget or max(counts)
    # Sampling units: single clips, or mirror twins kept together (twin_batches).
    original_of = _mirror_pairs(dataset, valid, counts, budget) if config.twin_batches else {}
    units = _sampling_units(valid, original_of)
    counts = [sum(counts[k] for k in unit) for unit in units]
    sampler = TokenBudgetBatchSampler(counts, budget, config.sequences_per_batch, seed=config.seed)
    if state["sampler"] is not None:
        sampler.load_state_dict(state["sampler"])
    batches = iter(sampler)

    def next_batch() -> tuple[int, int, list[int]]:
        """(epoch, index of the batch in the epoch, clip indices)."""
        nonlocal batches
        for _ in range(2):  # an exhausted epoch moves the sampler on to the next one
            epoch, position = sampler.epoch, sampler.position
            try:
                indices = next(batches)
            except StopIteration:
                batches = iter(sampler)
                continue
            return epoch, position, [valid[k] for j in indices for k in units[j]]
        raise AssertionError("the sampler yields no batch")

    def next_step() -> tuple[int, list[tuple[int, int, list[int]]]]:
        """(epoch of the step's last batch, this rank's batches): of the next world_size x
        accumulate batches, those at rank, rank + world_size, ..."""
        taken = [next_batch() for _ in range(ddp.world_size * config.accumulate)]
        return taken[-1][0], taken[ddp.rank :: ddp.world_size]

    # Text-sensitivity probe: fixed rendered clips through this run's VAE (rank 0 only).
    probe = (
        build_probe(vae, config.probe_clips, device=device) if config.probe_every and main else None
    )

    # Previews: fixed prompts and seed, at the size of the first clip.
    prompts = list(config.preview_prompts) or [
        next(iter(dataset.records[i].captions.values()), "") for i in valid[: config.preview_count]
    ]
    frames, height, width = dataset.item_size(valid[0])
    preview_size = (width, height, frames)
    meta = {
        "preset": config.preset,
        "text_encoder": text_name,
        "vae": str(vae_folder),
        "data": str(data),
        "train": asdict(config),
    }
    metrics_path = out / "metrics.jsonl"
    if main:
        if overwrite:
            clear_run(out, RUN_FILES)
        out.mkdir(parents=True, exist_ok=True)
        _write_run_vae(out, vae, identity, vae_folder)
        _truncate_metrics(metrics_path, state["step"])
    state.update({"vae": identity, "vae_source": str(vae_folder)})
    state.update({"data": data_sha, "data_source": str(data)})
    saved_step = state["step"] if checkpoint is not None else None

    def diverged(why: str) -> Diverged:
        bar.close()
        kept = (
            f"the last good checkpoint (step {saved_step}) is in {out / CHECKPOINT}"
            if saved_step is not None
            else "no checkpoint was saved"
        )
        return Diverged(f"training diverged: {why} (lower --lr?); {kept}")

    def save() -> Path:
        nonlocal saved_step
        if not all_finite((model, ema), ddp):  # agreed, so every rank takes this branch
            raise diverged(f"the weights hold NaN or infinity at step {state['step']}")
        state["sampler"] = sampler.state_dict()
        state["config"] = asdict(config)
        save_checkpoint(out, model, ema, optimizer, state, meta, ddp, plain_dit)
        saved_step = state["step"]
        return out / CHECKPOINT

    # 4. The loop.
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")
    show = progress and main
    bar = tqdm(total=config.steps, initial=state["step"], desc="train-dit", disable=not show)
    signals.arm()  # from here a signal ends the step and saves (run.StopSignals)
    first_loss, last_loss, paddings = None, float("nan"), []
    in_a_row = 0  # non-finite steps since the last finite one
    while state["step"] < config.steps:
        if stop_at is not None and state["step"] >= stop_at:
            save()
            bar.close()
            return {"steps": state["step"], "stopped": True}
        stop = float(signals.signum or 0)
        if ddp.world_size > 1:  # a signal to any rank stops them all at the same step
            stop = float(ddp.all_reduce(torch.tensor(stop, device=device), "max"))
        if stop:
            save()
            bar.close()
            raise Interrupted(
                f"stopped by {signal.Signals(int(stop)).name} after step {state['step']}: "
                f"checkpoint saved in {out / CHECKPOINT}; continue with --resume",
                int(stop),
            )
        step, start = state["step"], time.perf_counter()
        lr = _learning_rate(step, config.lr, config.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        last_epoch, micro = next_step()  # taken even if skipped
        loss_sum, tokens, padding, finite = 0.0, 0, 0.0, True
        for m, (epoch, number, indices) in enumerate(micro):
            dataset.set_epoch(epoch)
            place = {clip: p for p, clip in enumerate(indices)}
            twin_of = [place.get(original_of.get(i, -1), -1) for i in indices]
            batch = make_batch(
                [latents.load(i) for i in indices],
                [dataset.caption(i, original_of.get(i)) for i in indices],
                text,
                torch.Generator().manual_seed(_batch_seed(config.seed, epoch, number)),
                token_budget=budget,
                sequences=config.sequences_per_batch,
                patch=patch,
                caption_dropout=config.caption_dropout,
                given_prob=config.given_prob,
                timestep_mean=config.timestep_mean,
                twin_of=twin_of,
            )
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
                ok = ddp.all_reduce(torch.isfinite(loss.detach()).float(), "min")
                if not bool(ok):
                    finite = False
                    break
                (loss / config.accumulate).backward()
            loss_sum += loss.item()
            tokens += sum(batch.packed.lengths)
            padding += batch.packed.padding_fraction / config.accumulate
        grad_norm = float("nan")
        if finite:
            # Reduced over ranks (and, under FSDP, over shards), this norm agrees on every rank.
            grad_norm = clip_grad_norm(model.parameters(), config.grad_clip)
            finite = math.isfinite(grad_norm)
        if finite:
            optimizer.step()
            decay = _ema_decay(step, config.ema_decay)
            with torch.no_grad():
                ema_params, params = list(ema.parameters()), list(model.parameters())
                torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        else:
            optimizer.zero_grad(set_to_none=True)
            state["nonfinite_steps"] += 1
            log.warning("step %d: non-finite loss or gradient, step skipped", step)
        in_a_row = 0 if finite else in_a_row + 1
        if in_a_row >= config.max_nonfinite_steps:
            raise diverged(f"{in_a_row} non-finite steps in a row up to step {step + 1}")
        # Step metrics over all ranks: the mean loss of the global batch, the tokens it held.
        totals = torch.tensor([loss_sum / config.accumulate, tokens, padding], device=device)
        totals = ddp.all_reduce(totals.double())
        loss_value = float(totals[0]) / ddp.world_size if finite else float("nan")
        global_tokens, padding = int(totals[1]), float(totals[2]) / ddp.world_size
        seconds = time.perf_counter() - start
        state["step"] = step + 1
        state["tokens"] += global_tokens
        state["seconds"] += seconds
        paddings.append(padding)
        if finite:
            first_loss = loss_value if first_loss is None else first_loss
            last_loss = loss_value
        row = {
            "step": state["step"],
            "epoch": last_epoch,
            "loss": loss_value if finite else None,
            "lr": lr,
            "grad_norm": grad_norm if finite else None,
            "tokens": global_tokens,
            "tokens_per_s": global_tokens / seconds,
            "padding": padding,
            "seconds": seconds,
            "skipped": not finite,
            "nonfinite_steps": state["nonfinite_steps"],
        }
        probe_due = config.probe_every and state["step"] % config.probe_every == 0
        preview_due = config.preview_every and state["step"] % config.preview_every == 0
        if probe_due or preview_due:  # the whole EMA on rank 0 (FSDP gathers it from all)
            sampling = consolidated(ema, plain_dit, ddp)
        if probe is not None and probe_due:
            row["probe"] = text_sensitivity(sampling, text, probe, device, precision)
            gaps = ", ".join(f"{k} {row['probe'][f'gap_{k}']:+.2%}" for k in ATTRIBUTES)
            log.info("step %d probe gaps: %s", state["step"], gaps)
        if main:
            _append_metrics(metrics_path, row)
        if preview_due and main:
            videos = sample_previews(
                sampling, vae, text, prompts, preview_size, seed=config.seed,
                steps=config.preview_steps, guidance=config.preview_guidance, device=device,
                precision=precision,
            )  # fmt: skip
            for k, video in enumerate(videos):
                write_video(out / "previews" / f"step-{state['step']:06d}-{k}.mp4", video)
        # A checkpoint right after a non-finite step waits for a finite one: the weights may be
        # blowing up while still finite, and the last checkpoint must stay a good one.
        due = state["step"] % config.checkpoint_every == 0 and in_a_row == 0
        if due or state["step"] == config.steps:
            save()
            if main:
                plot_loss(metrics_path, out / "loss.png")
        bar.set_postfix(
            {
                "loss": f"{loss_value:.4f}",
                "tok/s": f"{global_tokens / seconds:.0f}",
                "pad": f"{padding:.0%}",
                **({"nonfinite": state["nonfinite_steps"]} if state["nonfinite_steps"] else {}),
            }
        )
        bar.update(1)
    bar.close()
    # Under FSDP only rank 0 holds the whole weights: every rank reports their digest.
    whole = consolidated(model, plain_dit, ddp)
    digest = weights_digest(whole) if whole is not None else None
    return {
        "steps": state["step"],
        "first_loss": first_loss,
        "final_loss": last_loss,
        "nonfinite_steps": state["nonfinite_steps"],
        "skipped_clips": skipped_clips,
        "tokens_per_second": state["tokens"] / max(state["seconds"], 1e-9),
        "padding_fraction": sum(paddings) / max(1, len(paddings)),
        "train_seconds": state["seconds"],
        "checkpoint": str(out / CHECKPOINT),
        "weights_sha256": ddp.agree(digest) if is_sharded(model) else digest,
    }
