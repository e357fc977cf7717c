"""Option types and the help formatter shared by the commands."""

from __future__ import annotations

import argparse


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _count(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _names(text: str) -> tuple[str, ...]:
    """argparse type: a comma-separated list of names (the config checks them)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None, "" and False (their help says what happens without the option)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == "" or action.default is False:
            return action.help
        return super()._get_help_string(action)
