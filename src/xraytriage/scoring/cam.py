"""Grad-CAM overlays for flagged scans (``--cam DIR``), via the ``grad-cam`` package.

Made on the exact network input (the bundle's preprocessing), so the heat map lines up with what the
model saw. Hooks are attached per batch and removed afterwards, so batches without a flagged scan run
the plain model at full speed.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xraytriage.config import PreprocessConfig
from xraytriage.utils.atomic import atomic_path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def check_available() -> None:
    """Fail early (before hours of scoring) if ``--cam`` was asked for without the package."""
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        raise ImportError("--cam needs the grad-cam package: pip install 'grad-cam>=1.5.7'") from None


def target_layer(model: nn.Module) -> nn.Module:
    """The last top-level block that contains a convolution (``layer4`` of a ResNet, ``features`` ...)."""
    inner = getattr(model, "_orig_mod", model)
    last = None
    for _name, child in inner.named_children():
        if any(isinstance(m, nn.Conv2d) for m in child.modules()):
            last = child
    if last is None:
        raise ValueError(f"--cam: no convolutional block found in {type(inner).__name__}")
    return last


def cam_filename(path: str, label: str) -> str:
    """Readable and collision-free: the scan's name, a hash of its full path, the class."""
    stem = _UNSAFE.sub("_", Path(path).stem)[:80] or "scan"
    digest = hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{stem}_{digest}_{_UNSAFE.sub('_', label)}.png"


def make_overlays(
    model: nn.Module,
    inputs: torch.Tensor,
    items: list[tuple[int, str, int, str]],
    preprocess: PreprocessConfig,
) -> list[np.ndarray]:
    """Grad-CAM of class ``k`` over each input, as BGR uint8 images; ``items`` are (batch index, path,
    k, label)."""
    if not items:
        return []
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    inner = getattr(model, "_orig_mod", model)
    x = inputs[[i for i, _, _, _ in items]].detach().clone().float()
    targets = [ClassifierOutputTarget(k) for _, _, k, _ in items]
    with torch.enable_grad(), GradCAM(model=inner, target_layers=[target_layer(inner)]) as cam:
        maps = cam(input_tensor=x, targets=targets)
    base = (x[:, 0].cpu().numpy() * preprocess.std + preprocess.mean).clip(0.0, 1.0)
    overlays = []
    for grey, heat in zip(base, maps):
        rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
        overlays.append(show_cam_on_image(rgb, heat, use_rgb=False))  # BGR for OpenCV
    return overlays


def write_cams(
    model: nn.Module,
    inputs: torch.Tensor,
    items: list[tuple[int, str, int, str]],
    preprocess: PreprocessConfig,
    out_dir: Path,
) -> int:
    """Overlay Grad-CAM of class ``k`` on each input and save it as PNG into ``out_dir``."""
    return save_overlays(make_overlays(model, inputs, items, preprocess), items, out_dir)


def save_overlays(overlays: list[np.ndarray], items: list[tuple[int, str, int, str]], out_dir: Path) -> int:
    """Save each overlay (BGR) as PNG under a readable, collision-free name."""
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    for (_, path, _, label), overlay in zip(items, overlays):
        ok, png = cv2.imencode(".png", overlay)
        if not ok:
            continue
        with atomic_path(out_dir / cam_filename(path, label)) as tmp:
            tmp.write_bytes(png.tobytes())
    return len(items)
