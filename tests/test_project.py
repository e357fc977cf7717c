"""Project-level promises: the README's commands, CI, ruff, the CLI's help."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kinetoscope.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line for block in blocks for line in block.strip().splitlines()]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    setup = [c for c in _readme_commands() if c.startswith("python3 -m venv")]
    assert len(setup) == 2, setup
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert setup[1] in ci_lines, "'.ci/run' must run the README's test command unchanged"
    assert all("-c constraints.txt" in c for c in setup), "pin the CPU torch in both commands"


def test_constraints_pin_the_cpu_torch():
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()


def test_ruff_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices
    assert {"world", "index"} <= set(subcommands)
    for name in subcommands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: kinetoscope {name}" in capsys.readouterr().out
