"""``xraytriage evaluate``: a model bundle on a labelled manifest, or any model's predictions file ->
metrics.json, subgroups.csv, predictions.csv, report.html and TensorBoard entries."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xraytriage.columns import prob_column, prob_labels
from xraytriage.commands._common import add_overrides, add_progress_flag
from xraytriage.commands.exit_codes import (
    EXIT_CANNOT_CERTIFY,
    EXIT_FAILED,
    EXIT_GATE_FAILED,
    EXIT_OK,
    fail,
)
from xraytriage.evaluation.scope_groups import SCOPE_ATTRIBUTE
from xraytriage.utils.errors import UsageError

log = logging.getLogger(__name__)


HELP = """Evaluate a trained model bundle on the labelled scans of a manifest, or evaluate the
predictions of any model (--predictions).

At the operating point (chosen on validation data and applied unchanged), computes per class:
sensitivity, miss rate, specificity, PPV, NPV, F1, accuracy, AUROC, AUPRC, Brier score, expected
calibration error and the confusion matrix, with confidence intervals that account for several
scans per patient and never have zero width; the same per subgroup (sex, age band, view, site, ...
and configured intersections) with each group's difference to a reference group; calibration; a
data audit; and the fairness gate, decided on interval bounds.

--predictions PRED.csv|.parquet: columns patient_id, one truth column L and one probability column
prob_L per label, optional split (val/test) and subgroup columns. Thresholds come from --threshold,
else from the val rows by evaluation.operating_point; they are applied to the test rows (all rows
without a split column). This is how a hospital audits a vendor's or an older model's outputs.

Writes into --out: metrics.json (versioned schema, no patient IDs), subgroups.csv, predictions.csv
(keeps your patient_id), report.html (self-contained, opens offline) and tensorboard/.

Patients in more than one split (leakage) make the figures optimistic: evaluation is refused unless
--allow-leakage is given, and then every output is marked.

Exit codes: 0 evaluated, fairness gate passed (or no limits set); 3 the gate failed (the data show a
limit is exceeded); 4 the gate cannot certify (intervals too wide, or a group or attribute could not
be assessed: each is printed); 2 usage or configuration error, patient leakage included; 1 other
errors (unreadable manifest, no scan decodable, ...).
"""


@dataclass
class EvaluationInputs:
    """What ``evaluate_predictions`` needs, from a bundle run on a manifest or from a predictions file."""

    predictions: Any  # DataFrame of the rows to evaluate
    labels: list[str]
    thresholds: dict[str, Any]  # label -> OperatingPoint
    val_predictions: Any  # DataFrame or None
    model_id: str
    audit_frame: Any  # the whole table, audited for leakage
    temperatures: dict[str, float] = field(default_factory=dict)
    skipped_unreadable: int = 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="metrics with confidence intervals, subgroup comparisons, fairness gate and report.html",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, metavar="BUNDLE", help="model bundle (model.pt from train)")
    p.add_argument(
        "--manifest",
        type=Path,
        metavar="CSV",
        help="manifest CSV/Parquet with path, patient_id, label columns, split and subgroup columns",
    )
    p.add_argument(
        "--predictions",
        type=Path,
        metavar="PRED",
        help="evaluate this predictions file (CSV or Parquet) instead of a bundle on a manifest",
    )
    p.add_argument(
        "--out", required=True, type=Path, metavar="EVAL_DIR", help="output folder (created if needed)"
    )
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="LABEL=T",
        help="use threshold T for LABEL (repeatable) instead of the bundle's or the one chosen on val rows",
    )
    p.add_argument(
        "--allow-leakage",
        action="store_true",
        help="evaluate even when patients appear in more than one split (every output is marked)",
    )
    p.add_argument(
        "--split",
        default="test",
        help="manifest split to evaluate (default: test); 'all' = every row. A manifest without "
        "a split column is evaluated whole",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML config; its 'evaluation' section sets subgroups, age bands, intervals, operating "
        "point and fairness limits (default: built-in defaults)",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=None,
        help="base folder for relative scan paths (default: the manifest's folder)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="scans per inference batch (default 32)")
    p.add_argument("--workers", type=int, default=2, help="data-loading worker processes (default 2)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write EVAL_DIR/tensorboard")
    add_progress_flag(p)
    add_overrides(p)
    p.set_defaults(handler=run)


def _config(args: argparse.Namespace):
    """(evaluation section, full config or None)."""
    from xraytriage.config import EvaluationConfig, load_config

    overrides = list(args.overrides)
    if args.config is None and not overrides:
        return EvaluationConfig(), None
    cfg = load_config(args.config, overrides)
    return cfg.evaluation, cfg


def parse_thresholds(items: list[str], labels: list[str]) -> dict[str, float]:
    """``["finding=0.42"]`` -> ``{"finding": 0.42}``; unknown labels and bad numbers are usage errors."""
    out: dict[str, float] = {}
    for item in items:
        label, sep, value = item.partition("=")
        label = label.strip()
        if not sep or label not in labels:
            raise UsageError(
                f"--threshold {item!r}: expected LABEL=T with LABEL one of {', '.join(labels)}, e.g. "
                f"--threshold {labels[0]}=0.4"
            )
        try:
            out[label] = float(value)
        except ValueError:
            raise UsageError(f"--threshold {item!r}: {value!r} is not a number") from None
    return out


def _leakage_check(table, source: str, allow: bool) -> None:
    from xraytriage.data.manifest import leakage_message

    message = leakage_message(table, source) if "split" in table.columns else None
    if message and not allow:
        raise UsageError(
            f"{message} Evaluation refused (figures would be optimistic); --allow-leakage overrides."
        )
    if message:
        print(f"WARNING (--allow-leakage): {message}")


def _bundle_operating_points(bundle) -> dict[str, Any]:
    from xraytriage.evaluation.thresholds import OperatingPoint

    ops = {}
    for label in bundle.labels:
        stored = bundle.operating_points.get(label)
        if stored:
            ops[label] = OperatingPoint.from_json(stored).with_source("bundle")
        elif label in bundle.thresholds:
            ops[label] = OperatingPoint.given(bundle.thresholds[label], "bundle (no record of its choice)")
    return ops


def _select(df, split: str, val_name: str):
    """(rows to evaluate, validation rows or None)."""
    if "split" not in df.columns or split == "all":
        return df, None
    chosen = df[df["split"] == split]
    val = df[df["split"] == val_name] if split != val_name else None
    return chosen, (val if val is not None and len(val) else None)


def _read_predictions(path: Path):
    import pandas as pd

    if not path.is_file():
        raise UsageError(f"{path}: predictions file not found")
    try:
        if path.suffix.lower() == ".parquet":
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(path, dtype={"patient_id": str, "split": str}, keep_default_na=True)
    except ImportError:
        raise UsageError(
            f"{path}: reading Parquet needs pyarrow (pip install 'xraytriage[parquet]')"
        ) from None
    except Exception as exc:
        raise UsageError(f"{path}: cannot be read as CSV/Parquet ({exc.__class__.__name__}: {exc})") from None
    labels = prob_labels(table.columns)
    if not labels:
        raise UsageError(
            f"{path}: no probability column; add one prob_L column per label L (e.g. prob_finding)"
        )
    lacking = [label for label in labels if label not in table.columns]
    if lacking:
        raise UsageError(
            f"{path}: column(s) {', '.join(prob_column(x) for x in lacking)} have no truth column "
            f"{', '.join(lacking)} (1 positive, 0 negative, -1 uncertain, blank unknown)"
        )
    if "patient_id" not in table.columns:
        raise UsageError(f"{path}: no patient_id column; intervals resample patients, so every row needs one")
    ids = table["patient_id"].astype("string").str.strip()
    if (ids.isna() | (ids == "")).any():
        raise UsageError(
            f"{path}: column patient_id is empty in {int((ids.isna() | (ids == '')).sum())} row(s); "
            "give every scan its patient's identifier"
        )
    return table, labels


def _prediction_splits(table, path: Path, val_name: str, test_name: str):
    """(test rows, validation rows or None) of a predictions file."""
    if "split" not in table.columns:
        return table, None
    split = table["split"].astype("string").str.strip().str.lower()
    test, val = table[split == test_name], table[split == val_name]
    other = int((~split.isin([test_name, val_name])).sum())
    if other:
        print(f"note: {other} row(s) of {path} with a split other than {val_name}/{test_name} are left out")
    if test.empty:
        raise UsageError(
            f"{path}: no rows with split '{test_name}' to evaluate (column split: {val_name}/{test_name})"
        )
    return test, (val if len(val) else None)


def _summary(result) -> list[str]:
    lines = []
    for label, block in result.classes.items():
        m, c = block.metrics, block.counts
        line = (
            f"{label}: threshold {block.threshold:.4f} | n={c.n} ({c.positives} pos) | "
            f"sensitivity {m['sensitivity'].text()} | miss rate {m['miss_rate'].text()} | "
            f"AUROC {m['auroc'].text()}"
        )
        if block.validation is not None:
            line += f" | validation sensitivity {block.validation.metrics['sensitivity'].text()}"
        lines.append(line)
        lines.append(f"  operating point: {block.operating_point.describe()}")
        worst = [
            (a.worst_group_miss_rate, a.worst_group)
            for a in block.attributes.values()
            if a.available and a.worst_group_miss_rate is not None and a.name != SCOPE_ATTRIBUTE
        ]
        if worst:
            est, group = max(worst, key=lambda w: w[0].value)
            lines.append(f"  worst subgroup: {group} miss rate {est.text()}")
        lines += _scope_lines(block)
    conf = result.confidence * 100
    lines.append(
        f"  (intervals: {conf:g}% — rates: Wilson score on patient-adjusted effective sizes; AUROC: Newcombe "
        "score; group differences: Newcombe hybrid score; F1/AUPRC/Brier/ECE: patient bootstrap)"
    )
    return lines


def _scope_lines(block) -> list[str]:
    """In- and out-of-scope scans apart (only when both occur: evaluation.scope_groups)."""
    attr = block.attributes.get(SCOPE_ATTRIBUTE)
    if attr is None or not attr.available:
        return []
    lines = []
    for row in attr.groups:
        m = row.metrics
        parts = [
            f"{key.replace('_', ' ')} {m[key].text()}" for key in ("sensitivity", "miss_rate") if key in m
        ]
        lines.append(f"  {row.group}: n={row.n} ({row.positives} pos) | " + " | ".join(parts or [row.status]))
    return lines


def _gate_lines(result) -> list[str]:
    gate = result.gate
    if gate.verdict == "no limits":
        return ["fairness gate: no limits set (evaluation.fairness)"]
    head = {"pass": "fairness gate passed", "fail": "FAIRNESS GATE FAILED:"}.get(
        gate.verdict, "FAIRNESS GATE: CANNOT CERTIFY (the data cannot show that the limits hold):"
    )
    lines = [head]
    lines += [f"  {line}" for line in gate.failures + gate.uncertain]
    lines += [f"  could not be checked: {why}" for why in gate.unchecked]
    return lines


def _exit_code(result) -> int:
    return {"fail": EXIT_GATE_FAILED, "cannot certify": EXIT_CANNOT_CERTIFY}.get(result.gate.verdict, EXIT_OK)


def _subgroup_columns(eval_cfg) -> list[str]:
    return [*eval_cfg.subgroups, *(c for combo in eval_cfg.intersections for c in combo)]


def _predict_bundle(args: argparse.Namespace, eval_cfg, full_cfg) -> EvaluationInputs | int:
    """Bundle + manifest: run the model; returns evaluate_predictions' inputs, or an exit code."""
    from xraytriage import models
    from xraytriage.data.manifest import ManifestError, check_split_values, read_manifest
    from xraytriage.evaluation.identifiers import refuse_identifier_subgroups

    if args.manifest is None:
        raise UsageError("--model needs --manifest (the labelled scans to evaluate on)")
    val_name = full_cfg.data.val_split if full_cfg is not None else "val"
    if not args.model.is_file():
        return fail("xraytriage evaluate", f"model bundle not found: {args.model}", EXIT_FAILED)
    bundle = models.load_bundle(args.model)
    try:
        df = read_manifest(args.manifest, root=args.root, labels=bundle.labels, leakage="ignore")
        split = str(args.split).strip().lower()
        known = {"train", "val", "test", val_name, *([] if split == "all" else [split])}
        if full_cfg is not None:
            known |= {full_cfg.data.train_split, full_cfg.data.test_split}
        check_split_values(df, known, str(args.manifest))
    except ManifestError as exc:
        return fail("xraytriage evaluate", str(exc), EXIT_FAILED)
    _leakage_check(df, str(args.manifest), args.allow_leakage)
    refuse_identifier_subgroups(df, _subgroup_columns(eval_cfg))  # before any inference
    thresholds = {**_bundle_operating_points(bundle), **parse_thresholds(args.threshold, list(bundle.labels))}
    rows, val_rows = _select(df, split, val_name)
    if rows.empty:
        have = ", ".join(sorted(map(str, df["split"].dropna().unique()))) if "split" in df.columns else "none"
        message = f"no rows with split '{split}' in {args.manifest} (splits present: {have})"
        return fail("xraytriage evaluate", message, EXIT_FAILED)
    from xraytriage.inference import predict_manifest  # here: the CLI starts without torch

    kwargs = {"batch_size": args.batch_size, "num_workers": args.workers, "device": args.device}
    kwargs["scope"] = _scope_checker(bundle, full_cfg)
    predictions = predict_manifest(bundle, rows, **kwargs)
    skipped = list(predictions.attrs.get("failed", []))
    if skipped:
        print(f"xraytriage evaluate: {len(skipped)} scan(s) could not be read and were skipped")
    if predictions.empty:
        return fail("xraytriage evaluate", "no scan could be decoded; nothing to evaluate", EXIT_FAILED)
    val_predictions = predict_manifest(bundle, val_rows, **kwargs) if val_rows is not None else None
    return EvaluationInputs(
        predictions=predictions,
        labels=list(bundle.labels),
        thresholds=thresholds,
        val_predictions=None if val_predictions is None or val_predictions.empty else val_predictions,
        model_id=bundle.model_id,
        audit_frame=df,
        temperatures=dict(bundle.temperatures),
        skipped_unreadable=len(skipped),
    )


def _scope_checker(bundle, full_cfg) -> Any:
    """The bundle's validated scope with the config's ``scope.*`` keys (None: switched off)."""
    from xraytriage.config import ScopeConfig
    from xraytriage.scope import ScopeChecker, ValidatedScope

    cfg = full_cfg.scope if full_cfg is not None else ScopeConfig()
    if not cfg.enabled:
        return None
    return ScopeChecker(ValidatedScope.from_payload(bundle.scope).with_config(cfg))


def _from_predictions_file(args: argparse.Namespace, eval_cfg, full_cfg) -> EvaluationInputs:
    if args.model is not None or args.manifest is not None:
        raise UsageError("--predictions evaluates a predictions file: leave out --model and --manifest")
    table, labels = _read_predictions(args.predictions)
    data = full_cfg.data if full_cfg is not None else None
    val_name = data.val_split if data is not None else "val"
    test_name = data.test_split if data is not None else "test"
    _leakage_check(table, str(args.predictions), args.allow_leakage)
    from xraytriage.evaluation.identifiers import refuse_identifier_subgroups

    refuse_identifier_subgroups(table, _subgroup_columns(eval_cfg))
    test, val = _prediction_splits(table, args.predictions, val_name, test_name)
    return EvaluationInputs(
        predictions=test,
        labels=labels,
        thresholds={k: _given(v) for k, v in parse_thresholds(args.threshold, labels).items()},
        val_predictions=val,
        model_id=f"predictions file {args.predictions.name}",
        audit_frame=table,
    )


def _given(threshold: float):
    from xraytriage.evaluation.thresholds import OperatingPoint

    return OperatingPoint.given(threshold, "command line (--threshold)")


def run(args: argparse.Namespace) -> int:
    eval_cfg, full_cfg = _config(args)
    try:
        if args.predictions is not None:
            inputs = _from_predictions_file(args, eval_cfg, full_cfg)
        elif args.model is not None:
            inputs = _predict_bundle(args, eval_cfg, full_cfg)
        else:
            raise UsageError("give --model BUNDLE --manifest CSV, or --predictions PRED.csv")
    except UsageError as exc:
        return fail("xraytriage evaluate", str(exc), exc.exit_code)
    if isinstance(inputs, int):
        return inputs
    return _evaluate(args, eval_cfg, inputs)


def _evaluate(args: argparse.Namespace, eval_cfg, inputs: EvaluationInputs) -> int:
    from xraytriage.evaluation.report import LeakageError, evaluate_predictions

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    writer = None
    if not args.no_tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(out / "tensorboard"))
    try:
        result = evaluate_predictions(
            cfg=eval_cfg, out_dir=out, tb_writer=writer, allow_leakage=args.allow_leakage, **vars(inputs)
        )
    except LeakageError as exc:
        return fail("xraytriage evaluate", str(exc), exc.exit_code)
    finally:
        if writer is not None:
            writer.close()
    if result.leakage is not None:
        print(result.leakage.warning)
    for line in _summary(result):
        print(line)
    print(f"outputs: {', '.join(str(p) for p in result.files.values())}")
    if writer is not None:
        print(f"tensorboard --logdir {out / 'tensorboard'}")
    for line in _gate_lines(result):
        print(line)
    return _exit_code(result)
