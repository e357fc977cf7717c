"""Where a model's parts are: the DiT, VAE and text encoder a model folder holds, and the
device to run on. `Pipeline.load` and the trainers (`--init`) read folders through it.

Model folders `Pipeline.load` reads (`find_model` says which parts it found):

    dit/            a DiT model folder (config.json + model.safetensors), such as the bundled
                    weights/world-dit or a run's checkpoint/ema
    run/            a run of `kinetoscope train`, or its checkpoint/ folder: the DiT is the
                    run's EMA (`checkpoint.resolve_model_folder`, as for every trainer's run)

The DiT's meta names the other parts, as the trainer records them: `vae`, a bundled name or a
folder relative to the DiT's (a run's `../../vae`, its own copy of the VAE), and
`text_encoder`, "tiny", "minilm" or a local folder (relative to the DiT's, or as given).
`vae=` and `text_encoder=` override either part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from kinetoscope.checkpoint import (
    RUN_CHECKPOINT,
    is_model_folder,
    load_meta,
    resolve_model_folder,
)
from kinetoscope.vae import BUNDLED


def default_model_dir() -> Path:
    """Where the bundled world model lives inside the package (`weights/world-dit`)."""
    return Path(__file__).resolve().parent / "weights" / "world-dit"


# ---------------------------------------------------------------------------------------------
# Finding the parts of a model folder


@dataclass(frozen=True)
class ModelFiles:
    """The parts of a model: where each one is loaded from."""

    dit: Path  # DiT model folder (config.json + model.safetensors)
    vae: Path  # VAE model folder
    text_encoder: str  # "tiny", "minilm" or a local Hugging Face folder
    meta: dict  # the DiT's meta (training step, preset, data, ...)


def _find_vae(dit: Path, named: str | None) -> Path | None:
    """The VAE the DiT's meta names: a bundled name, or a folder relative to the DiT's.

    Runs saved before relative names recorded the VAE as given on the training machine; their
    run's own copy (run/vae beside run/checkpoint/ema) stands for it."""
    if named in BUNDLED:
        return BUNDLED[named]
    if named and not os.path.isabs(named) and is_model_folder(dit / named):
        return Path(os.path.normpath(dit / named))
    if dit.parent.name == RUN_CHECKPOINT and is_model_folder(dit.parent.parent / "vae"):
        return dit.parent.parent / "vae"  # an older run
    if named and is_model_folder(Path(named).expanduser()):
        return Path(named).expanduser()  # an older meta's path, where it still is
    return None


def dit_folder(root: Path) -> Path:
    """The DiT model folder of `root` (layouts in the module docstring). Raises ValueError
    when it holds none."""
    try:
        return resolve_model_folder(root)
    except ValueError:
        raise ValueError(
            f"{root} holds no DiT: expected a run folder written by `kinetoscope train` "
            "(checkpoint/ema/), its checkpoint/ folder, or a model folder with config.json and "
            "model.safetensors"
        ) from None


def find_model(
    model_dir: str | os.PathLike | None = None,
    *,
    vae: str | os.PathLike | None = None,
    text_encoder: str | None = None,
) -> ModelFiles:
    """Where the DiT (EMA weights where the folder has them), VAE and text encoder of a model
    folder are (layouts in the module docstring); None: the bundled world model.

    `vae` (a folder or bundled name) and `text_encoder` override what the folder records.
    Raises ValueError, saying what to pass, when a part cannot be found. Loads no weights.
    """
    if model_dir is None:
        root = default_model_dir()
        if not root.is_dir():
            raise ValueError(
                f"the bundled world model is missing from this installation ({root}); pass "
                "--model DIR (model_dir=...), a run folder written by `kinetoscope train`"
            )
    else:
        root = Path(model_dir).expanduser()
        if not root.is_dir():
            raise ValueError(
                f"model folder {root} does not exist; pass a run folder written by "
                "`kinetoscope train` (or its checkpoint/ema folder)"
            )
    dit = dit_folder(root)
    meta = load_meta(dit)
    if vae is not None:
        vae_folder = BUNDLED.get(str(vae), Path(vae))
    else:
        vae_folder = _find_vae(dit, meta.get("vae"))
        if vae_folder is None:
            raise ValueError(
                f"no VAE found for the DiT in {dit} (its meta names {meta.get('vae')!r}, "
                f"relative to {dit}); put the VAE folder it was trained with there or pass "
                "vae=DIR (--vae DIR)"
            )
    text = text_encoder or meta.get("text_encoder")
    if not text:
        raise ValueError(
            f"{dit} does not record its text encoder; pass text_encoder='minilm' (or 'tiny', "
            "or the local folder it was trained with)"
        )
    if text not in ("tiny", "minilm") and (dit / text).is_dir():  # relative to the model
        text = os.path.normpath(dit / text)
    return ModelFiles(dit, Path(vae_folder), text, meta)


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """The device a process runs on: `name` ("cpu", "cuda", "cuda:1"), or the GPU of this
    local rank if there is one and `name` is None. ValueError for a device this machine lacks."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from error
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"kinetoscope runs on cpu or cuda, not {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: this machine has no CUDA GPU; use --device cpu")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device cuda:{index} does not exist: {torch.cuda.device_count()} GPU(s)"
            )
        device = torch.device("cuda", index)
    return device


# ---------------------------------------------------------------------------------------------
# The pipeline


__all__ = ["RUN_CHECKPOINT", "ModelFiles", "default_model_dir", "dit_folder", "find_model",
           "resolve_device"]  # fmt: skip
