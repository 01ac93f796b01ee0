"""``xraytriage evaluate``: a model bundle on a labelled manifest -> metrics.json, subgroups.csv,
predictions.csv, report.html and TensorBoard entries."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from xraytriage.commands._common import add_overrides

log = logging.getLogger(__name__)

EXIT_GATE_FAILED = 3

HELP = """Evaluate a trained model bundle on the labelled scans of a manifest.

At the operating point stored in the bundle (chosen on validation data at training time and applied
unchanged), computes per class: sensitivity, miss rate, specificity, PPV, NPV, F1, accuracy, AUROC,
AUPRC, Brier score, expected calibration error and the confusion matrix, each with a confidence
interval from a bootstrap over patients; the same per subgroup (sex, age band, view, site, ... and
configured intersections) with gaps to the best group; calibration; a data audit; and the fairness
gate.

Writes into --out: metrics.json (versioned schema, no patient IDs), subgroups.csv, predictions.csv
(keeps your manifest's patient_id), report.html (self-contained, opens offline) and tensorboard/.

If the manifest has a 'val' split, validation sensitivity at the same threshold is shown next to test.

Exit codes: 0 evaluated and fairness gate passed (or no limits set); 2 configuration error;
3 evaluated but the fairness gate failed (the report names the group and metric); 1 other errors
(unreadable manifest, no scan decodable, ...).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="metrics with confidence intervals, subgroup gaps and report.html",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, type=Path, metavar="BUNDLE", help="model bundle (model.pt from train)"
    )
    p.add_argument(
        "--manifest",
        required=True,
        type=Path,
        metavar="CSV",
        help="manifest CSV/Parquet with path, patient_id, label columns, split and subgroup columns",
    )
    p.add_argument(
        "--out", required=True, type=Path, metavar="EVAL_DIR", help="output folder (created if needed)"
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
        help="YAML config; its 'evaluation' section sets subgroups, age bands, bootstrap, "
        "fairness limits (default: built-in defaults)",
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
    add_overrides(p)
    p.set_defaults(handler=run)


def _evaluation_config(args: argparse.Namespace):
    from xraytriage.config import load_config

    overrides = list(getattr(args, "overrides", None) or [])
    if args.config is None and not overrides:
        from xraytriage.config import EvaluationConfig

        return EvaluationConfig(), None
    cfg = load_config(args.config, overrides)
    return cfg.evaluation, cfg


def _select(df, split: str, val_name: str):
    """(rows to evaluate, validation rows or None)."""
    if "split" not in df.columns or split == "all":
        return df, None
    chosen = df[df["split"] == split]
    val = df[df["split"] == val_name] if split != val_name else None
    return chosen, (val if val is not None and len(val) else None)


def _summary(result, labels: list[str]) -> list[str]:
    conf = result.metrics["bootstrap"]["confidence"]
    lines = []
    for label in labels:
        block = result.metrics["classes"][label]
        s, miss = block["metrics"]["sensitivity"], block["metrics"]["miss_rate"]

        def fmt(stat: dict) -> str:
            if stat["value"] is None:
                return "undefined"
            ci = f" [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]" if stat["ci_low"] is not None else ""
            return f"{stat['value']:.3f}{ci}"

        c = block["counts"]
        line = (
            f"{label}: threshold {block['threshold']:.4f} | n={c['n']} ({c['positives']} pos) | "
            f"sensitivity {fmt(s)} | miss rate {fmt(miss)} | AUROC {fmt(block['metrics']['auroc'])}"
        )
        if block.get("validation"):
            line += f" | validation sensitivity {fmt(block['validation']['sensitivity'])}"
        lines.append(line)
        worst = None
        for attr, summ in block["subgroups"].items():
            wm = (summ.get("worst_group_miss_rate") or {}).get("value") if summ.get("available") else None
            if wm is not None and (worst is None or wm > worst[1]):
                worst = (summ["worst_group"], wm, attr)
        if worst:
            lines.append(f"  worst subgroup: {worst[0]} miss rate {worst[1]:.3f}")
    lines.append(f"  (intervals: {conf * 100:g}% bootstrap over patients)")
    return lines


def run(args: argparse.Namespace) -> int:
    import importlib

    from xraytriage import models
    from xraytriage.data.manifest import ManifestError, check_split_values, read_manifest
    from xraytriage.evaluation.identifiers import refuse_identifier_subgroups
    from xraytriage.evaluation.report import evaluate_predictions

    eval_cfg, full_cfg = _evaluation_config(args)
    val_name = full_cfg.data.val_split if full_cfg is not None else "val"
    if not args.model.is_file():
        print(f"xraytriage evaluate: model bundle not found: {args.model}")
        return 1
    bundle = models.load_bundle(args.model)
    try:
        # leakage is reported (console, report.html audit section) rather than refusing to evaluate
        df = read_manifest(
            args.manifest, root=getattr(args, "root", None), labels=bundle.labels, leakage="warn"
        )
        split = str(args.split).strip().lower()
        known = {"train", "val", "test", val_name, *([] if split == "all" else [split])}
        if full_cfg is not None:
            known |= {full_cfg.data.train_split, full_cfg.data.test_split}
        check_split_values(df, known, str(args.manifest))
    except ManifestError as exc:
        print(f"xraytriage evaluate: {exc}")
        return 1
    refuse_identifier_subgroups(
        df, [*eval_cfg.subgroups, *(c for combo in eval_cfg.intersections for c in combo)]
    )
    rows, val_rows = _select(df, split, val_name)
    if rows.empty:
        have = ", ".join(sorted(map(str, df["split"].dropna().unique()))) if "split" in df.columns else "none"
        print(
            f"xraytriage evaluate: no rows with split '{split}' in {args.manifest} (splits present: {have})"
        )
        return 1
    predict = importlib.import_module("xraytriage.training.predict").predict_manifest
    kwargs = {"batch_size": args.batch_size, "num_workers": args.workers, "device": args.device}
    predictions = predict(bundle, rows, **kwargs)
    skipped = list(predictions.attrs.get("failed", [])) if hasattr(predictions, "attrs") else []
    if skipped:
        print(f"xraytriage evaluate: {len(skipped)} scan(s) could not be read and were skipped")
    if predictions.empty:
        print("xraytriage evaluate: no scan could be decoded; nothing to evaluate")
        return 1
    val_predictions = predict(bundle, val_rows, **kwargs) if val_rows is not None else None
    if val_predictions is not None and val_predictions.empty:
        val_predictions = None

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    writer = None
    if not getattr(args, "no_tensorboard", False):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(out / "tensorboard"))
    try:
        result = evaluate_predictions(
            predictions,
            list(bundle.labels),
            dict(bundle.thresholds),
            eval_cfg,
            out,
            val_predictions=val_predictions,
            tb_writer=writer,
            model_id=bundle.model_id,
            temperature=float(bundle.temperature),
            skipped_unreadable=len(skipped),
        )
    finally:
        if writer is not None:
            writer.close()
    for line in _summary(result, list(bundle.labels)):
        print(line)
    for err in result.audit.errors if result.audit else []:
        print(f"WARNING: {err}")
    print(f"outputs: {', '.join(str(p) for p in result.files.values())}")
    if writer is not None:
        print(f"tensorboard --logdir {out / 'tensorboard'}")
    if result.gate_failures:
        print("FAIRNESS GATE FAILED:")
        for failure in result.gate_failures:
            print(f"  {failure}")
        return EXIT_GATE_FAILED
    return 0
