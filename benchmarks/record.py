"""Shared by the benchmark scripts: print a markdown table and record it in docs/benchmarks.md.

Each benchmark owns one section of docs/benchmarks.md, delimited by HTML comments, so
re-running a benchmark replaces its own results and leaves the others alone.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; floats are shown with 3 significant digits."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line naming the machine a result was measured on."""
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}"
    )


def record(section: str, title: str, body: str, command: str) -> None:
    """Replace (or append) `section` in docs/benchmarks.md with `body`, then print it."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = (
        f"{begin}\n## {title}\n\nMeasured with `{command}` on {machine()}.\n\n{body.strip()}\n{end}"
    )
    text = (
        DOC.read_text()
        if DOC.exists()
        else "# Benchmarks\n\nEach section is rewritten by the script named in it.\n"
    )
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(block)


def record_or_print(section: str, title: str, body: str, script: str, write: bool) -> None:
    """`record` the section, named after this run's command line, when `write`; else print it."""
    import sys

    command = " ".join([f"python benchmarks/{script}", *sys.argv[1:]])
    if write:
        record(section, title, body, command)
    else:
        print(body)
