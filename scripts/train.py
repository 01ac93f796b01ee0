#!/usr/bin/env python3
"""Thin wrapper: ``python scripts/train.py --config C --out RUN_DIR [key=value ...]`` == ``xraytriage train``."""

import sys

from xraytriage.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
