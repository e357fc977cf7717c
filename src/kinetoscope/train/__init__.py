"""Training loops (VAE, DiT, captioner), checkpoints and distributed setup."""
