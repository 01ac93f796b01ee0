"""What a training run reports while it runs: the progress bar, throughput and TensorBoard entries.

The engine's step loop calls ``EpochLogger`` at a few points and knows nothing of tags, windows or
histograms (the split torchvision's ``MetricLogger.log_every`` makes in its reference scripts).
Every method is a no-op for TensorBoard on ranks without a writer (only rank 0 writes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from xraytriage.columns import prob_column
from xraytriage.config import Config
from xraytriage.evaluation.subgroups import subgroup_sensitivity


class Throughput:
    """Images per second over the window since the last reading, summed over ranks."""

    def __init__(self, start: float, world_size: int) -> None:
        self.window_start, self.images, self.world_size = start, 0, world_size

    def add(self, images: int) -> None:
        self.images += images

    def read(self) -> float:
        now = time.perf_counter()
        rate = self.images * self.world_size / max(now - self.window_start, 1e-9)
        self.window_start, self.images = now, 0
        return rate


class EpochLogger:
    """The progress bar of an epoch, per-step scalars, and per-epoch metrics, curves and histograms."""

    def __init__(self, cfg: Config, labels: list[str], writer: Any = None) -> None:
        self.cfg, self.labels, self.writer = cfg, labels, writer

    def bar(
        self, loader: Iterable[Any], epoch: int, done: int, total: int, frozen: bool, shown: bool
    ) -> tqdm:
        return tqdm(
            loader,
            initial=done,
            total=total,
            desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}" + (" (head only)" if frozen else ""),
            unit="batch",
            disable=not shown,
            leave=False,
        )

    def augmented_batch(self, images: torch.Tensor, epoch: int) -> None:
        """A 4x4 grid of the first batch as the model sees it (de-normalised), to eyeball augmentation."""
        if self.writer is None:
            return
        import torchvision

        shown = images[:16, :1].float() * self.cfg.preprocess.std + self.cfg.preprocess.mean
        grid = torchvision.utils.make_grid(shown.clamp(0, 1), nrow=4)
        self.writer.add_image("train/augmented_batch", grid, epoch)

    def step(
        self, bar: tqdm, loss: float, grad_norm: float, rate: float, optimizer: Any, global_step: int
    ) -> None:
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
        w = self.writer
        if w is None:
            return
        w.add_scalar("train/loss", loss, global_step)
        w.add_scalar("train/grad_norm", grad_norm, global_step)
        w.add_scalar("train/images_per_sec", rate, global_step)
        for group in optimizer.param_groups:
            w.add_scalar(f"train/lr_{group.get('name', 'group')}", group["lr"], global_step)

    def epoch(self, epoch: int, record: dict[str, Any], frame: pd.DataFrame, model: nn.Module) -> None:
        """Losses, throughput, per-label validation metrics, PR curves, subgroup sensitivities and
        (every ``train.histogram_every_epochs``) weight and gradient histograms."""
        w = self.writer
        if w is None:
            return
        step = epoch + 1
        w.add_scalar("epoch/train_loss", record["train_loss"], step)
        w.add_scalar("epoch/val_loss", record["val_loss"], step)
        w.add_scalar("epoch/train_images_per_sec", record["train_images_per_sec"], step)
        for label in self.labels:
            self._label(label, record, frame, step)
        every = self.cfg.train.histogram_every_epochs
        if every and (epoch + 1) % every == 0:
            for name, param in model.named_parameters():
                w.add_histogram(f"weights/{name}", param.detach().float().cpu(), step)
                if param.grad is not None:
                    w.add_histogram(f"grads/{name}", param.grad.detach().float().cpu(), step)
        w.flush()

    def _label(self, label: str, record: dict[str, Any], frame: pd.DataFrame, step: int) -> None:
        w = self.writer
        for key in ("auroc", "sensitivity", "specificity", "miss_rate"):
            value = record.get(f"{label}/{key}")
            if value is not None and math.isfinite(value):
                w.add_scalar(f"val/{key}/{label}", value, step)
        y = frame[label].to_numpy(float)
        known = np.isin(y, (0.0, 1.0))
        if known.any():
            probs = frame[prob_column(label)].to_numpy(float)[known]
            w.add_pr_curve(f"val/pr_curve/{label}", y[known].astype(int), probs, step)
        threshold = record.get(f"{label}/threshold", 0.5)
        for group, value in subgroup_sensitivity(frame, label, threshold, self.cfg.evaluation).items():
            if value is not None and math.isfinite(value):
                w.add_scalar(f"val_subgroup_sensitivity/{label}/{group}", value, step)
