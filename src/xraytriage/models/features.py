"""Logits and the pooled penultimate features in one forward pass (the scope's image-based check).

Scoring needs both for every scan: the logits for the triage flags and the features for the
out-of-distribution distance. A second pass would double scoring's cost, and a forward hook is lost
when the network is re-traced (BatchNorm folding, ONNX export), so the wrapper runs the network with
its classification head swapped for an identity -- which yields exactly the pooled features the head
sees -- then applies the head itself. The original module (and its parameters) are shared, not copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from xraytriage.models.factory import HEAD_ATTRS


class LogitsAndFeatures(nn.Module):
    """``forward(x) -> (logits, features)``; ``features`` is what the classification head receives
    (ResNet-50: the 2048-d global-average-pooled output of ``layer4``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        attr = next((a for a in HEAD_ATTRS if isinstance(getattr(model, a, None), nn.Module)), None)
        if attr is None:
            raise ValueError(f"{type(model).__name__} has no classification head ({', '.join(HEAD_ATTRS)})")
        body = copy.copy(model)  # shares parameters, buffers and submodules with ``model``
        body._modules = dict(model._modules)
        body._modules[attr] = nn.Identity()
        self.body = body
        self.head = getattr(model, attr)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.flatten(self.body(x), 1)
        return self.head(features), features


def feature_dim(model: nn.Module) -> int:
    """Width of the features :class:`LogitsAndFeatures` returns (the head's first Linear's input)."""
    head = next(getattr(model, a) for a in HEAD_ATTRS if isinstance(getattr(model, a, None), nn.Module))
    linear = (
        head if isinstance(head, nn.Linear) else next(m for m in head.modules() if isinstance(m, nn.Linear))
    )
    return int(linear.in_features)
