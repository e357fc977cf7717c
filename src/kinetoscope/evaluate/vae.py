"""Reconstruction quality of a video VAE: PSNR, SSIM, latent bits per pixel, throughput.

- PSNR: per clip over all its pixels (peak-to-peak 2 in [-1, 1]), averaged over clips.
- SSIM: per frame on [0, 1] values with an 11x11 Gaussian window of sigma 1.5 over the valid
  region, the mean over the three channels (Wang et al. 2004), averaged over frames and then
  over clips.
- Bits of latent per pixel: latent values per pixel of the clip x 16, as the latents would
  be stored in bf16 (c t h w values for T H W pixels). With 16 channels and 4x8x8
  compression this is about 1 bit per RGB pixel for long clips.
- Throughput: frames per second of encode + decode (posterior mean), excluding file reads.

`evaluate_vae` also writes a side-by-side original | reconstruction GIF and a PNG strip of
frames (originals on top, reconstructions below) for the first clips.

Each file of the manifest is evaluated once: a line that names a file an earlier line names is
left out with a warning (`read_unique_manifest`), so no clip counts twice in the means.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kinetoscope.checkpoint import save_json
from kinetoscope.data.dataset import ClipDataset
from kinetoscope.data.manifest import read_unique_manifest
from kinetoscope.io import to_uint8, write_image, write_video
from kinetoscope.vae import VideoVAE
from kinetoscope.vae.losses import psnr

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
BITS_PER_LATENT = 16  # bf16 storage


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()  # size size


def ssim(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean SSIM of two videos `3 T H W` (or images `3 H W`) in [-1, 1], per frame then averaged.

    Structural similarity, Wang, Bovik, Sheikh and Simoncelli 2004: Gaussian window 11 / 1.5,
    K1 = 0.01, K2 = 0.03, data range 1 after mapping to [0, 1].
    """
    if target.dim() == 3:
        target, reconstruction = target[:, None], reconstruction[:, None]
    if reconstruction.shape != target.shape or target.dim() != 4:
        raise ValueError(
            f"ssim needs two videos of the same shape 3 T H W, got {tuple(reconstruction.shape)} "
            f"and {tuple(target.shape)}"
        )
    x = (reconstruction.float().clamp(-1, 1) + 1) / 2
    y = (target.float() + 1) / 2
    x, y = x.transpose(0, 1), y.transpose(0, 1)  # T 3 H W: frames as a batch
    channels = x.shape[1]
    size = min(SSIM_WINDOW, x.shape[-1], x.shape[-2])
    window = _gaussian_window(size, SSIM_SIGMA).expand(channels, 1, size, size)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, window, groups=channels)  # valid region only

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    score = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return score.mean(dim=(1, 2, 3)).mean().item()  # per frame, then over frames


def latent_bits_per_pixel(vae: VideoVAE, frames: int, height: int, width: int) -> float:
    """Bits of bf16 latent per pixel of a `frames x height x width` video."""
    t, h, w = vae.latent_size(frames, height, width)
    values = vae.config.latent_channels * t * h * w
    return values * BITS_PER_LATENT / (frames * height * width)


def _side_by_side(original: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    gap = torch.ones_like(original[..., :4])  # 3 T H 4: a white bar between the two
    return torch.cat([original, gap, reconstruction.clamp(-1, 1)], dim=-1)  # 3 T H 2W+4


def _strip(original: torch.Tensor, reconstruction: torch.Tensor, count: int = 8) -> torch.Tensor:
    frames = original.shape[1]
    picks = sorted({round(i * (frames - 1) / max(1, count - 1)) for i in range(count)})
    top = torch.cat([original[:, i] for i in picks], dim=-1)  # 3 H nW
    bottom = torch.cat([reconstruction[:, i].clamp(-1, 1) for i in picks], dim=-1)
    return torch.cat([top, bottom], dim=-2)[:, None]  # 3 1 2H nW


@torch.no_grad()
def evaluate_vae(
    vae: VideoVAE,
    data: str | os.PathLike,
    *,
    limit: int | None = None,
    out: str | os.PathLike | None = None,
    max_area: int = 256 * 256,
    max_frames: int = 17,
    chunk_frames: int | None = 8,
    tile: int | None = None,
    examples: int = 2,
    progress: bool = False,
) -> dict:
    """Reconstruct the clips of manifest `data` (the first `limit`, each file once) and measure
    quality.

    Clips are read at native size under `max_area` and `max_frames` (from their first frame)
    and coded through the posterior mean. With `out`, writes `report.json` and, for the first
    `examples` clips, `example-K.gif` (original | reconstruction) and `example-K.png`
    (frames, originals on top). The report has the means and, under `per_clip`, each clip's
    path, size, PSNR and SSIM. Returns the report dict.
    """
    vae.eval()
    dataset = ClipDataset(
        read_unique_manifest(data),  # each file once, so none counts twice in the means
        max_area=max_area,
        max_frames=max_frames,
        temporal_crop="start",
        seed=0,
    )
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    out_path = None if out is None else Path(out)
    per_clip, bits = [], []
    frames_done, seconds, skipped = 0, 0.0, 0
    indices = range(count)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="eval-vae")
    for index in indices:
        item = dataset[index]
        if item is None:
            skipped += 1
            continue
        video = item["video"]  # 3 T H W
        start = time.perf_counter()
        latents = vae.encode(video[None], chunk_frames=chunk_frames, tile=tile)
        latent_chunk = None if chunk_frames is None else max(1, chunk_frames // 4)
        reconstruction = vae.decode(latents, chunk_frames=latent_chunk, tile=tile)[0]
        seconds += time.perf_counter() - start
        frames_done += video.shape[1]
        frames, height, width = video.shape[1:]
        bits.append(latent_bits_per_pixel(vae, frames, height, width))
        per_clip.append(
            {"path": dataset.records[index].path, "width": width, "height": height,
             "frames": frames, "psnr": psnr(reconstruction, video),
             "ssim": ssim(reconstruction, video)}
        )  # fmt: skip
        if out_path is not None and len(per_clip) <= examples:
            k = len(per_clip) - 1
            write_video(
                out_path / f"example-{k}.gif", to_uint8(_side_by_side(video, reconstruction))
            )
            write_image(out_path / f"example-{k}.png", to_uint8(_strip(video, reconstruction))[0])
    if not per_clip:
        raise ValueError(f"none of the {count} clips of {data} could be read")
    psnrs = [clip["psnr"] for clip in per_clip]
    report = {
        "clips": len(per_clip),
        "skipped": skipped,
        "psnr": sum(psnrs) / len(psnrs),
        "ssim": sum(clip["ssim"] for clip in per_clip) / len(per_clip),
        "min_psnr": min(psnrs),
        "latent_bits_per_pixel": sum(bits) / len(bits),
        "frames_per_second": frames_done / max(seconds, 1e-9),
        "max_area": max_area,
        "max_frames": max_frames,
        "data": str(data),
        "per_clip": per_clip,  # manifest order; sort by "psnr" for the worst
    }
    if out_path is not None:
        save_json(out_path / "report.json", report)
    return report
