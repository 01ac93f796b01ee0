"""``xraytriage train``: fine-tune a classifier from a config and a manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from xraytriage.commands._common import add_overrides, add_progress_flag
from xraytriage.commands.exit_codes import EXIT_FAILED, EXIT_OK, fail

HELP = """Fine-tune a torchvision classifier (ResNet-50 by default) on the manifest named in the config.

The run directory receives model.pt (the bundle evaluate/score consume), config.yaml (the resolved
config), metrics.json (per-epoch history and validation figures), checkpoint.pt (resume point) and
tensorboard/ (view with: tensorboard --logdir RUN_DIR/tensorboard).

Several GPUs or nodes: torchrun --nproc_per_node=N -m xraytriage train --config ... --out ...
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, type=Path, help="YAML config file, e.g. configs/demo.yaml")
    p.add_argument(
        "--out", required=True, type=Path, help="run directory to create (or continue with --resume)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last finished epoch (uses its config.yaml "
        "unless --config differs deliberately)",
    )
    add_progress_flag(p)
    add_overrides(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from xraytriage.config import load_config
    from xraytriage.data.manifest import ManifestError
    from xraytriage.training.engine import TrainingDiverged, train

    cfg = load_config(args.config, args.overrides)
    try:
        result = train(cfg, args.out, resume=args.resume)
    except (ManifestError, TrainingDiverged, FileExistsError, FileNotFoundError) as exc:
        return fail("xraytriage train", str(exc), EXIT_FAILED)
    print(f"best epoch {result.best_epoch}: validation mean AUROC {result.best_score:.4f}")
    for label, op in result.operating_points.items():
        print(f"  {label}: operating {op.describe()}")
    print(f"model bundle: {result.bundle_path}")
    print(f"tensorboard --logdir {result.run_dir / 'tensorboard'}")
    return EXIT_OK
