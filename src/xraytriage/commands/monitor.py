"""``xraytriage monitor --model BUNDLE SCORES.csv [...] --out DIR``: deployed scores against the model's
validation reference, per time window and group; exit 5 when an alert fires (``commands.exit_codes``)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from xraytriage.commands._common import add_progress_flag
from xraytriage.commands.exit_codes import EXIT_MONITOR_ALERT, EXIT_OK, EXIT_USAGE, fail

MAX_ALERT_LINES = 20


HELP = (
    "Read one or more scores.csv (e.g. a week of nightly runs; a scan scored twice counts once) and "
    "compare them, per study-date window and per group, with the validation reference in the "
    "bundle: probability shift (PSI, KS), flagged rate, expected miss rate without labels (CBPE), "
    "out-of-scope rate and OOD-score shift. Writes monitor.json, monitor_checks.csv, report.html "
    "and TensorBoard scalars. Exit 5 when an alert fires, naming the measure, group and window. "
    "Arguments of the form KEY=VALUE override config keys (monitor.psi_limit=0.25)."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "monitor",
        help="compare deployed scores with the model's validation reference; exit 5 on an alert",
        description=HELP,
    )
    p.add_argument("--model", type=Path, required=True, help="the model bundle that produced the scores")
    p.add_argument(
        "inputs", nargs="+", metavar="SCORES", help="scores.csv / .parquet files, then KEY=VALUE overrides"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--by", help="comma-separated group columns (default monitor.by: site,manufacturer,view)")
    p.add_argument(
        "--window", choices=("day", "week"), help="time window by study date (default monitor.window)"
    )
    p.add_argument("--config", type=Path, help="YAML config for monitor.* keys (optional)")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard scalars")
    add_progress_flag(p)
    p.set_defaults(handler=run)


def split_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Scores files vs config overrides: ``monitor.x=1`` (a dotted key before '=') is an override."""
    files, overrides = [], []
    for item in inputs:
        key = item.split("=", 1)[0]
        if "=" in item and "." in key and "/" not in key and not Path(item).exists():
            overrides.append(item)
        else:
            files.append(Path(item))
    return files, overrides


def _config(args: argparse.Namespace, overrides: list[str]):  # type: ignore[no-untyped-def]
    from xraytriage.config import load_config

    if args.by is not None:
        overrides.append("monitor.by=[" + ",".join(b.strip() for b in args.by.split(",") if b.strip()) + "]")
    if args.window is not None:
        overrides.append(f"monitor.window={args.window}")
    return load_config(args.config, overrides).monitor


def run(args: argparse.Namespace) -> int:
    from xraytriage.models.bundle import load_bundle
    from xraytriage.monitoring.compare import monitor_scores
    from xraytriage.monitoring.deployed import read_deployed
    from xraytriage.monitoring.reference import ValidationReference
    from xraytriage.monitoring.report import write_outputs
    from xraytriage.utils.lock import exclusive_lock, lock_file_for
    from xraytriage.utils.progress import show_progress

    files, overrides = split_inputs(list(args.inputs))
    if not files:
        return fail("xraytriage monitor", "give at least one scores file", EXIT_USAGE)
    cfg = _config(args, overrides)
    bundle = load_bundle(args.model)
    reference = ValidationReference.from_bundle(bundle, args.model)
    deployed = read_deployed(files, reference.labels, reference.model_id, cfg.by)
    for warning in deployed.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(lock_file_for(out), f"monitor output {out}"):
        from tqdm import tqdm

        with tqdm(desc="monitoring", unit="cell", disable=not show_progress()) as bar:
            result = monitor_scores(deployed, reference, cfg, on_cell=lambda _cell: bar.update(1))
        written = write_outputs(result, out, tensorboard=not args.no_tensorboard)
    print(
        f"{result.scans} scans ({result.duplicates_dropped} repeated rows dropped) "
        f"from {len(files)} file(s); {result.tests} checks, {len(result.alerts)} alert(s) "
        f"(false-alert rate {cfg.false_alert_rate:g}, BH)"
    )
    verdicts = Counter(c.verdict for c in result.checks)
    print("verdicts: " + ", ".join(f"{verdict} {n}" for verdict, n in sorted(verdicts.items())))
    print("outputs: " + ", ".join(str(p) for p in written))
    for alert in result.alerts[:MAX_ALERT_LINES]:
        print(
            f"ALERT: {alert.what}, {alert.where}: {alert.value:.3f} "
            f"(validation {alert.reference:.3f}); {alert.why}",
            file=sys.stderr,
        )
    if len(result.alerts) > MAX_ALERT_LINES:
        print(
            f"... and {len(result.alerts) - MAX_ALERT_LINES} more alerts in {out / 'monitor.json'}",
            file=sys.stderr,
        )
    return EXIT_MONITOR_ALERT if result.alerts else EXIT_OK
