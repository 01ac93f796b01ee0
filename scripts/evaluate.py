#!/usr/bin/env python3
"""Thin wrapper: ``python scripts/evaluate.py ARGS`` is ``xraytriage evaluate ARGS``."""

import sys

from xraytriage.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
