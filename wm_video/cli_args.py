"""What every ``wm-video`` subcommand module shares: flag types and the ``register`` signature.

Each command group lives beside the code it drives (``wm_video/eval/cli.py``, ``wm_video/bench/cli.py``,
``train/cli.py``, ``play/cli.py``) and exposes ``register(commands)``, which adds its parser with a
``handler`` default; :mod:`wm_video.cli` calls them in turn. Heavy modules are imported inside the
handlers so ``wm-video --help`` stays instant.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Commands = argparse._SubParsersAction


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value
