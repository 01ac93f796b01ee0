"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse


def add_progress_flag(parser: argparse.ArgumentParser, *aliases: str) -> None:
    """``--no-progress``, the same on every long-running command (see ``utils.progress``)."""
    parser.add_argument(
        "--no-progress",
        *aliases,
        dest="no_progress",
        action="store_true",
        help="no progress bars (they are off anyway when stderr is not a terminal, e.g. redirected to a "
        "log file); per-epoch and summary lines are printed either way",
    )


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="override any config key, e.g. train.epochs=5 train.lr=3e-4 preprocess.image_size=512 "
        "(values are parsed as YAML: lists as [a,b], null for None)",
    )
