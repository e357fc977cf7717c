"""The one manifest format (JSON Lines) shared by every data source.

Each line describes one video or image:

    {"path": "clips/000000.mkv", "width": 96, "height": 64, "frames": 17, "fps": 8.0,
     "captions": {"short": "...", "medium": "...", "long": "..."}, "truth": "truth/000000.json"}

`path` and `truth` are stored relative to the manifest's folder when they lie under it, so a
dataset folder can be moved as a whole. Caption levels are free-form keys: the world writes
`short`, `medium` and `long`; captions a user supplies are stored as `original`. Captions are
plain text: a control character other than tab and newline (a bell, an escape sequence, a NUL)
is refused, naming the file, the line and the caption, as is any other malformed value.

A manifest may name a file twice (training then sees it twice as often). Evaluations read it
with `read_unique_manifest`, which keeps each file once and warns, so no file counts twice in
a mean.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

REQUIRED = ("path", "width", "height", "frames", "fps")
# Control characters (Unicode category Cc) other than tab and newline (a Windows \r\n too):
# nothing a caption should hold; they ring, move the cursor or recolour a terminal printing it.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|\r(?!\n)")


def control_problem(text: str) -> str | None:
    """What is wrong with `text` as a caption, in words naming its first control character and
    where it is ("holds control character U+0007 at line 1, column 5 of the caption; ..."), or
    None for plain text."""
    match = CONTROL.search(text)
    if match is None:
        return None
    before = text[: match.start()]
    line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
    return (
        f"holds control character U+{ord(match.group()):04X} at line {line}, column {column} of "
        "the caption; keep captions to plain text (tabs and newlines are fine)"
    )


@dataclass
class ManifestRecord:
    """One video or image of a manifest. `path` and `truth` are absolute once read."""

    path: str
    width: int
    height: int
    frames: int
    fps: float
    captions: dict[str, str] = field(default_factory=dict)
    truth: str | None = None  # ground-truth JSON, world clips only
    extra: dict = field(default_factory=dict)  # anything else a source wants to keep


def _relative(path: str | None, root: Path) -> str | None:
    if path is None:
        return None
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(root).as_posix()
    except ValueError:
        return str(resolved)


def record_to_json(record: ManifestRecord, root: Path) -> str:
    """One manifest line, with paths made relative to `root` where they lie under it."""
    data = asdict(record)
    extra = data.pop("extra")
    data["path"] = _relative(record.path, root)
    data["truth"] = _relative(record.truth, root)
    if data["truth"] is None:
        del data["truth"]
    data.update(extra)
    return json.dumps(data, ensure_ascii=False)


def write_manifest(path: str | os.PathLike, records: list[ManifestRecord]) -> Path:
    """Write records as JSON Lines, atomically (a partial manifest is never left behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve()
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(record_to_json(record, root) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left if the write failed
    return path


def read_text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a text file: UTF-8 (a leading byte-order mark is
    dropped), or UTF-16/UTF-32 where the file starts with their byte-order mark. ValueError
    naming the file and the line for bytes that are not text in that encoding (a Latin-1
    file, say), or for a file that cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"{path} cannot be read: {error.strerror or error}") from None
    boms = {
        codecs.BOM_UTF32_LE: "utf-32", codecs.BOM_UTF32_BE: "utf-32",
        codecs.BOM_UTF16_LE: "utf-16", codecs.BOM_UTF16_BE: "utf-16",
    }  # fmt: skip
    encoding = next((name for bom, name in boms.items() if data.startswith(bom)), None)
    if encoding is not None:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as error:
            line = data[: error.start].decode(encoding, "replace").count("\n") + 1
            raise ValueError(f"{path}:{line}: not valid {encoding.upper()} text") from None
        yield from enumerate(text.splitlines(), start=1)
        return
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            yield number, raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{path}:{number}: byte 0x{raw[error.start]:02x} at column {error.start + 1} is "
                "not UTF-8 (a Latin-1 or Windows file?); save the file as UTF-8"
            ) from None


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for each non-blank line; bad JSON or bad text raises
    ValueError naming the file and the line."""
    for number, line in read_text_lines(path):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None


def _field(where: str, data: dict, key: str, kind: str) -> object:
    """`data[key]` checked as `kind` ("path", "count", "fps", "captions", "optional path");
    ValueError naming the file, line and field, and what is expected."""
    value = data.get(key)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "path" or (kind == "optional path" and value is not None):
        ok = isinstance(value, str) and value.strip() != "" and "\0" not in value
        expected = "a file path (a non-empty string)"
    elif kind == "optional path":
        return None
    elif kind == "count":
        ok = number and math.isfinite(value) and value == int(value) and value >= 1
        expected = "a whole number of at least 1"
    elif kind == "fps":
        ok = number and math.isfinite(value) and value >= 0
        expected = "a number of at least 0 (0 for an image)"
    else:  # captions
        value = {} if value is None else value
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
        expected = 'an object of caption strings, like {"original": "a red ball"}'
    if not ok:
        raise ValueError(f"{where}: field {key!r} must be {expected}, got {json.dumps(value)}")
    return value


def _captions(where: str, data: dict) -> dict[str, str]:
    """The `captions` field, checked: an object of plain-text strings."""
    captions = dict(_field(where, data, "captions", "captions"))
    for level, text in captions.items():
        problem = control_problem(level) or control_problem(text)
        if problem:
            raise ValueError(f"{where}: field 'captions' entry {json.dumps(level)} {problem}")
    return captions


def _records(path: Path) -> Iterator[tuple[int, ManifestRecord]]:
    """(line number, record) of each line of manifest `path` (see `read_manifest`)."""
    if not path.is_file():
        what = "is a folder, not a manifest file" if path.is_dir() else "does not exist"
        raise ValueError(
            f"manifest {path} {what}; make one with `kinetoscope index` or `kinetoscope world`"
        )
    root = path.parent.resolve()
    known = {"path", "width", "height", "frames", "fps", "captions", "truth"}
    for number, data in read_jsonl(path):
        where = f"{path}:{number}"
        if not isinstance(data, dict):
            raise ValueError(
                f'{where}: each line must be a JSON object like {{"path": ..., "width": ...}}, '
                f"got {json.dumps(data)[:60]}"
            )
        missing = [key for key in REQUIRED if key not in data]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        truth = _field(where, data, "truth", "optional path")
        yield (
            number,
            ManifestRecord(
                path=str(root / _field(where, data, "path", "path")),
                width=int(_field(where, data, "width", "count")),
                height=int(_field(where, data, "height", "count")),
                frames=int(_field(where, data, "frames", "count")),
                fps=float(_field(where, data, "fps", "fps")),
                captions=_captions(where, data),
                truth=str(root / truth) if truth else None,
                extra={k: v for k, v in data.items() if k not in known},
            ),
        )


def read_manifest(path: str | os.PathLike) -> list[ManifestRecord]:
    """Read a manifest; paths come back absolute. A malformed line (a caption with control
    characters included) raises ValueError naming the file, the line and the field, and what
    it expects."""
    return [record for _, record in _records(Path(path))]


def read_unique_manifest(path: str | os.PathLike) -> list[ManifestRecord]:
    """`read_manifest` with each file once, for evaluations (a file read twice would count
    twice in every mean): a line naming the file of an earlier line, however its path is
    spelled, is left out, and one warning names the manifest and the lines."""
    first: dict[str, int] = {}  # real path -> line that named it first
    records, repeats = [], []
    for number, record in _records(Path(path)):
        key = os.path.realpath(record.path)
        if key in first:
            repeats.append(f"line {number} (= line {first[key]})")
            continue
        first[key] = number
        records.append(record)
    if repeats:
        more = f" and {len(repeats) - 5} more" if len(repeats) > 5 else ""
        warnings.warn(
            f"{path}: {len(repeats)} line(s) name a file an earlier line names and are left "
            f"out, so that each file counts once: {', '.join(repeats[:5])}{more}",
            stacklevel=2,
        )
    return records
