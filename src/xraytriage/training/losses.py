"""Losses that ignore unknown labels instead of treating them as negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Binary / multi-label loss; NaN targets (unknown, uncertain) contribute nothing."""
    known = ~torch.isnan(targets)
    clean = torch.where(known, targets, torch.zeros_like(targets))
    if label_smoothing > 0:
        clean = clean * (1 - label_smoothing) + 0.5 * label_smoothing
    loss = F.binary_cross_entropy_with_logits(logits.float(), clean, pos_weight=pos_weight, reduction="none")
    weight = known.to(loss.dtype)
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)


def multiclass_ce(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Softmax loss from one-hot (or NaN = unknown) rows; rows without a known class are skipped."""
    known = ~torch.isnan(targets).any(dim=1) & (torch.nan_to_num(targets).sum(dim=1) > 0)
    classes = torch.nan_to_num(targets).argmax(dim=1)
    loss = F.cross_entropy(logits.float(), classes, reduction="none", label_smoothing=label_smoothing)
    weight = known.to(loss.dtype)
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)
