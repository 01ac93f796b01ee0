"""torchvision classifiers adapted to chest X-rays: one input channel and a fresh dropout head."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from xraytriage.config import ModelConfig

WEIGHT_ENUMS = {"IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"}


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be fetched (offline); the message says how to use a local file."""


def _weights_enum(arch: str, name: str) -> torchvision.models.WeightsEnum:
    weights_enum = torchvision.models.get_model_weights(arch)
    try:
        return weights_enum[name] if name != "DEFAULT" else weights_enum.DEFAULT
    except KeyError:
        available = ", ".join(w.name for w in weights_enum)
        raise ValueError(
            f"model.weights '{name}' does not exist for {arch}; available: {available}"
        ) from None


def _load_state_dict(arch: str, weights: str) -> dict[str, torch.Tensor] | None:
    """ImageNet weights through torchvision's own download path, or a local state-dict file."""
    if weights.upper() in WEIGHT_ENUMS:
        enum = _weights_enum(arch, weights.upper())
        try:
            return enum.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # URLError, socket errors, SSL errors, HTTP errors...
            filename = enum.url.rsplit("/", 1)[-1]
            raise WeightsUnavailable(
                f"could not download {arch} weights {enum} ({exc.__class__.__name__}: {exc}). "
                f"If this machine is offline, fetch {enum.url} elsewhere, copy it here and set "
                f"model.weights=/path/to/{filename} (or put it in "
                f"{Path(torch.hub.get_dir()) / 'checkpoints' / filename})"
            ) from None
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"model.weights file {weights} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            return parent, attr, module
    raise ValueError("model has no Conv2d layer to adapt to grayscale input")


def _fold_to_grayscale(model: nn.Module) -> None:
    """Sum conv1's RGB kernels into one channel: same response to a grey image, a third of the input work."""
    parent, attr, conv = _first_conv(model)
    if conv.in_channels == 1:
        return
    new = nn.Conv2d(
        1,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(parent, attr, new)


def _replace_head(model: nn.Module, num_outputs: int, dropout: float) -> None:
    """Swap the final Linear for dropout + a fresh Linear; earlier head layers (norms, MLPs) are kept."""
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Sequential(nn.Dropout(dropout), nn.Linear(head.in_features, num_outputs)))
            return
        if isinstance(head, nn.Sequential):
            positions = [i for i, m in enumerate(head) if isinstance(m, nn.Linear)]
            if not positions:
                continue
            last = positions[-1]
            old = head[last]
            head[last] = nn.Sequential(nn.Dropout(dropout), nn.Linear(old.in_features, num_outputs))
            return
    raise ValueError(f"do not know how to replace the classification head of {type(model).__name__}")


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module):
            return list(head.parameters())
    raise ValueError("model has no recognised head")


def build_model(cfg: ModelConfig, num_outputs: int, load_weights: bool = True) -> nn.Module:
    """Any torchvision classification model by name; pretrained weights loaded before adaptation."""
    available = torchvision.models.list_models(module=torchvision.models)
    if cfg.arch not in available:
        raise ValueError(f"model.arch '{cfg.arch}' is not a torchvision classification model; e.g. resnet50")
    model = torchvision.models.get_model(cfg.arch, weights=None)
    if cfg.weights and load_weights:
        state = _load_state_dict(cfg.arch, cfg.weights) or {}
        own = model.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        skipped = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
        # The classification head (and a grayscale conv1) may legitimately differ; anything else is an error.
        if any(not k.startswith(("fc.", "classifier.", "head", "conv1.")) for k in skipped):
            raise ValueError(
                f"model.weights {cfg.weights} does not match {cfg.arch}: "
                f"{len(skipped)} parameters missing or mis-shaped (e.g. {skipped[:3]})"
            )
        model.load_state_dict(usable, strict=False)
    if cfg.in_channels == 1:
        _fold_to_grayscale(model)
    _replace_head(model, num_outputs, cfg.dropout)
    return model
