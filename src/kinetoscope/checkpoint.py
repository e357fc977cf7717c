"""Checkpoints that users can trust: safetensors weights and a JSON config, nothing pickled.

A model folder holds

    model.safetensors   the state dict (plus any extra tensors, under `extra.`)
    config.json         {"kind": <config class name>, "version": 1, "config": {...}, "meta": {...}}

so loading is `Model(load_config(folder, Config))` followed by `load_weights(folder, model)`.
A training run of any kinetoscope trainer keeps its weights in such folders under
`checkpoint/` (`resolve_model_folder` says which one a run stands for), and a relative path in
a `meta` is relative to the model folder it sits in (its training state, sharded, is
`kinetoscope.train.distributed`'s). Files are written under temporary names and moved into
place with `os.replace`, so a crash never leaves a half-written file behind; `save_tensors`,
`save_json` and the optimizer helpers write other state the same way.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
EXTRA = "extra."
RUN_CHECKPOINT = "checkpoint"  # a training run's checkpoint folder (kinetoscope.train)

C = TypeVar("C")


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def save_tensors(path: str | os.PathLike, tensors: dict[str, Tensor], meta: dict | None = None):
    """Write a safetensors file atomically. `meta` values are stored as strings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses views that share storage; contiguous copies are cheap and safe.
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    tmp = _tmp(path)
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (meta or {}).items()})
    os.chmod(tmp, 0o644)  # readable like any other file we write, not private to the writer
    os.replace(tmp, path)


def _what_is_wrong(path: Path) -> str:
    """Why a file that safetensors refused is not a weights file, in words."""
    size = path.stat().st_size
    if size == 0:
        return "it is empty"
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head[:1] == b"\x80" or head[:2] == b"PK":
        return "it is a pickle or a torch.save archive, which is never loaded (it could run code)"
    if size < 8:
        return f"it holds {size} bytes, less than a safetensors header"
    (header,) = struct.unpack("<Q", head)
    if header > size - 8:
        return f"its header claims {header} bytes but the file holds {size}: truncated or not safetensors"
    return "it is truncated or not a safetensors file"


def load_tensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a safetensors file (on the CPU). ValueError naming the file and what is wrong with
    it for a missing, empty, truncated, pickled or otherwise corrupt one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise ValueError(
            f"{path} is not a usable weights file: {_what_is_wrong(path)} ({error})"
        ) from None
    except OSError as error:
        raise ValueError(f"{path} cannot be read: {error.strerror or error}") from None


def check_finite(tensors: dict[str, Tensor], where: str | os.PathLike) -> None:
    """ValueError naming `where` and the first tensor holding NaN or infinity."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(
                f"{where}: {name} holds NaN or infinite values; these weights are not usable "
                "(a diverged run? use an earlier checkpoint)"
            )


def save_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically, indented for people to read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_model(
    folder: str | os.PathLike,
    model: nn.Module,
    config: Any,
    *,
    extra_tensors: dict[str, Tensor] | None = None,
    meta: dict | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save `model`'s state dict and its dataclass `config` into `folder`; return the folder.

    `extra_tensors` go into the same weights file under the prefix `extra.`; `meta` is any
    JSON-serialisable dict (training command, data seed, metrics) stored beside the config.
    `dtype` stores the floating-point weights in that type (float16 halves a bundled model;
    `load_weights` casts them back to the model's own type).
    """
    assert dataclasses.is_dataclass(config) and not isinstance(config, type)
    folder = Path(folder)
    tensors = dict(model.state_dict())
    check_finite(tensors, folder / WEIGHTS)  # refuse before writing: never save NaN weights
    folder.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    for name, tensor in (extra_tensors or {}).items():
        tensors[EXTRA + name] = tensor
    save_tensors(folder / WEIGHTS, tensors)
    document = {
        "kind": type(config).__name__,
        "version": VERSION,
        "config": dataclasses.asdict(config),
        "meta": meta or {},
    }
    save_json(folder / CONFIG, document)
    return folder


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG
    if not path.is_file():
        raise ValueError(
            f"{folder} is not a model folder: it lacks {CONFIG} (save one with save_model)"
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; was it written by save_model?") from None
    except OSError as error:
        raise ValueError(f"{path} cannot be read: {error.strerror or error}") from None
    if not isinstance(document, dict) or "config" not in document:
        raise ValueError(f"{path} has no 'config' entry; was it written by save_model?")
    return document


def is_model_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a saved model (config.json and model.safetensors)."""
    return (Path(folder) / CONFIG).is_file() and (Path(folder) / WEIGHTS).is_file()


def resolve_model_folder(folder: str | os.PathLike) -> Path:
    """The model folder `folder` stands for: `folder` itself when it holds a saved model
    (bundled weights, an exported model); for the run folder of any kinetoscope trainer, or
    its `checkpoint/` folder, the weights to use: `checkpoint/ema` where the trainer keeps an
    EMA of the weights (the DiT), else `checkpoint/model`. ValueError when it is neither."""
    folder = Path(folder)
    if is_model_folder(folder):
        return folder
    checkpoint = folder / RUN_CHECKPOINT if (folder / RUN_CHECKPOINT).is_dir() else folder
    for part in ("ema", "model"):
        if is_model_folder(checkpoint / part):
            return checkpoint / part
    raise ValueError(
        f"{folder} holds no model: expected a model folder ({CONFIG} and {WEIGHTS}) or a "
        f"training run ({RUN_CHECKPOINT}/model/, written by a kinetoscope trainer)"
    )


def load_meta(folder: str | os.PathLike) -> dict:
    """The `meta` dict stored by `save_model`."""
    return dict(_read_config(Path(folder)).get("meta") or {})


# What a JSON value of each plain type is called in an error message (one, many).
_NAMES = {
    int: ("a whole number", "whole numbers"),
    float: ("a finite number", "finite numbers"),
    bool: ("true or false", "true/false values"),
    str: ("a string", "strings"),
    type(None): ("null", "nulls"),
}


def _describe(tp: Any, plural: bool = False) -> str:
    """The JSON values a field of type `tp` takes, in words ("a list of 3 whole numbers")."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg, plural) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(arg) for arg in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0], plural=True)}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_describe(args[0], plural=True)}"
        return f"a list of {len(args)} values ({', '.join(map(_describe, args))})"
    if dataclasses.is_dataclass(tp):
        return f"an object of {tp.__name__} fields"
    return _NAMES[tp][plural] if tp in _NAMES else getattr(tp, "__name__", str(tp))


def _fits(tp: Any, value: Any) -> bool:
    """Whether the JSON `value` is of the declared type `tp` (a type this does not know, such
    as `Any` or `dict`, is left to the config's own checks)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(arg, value) for arg in args)
    if origin is typing.Literal:
        return any(type(value) is type(arg) and value == arg for arg in args)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(args[0], v) for v in value)
        return len(value) == len(args) and all(map(_fits, args, value))
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    checks = {
        int: lambda: number and isinstance(value, int),
        float: lambda: number and math.isfinite(value),
        bool: lambda: isinstance(value, bool),
        str: lambda: isinstance(value, str),
        type(None): lambda: value is None,
    }
    return checks[tp]() if tp in checks else True


def _from_json(tp: Any, value: Any, where: str, name: str) -> Any:
    """The JSON `value` of field `name` as its declared type `tp` (tuples, nested
    dataclasses); ValueError naming the file (`where`) and the field when it is not one."""
    if not _fits(tp, value):
        raise ValueError(
            f"{where}: field {name!r} must be {_describe(tp)}, got {json.dumps(value)}"
        )
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        fitting = next(arg for arg in args if _fits(arg, value))
        return _from_json(fitting, value, where, name)
    if dataclasses.is_dataclass(tp):
        return build_config(tp, value, where, prefix=f"{name}.")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        items = enumerate(zip(args, value, strict=True))
        return tuple(_from_json(a, v, where, f"{name}[{i}]") for i, (a, v) in items)
    return value


def build_config(cls: type[C], values: Any, where: str, prefix: str = "") -> C:
    """A `cls` dataclass from the JSON object `values` read from `where` (a file), every field
    checked against its declared type and then by the class's own checks; ValueError naming
    `where` and the field (under `prefix` for a nested config) for a value that does not fit."""
    if not isinstance(values, dict):
        what = f"field {prefix[:-1]!r}" if prefix else "the config"
        raise ValueError(f"{where}: {what} must be a JSON object, got {json.dumps(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {', '.join(prefix + name for name in unknown)} for "
            f"{cls.__name__}; the checkpoint was written by another version of the code "
            f"(known: {', '.join(fields)})"
        )
    hints = typing.get_type_hints(cls)
    typed = {
        key: _from_json(hints.get(key, Any), value, where, prefix + key)
        for key, value in values.items()
    }
    try:
        return cls(**typed)
    except (ValueError, TypeError) as error:  # the class's own checks, or a missing field
        raise ValueError(f"{where}: {error}") from None


def load_config(folder: str | os.PathLike, cls: type[C]) -> C:
    """The dataclass config stored in `folder`, checked against `cls`: a hand-edited value of
    the wrong type, or one the class refuses, is a ValueError naming the file and the field."""
    folder = Path(folder)
    document = _read_config(folder)
    kind = document.get("kind")
    if kind is not None and kind != cls.__name__:
        raise ValueError(f"{folder} holds a {kind} checkpoint, not a {cls.__name__} one")
    version = document.get("version", VERSION)
    if version > VERSION:
        raise ValueError(
            f"{folder} was written by a newer format (version {version}); upgrade kinetoscope"
        )
    return build_config(cls, document["config"], str(folder / CONFIG))


def load_weights(folder: str | os.PathLike, model: nn.Module) -> dict[str, Tensor]:
    """Load `folder`'s weights into `model` (strictly); return the extra tensors saved with them.

    ValueError naming the file for a corrupt weights file or weights that are not finite."""
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise ValueError(
            f"{folder} is not a model folder: it lacks {WEIGHTS} (save one with save_model)"
        )
    tensors = load_tensors(path)
    check_finite(tensors, path)
    extra = {k[len(EXTRA) :]: v for k, v in tensors.items() if k.startswith(EXTRA)}
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA)}
    own = model.state_dict()
    for name, tensor in state.items():
        if name in own and own[name].shape != tensor.shape:
            raise ValueError(
                f"{path} does not match the model: {name} has shape {tuple(tensor.shape)}, the "
                f"model {tuple(own[name].shape)}; load it with the config stored beside it"
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the model: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}; load it with the config stored beside it"
        )
    return extra


# ---------------------------------------------------------------------------------------------
# Optimizer state as tensors + JSON


def optimizer_state_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Split `optimizer.state_dict()` into flat tensors and a JSON-serialisable rest."""
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    plain: dict[str, dict] = {}
    for index, values in state["state"].items():
        plain[str(index)] = {}
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                plain[str(index)][name] = value
    return tensors, {"state": plain, "param_groups": state["param_groups"]}


def optimizer_state_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], rest: dict
) -> None:
    """Load what `optimizer_state_to_tensors` produced back into `optimizer`."""
    state: dict[int, dict] = {int(i): dict(values) for i, values in rest["state"].items()}
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})
