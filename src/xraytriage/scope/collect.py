"""Recording the validated scope at the end of training: headers of every training and validation
scan, features of the validation scans and of (a sample of) the training scans, then the scope.

The feature pass runs the chosen model once more over the training scans without augmentation (the
preprocessing cache, when configured, makes it a forward pass only); the validation scans' features
come from training's final validation pass when it ran the eager model (else a feature pass runs over
them too); headers are read without the pixel data.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from xraytriage.columns import IN_SCOPE, OOD_SCORE, SCOPE_REASONS
from xraytriage.config import PreprocessConfig, ScopeConfig
from xraytriage.scope.facts import ScanFacts
from xraytriage.scope.ood import MahalanobisReference, OodUnavailable
from xraytriage.scope.record import ValidatedScope, population_values, record_scope, validation_reference

log = logging.getLogger(__name__)


def header_facts(path: str | Path) -> ScanFacts | None:
    """A DICOM's scope attributes from its header (pixel data not read); None for other files or a
    header that cannot be read (the manifest then speaks for the scan)."""
    from xraytriage.io.detect import sniff_format
    from xraytriage.io.dicom import read_dataset, read_meta
    from xraytriage.io.errors import UnreadableImage

    p = Path(path)
    try:
        if sniff_format(p) != "dicom":
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ScanFacts.from_meta(read_meta(read_dataset(p), p))
    except (OSError, UnreadableImage, ValueError, TypeError):
        return None


@dataclass
class FeaturePass:
    """Runs the network over a manifest frame and returns the pooled features per decoded row."""

    model: nn.Module
    preprocess: PreprocessConfig
    in_channels: int
    device: torch.device
    amp_dtype: torch.dtype | None = None
    batch_size: int = 32
    workers: int = 0
    image_source: Any = None

    def __call__(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(features n x d float32, positions in ``frame`` of the rows they belong to)."""
        from xraytriage.data.dataset import ManifestScans
        from xraytriage.inference import inference_loader, predict_loader
        from xraytriage.models.features import LogitsAndFeatures

        dataset = ManifestScans(frame, [], self.preprocess, self.in_channels, None, self.image_source)
        loader = inference_loader(dataset, self.batch_size, self.workers)
        parts: list[torch.Tensor] = []
        net = LogitsAndFeatures(self.model)
        _, positions, _ = predict_loader(net, loader, self.device, self.amp_dtype, False, features=parts)
        if not parts:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        return torch.cat(parts).numpy(), positions


class ScopeRecorder:
    """One scope recording: :meth:`record` runs the steps (headers, features, reference, scope)."""

    def __init__(self, cfg: ScopeConfig, features: FeaturePass, seed: int = 0) -> None:
        self.cfg = cfg
        self.features = features
        self.seed = seed

    def record(
        self,
        train: pd.DataFrame,
        val: pd.DataFrame,
        val_probabilities: dict[str, Sequence[float]],
        val_features: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> ValidatedScope:
        """``val_probabilities``: the calibrated validation probabilities the thresholds were chosen on;
        ``val_features``: (features, positions in ``val``) when the caller's validation pass already
        collected them (training's final validation), else the feature pass runs over ``val``."""
        train_facts = self.population(train)
        val_facts = self.population(val)
        val_scores = np.full(len(val), np.nan)
        ood = None
        if self.cfg.enabled and self.cfg.ood:
            ood, val_scores = self.reference(train, val, val_features)
        scope = record_scope(train_facts + val_facts, self.cfg, ood)
        if not self.cfg.enabled:
            scope = ValidatedScope(n_scans=scope.n_scans)
        from xraytriage.scope.check import ScopeChecker

        checker = ScopeChecker(scope)
        verdicts = [
            checker.check(f, None if np.isnan(s) else float(s)) for f, s in zip(val_facts, val_scores)
        ]
        scores = [float(s) for s in val_scores if np.isfinite(s)]
        scope.validation = validation_reference(val_probabilities, scores, [not v.in_scope for v in verdicts])
        return scope

    def population(self, frame: pd.DataFrame) -> list[ScanFacts]:
        headers = [header_facts(p) for p in frame["path"].astype(str)]
        return population_values(frame, headers)

    def reference(
        self,
        train: pd.DataFrame,
        val: pd.DataFrame,
        val_features: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[MahalanobisReference | None, np.ndarray]:
        """The Mahalanobis reference of the training features, thresholded on the validation ones;
        also each validation row's distance (NaN where it did not decode)."""
        sample = train
        if len(train) > self.cfg.reference_max_scans:
            sample = train.sample(n=self.cfg.reference_max_scans, random_state=self.seed)
        train_features, _ = self.features(sample.reset_index(drop=True))
        val_rows = val_features if val_features is not None else self.features(val.reset_index(drop=True))
        features, positions = val_rows  # features n x d, their rows' positions in ``val``
        distances = np.full(len(val), np.nan)
        try:
            ood = MahalanobisReference.fit(train_features, features, self.cfg.ood_quantile)
        except OodUnavailable as exc:
            log.warning("no image-based scope check in this bundle: %s", exc)
            return None, distances
        if self.cfg.ood_threshold is not None:
            ood.threshold = float(self.cfg.ood_threshold)
        if len(positions):
            distances[positions] = ood.distances(features)
        log.info(
            "OOD reference: %d training scans, Ledoit-Wolf shrinkage %.3f, threshold %.2f (validation q%g)",
            ood.n_train,
            ood.shrinkage,
            ood.threshold,
            ood.quantile,
        )
        return ood, distances


def add_scope_columns(frame: pd.DataFrame, checker: Any, features: torch.Tensor | None) -> pd.DataFrame:
    """``frame`` (prediction rows) with ``in_scope``, ``scope_reasons`` and ``ood_score`` as ``score``
    writes them: header rules from each file's own header (as at scoring time, not the manifest),
    the image check from ``features`` (rows aligned with ``frame``; None: unavailable)."""
    facts = [header_facts(p) or ScanFacts() for p in frame["path"].astype(str)]
    verdicts = checker.check_batch(facts, features)
    out = frame.copy()
    out[IN_SCOPE] = [int(v.in_scope) for v in verdicts]
    out[SCOPE_REASONS] = [v.reason_text for v in verdicts]
    out[OOD_SCORE] = [np.nan if v.ood_score is None else v.ood_score for v in verdicts]
    return out
