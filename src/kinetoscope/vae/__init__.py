"""The causal video VAE: pixels <-> latents, its losses, chunked and tiled inference."""

from kinetoscope.vae.model import (
    VAE_PRESETS,
    VAEConfig,
    VAEOutput,
    VideoVAE,
    compute_latent_stats,
)
from kinetoscope.vae.pretrained import BUNDLED, load_vae

__all__ = [
    "BUNDLED",
    "VAE_PRESETS",
    "VAEConfig",
    "VAEOutput",
    "VideoVAE",
    "compute_latent_stats",
    "load_vae",
]
