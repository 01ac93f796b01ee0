"""torchvision classifiers adapted to chest X-rays: one input channel and a fresh dropout head."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from xraytriage.config import TORCHVISION_WEIGHT_NAMES, ConfigError, ModelConfig
from xraytriage.models import pretrained
from xraytriage.models.pretrained import WeightsUnavailable

__all__ = ["WeightsUnavailable", "build_model", "head_parameters"]

HEAD_ATTRS = ("fc", "classifier", "head", "heads")


def _weights_enum(arch: str, name: str) -> torchvision.models.WeightsEnum:
    weights_enum = torchvision.models.get_model_weights(arch)
    try:
        return weights_enum[name] if name != "DEFAULT" else weights_enum.DEFAULT
    except KeyError:
        available = ", ".join(w.name for w in weights_enum)
        raise ConfigError(
            f"model.weights '{name}' does not exist for {arch}; available: {available}"
        ) from None


def _imagenet_state_dict(arch: str, name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights through torchvision's own download path (cached, hash-checked)."""
    enum = _weights_enum(arch, name)
    try:
        return enum.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, socket errors, SSL errors, HTTP errors...
        filename = enum.url.rsplit("/", 1)[-1]
        reason = " ".join(f"{exc.__class__.__name__}: {exc}".split())
        raise WeightsUnavailable(
            f"could not download {arch} weights {enum} ({reason}). If this machine is offline, fetch "
            f"{enum.url} elsewhere, copy it here and set model.weights=/path/to/{filename} (or put it in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints' / filename})"
        ) from None


def _pretrained_state_dict(arch: str, weights: str) -> dict[str, torch.Tensor]:
    """Torchvision-named tensors from an ImageNet name, a chest-X-ray name or a file in any known layout."""
    if weights.upper() in TORCHVISION_WEIGHT_NAMES:
        return _imagenet_state_dict(arch, weights.upper())
    entry = pretrained.published(weights)
    if entry is not None:
        return pretrained.load_published(entry)
    return pretrained.to_torchvision(pretrained.read_weights_file(weights), weights)


def _head_attr(model: nn.Module) -> str:
    return next((attr for attr in HEAD_ATTRS if isinstance(getattr(model, attr, None), nn.Module)), "fc")


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
    for attr in HEAD_ATTRS:
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
    for attr in HEAD_ATTRS:
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module):
            return list(head.parameters())
    raise ValueError("model has no recognised head")


def build_model(cfg: ModelConfig, num_outputs: int, load_weights: bool = True) -> nn.Module:
    """Any torchvision classification model by name, with pretrained weights in any known layout.

    The first convolution is folded to one channel first (when ``in_channels`` is 1) and the weights'
    first-layer kernels are matched to it (summed from RGB: exact for grey images); everything but
    the classification head must then fit exactly, or the build stops naming what does not.
    """
    available = torchvision.models.list_models(module=torchvision.models)
    if cfg.arch not in available:
        raise ConfigError(f"model.arch '{cfg.arch}' is not a torchvision classification model; e.g. resnet50")
    model = torchvision.models.get_model(cfg.arch, weights=None)
    if cfg.in_channels == 1:
        _fold_to_grayscale(model)
    if cfg.weights and load_weights:
        state = _pretrained_state_dict(cfg.arch, cfg.weights)
        pretrained.load_backbone(model, state, arch=cfg.arch, head=_head_attr(model), source=cfg.weights)
    _replace_head(model, num_outputs, cfg.dropout)
    return model
