"""Image-based out-of-distribution score: Mahalanobis distance on the network's penultimate features.

Method: Lee, Lee, Lee & Shin (2018), "A Simple Unified Framework for Detecting Out-of-Distribution
Samples and Adversarial Attacks", NeurIPS. They fit a Gaussian with a shared covariance to the
pooled features of the training scans and score a new scan by its Mahalanobis distance to it. We fit
one Gaussian to all training scans (triage labels are multi-label and mostly negative, so
class-conditional means add little) and shrink the covariance with Ledoit-Wolf: 2048 feature
dimensions from a few hundred or thousand scans give a singular sample covariance, the shrunk one is
well conditioned. The precision matrix comes from a Cholesky factorisation (no pseudo-inverse).
A scan is out of distribution when its distance exceeds a quantile of the validation scans' distances.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

METHOD = "mahalanobis_ledoit_wolf"


class OodUnavailable(ValueError):
    """The features cannot give a reference (too few scans, or not finite)."""


@dataclass
class MahalanobisReference:
    """Mean and precision of the training features, and the distance above which a scan is OOD."""

    mean: torch.Tensor  # (d,) float32
    precision: torch.Tensor  # (d, d) float32, symmetric positive definite
    threshold: float
    quantile: float
    n_train: int
    shrinkage: float

    @classmethod
    def fit(
        cls, train_features: np.ndarray, validation_features: np.ndarray, quantile: float
    ) -> MahalanobisReference:
        """Gaussian of ``train_features`` (n x d); threshold at ``quantile`` of the validation distances."""
        from sklearn.covariance import LedoitWolf

        x = np.asarray(train_features, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2 or not np.isfinite(x).all():
            raise OodUnavailable(f"need at least 2 scans of finite features, got shape {x.shape}")
        estimator = LedoitWolf(store_precision=False).fit(x)
        precision = _precision(estimator.covariance_)
        reference = cls(
            mean=torch.from_numpy(estimator.location_.astype(np.float32)),
            precision=torch.from_numpy(precision.astype(np.float32)),
            threshold=float("inf"),
            quantile=float(quantile),
            n_train=len(x),
            shrinkage=float(estimator.shrinkage_),
        )
        if len(validation_features):
            reference.threshold = threshold_at(reference.distances(validation_features), quantile)
        return reference

    def distances(self, features: torch.Tensor | np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` (n x d) to the training mean."""
        f = torch.as_tensor(features)
        mean, precision = self._on(f.device)
        centred = f.float() - mean
        squared = ((centred @ precision) * centred).sum(dim=1).clamp_min(0)
        return squared.sqrt().double().cpu().numpy()

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and precision on ``device``, copied once per device (16 MiB for ResNet-50 on a GPU)."""
        cache = self.__dict__.setdefault("_device_copies", {})
        if device not in cache:
            cache[device] = (self.mean.to(device), self.precision.to(device))
        return cache[device]

    def to_payload(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "mean": self.mean.contiguous(),
            "precision": self.precision.contiguous(),
            "threshold": self.threshold,
            "quantile": self.quantile,
            "n_train": self.n_train,
            "shrinkage": self.shrinkage,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> MahalanobisReference:
        if payload.get("method") != METHOD:
            raise ValueError(f"unknown OOD method {payload.get('method')!r} (this version knows {METHOD})")
        return cls(
            mean=payload["mean"].float(),
            precision=payload["precision"].float(),
            threshold=float(payload["threshold"]),
            quantile=float(payload["quantile"]),
            n_train=int(payload["n_train"]),
            shrinkage=float(payload["shrinkage"]),
        )


def threshold_at(distances: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of the validation distances (inf when there are none: nothing is called OOD)."""
    d = np.asarray(distances, dtype=np.float64)
    d = d[np.isfinite(d)]
    return float(np.quantile(d, quantile, method="higher")) if len(d) else float("inf")


def _precision(covariance: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix through its Cholesky factor; a tiny ridge is
    added if rounding left it semi-definite (shrinkage 0 with fewer scans than dimensions)."""
    cov = torch.from_numpy(np.asarray(covariance, dtype=np.float64))
    ridge = 0.0
    scale = float(torch.diagonal(cov).mean()) or 1.0
    for _ in range(6):
        factor, info = torch.linalg.cholesky_ex(cov + ridge * torch.eye(len(cov), dtype=cov.dtype))
        if int(info) == 0:
            return torch.cholesky_inverse(factor).numpy()
        ridge = scale * 1e-6 if ridge == 0 else ridge * 100
    raise OodUnavailable("the feature covariance is not positive definite even with a ridge")
