"""The model bundle: one ``model.pt`` that carries everything ``evaluate`` and ``score`` need.

Weights, architecture, preprocessing, class names, operating-point thresholds and training metadata
are stored as tensors and plain Python containers only, so the file loads with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xraytriage.config import ModelConfig, PreprocessConfig
from xraytriage.models.factory import build_model
from xraytriage.utils.atomic import write_torch_file
from xraytriage.utils.errors import InputRefused

BUNDLE_FORMAT = 1


class BundleError(InputRefused):
    """The file is not a usable bundle: unreadable, another format, or weights altered after training."""


def logits_to_probabilities(
    logits: torch.Tensor, task: str, temperature: float | Sequence[float] | torch.Tensor = 1.0
) -> torch.Tensor:
    """The one place logits become probabilities: softmax for multiclass, sigmoid otherwise, after the
    calibration temperature (one per output column, or one for all). Validation, evaluation, scoring
    and exported graphs all use it, so a threshold chosen on validation sees the same numbers."""
    if not isinstance(temperature, (int, float, torch.Tensor)):
        temperature = torch.as_tensor(temperature, dtype=torch.float32, device=logits.device)
    scaled = logits.float() / temperature
    if task == "multiclass":
        return torch.softmax(scaled, dim=1)
    return torch.sigmoid(scaled)


@dataclass
class Bundle:
    model: nn.Module
    model_config: ModelConfig
    preprocess: PreprocessConfig
    labels: list[str]
    thresholds: dict[str, float]
    task: str
    temperatures: dict[str, float] = field(default_factory=dict)  # per label; missing = 1.0
    metadata: dict[str, Any] = field(default_factory=dict)
    model_id: str = ""
    operating_points: dict[str, dict[str, Any]] = field(default_factory=dict)  # OperatingPoint.to_json()
    # ValidatedScope.to_payload(): plain containers and tensors; {} for bundles written before scopes
    scope: dict[str, Any] = field(default_factory=dict)

    def temperature_vector(self) -> list[float]:
        """One temperature per output column (multiclass: the softmax has one, the first label's)."""
        values = [float(self.temperatures.get(label, 1.0)) for label in self.labels]
        return values[:1] if self.task == "multiclass" else values

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> per-class probabilities under the bundle's task (and calibration temperatures)."""
        return logits_to_probabilities(logits, self.task, self.temperature_vector())


def state_dict_id(state: dict[str, torch.Tensor]) -> str:
    """Short content hash of the weights: scores and reports name exactly which model produced them."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        tensor = state[key].detach().cpu().contiguous()
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:12]


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    inner = getattr(model, "module", model)  # DDP
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    return {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}


def save_bundle(
    path: str | Path,
    model: nn.Module,
    model_config: ModelConfig,
    preprocess: PreprocessConfig,
    labels: list[str],
    thresholds: dict[str, float],
    task: str,
    temperatures: dict[str, float] | None = None,
    metadata: dict[str, Any] | None = None,
    operating_points: dict[str, dict[str, Any]] | None = None,
    scope: dict[str, Any] | None = None,
) -> str:
    """Write the bundle atomically; returns its model id.

    ``operating_points``: per label, how its threshold was chosen (``OperatingPoint.to_json()``:
    policy, the validation figure's lower bound, a fallback and its reason). ``scope``: the validated
    scope (``xraytriage.scope.ValidatedScope.to_payload()``)."""
    state = _plain_state_dict(model)
    model_id = state_dict_id(state)
    payload = {
        "format": BUNDLE_FORMAT,
        "model_id": model_id,
        "model": model_config.model_dump(mode="json"),
        "preprocess": preprocess.model_dump(mode="json"),
        "labels": list(labels),
        "thresholds": {k: float(v) for k, v in thresholds.items()},
        "task": task,
        "temperatures": {k: float(v) for k, v in (temperatures or {}).items()},
        "operating_points": dict(operating_points or {}),
        "metadata": metadata or {},
        "scope": dict(scope or {}),
        "state_dict": state,
    }
    write_torch_file(path, payload)
    return model_id


def _model_with_weights(cfg: ModelConfig, outputs: int, state: dict[str, torch.Tensor]) -> nn.Module:
    """The network with the bundle's weights, eval mode. Built on the meta device (no random
    initialisation to throw away: 0.4 s of every command's start-up for ResNet-50), then given the
    stored tensors; an architecture with state the bundle does not hold is built the ordinary way."""
    with torch.device("meta"):
        model = build_model(cfg, outputs, load_weights=False)
    model.load_state_dict(state, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = build_model(cfg, outputs, load_weights=False)
        model.load_state_dict(state)
    return model.eval()


def load_bundle(path: str | Path, map_location: str | torch.device = "cpu") -> Bundle:
    """Rebuild the network from a bundle (no download: the weights are in the file).

    The model id is recomputed from the stored weights and must equal the one recorded at training:
    outputs name the model that produced them, so a changed weight must never pass as the original.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: model bundle not found (train writes RUN_DIR/model.pt)")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise BundleError(
            f"{p}: not a readable xraytriage model bundle ({exc.__class__.__name__}: {exc})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{p}: not an xraytriage model bundle of format {BUNDLE_FORMAT}")
    state = payload["state_dict"]
    stored_id = str(payload.get("model_id", ""))
    actual_id = state_dict_id(state)
    if stored_id != actual_id:
        raise BundleError(
            f"{p}: the bundle's weights do not match its model id (stored {stored_id or 'none'}, weights "
            f"hash to {actual_id}): the file was changed or damaged after training; use the original bundle"
        )
    model_cfg = ModelConfig.model_validate(payload["model"])
    labels = list(payload["labels"])
    outputs = len(labels) if payload["task"] != "binary" else 1
    model = _model_with_weights(model_cfg, outputs, state)
    return Bundle(
        model=model,
        model_config=model_cfg,
        preprocess=_preprocess_from_payload(payload["preprocess"]),
        labels=labels,
        thresholds=dict(payload["thresholds"]),
        task=payload["task"],
        temperatures=_temperatures_from_payload(payload, labels),
        metadata=dict(payload.get("metadata", {})),
        model_id=actual_id,
        operating_points=dict(payload.get("operating_points", {})),
        scope=dict(payload.get("scope") or {}),
    )


def _temperatures_from_payload(payload: dict[str, Any], labels: list[str]) -> dict[str, float]:
    """Per-label temperatures; bundles written before they existed hold one for every label."""
    if "temperatures" in payload:
        return {str(k): float(v) for k, v in payload["temperatures"].items()}
    return {label: float(payload.get("temperature", 1.0)) for label in labels}


# Preprocessing keys added after bundles were first written, with the value those older bundles
# were trained with: a new default must never silently change the pixels an existing model sees.
_KEYS_ADDED_LATER = {"jpeg2000_min_fraction": 1.0}


def _preprocess_from_payload(stored: dict[str, Any]) -> PreprocessConfig:
    values = dict(stored)
    for key, trained_with in _KEYS_ADDED_LATER.items():
        values.setdefault(key, trained_with)
    return PreprocessConfig.model_validate(values)
