#!/usr/bin/env python3
"""Thin wrapper: ``python scripts/score.py ARGS`` is ``xraytriage score ARGS``."""

import sys

from xraytriage.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
