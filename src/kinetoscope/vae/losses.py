"""Training losses of the video VAE.

Choices, and why:

- Reconstruction: L1 + MSE on pixels in [-1, 1]. MSE is what PSNR measures; L1 keeps a
  gradient on small errors, which sharpens the anti-aliased edges that MSE alone blurs. At
  equal weights L1's gradient dominates once errors are small, so late in training a larger
  MSE weight buys PSNR: the bundled world VAE's last part used `mse_weight=40` (400 steps of
  fine-tuning with 1, 10 and 40 gained 0.12, 0.39 and 0.46 dB; see its model card).
- KL to N(0, I) with a small weight (1e-6 per latent element by default): enough to keep the
  latent bounded and smooth for diffusion, small enough not to cost reconstruction quality.
  Latent statistics (`compute_latent_stats`) take care of the final scale.
- No perceptual (LPIPS) term: it needs pretrained weights we cannot download at run time.
- An optional adversarial term (a per-frame PatchGAN with hinge loss, as in the LDM and
  taming-transformers autoencoders), off by default (weight 0): on flat synthetic shapes the
  pixel losses already reach high PSNR, and a GAN adds a second optimiser and instability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from kinetoscope.vae.model import VAEOutput


@dataclass
class VAELossConfig:
    """Weights of the VAE's training losses."""

    l1_weight: float = 1.0  # sharp edges
    mse_weight: float = 1.0  # what PSNR measures
    kl_weight: float = 1e-6  # bound the latent without hurting reconstruction
    adversarial_weight: float = 0.0  # off: pixel losses suffice on the synthetic world


def vae_loss(
    output: VAEOutput, target: Tensor, config: VAELossConfig | None = None
) -> tuple[Tensor, dict[str, float]]:
    """(total loss, named float parts) for one batch `B 3 T H W` in [-1, 1], without the GAN."""
    config = config or VAELossConfig()
    error = output.reconstruction.float() - target.float()
    l1 = error.abs().mean()
    mse = error.pow(2).mean()
    kl = output.kl().float()
    total = config.l1_weight * l1 + config.mse_weight * mse + config.kl_weight * kl
    return total, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


def psnr(reconstruction: Tensor, target: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of videos in [-1, 1] (peak-to-peak range 2)."""
    mse = (reconstruction.float().clamp(-1, 1) - target.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(4.0 / mse)).item()


class PatchDiscriminator(nn.Module):
    """Per-frame PatchGAN: frames `B 3 T H W` -> real/fake logits `(B T) 1 h w`."""

    def __init__(self, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for _ in range(layers - 1):
            blocks += [
                nn.Conv2d(width, 2 * width, 4, 2, 1),
                nn.GroupNorm(8, 2 * width),
                nn.LeakyReLU(0.2),
            ]
            width *= 2
        blocks.append(nn.Conv2d(width, 1, 3, 1, 1))
        self.net = nn.Sequential(*blocks)
        self.init_weights()

    def init_weights(self) -> None:
        """Normal(0, 0.02) convolutions and zero biases, as in pix2pix."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, video: Tensor) -> Tensor:
        frames = rearrange(video, "b c t h w -> (b t) c h w")  # (B T) 3 H W
        return self.net(frames)  # (B T) 1 h w


def generator_adversarial_loss(logits_fake: Tensor) -> Tensor:
    """Hinge GAN loss of the generator (the VAE decoder)."""
    return -logits_fake.mean()


def discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Hinge GAN loss of the discriminator (Lim and Ye 2017)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
