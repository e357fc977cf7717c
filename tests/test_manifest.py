import json

import pytest

from kinetoscope.data.manifest import ManifestRecord, read_manifest, write_manifest


def test_round_trip_keeps_fields_and_relativizes_paths(tmp_path):
    clip = tmp_path / "clips" / "a.mkv"
    outside = tmp_path.parent / "elsewhere.mp4"
    records = [
        ManifestRecord(
            str(clip),
            96,
            64,
            17,
            8.0,
            {"short": "a red circle"},
            truth=str(tmp_path / "truth" / "a.json"),
            extra={"seed": 3},
        ),
        ManifestRecord(str(outside), 32, 32, 1, 1.0),
    ]
    path = write_manifest(tmp_path / "manifest.jsonl", records)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["path"] == "clips/a.mkv" and lines[0]["truth"] == "truth/a.json"
    assert lines[0]["seed"] == 3 and "truth" not in lines[1]
    assert lines[1]["path"] == str(outside.resolve())
    back = read_manifest(path)
    assert back[0].path == str(clip.resolve()) and back[0].captions == {"short": "a red circle"}
    assert back[0].extra == {"seed": 3} and back[1].truth is None and back[1].frames == 1


def test_bad_lines_name_the_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"path": "a.mp4", "width": 1, "height": 1, "frames": 1, "fps": 1}\n{"path": "b"}\n'
    )
    with pytest.raises(ValueError, match=r"m.jsonl:2: missing field\(s\) width"):
        read_manifest(path)
    path.write_text("not json\n")
    with pytest.raises(ValueError, match="m.jsonl:1: not valid JSON"):
        read_manifest(path)
    with pytest.raises(ValueError, match="does not exist"):
        read_manifest(tmp_path / "missing.jsonl")
