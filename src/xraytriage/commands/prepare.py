"""``xraytriage prepare SOURCE --root DIR --out manifest.csv``: a public dataset as published, or a folder
export, becomes a validated manifest with labels, patients, subgroups and a patient-level split."""

from __future__ import annotations

import argparse
from pathlib import Path

from xraytriage.commands._common import add_progress_flag
from xraytriage.commands.exit_codes import EXIT_FAILED, EXIT_USAGE, fail

SOURCES = (
    "nih-cxr14",
    "rsna-pneumonia",
    "chexpert",
    "mimic-cxr-jpg",
    "siim-pneumothorax",
    "vindr-cxr",
    "covid-chestxray",
    "folder",
)


def add_split_options(parser: argparse.ArgumentParser) -> None:
    """Split options shared by ``prepare`` and ``split``."""
    group = parser.add_argument_group("patient-level split")
    group.add_argument(
        "--val", type=float, default=0.1, help="share of images for validation (whole patients; default 0.1)"
    )
    group.add_argument(
        "--test", type=float, default=0.2, help="share of images for test, whole patients only (default 0.2)"
    )
    group.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same split")
    group.add_argument(
        "--folds",
        type=int,
        default=0,
        metavar="K",
        help="also write a 'fold' column (0..K-1) over the non-test patients for K-fold cross-validation; "
        "fold --val-fold becomes 'val', the others 'train' (0 = off)",
    )
    group.add_argument("--val-fold", type=int, default=0, help="which fold is 'val' when --folds is set")
    group.add_argument(
        "--no-stratify",
        action="store_true",
        help="plain random patient split instead of stratifying by label (stratified by default)",
    )


HELP = (
    "Read a dataset exactly as its publisher ships it and write a manifest (CSV, or Parquet by suffix) "
    "with path, patient_id, study_id, label columns, split and sex/age/view/site/manufacturer. "
    "Splits are by patient (no patient in two splits), seeded and stratified by label. "
    "See docs/data.md for one example per source.\n\nSources:\n"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from xraytriage.data.adapters import ADAPTERS

    sources = "\n".join(f"  {name:18s} {desc}" for name, (_, desc) in ADAPTERS.items())
    parser = subparsers.add_parser(
        "prepare",
        help="turn a public dataset or a folder export into a validated manifest",
        description=HELP + sources,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source", choices=SOURCES, metavar="SOURCE", help="dataset kind: " + ", ".join(SOURCES)
    )
    parser.add_argument(
        "--root", type=Path, required=True, help="the dataset folder as downloaded / exported"
    )
    parser.add_argument("--out", type=Path, required=True, help="manifest to write (.csv or .parquet)")
    parser.add_argument(
        "--uncertain",
        choices=("ignore", "zeros", "ones", "keep"),
        default="ignore",
        help="CheXpert / MIMIC-CXR uncertain labels (-1): ignore = blank, left out of the loss (default); "
        "zeros / ones = count as negative / positive; keep = write -1",
    )
    parser.add_argument(
        "--labeler",
        choices=("chexpert", "negbio"),
        default="chexpert",
        help="MIMIC-CXR-JPG: which label table to use (mimic-cxr-2.0.0-chexpert or -negbio)",
    )
    parser.add_argument(
        "--patients", type=Path, help="MIMIC-CXR-JPG: MIMIC-IV patients.csv(.gz) for sex and age (optional)"
    )
    parser.add_argument(
        "--vote",
        choices=("any", "majority"),
        default="any",
        help="VinDr-CXR: a label is positive if any radiologist (default) or most radiologists marked it",
    )
    parser.add_argument(
        "--demographics",
        type=Path,
        help="folder: CSV with one row per image (column path/filename/Image Index) and any of patient_id, "
        "study_id, sex, age, view, site, manufacturer (NIH-style 'Patient ID', 'Patient Age' also work)",
    )
    parser.add_argument(
        "--patient-regex",
        metavar="REGEX",
        help="folder: take the patient ID from the file name, e.g. '^(\\d+)_' for NIH names 00000013_005.png "
        "(first group, or a group named 'patient')",
    )
    parser.add_argument("--positive", metavar="CLASS", help="folder: class folder that sets finding=1")
    parser.add_argument(
        "--no-headers", action="store_true", help="do not read DICOM headers (faster; sex/age/view unknown)"
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        metavar="FILE",
        help="folder: the site's secret key for PatientID pseudonyms (HMAC-SHA256). Default: "
        "$XRAYTRIAGE_KEY_FILE, else ~/.config/xraytriage/site.key, created on first use. "
        "Never written into any output; keep it secret and backed up",
    )
    parser.add_argument(
        "--keep-split",
        action="store_true",
        help="keep the publisher's split (or the folder's train/val/test folders) instead of re-splitting; "
        "it is checked for patient leakage, and val is carved from train by patient if it has none",
    )
    parser.add_argument(
        "--views",
        metavar="LIST",
        help="keep only these views, comma-separated: 'frontal' (PA and AP, including AP supine/erect/"
        "axial and decubitus frontals), 'lateral', or exact views such as PA,AP; default all",
    )
    parser.add_argument(
        "--drop-missing",
        action="store_true",
        help="leave out rows whose image file is missing (default: list them and stop)",
    )
    parser.add_argument(
        "--absolute-paths",
        action="store_true",
        help="write absolute paths (default: relative to the manifest folder when images lie under it)",
    )
    add_split_options(parser)
    add_progress_flag(parser)
    parser.set_defaults(handler=run)


def finish_splits(df, labels: list[str], args: argparse.Namespace, keep: bool):  # type: ignore[no-untyped-def]
    """Keep (and check) or make the patient-level split, then the optional folds."""
    import pandas as pd

    from xraytriage.data.manifest import ManifestError, patient_leakage
    from xraytriage.data.splits import assign_folds, assign_splits

    stratify_by = [] if args.no_stratify else labels
    if keep and "split" in df.columns and df["split"].notna().any():
        leaks = patient_leakage(df)
        if leaks:
            rows = int(df["patient_id"].astype(str).isin(list(leaks)).sum())
            raise ManifestError(
                f"the published split is not patient-disjoint: {len(leaks)} patient(s) appear in "
                f"more than one "
                f"split ({rows} images). Drop --keep-split to re-split by patient"
            )
        split = df["split"].astype("string")
        if not split.eq("val").any() and args.val > 0:
            train = split.eq("train").fillna(False)
            carved = assign_splits(df.loc[train], stratify_by, val=args.val, test=0.0, seed=args.seed)
            df.loc[train, "split"] = carved["split"].to_numpy()
        unassigned = df["split"].isna()
        if unassigned.any():
            print(f"note: {int(unassigned.sum())} rows are in no published split; they are left out")
            df = df.loc[~unassigned].reset_index(drop=True)
    else:
        df = assign_splits(
            df, stratify_by, val=args.val, test=args.test, seed=args.seed, stratify=not args.no_stratify
        )
    if args.folds:
        df = assign_folds(
            df,
            stratify_by,
            k=args.folds,
            seed=args.seed,
            stratify=not args.no_stratify,
            val_fold=args.val_fold,
        )
    return df if isinstance(df, pd.DataFrame) else pd.DataFrame(df)


def print_summary(df, labels: list[str], out: Path) -> None:  # type: ignore[no-untyped-def]
    from xraytriage.data.splits import split_summary

    print(f"wrote {out}: {len(df)} images, {df['patient_id'].nunique()} patients")
    summary = split_summary(df, [c for c in labels if c in df.columns][:6])
    print(summary.to_string(index=False))
    sexes = df["sex"].value_counts().to_dict() if "sex" in df.columns else {}
    print("sex: " + ", ".join(f"{k} {v}" for k, v in sexes.items()))
    if "age" in df.columns:
        print(f"age known for {int(df['age'].notna().sum())} images")
    print("\nconfig:\n  data:\n    manifest: " + str(out) + "\n    labels: [" + ", ".join(labels) + "]")
    print("  (any subset of these label columns works as data.labels; 'finding' = any abnormality)")


def duplicates_report_path(out: Path) -> Path:
    """Details of what ``prepare`` merged, beside the manifest."""
    return out.with_name(out.stem + ".duplicates.csv")


def merge_repeated_files(df, labels: list[str], out: Path):  # type: ignore[no-untyped-def]
    """One row per file and one patient id per person (data.duplicates); one line here, details in
    the ``.duplicates.csv`` report beside the manifest (a stale one from an earlier run is removed)."""
    from xraytriage.data.duplicates import merge_duplicate_files
    from xraytriage.utils.atomic import atomic_path
    from xraytriage.utils.csv_safety import safe_frame

    df, report = merge_duplicate_files(df, labels)
    details = duplicates_report_path(out)
    if not report.changed:
        details.unlink(missing_ok=True)
        return df
    with atomic_path(details) as tmp:
        safe_frame(report.to_frame()).to_csv(tmp, index=False)
    print(f"note: {report.summary()}; details in {details}")
    return df


def keep_views(df, views: str):  # type: ignore[no-untyped-def]
    """``--views``: the rows whose view is listed (data.views: 'frontal', 'lateral' or exact views)."""
    from xraytriage.data.adapters._common import AdapterError
    from xraytriage.data.views import view_matches

    if "view" not in df.columns:
        raise AdapterError(f"--views {views}: this source records no view for its images; drop --views")
    keep = view_matches(df["view"], views)
    print(f"note: --views {views}: kept {int(keep.sum())} of {len(df)} images")
    return df.loc[keep.to_numpy()].reset_index(drop=True)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from xraytriage.data.adapters import AdapterError, PrepareOptions, get_adapter
    from xraytriage.data.manifest import (
        ManifestError,
        describe_missing,
        missing_files,
        validate_manifest,
        write_manifest,
    )
    from xraytriage.data.pseudonyms import KeyFileError
    from xraytriage.data.splits import SplitError

    root = Path(args.root).expanduser()
    if not root.is_dir():
        return fail("xraytriage prepare", f"--root {root}: not a folder", EXIT_USAGE)
    same = (
        "uncertain",
        "labeler",
        "patients",
        "vote",
        "demographics",
        "patient_regex",
        "positive",
        "key_file",
    )
    opts = PrepareOptions(**{name: getattr(args, name) for name in same}, read_headers=not args.no_headers)
    try:
        prepared = get_adapter(args.source)(root.resolve(), opts)
        df = prepared.table.copy()
        for note in prepared.notes:
            print(f"note: {note}")
        df["dataset"] = args.source
        df = merge_repeated_files(df, prepared.labels, Path(args.out))
        if args.views:
            df = keep_views(df, args.views)
        gone = missing_files(df)
        if gone.any():
            message = describe_missing(df, gone, f"{args.source} under {root}")
            if not args.drop_missing:
                return fail("xraytriage prepare", f"{message}", EXIT_FAILED)
            print(f"note: --drop-missing: {message.splitlines()[0]} -- those rows are left out")
            df = df.loc[~gone].reset_index(drop=True)
        if df.empty:
            return fail("xraytriage prepare", "no images left to write", EXIT_FAILED)
        df = finish_splits(df, prepared.labels, args, keep=args.keep_split)
        df = validate_manifest(df, source=f"{args.source} manifest", base=root, labels=prepared.labels)
        out = Path(args.out)
        write_manifest(df, out, prepared.labels, absolute_paths=args.absolute_paths)
    except (AdapterError, ManifestError, SplitError) as exc:
        return fail("xraytriage prepare", str(exc), EXIT_FAILED)
    except KeyFileError as exc:
        return fail("xraytriage prepare", str(exc), EXIT_USAGE)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        return fail("xraytriage prepare", f"a table under {root} cannot be parsed: {exc}", EXIT_FAILED)
    print_summary(df, prepared.labels, out)
    return 0
