"""Shared by the tests that train over ranks: launching two ranks under torchrun, and comparing
what runs wrote."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch


def run_two_ranks(script: str, folder: Path, *args: str, timeout: float = 300) -> None:
    """Run `script` (Python source) as two ranks under torchrun (gloo on CPU, one thread each)
    with `args`; fail with its stderr unless it exits 0. A run past `timeout` is killed with
    every process it started (the ranks too, which a hang would otherwise leave behind)."""
    path = folder / "ranks.py"
    path.write_text(script)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(path), *args]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               start_new_session=True)  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        raise AssertionError(f"timed out after {timeout} s\n{stderr[-3000:]}") from None
    assert process.returncode == 0, stderr[-3000:]


def read_metrics(folder: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def optimizer_moments(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Every optimizer state tensor, named "parameter index.name"."""
    return {
        f"{index}.{name}": value
        for index, moments in optimizer.state_dict()["state"].items()
        for name, value in moments.items()
    }


def assert_same_tensors(expected: dict[str, dict], actual: dict[str, dict]) -> None:
    """The same parts, the same names in each, the same values within float summation order."""
    for part in expected:
        assert expected[part].keys() == actual[part].keys(), part
        for name in expected[part]:
            torch.testing.assert_close(actual[part][name], expected[part][name], atol=1e-5,
                                       rtol=1e-4)  # fmt: skip
