"""Where a model's parts are: the DiT, VAE and text encoder a model folder holds, and the
device to run on. `Pipeline.load` and the trainers (`--init`) read folders through it.

Model folders `Pipeline.load` reads (`find_model` says which parts it found):

    run/                     a DiT training run: run/checkpoint/ema (the EMA weights, to
                             sample from) and run/vae (the VAE its latents came from)
    run/checkpoint/          its checkpoint folder: ema/, with the VAE at ../vae
    bundle/                  dit/ (config.json + model.safetensors) and vae/
    dit/                     a DiT model folder itself (e.g. run/checkpoint/ema); the VAE is
                             dit/vae, or that of the run it sits in, or the one its meta names

The text encoder is the one named in the DiT's meta (`text_encoder`: "tiny", "minilm" or a
local folder), as the trainer records it; `vae=` and `text_encoder=` override either part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from kinetoscope.checkpoint import load_meta
from kinetoscope.vae import BUNDLED

RUN_CHECKPOINT = "checkpoint"  # the trainer's checkpoint folder inside a run


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


def _is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _find_vae(root: Path, dit: Path, named: str | None) -> Path | None:
    """The VAE of a DiT: a vae/ folder beside it or in its run, else the one its meta names."""
    places = [dit, root]
    if dit.parent.name == RUN_CHECKPOINT:  # run/checkpoint/ema -> run/vae
        places.append(dit.parent.parent)
    for place in places:
        if _is_model_folder(place / "vae"):
            return place / "vae"
    if not named:
        return None
    if named in BUNDLED:
        return BUNDLED[named] if _is_model_folder(BUNDLED[named]) else None
    path = Path(named).expanduser()
    for candidate in (path, root / path):
        if _is_model_folder(candidate):
            return candidate
    # The bundled VAE of the installation that trained the model, wherever it was.
    return next((f for f in BUNDLED.values() if f.name == path.name and _is_model_folder(f)), None)


def dit_folder(root: Path) -> Path:
    """The DiT model folder of `root`: a run's EMA weights, a checkpoint's, or `root` itself
    (layouts in the module docstring). Raises ValueError when it holds none."""
    candidates = [root / RUN_CHECKPOINT / "ema", root / "ema", root / "dit", root]
    dit = next((c for c in candidates if _is_model_folder(c)), None)
    if dit is None:
        raise ValueError(
            f"{root} holds no DiT: expected a run folder written by `kinetoscope train` "
            "(checkpoint/ema/), its checkpoint/ folder, or a model folder with config.json and "
            "model.safetensors"
        )
    return dit


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
        vae_folder = _find_vae(root, dit, meta.get("vae"))
        if vae_folder is None:
            raise ValueError(
                f"no VAE found for the DiT in {dit} (its meta names {meta.get('vae')!r}); put "
                f"the VAE folder it was trained with at {root / 'vae'} or pass vae=DIR"
            )
    text = text_encoder or meta.get("text_encoder")
    if not text:
        raise ValueError(
            f"{dit} does not record its text encoder; pass text_encoder='minilm' (or 'tiny', "
            "or the local folder it was trained with)"
        )
    local = text not in ("tiny", "minilm") and not Path(text).expanduser().is_dir()
    if local and (root / text).is_dir():  # a folder recorded relative to the model
        text = str(root / text)
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
