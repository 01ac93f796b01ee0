"""Albumentations pipelines with X-ray-appropriate defaults.

Small affine jitter, brightness/contrast, gamma and CLAHE mimic differences between scanners and
technologists. No vertical flip ever (anatomy is not upside down); horizontal flip is off by default
because laterality markers and situs are meaningful.
"""

from __future__ import annotations

import os

# albumentations checks PyPI for updates on import; hospitals run offline and tests must not reach out.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np
import torch

from xraytriage.config import AugmentConfig


def build_augmentation(cfg: AugmentConfig, seed: int) -> A.Compose | None:
    """Training-time augmentation on float32 HxW images in [0, 1]; None when disabled."""
    if not cfg.enabled:
        return None
    p = cfg.probability
    ops: list[A.BasicTransform] = [
        A.Affine(
            rotate=(-cfg.affine_degrees, cfg.affine_degrees),
            scale=(1 - cfg.affine_scale, 1 + cfg.affine_scale),
            translate_percent=(-cfg.affine_translate, cfg.affine_translate),
            interpolation=cv2.INTER_LINEAR,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            p=p,
        ),
        A.RandomBrightnessContrast(brightness_limit=cfg.brightness, contrast_limit=cfg.contrast, p=p),
        A.RandomGamma(gamma_limit=(cfg.gamma_low * 100, cfg.gamma_high * 100), p=p),
    ]
    if cfg.clahe_p > 0:
        ops.append(A.CLAHE(clip_limit=2.0, tile_grid_size=(8, 8), p=cfg.clahe_p))
    if cfg.hflip_p > 0:
        ops.append(A.HorizontalFlip(p=cfg.hflip_p))
    return A.Compose(ops, seed=seed)


def apply_augmentation(transform: A.Compose | None, image: np.ndarray) -> np.ndarray:
    if transform is None:
        return image
    out = transform(image=image)["image"]
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker (and each epoch) its own augmentation stream.

    torch hands every worker a distinct seed derived from the loader's generator, which itself is
    seeded from the run seed: reproducible, yet no two workers repeat the same augmentations.
    """
    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random

    random.seed(seed)
    dataset = info.dataset if info is not None else None
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)
