"""``xraytriage audit``: who is in the manifest, label prevalence per split and subgroup, missing
attributes, and patients leaking across splits."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xraytriage.commands.exit_codes import EXIT_FAILED, EXIT_LEAKAGE, EXIT_OK, fail

HELP = """Audit a manifest before training or evaluating on it.

Prints tables and (with --out) writes files: scans and patients per split; positives, labelled scans
and prevalence per label and split; how many scans lack each subgroup attribute; and patients whose
scans appear in more than one split. Per-subgroup counts (sex, age band, view, site, ... from the
config's evaluation.subgroups, and intersections) are in audit_subgroups.csv and the JSON.
--json prints the whole audit as one JSON document on stdout instead of the tables (the same content
as audit.json: counts only, no patient ID).

Patient leakage makes validation and test figures optimistic and is an error: exit code 4. The
printed summary and audit.json hold counts only; with --out, leaking_patients.csv lists the
patient_id values (your manifest's own keys) so you can fix the split.

Files written with --out: audit.json, audit_splits.csv, audit_subgroups.csv, audit_missing.csv,
and leaking_patients.csv (only when there is leakage).

Exit codes: 0 no problem found; 1 unreadable manifest; 2 configuration error; 4 patient leakage.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="counts, prevalence per subgroup and split, patient leakage",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--manifest", required=True, type=Path, metavar="CSV", help="manifest CSV/Parquet to audit"
    )
    p.add_argument(
        "--labels",
        default=None,
        help="comma-separated label columns (default: data.labels from --config, else every column "
        "whose values are all 1/0/-1/blank)",
    )
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="write audit files into this folder")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the audit as JSON on stdout (machine-readable; messages go to stderr)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML config (its evaluation section: subgroups, age_bands, intersections)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. evaluation.age_bands=[0,50,70,200]",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from xraytriage.config import EvaluationConfig, load_config
    from xraytriage.data.manifest import ManifestError, read_manifest
    from xraytriage.evaluation.audit import audit_manifest
    from xraytriage.utils.atomic import atomic_path, atomic_write_text
    from xraytriage.utils.csv_safety import safe_frame

    overrides = list(args.overrides)
    labels: list[str] | None = (
        [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    )
    if args.config is not None or overrides:
        cfg = load_config(args.config, overrides)
        eval_cfg = cfg.evaluation
        if labels is None and args.config is not None:
            labels = list(cfg.data.labels)
    else:
        eval_cfg = EvaluationConfig()
    as_json = args.json
    notes = sys.stderr if as_json else sys.stdout  # with --json, stdout holds the JSON document only
    try:
        df = read_manifest(args.manifest, labels=labels, leakage="ignore")  # reported below instead
    except ManifestError as exc:
        return fail("xraytriage audit", str(exc), EXIT_FAILED)
    result = audit_manifest(df, labels, eval_cfg)
    if not result.labels:
        print("xraytriage audit: no label column found; pass --labels a,b", file=notes)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    else:
        for line in result.summary_lines():
            print(line)
    if args.out is not None:
        out: Path = args.out
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "audit.json", json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
        for name, frame in (
            ("splits", result.splits),
            ("subgroups", result.subgroups),
            ("missing", result.missing),
        ):
            with atomic_path(out / f"audit_{name}.csv") as tmp:
                safe_frame(frame).to_csv(tmp, index=False)
        leak_file = out / "leaking_patients.csv"
        if result.leakage:
            rows = pd.DataFrame(
                {"patient_id": list(result.leakage), "splits": [";".join(v) for v in result.leakage.values()]}
            )
            with atomic_path(leak_file) as tmp:
                safe_frame(rows).to_csv(tmp, index=False)
        elif leak_file.exists():
            leak_file.unlink()  # a stale list from an earlier run would mislead
        print(f"audit files written to {out}", file=notes)
    return EXIT_LEAKAGE if result.has_leakage else EXIT_OK
