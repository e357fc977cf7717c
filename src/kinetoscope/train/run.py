"""What every trainer shares about its run folder and how a run ends early.

- `prepare_run_folder`: an existing run is never replaced unless asked (`overwrite`), and a
  resumed one must be a run; checked before any work.
- `data_digest`: a digest of a manifest's bytes, stored in a run's state so that resuming on
  other data is refused.
- `read_run_state`: a checkpoint's loop state (`state.json`), checked before a run resumes
  from it, so a hand-edited or damaged one is an error naming the file and the field.
- `StopSignals`: SIGINT and SIGTERM during the loop ask it to stop at the end of the current
  step; the trainer then saves a checkpoint and raises `Interrupted`. A second signal stops at
  once (checkpoints are swapped in atomically, so even that loses no saved state).
- `Interrupted` and `Diverged`: the ways a run stops early, each with a one-line message and
  the exit code a command should return.
- `setup_distributed`: this process's rank, world size and device; world size 1 is the same
  program. `Distributed.agree` gives every rank rank 0's choice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from kinetoscope.checkpoint import build_config
from kinetoscope.io import check_output_folder
from kinetoscope.pipeline import resolve_device

T = TypeVar("T")


class TrainingStopped(Exception):
    """A run that ended before its last step; str() is one line for the user."""

    exit_code = 1


class Interrupted(TrainingStopped):
    """SIGINT or SIGTERM: a checkpoint was saved; the exit code is 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class Diverged(TrainingStopped):
    """Too many non-finite steps in a row: the weights no longer train; the last good
    checkpoint is kept as it was."""

    exit_code = 3


def prepare_run_folder(
    out: str | os.PathLike,
    *,
    resume: bool,
    overwrite: bool,
    run_files: tuple[str, ...],
) -> Path:
    """Check the run folder `out` before any work; return it as a Path.

    `run_files` are the names a run of this trainer writes into `out` (anything else there,
    such as a shared cache, does not make `out` a run). Without `resume` or `overwrite` an
    existing run is refused; `overwrite` with `resume` is a contradiction. Nothing is deleted
    here: `clear_run` does that once the new run is ready to write.
    """
    if resume and overwrite:
        raise ValueError(
            "--resume continues the run in --out and --overwrite replaces it; pick one"
        )
    out = check_output_folder(out, "--out")
    if not resume and not overwrite:
        found = sorted(name for name in run_files if (out / name).exists())
        if found:
            raise ValueError(
                f"--out {out} already holds a run ({', '.join(found)}); pass --resume to "
                "continue it, --overwrite to replace it, or a new --out"
            )
    return out


def clear_run(out: Path, run_files: tuple[str, ...]) -> None:
    """Delete the files of a previous run in `out` (only those: a folder that holds other
    things keeps them)."""
    for name in run_files:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def data_digest(path: str | os.PathLike) -> str:
    """sha256 of a manifest's bytes (what a resumed run must still train on)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


# Counters of a trainer's loop state (state.json), where present: whole numbers >= 0.
STATE_COUNTS = ("step", "nonfinite_steps", "skipped", "frames", "tokens")


def _state_problem(state: dict) -> tuple[str, str] | None:
    """(field, what it must be) of the first loop-state entry of the wrong type, or None."""
    for key in STATE_COUNTS:
        value = state.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return key, "a whole number of at least 0"
    seconds = state.get("seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        return "seconds", "a number of at least 0"
    if not isinstance(state.get("optimizer"), dict):
        return "optimizer", "a JSON object (the optimizer's state)"
    if not isinstance(state.get("sampler"), dict | None):
        return "sampler", "a JSON object or null"
    if not isinstance(state.get("history", []), list):
        return "history", "a list"
    return None


def _check_device_name(name: object, where: str) -> None:
    """ValueError unless `name` is a device kinetoscope runs on (cpu, cuda, cuda:N): only its
    form, since a resumed run may move to another machine."""
    try:
        ok = name is None or torch.device(name).type in ("cpu", "cuda")
    except (RuntimeError, TypeError):
        ok = False
    if not ok:
        raise ValueError(
            f"{where}: field 'config.device' must be null, cpu, cuda or cuda:N, "
            f"got {json.dumps(name)}"
        )


def read_run_state(path: str | os.PathLike, config: type | None = None) -> dict:
    """The loop state a trainer saved in a checkpoint (`state.json`), checked before a run
    resumes from it. A file that is not a JSON object, a counter such as `step` that is not a
    whole number >= 0, or, with `config` (the trainer's config class), a `config` entry that
    does not build one (a string where a number belongs, `threads: -1`, an unknown device) is
    a ValueError naming the file and the field."""
    path = Path(path)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        why = error.strerror if isinstance(error, OSError) else f"not JSON text ({error})"
        raise ValueError(
            f"{path} cannot be read: {why}; the checkpoint is damaged (start a new --out, or "
            "--overwrite this one)"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} must hold a JSON object, got {json.dumps(state)[:60]}")
    problem = _state_problem(state)
    if problem is not None:
        key, expected = problem
        raise ValueError(
            f"{path}: field {key!r} must be {expected}, got {json.dumps(state.get(key))}"
        )
    if config is not None and "config" in state:
        built = build_config(config, state["config"], str(path), prefix="config.")
        _check_device_name(getattr(built, "device", None), str(path))
    return state


class StopSignals:
    """SIGINT and SIGTERM, caught while a run is set up and trained.

    Use as a context manager around the whole run. Until `arm()` a signal raises
    KeyboardInterrupt at once (nothing is lost: caches are written atomically); once the loop
    calls `arm()`, a signal only sets `signum`, which the loop looks at between steps to save
    and stop. A second signal raises KeyboardInterrupt at once (checkpoints are swapped in
    atomically, so even that loses no saved state). Outside the main thread, where Python
    cannot install handlers, it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False
        self._previous: dict[int, object] = {}

    def arm(self) -> None:
        self.armed = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.armed or self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


# ---------------------------------------------------------------------------------------------
# Distributed setup: world size 1 is the same program


@dataclass
class Distributed:
    """This process's place in the run: rank, world size and device."""

    rank: int
    world_size: int
    device: torch.device
    started_here: bool  # whether this call created the process group (and so ends it)

    def all_reduce(self, value: Tensor, op: str = "sum") -> Tensor:
        """`value` reduced over ranks (sum, min or max); itself at world size 1."""
        if self.world_size > 1:
            ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
            dist.all_reduce(value, op=ops[op])
        return value

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def agree(self, value: T) -> T:
        """Rank 0's `value` on every rank (picklable; itself at world size 1). For choices that
        must not differ between ranks, such as a measured precision."""
        if self.world_size > 1:
            box = [value]
            dist.broadcast_object_list(box, src=0)
            value = box[0]
        return value


def setup_distributed(device_name: str | None = None) -> Distributed:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, ...), if any.

    NCCL on GPUs, gloo on CPUs. Without torchrun's variables this is world size 1 on one device.
    `device_name` as in `resolve_device` (under torchrun, "cuda" is each rank's own GPU).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_available() and dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size(), device, started_here=False)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return Distributed(0, 1, device, started_here=False)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), device, started_here=True)
