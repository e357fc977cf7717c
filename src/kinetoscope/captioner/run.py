"""Captioning files and manifests: the trained world captioner or a vision endpoint.

Both captioners caption a file (`FileCaptioner.caption_file`): `WorldCaptioner` reads the
first frames the trained captioner saw in training and encodes them with its VAE (or, for a
captioner of pixels, resizes them: `PixelFrames`);
`EndpointCaptioner` (`captioner/endpoint.py`) sends frames sampled over the whole clip to a
vision model. A bare `Captioner` passed below is wrapped in a `WorldCaptioner`.

- `caption_files(captioner, paths)`: (path, caption) for each video or image.
- `recaption(captioner, manifest, out)`: a new manifest whose records keep their captions and
  gain a generated one (`captions["generated"]`, marked in `extra["generated_by"]`). It writes
  record by record, so a killed job continues where it stopped when run again with the same
  `out`; the input manifest is never written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from kinetoscope.captioner.model import Captioner, PixelFrames
from kinetoscope.data.dataset import native_size
from kinetoscope.data.manifest import read_manifest, record_to_json
from kinetoscope.io import VideoReadError, read_video, to_float
from kinetoscope.vae import BUNDLED, VideoVAE, load_vae

GENERATED = "generated"  # the caption level recaptioning adds
MAX_AREA = 256 * 256  # clips are read as the trainer read them


def _latent(vae: VideoVAE, path: str | os.PathLike, frames: int) -> torch.Tensor:
    """The normalised latent (c, t, h, w) of the first `frames` frames of a file, resized and
    cropped to the grid as training clips are."""
    return fitted_latent(vae, read_video(path, max_frames=frames), frames)


def fitted_latent(vae: VideoVAE, video: np.ndarray, frames: int) -> torch.Tensor:
    """The normalised latent (c, t, h, w) of the first `frames` of uint8 frames (T, H, W, 3),
    resized and cropped to the grid as training clips are."""
    video = video[:frames]
    height, width = video.shape[1:3]
    out_w, out_h, out_t, scale = native_size(width, height, len(video), max_area=MAX_AREA,
                                             max_frames=frames)  # fmt: skip
    x = to_float(video[:out_t])[None]  # 1 3 T H W
    if scale != 1:
        size = (round(height * scale), round(width * scale))
        x = torch.nn.functional.interpolate(x[0].transpose(0, 1), size=size, mode="bilinear",
                                            antialias=True).transpose(0, 1)[None]  # fmt: skip
    top, left = (x.shape[-2] - out_h) // 2, (x.shape[-1] - out_w) // 2
    x = x[..., top : top + out_h, left : left + out_w]
    with torch.inference_mode():
        return vae.encode(x)[0].float()


def captioner_vae(captioner: Captioner) -> VideoVAE | PixelFrames:
    """The VAE the captioner was trained on (its meta names it; the bundled world VAE else),
    or the `PixelFrames` of a captioner of pixels."""
    if captioner.config.pixels:
        return PixelFrames(captioner.config.pixels, captioner.config.patch[1])
    name = str(captioner.meta.get("vae", "world"))
    return load_vae(BUNDLED.get(name, name))


class FileCaptioner(Protocol):
    """Anything that captions a video or image file; `name` marks its captions."""

    name: str

    def caption_file(self, path: str | os.PathLike) -> str: ...


class WorldCaptioner:
    """The trained captioner over the latents of the VAE it was trained on (its meta names
    it), or over the resized frames for a captioner of pixels, of the first frames it saw in
    training."""

    name = "kinetoscope captioner"

    def __init__(self, captioner: Captioner, vae: VideoVAE | None = None) -> None:
        self.captioner = captioner
        self.vae = vae or captioner_vae(captioner)
        self.frames = captioner.frames_read()

    def caption_file(self, path: str | os.PathLike) -> str:
        [text] = self.captioner.caption([_latent(self.vae, path, self.frames)])
        return text


def _file_captioner(captioner: Captioner | FileCaptioner, vae: VideoVAE | None) -> FileCaptioner:
    return WorldCaptioner(captioner, vae) if isinstance(captioner, Captioner) else captioner


def caption_files(
    captioner: Captioner | FileCaptioner,
    paths: Sequence[str | os.PathLike],
    vae: VideoVAE | None = None,
) -> Iterator[tuple[str, str]]:
    """(path, caption) of each file, in order; ValueError naming a file that cannot be read."""
    captioner = _file_captioner(captioner, vae)
    for path in paths:
        try:
            text = captioner.caption_file(path)
        except VideoReadError as error:
            raise ValueError(str(error)) from None
        yield str(path), text


def recaption(
    captioner: Captioner | FileCaptioner,
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    vae: VideoVAE | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Write `out`: every record of `manifest` with a generated caption added (see the module
    docstring). Returns counts: captioned now, kept from an earlier run, unreadable."""
    manifest, out = Path(manifest), Path(out)
    if out.exists() and out.resolve() == manifest.resolve():
        raise ValueError(f"--out {out} is the input manifest; write the new one elsewhere")
    records = read_manifest(manifest)
    done = _done(out, records)
    captioner = _file_captioner(captioner, vae)
    counts = {"captioned": 0, "kept": done, "skipped": 0}
    root = out.resolve().parent
    with open(out, "a", encoding="utf-8") as handle:
        for record in tqdm(records[done:], desc="recaption", unit="clip", disable=not progress):
            try:
                text = captioner.caption_file(record.path)
            except VideoReadError:
                counts["skipped"] += 1
                text = ""
            else:
                counts["captioned"] += 1
            record.captions = {**record.captions, GENERATED: text}
            record.extra = {**record.extra, "generated_by": captioner.name}
            handle.write(record_to_json(record, root) + "\n")
            handle.flush()
    return counts


def _done(out: Path, records) -> int:
    """Records of an earlier, stopped run already in `out` (checked to be the same clips)."""
    if not out.exists():
        return 0
    lines = out.read_text(encoding="utf-8").splitlines()
    complete = []
    for line in lines:
        try:
            complete.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by the kill: written again
    if len(complete) > len(records):
        raise ValueError(f"{out} holds more records than the manifest; pass a new --out")
    root = out.resolve().parent
    for i, data in enumerate(complete):
        if Path(root, data["path"]).resolve() != Path(records[i].path).resolve():
            raise ValueError(
                f"{out} line {i + 1} is not the manifest's record {i + 1} ({data['path']}); it "
                "is another job's output: pass a new --out"
            )
    if len(complete) != len(lines):  # drop the cut line before appending
        out.write_text("".join(json.dumps(d) + "\n" for d in complete), encoding="utf-8")
    return len(complete)


__all__ = ["GENERATED", "FileCaptioner", "WorldCaptioner", "caption_files", "recaption"]
