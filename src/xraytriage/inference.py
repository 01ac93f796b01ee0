"""Batched inference, shared by training (validation), ``evaluate``, the scope's feature pass and scoring.

One loop (:func:`iter_logits`) runs every forward pass over loader batches; :func:`predict_loader`
collects a manifest loader's logits (and optionally the pooled features) with the scans' positions
and failures; :func:`predict_manifest` turns a bundle and manifest rows into the predictions table.
It sits outside ``training``, ``evaluation`` and ``scoring`` because all three import it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from xraytriage.columns import prob_column
from xraytriage.data.dataset import ManifestScans, ScanBatch, ScanFailure, collate_scans
from xraytriage.data.workers import WorkerInit
from xraytriage.models.bundle import Bundle, logits_to_probabilities
from xraytriage.scope.check import ScopeChecker
from xraytriage.utils.progress import show_progress
from xraytriage.utils.runtime import resolve_amp_dtype, resolve_device, worker_start_method

log = logging.getLogger(__name__)


def autocast_for(device: torch.device, amp_dtype: torch.dtype | None) -> Any:
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@dataclass
class BatchLogits:
    """One batch of :func:`iter_logits`: the loader's :class:`ScanBatch`, the network input and its logits.

    ``inputs`` (on ``device``, in the requested memory format) and ``logits`` (float32, still on
    ``device``) are None when the batch held no decodable scan. ``features``: the pooled penultimate
    features when the model returns ``(logits, features)`` (:class:`~xraytriage.models.features.
    LogitsAndFeatures`, the scoring engines), else None.
    """

    batch: ScanBatch
    inputs: torch.Tensor | None
    logits: torch.Tensor | None
    features: torch.Tensor | None = None


def iter_logits(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[ScanBatch],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = True,
    inference_mode: bool = False,
    pad_to: int | None = None,
) -> Iterator[BatchLogits]:
    """The one batched inference loop: validation, ``evaluate`` and batch scoring all run through it.

    A batch whose ``image`` is None (no scan decoded) is yielded without logits. Inputs go
    to ``device`` with a non-blocking copy, in channels_last by default, and the forward pass runs
    under autocast (``amp_dtype``) and ``no_grad`` (``inference_mode=True``: ``torch.inference_mode``,
    a little cheaper, for callers that never reuse the outputs in autograd). Batches are yielded one at
    a time, so a caller can stream results; the grad mode is entered per forward pass only, never
    across a ``yield``, so the caller's own code between batches (Grad-CAM) keeps autograd.
    ``pad_to``: zero-pad smaller batches to this many rows and drop the padding from the logits, so a
    ``torch.compile``d model sees one shape (no recompilation for a short last batch); eval-mode
    rows are independent, so padding does not change the other rows' logits.
    """
    if isinstance(model, nn.Module):
        model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    no_grad = torch.inference_mode if inference_mode else torch.no_grad
    for batch in batches:
        x = batch.image
        if x is None:
            yield BatchLogits(batch, None, None)
            continue
        n = x.shape[0]
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        net_in = x
        if pad_to is not None and n < pad_to:
            # Same strides as a full batch (for C=1 both layouts are "contiguous" but stride differently,
            # and a compiled graph guards on strides).
            net_in = x.new_empty_strided((pad_to, *x.shape[1:]), (x[0].numel(), *x.stride()[1:]))
            net_in[:n] = x
            net_in[n:] = 0
        with no_grad(), autocast_for(device, amp_dtype):
            out = model(net_in)
            features = out[1][:n].float() if isinstance(out, tuple) else None
            logits = (out[0] if isinstance(out, tuple) else out)[:n].float()
        yield BatchLogits(batch, x, logits, features)


def inference_loader(
    dataset: ManifestScans, batch_size: int, num_workers: int, pin_memory: bool = False
) -> DataLoader:
    """A loader over manifest scans for one inference pass (in order, no augmentation)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_scans,
        pin_memory=pin_memory,
        worker_init_fn=WorkerInit() if num_workers > 0 else None,
        **worker_start_method(dataset.preprocess.gpu_decode, num_workers),
    )


def predict_loader(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = True,
    progress: str | None = None,
    features: list[torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[ScanFailure]]:
    """Logits (N x C, float32) and the dataset indices they belong to, plus decode failures.

    ``progress``: the label of a progress bar over the batches (None: no bar, as during validation).
    ``features``: for a model returning ``(logits, features)``, each batch's features (CPU) are
    appended to this list, in the order of the logits.
    """
    logits_parts: list[torch.Tensor] = []
    index_parts: list[torch.Tensor] = []
    failures: list[ScanFailure] = []
    batches: Iterable[ScanBatch] = loader
    if progress is not None and show_progress():
        from tqdm import tqdm

        batches = tqdm(loader, desc=progress, unit="batch", leave=False)
    for out in iter_logits(model, batches, device, amp_dtype, channels_last):
        failures.extend(out.batch.failures)
        if out.logits is None:
            continue
        logits_parts.append(out.logits)  # stays on device: no sync per batch
        if features is not None and out.features is not None:
            features.append(out.features.cpu())
        index_parts.append(out.batch.index)
    if not logits_parts:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), failures
    logits_all = torch.cat(logits_parts).cpu().numpy()
    return logits_all, torch.cat(index_parts).numpy(), failures


def probabilities(logits: np.ndarray, task: str, temperature: float | list[float] = 1.0) -> np.ndarray:
    return logits_to_probabilities(torch.from_numpy(logits), task, temperature).numpy()


def predictions_frame(
    frame: pd.DataFrame, labels: list[str], probs: np.ndarray, indices: np.ndarray
) -> pd.DataFrame:
    """Manifest rows (labels and subgroup columns kept) with one ``prob_<label>`` column per class."""
    out = frame.iloc[indices].copy()
    for j, label in enumerate(labels):
        out[prob_column(label)] = probs[:, j].astype(np.float64)
    return out.reset_index(drop=True)


def predict_manifest(
    bundle: Bundle,
    frame: pd.DataFrame,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str = "auto",
    amp: str = "auto",
    progress: str | None = "predicting",
    scope: ScopeChecker | None = None,
) -> pd.DataFrame:
    """Predictions for every decodable row; ``.attrs['failed']``: the ``ScanFailure`` of each skipped scan.

    ``progress``: label of the progress bar (drawn only on a terminal, see ``utils.progress``); None: none.
    ``scope``: also check each scan against the validated scope (``in_scope``, ``scope_reasons``,
    ``ood_score`` columns, as ``score`` writes them), features from the same forward pass.
    """
    dev = resolve_device(device)
    model: nn.Module = bundle.model.to(dev)
    if scope is not None and scope.ood_available:
        from xraytriage.models.features import LogitsAndFeatures

        model = LogitsAndFeatures(model)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    labels_present = [label for label in bundle.labels if label in frame.columns]
    dataset = ManifestScans(frame, labels_present, bundle.preprocess, bundle.model_config.in_channels)
    loader = inference_loader(dataset, batch_size, num_workers, pin_memory=dev.type == "cuda")
    feature_parts: list[torch.Tensor] = []
    logits, indices, failures = predict_loader(
        model, loader, dev, resolve_amp_dtype(amp, dev), dev.type == "cuda", progress, feature_parts
    )
    probs = probabilities(logits, bundle.task, bundle.temperature_vector())
    out = predictions_frame(frame, bundle.labels, probs, indices) if len(indices) else frame.iloc[:0].copy()
    if scope is not None:
        from xraytriage.scope.collect import add_scope_columns

        out = add_scope_columns(out, scope, torch.cat(feature_parts) if feature_parts else None)
    out.attrs["failed"] = failures
    if failures:
        log.warning("%d scan(s) could not be decoded and were skipped", len(failures))
    return out
