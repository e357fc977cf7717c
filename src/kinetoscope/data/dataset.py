"""Clips at native size from a manifest: the size rules, the dataset and its collate function.

The rules (`native_size`), applied per video and never to a fixed shape:

- frames: at most `max_frames`, rounded down to `1 + 4k` (the VAE codes the first frame alone,
  then groups of 4), so 7 frames give 5 and an image stays 1;
- area: a video larger than `max_area` pixels is downscaled by one factor for both sides,
  keeping its aspect ratio; a smaller one is never upscaled;
- width and height: cropped (centered) down to multiples of 16, which removes at most 15
  pixels per side in total, so content is never squashed.

`ClipDataset` is a plain map-style dataset: use it with
`DataLoader(dataset, batch_size=..., collate_fn=collate_clips, num_workers=k)`. A file that
cannot be read at training time is logged (logger `kinetoscope.data`) and its item is `None`;
`collate_clips` counts those in the batch's `"skipped"`, which is how the count reaches the
training loop across worker processes (each worker holds its own copy of `dataset.skipped`).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kinetoscope.data.manifest import ManifestRecord, read_manifest
from kinetoscope.io import VideoReadError, read_video, to_float
from kinetoscope.io.read import as_fraction

log = logging.getLogger("kinetoscope.data")

CAPTION_RANDOM = "random"
TEMPORAL_CROPS = ("random", "start")


def round_frames(frames: int) -> int:
    """The largest `1 + 4k` that is at most `frames` (>= 1)."""
    if frames < 1:
        raise ValueError(f"a clip needs at least 1 frame, got {frames}")
    return 1 + 4 * ((frames - 1) // 4)


def _resized(width: int, height: int, max_area: int) -> tuple[int, int, float]:
    """(width, height, scale) after the area rule: one factor for both sides, never above 1."""
    if width * height <= max_area:
        return width, height, 1.0
    scale = math.sqrt(max_area / (width * height))
    out_width, out_height = round(width * scale), round(height * scale)
    if out_width * out_height > max_area:
        # Rounding both sides up can overshoot the budget; rounding down never does.
        out_width, out_height = math.floor(width * scale), math.floor(height * scale)
    return out_width, out_height, scale


def native_size(
    width: int,
    height: int,
    frames: int,
    *,
    max_area: int,
    max_frames: int,
    multiple: int = 16,
) -> tuple[int, int, int, float]:
    """(out_width, out_height, out_frames, scale) of a video under the native-size rules.

    `scale` (<= 1) is the downscale factor of both sides, `sqrt(max_area / (width * height))`
    when the video is larger than `max_area`, else 1; the resized size is rounded, then
    cropped (centered) down to multiples of `multiple`. `out_frames` is
    `min(frames, max_frames)` rounded down to `1 + 4k`. A video under `multiple` pixels on a
    side after scaling raises ValueError: it would have to be upscaled.
    """
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    if max_frames < 1 or (max_frames - 1) % 4:
        raise ValueError(f"max_frames must be 1 + 4k (1, 5, 9, ..., 65), got {max_frames}")
    if multiple < 1 or max_area < multiple * multiple:
        raise ValueError(
            f"max_area must be at least {multiple}x{multiple} = {multiple * multiple}, "
            f"got {max_area}"
        )
    resized_width, resized_height, scale = _resized(width, height, max_area)
    if resized_width < multiple or resized_height < multiple:
        scaled = "" if scale == 1 else f" (scaled to {resized_width}x{resized_height})"
        raise ValueError(
            f"a {width}x{height} video{scaled} is smaller than {multiple}x{multiple} and would "
            "have to be upscaled; drop it from the manifest or raise max_area"
        )
    out_width = resized_width // multiple * multiple
    out_height = resized_height // multiple * multiple
    return out_width, out_height, round_frames(min(frames, max_frames)), scale


def frames_at_fps(frames: int, source_fps: float, fps: float | None) -> int:
    """How many frames a `frames`-long video has when sampled at `fps` (never more: no upsampling).

    Output frame k is the source frame on screen at time k / fps, source frame
    `floor(k * source_fps / fps)`, as `read_video(..., fps=fps)` picks it; `fps=None` (or one
    at least the source's, or an image's 0) keeps every frame.
    """
    if fps is None or fps >= source_fps or frames <= 1:
        return frames
    ratio = as_fraction(source_fps) / as_fraction(fps)  # exact, like read_video's
    return math.ceil(frames / ratio)


class ClipDataset(torch.utils.data.Dataset):
    """Clips of a manifest at native size (see the module docstring for the rules).

    Each item is `{"video": (3, T, H, W) float32 in [-1, 1], "caption": str, "captions": dict,
    "source": str, "truth": str | None, "index": int}`, or `None` when the file cannot be read
    (logged; `self.skipped` counts them in this process).

    `fps`: sample videos at this rate (only ever lowering it; `None` keeps the source's).
    `caption_level`: `"random"` picks one of the record's levels per item and epoch; a named
    level falls back to the record's first non-empty level when it lacks that one; a record
    with no caption gives `""`. `temporal_crop`: where a window of `max_frames` starts in a
    longer video, `"random"` or `"start"`. Random choices depend only on `(seed, epoch,
    index)`, so they are the same in any worker; `set_epoch` moves them on.
    """

    def __init__(
        self,
        manifest: str | os.PathLike | list[ManifestRecord],
        *,
        max_area: int = 256 * 256,
        max_frames: int = 65,
        fps: float | None = None,
        caption_level: str = CAPTION_RANDOM,
        temporal_crop: str = "random",
        seed: int = 0,
    ) -> None:
        records = list(manifest) if isinstance(manifest, list) else read_manifest(manifest)
        if not records:
            raise ValueError("the manifest has no records; index a folder with files in it first")
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be positive or None (keep each video's), got {fps}")
        if temporal_crop not in TEMPORAL_CROPS:
            raise ValueError(
                f"temporal_crop must be one of {TEMPORAL_CROPS}, not {temporal_crop!r}"
            )
        if seed < 0:
            raise ValueError(f"seed must be 0 or more, got {seed}")
        # Options first, so an error in them is not blamed on the first clip.
        native_size(16, 16, 1, max_area=max_area, max_frames=max_frames)
        # Sizes come from the manifest alone, so a sampler can pack without decoding anything.
        # A record no size fits (e.g. a panorama whose short side would fall under 16 pixels)
        # is left out and logged, like a file that cannot be read: one never sinks the rest.
        self._sizes = []
        self.rejected: list[tuple[ManifestRecord, str]] = []
        kept = []
        for record in records:
            try:
                size = native_size(
                    record.width,
                    record.height,
                    frames_at_fps(record.frames, record.fps, fps),
                    max_area=max_area,
                    max_frames=max_frames,
                )
            except ValueError as error:
                self.rejected.append((record, str(error)))
                log.warning("leaving out %s: %s", record.path, error)
                continue
            kept.append(record)
            self._sizes.append(size)
        if not kept:
            record, reason = self.rejected[0]
            raise ValueError(
                f"no clip of the manifest fits the size rules (first: {record.path}: {reason})"
            )
        self.records = kept
        self.max_area = max_area
        self.max_frames = max_frames
        self.fps = fps
        self.caption_level = caption_level
        self.temporal_crop = temporal_crop
        self.seed = seed
        self.epoch = 0
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Move the random choices (caption level, window start) on to another epoch."""
        self.epoch = epoch

    def item_size(self, index: int) -> tuple[int, int, int]:
        """(frames, height, width) of item `index` after the rules, from the manifest alone."""
        width, height, frames, _ = self._sizes[index]
        return frames, height, width

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        # One independent stream per choice, so e.g. the caption does not depend on the crop mode.
        return np.random.default_rng([self.seed, self.epoch, index, stream])

    def caption(self, index: int, level_of: int | None = None) -> str:
        """The caption item `index` carries this epoch (see `caption_level`); with `level_of`,
        at the level item `level_of` draws (a mirror twin takes its original's level)."""
        captions = {k: v for k, v in self.records[index].captions.items() if v}
        if not captions:
            return ""
        if self.caption_level == CAPTION_RANDOM:
            levels = sorted(captions)
            draw = self._rng(index if level_of is None else level_of, 0).integers(len(levels))
            return captions[levels[draw]]
        return captions.get(self.caption_level, next(iter(captions.values())))

    def _window(self, index: int, available: int, frames: int) -> int:
        """First frame (at the dataset's fps) of a `frames`-long window in `available` frames."""
        if self.temporal_crop == "start" or available <= frames:
            return 0
        return int(self._rng(index, 1).integers(available - frames + 1))

    def _skip(self, record: ManifestRecord, reason: str) -> None:
        self.skipped += 1
        log.warning("skipping %s: %s (%d skipped so far)", record.path, reason, self.skipped)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        index = range(len(self))[index]  # negative indices too; the seeds need the positive one
        record = self.records[index]
        width, height, frames, scale = self._sizes[index]
        available = frames_at_fps(record.frames, record.fps, self.fps)
        first = self._window(index, available, frames)
        resample = self.fps is not None and self.fps < record.fps
        # Output frame k of read_video(start=s, fps=f) is source frame s + floor(k * ratio), so
        # starting at floor(first * ratio) stays within the `available` frames of the whole video.
        ratio = as_fraction(record.fps) / as_fraction(self.fps) if resample else 1
        try:
            video = read_video(
                record.path,
                start=math.floor(first * ratio),
                fps=self.fps if resample else None,
                max_frames=frames,  # decoding stops after the last frame needed
            )  # T H W 3 uint8
        except VideoReadError as error:
            self._skip(record, error.reason)
            return None
        if video.shape[0] < frames:
            self._skip(
                record,
                f"decoded {video.shape[0]} of the {frames} frames the manifest promises "
                "from there; re-index the folder",
            )
            return None
        if video.shape[1:3] != (record.height, record.width):
            self._skip(
                record,
                f"decoded {video.shape[2]}x{video.shape[1]} frames where the "
                f"manifest says {record.width}x{record.height}; re-index the folder",
            )
            return None
        clip = torch.from_numpy(video[:frames]).permute(0, 3, 1, 2)  # T 3 H W uint8
        if scale < 1:
            # Antialiased downscale on uint8 (T 3 H W): no full-size float copy, and about 25x
            # faster than on float for 65 frames of 720p on a 2-core CPU.
            resized = _resized(record.width, record.height, self.max_area)
            clip = F.interpolate(
                clip, size=(resized[1], resized[0]), mode="bilinear", antialias=True
            )
        top = (clip.shape[2] - height) // 2
        left = (clip.shape[3] - width) // 2
        clip = clip[:, :, top : top + height, left : left + width]  # T 3 H W uint8, centered
        return {
            "video": to_float(clip.permute(0, 2, 3, 1)),  # 3 T H W float in [-1, 1]
            "caption": self.caption(index),
            "captions": dict(record.captions),
            "source": record.path,
            "truth": record.truth,
            "index": index,
        }


def collate_clips(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """A batch of variable-size clips: lists, not a stacked tensor (packing happens later).

    `"skipped"` counts the unreadable items (`None`) of the batch; summing it in the training
    loop counts skips across all DataLoader workers.
    """
    kept = [item for item in items if item is not None]
    return {
        "videos": [item["video"] for item in kept],
        "captions": [item["caption"] for item in kept],
        "sources": [item["source"] for item in kept],
        "truths": [item["truth"] for item in kept],
        "indices": [item["index"] for item in kept],
        "skipped": len(items) - len(kept),
    }
