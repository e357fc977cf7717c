"""Indexing a folder of real videos and images: manifest, captions and the error report."""

import json

import numpy as np
import pytest

from kinetoscope.cli import main
from kinetoscope.data.index import index_folder
from kinetoscope.data.manifest import read_manifest
from kinetoscope.io import write_image, write_video


def _frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def _errors(path) -> dict[str, str]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return {line["path"]: line["reason"] for line in lines}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Good files of each kind, and one of each way a file can be unusable."""
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "walk.mp4", _frames(9, 40, 48), 8)
    (root / "walk.txt").write_text("  a person walks left  \n")
    write_image(root / "still.png", _frames(1, 33, 50)[0])
    write_video(root / "loop.gif", _frames(5, 24, 32), 10)
    write_image(root / "LOUD.PNG", _frames(1, 16, 16)[0])  # extensions match in any case
    (root / "sub").mkdir()
    write_video(root / "sub" / "deep.mkv", _frames(7, 131, 250), 16)
    (root / "sub" / "deep.mkv.txt").write_text("a long caption, with a comma")

    # Unusable files, each for a different reason.
    good = (root / "walk.mp4").read_bytes()
    mdat = good.find(b"mdat") + 8
    noise = np.random.default_rng(1).bytes(len(good) - mdat)
    (root / "corrupt.mp4").write_bytes(good[:mdat] + noise)  # valid header, garbage frames
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.mp4").write_text("this is a text file renamed to .mp4\n")
    lossless = (root / "sub" / "deep.mkv").read_bytes()
    assert lossless.count(b"V_FFV1") == 1
    (root / "sub" / "alien.mkv").write_bytes(lossless.replace(b"V_FFV1", b"V_ZZZZ"))
    write_image(root / "tiny.png", _frames(1, 8, 20)[0])

    # Files that are not media: counted as ignored, or skipped because hidden.
    (root / "meta.json").write_text("{}")
    (root / "readme.txt").write_text("captions nothing")
    (root / ".hidden").mkdir()
    write_image(root / ".hidden" / "secret.png", _frames(1, 16, 16)[0])
    write_image(root / ".dotfile.png", _frames(1, 16, 16)[0])
    return root


def test_index_reports_every_unreadable_file_and_keeps_the_good_ones(folder, tmp_path):
    out = tmp_path / "manifest.jsonl"
    report = index_folder(folder, out, workers=2, progress=False)
    assert report.errors == tmp_path / "manifest.errors.jsonl"
    assert (report.indexed, report.failed, report.uncaptioned) == (5, 5, 3)
    assert (report.ignored, report.caption_errors) == (2, 0)

    errors = _errors(report.errors)
    reasons = {path.removeprefix(str(folder) + "/"): reason for path, reason in errors.items()}
    assert set(reasons) == {"corrupt.mp4", "empty.mp4", "notes.mp4", "sub/alien.mkv", "tiny.png"}
    assert "does not decode" in reasons["corrupt.mp4"]
    assert "empty" in reasons["empty.mp4"]
    assert "not a media file" in reasons["notes.mp4"]
    assert "no decoder" in reasons["sub/alien.mkv"]
    assert reasons["tiny.png"] == "20x8 is smaller than 16x16; the dataset never upscales"

    records = {r.path.removeprefix(str(folder) + "/"): r for r in read_manifest(out)}
    assert list(records) == ["LOUD.PNG", "loop.gif", "still.png", "walk.mp4", "sub/deep.mkv"]
    sizes = {name: (r.width, r.height, r.frames) for name, r in records.items()}
    assert sizes == {
        "LOUD.PNG": (16, 16, 1),
        "loop.gif": (32, 24, 5),
        "still.png": (50, 33, 1),
        "walk.mp4": (48, 40, 9),
        "sub/deep.mkv": (250, 131, 7),
    }
    assert records["walk.mp4"].fps == 8 and records["sub/deep.mkv"].fps == 16
    assert records["loop.gif"].fps == pytest.approx(10)
    assert records["walk.mp4"].extra["codec"] == "h264"
    assert records["walk.mp4"].extra["duration"] == pytest.approx(9 / 8)
    assert records["walk.mp4"].captions == {"original": "a person walks left"}
    assert records["sub/deep.mkv"].captions == {"original": "a long caption, with a comma"}
    assert records["still.png"].captions == {}


def test_a_captions_file_wins_over_sidecars_and_reports_missing_files(folder, tmp_path):
    captions = tmp_path / "captions.csv"
    captions.write_text(
        "path,caption\n"
        'still.png,"a still image, quoted"\n'
        "walk.mp4,from the csv\n"
        "gone.mp4,nothing here\n"
        "meta.json,not media\n"
    )
    out = tmp_path / "m.jsonl"
    errors = tmp_path / "report" / "why.jsonl"
    report = index_folder(folder, out, captions=captions, errors=errors, progress=False)
    assert report.errors == errors and errors.is_file()
    # A caption without its file is reported but is not a lost media file.
    assert (report.indexed, report.failed, report.caption_errors) == (5, 5, 2)
    reasons = _errors(errors)
    assert reasons[str(folder / "gone.mp4")] == "caption for a missing file"
    assert "not a video or image" in reasons[str(folder / "meta.json")]
    captions_of = {r.path.removeprefix(str(folder) + "/"): r.captions for r in read_manifest(out)}
    assert captions_of["still.png"] == {"original": "a still image, quoted"}
    assert captions_of["walk.mp4"] == {"original": "from the csv"}
    assert captions_of["sub/deep.mkv"] == {"original": "a long caption, with a comma"}

    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text(json.dumps({"path": "loop.gif", "caption": " a gif "}) + "\n")
    index_folder(folder, out, captions=jsonl, progress=False)
    captions_of = {r.path.removeprefix(str(folder) + "/"): r.captions for r in read_manifest(out)}
    assert captions_of["loop.gif"] == {"original": "a gif"}


def test_clean_folder_writes_an_empty_report_and_a_deterministic_manifest(tmp_path):
    folder = tmp_path / "clean"
    (folder / "b").mkdir(parents=True)
    write_video(folder / "b" / "two.mkv", _frames(5, 16, 32), 8)
    write_image(folder / "one.jpg", _frames(1, 32, 16)[0])
    one = index_folder(folder, tmp_path / "one.jsonl", workers=1, progress=False)
    two = index_folder(folder, tmp_path / "two.jsonl", workers=3, progress=False)
    assert one.failed == 0 and one.errors.is_file() and one.errors.read_text() == ""
    assert one.manifest.read_text() == two.manifest.read_text()
    lines = one.manifest.read_text().splitlines()
    assert [json.loads(line)["path"] for line in lines] == ["clean/one.jpg", "clean/b/two.mkv"]


def test_user_errors_say_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="does not exist; pass a folder"):
        index_folder(tmp_path / "nowhere", tmp_path / "m.jsonl")
    (tmp_path / "file.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a folder; pass a folder"):
        index_folder(tmp_path / "file.mp4", tmp_path / "m.jsonl")
    (tmp_path / "only-text").mkdir()
    (tmp_path / "only-text" / "a.txt").write_text("caption")
    with pytest.raises(ValueError, match="no videos or images under"):
        index_folder(tmp_path / "only-text", tmp_path / "m.jsonl")
    folder = tmp_path / "one"
    folder.mkdir()
    write_image(folder / "a.png", _frames(1, 16, 16)[0])
    bad = tmp_path / "bad.csv"
    bad.write_text("file,text\na.png,hello\n")
    with pytest.raises(ValueError, match="header `path,caption`"):
        index_folder(folder, tmp_path / "m.jsonl", captions=bad)
    bad = tmp_path / "bad.tsv"
    bad.write_text("a.png\thello\n")
    with pytest.raises(ValueError, match=r"must end in \.csv"):
        index_folder(folder, tmp_path / "m.jsonl", captions=bad)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"file": "a.png"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        index_folder(folder, tmp_path / "m.jsonl", captions=bad)


def test_cli_index_prints_the_counts(folder, tmp_path, capsys):
    out = tmp_path / "cli" / "manifest.jsonl"
    assert main(["index", str(folder), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "indexed 5 files (3 without a caption), 5 unreadable" in printed
    assert "manifest.errors.jsonl" in printed
    assert len(read_manifest(out)) == 5
    assert main(["index", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_sidecar_that_is_not_utf8_is_reported_and_its_file_kept(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    write_image(folder / "a.png", _frames(1, 16, 16)[0])
    (folder / "a.txt").write_bytes(b"caf\xe9 latin-1")
    report = index_folder(folder, tmp_path / "m.jsonl", progress=False)
    assert (report.indexed, report.uncaptioned, report.failed, report.caption_errors) == (
        1,
        1,
        0,
        1,
    )
    assert _errors(report.errors) == {str(folder / "a.txt"): "caption file is not UTF-8 text"}
