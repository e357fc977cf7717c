"""The one error type for a file that cannot be read."""

from __future__ import annotations

import os


class VideoReadError(Exception):
    """A file that cannot be read; str() is 'cannot read {path}: {reason}'.

    Raised by `probe` and `read_video` for every kind of unreadable file (missing, empty, not
    media, no video stream, undecodable, out-of-range request), so a data loader can catch this
    one type and skip the file.
    """

    path: str
    reason: str

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        # Both arguments go to Exception so the error pickles across worker processes.
        super().__init__(self.path, reason)

    def __str__(self) -> str:
        return f"cannot read {self.path}: {self.reason}"
