"""``xraytriage tune``: hyper-parameter search over training runs with Optuna."""

from __future__ import annotations

import argparse
from pathlib import Path

from xraytriage.commands._common import add_overrides, add_progress_flag
from xraytriage.commands.exit_codes import EXIT_FAILED, EXIT_OK, fail

HELP = """Search training hyper-parameters with Optuna (TPE sampler, seeded by --seed or the config's seed).

Each trial is a normal training run of --config with sampled values applied as overrides, written to
OUT/trial_NNN (checkpoint, metrics.json, model.pt, TensorBoard logs: tensorboard --logdir OUT).
After every epoch the trial reports its validation objective; the pruner stops trials that are
clearly worse than earlier ones at the same epoch.

The study is stored in SQLite (default OUT/study.db): run the same command again after an
interruption and it continues, running only as many new trials as are missing from --trials
(completed and pruned trials count; failed ones do not).

Search space (--space FILE, YAML; dotted config keys):
  train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
  train.batch_size: {type: categorical, choices: [16, 32, 64]}
  train.freeze_epochs: {type: int, low: 0, high: 2}
Default space: train.lr (log 1e-4..3e-3), train.weight_decay (log 1e-6..1e-2), train.batch_size
(16, 32, 64), augment.probability (0.3..1.0), train.freeze_epochs (0..2).

Outputs: OUT/best.yaml (the best trial's full config: xraytriage train --config OUT/best.yaml --out
RUN), OUT/trials.csv (one row per trial: value, state, parameters, run dir).

Exit codes: 0 done; 1 no trial completed; 2 configuration or search-space error.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="hyper-parameter search (Optuna) over training runs",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, type=Path, help="base YAML config, e.g. configs/demo.yaml")
    p.add_argument(
        "--trials", required=True, type=int, help="total number of finished trials wanted in the study"
    )
    p.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="study folder (trial runs, best.yaml)"
    )
    p.add_argument(
        "--space", type=Path, default=None, metavar="FILE", help="search-space YAML (default: see above)"
    )
    p.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="Optuna storage URL (default sqlite:///OUT/study.db; kept so the study can resume)",
    )
    p.add_argument("--study-name", default="xraytriage", help="study name inside the storage")
    p.add_argument(
        "--pruner",
        choices=["median", "hyperband", "none"],
        default="median",
        help="median: stop a trial below the median of earlier trials at the same epoch (after 2 "
        "trials); hyperband: successive halving over epochs; none: never prune (default median)",
    )
    p.add_argument(
        "--objective",
        choices=["auroc", "sens_at_spec"],
        default="auroc",
        help="maximise the best epoch's validation mean AUROC, or mean sensitivity at --specificity",
    )
    p.add_argument(
        "--specificity",
        type=float,
        default=0.9,
        help="specificity floor for --objective sens_at_spec (default 0.9)",
    )
    p.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="stop starting new trials after S seconds"
    )
    p.add_argument("--seed", type=int, default=None, help="sampler seed (default: the config's seed)")
    add_progress_flag(p)
    add_overrides(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from xraytriage.tuning.space import load_space
    from xraytriage.tuning.study import run_study

    if args.trials < 1:
        return fail("xraytriage tune", "--trials must be at least 1")
    if not 0.0 < args.specificity < 1.0:
        return fail("xraytriage tune", "--specificity must be between 0 and 1")
    space = load_space(args.space)  # a ConfigError exits 2 through run_guarded
    same = ("storage", "study_name", "pruner", "objective", "specificity", "timeout", "seed")
    options = {name: getattr(args, name) for name in same}
    result = run_study(args.config, args.out, space, args.trials, overrides=list(args.overrides), **options)
    print(
        f"study {result.out_dir}: {result.n_complete} completed, {result.n_pruned} pruned, "
        f"{result.n_failed} failed ({result.new_trials} new)"
    )
    print(f"trials: {result.trials_csv}")
    if result.best_config is None:
        print("no trial completed: no best.yaml written")
        return EXIT_FAILED
    print(f"best value {result.best_value:.4f} with {result.best_params}")
    print(f"best config: {result.best_config} (run: {result.best_run})")
    print(f"train it: xraytriage train --config {result.best_config} --out RUN_DIR")
    return EXIT_OK
