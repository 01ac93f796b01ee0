"""``xraytriage split MANIFEST``: check a manifest's split for patient leakage, or re-split it by patient."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xraytriage.commands.exit_codes import EXIT_FAILED, EXIT_USAGE, fail

HELP = (
    "With --check: report patients whose images are in more than one split (or fold) and exit 1 if "
    "any. With --out: write a copy of the manifest with a new seeded, label-stratified, "
    "patient-level "
    "split (and optional folds). Works on any manifest, including hand-made ones."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from xraytriage.commands.prepare import add_split_options

    parser = subparsers.add_parser(
        "split",
        help="check a manifest for patients in two splits, or write a new patient-level split",
        description=HELP,
    )
    parser.add_argument("manifest", type=Path, help="manifest CSV/Parquet (see docs/data.md)")
    parser.add_argument("--out", type=Path, help="where to write the re-split manifest")
    parser.add_argument("--check", action="store_true", help="only check the existing split for leakage")
    parser.add_argument(
        "--labels",
        metavar="LIST",
        help="label columns to stratify by, comma-separated "
        "(default: every column holding only 1/0/-1/blank)",
    )
    parser.add_argument("--root", type=Path, help="base folder for relative paths (default: the manifest's)")
    add_split_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from xraytriage.commands.prepare import finish_splits
    from xraytriage.data.manifest import (
        ManifestError,
        guess_label_columns,
        leakage_message,
        read_manifest,
        write_manifest,
    )
    from xraytriage.data.splits import SplitError, split_summary

    if not args.check and args.out is None:
        return fail("xraytriage split", "give --out NEW.csv to write a new split, or --check", EXIT_USAGE)
    try:
        df = read_manifest(args.manifest, root=args.root, leakage="ignore")
        labels = (
            [c.strip() for c in args.labels.split(",") if c.strip()]
            if args.labels
            else guess_label_columns(df)
        )
        if args.check:
            found = [leakage_message(df, str(args.manifest), c) for c in ("split", "fold") if c in df.columns]
            problems = [m for m in found if m]
            if "split" not in df.columns:
                print(f"{args.manifest}: no 'split' column; nothing to check")
                return 0
            print(split_summary(df, labels[:6]).to_string(index=False))
            for message in problems:
                print(message, file=sys.stderr)
            if not problems:
                print(f"{args.manifest}: no patient is in more than one split")
            return 1 if problems else 0
        df = finish_splits(df, labels, args, keep=False)
        write_manifest(df, args.out, labels)
    except (ManifestError, SplitError) as exc:
        return fail("xraytriage split", str(exc), EXIT_FAILED)
    strata = (
        ", ".join(labels[:6]) + ("..." if len(labels) > 6 else "")
        if labels and not args.no_stratify
        else "none"
    )
    print(
        f"wrote {args.out}: {len(df)} images, {df['patient_id'].nunique()} patients, stratified by {strata}"
    )
    print(split_summary(df, labels[:6]).to_string(index=False))
    return 0
