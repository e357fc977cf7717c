"""Loading trained VAEs: from a model folder, a `train-vae` run folder, or a bundled name."""

from __future__ import annotations

import os
from pathlib import Path

from kinetoscope.checkpoint import load_config, load_weights, resolve_model_folder
from kinetoscope.vae.model import VAEConfig, VideoVAE

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
BUNDLED = {"world": WEIGHTS / "world-vae"}  # name -> folder shipped inside the package


def load_vae(folder: str | os.PathLike) -> VideoVAE:
    """A trained VAE in eval mode, from a bundled name, a model folder, or the run folder of
    `kinetoscope train-vae` (`resolve_model_folder`: its checkpoint's model)."""
    if str(folder) in BUNDLED:
        path = BUNDLED[str(folder)]
        if not (path / "config.json").is_file():
            raise ValueError(
                f"the bundled VAE {folder!r} is missing from this installation; train one with "
                "`kinetoscope train-vae` and pass its folder"
            )
    else:
        path = resolve_model_folder(folder)
    vae = VideoVAE(load_config(path, VAEConfig))
    load_weights(path, vae)
    return vae.eval()
