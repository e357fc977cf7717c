"""The one training skeleton: what the VAE, DiT and captioner trainers share, so a fix lands once.

A trainer is its config dataclass, its model's data and loss, and a loop that reads:

    with open_run(out, config, resume=..., overwrite=..., run_files=..., ...) as run:
        ...                                      # data, model (same init on every rank)
        net = run.attach(model, ema=None)        # ranks, optimizer, resume, folder ready
        while run.step < config.steps:
            if run.stopping(stop_at):            # stop_at or a signal: save first
                return run.stopped()
            run.begin_step()                     # learning rate, zero gradients, clock
            ...                                  # forward, loss, backward through `net`
            finite = run.update(finite)          # clip, step or skip (and count), diverged?
            row = run.end_step(loss, {...})      # counters; the step's metrics line
            ...                                  # evaluations due now go into `row`
            run.log(row)                         # metrics.jsonl, progress bar
            run.save_if_due()                    # checkpoint and plot
        return run.summary(...)

Every trainer's run folder has one layout:

    config.json        the training config (kind: the config class, as `load_config` reads)
    checkpoint/        model/ (and ema/ where the trainer keeps one): whole weights, what
                       `load_vae`, `Captioner.load` and `Pipeline.load` read; train_state/:
                       loop state (state.json) and the sharded model, EMA and optimizer that
                       --resume reads at any world size (`train/distributed.py`)
    metrics.jsonl      one JSON line per step; loss.png, its plot

and each trainer may add its own outputs beside them (the DiT's previews/ and vae/, the
captioner's report.json). Random draws come from generators seeded by `draw_seed` with the
step (or epoch and batch) and the draw's place in the global batch, so no generator state is
saved, a resumed run takes the draws an uninterrupted one would, and any world size takes the
same ones.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from kinetoscope.checkpoint import CONFIG, VERSION, save_json
from kinetoscope.nn import PRECISIONS
from kinetoscope.train.distributed import (
    CHECKPOINT,
    PARALLEL,
    STATE,
    all_finite,
    checkpoint_folder,
    clip_grad_norm,
    consolidated,
    is_sharded,
    load_checkpoint,
    parallelize,
    save_checkpoint,
)
from kinetoscope.train.plots import plot_loss
from kinetoscope.train.run import (
    Diverged,
    Interrupted,
    StopSignals,
    clear_run,
    data_digest,
    prepare_run_folder,
    read_run_state,
    setup_distributed,
)

log = logging.getLogger("kinetoscope.train")

C = TypeVar("C")
T = TypeVar("T")

SCHEDULES = ("constant", "cosine")
METRICS, PLOT = "metrics.jsonl", "loss.png"
# What every run writes into its folder (`overwrite` deletes these; a shared cache/ stays).
RUN_FILES = (CONFIG, CHECKPOINT, f".{CHECKPOINT}.old", f".{CHECKPOINT}.partial", METRICS, PLOT)


# ---------------------------------------------------------------------------------------------
# Configs, the schedule, seeds, paths in a model's meta


def configure(cls: type[C], config: C | None, overrides: dict) -> C:
    """`config` (default: `cls()`) with keyword `overrides` replacing its fields; ValueError
    naming the unknown ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
    return replace(config or cls(), **overrides)


def check_run_config(config: Any) -> None:
    """ValueError for a setting that every trainer's config has and no run can take (each
    config's `__post_init__` calls it, then checks its own fields)."""
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {config.precision!r}")
    if config.parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {PARALLEL}, got {config.parallel!r}")
    if config.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {config.schedule!r}")
    for name in ("steps", "checkpoint_every", "max_nonfinite_steps"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(config, name)}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {config.lr}")
    if config.warmup < 0 or not config.grad_clip > 0:
        raise ValueError("warmup must be 0 or more and grad_clip positive")
    if not 0 <= config.final_lr_scale <= 1:
        raise ValueError(
            f"final_lr_scale is a fraction of lr in [0, 1], got {config.final_lr_scale}"
        )
    if config.threads is not None and config.threads < 1:
        raise ValueError(
            f"threads must be at least 1 (or None: torch's choice), got {config.threads}"
        )


def learning_rate(step: int, config: Any) -> float:
    """The rate of step `step` (from 0): linear warm-up over `config.warmup` steps to
    `config.lr`, then constant (`schedule="constant"`: DiT, SD3) or a half cosine down to
    `config.final_lr_scale` x lr at the last step (`"cosine"`)."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    if config.schedule == "constant":
        return config.lr
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    floor = config.final_lr_scale
    return config.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def draw_seed(*keys: int) -> int:
    """A seed for one random draw from integer keys (run seed, step, place in the batch): the
    same on every rank and world size, and unrelated for neighbouring keys."""
    key = ":".join(str(k) for k in keys).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


def portable(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """`path` as a model's meta keeps it: relative to the model `folder` (a relative path in a
    meta always is), so where a run sat on the training machine travels nowhere."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(folder))


def weights_digest(model: nn.Module) -> str:
    """sha256 of a model's parameters, to compare ranks and runs bit for bit."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_same(out: Path, what: str, saved: dict, digest: str, given: str) -> None:
    """ValueError unless a resumed run's manifest or VAE (`what`: "data" or "vae") has the
    digest it started with (runs from before digests were stored are not checked)."""
    if saved.get(what) not in (None, digest):
        option = {"vae": "--vae", "data": "--data"}[what]
        raise ValueError(
            f"cannot resume {out}: it started with {option} {saved.get(f'{what}_source')}, and "
            f"{option} {given} is different (its content differs: digest {digest[:12]}, the "
            f"run's {saved[what][:12]}); pass what the run started with or start a new --out"
        )


# ---------------------------------------------------------------------------------------------
# Metrics


class Metrics:
    """A run's metrics.jsonl (one JSON object a step) and loss.png drawn from it. Only the
    writing rank (`enabled`) touches the files."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.path, self.plot_path, self.enabled = out / METRICS, out / PLOT, enabled

    def truncate(self, step: int) -> None:
        """Drop the lines of steps after `step` (logged after the checkpoint a run resumes)."""
        if self.enabled and self.path.is_file():
            lines = [line for line in self.path.read_text().splitlines() if line.strip()]
            kept = [line for line in lines if json.loads(line)["step"] <= step]
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    def plot(self) -> None:
        if self.enabled and self.path.is_file():
            plot_loss(self.path, self.plot_path)


# ---------------------------------------------------------------------------------------------
# The run


@contextlib.contextmanager
def open_run(
    out: str | os.PathLike,
    config: Any,
    *,
    name: str,
    data: str | os.PathLike,
    resume: bool,
    overwrite: bool,
    run_files: tuple[str, ...],
    resume_fields: tuple[str, ...],
    progress: bool = True,
) -> Iterator[Run]:
    """The run in folder `out`, checked before any work: an existing run is refused unless
    `resume` or `overwrite` (`run_files`: what this trainer writes there besides `RUN_FILES`),
    and a resumed one must keep `resume_fields` of its config and the manifest `data`. Joins
    the process group torchrun describes (ended again on exit) and catches SIGINT and SIGTERM.
    `name` labels the progress bar."""
    if Path(data).is_dir():
        raise ValueError(
            f"--data {data} is a folder; pass a manifest (`kinetoscope index` makes one)"
        )
    if not Path(data).is_file():
        raise ValueError(f"manifest {data} does not exist; make one with `kinetoscope index`")
    if config.threads:
        torch.set_num_threads(config.threads)
    files = RUN_FILES + run_files
    out = prepare_run_folder(out, resume=resume, overwrite=overwrite, run_files=files)
    ddp = setup_distributed(config.device)
    run = None
    try:
        with StopSignals() as signals:
            run = Run(out, config, ddp, signals, name=name, data=Path(data), overwrite=overwrite,
                      run_files=files, progress=progress)  # fmt: skip
            if resume:
                run.check_resume(resume_fields)
            yield run
    finally:
        # FSDP's modules hold the process group in reference cycles: collected now, while the
        # group lives, not as the interpreter exits (where gloo was seen to abort a rank).
        run = None
        if ddp.world_size > 1:
            gc.collect()
        if ddp.started_here:
            dist.destroy_process_group()


class Run:
    """One training run as its loop sees it: folder, ranks, checkpoint and resume, learning
    rate, skipped steps, metrics and stops (see the module docstring). `state` is the loop
    state saved in every checkpoint: step, seconds, nonfinite_steps, and whatever counters the
    trainer keeps there (JSON values)."""

    def __init__(self, out, config, ddp, signals, *, name, data, overwrite, run_files, progress):
        self.out, self.config, self.ddp, self.signals = out, config, ddp, signals
        self.data, self.data_sha = data, data_digest(data)
        self.main, self.device = ddp.rank == 0, ddp.device
        self.name, self.progress = name, progress  # the progress bar's label; whether it shows
        self.overwrite, self.run_files = overwrite, run_files  # `attach` clears the old run
        self.checkpoint: Path | None = None  # the checkpoint this run resumes from
        self.saved: dict | None = None  # its state.json
        self.saved_config: dict | None = None  # its config (with today's defaults for new fields)
        self.state: dict = {"step": 0, "seconds": 0.0, "nonfinite_steps": 0}
        self.meta: dict = {}  # stored with the exported weights (and the step, seconds)
        self.metrics = Metrics(out, self.main)
        self.saved_step: int | None = None
        self.in_a_row = 0  # non-finite steps since the last finite one
        self.first_loss: float | None = None
        self.bar: tqdm | None = None

    @property
    def step(self) -> int:
        return self.state["step"]

    def check_resume(self, resume_fields: tuple[str, ...]) -> None:
        """Find the checkpoint to resume from, if any; ValueError if it was trained with other
        `resume_fields` (they fix the data order and draws) or another manifest."""
        self.checkpoint = checkpoint_folder(self.out)
        if self.checkpoint is None:
            return
        cls = type(self.config)
        self.saved = read_run_state(self.checkpoint / STATE / "state.json", cls)
        # Older runs lack new fields; both sides as JSON has them (tuples come back as lists).
        saved = json.loads(json.dumps({**asdict(cls()), **self.saved.get("config", {})}))
        given = json.loads(json.dumps(asdict(self.config)))
        changed = [k for k in resume_fields if saved[k] != given[k]]
        if changed:
            raise ValueError(
                f"cannot resume {self.out} with different {changed}: they fix the data order; "
                "pass the values of the first run or start a new --out"
            )
        check_same(self.out, "data", self.saved, self.data_sha, str(self.data))
        self.saved_config = saved

    def attach(self, model: nn.Module, ema: nn.Module | None = None, precision: str = "fp32"):
        """Make `model` (and its EMA, if the trainer keeps one) this run's: wrapped for the
        ranks (DDP, or sharded by FSDP: `config.parallel`), an AdamW over it, and the
        checkpoint this run resumes loaded into all three; then the folder made ready to write
        (the old run cleared with `overwrite`, config.json, metrics cut back to the checkpoint's
        step). Every rank must build `model` with the same weights. Returns the module the loop
        calls (the model itself at world size 1)."""
        config = self.config
        self.model, self.ema = model, ema
        self.whole = functools.partial(type(model), model.config)  # an unsharded one's shape
        net = parallelize(model, ema, config.parallel, self.ddp, precision)
        # After sharding: FSDP replaces the parameters the optimizer must hold.
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        if self.checkpoint is not None:
            assert self.saved is not None
            load_checkpoint(self.checkpoint, model, ema, self.optimizer, self.saved)
            self.state.update(
                {k: v for k, v in self.saved.items() if k not in ("optimizer", "config")}
            )
            self.saved_step = self.step
            log.info("resumed from %s at step %d", self.checkpoint, self.step)
        self.state["world_size"] = self.ddp.world_size
        self.state.update({"data": self.data_sha, "data_source": str(self.data)})
        if self.main:
            if self.overwrite:
                clear_run(self.out, self.run_files)
            self.out.mkdir(parents=True, exist_ok=True)
            document = {"kind": type(config).__name__, "version": VERSION, "config": asdict(config)}
            save_json(self.out / CONFIG, document)
            self.metrics.truncate(self.step)
        return net

    # -- the loop ------------------------------------------------------------------------------

    def stopping(self, stop_at: int | None) -> bool:
        """Whether the loop ends here at `stop_at` (a checkpoint saved first); a SIGINT or
        SIGTERM to any rank saves and raises `Interrupted` on all of them."""
        if self.bar is None:  # the loop starts: from here a signal ends the step and saves
            self.bar = tqdm(total=self.config.steps, initial=self.step, desc=self.name,
                            disable=not (self.progress and self.main))  # fmt: skip
            self.signals.arm()
        if stop_at is not None and self.step >= stop_at:
            self.save()
            return True
        stop = float(self.signals.signum or 0)
        if self.ddp.world_size > 1:  # a signal to any rank stops them all at the same step
            stop = float(self.ddp.all_reduce(torch.tensor(stop, device=self.device), "max"))
        if stop:
            self.save()
            self.bar.close()
            raise Interrupted(
                f"stopped by {signal.Signals(int(stop)).name} after step {self.step}: "
                f"checkpoint saved in {self.out / CHECKPOINT}; continue with --resume",
                int(stop),
            )
        return False

    def stopped(self) -> dict:
        """What a call that stopped at `stop_at` returns."""
        self.bar.close()
        return {"steps": self.step, "stopped": True}

    def begin_step(self) -> float:
        """Set this step's learning rate, clear the gradients and start its clock; return the
        rate."""
        self.lr = learning_rate(self.step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.optimizer.zero_grad(set_to_none=True)
        self.started = time.perf_counter()
        return self.lr

    def update(self, finite: bool) -> bool:
        """Clip the gradients and take the optimizer step, unless the loss (`finite`: the same
        on every rank) or the gradient norm is not finite: then the step is skipped and
        counted, and `config.max_nonfinite_steps` of them in a row raise `Diverged`. Returns
        whether the step was taken."""
        self.grad_norm = float("nan")
        if finite:
            # Reduced over ranks (and, under FSDP, over shards), this norm agrees on every rank.
            self.grad_norm = clip_grad_norm(self.model.parameters(), self.config.grad_clip)
            finite = math.isfinite(self.grad_norm)
        if finite:
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.state["nonfinite_steps"] += 1
            log.warning("step %d: non-finite loss or gradient, step skipped", self.step)
        self.finite = finite
        self.in_a_row = 0 if finite else self.in_a_row + 1
        if self.in_a_row >= self.config.max_nonfinite_steps:
            raise self.diverged(
                f"{self.in_a_row} non-finite steps in a row up to step {self.step + 1}"
            )
        return finite

    def end_step(self, loss: float, row: dict) -> dict:
        """Count the step; return its metrics line (for `log`): `loss` (the global batch's, the
        same on every rank; None when the step was skipped) and the trainer's `row` entries."""
        self.seconds = time.perf_counter() - self.started
        self.state["step"] += 1
        self.state["seconds"] += self.seconds
        if self.finite:
            self.first_loss = loss if self.first_loss is None else self.first_loss
            self.state["loss"] = loss
        self.loss = loss
        return {
            "step": self.step, "loss": loss if self.finite else None, "lr": self.lr,
            "grad_norm": self.grad_norm if self.finite else None, **row,
            "seconds": self.seconds, "skipped": not self.finite,
            "nonfinite_steps": self.state["nonfinite_steps"],
        }  # fmt: skip

    def log(self, row: dict, show: dict | None = None) -> None:
        """Append the step's metrics line (rank 0) and move the progress bar on, with `show`
        beside the loss."""
        self.metrics.append(row)
        nonfinite = self.state["nonfinite_steps"]
        self.bar.set_postfix({"loss": f"{self.loss:.4f}", **(show or {}),
                              **({"nonfinite": nonfinite} if nonfinite else {})})  # fmt: skip
        self.bar.update(1)

    def due(self, every: int) -> bool:
        """Whether the step just ended is a multiple of `every` (0: never) or the last one."""
        return bool(every) and (self.step % every == 0 or self.step == self.config.steps)

    def save_if_due(self) -> None:
        """A checkpoint (and the plot) every `config.checkpoint_every` steps and at the last.
        One right after a non-finite step waits for a finite one: the weights may be blowing
        up while still finite, and the last checkpoint must stay a good one."""
        if self.due(self.config.checkpoint_every) and (
            self.in_a_row == 0 or self.step == self.config.steps
        ):
            self.save()
            self.metrics.plot()

    def save(self) -> Path:
        """Write the checkpoint (every rank must call it): refused, as `Diverged`, for weights
        that are not finite."""
        modules = [m for m in (self.model, self.ema) if m is not None]
        if not all_finite(modules, self.ddp):  # agreed, so every rank takes this branch
            raise self.diverged(f"the weights hold NaN or infinity at step {self.step}")
        self.state["config"] = asdict(self.config)
        save_checkpoint(self.out, self.model, self.ema, self.optimizer, self.state, self.meta,
                        self.ddp, self.whole)  # fmt: skip
        self.saved_step = self.step
        return self.out / CHECKPOINT

    def diverged(self, why: str) -> Diverged:
        if self.bar is not None:
            self.bar.close()
        kept = (
            f"the last good checkpoint (step {self.saved_step}) is in {self.out / CHECKPOINT}"
            if self.saved_step is not None
            else "no checkpoint was saved"
        )
        return Diverged(f"training diverged: {why} (lower --lr?); {kept}")

    def measure(self, measure: Callable[[nn.Module], T]) -> T:
        """`measure(the whole model)` run on rank 0 (gathered there under FSDP), its result
        given to every rank (a held-out score, a report). Every rank must call it."""
        whole = consolidated(self.model, self.whole, self.ddp)
        return self.ddp.agree(measure(whole) if self.main else None)

    def portable(self, path: str | os.PathLike) -> str:
        """`path` as the meta of this run's exported weights (checkpoint/model, checkpoint/ema)
        keeps it: relative to their folder (`portable`)."""
        return portable(path, self.out / CHECKPOINT / "model")

    def weights_sha256(self) -> str:
        """The digest of the whole trained weights (`weights_digest`), the same on every rank
        (under FSDP they are gathered on rank 0 and its digest is shared)."""
        whole = consolidated(self.model, self.whole, self.ddp)
        digest = weights_digest(whole) if whole is not None else None
        return self.ddp.agree(digest) if is_sharded(self.model) else digest

    def summary(self, **extra) -> dict:
        """What a finished call returns (the same on every rank): steps, first and final loss
        of this call, non-finite steps, seconds of training, the checkpoint, and `extra`."""
        if self.bar is not None:
            self.bar.close()
        return {
            "steps": self.step,
            "first_loss": self.first_loss,
            "final_loss": self.state.get("loss", float("nan")),
            "nonfinite_steps": self.state["nonfinite_steps"],
            "train_seconds": self.state["seconds"],
            "checkpoint": str(self.out / CHECKPOINT),
            **extra,
        }
