"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="override any config key, e.g. train.epochs=5 train.lr=3e-4 preprocess.image_size=512 "
        "(values are parsed as YAML: lists as [a,b], null for None)",
    )
