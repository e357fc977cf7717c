"""The one manifest format (JSON Lines) shared by every data source.

Each line describes one video or image:

    {"path": "clips/000000.mkv", "width": 96, "height": 64, "frames": 17, "fps": 8.0,
     "captions": {"short": "...", "medium": "...", "long": "..."}, "truth": "truth/000000.json"}

`path` and `truth` are stored relative to the manifest's folder when they lie under it, so a
dataset folder can be moved as a whole. Caption levels are free-form keys: the world writes
`short`, `medium` and `long`; captions a user supplies are stored as `original`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

REQUIRED = ("path", "width", "height", "frames", "fps")


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
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(record_to_json(record, root) + "\n")
    os.replace(tmp, path)
    return path


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for each non-blank line; bad JSON raises ValueError naming it."""
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None


def read_manifest(path: str | os.PathLike) -> list[ManifestRecord]:
    """Read a manifest; paths come back absolute. A malformed line raises ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"manifest {path} does not exist; make one with `kinetoscope index` "
            "or `kinetoscope world`"
        )
    root = path.parent.resolve()
    records = []
    for number, data in read_jsonl(path):
        missing = [key for key in REQUIRED if key not in data]
        if missing:
            raise ValueError(f"{path}:{number}: missing field(s) {', '.join(missing)}")
        known = {"path", "width", "height", "frames", "fps", "captions", "truth"}
        truth = data.get("truth")
        records.append(
            ManifestRecord(
                path=str(root / data["path"]),
                width=int(data["width"]),
                height=int(data["height"]),
                frames=int(data["frames"]),
                fps=float(data["fps"]),
                captions=dict(data.get("captions") or {}),
                truth=str(root / truth) if truth else None,
                extra={k: v for k, v in data.items() if k not in known},
            )
        )
    return records
