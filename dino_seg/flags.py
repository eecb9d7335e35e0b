"""Command-line helpers shared by the front-ends (train, eval, app)."""

from __future__ import annotations

import argparse


def bool_flag(value: str) -> bool:
    """The reference scripts' boolean flags: on/true/1/yes and off/false/0/no."""
    if value.lower() in ("on", "true", "1", "yes"):
        return True
    if value.lower() in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid value for a boolean flag: {value!r} (expected true or false)")
