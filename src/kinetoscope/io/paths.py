"""Output paths checked before any work: a command that cannot write its result says so at once.

`check_output_file` and `check_output_folder` raise ValueError naming the option and the path
for an output that cannot be written: a folder where a file belongs (or the reverse), a parent
that is a file, a folder that is not writable, a name the file system cannot hold. They create
nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

NAME_MAX = 255  # bytes in one path component on every common file system


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (the current folder for a relative path)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_name(path: Path, what: str) -> None:
    """ValueError for a path no file system can hold (checked before anything touches it)."""
    if "\0" in str(path):
        raise ValueError(f"{what} {path!r}: a path cannot contain a NUL character")
    for part in Path(os.path.abspath(path)).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise ValueError(
                f"{what} {path}: the name {part[:40]}... is longer than {NAME_MAX} bytes"
            )


def _check_creatable(path: Path, what: str) -> None:
    """ValueError unless the folders up to `path` exist or can be created by this user."""
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise ValueError(f"{what} {path}: cannot be created, {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: the folder {ancestor} is not writable")


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """`path` as a Path if a file can be written there (replacing an existing file is fine);
    ValueError naming `what` (e.g. "--out") and the path if not."""
    path = Path(path)
    _check_name(path, what)
    if path.is_dir():
        raise ValueError(f"{what} {path} is an existing folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{what} {path} exists and is not writable")
    _check_creatable(path, what)
    return path


def check_output_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """`path` as a Path if it is a folder or can become one, and files can be written in it;
    ValueError naming `what` and the path if not."""
    path = Path(path)
    _check_name(path, what)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder; give a folder name")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} is not writable")
    _check_creatable(path, what)
    return path
