"""Spreading a training run over ranks, and checkpoints that any world size resumes.

- `parallelize`: DDP (each rank holds the whole model and gradients are averaged) or FSDP2
  (`fully_shard` on each block, then the root: parameters, gradients and optimizer state are
  split over the ranks), with bf16 mixed precision by policy. World size 1 trains the bare
  model in both modes: there is nothing to split or to average.
- `gradient_sync`, `clip_grad_norm`, `all_finite`: the steps of a loop that differ by mode.
- `consolidated`: a module's whole weights as a plain module on rank 0 (gathered under FSDP),
  for exports, previews and probes.
- `save_sharded` / `load_sharded`: model, EMA (where the trainer keeps one) and optimizer as a
  torch.distributed.checkpoint
  (DCP) folder. Every rank writes its own shards (the folder must be on storage all ranks
  see) and loading reshards them to the world size at hand, in either mode. Only tensors are
  saved, and the folder's metadata is read by an unpickler that knows DCP's own classes and
  nothing else, so resuming never runs code from a file.
- `save_checkpoint` / `load_checkpoint`: a run's checkpoint folder, written by every rank
  into a fresh folder and swapped in by renames (a crash leaves the previous one whole):

      checkpoint/model/, checkpoint/ema/   whole weights (safetensors + config.json): what
                                           `load_vae`, `Captioner.load` and `Pipeline.load`
                                           read (ema/ only where the trainer keeps an EMA)
      checkpoint/train_state/state.json    the loop's state, the optimizer's param groups
      checkpoint/train_state/sharded/      model, EMA and optimizer (DCP): what resume reads

  A checkpoint from before sharded ones (optimizer.safetensors in train_state/, the moments
  keyed by parameter index) still resumes, in either mode.
- `check_global_batch`: a resumed run must take as many batches a step as it did.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from kinetoscope.checkpoint import WEIGHTS, check_finite, load_tensors, save_json, save_model
from kinetoscope.train.run import Distributed

PARALLEL = ("ddp", "fsdp")

M = TypeVar("M", bound=nn.Module)


def parallelize(
    model: nn.Module, ema: nn.Module | None, parallel: str, ddp: Distributed, precision: str
) -> nn.Module:
    """The module the loop calls: `model` itself at world size 1, else wrapped for `parallel`.

    `ema` (None: the trainer keeps none) has the structure of `model`. Under "fsdp" both are
    sharded the same way, so an EMA update is an elementwise op on each rank's shards: a
    model with a `blocks` list (the DiT) one block at a time, any other as one unit.
    With precision "bf16", FSDP gathers parameters and computes in bf16 and reduces gradients
    in fp32; the sharded parameters and the optimizer stay fp32.
    """
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
    if ddp.world_size == 1:
        return model
    if parallel == "ddp":
        return DistributedDataParallel(model)
    mesh = init_device_mesh(ddp.device.type, (ddp.world_size,))
    fp32 = MixedPrecisionPolicy()
    bf16 = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16,
        reduce_dtype=torch.float32,
        # Inputs stay fp32: per-token timesteps rounded to bf16 would blur the timestep
        # embedding; autocast casts what the matmuls take.
        cast_forward_inputs=False,
    )
    modules = [(model, bf16 if precision == "bf16" else fp32)] + (
        [(ema, fp32)] if ema is not None else []
    )
    for module, policy in modules:
        # A unit per block: one block's weights gathered at a time.
        for block in getattr(module, "blocks", ()):
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(module, mesh=mesh, mp_policy=policy)
    # The DiT returns a view; FSDP warns in case it is changed in place, which the loss never does.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view")
    return model


def gradient_sync(net: nn.Module, enabled: bool) -> AbstractContextManager:
    """Context for a backward that reduces gradients over ranks only if `enabled` (the last
    batch of an accumulated step); earlier batches accumulate locally."""
    if isinstance(net, DistributedDataParallel) and not enabled:
        return net.no_sync()
    if isinstance(net, FSDPModule):
        net.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def _local(tensor: Tensor) -> Tensor:
    """This rank's part of a tensor (its shard under FSDP)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm`; return the norm before clipping, the same
    on every rank (under FSDP it is reduced over the shards)."""
    norm = nn.utils.clip_grad_norm_(list(parameters), max_norm)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def all_finite(modules: Iterable[nn.Module], ddp: Distributed) -> bool:
    """Whether every weight of `modules` is finite on every rank (each rank checks its own
    shards, then the ranks agree)."""
    ok = all(bool(torch.isfinite(_local(p)).all()) for m in modules for p in m.parameters())
    return bool(ddp.all_reduce(torch.tensor(float(ok), device=ddp.device), "min"))


def is_sharded(module: nn.Module) -> bool:
    return isinstance(module, FSDPModule)


def consolidated(module: M, empty: Callable[[], M], ddp: Distributed) -> M | None:
    """`module` with all its weights, as a plain module: itself when it is not sharded (on
    every rank); under FSDP a copy gathered on rank 0 (on this rank's device), None on the
    others. Every rank must call it. `empty` builds a module of the same structure."""
    if not is_sharded(module):
        return module
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 gets it all
    state = get_model_state_dict(module, options=options)
    if ddp.rank != 0:
        return None
    with torch.device("meta"):  # no memory, no init: every weight comes from `state`
        whole = empty()
    whole.load_state_dict(state, assign=True)
    return whole.to(ddp.device).requires_grad_(False).train(module.training)


# ---------------------------------------------------------------------------------------------
# Sharded checkpoints (DCP)


def _training_state(
    model: nn.Module, ema: nn.Module | None, optimizer: torch.optim.Optimizer
) -> tuple[dict, list]:
    """(model, EMA if any and optimizer moments as DCP state, the optimizer's param groups).
    The param groups (rates, betas, parameter names) stay out of DCP, which would pickle them."""
    optimizer_state = get_optimizer_state_dict(model, optimizer)
    state = {"model": get_model_state_dict(model), "optimizer": optimizer_state["state"]}
    if ema is not None:
        state["ema"] = get_model_state_dict(ema)
    return state, optimizer_state["param_groups"]


def _tensors_only(state: dict, where: str = "") -> None:
    for key, value in state.items():
        if isinstance(value, dict):
            _tensors_only(value, f"{where}{key}.")
        else:
            assert isinstance(value, Tensor), f"{where}{key} is not a tensor"


@contextlib.contextmanager
def _quietly() -> Iterator[None]:
    """At world size 1 DCP warns that it saves and loads in a single process: that is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_sharded(
    folder: str | os.PathLike,
    model: nn.Module,
    ema: nn.Module | None,
    optimizer: torch.optim.Optimizer,
) -> list[dict]:
    """Write model, EMA (if any) and optimizer state into `folder` as a DCP checkpoint: each rank its
    shards (DDP's replicas once). Return the optimizer's param groups (plain values, to keep as
    JSON beside it). Every rank must call it."""
    state, param_groups = _training_state(model, ema, optimizer)
    _tensors_only(state)
    with _quietly():
        dcp.save(state, storage_writer=dcp.FileSystemWriter(folder))
    return param_groups


# What a DCP checkpoint's `.metadata` pickle may name: the classes of DCP's metadata module
# (TensorStorageMetadata, ...), torch dtypes, and these.
_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_METADATA_GLOBALS = frozenset({
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("pathlib", "Path"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
})  # fmt: skip
_METADATA_MODULES = {module for module, _ in _METADATA_GLOBALS} | {_METADATA_MODULE}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles a DCP checkpoint's `.metadata` and refuses any other object."""

    def find_class(self, module: str, name: str) -> object:
        # Modules already imported, plain names only (a dotted one would reach further).
        if "." not in name and module in _METADATA_MODULES:
            found = super().find_class(module, name)
            if (
                (module, name) in _METADATA_GLOBALS
                or (module == "torch" and isinstance(found, torch.dtype))
                or (isinstance(found, type) and found.__module__ == _METADATA_MODULE)
            ):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def _read_metadata(folder: Path) -> Metadata:
    """The index of the DCP checkpoint in `folder`, read without running code from it;
    ValueError for one that names other objects or stores entries as pickles."""
    path = folder / ".metadata"
    try:
        metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as error:
        raise ValueError(
            f"{path} is not a readable checkpoint index ({error}); the checkpoint is damaged "
            "(start a new --out, or --overwrite this one)"
        ) from None
    if not isinstance(metadata, Metadata):
        raise ValueError(f"{path} does not hold a checkpoint index")
    pickled = [k for k, v in metadata.state_dict_metadata.items()
               if isinstance(v, BytesStorageMetadata)]  # fmt: skip
    if pickled:
        raise ValueError(f"{path}: {pickled[0]} is stored as a pickle, which is never loaded")
    return metadata


class _SafeReader(dcp.FileSystemReader):
    """A DCP folder reader whose index is `_read_metadata`'s (checked before DCP starts)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        super().__init__(folder)
        self.metadata = _read_metadata(Path(folder))

    def read_metadata(self, *args, **kwargs) -> Metadata:
        self.metadata.storage_meta = getattr(self.metadata, "storage_meta", None) or StorageMeta()
        self.metadata.storage_meta.load_id = self.load_id
        return self.metadata


def load_sharded(
    folder: str | os.PathLike,
    model: nn.Module,
    ema: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    param_groups: list[dict] | None = None,
) -> None:
    """Load what `save_sharded` wrote into `model`, `ema` and `optimizer`, at any world size
    and in either mode, with the `param_groups` it returned (None: keep the optimizer's own).
    Every rank must call it."""
    reader = _SafeReader(folder)
    state, own_groups = _training_state(model, ema, optimizer)
    param_groups = own_groups if param_groups is None else param_groups
    with _quietly():
        dcp.load(state, storage_reader=reader)
    set_model_state_dict(model, state["model"])
    if ema is not None:
        set_model_state_dict(ema, state["ema"])
    set_optimizer_state_dict(
        model, optimizer, {"state": state["optimizer"], "param_groups": param_groups}
    )


def _load_full_state(
    model: nn.Module,
    ema: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    model_state: dict[str, Tensor],
    ema_state: dict[str, Tensor] | None,
    optimizer_state: dict,
) -> None:
    """Load whole state dicts (as a single process saves them; the optimizer's keyed by the
    parameter's place in `model.parameters()`) into `model`, `ema` and `optimizer`, sharded or
    not. Every rank must call it with the same state."""
    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=full)
    if ema is not None:
        set_model_state_dict(ema, ema_state, options=full)
    names = [name for name, _ in model.named_parameters()]
    by_name = {
        "state": {names[int(i)]: value for i, value in optimizer_state["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]}
            for group in optimizer_state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=full)


# ---------------------------------------------------------------------------------------------
# A run's checkpoint folder

CHECKPOINT = "checkpoint"
STATE = "train_state"
SHARDED = "sharded"  # in STATE


def save_checkpoint(
    out: Path,
    model: nn.Module,
    ema: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    state: dict,
    meta: dict,
    ddp: Distributed,
    empty: Callable[[], nn.Module],
) -> Path:
    """Write `out/checkpoint`: the sharded training state, the whole model and EMA if any (with
    `meta`; `empty` builds a plain model, see `consolidated`) and the loop `state`, into a fresh
    folder swapped in by renames. Every rank must call it."""
    partial, final, old = (
        out / f".{CHECKPOINT}.partial",
        out / CHECKPOINT,
        out / f".{CHECKPOINT}.old",
    )
    if ddp.rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
    ddp.barrier()  # the fresh folder is empty before any rank writes its shards into it
    param_groups = save_sharded(partial / STATE / SHARDED, model, ema, optimizer)
    whole_model = consolidated(model, empty, ddp)
    whole_ema = consolidated(ema, empty, ddp) if ema is not None else None
    if ddp.rank == 0:
        # Step and training seconds so far: enough to plot quality against compute later.
        meta = {**meta, "step": state["step"], "seconds": round(state["seconds"], 1)}
        save_model(partial / "model", whole_model, model.config, meta=meta)
        if whole_ema is not None:
            save_model(partial / "ema", whole_ema, ema.config, meta={**meta, "ema": True})
        save_json(
            partial / STATE / "state.json", {**state, "optimizer": {"param_groups": param_groups}}
        )
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)  # between these two renames, resume reads the old folder
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    ddp.barrier()  # no rank runs ahead of a checkpoint it may be asked to resume from
    return final


def checkpoint_folder(out: Path) -> Path | None:
    """The newest complete checkpoint in `out`, if any."""
    for name in (CHECKPOINT, f".{CHECKPOINT}.old"):
        if (out / name / STATE / "state.json").is_file():
            return out / name
    return None


def load_checkpoint(
    checkpoint: Path,
    model: nn.Module,
    ema: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    saved: dict,
) -> None:
    """Resume `model`, `ema` (if any) and `optimizer` from `checkpoint` (`saved`: its
    state.json): the sharded state, resharded to this run; or, from a run saved before sharded
    checkpoints, the whole weights and the index-keyed optimizer moments. Every rank must call
    it."""
    if (checkpoint / STATE / SHARDED).is_dir():
        groups = saved["optimizer"].get("param_groups")
        load_sharded(checkpoint / STATE / SHARDED, model, ema, optimizer, groups)
        return
    parts = ("model", "ema") if ema is not None else ("model",)
    weights = {part: load_tensors(checkpoint / part / WEIGHTS) for part in parts}
    for part, tensors in weights.items():
        check_finite(tensors, checkpoint / part / WEIGHTS)
    moments = load_tensors(checkpoint / STATE / "optimizer.safetensors")
    optimizer_state = {"state": {}, **saved["optimizer"]}
    for key, tensor in moments.items():  # "3.exp_avg": moment exp_avg of parameter 3
        index, name = key.split(".", 1)
        optimizer_state["state"].setdefault(index, {})[name] = tensor
    _load_full_state(model, ema, optimizer, weights["model"], weights.get("ema"), optimizer_state)


def check_global_batch(
    out: Path, saved_state: dict, saved_accumulate: int, accumulate: int, ddp: Distributed
) -> None:
    """ValueError unless this run takes as many batches a step (world size x accumulate) as
    the run it resumes (`saved_state`: its state.json): the data order, the schedule and the EMA
    count steps of that size."""
    sampler = saved_state.get("sampler") or {}
    saved_world = saved_state.get("world_size", sampler.get("world_size", 1))
    if isinstance(saved_world, bool) or not isinstance(saved_world, int) or saved_world < 1:
        raise ValueError(
            f"cannot resume {out}: its state.json's field 'world_size' must be a whole number "
            f"of at least 1, got {saved_world!r}"
        )
    batches = saved_world * saved_accumulate
    if ddp.world_size * accumulate == batches:
        return
    fix = (
        f"pass accumulate={batches // ddp.world_size} (--accumulate {batches // ddp.world_size})"
        if batches % ddp.world_size == 0
        else f"run on a number of ranks that divides {batches}"
    )
    raise ValueError(
        f"cannot resume {out} with {ddp.world_size} rank(s) x accumulate {accumulate}: the run "
        f"took {saved_world} x {saved_accumulate} = {batches} batches a step; {fix}"
    )
