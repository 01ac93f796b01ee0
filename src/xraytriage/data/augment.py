"""Training-time augmentation with X-ray-appropriate defaults: a fast fused OpenCV pipeline and the
albumentations reference.

Small affine jitter, brightness/contrast, gamma and CLAHE mimic differences between scanners and
technologists. No vertical flip ever (anatomy is not upside down); horizontal flip is off by default
because laterality markers and situs are meaningful.

Two backends (``augment.backend``):

* ``albumentations`` (default): the ``A.Compose`` pipeline of the project's declared augmentation
  library.
* ``fast`` (opt-in): the same operations with the same parameter distributions and pixel semantics,
  but rotation/scale/translation (and the flip) are one affine matrix and one ``cv2.warpAffine``,
  brightness/contrast is one fused multiply-add, gamma is ``cv2.pow`` (``np.power`` on float32 is ~5x
  slower) and the image is clipped once: about 3x the samples/s of albumentations per worker at 224 px
  from the cache (docs/benchmarks.md). For when augmentation bounds the epoch, or where albumentations
  is not installed (the GPU check's device image). ``tests/data/test_augment.py`` checks every op against
  its albumentations counterpart.

Both are seeded per sample through ``set_random_seed`` (see ``ScanDataset``), so augmentations are
identical whatever the number of DataLoader workers.
"""

from __future__ import annotations

import math
import os
import random
from typing import TYPE_CHECKING, Any, NamedTuple

# albumentations checks PyPI for updates on import; hospitals run offline and tests must not reach out.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np

from xraytriage.config import AugmentConfig

if TYPE_CHECKING:
    import albumentations as A

CLAHE_CLIP_LIMIT = 2.0  # A.CLAHE(clip_limit=2.0) draws the limit uniformly from [1, 2]
CLAHE_TILE_GRID = (8, 8)
_U8_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255.0)  # albucore.to_float_lut
# cv2.pow takes a ~4x slower path on exact zeros (letterbox bars, warp borders, clipped blacks), so
# gamma raises them to this floor first: 0 becomes 1e-30 ** gamma (3e-26 at gamma 0.85) instead of 0,
# far below half a uint16 step (7.6e-6) for any gamma >= 0.2, and 0 again after the uint8 CLAHE round
# trip. A normal float32 (tiny is 1.2e-38): denormals would be slow again.
POW_FLOOR = 1e-30


# ----------------------------------------------------------------------------- single operations
# Each function reproduces one albumentations op for fixed parameters (tests/data/test_augment.py).


def affine_matrix(
    shape: tuple[int, ...],
    angle: float = 0.0,
    scale_x: float = 1.0,
    scale_y: float = 1.0,
    translate_x: float = 0.0,
    translate_y: float = 0.0,
    hflip: bool = False,
) -> np.ndarray:
    """2x3 forward (source -> output) matrix with A.Affine's convention, optionally then a horizontal flip.

    As ``albumentations.augmentations.geometric.functional.create_affine_transformation_matrix``:
    scale, then rotate by ``angle`` degrees (positive = counter-clockwise on screen), about the pixel
    centre ((w - 1) / 2, (h - 1) / 2), then translate by (translate_x, translate_y) pixels. ``hflip``
    mirrors the result about the same centre, as A.HorizontalFlip applied after A.Affine.
    """
    height, width = shape[:2]
    cx, cy = width / 2 - 0.5, height / 2 - 0.5
    rad = math.radians(angle % 360)
    cos, sin = math.cos(rad), math.sin(rad)
    a00, a01 = cos * scale_x, sin * scale_y
    a10, a11 = -sin * scale_x, cos * scale_y
    b0 = cx + translate_x - (a00 * cx + a01 * cy)
    b1 = cy + translate_y - (a10 * cx + a11 * cy)
    if hflip:  # x -> 2 cx - x after the affine
        a00, a01, b0 = -a00, -a01, 2 * cx - b0
    return np.array([[a00, a01, b0], [a10, a11, b1]], dtype=np.float64)


def warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """One bilinear warp with a constant 0 border (A.Affine's interpolation and fill)."""
    height, width = image.shape[:2]
    return cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def _clip01(image: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """In-place clip to [floor, 1] (two OpenCV passes: ~25% cheaper than np.clip at 224 px)."""
    cv2.threshold(image, 1.0, 1.0, cv2.THRESH_TRUNC, dst=image)
    if floor > 0:
        cv2.max(image, floor, dst=image)
    else:
        cv2.threshold(image, 0.0, 0.0, cv2.THRESH_TOZERO, dst=image)
    return image


def brightness_contrast(
    image: np.ndarray, alpha: float, beta: float, inplace: bool = False, floor: float = 0.0
) -> np.ndarray:
    """``clip(alpha * x + beta, floor, 1)``: one fused pass plus the clip (a new array unless ``inplace``).

    This is what A.RandomBrightnessContrast 2.0.8 computes for float images (``albucore.multiply_add``
    then clip): alpha = 1 + contrast draw, beta = brightness draw x max value (1.0 for float32). Contrast
    scales around 0, not around the image mean, despite the albumentations docstring.
    """
    out = cv2.addWeighted(image, alpha, image, 0.0, beta, dst=image if inplace else None)
    return _clip01(out, floor)


def gamma(image: np.ndarray, value: float, inplace: bool = False, floored: bool = False) -> np.ndarray:
    """``x ** value`` (A.RandomGamma on float images, which uses np.power) with cv2.pow, x in [0, 1].

    Zeros are first raised to :data:`POW_FLOOR` (see there) unless the caller did (``floored``).
    """
    if not floored:
        image = cv2.max(image, POW_FLOOR, dst=image if inplace else None)
        inplace = True
    return cv2.pow(image, value, dst=image if inplace else None)


def clahe(
    image: np.ndarray, clip_limit: float, tile_grid_size: tuple[int, int] = CLAHE_TILE_GRID
) -> np.ndarray:
    """CLAHE on a uint8 copy, as albumentations does for float images (``uint8_io``).

    float -> uint8 is ``clip(rint(x * 255))`` (``albucore.from_float``; ``convertScaleAbs`` rounds
    half to even too and x >= 0 here), uint8 -> float is ``k / 255`` via a lookup table.
    """
    u8 = cv2.convertScaleAbs(image, alpha=255.0)
    equalised = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=tile_grid_size).apply(u8)
    return cv2.LUT(equalised, _U8_TO_FLOAT)


# ----------------------------------------------------------------------------- the fast pipeline


class FastParams(NamedTuple):
    """One sample's draws; ``None`` / False means the op does not fire (a NamedTuple: cheap to make)."""

    angle: float | None = None  # affine fires when angle is not None
    scale_x: float = 1.0
    scale_y: float = 1.0
    translate_x: int = 0
    translate_y: int = 0
    hflip: bool = False
    alpha: float | None = None  # brightness/contrast fires when alpha is not None
    beta: float = 0.0
    gamma: float | None = None
    clahe_clip: float | None = None


class FastAugmentation:
    """The albumentations pipeline's ops and distributions, fused: one warp, one multiply-add, one clip.

    Order as the reference: affine, brightness/contrast, gamma, CLAHE, horizontal flip (folded into
    the warp; CLAHE's tile grid is symmetric, so flipping before or after it is the same up to
    rounding at tile borders of odd sizes). Each affine/photometric op fires with ``cfg.probability``,
    CLAHE with ``cfg.clahe_p``, the flip with ``cfg.hflip_p``. All draws for a sample come from one
    ``random.Random`` reseeded by :meth:`set_random_seed`.
    """

    def __init__(self, cfg: AugmentConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self._rng = random.Random(seed)
        # (low, width) of every uniform draw, computed once: sample_params runs once per sample.
        self._rotate = (-cfg.affine_degrees, 2 * cfg.affine_degrees)
        self._scale = (1 - cfg.affine_scale, 2 * cfg.affine_scale)
        self._translate = (-cfg.affine_translate, 2 * cfg.affine_translate)
        self._contrast = (1 - cfg.contrast, 2 * cfg.contrast)
        self._brightness = (-cfg.brightness, 2 * cfg.brightness)
        lo, hi = cfg.gamma_low * 100, cfg.gamma_high * 100  # percent, as A.RandomGamma's gamma_limit
        self._gamma = (lo, hi - lo)

    def set_random_seed(self, seed: int) -> None:
        """Restart the stream (per sample in ManifestScans, per worker in data.workers.WorkerInit)."""
        self._rng.seed(seed)

    def sample_params(self, shape: tuple[int, ...]) -> FastParams:
        """Draw one sample's parameters with the same ranges as the albumentations pipeline."""
        cfg, rnd = self.cfg, self._rng.random
        p = cfg.probability
        angle = None
        scale_x = scale_y = 1.0
        tx = ty = 0
        if rnd() < p:
            (r0, rw), (s0, sw), (t0, tw) = self._rotate, self._scale, self._translate
            angle = r0 + rw * rnd()
            scale_x, scale_y = s0 + sw * rnd(), s0 + sw * rnd()
            tx, ty = int((t0 + tw * rnd()) * shape[1]), int((t0 + tw * rnd()) * shape[0])  # as A.Affine
        alpha = None
        beta = 0.0
        if rnd() < p:
            alpha = self._contrast[0] + self._contrast[1] * rnd()
            beta = self._brightness[0] + self._brightness[1] * rnd()
        gamma_value = None
        if rnd() < p:
            gamma_value = (self._gamma[0] + self._gamma[1] * rnd()) / 100.0
        clahe_clip = None
        if cfg.clahe_p > 0 and rnd() < cfg.clahe_p:
            clahe_clip = 1.0 + (CLAHE_CLIP_LIMIT - 1.0) * rnd()
        hflip = cfg.hflip_p > 0 and rnd() < cfg.hflip_p
        return FastParams(angle, scale_x, scale_y, tx, ty, hflip, alpha, beta, gamma_value, clahe_clip)

    def apply(self, image: np.ndarray, params: FastParams) -> np.ndarray:
        """float32 HxW in [0, 1] -> augmented float32 HxW in [0, 1]; never writes into ``image``."""
        out = image
        warped = params.angle is not None
        floor = POW_FLOOR if params.gamma is not None else 0.0  # fused into the clip, see POW_FLOOR
        if warped:
            matrix = affine_matrix(
                image.shape,
                params.angle,
                params.scale_x,
                params.scale_y,
                params.translate_x,
                params.translate_y,
                params.hflip,
            )
            out = warp(image, matrix)
        elif params.hflip:
            out = cv2.flip(image, 1)
        if params.alpha is not None:
            out = brightness_contrast(out, params.alpha, params.beta, out is not image, floor)  # the clip
        elif warped:
            _clip01(out, floor)  # bilinear weights can overshoot 1 by an ulp
        if params.gamma is not None:
            clipped = warped or params.alpha is not None
            out = gamma(out, params.gamma, inplace=out is not image, floored=clipped)
        if params.clahe_clip is not None:
            out = clahe(out, params.clahe_clip)
        return out

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.apply(image, self.sample_params(image.shape))

    def __repr__(self) -> str:
        return f"FastAugmentation({self.cfg!r})"


# ----------------------------------------------------------------------------- the reference pipeline


def build_albumentations(cfg: AugmentConfig, seed: int) -> A.Compose:
    """The default pipeline (``augment.backend: albumentations``).

    Imported here, not at module level: the fast backend needs no albumentations, so a machine without
    it (the GPU check's device image) still trains with ``augment.backend: fast``.
    """
    import albumentations as A

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
        ops.append(A.CLAHE(clip_limit=CLAHE_CLIP_LIMIT, tile_grid_size=CLAHE_TILE_GRID, p=cfg.clahe_p))
    if cfg.hflip_p > 0:
        ops.append(A.HorizontalFlip(p=cfg.hflip_p))
    return A.Compose(ops, seed=seed)


def build_augmentation(cfg: AugmentConfig, seed: int) -> FastAugmentation | A.Compose | None:
    """Training-time augmentation on float32 HxW images in [0, 1]; None when disabled."""
    if not cfg.enabled:
        return None
    if cfg.backend == "albumentations":
        return build_albumentations(cfg, seed)
    return FastAugmentation(cfg, seed)


def apply_augmentation(transform: Any, image: np.ndarray) -> np.ndarray:
    """Run either backend; the result is float32 in [0, 1] with the input's shape."""
    if transform is None:
        return image
    if isinstance(transform, FastAugmentation):
        return transform(image)  # already float32 and clipped
    out = transform(image=image)["image"]
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
