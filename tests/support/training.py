"""The tiny training run most training tests start from."""

from __future__ import annotations

from pathlib import Path

from xraytriage.config import Config, load_config


def tiny_config(manifest: Path, *extra: str) -> Config:
    """ResNet-18 at 32 px, batch 8, two epochs on CPU: seconds per run; ``extra`` overrides win."""
    return load_config(
        None,
        [
            f"data.manifest={manifest}",
            "data.num_workers=0",
            "model.arch=resnet18",
            "model.task=binary",
            "data.labels=[finding]",
            "preprocess.image_size=32",
            "train.batch_size=8",
            "train.epochs=2",
            "train.log_every_steps=1",
            "train.histogram_every_epochs=1",
            "evaluation.bootstrap_iterations=20",
            "evaluation.min_group_size=1",
            *extra,
        ],
    )
