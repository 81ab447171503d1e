"""CLI commands over the source-task library: rank, library list|add|remove|build|export|import, evaluate."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def register(sub: argparse._SubParsersAction, dataset_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the library commands to the `taskrank` parser."""
