"""What the model looked like on validation: the numbers every deployed window is compared with.

The bundle's ``scope["validation"]`` holds the calibrated validation probabilities (the ones the
thresholds were chosen on), the validation OOD scores and out-of-scope rate. Only those keys are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xraytriage.utils.errors import InputRefused

RETRAIN_HINT = "retrain or re-export the model with xraytriage >= 0.2 (it records the validation reference)"


class ReferenceMissing(InputRefused):
    """The bundle holds no validation reference (written before monitoring existed)."""


@dataclass(frozen=True)
class ValidationReference:
    model_id: str
    task: str
    labels: list[str]
    thresholds: dict[str, float]
    probabilities: dict[str, np.ndarray]
    ood_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    out_of_scope_rate: float = 0.0
    n_scans: int = 0

    @classmethod
    def from_bundle(cls, bundle: Any, source: str | Path = "model bundle") -> ValidationReference:
        """Read ``bundle.scope["validation"]``; one-line error naming what is missing and the fix."""
        scope = getattr(bundle, "scope", None) or {}
        validation = scope.get("validation") if isinstance(scope, dict) else None
        if not isinstance(validation, dict):
            raise ReferenceMissing(
                f"{source}: holds no validation reference (scope.validation); {RETRAIN_HINT}"
            )
        probs = validation.get("probabilities")
        missing = [label for label in bundle.labels if not isinstance(probs, dict) or label not in probs]
        if missing:
            raise ReferenceMissing(
                f"{source}: validation reference lacks probabilities for {', '.join(missing)}; {RETRAIN_HINT}"
            )
        probabilities = {label: np.asarray(probs[label], dtype=float) for label in bundle.labels}
        empty = [label for label, values in probabilities.items() if values.size == 0]
        if empty:
            raise ReferenceMissing(
                f"{source}: validation probabilities of {', '.join(empty)} are empty; {RETRAIN_HINT}"
            )
        return cls(
            model_id=str(bundle.model_id),
            task=str(bundle.task),
            labels=list(bundle.labels),
            thresholds={label: float(bundle.thresholds[label]) for label in bundle.labels},
            probabilities=probabilities,
            ood_scores=np.asarray(validation.get("ood_scores") or [], dtype=float),
            out_of_scope_rate=float(validation.get("out_of_scope_rate", 0.0) or 0.0),
            n_scans=int(validation.get("n_scans", 0) or len(next(iter(probabilities.values())))),
        )

    def flagged(self, label: str) -> int:
        """Validation scans at or above the label's threshold (the flag rule of ``score``)."""
        return int((self.probabilities[label] >= self.thresholds[label]).sum())
