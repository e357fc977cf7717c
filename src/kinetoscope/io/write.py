"""Write `T H W 3` uint8 frames to video and image files, deterministically and atomically.

The extension picks the format:

| extension | what is written | why |
| --- | --- | --- |
| `.mp4` | H.264 (libx264), yuv420p, BT.709, faststart | plays in browsers, streams at once |
| `.mkv` | FFV1 in Matroska, RGB (`bgr0`), every frame a keyframe | lossless: reads back bit exact |
| `.gif` | GIF, a palette per frame, exact centisecond timing | previews where video will not play |
| `.png` `.jpg` `.jpeg` `.webp` `.bmp` | one image (Pillow) | a video of one frame |

Why FFV1 for lossless: H.264 lossless in yuv444p is not exact for RGB (the colour transform
rounds), libx264rgb lossless in mp4 plays nowhere anyway, and FFV1 stores RGB exactly. With
`gop_size=1` every FFV1 frame is a keyframe (contexts reset per frame), so a training clip can
start anywhere at the cost of one decoded frame. The Golomb-Rice coder is used rather than the
range coder: on rendered world clips their sizes are within 5%, and Golomb-Rice encodes about
1.2x and decodes about 2x faster (smooth gradients would favour the range coder in size).

Why Pillow plus FFmpeg for GIF: FFmpeg's colour converter cannot produce a palette, and Pillow's
GIF writer merges identical consecutive frames (the frame count changes). So Pillow's fast
octree quantizer makes a 256-colour palette per frame and FFmpeg's GIF encoder writes every
frame, with delays whose running sum stays on the exact frame times (8 fps: 12, 13, 12, ... cs).

Every output is byte-for-byte deterministic: the same frames give the same file (bitexact
container and encoder flags, bitexact colour conversion, a fixed encoder thread count). Files are
written to a temporary name in the target folder and moved into place, so a reader never sees a
half-written file.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from av.codec.context import Flags as CodecFlags
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc, Interpolation
from PIL import Image

from .convert import as_uint8_frames
from .read import IMAGE_EXTENSIONS, as_fraction

_PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}
_PIL_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}
_VIDEO_WRITERS = (".mp4", ".mkv", ".gif")
# Exact swscale arithmetic: the same bytes on every CPU, not just on this one.
_EXACT_SCALE = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.BITEXACT
_BITEXACT = {"fflags": "+bitexact"}  # no encoder version, date or random Matroska UID


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it onto `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _encode(container, stream, frames: Iterator[av.VideoFrame]) -> None:
    for frame in frames:
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))  # flush delayed frames


def _write_mp4(
    path: Path, video: np.ndarray, rate: Fraction, crf: int, preset: str, threads: int
) -> None:
    _, height, width, _ = video.shape
    if height % 2 or width % 2:
        # yuv420p needs even sizes: replicate the last row/column rather than crop content.
        video = np.pad(video, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    options = {"movflags": "+faststart", **_BITEXACT}
    with av.open(str(path), "w", format="mp4", container_options=options) as container:
        stream = container.add_stream(
            "libx264", rate=rate, options={"crf": str(crf), "preset": preset}
        )
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        codec = stream.codec_context
        # x264's output depends on its thread count, never on the machine, when the count is fixed.
        codec.thread_count = threads
        codec.flags |= CodecFlags.bitexact
        # Tag BT.709 so players and browsers convert back to RGB with the matrix we used.
        codec.colorspace, codec.color_range = Colorspace.ITU709, ColorRange.MPEG
        codec.color_primaries, codec.color_trc = ColorPrimaries.BT709, ColorTrc.BT709

        def frames() -> Iterator[av.VideoFrame]:
            for index, rgb in enumerate(video):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                    format="yuv420p",
                    dst_colorspace=Colorspace.ITU709,
                    dst_color_range=ColorRange.MPEG,
                    dst_color_primaries=ColorPrimaries.BT709,
                    dst_color_trc=ColorTrc.BT709,
                    interpolation=_EXACT_SCALE,
                    threads=1,
                )
                frame.pts = index
                yield frame

        _encode(container, stream, frames())


def _bgr0_frame(rgb: np.ndarray) -> av.VideoFrame:
    """An RGB image as a `bgr0` frame, filled by numpy (3x faster than swscale for small frames)."""
    height, width, _ = rgb.shape
    frame = av.VideoFrame(width, height, "bgr0")
    plane = frame.planes[0]
    rows = np.frombuffer(plane, np.uint8).reshape(height, plane.line_size)
    pixels = rows[:, : width * 4].reshape(height, width, 4)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = rgb[..., 2], rgb[..., 1], rgb[..., 0]
    pixels[..., 3] = 0
    return frame


def _write_mkv(path: Path, video: np.ndarray, rate: Fraction) -> None:
    with av.open(str(path), "w", format="matroska", container_options=_BITEXACT) as container:
        # Golomb-Rice coder: on rendered world clips it is within 5% of the range coder in size and
        # encodes 1.2x, decodes 2x faster.
        stream = container.add_stream("ffv1", rate=rate, options={"coder": "0"})
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "bgr0"
        codec = stream.codec_context
        codec.gop_size = 1  # every frame a keyframe: random access for training clips
        codec.thread_count = 1  # clips are small; the data generator runs files in parallel
        codec.flags |= CodecFlags.bitexact

        def frames() -> Iterator[av.VideoFrame]:
            for index, rgb in enumerate(video):
                frame = _bgr0_frame(rgb)
                frame.pts = index
                yield frame

        _encode(container, stream, frames())


def _pal8_frame(rgb: np.ndarray) -> av.VideoFrame:
    image = Image.fromarray(rgb).quantize(
        256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
    )
    palette = np.asarray(image.getpalette(), np.uint8).reshape(-1, 3)
    argb = np.zeros((256, 4), np.uint8)
    argb[:, 0] = 255  # opaque
    argb[: len(palette), 1:] = palette
    return av.VideoFrame.from_ndarray((np.asarray(image), argb), format="pal8")


def _write_gif(path: Path, video: np.ndarray, rate: Fraction) -> None:
    centiseconds = Fraction(1, 100)
    with av.open(str(path), "w", format="gif", container_options=_BITEXACT) as container:
        stream = container.add_stream("gif", rate=rate)
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "pal8"
        stream.codec_context.time_base = centiseconds
        stream.codec_context.flags |= CodecFlags.bitexact

        def frames() -> Iterator[av.VideoFrame]:
            for index, rgb in enumerate(video):
                frame = _pal8_frame(rgb)
                # Round each frame's time, not its delay, so the clip keeps its exact length.
                frame.pts, frame.time_base = round(index / rate / centiseconds), centiseconds
                yield frame

        _encode(container, stream, frames())


def write_image(path: str | os.PathLike, frame: np.ndarray | torch.Tensor) -> Path:
    """Write one `H W 3` uint8 frame as png/jpg/webp/bmp (by extension); returns the path.

    PNG, WebP and BMP are lossless; JPEG is written at quality 95.
    """
    path = Path(path)
    image_format = _PIL_FORMATS.get(path.suffix.lower())
    if image_format is None:
        raise ValueError(
            f"{path.name}: image extension must be one of {sorted(IMAGE_EXTENSIONS)}; "
            "use write_video for videos"
        )
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    frame = np.asarray(frame)
    if frame.ndim != 3:
        hint = " (pass video[i] for one frame of a video)" if frame.ndim == 4 else ""
        raise ValueError(f"an image frame must have shape (H, W, 3), got {frame.shape}{hint}")
    frame = as_uint8_frames(frame[None])[0]
    with _atomic(path) as temporary:
        Image.fromarray(frame).save(
            temporary, format=image_format, **_PIL_OPTIONS.get(image_format, {})
        )
    return path


def write_frames(folder: str | os.PathLike, frames: np.ndarray | torch.Tensor) -> list[Path]:
    """Write each frame of a `T H W 3` uint8 video as a PNG: 000000.png, 000001.png, ..."""
    folder = Path(folder)
    video = as_uint8_frames(frames)
    folder.mkdir(parents=True, exist_ok=True)
    return [write_image(folder / f"{index:06d}.png", frame) for index, frame in enumerate(video)]


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | torch.Tensor,
    fps: float = 8.0,
    *,
    crf: int = 18,
    preset: str = "medium",
    threads: int = 1,
) -> Path:
    """Write `T H W 3` uint8 frames (numpy or torch) to a video or image file; returns the path.

    The extension picks the format (see the module docstring): `.mp4` H.264 for browsers, `.mkv`
    lossless FFV1, `.gif`, or an image extension for a single frame. `crf` (0-51, lower is
    better), `preset` and `threads` apply to `.mp4` only; the output bytes depend on `threads`,
    so keep it fixed where files must match. Odd `.mp4` sizes are padded by one replicated
    row/column to even. Missing parent folders are created.
    """
    path = Path(path)
    video = as_uint8_frames(frames)
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps}")
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        if len(video) != 1:
            raise ValueError(
                f"{path.name} is an image but {len(video)} frames were given; write one frame, "
                "use write_frames(folder, frames) for a folder of PNGs, or a video extension"
            )
        return write_image(path, video[0])
    if suffix not in _VIDEO_WRITERS:
        raise ValueError(
            f"{path.name}: cannot write {suffix or 'files without an extension'}; use one of "
            f"{', '.join(_VIDEO_WRITERS)} or an image extension {sorted(IMAGE_EXTENSIONS)}"
        )
    if suffix == ".mp4" and not 0 <= crf <= 51:
        raise ValueError(f"crf must be in 0..51 (lower is better quality), got {crf}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    rate = as_fraction(fps)
    if suffix == ".gif" and rate > 50:
        raise ValueError(
            f"GIF delays are whole centiseconds and browsers slow down delays under 2 cs, so "
            f"fps={fps:g} cannot be shown; use fps <= 50 or write .mp4"
        )
    with _atomic(path) as temporary:
        if suffix == ".mp4":
            _write_mp4(temporary, video, rate, crf, preset, threads)
        elif suffix == ".mkv":
            _write_mkv(temporary, video, rate)
        else:
            _write_gif(temporary, video, rate)
    return path
