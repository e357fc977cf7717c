"""Loading trained VAEs: from a folder (model.safetensors + config.json) or a bundled name."""

from __future__ import annotations

import os
from pathlib import Path

from kinetoscope.checkpoint import load_config, load_weights
from kinetoscope.vae.model import VAEConfig, VideoVAE

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
BUNDLED = {"world": WEIGHTS / "world-vae"}  # name -> folder shipped inside the package


def load_vae(folder: str | os.PathLike) -> VideoVAE:
    """A trained VAE in eval mode, from a folder written by `save_model` or a bundled name."""
    path = BUNDLED.get(str(folder), Path(folder))
    if str(folder) in BUNDLED and not (path / "config.json").is_file():
        raise ValueError(
            f"the bundled VAE {folder!r} is missing from this installation; train one with "
            "`kinetoscope train-vae` and pass its folder"
        )
    vae = VideoVAE(load_config(path, VAEConfig))
    load_weights(path, vae)
    return vae.eval()
