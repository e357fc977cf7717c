"""Video and image I/O: round trips, probing, frame selection, determinism, errors, conversions."""

from __future__ import annotations

import pickle
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from kinetoscope.io import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    VideoInfo,
    VideoReadError,
    as_fraction,
    probe,
    read_video,
    to_float,
    to_uint8,
    write_frames,
    write_image,
    write_video,
)

# ---------------------------------------------------------------------------------------------
# Helpers


def noise(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def scene(frames: int, height: int, width: int) -> np.ndarray:
    """Smooth, video-like content: gradients with two moving squares."""
    yy, xx = np.mgrid[0:height, 0:width]
    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        video[t, ..., 0] = 40 + yy * 120 // height
        video[t, ..., 1] = 60 + (xx + 3 * t) * 100 // (width + 3 * frames)
        video[t, ..., 2] = 180 - yy * 80 // height
        x0 = (2 * t) % (width - width // 4)
        video[t, height // 6 : height // 2, x0 : x0 + width // 4] = (220, 40, 40)
        video[t, height // 2 : 5 * height // 6, width // 2 : width // 2 + width // 5] = (
            30,
            200,
            90,
        )
    return video


# Frames whose flat grey level encodes their index: index i is level 16 + 5 i (i < 44).
def index_video(frames: int, height: int = 16, width: int = 24) -> np.ndarray:
    levels = 16 + 5 * np.arange(frames)
    assert levels.max() < 256
    return np.broadcast_to(levels[:, None, None, None], (frames, height, width, 3)).astype(np.uint8)


def indices(video: np.ndarray) -> list[int]:
    means = video.reshape(len(video), -1).mean(axis=1)
    return np.rint((means - 16) / 5).astype(int).tolist()


def pyav_write(
    path: Path,
    codec: str,
    frames: np.ndarray,
    fps: int = 24,
    pix_fmt: str = "yuv420p",
    options: dict | None = None,
) -> Path:
    """Write a fixture with PyAV directly, for formats `write_video` does not produce."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def ffv1_with_garbage(path: Path, frames: int, good: range) -> Path:
    """An FFV1 .mkv whose packets outside `good` are garbage: decoding one of them fails.

    Reading succeeds only if the reader never decodes a packet it does not need, which makes
    "decodes only what is needed" testable without timing anything.
    """
    video = index_video(frames)
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "bgr0"
        stream.codec_context.gop_size = 1
        for index, rgb in enumerate(video):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                if packet.pts not in good:
                    bad = av.Packet(b"this is not an ffv1 frame" * 4)
                    bad.pts, bad.dts, bad.time_base = packet.pts, packet.dts, packet.time_base
                    bad.stream, bad.is_keyframe = stream, True
                    packet = bad
                container.mux(packet)
        container.mux(stream.encode(None))
    return path


def stream_of(path: Path) -> tuple[str, str, int]:
    with av.open(str(path)) as container:
        codec = container.streams.video[0].codec_context
        return codec.name, codec.pix_fmt, int(codec.colorspace)


# ---------------------------------------------------------------------------------------------
# Lossless .mkv


@pytest.mark.parametrize("size", [(64, 96), (131, 250), (3, 5)])
def test_mkv_round_trip_is_bit_exact(tmp_path, size):
    video = noise(5, *size)
    path = write_video(tmp_path / "clip.mkv", video, fps=8)
    back = read_video(path)
    assert back.dtype == np.uint8 and back.shape == video.shape
    assert np.array_equal(back, video)
    assert stream_of(path)[0] == "ffv1"


def test_mkv_every_frame_is_a_keyframe(tmp_path):
    path = write_video(tmp_path / "clip.mkv", scene(9, 32, 48))
    with av.open(str(path)) as container:
        keyframes = [p.is_keyframe for p in container.demux(video=0) if p.size]
    assert keyframes == [True] * 9


def test_write_accepts_torch_tensors_and_creates_folders(tmp_path):
    video = noise(3, 8, 10)
    path = write_video(tmp_path / "a" / "b" / "clip.mkv", torch.from_numpy(video))
    assert np.array_equal(read_video(path), video)


# ---------------------------------------------------------------------------------------------
# Browser .mp4


def test_mp4_round_trip_is_close_and_browser_playable(tmp_path):
    video = scene(9, 64, 96)
    path = write_video(tmp_path / "clip.mp4", video, fps=8)
    back = read_video(path)
    assert back.shape == video.shape
    # crf 18 on smooth content: measured about 1.5 grey levels of mean absolute error.
    error = np.abs(back.astype(np.int16) - video).mean()
    assert error < 3.0, error
    codec, pix_fmt, colorspace = stream_of(path)
    assert (codec, pix_fmt) == ("h264", "yuv420p")
    assert colorspace == int(av.video.reformatter.Colorspace.ITU709)
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat"), "faststart puts the index first"


def test_mp4_odd_size_is_padded_by_edge_replication(tmp_path):
    video = scene(3, 63, 95)
    path = write_video(tmp_path / "odd.mp4", video)
    back = read_video(path)
    assert back.shape == (3, 64, 96, 3)
    error = np.abs(back[:, :63, :95].astype(np.int16) - video).mean()
    assert error < 4.0, error
    # The added row and column repeat their neighbours (up to coding error).
    assert np.abs(back[:, 63].astype(np.int16) - back[:, 62]).mean() < 4.0
    assert np.abs(back[:, :, 95].astype(np.int16) - back[:, :, 94]).mean() < 4.0
    assert probe(path).width == 96 and probe(path).height == 64


# ---------------------------------------------------------------------------------------------
# GIF and images


def test_gif_round_trip_keeps_every_frame_and_colors(tmp_path):
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 255), (250, 250, 10), (128, 128, 128)]
    video = np.stack([np.full((20, 30, 3), color, np.uint8) for color in colors])
    video[:, 5:10, 5:10] = (255, 255, 255)
    path = write_video(tmp_path / "clip.gif", video, fps=8)
    back = read_video(path)
    # The two identical frames stay two frames (Pillow's GIF writer would merge them).
    assert back.shape == video.shape
    assert np.abs(back.astype(np.int16) - video).mean() < 2.0
    info = probe(path)
    assert (info.frames, info.fps, info.codec) == (6, 8.0, "gif")
    assert info.duration == pytest.approx(6 / 8, abs=0.011)


def test_gif_fps_resampling_uses_the_real_frame_times(tmp_path):
    path = write_video(tmp_path / "clip.gif", index_video(12), fps=8)  # delays 12, 13, 12, ... cs
    assert indices(read_video(path, fps=8)) == list(range(12))
    assert indices(read_video(path, fps=4)) == list(range(0, 12, 2))


def test_png_and_jpg_read_as_one_frame(tmp_path):
    frame = scene(1, 24, 40)[0]
    png = write_image(tmp_path / "frame.png", frame)
    jpg = write_image(tmp_path / "frame.jpg", frame)
    assert np.array_equal(read_video(png), frame[None])
    back = read_video(jpg)
    assert back.shape == (1, 24, 40, 3)
    assert np.abs(back.astype(np.int16) - frame).mean() < 4.0
    for path, codec in ((png, "png"), (jpg, "jpeg")):
        assert probe(path) == VideoInfo(str(path), 1, 0.0, 40, 24, 0.0, codec, True)


def test_image_modes_are_converted_to_rgb(tmp_path):
    grey = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    back = read_video(tmp_path / "grey.png")
    assert back.shape == (1, 8, 8, 3) and np.array_equal(back[0, ..., 1], grey)
    deep = (grey.astype(np.uint16) * 257).astype(np.uint16)  # 16-bit grey, same picture
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert np.array_equal(read_video(tmp_path / "deep.png")[0, ..., 0], grey)


def test_jpeg_exif_orientation_is_applied(tmp_path):
    frame = np.zeros((20, 40, 3), np.uint8)
    frame[:4, :4] = 255  # top-left marker
    image = Image.fromarray(frame)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    image.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    info = probe(tmp_path / "photo.jpg")
    assert (info.width, info.height) == (20, 40)
    back = read_video(tmp_path / "photo.jpg")[0]
    assert back.shape == (40, 20, 3)
    assert back[:4, -4:].mean() > 200 and back[:4, :4].mean() < 50  # marker now top-right


def test_image_extension_with_many_frames_says_what_to_use(tmp_path):
    with pytest.raises(ValueError, match="write_frames"):
        write_video(tmp_path / "clip.png", noise(2, 4, 4))
    one = write_video(tmp_path / "one.png", noise(1, 4, 4))
    assert np.array_equal(read_video(one), noise(1, 4, 4))


def test_write_frames_names_and_contents(tmp_path):
    video = noise(3, 6, 7)
    paths = write_frames(tmp_path / "frames", video)
    assert [p.name for p in paths] == ["000000.png", "000001.png", "000002.png"]
    assert np.array_equal(np.concatenate([read_video(p) for p in paths]), video)


# ---------------------------------------------------------------------------------------------
# Other containers, written with PyAV


@pytest.mark.parametrize(
    ("name", "codec", "decoder"),
    [
        ("clip.webm", "libvpx-vp9", "vp9"),
        ("clip.avi", "mpeg4", "mpeg4"),
        ("clip.mov", "mpeg4", "mpeg4"),
    ],
)
def test_other_containers_read(tmp_path, name, codec, decoder):
    video = scene(12, 48, 64)
    path = pyav_write(tmp_path / name, codec, video, fps=24, options={"b": "2000000", "crf": "20"})
    back = read_video(path)
    assert back.shape == video.shape
    assert np.abs(back.astype(np.int16) - video).mean() < 6.0
    info = probe(path)
    assert (info.frames, info.fps, info.codec) == (12, 24.0, decoder)
    assert (info.width, info.height) == (64, 48)
    assert info.duration == pytest.approx(0.5, abs=0.01)
    indexed = pyav_write(tmp_path / f"indexed{path.suffix}", codec, index_video(20))
    assert indices(read_video(indexed, start=9, end=12)) == [9, 10, 11]


def test_extension_sets():
    assert {".mp4", ".mkv", ".webm", ".mov", ".avi", ".gif"} == VIDEO_EXTENSIONS
    assert {".png", ".jpg", ".jpeg"} <= IMAGE_EXTENSIONS
    assert not VIDEO_EXTENSIONS & IMAGE_EXTENSIONS


# ---------------------------------------------------------------------------------------------
# Probe


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_probe_reports_frames_rate_size_codec(tmp_path, suffix):
    path = write_video(tmp_path / f"clip{suffix}", scene(17, 48, 64), fps=12)
    info = probe(path)
    assert (info.frames, info.fps, info.width, info.height) == (17, 12.0, 64, 48)
    assert info.codec == {".mkv": "ffv1", ".mp4": "h264"}[suffix]
    assert info.duration == pytest.approx(17 / 12, abs=0.01)
    assert info.path == str(path) and not info.is_image


def test_probe_decodes_only_the_first_frame(tmp_path):
    path = ffv1_with_garbage(tmp_path / "clip.mkv", 30, good=range(1))
    info = probe(path)  # counts all 30 packets but decodes only packet 0
    assert info.frames == 30 and info.fps == 24.0
    with pytest.raises(VideoReadError, match="does not decode"):
        read_video(path)  # the control: decoding everything hits the garbage


def test_rotation_metadata_is_applied(tmp_path):
    frame = np.zeros((1, 32, 48, 3), np.uint8)
    frame[:, :8, :8] = 255  # top-left marker
    path = write_video(tmp_path / "plain.mp4", np.repeat(frame, 3, axis=0))
    data = bytearray(path.read_bytes())
    identity = struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    turn = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)  # 90° clockwise
    at = data.index(identity, data.index(b"tkhd"))
    data[at : at + 36] = turn
    rotated = tmp_path / "rotated.mp4"
    rotated.write_bytes(bytes(data))
    info = probe(rotated)
    assert (info.width, info.height) == (32, 48)
    back = read_video(rotated)
    assert back.shape == (3, 48, 32, 3)
    assert back[:, :8, -8:].mean() > 200 and back[:, :8, :8].mean() < 50  # marker now top-right


# ---------------------------------------------------------------------------------------------
# Frame selection


@pytest.fixture(scope="module")
def indexed_mkv(tmp_path_factory) -> Path:
    """30 lossless frames at 24 fps; frame i has grey level 16 + 5 i."""
    return write_video(tmp_path_factory.mktemp("io") / "indexed.mkv", index_video(30), fps=24)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, list(range(30))),
        ({"start": 5, "end": 12}, list(range(5, 12))),
        ({"step": 4}, list(range(0, 30, 4))),
        ({"start": 7, "step": 4}, [7, 11, 15, 19, 23, 27]),
        ({"start": 3, "end": 20, "step": 5}, [3, 8, 13, 18]),
        ({"max_frames": 4}, [0, 1, 2, 3]),
        ({"start": 20, "max_frames": 100}, list(range(20, 30))),
        ({"start": 25, "end": 1000}, [25, 26, 27, 28, 29]),
        ({"fps": 8}, list(range(0, 30, 3))),  # 24 -> 8 keeps every third frame
        ({"fps": 8, "start": 4, "end": 14}, [4, 7, 10, 13]),
        ({"fps": 12, "max_frames": 3}, [0, 2, 4]),
        ({"fps": 48, "end": 3}, [0, 0, 1, 1, 2, 2]),  # upsampling repeats frames
        ({"fps": 24}, list(range(30))),
        ({"fps": 10}, [0, 2, 4, 7, 9, 12, 14, 16, 19, 21, 24, 26, 28]),  # frame on screen at k/10 s
    ],
)
def test_frame_selection(indexed_mkv, kwargs, expected):
    assert indices(read_video(indexed_mkv, **kwargs)) == expected
    assert indices(read_video(indexed_mkv, seek=False, **kwargs)) == expected


@pytest.mark.parametrize("fps", [30000 / 1001, 12.5])
def test_fractional_frame_rates(tmp_path, fps):
    path = write_video(tmp_path / "ntsc.mkv", index_video(40), fps=fps)  # mkv keeps milliseconds
    info = probe(path)
    assert as_fraction(info.fps) == as_fraction(fps)
    assert indices(read_video(path, start=13, end=17)) == [13, 14, 15, 16]  # seek lands exactly
    assert indices(read_video(path, fps=fps)) == list(range(40))
    assert indices(read_video(path, fps=fps / 3, start=1, max_frames=4)) == [1, 4, 7, 10]


def test_as_fraction_snaps_float_rates():
    assert as_fraction(30000 / 1001) == Fraction(30000, 1001)
    assert as_fraction(29.97) == Fraction(2997, 100)
    assert as_fraction(8.0) == 8 and as_fraction(Fraction(1, 3)) == Fraction(1, 3)


def test_seeking_skips_and_decoding_stops(tmp_path):
    path = ffv1_with_garbage(tmp_path / "clip.mkv", 30, good=range(10, 20))
    # Seeking jumps over the garbage before 12, stopping after 14 avoids the garbage after 19.
    assert indices(read_video(path, start=12, end=15)) == [12, 13, 14]
    assert indices(read_video(path, start=10, fps=12, max_frames=5)) == [10, 12, 14, 16, 18]
    with pytest.raises(VideoReadError):
        read_video(path, start=12, end=15, seek=False)  # the control: from the top hits garbage
    with pytest.raises(VideoReadError):
        read_video(path, start=12, end=21)


def test_seeking_inside_groups_of_pictures_with_b_frames(tmp_path):
    options = {"g": "6", "keyint_min": "6", "bf": "2", "sc_threshold": "0", "crf": "10"}
    path = pyav_write(tmp_path / "gop.mp4", "libx264", index_video(40, 32, 48), options=options)
    for start in (1, 5, 6, 7, 13, 25, 39):
        expected = list(range(start, min(start + 4, 40)))
        assert indices(read_video(path, start=start, end=start + 4)) == expected
        assert indices(read_video(path, start=start, end=start + 4, seek=False)) == expected


def test_start_past_the_end_is_a_read_error(indexed_mkv, tmp_path):
    with pytest.raises(VideoReadError, match="no frames"):
        read_video(indexed_mkv, start=30)
    png = write_image(tmp_path / "frame.png", noise(1, 4, 4)[0])
    with pytest.raises(VideoReadError, match="one frame"):
        read_video(png, start=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fps": 8, "step": 2}, "either fps"),
        ({"start": -1}, "start"),
        ({"start": 5, "end": 5}, "end"),
        ({"step": 0}, "step"),
        ({"fps": 0}, "fps"),
        ({"max_frames": 0}, "max_frames"),
    ],
)
def test_bad_selection_arguments(indexed_mkv, kwargs, message):
    with pytest.raises(ValueError, match=message):
        read_video(indexed_mkv, **kwargs)


# ---------------------------------------------------------------------------------------------
# Determinism and atomic writes


@pytest.mark.parametrize("suffix", [".mkv", ".mp4", ".gif", ".png"])
def test_written_bytes_are_deterministic(tmp_path, suffix):
    video = scene(5 if suffix != ".png" else 1, 36, 52)
    first = write_video(tmp_path / f"a{suffix}", video).read_bytes()
    second = write_video(tmp_path / f"b{suffix}", video).read_bytes()
    assert first == second
    changed = video.copy()
    changed[0, 0, 0, 0] ^= 0xFF
    assert write_video(tmp_path / f"c{suffix}", changed).read_bytes() != first


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = write_video(tmp_path / "clip.mkv", noise(2, 8, 8))
    before = path.read_bytes()

    def fail(rgb):
        raise RuntimeError("encoder failed")

    monkeypatch.setattr("kinetoscope.io.write._bgr0_frame", fail)
    with pytest.raises(RuntimeError, match="encoder failed"):
        write_video(path, noise(2, 8, 8, seed=1))
    assert path.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv"]  # no temporary left


@pytest.mark.parametrize(
    ("frames", "kwargs", "message"),
    [
        (noise(2, 4, 4)[0], {}, "frame axis"),
        (noise(2, 4, 4).astype(np.float32), {}, "to_uint8"),
        (noise(2, 4, 4)[..., :2], {}, r"\(T, H, W, 3\)"),
        (noise(2, 4, 4), {"fps": 0}, "fps"),
        (noise(2, 4, 4), {"crf": 60}, "crf"),
    ],
)
def test_bad_write_arguments(tmp_path, frames, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_video(tmp_path / "clip.mp4", frames, **kwargs)
    assert not list(tmp_path.iterdir())


def test_unknown_extension_and_fast_gif_are_refused(tmp_path):
    with pytest.raises(ValueError, match=".mp4"):
        write_video(tmp_path / "clip.xyz", noise(2, 4, 4))
    with pytest.raises(ValueError, match="fps <= 50"):
        write_video(tmp_path / "clip.gif", noise(2, 4, 4), fps=60)


# ---------------------------------------------------------------------------------------------
# Unreadable files


def audio_only_mkv(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


UNREADABLE = {
    "missing": (lambda d: d / "missing.mp4", "no such file"),
    "empty": (lambda d: written(d / "empty.mp4", b""), "empty"),
    "text as mp4": (lambda d: written(d / "text.mp4", b"just text\n" * 40), "not a media"),
    "text as png": (lambda d: written(d / "text.png", b"just text\n" * 40), "not an image"),
    "audio only": (lambda d: audio_only_mkv(d / "audio.mkv"), "no video stream.*audio"),
    "folder": (lambda d: d, "folder"),
}


@pytest.mark.parametrize("function", [probe, read_video])
@pytest.mark.parametrize("case", list(UNREADABLE))
def test_unreadable_files_raise_video_read_error(tmp_path, function, case):
    make, reason = UNREADABLE[case]
    path = make(tmp_path)
    with pytest.raises(VideoReadError, match=reason) as caught:
        function(path)
    assert caught.value.path == str(path)
    assert str(caught.value).startswith(f"cannot read {path}: ")


def test_video_read_error_pickles():
    error = pickle.loads(pickle.dumps(VideoReadError("a/b.mp4", "broken")))
    assert (error.path, error.reason, str(error)) == (
        "a/b.mp4",
        "broken",
        "cannot read a/b.mp4: broken",
    )


# ---------------------------------------------------------------------------------------------
# uint8 <-> float


def test_to_float_shape_range_and_exact_round_trip():
    values = np.arange(256, dtype=np.uint8)
    frames = np.broadcast_to(values.reshape(1, 16, 16, 1), (2, 16, 16, 3)).copy()
    frames[1] = frames[1, ::-1]
    video = to_float(frames)
    assert video.shape == (3, 2, 16, 16) and video.dtype == torch.float32
    assert video.min().item() == -1.0 and video.max().item() == 1.0
    assert video[0, 0, 0, 1].item() == pytest.approx(1 / 127.5 - 1)
    assert np.array_equal(to_uint8(video), frames)
    assert np.array_equal(to_uint8(to_float(torch.from_numpy(frames))), frames)
    flipped = frames[:, ::-1]  # negative strides and read-only views work too
    flipped.flags.writeable = False
    assert np.array_equal(to_uint8(to_float(flipped)), flipped)


def test_batched_conversions_and_channel_order():
    frames = noise(4, 5, 6).reshape(2, 2, 5, 6, 3)  # B T H W 3
    video = to_float(frames)
    assert video.shape == (2, 3, 2, 5, 6)
    assert torch.equal(video[1, 2, 0], torch.from_numpy(frames[1, 0, ..., 2]).float() / 127.5 - 1)
    assert video.is_contiguous()
    back = to_uint8(video)
    assert back.shape == frames.shape and np.array_equal(back, frames)


def test_to_uint8_clamps_rounds_and_accepts_other_dtypes():
    video = torch.tensor([-3.0, -1.0, 0.0, 1 / 127.5 - 1 + 0.003, 1.0, 7.0, float("nan")])
    video = video.reshape(1, 1, 1, 7).expand(3, 1, 1, 7)
    out = to_uint8(video)
    assert out.shape == (1, 1, 7, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 1, 255, 255, 128]
    assert np.array_equal(to_uint8(video.bfloat16()), to_uint8(video.bfloat16().float()))
    assert np.array_equal(to_uint8(video.numpy()), out)
    with pytest.raises(ValueError, match="channels"):
        to_uint8(torch.zeros(1, 4, 4, 3))
    with pytest.raises(ValueError, match="uint8"):
        to_float(torch.zeros(1, 4, 4, 3))


def test_read_then_to_float_matches_file_contents(tmp_path):
    video = noise(5, 8, 12)
    back = read_video(write_video(tmp_path / "clip.mkv", video))
    assert np.array_equal(to_uint8(to_float(back)), video)
    assert Fraction(probe(tmp_path / "clip.mkv").fps) == 8
