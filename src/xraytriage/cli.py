"""``xraytriage`` command line: one subcommand per stage, each in ``xraytriage.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from xraytriage import __version__
from xraytriage.commands.exit_codes import run_guarded
from xraytriage.utils.progress import set_progress

# Order is the order shown by --help. Each module has ``HELP`` (its description), ``register(subparsers)
# -> None`` (which sets ``handler=run``) and ``run(args) -> int``; errors go through ``exit_codes.fail``.
COMMANDS = (
    "demo",
    "prepare",
    "split",
    "audit",
    "cache",
    "train",
    "tune",
    "evaluate",
    "score",
    "monitor",
    "send",
    "export",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xraytriage",
        description="Chest X-ray triage: train, evaluate (miss rate per subgroup) and batch-score scans.",
    )
    parser.add_argument("--version", action="version", version=f"xraytriage {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"xraytriage.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    set_progress(not getattr(args, "no_progress", False))
    return run_guarded("xraytriage", lambda: args.handler(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
