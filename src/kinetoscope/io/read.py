"""Probe and read video and image files into `T H W 3` uint8 RGB arrays (PyAV and Pillow).

Frame indices count decoded frames in presentation order, from 0. Reading from `start > 0` seeks
to the keyframe before it; the index of the first frame decoded after the seek comes from its
timestamp at the stream's average frame rate, which is exact for constant-frame-rate files (all
that `write_video` produces). Pass `seek=False` to count every frame from the first instead.

Images (png, jpg, webp, bmp) are read with Pillow and are videos of one frame, with EXIF
orientation applied. Videos are read with PyAV; a rotation the file asks for (phone videos) is
applied, as players do, and `probe` reports the size as displayed.

`probe` refuses what `read_video` would refuse, so a manifest made from probes holds only files
training can read: frames above Pillow's decompression-bomb limit (`max_pixels`, about
9459 x 9459), and a video whose header claims more frames than the file holds (a truncated
download or copy, whose missing frames fail to read).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.stream import Disposition
from PIL import Image, ImageOps

from .errors import VideoReadError

VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".webm", ".mov", ".avi", ".gif"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})

# Pillow raises these for files it cannot parse; anything else is a bug worth seeing.
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_ORIENTATION_TAG = 0x0112  # EXIF orientation; values 5-8 swap width and height


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns about a file without decoding it all.

    `width` and `height` are as displayed (after any rotation the file asks for). An image has
    `frames == 1`, `fps == 0.0` and `duration == 0.0`: it has no time axis.
    """

    path: str
    frames: int
    fps: float
    width: int
    height: int
    duration: float  # seconds
    codec: str  # decoder name: "h264", "ffv1", "vp9", "gif", "png", "jpeg", ...
    is_image: bool


def as_fraction(value: float | Fraction) -> Fraction:
    """A frame rate as an exact fraction; floats snap to a small ratio (29.97 -> 2997/100)."""
    if isinstance(value, Fraction):
        return value
    return Fraction(value).limit_denominator(10_000)


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise VideoReadError(path, "no such file")
    if path.is_dir():
        raise VideoReadError(path, "it is a folder, not a file")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "the file is empty")
    return path


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def max_pixels() -> int | None:
    """The largest frame (width x height) read: Pillow's decompression-bomb limit, read at call
    time so that raising `PIL.Image.MAX_IMAGE_PIXELS` raises it here too (None: no limit)."""
    return Image.MAX_IMAGE_PIXELS


def _check_pixels(path: Path, width: int, height: int) -> None:
    """VideoReadError for a frame larger than `max_pixels()`, before it is decoded."""
    limit = max_pixels()
    if limit is not None and width * height > limit:
        raise VideoReadError(
            path,
            f"its {width}x{height} frames ({width * height:,} pixels) exceed the {limit:,} "
            "pixels a frame may have (a decompression bomb?); downscale it first",
        )


# ---------------------------------------------------------------------------------------------
# Images


def _open_image(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except _PIL_ERRORS as e:
        raise VideoReadError(path, f"not an image this build can read ({e})") from e


def _probe_image(path: Path) -> VideoInfo:
    with _open_image(path) as image:
        _check_pixels(path, *image.size)  # before load() decodes every pixel
        try:
            width, height = image.size
            codec = (image.format or path.suffix.lstrip(".")).lower()
            if image.format == "JPEG":
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # verify cheaply
            image.load()
            if image.getexif().get(_ORIENTATION_TAG) in (5, 6, 7, 8):
                width, height = height, width
        except _PIL_ERRORS as e:
            raise VideoReadError(path, f"the image does not decode ({e})") from e
    return VideoInfo(str(path), 1, 0.0, width, height, 0.0, codec, True)


def _read_image(path: Path) -> np.ndarray:
    with _open_image(path) as image:
        _check_pixels(path, *image.size)
        try:
            image = ImageOps.exif_transpose(image)  # camera orientation, as viewers show it
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
                # 16-bit greyscale: scale to 8 bits rather than let convert("RGB") clip it.
                grey = np.asarray(image).astype(np.int64).clip(0, 65535)
                grey = ((grey * 255 + 32767) // 65535).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=-1)
            return np.array(image.convert("RGB"))  # alpha is dropped
        except _PIL_ERRORS as e:
            raise VideoReadError(path, f"the image does not decode ({e})") from e


# ---------------------------------------------------------------------------------------------
# Videos


def _open_container(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError) as e:
        raise VideoReadError(path, f"not a media file this build can read ({e})") from e


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    for stream in container.streams.video:
        if not stream.disposition & Disposition.attached_pic:  # skip cover art
            if stream.codec_context is None:
                raise VideoReadError(path, "this build has no decoder for its video codec")
            return stream
    kinds = sorted({s.type for s in container.streams})
    found = f" (it has only {', '.join(kinds)} streams)" if kinds else ""
    raise VideoReadError(path, f"it has no video stream{found}")


def _stream_rate(stream: av.VideoStream) -> Fraction | None:
    """The stream's average frame rate, or the best guess FFmpeg has; None if unknown."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            # Snapped like `as_fraction(probe(path).fps)`, so callers can predict the selection.
            return as_fraction(float(rate))
    return None


def _simplest_between(low: Fraction, high: Fraction) -> Fraction:
    """The fraction with the smallest denominator in [low, high], 0 < low <= high."""
    if math.ceil(low) <= high:
        return Fraction(math.ceil(low))
    whole = math.floor(low)  # low and high both lie in (whole, whole + 1)
    return whole + 1 / _simplest_between(1 / (high - whole), 1 / (low - whole))


def _rotation(frame: av.VideoFrame) -> int:
    """Quarter turns counterclockwise that display the frame as the file asks (0-3)."""
    return round(frame.rotation / 90) % 4 if frame.rotation else 0


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    # One scaler thread: for clip-sized frames thread start-up costs more than it saves.
    rgb = frame.to_ndarray(format="rgb24", threads=1)  # H W 3 uint8
    turns = _rotation(frame)
    return np.rot90(rgb, turns) if turns else rgb


@dataclass
class _Scan:
    first: av.VideoFrame
    packets: int  # non-empty packets in the file
    span: Fraction | None  # seconds from the first packet to the end of the last one


def _scan(stream: av.VideoStream, container, path: Path) -> _Scan:
    """Decode the first frame and demux (never decode) every packet to count them."""
    stream.codec_context.thread_count = 1  # no frame-thread delay: one packet in, one frame out
    first = None
    packets = 0
    begin = end = None
    for packet in container.demux(stream):
        if first is None:
            decoded = packet.decode()  # the empty packets at the end flush the decoder
            if decoded:
                first = decoded[0]
        if packet.size:
            packets += 1
            if packet.pts is not None:
                begin = packet.pts if begin is None else min(begin, packet.pts)
                stop = packet.pts + (packet.duration or 0)
                end = stop if end is None else max(end, stop)
    if first is None:
        raise VideoReadError(path, "no video frame decodes")
    span = None
    if begin is not None and end > begin and stream.time_base:
        span = (end - begin) * stream.time_base
    return _Scan(first, packets, span)


def _probe_video(path: Path) -> VideoInfo:
    with _open_container(path) as container:
        stream = _video_stream(container, path)
        _check_pixels(path, stream.codec_context.width, stream.codec_context.height)
        codec = stream.codec_context.name
        try:
            scan = _scan(stream, container, path)
        except av.FFmpegError as e:
            raise VideoReadError(path, f"its {codec} video does not decode ({e})") from e
        if stream.frames and scan.packets < stream.frames:
            raise VideoReadError(
                path,
                f"its header claims {stream.frames} frames but the file holds {scan.packets}: "
                "it is truncated (an interrupted download or copy?); copy it again",
            )
        frames = stream.frames or scan.packets
        if frames <= 0:
            raise VideoReadError(path, "its video stream has no frames")
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif scan.span and not stream.frames:  # no stored count: the packets span the duration
            duration = float(scan.span)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        rate = _stream_rate(stream)
        if codec == "gif" and duration and stream.time_base:
            # GIF delays are rounded to centiseconds (8 fps: 12, 13, 12, ...) and FFmpeg's rate
            # comes from the first delay only: take the simplest rate that fits the whole span.
            tick = Fraction(stream.time_base)
            span = as_fraction(duration)
            fps = float(_simplest_between(frames / (span + tick), frames / max(span - tick, tick)))
        elif rate:
            fps = float(rate)
        else:
            fps = frames / duration if duration else 0.0
        if not duration and fps:
            duration = frames / fps
        width, height = scan.first.width, scan.first.height
        if _rotation(scan.first) % 2:
            width, height = height, width
    return VideoInfo(str(path), frames, fps, width, height, duration, codec, False)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Metadata of a video or image file, checked by decoding its first frame.

    The frame count comes from the container when it stores one (mp4, mov, avi), otherwise from
    counting packets. Every packet of a video is demuxed (the file is read, nothing past the
    first frame is decoded), so a file that holds fewer frames than its header claims is caught.
    Raises `VideoReadError` for a missing, empty, non-media, undecodable, truncated or frameless
    file, one without a video stream, or one whose frames are larger than `max_pixels()`.
    """
    path = _existing_file(path)
    return _probe_image(path) if _is_image(path) else _probe_video(path)


def _wanted(
    start: int, end: int | None, step: int, ratio: Fraction | None, max_frames: int | None
) -> Iterator[int]:
    """Source frame indices to output, in order; repeated where upsampling in time."""
    k = 0
    while max_frames is None or k < max_frames:
        # ratio = source fps / target fps: output k shows the source frame on screen at k / fps.
        index = start + (k * step if ratio is None else math.floor(k * ratio))
        if end is not None and index >= end:
            return
        yield index
        k += 1


def _indexed_frames(
    container, stream: av.VideoStream, start: int, rate: Fraction | None, seek: bool
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Decoded frames with their indices, seeking near `start` where that is safe."""
    time_base = stream.time_base
    # GIF frames are drawn over each other and GIF files are small: always decode from the top.
    if seek and start > 0 and rate and time_base and stream.codec_context.name != "gif":
        origin = stream.start_time or 0
        # Aim half a frame past `start`: its timestamp may be rounded either way (mkv stores
        # milliseconds), and a backward seek then lands on `start` itself if it is a keyframe.
        target = origin + math.floor((start + Fraction(1, 2)) / rate / time_base)
        try:
            container.seek(target, stream=stream, backward=True)
            frames = container.decode(stream)
            first = next(frames, None)
        except av.FFmpegError:
            first = None
        if first is not None and first.pts is not None:
            index = round((first.pts - origin) * time_base * rate)
            if index <= start:
                yield index, first
                yield from enumerate(frames, index + 1)
                return
        # The seek failed or landed past `start` (a sparse or broken index): decode from the top.
        container.seek(0)
    yield from enumerate(container.decode(stream))


def _check_range(
    start: int, end: int | None, step: int, fps: float | None, max_frames: int | None
) -> None:
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if end is not None and end <= start:
        raise ValueError(f"end must be greater than start (or None), got start={start} end={end}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if fps is not None:
        if not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"fps must be a positive number, got {fps}")
        if step != 1:
            raise ValueError(
                "give either fps (resample in time) or step (every k-th frame), not both"
            )
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 (or None), got {max_frames}")


def _read_video_frames(
    path: Path,
    start: int,
    end: int | None,
    step: int,
    fps: float | None,
    max_frames: int | None,
    seek: bool,
) -> list[np.ndarray]:
    with _open_container(path) as container:
        stream = _video_stream(container, path)
        _check_pixels(path, stream.codec_context.width, stream.codec_context.height)
        rate = _stream_rate(stream)
        ratio = None
        if fps is not None:
            if stream.codec_context.name == "gif":
                rate = as_fraction(probe(path).fps)  # per-frame delays: use the measured rate
            if not rate:
                raise VideoReadError(path, f"its frame rate is unknown, so fps={fps} cannot apply")
            ratio = rate / as_fraction(fps)
        wanted = _wanted(start, end, step, ratio, max_frames)
        want = next(wanted, None)
        out: list[np.ndarray] = []
        codec = stream.codec_context.name
        try:
            for index, frame in _indexed_frames(container, stream, start, rate, seek):
                if index < want:
                    continue  # decoded only because later frames depend on it
                assert index == want, (index, want)
                rgb = _to_rgb(frame)
                while want == index:
                    out.append(rgb)
                    want = next(wanted, None)
                if want is None:
                    break  # nothing more is needed: stop decoding
        except av.FFmpegError as e:
            raise VideoReadError(path, f"its {codec} video does not decode ({e})") from e
    return out


def read_video(
    path: str | os.PathLike,
    *,
    start: int = 0,
    end: int | None = None,
    step: int = 1,
    fps: float | None = None,
    max_frames: int | None = None,
    seek: bool = True,
) -> np.ndarray:
    """Read a video (or an image, as one frame) into `T H W 3` uint8 RGB.

    start, end: the source frame range [start, end); `end=None` reads to the last frame.
    step: keep every step-th frame of the range.
    fps: resample to this frame rate instead: output frame k is the source frame on screen at
        time k / fps after frame `start`, so frames are dropped (24 -> 8 keeps every third) or
        repeated (8 -> 24 shows each three times). Cannot be combined with `step != 1`.
    max_frames: stop after this many output frames.
    seek: seek to the keyframe before `start` instead of decoding from the first frame.

    Decoding stops after the last frame needed. Raises `VideoReadError` for any file that cannot
    be read, and when the range selects no frame (e.g. `start` past the end).
    """
    _check_range(start, end, step, fps, max_frames)
    path = _existing_file(path)
    if _is_image(path):
        if start > 0:
            raise VideoReadError(
                path, f"an image has one frame (index 0), so start={start} is past it"
            )
        return _read_image(path)[None]
    frames = _read_video_frames(path, start, end, step, fps, max_frames, seek)
    if not frames:
        raise VideoReadError(path, f"no frames at or after start={start} (it has fewer frames)")
    return np.stack(frames)
