"""``xraytriage demo``: the whole product on synthetic DICOMs, offline, on a CPU, in minutes."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from xraytriage.commands._common import add_progress_flag

HELP = """Run the whole pipeline on built-in synthetic chest-radiograph DICOMs:

  1. generate DICOMs (DX/CR, 12-16 bit, MONOCHROME1/2, uncompressed/RLE/JPEG 2000) and a manifest,
     with a nodule-like finding that is deliberately fainter in women;
  2. fine-tune a torchvision ResNet-50 (random init offline; --weights IMAGENET1K_V2 when online);
  3. evaluate on the held-out patients: sensitivity, miss rate, specificity, AUROC with confidence
     intervals, per-subgroup table and report.html;
  4. batch-score a folder of scans (including a truncated and an empty file, reported as failures,
     a text file, reported as skipped, and scans outside the model's validated scope -- a CT and an
     MR slice, a photograph, a lateral view, a child, a FOR PROCESSING image, a derived secondary
     capture, an image with burned-in text -- flagged for a human read) into a CSV, with a DICOM SR
     per scored DICOM.

Every output location and the tensorboard command are printed at the end.
"""

DEMO_CONFIG = "demo.yaml"


def demo_config_path() -> Path:
    return Path(str(resources.files("xraytriage.resources").joinpath(DEMO_CONFIG)))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="end-to-end demo on synthetic DICOMs",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    p.add_argument("--patients", type=int, default=400, help="synthetic patients to generate (default 400)")
    p.add_argument("--seed", type=int, default=0, help="seed for data and training (default 0)")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="training/evaluation config (default: the built-in configs/demo.yaml)",
    )
    p.add_argument("--data-only", action="store_true", help="only generate the DICOMs and manifest")
    add_progress_flag(p)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. train.epochs=2 model.weights=IMAGENET1K_V2",
    )
    p.set_defaults(handler=run)


def _prepare_incoming(data_dir: Path, incoming: Path, manifest: Path) -> tuple[int, list[Any]]:
    """A folder as a hospital would send it: held-out scans, some without extension, bad files and
    scans outside the model's validated scope (``data.demo_out_of_scope``)."""
    import pandas as pd

    from xraytriage.data.demo_out_of_scope import write_out_of_scope

    if incoming.exists():
        shutil.rmtree(incoming)
    incoming.mkdir(parents=True)
    frame = pd.read_csv(manifest)
    test = frame[frame["split"] == "test"]
    for i, rel in enumerate(test["path"]):
        src = data_dir / rel
        name = src.name if i % 3 else src.stem  # a third without extension: found by content
        shutil.copyfile(src, incoming / name)
    first = data_dir / test["path"].iloc[0]
    (incoming / "truncated_transfer.dcm").write_bytes(first.read_bytes()[: first.stat().st_size // 3])
    (incoming / "empty.dcm").write_bytes(b"")
    (incoming / "notes.txt").write_text("not a scan\n", encoding="utf-8")
    return len(test), write_out_of_scope(incoming, first)


def _add_scope_variants(incoming: Path, seed: int) -> list[Any]:
    """Real-world DICOMs that are not diagnostic originals (FOR PROCESSING raw data, a derived
    secondary capture, burned-in text): the scope rules report them instead of triaging them blindly."""
    from xraytriage.data.demo_out_of_scope import PlantedScan
    from xraytriage.data.synthetic import generate_scope_variants

    what = {
        "for_processing": ("DX, PresentationIntentType FOR PROCESSING", "for_processing"),
        "derived_secondary_capture": ("Secondary Capture of a demo radiograph", "derived_image"),
        "burned_in_annotation": ("DX with text burned into the pixels", "burned_in_text"),
    }
    made = generate_scope_variants(incoming, seed=seed)
    return [PlantedScan(path.name, *what[name]) for name, path in made.items()]


def _stage(argv: list[str], no_progress: bool = False) -> int:
    """Each stage runs as its own process, exactly as a user would type it (and with fresh state:
    forking DataLoader workers from a process that already ran OpenCV/OpenMP thread pools can hang)."""
    flags = ["--no-progress"] if no_progress else []
    command = [sys.executable, "-m", "xraytriage", argv[0], *flags, *argv[1:]]
    return subprocess.run(command, check=False).returncode


def run(args: argparse.Namespace) -> int:
    from xraytriage.config import load_config
    from xraytriage.data.synthetic import SyntheticSpec, generate_dataset

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data_dir = out / "data"
    print(f"[1/4] generating synthetic DICOMs for {args.patients} patients in {data_dir}")
    logging.getLogger("openjpeg").setLevel(logging.WARNING)  # per-tile INFO lines from the J2K encoder
    manifest = generate_dataset(data_dir, SyntheticSpec(n_patients=args.patients, seed=args.seed))
    if args.data_only:
        print(f"manifest: {manifest}")
        return 0
    config = args.config or demo_config_path()
    overrides = [f"data.manifest={manifest.resolve()}", f"seed={args.seed}", *args.overrides]
    load_config(config, overrides)  # fail fast, before anything is trained
    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    print("[2/4] fine-tuning (progress below; TensorBoard logs in run/tensorboard)")
    quiet = args.no_progress
    code = _stage(["train", "--config", str(config), "--out", str(run_dir), *overrides], quiet)
    if code != 0:
        return code
    bundle = run_dir / "model.pt"
    eval_dir = out / "eval"
    print("[3/4] evaluating on held-out patients")
    code = _stage(
        [
            "evaluate",
            "--model",
            str(bundle),
            "--manifest",
            str(manifest),
            "--out",
            str(eval_dir),
            "--split",
            "test",
            "--config",
            str(config),
            *overrides,
        ],
        quiet,
    )
    if code not in (0, 3, 4):  # 3 gate failed, 4 cannot certify: still a finished evaluation
        return code
    incoming = out / "incoming"
    n_scans, planted = _prepare_incoming(data_dir, incoming, manifest)
    planted += _add_scope_variants(incoming, args.seed)
    scores, errors = out / "scores.csv", out / "score_errors.csv"
    for stale in (scores, errors):
        stale.unlink(missing_ok=True)
    shutil.rmtree(out / "dicom_results", ignore_errors=True)
    print(
        f"[4/4] batch-scoring {incoming} ({n_scans + len(planted)} scans, {len(planted)} outside the "
        "validated scope, "
        "2 deliberately bad files and a text file)"
    )
    score_code = _stage(
        [
            "score",
            "--model",
            str(bundle),
            str(incoming),
            "--out",
            str(scores),
            "--errors",
            str(errors),
            "--workers",
            "2",
            "--dicom-out",
            str(out / "dicom_results"),
        ],
        quiet,
    )
    elapsed = time.perf_counter() - started
    _print_summary(out, run_dir, eval_dir, scores, errors, elapsed, score_code)
    _print_out_of_scope(scores, planted)
    return 0


def _with_interval(table: Any, column: str, i: int) -> str:
    """``0.000 (0.000-0.133)``: a subgroup rate is never shown without its interval."""
    value = table[column].iloc[i]
    if value != value:  # NaN: too few patients for a figure
        return "insufficient data"
    low, high = (table.get(f"{column}_ci_{end}") for end in ("low", "high"))
    if low is None or high is None or low.iloc[i] != low.iloc[i]:
        return f"{value:.3f}"
    return f"{value:.3f} ({low.iloc[i]:.3f}-{high.iloc[i]:.3f})"


def _print_out_of_scope(scores: Path, planted: list[Any]) -> None:
    """The planted out-of-scope files as scoring saw them: every one flagged, with its reasons."""
    import pandas as pd

    if not scores.is_file() or not planted:
        return
    table = pd.read_csv(scores, dtype=str, keep_default_na=False)
    rows = {Path(p).name: r for p, r in zip(table["path"], table.to_dict("records"))}
    print("\nout-of-scope files planted in incoming/ (flagged for a human read, never a negative):")
    for scan in planted:
        row = rows.get(scan.name)
        if row is None:
            print(f"  {scan.name:<17} not in scores.csv (see the errors file)")
            continue
        state = "OUT OF SCOPE" if row["in_scope"] == "0" else "in scope (NOT caught)"
        print(f"  {scan.name:<17} {state}: {row['scope_reasons'] or '-'}  [{scan.what}]")
    outside = int((table["in_scope"] == "0").sum())
    print(f"  {outside} of {len(table)} scored scans were outside the validated scope")


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def _print_summary(
    out: Path, run_dir: Path, eval_dir: Path, scores: Path, errors: Path, elapsed: float, score_code: int
) -> None:
    import pandas as pd

    print(f"\n=== xraytriage demo finished in {elapsed:.0f} s ===")
    metrics_path = eval_dir / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        for label, block in (metrics.get("classes") or {}).items():
            figures = block.get("metrics", {})
            print(
                f"test set, class '{label}' at the operating threshold {_fmt(block.get('threshold'))} "
                "(chosen on validation):"
            )
            for key in ("auroc", "sensitivity", "miss_rate", "specificity"):
                entry = figures.get(key) or {}
                print(
                    f"  {key:<12} {_fmt(entry.get('value'))}  (95% CI {_fmt(entry.get('ci_low'))} to "
                    f"{_fmt(entry.get('ci_high'))})"
                )
            check = block.get("target_check") or {}
            if check:
                print(
                    f"  promised {check.get('metric')} {_fmt(check.get('target'))}: validation "
                    f"{_fmt(check.get('validation'))}, test {_fmt(check.get('test'))}"
                    f" -> {'held' if check.get('held') else 'NOT held'}"
                )
    sub_path = eval_dir / "subgroups.csv"
    if sub_path.is_file():
        table = pd.read_csv(sub_path)
        if {"group", "n", "sensitivity", "miss_rate", "auroc"} <= set(table.columns):
            shown = table[["group", "n", "positives"]].copy()
            for col in ("sensitivity", "miss_rate", "auroc"):
                shown[col] = [_with_interval(table, col, i) for i in range(len(table))]
            print("per-subgroup sensitivity, miss rate and AUROC (test, 95% intervals):")
            print(shown.to_string(index=False, max_rows=40))
    if scores.is_file():
        from xraytriage.scoring.discovery import NOT_A_SCAN
        from xraytriage.scoring.outputs import OUT_OF_SCOPE, error_reason_counts

        n_scored = sum(1 for _ in scores.open()) - 1
        reasons = error_reason_counts(errors)
        n_skipped = reasons[NOT_A_SCAN]
        n_err = sum(reasons.values()) - n_skipped - reasons[OUT_OF_SCOPE]
        print(
            f"scored {n_scored} scans; {n_err} bad files reported, {n_skipped} file(s) that are not "
            f"scans skipped{' (as intended)' if n_err else ''} (score exit code {score_code})"
        )
    print("\noutputs:")
    print(f"  data + manifest   {out / 'data'}")
    print(f"  model bundle      {run_dir / 'model.pt'}")
    print(f"  training metrics  {run_dir / 'metrics.json'}")
    print(f"  evaluation        {eval_dir} (metrics.json, subgroups.csv, predictions.csv, report.html)")
    print(f"  scores            {scores}")
    print(f"  scoring errors    {errors}")
    print(
        f"  DICOM results     {out / 'dicom_results'} (an SR per scored DICOM scan; send them to a PACS "
        "with xraytriage send DIR --to AET@HOST:PORT)"
    )
    print(f"\nview every metric:  tensorboard --logdir {out}")
