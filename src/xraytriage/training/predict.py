"""Batched inference over a manifest, shared by validation, ``evaluate`` and tests."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from xraytriage.data.dataset import Failure, ScanDataset, collate_skip
from xraytriage.models.bundle import Bundle, logits_to_probabilities
from xraytriage.utils.runtime import resolve_amp_dtype, resolve_device

log = logging.getLogger(__name__)


def autocast_for(device: torch.device, amp_dtype: torch.dtype | None) -> Any:
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[Failure]]:
    """Logits (N x C, float32) and the dataset indices they belong to, plus decode failures."""
    model.eval()
    logits_parts: list[torch.Tensor] = []
    index_parts: list[torch.Tensor] = []
    failures: list[Failure] = []
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for batch in loader:
        failures.extend(batch["failed"])
        if batch["image"] is None:
            continue
        images = batch["image"].to(device, non_blocking=True, memory_format=memory_format)
        with autocast_for(device, amp_dtype):
            logits = model(images)
        logits_parts.append(logits.float())  # stays on device: no sync per batch
        index_parts.append(batch["index"])
    if not logits_parts:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), failures
    logits_all = torch.cat(logits_parts).cpu().numpy()
    return logits_all, torch.cat(index_parts).numpy(), failures


def probabilities(logits: np.ndarray, task: str, temperature: float = 1.0) -> np.ndarray:
    return logits_to_probabilities(torch.from_numpy(logits), task, temperature).numpy()


def predictions_frame(
    frame: pd.DataFrame, labels: list[str], probs: np.ndarray, indices: np.ndarray
) -> pd.DataFrame:
    """Manifest rows (labels and subgroup columns kept) with one ``prob_<label>`` column per class."""
    out = frame.iloc[indices].copy()
    for j, label in enumerate(labels):
        out[f"prob_{label}"] = probs[:, j].astype(np.float64)
    return out.reset_index(drop=True)


def predict_manifest(
    bundle: Bundle,
    frame: pd.DataFrame,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str = "auto",
    amp: str = "auto",
) -> pd.DataFrame:
    """Predictions for every decodable row; ``.attrs['failed']`` lists (path, reason) of skipped scans."""
    dev = resolve_device(device)
    model = bundle.model.to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    labels_present = [label for label in bundle.labels if label in frame.columns]
    dataset = ScanDataset(frame, labels_present, bundle.preprocess, bundle.model_config.in_channels)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_skip,
        pin_memory=dev.type == "cuda",
        persistent_workers=False,
    )
    logits, indices, failures = predict_loader(
        model, loader, dev, resolve_amp_dtype(amp, dev), dev.type == "cuda"
    )
    probs = probabilities(logits, bundle.task, bundle.temperature)
    out = predictions_frame(frame, bundle.labels, probs, indices) if len(indices) else frame.iloc[:0].copy()
    out.attrs["failed"] = [(f.path, f.reason) for f in failures]
    if failures:
        log.warning("%d scan(s) could not be decoded and were skipped", len(failures))
    return out
