"""Index a folder of real videos and images into a manifest, with an error report.

`index_folder` walks a folder recursively (sorted, hidden files and folders skipped), probes
every video and image in parallel, and writes:

- the manifest (JSON Lines, `kinetoscope.data.manifest`), one record per readable file, with
  its width, height, frame count and fps from the probe, its codec and duration in `extra`,
  and its caption (if any) as `captions={"original": text}`;
- an error report (JSON Lines, `{"path": ..., "reason": ...}`, absolute paths), one line per
  file it could not use. It is always written, empty when nothing failed, so every run leaves evidence.

Captions come from a sidecar `.txt` beside a file (`clip.txt` or `clip.mp4.txt` for
`clip.mp4`) or from a CSV (header `path,caption`) or JSONL (`{"path": ..., "caption": ...}`)
file whose paths are relative to the folder. Where both exist, the captions file wins: it is
the one named on the command line. A file without a caption is still indexed (a captioner can
fill it in later). A captions-file entry that names no indexed file is written to the error
report too (reason "caption for a missing file"), but it is counted in
`IndexReport.caption_errors`, not in `failed`: no media file was lost. So is a sidecar that is
not UTF-8 text, cannot be read or holds control characters (its file is indexed without a
caption; the report names the line and column). A captions-file entry with control characters
is refused with the rest of that file, naming its line and field.

A file is indexed only if training can read it: `probe` refuses what reading would (frames
above the decompression-bomb limit, a video whose header claims frames the file does not
hold), so such a file goes to the error report, not into the manifest.

One odd entry never sinks the rest: a folder that cannot be read, a symlink loop, a file name
that is not valid UTF-8 (a manifest is UTF-8 JSON) each become a line of the error report.
The outputs are checked before any work: neither may be a folder, one of the inputs (the
captions file, a file being indexed) or the other output.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from kinetoscope.data.manifest import (
    ManifestRecord,
    control_problem,
    read_jsonl,
    read_text_lines,
    write_manifest,
)
from kinetoscope.io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, check_output_file, probe

MIN_SIDE = 16  # the dataset crops to multiples of 16 and never upscales
TOO_SMALL = f"smaller than {MIN_SIDE}x{MIN_SIDE}; the dataset never upscales"
MISSING_FILE = "caption for a missing file"
NOT_MEDIA = "caption for a file that is not a video or image"


@dataclass
class IndexReport:
    """What `index_folder` did: counts, and where it wrote the manifest and the error report."""

    indexed: int  # records written to the manifest
    uncaptioned: int  # of those, how many have no caption yet
    failed: int  # media files that could not be used (each one is in the error report)
    manifest: Path
    errors: Path
    ignored: int  # files that are neither video nor image (e.g. .json), counted not probed
    # Captions that could not be used, each in the error report too: a captions-file entry that
    # names no indexed file, or a sidecar that is not UTF-8 text. No media file is lost.
    caption_errors: int = 0


def _walk(folder: Path, problems: list[tuple[str, str]]) -> Iterator[Path]:
    """Every non-hidden file under `folder`: top-down, each folder's files sorted, then its
    subfolders sorted, so the same folder always gives the same manifest. A folder that
    cannot be read goes to `problems` with the reason."""

    def unreadable(error: OSError) -> None:
        problems.append((_shown(error.filename), f"folder cannot be read: {error.strerror}"))

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def _shown(path: str | os.PathLike) -> str:
    """A path as text that can be written as UTF-8 (undecodable bytes as \\udcXX escapes)."""
    return os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")


def _real(path: Path) -> Path:
    """`path` with symlinks resolved; never raises, even for a symlink loop."""
    return Path(os.path.realpath(path))


def _read_text(path: Path) -> str:
    """A caption file's text; `utf-8-sig` so a leading byte-order mark is dropped."""
    return path.read_text(encoding="utf-8-sig")


def _csv_pairs(path: Path) -> list[tuple[str, str, str]]:
    """(file:line, path, caption) of each row of a CSV captions file with a `path,caption`
    header; ValueError naming the line for a file the csv module cannot parse."""
    # The csv module handles quoted fields, so captions may contain commas and newlines.
    # Fed line by line, its line_num counts the file's lines (a \r in a field is no line).
    reader = csv.DictReader(line + "\n" for _, line in read_text_lines(path))
    pairs = []
    try:
        fields = [name.strip() for name in reader.fieldnames or []]
        if "path" not in fields or "caption" not in fields:
            raise ValueError(
                f"{path}:1: the first line must be the header `path,caption` (found {fields})"
            )
        reader.fieldnames = fields
        for row in reader:
            pairs.append((f"{path}:{reader.line_num}", row["path"] or "", row["caption"] or ""))
    except csv.Error as error:
        why = str(error).split(" - ")[0]  # without its hint about opening files
        hint = "; put a caption with a line break in double quotes" if "new-line" in why else ""
        raise ValueError(f"{path}:{reader.reader.line_num}: not valid CSV ({why}){hint}") from None
    return pairs


def read_captions(path: Path, folder: Path) -> dict[Path, str]:
    """Captions of a CSV (`path,caption` header) or JSONL file, keyed by resolved media path.

    Paths inside the file are relative to `folder` (absolute paths are accepted as they are).
    A later entry for the same path replaces an earlier one.
    """
    if not path.is_file():
        raise ValueError(f"captions file {path} does not exist; pass a CSV or JSONL of captions")
    suffix = path.suffix.lower()
    pairs: list[tuple[str, str, str]] = []
    if suffix == ".csv":
        pairs = _csv_pairs(path)
    elif suffix in (".jsonl", ".json"):
        for number, data in read_jsonl(path):
            if not isinstance(data, dict) or "path" not in data or "caption" not in data:
                raise ValueError(
                    f'{path}:{number}: each line must be {{"path": ..., "caption": ...}}'
                )
            for key in ("path", "caption"):
                if not isinstance(data[key], str) and not (key == "caption" and data[key] is None):
                    raise ValueError(
                        f"{path}:{number}: field {key!r} must be a string, "
                        f"got {json.dumps(data[key])}"
                    )
            pairs.append((f"{path}:{number}", data["path"], data["caption"] or ""))
    else:
        raise ValueError(
            f"captions file {path} must end in .csv (header path,caption) or .jsonl "
            '(lines of {"path": ..., "caption": ...})'
        )
    captions = {}
    for where, name, caption in pairs:
        if not name.strip() or "\0" in name:
            raise ValueError(f"{where}: field 'path' must be a file path, got {json.dumps(name)}")
        problem = control_problem(caption)
        if problem:
            raise ValueError(f"{where}: field 'caption' {problem}")
        captions[_real(folder / name.strip())] = caption.strip()
    return captions


def _sidecar(media: Path, texts: set[Path]) -> Path | None:
    """The sidecar caption of `media`: `clip.txt` first, then `clip.mp4.txt`."""
    for candidate in (media.with_suffix(".txt"), media.with_name(media.name + ".txt")):
        if candidate in texts:
            return candidate
    return None


def _probe_one(path: Path) -> tuple[ManifestRecord | None, str | None]:
    """Probe one file: (record without captions, None) or (None, reason it cannot be used)."""
    try:
        info = probe(path)
    except Exception as error:  # any failure is a report line, never a crash of the whole run
        reason = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
        return None, str(reason)
    if info.frames < 1:
        return None, "no frames"
    if info.width < MIN_SIDE or info.height < MIN_SIDE:
        return None, f"{info.width}x{info.height} is {TOO_SMALL}"
    record = ManifestRecord(
        path=str(path),
        width=int(info.width),
        height=int(info.height),
        frames=int(info.frames),
        fps=float(info.fps),
        extra={"codec": info.codec, "duration": float(info.duration)},
    )
    return record, None


def _write_errors(path: Path, errors: list[tuple[str, str]]) -> Path:
    """The error report, written atomically like the manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for file, reason in errors:
                line = {"path": _shown(file), "reason": _shown(reason)}
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left if the write failed
    return path


def index_folder(
    folder: Path,
    out: Path,
    *,
    captions: Path | None = None,
    errors: Path | None = None,
    workers: int = 0,
    progress: bool = True,
) -> IndexReport:
    """Probe every video and image under `folder` and write a manifest and an error report.

    `out` is the manifest (JSON Lines); `errors` defaults to `out` with the suffix
    `.errors.jsonl`. `captions` is an optional CSV or JSONL of path,caption (paths relative to
    `folder`). `workers` probing threads (0: one per core). See the module docstring for the
    rules; the returned `IndexReport` has the counts.
    """
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ValueError(f"{folder} {what}; pass a folder of videos and images")
    if workers < 0:
        raise ValueError(f"workers must be 0 (one per core) or more, not {workers}")
    folder = folder.resolve()
    errors = Path(errors) if errors is not None else out.with_name(out.stem + ".errors.jsonl")
    check_output_file(out, "--out")
    check_output_file(errors, "--errors")
    if _real(out) == _real(errors):
        raise ValueError(f"--out and --errors are the same file {out}; give two files")
    own = {_real(out), _real(errors)}  # our own outputs are not counted as ignored files
    if captions is not None:
        for option, output in (("--out", out), ("--errors", errors)):
            if _real(output) == _real(Path(captions)):
                raise ValueError(
                    f"{option} {output} is the captions file; writing it would destroy the "
                    "captions. Give another file"
                )
        own.add(_real(Path(captions)))

    media_extensions = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    media: list[Path] = []
    texts: set[Path] = set()
    others: list[Path] = []
    walk_problems: list[tuple[str, str]] = []
    bad_names: list[tuple[str, str]] = []
    for path in _walk(folder, walk_problems):
        suffix = path.suffix.lower()
        if suffix in media_extensions | {".txt"} and _real(path) in own:
            option = "--out" if _real(path) == _real(out) else "--errors"
            raise ValueError(
                f"{option} {path} is one of the files being indexed; writing it would destroy "
                "it. Give a file outside the folder or with another name"
            )
        if suffix in media_extensions and _shown(path) != os.fspath(path):
            bad_names.append((_shown(path), "file name is not valid UTF-8; rename the file"))
        elif suffix in media_extensions:
            media.append(path)
        elif suffix == ".txt":
            texts.add(path)
        elif _real(path) not in own:
            others.append(path)
    if not media and not bad_names:
        raise ValueError(
            f"no videos or images under {folder}; expected files ending in "
            f"{', '.join(sorted(media_extensions))}"
        )

    # Read the captions file first, so a malformed one fails before a long probe.
    given = read_captions(Path(captions), folder) if captions is not None else {}

    # Probe in threads: the work is file reads and decoding inside PyAV, not Python bytecode.
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(media), desc="probing", unit="file", disable=not progress)
    results: list[tuple[ManifestRecord | None, str | None]] = []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(media)))) as pool:
        for result in pool.map(_probe_one, media):
            results.append(result)
            bar.update()
    bar.close()

    records: list[ManifestRecord] = []
    failures: list[tuple[str, str]] = []
    caption_errors: list[tuple[str, str]] = []
    used_sidecars: set[Path] = set()
    for path, (record, reason) in zip(media, results, strict=True):
        sidecar = _sidecar(path, texts)
        if sidecar is not None:
            used_sidecars.add(sidecar)
        if record is None:
            failures.append((str(path), reason or "unknown"))
            continue
        text = given.get(_real(path), "")
        if not text and sidecar is not None:
            # The video is fine whatever its sidecar holds; only a caption can be lost, and
            # the report says so.
            try:
                text = _read_text(sidecar)
            except UnicodeDecodeError:
                caption_errors.append((str(sidecar), "caption file is not UTF-8 text"))
            except OSError as error:
                caption_errors.append(
                    (str(sidecar), f"caption file cannot be read: {error.strerror}")
                )
            problem = control_problem(text)
            if problem:
                caption_errors.append((str(sidecar), f"caption {problem}"))
            text = "" if problem else text.strip()
        if text:
            record.captions = {"original": text}
        records.append(record)

    # Captions-file entries that match no media file are reported, not counted as failures.
    known = {_real(path) for path in media}
    for path in given:
        if path not in known:
            caption_errors.append((str(path), MISSING_FILE if not path.exists() else NOT_MEDIA))
    # Text files that caption nothing are ordinary non-media files.
    ignored = len(others) + sum(1 for text in texts if text not in used_sidecars)

    failures += bad_names + walk_problems
    write_manifest(out, records)
    _write_errors(errors, failures + caption_errors)
    return IndexReport(
        indexed=len(records),
        uncaptioned=sum(1 for record in records if not record.captions),
        failed=len(failures),
        manifest=out,
        errors=errors,
        ignored=ignored,
        caption_errors=len(caption_errors),
    )
