"""Synthetic but honest inputs for tests and ``scripts/bench_monitor.py``: a *calibrated* validation
reference (labels drawn from the probabilities, so calibration holds by construction) and deployed
scores tables in ``scores.csv``'s layout drawn from the same or a shifted population."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from xraytriage.columns import (
    IN_SCOPE,
    OOD_SCORE,
    SCOPE_REASONS,
    STUDY_DATE,
    flag_column,
    prob_column,
)
from xraytriage.monitoring.reference import ValidationReference

BETA_A, BETA_B = 1.2, 4.0  # probabilities of a low-prevalence finding (mean 0.23)
OOD_MEAN, OOD_SD = 10.0, 2.0


@dataclass(frozen=True)
class Population:
    """How one group's scans are drawn. ``power`` < 1 raises every probability (p ** power)."""

    power: float = 1.0
    ood_shift: float = 0.0
    out_of_scope_rate: float = 0.0


def draw_probabilities(rng: np.random.Generator, n: int, power: float = 1.0) -> np.ndarray:
    return rng.beta(BETA_A, BETA_B, n) ** power


def calibrated_reference(
    rng: np.random.Generator, n: int, labels: Sequence[str] = ("finding",), threshold: float = 0.2
) -> ValidationReference:
    return ValidationReference(
        model_id="synthetic",
        task="binary" if len(labels) == 1 else "multilabel",
        labels=list(labels),
        thresholds=dict.fromkeys(labels, threshold),
        probabilities={label: draw_probabilities(rng, n) for label in labels},
        ood_scores=rng.normal(OOD_MEAN, OOD_SD, n),
        out_of_scope_rate=0.0,
        n_scans=n,
    )


def deployed_scores(
    rng: np.random.Generator,
    reference: ValidationReference,
    days: Sequence[str],
    sites: dict[str, int],
    shifted: dict[tuple[str, str], Population] | None = None,
) -> pd.DataFrame:
    """A scores table: ``sites[site]`` scans per day per site; ``shifted[(site, day)]`` changes a cell."""
    parts = []
    for day in days:
        for site, n in sites.items():
            pop = (shifted or {}).get((site, day), Population())
            frame = pd.DataFrame({"path": [f"/scans/{site}/{day}/{i}.dcm" for i in range(n)]})
            frame["sop_instance_uid"] = [f"2.25.{site}.{day.replace('-', '')}.{i}" for i in range(n)]
            frame["study_instance_uid"] = frame["sop_instance_uid"]
            for label in reference.labels:
                probs = draw_probabilities(rng, n, pop.power)
                frame[prob_column(label)] = probs
            for label in reference.labels:
                flagged = frame[prob_column(label)] >= reference.thresholds[label]
                frame[flag_column(label)] = flagged.astype(int)
            frame["model_id"] = reference.model_id
            frame["scored_at"] = f"{day}T23:00:00"
            frame[IN_SCOPE] = (rng.random(n) >= pop.out_of_scope_rate).astype(int)
            frame[SCOPE_REASONS] = ""
            frame[OOD_SCORE] = rng.normal(OOD_MEAN + pop.ood_shift, OOD_SD, n)
            frame[STUDY_DATE] = day
            frame["view"] = "PA"
            frame["manufacturer"] = "ACME"
            frame["site"] = site
            parts.append(frame)
    return pd.concat(parts, ignore_index=True)
