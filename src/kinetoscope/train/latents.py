"""A latent cache on disk: each clip goes through the VAE once, then training reads latents.

One safetensors file per clip holds its normalised posterior `mean` (c, t, h, w) and `std`
(the posterior standard deviation in the same normalised units, for training on posterior
samples later). The file name is a hash of everything the latent depends on:

- the clip: its absolute path, size in bytes and modification time (an edited file is a
  new clip);
- the VAE: a digest of its config and weights, latent statistics included (`vae_identity`);
- the dataset's size choices: `max_area`, `max_frames`, `fps` and the temporal crop, which is
  always `"start"` here, so a clip has exactly one latent;
- the precision of the encoder ("bf16" autocast is 1.4-1.8x faster for the world VAE on a CPU
  with native bf16, docs/benchmarks.md; on world clips it moved latents by 0.3% of their
  spread on average, far below the noise diffusion adds).

Files carry the clip path and VAE identity as metadata and are checked on read; they are
written atomically, so the ranks of one run (each encoding its own share of the clips) and
later runs can share a directory. A clip that cannot be read is logged and left out; it is
tried again the next time the cache is filled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor
from tqdm import tqdm

from kinetoscope.checkpoint import save_tensors
from kinetoscope.data.dataset import ClipDataset
from kinetoscope.train.run import Distributed
from kinetoscope.vae import VideoVAE

log = logging.getLogger("kinetoscope.train")


def vae_identity(vae: VideoVAE) -> str:
    """A digest of the VAE's config and every weight and buffer: the cache's VAE key."""
    digest = hashlib.sha256(json.dumps(asdict(vae.config), sort_keys=True).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()[:32]


class LatentCache:
    """Latents of the clips of a `ClipDataset` (built with `temporal_crop="start"`) on disk.

    `fill` encodes the clips that are not cached yet (optionally only one rank's share);
    `load(i)` returns clip i's latent mean (c, t, h, w); `has(i)` says whether it is cached.
    """

    def __init__(
        self,
        dataset: ClipDataset,
        vae: VideoVAE,
        directory: str | os.PathLike,
        precision: str = "fp32",
    ):
        if dataset.temporal_crop != "start":
            raise ValueError(
                "the latent cache needs ClipDataset(..., temporal_crop='start') so each clip "
                f"has one latent; got temporal_crop={dataset.temporal_crop!r}"
            )
        self.dataset = dataset
        self.vae = vae
        self.directory = Path(directory)
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.precision = precision
        self.identity = vae_identity(vae)
        self.stats = {"disk": 0, "encoded": 0, "skipped": 0}

    def path(self, index: int) -> Path:
        """Where clip `index`'s latent lives (whether or not it is there yet)."""
        record = self.dataset.records[index]
        source = Path(record.path).resolve()
        try:
            stat = source.stat()
            stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        d = self.dataset
        key = "\n".join(
            map(
                str,
                (source, stamp, self.identity, d.max_area, d.max_frames, d.fps, "start")
                + (("bf16",) if self.precision == "bf16" else ()),  # fp32 keys stay as they were
            )
        )
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.directory / digest[:2] / f"{digest}.safetensors"

    def _read(self, index: int) -> Tensor | None:
        path = self.path(index)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                mean = handle.get_tensor("mean")
        except (OSError, SafetensorError) as error:
            log.warning("unreadable cached latent %s (%s): encoding again", path, error)
            return None
        expected = (self.vae.config.latent_channels, *self._latent_size(index))
        if (
            meta.get("vae") != self.identity
            or meta.get("source") != str(Path(self.dataset.records[index].path).resolve())
            or tuple(mean.shape) != expected
        ):
            log.warning("cached latent %s does not match its clip: encoding again", path)
            return None
        return mean

    def _latent_size(self, index: int) -> tuple[int, int, int]:
        return self.vae.latent_size(*self.dataset.item_size(index))

    def has(self, index: int) -> bool:
        """Whether clip `index` has a valid cached latent."""
        return self._read(index) is not None

    def load(self, index: int) -> Tensor:
        """The normalised latent mean (c, t, h, w) of clip `index`; it must be cached."""
        mean = self._read(index)
        if mean is None:
            raise ValueError(f"clip {index} has no cached latent; call fill() first")
        self.stats["disk"] += 1
        return mean

    @torch.no_grad()
    def encode(self, index: int, device: torch.device | str = "cpu") -> bool:
        """Encode clip `index` and store its latent; False if the clip cannot be read."""
        item = self.dataset[index]
        if item is None:  # the dataset has logged why
            self.stats["skipped"] += 1
            return False
        video = item["video"][None].to(device)  # 1 3 T H W
        device_type = torch.device(device).type
        with torch.autocast(device_type, torch.bfloat16, enabled=self.precision == "bf16"):
            mean, logvar = self.vae.moments(video)  # raw posterior, 1 c t h w each
        mean, logvar = mean.float(), logvar.float()
        scale = self.vae.latent_scale.view(-1, 1, 1, 1)
        shift = self.vae.latent_shift.view(-1, 1, 1, 1)
        tensors = {
            "mean": ((mean[0] - shift) / scale).float().cpu(),  # c t h w, normalised
            "std": ((0.5 * logvar[0]).exp() / scale).float().cpu(),  # c t h w, normalised
        }
        meta = {"source": str(Path(item["source"]).resolve()), "vae": self.identity}
        save_tensors(self.path(index), tensors, meta=meta)
        self.stats["encoded"] += 1
        return True

    def fill(
        self,
        indices: list[int] | None = None,
        device: torch.device | str = "cpu",
        progress: bool = True,
    ) -> list[int]:
        """Encode every clip of `indices` (default: all) that is not cached; return those cached.

        The VAE runs in eval mode, in fp32 or under bf16 autocast as `precision` says.
        """
        indices = list(range(len(self.dataset))) if indices is None else indices
        self.vae.eval()
        cached = []
        desc = getattr(self.vae, "cache_label", "encode latents")  # what the bar says it does
        for index in tqdm(indices, desc=desc, unit="clip", disable=not progress):
            if self._read(index) is not None or self.encode(index, device):
                cached.append(index)
        return cached

    def fill_over_ranks(self, ddp: Distributed, device: torch.device, progress: bool) -> list[int]:
        """`fill` over the ranks of a run, each encoding every world_size-th clip; once all
        are done, the clips cached (the same list on every rank). `progress` on rank 0 only."""
        self.fill(list(range(ddp.rank, len(self.dataset), ddp.world_size)), device,
                  progress and ddp.rank == 0)  # fmt: skip
        ddp.barrier()  # every rank's share is on disk before anyone looks for it
        return [i for i in range(len(self.dataset)) if self.has(i)]
