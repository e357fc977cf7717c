"""The native-size rules and the clip dataset over a manifest."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from kinetoscope.data.dataset import ClipDataset, collate_clips, frames_at_fps, native_size
from kinetoscope.data.index import index_folder
from kinetoscope.data.manifest import ManifestRecord
from kinetoscope.io import to_float, write_image, write_video


def _frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("size", "max_area", "max_frames", "expected"),
    [
        ((250, 131, 7), 256 * 256, 65, (240, 128, 5, 1.0)),  # crop 10 + 3 px, 7 -> 5 frames
        ((64, 64, 1), 256 * 256, 65, (64, 64, 1, 1.0)),  # an image stays one frame
        ((48, 32, 100), 256 * 256, 65, (48, 32, 65, 1.0)),  # small: never upscaled
        ((32, 32, 64), 256 * 256, 17, (32, 32, 17, 1.0)),  # capped at max_frames
        ((17, 31, 4), 256 * 256, 65, (16, 16, 1, 1.0)),  # 2-4 frames -> 1
        ((96, 64, 9), 48 * 32, 9, (48, 32, 9, 0.5)),  # exactly half the size
    ],
)
def test_native_size_table(size, max_area, max_frames, expected):
    width, height, frames = size
    got = native_size(width, height, frames, max_area=max_area, max_frames=max_frames)
    assert got[:3] == expected[:3] and got[3] == pytest.approx(expected[3])


@pytest.mark.parametrize(
    ("width", "height"),
    [(1920, 1080), (1080, 1920), (1280, 720), (640, 480), (3840, 1600), (257, 257), (300, 17)],
)
def test_native_size_downscales_keeping_aspect_within_the_budget(width, height):
    max_area = 256 * 256
    out_width, out_height, _, scale = native_size(
        width, height, 1, max_area=max_area, max_frames=65
    )
    assert out_width % 16 == 0 and out_height % 16 == 0
    assert out_width * out_height <= max_area and scale <= 1
    assert out_width <= width and out_height <= height  # never upscaled
    # The crop removes less than one 16-px step from each side of the scaled video.
    assert 0 <= width * scale - out_width < 16 + 1 and 0 <= height * scale - out_height < 16 + 1
    # So the aspect ratio stays within what one 16-px step can change.
    low = (out_width) / (out_height + 16)
    high = (out_width + 16) / out_height
    assert low <= width / height <= high


def test_native_size_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="max_frames must be 1 \\+ 4k"):
        native_size(64, 64, 9, max_area=256 * 256, max_frames=8)
    with pytest.raises(ValueError, match="smaller than 16x16 and would have to be upscaled"):
        native_size(40, 10, 1, max_area=256 * 256, max_frames=1)
    # Thin enough that the area rule shrinks its short side under 16 pixels.
    with pytest.raises(ValueError, match="scaled to"):
        native_size(8192, 16, 1, max_area=256 * 256, max_frames=1)
    with pytest.raises(ValueError, match="max_area must be at least"):
        native_size(64, 64, 1, max_area=100, max_frames=1)


def test_frames_at_fps_matches_every_kth_frame():
    assert frames_at_fps(24, 24.0, 8.0) == 8  # source frames 0, 3, ..., 21
    assert frames_at_fps(25, 24.0, 8.0) == 9  # ... 24
    assert frames_at_fps(10, 24.0, 10.0) == 5  # frames 0, 2, 4, 7, 9 (ratio 2.4)
    assert frames_at_fps(10, 8.0, 24.0) == 10  # never upsampled
    assert frames_at_fps(1, 0.0, 8.0) == 1  # an image


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Lossless videos of odd sizes (so pixels can be compared exactly) and an image."""
    root = tmp_path_factory.mktemp("media")
    videos = {
        "odd.mkv": (_frames(7, 131, 250, seed=1), 8),
        "long.mkv": (_frames(17, 32, 48, seed=2), 16),
        "big.mkv": (_frames(5, 64, 96, seed=3), 8),
    }
    for name, (frames, fps) in videos.items():
        write_video(root / name, frames, fps)
    still = _frames(1, 40, 33, seed=4)
    write_image(root / "still.png", still[0])
    return root, {**{name: frames for name, (frames, _) in videos.items()}, "still.png": still}


def _record(root, name, frames, fps, captions=None):
    count, height, width, _ = frames.shape
    return ManifestRecord(str(root / name), width, height, count, fps, captions or {})


def test_items_have_the_size_item_size_promises_and_the_source_pixels(media):
    root, frames = media
    records = [
        _record(root, "odd.mkv", frames["odd.mkv"], 8),
        _record(root, "still.png", frames["still.png"], 0.0),
        _record(root, "long.mkv", frames["long.mkv"], 16),
    ]
    dataset = ClipDataset(records, max_frames=9, temporal_crop="start")
    assert [dataset.item_size(i) for i in range(3)] == [(5, 128, 240), (1, 32, 32), (9, 32, 48)]
    for index in range(3):
        item = dataset[index]
        video = item["video"]
        assert video.dtype == torch.float32 and video.shape[0] == 3
        assert tuple(video.shape[1:]) == dataset.item_size(index)
        assert video.min() >= -1 and video.max() <= 1
        assert item["source"] == records[index].path and item["index"] == index
    # Lossless, not scaled: the item is the centered crop of the first frames, exactly.
    odd = dataset[0]["video"]
    assert torch.equal(odd, to_float(frames["odd.mkv"][:5, 1:129, 5:245]))
    assert torch.equal(dataset[1]["video"], to_float(frames["still.png"][:, 4:36, 0:32]))
    assert torch.equal(dataset[2]["video"], to_float(frames["long.mkv"][:9]))


def test_random_windows_are_deterministic_per_seed_and_epoch(media):
    root, frames = media
    source = frames["long.mkv"]  # 17 frames, windows of 5
    dataset = ClipDataset([_record(root, "long.mkv", source, 16)], max_frames=5, seed=3)

    def start_of(video):
        starts = [s for s in range(13) if torch.equal(video, to_float(source[s : s + 5]))]
        assert len(starts) == 1
        return starts[0]

    starts = []
    for epoch in range(6):
        dataset.set_epoch(epoch)
        starts.append(start_of(dataset[0]["video"]))
    assert len(set(starts)) > 1  # the window moves with the epoch
    again = ClipDataset([_record(root, "long.mkv", source, 16)], max_frames=5, seed=3)
    again.set_epoch(4)
    assert start_of(again[0]["video"]) == starts[4]


def test_fps_samples_every_kth_frame_from_the_window(media):
    root, frames = media
    source = frames["long.mkv"]  # 17 frames at 16 fps -> 9 frames at 8 fps
    record = _record(root, "long.mkv", source, 16)
    dataset = ClipDataset([record], max_frames=9, fps=8, temporal_crop="start")
    assert dataset.item_size(0) == (9, 32, 48)
    assert torch.equal(dataset[0]["video"], to_float(source[0:17:2]))
    # A 5-frame window at 8 fps, anywhere: every other source frame from an even start.
    dataset = ClipDataset([record], max_frames=5, fps=8, seed=1)
    for epoch in range(4):
        dataset.set_epoch(epoch)
        video = dataset[0]["video"]
        assert any(torch.equal(video, to_float(source[s : s + 9 : 2])) for s in range(0, 9, 2))


def test_large_videos_are_downscaled_with_antialiasing(media):
    root, frames = media
    source = frames["big.mkv"]  # 96x64 -> 48x32 under max_area 48 * 32
    dataset = ClipDataset([_record(root, "big.mkv", source, 8)], max_area=48 * 32)
    assert dataset.item_size(0) == (5, 32, 48)
    video = dataset[0]["video"]
    # Pillow's bilinear resize is the antialiased filter torch follows.
    expected = np.stack(
        [np.asarray(Image.fromarray(frame).resize((48, 32), Image.BILINEAR)) for frame in source]
    )
    difference = (video - to_float(expected)).abs().max().item()
    assert difference <= 1.01 / 127.5  # at most one uint8 step of rounding


def test_caption_choice_is_deterministic_per_seed_epoch_and_index(media):
    root, frames = media
    levels = {"short": "s", "medium": "m", "long": "l"}
    records = [_record(root, "odd.mkv", frames["odd.mkv"], 8, levels) for _ in range(16)]
    records.append(_record(root, "odd.mkv", frames["odd.mkv"], 8, {"short": "only short"}))
    records.append(_record(root, "odd.mkv", frames["odd.mkv"], 8))

    def choices(seed, epoch):
        dataset = ClipDataset(records, seed=seed)
        dataset.set_epoch(epoch)
        return [dataset.caption(i) for i in range(len(records))]

    first = choices(0, 0)
    assert first == choices(0, 0)
    assert set(first[:16]) == {"s", "m", "l"}
    assert first[16:] == ["only short", ""]
    assert first != choices(0, 1) and first != choices(1, 0)
    assert ClipDataset(records, seed=0)[3]["caption"] == first[3]

    named = ClipDataset(records, caption_level="long")
    assert [named.caption(i) for i in (0, 16, 17)] == ["l", "only short", ""]
    assert named[0]["captions"] == levels


def test_unreadable_files_are_logged_and_skipped_in_the_batch(media, tmp_path, caplog):
    _, frames = media
    folder = tmp_path / "clips"
    folder.mkdir()
    write_video(folder / "a.mkv", frames["long.mkv"], 16)
    write_video(folder / "b.mkv", frames["big.mkv"], 8)
    write_image(folder / "c.png", frames["still.png"][0])
    manifest = tmp_path / "manifest.jsonl"
    index_folder(folder, manifest, progress=False)
    (folder / "b.mkv").unlink()

    dataset = ClipDataset(manifest, max_frames=5)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=3, collate_fn=collate_clips, num_workers=0
    )
    with caplog.at_level(logging.WARNING, logger="kinetoscope.data"):
        batches = list(loader)
    assert len(batches) == 1
    batch = batches[0]
    assert batch["skipped"] == 1 and dataset.skipped == 1
    assert batch["indices"] == [0, 2] and len(batch["videos"]) == 2
    assert [tuple(v.shape) for v in batch["videos"]] == [(3, 5, 32, 48), (3, 1, 32, 32)]
    assert batch["captions"] == ["", ""] and batch["truths"] == [None, None]
    assert batch["sources"] == [str(folder / "a.mkv"), str(folder / "c.png")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "b.mkv" in warnings[0].getMessage()


def test_a_file_shorter_than_its_manifest_entry_is_skipped(media, tmp_path, caplog):
    _, frames = media
    path = tmp_path / "cut.mp4"
    write_video(path, frames["long.mkv"][:3], 16)
    record = ManifestRecord(str(path), 48, 32, 17, 16.0)  # the manifest promises 17 frames
    dataset = ClipDataset([record], max_frames=9, temporal_crop="start")
    with caplog.at_level(logging.WARNING, logger="kinetoscope.data"):
        assert dataset[0] is None
    assert dataset.skipped == 1 and "decoded 3 of the 9 frames" in caplog.text


def test_dataset_arguments_are_checked(media):
    root, frames = media
    record = _record(root, "odd.mkv", frames["odd.mkv"], 8)
    with pytest.raises(ValueError, match="no records"):
        ClipDataset([])
    with pytest.raises(ValueError, match="temporal_crop"):
        ClipDataset([record], temporal_crop="middle")
    with pytest.raises(ValueError, match="max_frames must be 1 \\+ 4k"):
        ClipDataset([record], max_frames=16)
    thin = ManifestRecord(str(root / "thin.mkv"), 8192, 16, 1, 8.0)
    with pytest.raises(ValueError, match="thin.mkv: .*raise max_area"):
        ClipDataset([thin])
