#!/usr/bin/env python3
"""Thin wrapper: ``python scripts/train.py ARGS`` is ``xraytriage train ARGS``."""

import sys

from xraytriage.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
