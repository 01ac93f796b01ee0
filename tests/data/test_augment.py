"""Augmentation backends: every fast op equals its albumentations op, seeding, ranges, both backends."""

from __future__ import annotations

import pickle

import albumentations as A
import cv2
import numpy as np
import pytest
from albucore.functions import from_float

from xraytriage.config import AugmentConfig
from xraytriage.data import augment as aug


def _image(height: int = 96, width: int = 80, seed: int = 0) -> np.ndarray:
    """A smooth float32 image spanning [0, 1] exactly, with structure CLAHE and the warp can act on."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 3)
    yy, xx = np.mgrid[0:height, 0:width]
    img = img + 0.5 * np.sin(xx / 7.0).astype(np.float32) * (yy / height).astype(np.float32)
    img = (img - img.min()) / (img.max() - img.min())
    return img.astype(np.float32)


def _albu(transform: A.BasicTransform, image: np.ndarray) -> np.ndarray:
    return A.Compose([transform], seed=0)(image=image)["image"]


AFFINES = [  # rotate degrees, scale x, scale y, translate x, translate y (fractions)
    (5.0, 1.05, 1.05, 0.03, 0.03),
    (-7.0, 0.92, 0.92, -0.05, 0.02),
    (3.0, 1.08, 0.95, 0.0, -0.05),
    (0.0, 1.0, 1.0, 0.05, 0.0),
]


@pytest.mark.parametrize(("rotate", "sx", "sy", "tx", "ty"), AFFINES)
def test_affine_equals_albumentations_affine(
    rotate: float, sx: float, sy: float, tx: float, ty: float
) -> None:
    image = _image(96, 80)  # not square: catches swapped width/height
    want = _albu(
        A.Affine(
            rotate=(rotate, rotate),
            scale={"x": (sx, sx), "y": (sy, sy)},
            translate_percent={"x": (tx, tx), "y": (ty, ty)},
            interpolation=cv2.INTER_LINEAR,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            p=1,
        ),
        image,
    )
    matrix = aug.affine_matrix(image.shape, rotate, sx, sy, int(tx * 80), int(ty * 96))
    got = aug.warp(image, matrix)
    assert got.dtype == np.float32 and got.shape == image.shape
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_affine_with_flip_equals_affine_then_horizontal_flip() -> None:
    image = _image(96, 80)
    want = A.Compose(
        [
            A.Affine(rotate=(-6, -6), scale=(0.95, 0.95), translate_percent=(0.04, 0.04), p=1),
            A.HorizontalFlip(p=1),
        ],
        seed=0,
    )(image=image)["image"]
    got = aug.warp(
        image, aug.affine_matrix(image.shape, -6, 0.95, 0.95, int(0.04 * 80), int(0.04 * 96), True)
    )
    # One warp instead of warp + flip: OpenCV's 1/32-pixel interpolation tables round the mirrored
    # sub-pixel offsets differently, a few 1e-5 at most on this [0, 1] image.
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.abs(got - want).mean() < 1e-5
    # The flip alone is exact.
    np.testing.assert_array_equal(aug.warp(image, aug.affine_matrix(image.shape, hflip=True)), image[:, ::-1])


@pytest.mark.parametrize(
    ("brightness", "contrast"), [(0.1, 0.2), (-0.15, -0.15), (0.3, 0.3), (-0.4, 0.1), (0.0, 0.0)]
)
def test_brightness_contrast_equals_albumentations(brightness: float, contrast: float) -> None:
    image = _image()
    want = _albu(
        A.RandomBrightnessContrast(
            brightness_limit=(brightness, brightness), contrast_limit=(contrast, contrast), p=1
        ),
        image,
    )
    got = aug.brightness_contrast(image, 1.0 + contrast, brightness)
    assert got.dtype == np.float32 and got is not image
    np.testing.assert_allclose(got, want, atol=2e-7, rtol=0)
    if brightness + contrast > 0.2:  # large settings saturate: the clip is part of the op
        assert got.max() == 1.0 and (got == 1.0).sum() > 10


@pytest.mark.parametrize("percent", [85, 100, 110, 115])
def test_gamma_equals_albumentations(percent: float) -> None:
    image = _image()
    image[:, :10] = 0.0  # letterbox-like bars: exact zeros take the floor (augment.POW_FLOOR)
    want = _albu(A.RandomGamma(gamma_limit=(percent, percent), p=1), image)
    got = aug.gamma(image, percent / 100)
    assert got.dtype == np.float32 and got is not image
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
    assert got[:, :10].max() <= aug.POW_FLOOR ** (percent / 100) * 1.01 and got[:, :10].min() > 0
    copy = image.copy()
    assert aug.gamma(copy, percent / 100, inplace=True) is copy
    np.testing.assert_array_equal(copy, got)


@pytest.mark.parametrize("clip_limit", [1.0, 1.5, 2.0])
def test_clahe_equals_albumentations(clip_limit: float) -> None:
    image = _image(128, 112)
    want = _albu(A.CLAHE(clip_limit=(clip_limit, clip_limit), tile_grid_size=(8, 8), p=1), image)
    got = aug.clahe(image, clip_limit)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, image)


def test_float_to_uint8_rounding_matches_albucore_including_ties() -> None:
    k = np.arange(256, dtype=np.float32)
    values = np.concatenate(
        [k / 255, (k + 0.5) / 255, np.nextafter((k + 0.5) / 255, 0), np.random.default_rng(1).random(50_000)]
    ).astype(np.float32)
    np.testing.assert_array_equal(
        cv2.convertScaleAbs(values, alpha=255.0).ravel(), from_float(values, np.uint8)
    )


def test_fast_pipeline_equals_albumentations_ops_applied_with_the_same_parameters() -> None:
    image = _image(96, 80)
    image[:, :8] = 0.0  # zeros, as letterboxing leaves them (the gamma floor path)
    cfg = AugmentConfig(probability=1.0, clahe_p=0.0)
    fast = aug.FastAugmentation(cfg, 0)
    for seed in range(5):
        fast.set_random_seed(seed)
        params = fast.sample_params(image.shape)
        assert params.angle is not None and params.alpha is not None and params.gamma is not None
        reference = A.Compose(
            [
                A.Affine(
                    rotate=(params.angle, params.angle),
                    scale={"x": (params.scale_x,) * 2, "y": (params.scale_y,) * 2},
                    translate_px={"x": (params.translate_x,) * 2, "y": (params.translate_y,) * 2},
                    p=1,
                ),
                A.RandomBrightnessContrast(
                    brightness_limit=(params.beta, params.beta),
                    contrast_limit=(params.alpha - 1, params.alpha - 1),
                    p=1,
                ),
                A.RandomGamma(gamma_limit=(params.gamma * 100,) * 2, p=1),
            ],
            seed=0,
        )
        want = np.clip(reference(image=image)["image"], 0, 1)
        got = fast.apply(image, params)
        np.testing.assert_allclose(got, want, atol=5e-6, rtol=0)
        fast.set_random_seed(seed)
        np.testing.assert_array_equal(fast(image), got)  # __call__ = sample_params + apply


@pytest.mark.parametrize("backend", ["albumentations", "fast"])
def test_same_seed_same_output_and_different_seeds_differ(backend: str) -> None:
    image = _image()
    cfg = AugmentConfig(backend=backend, probability=1.0, clahe_p=0.5, hflip_p=0.5)
    a, b = aug.build_augmentation(cfg, 0), aug.build_augmentation(cfg, 99)
    assert isinstance(a, aug.FastAugmentation if backend == "fast" else A.Compose)
    outputs = []
    for seed in (1, 2, 3):
        a.set_random_seed(seed)
        b.set_random_seed(seed)
        first = aug.apply_augmentation(a, image)
        np.testing.assert_array_equal(first, aug.apply_augmentation(b, image))
        outputs.append(first)
    assert not np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[1], outputs[2])
    # Without a reseed the stream continues: the next sample differs, and reseeding replays it.
    a.set_random_seed(1)
    aug.apply_augmentation(a, image)
    second = aug.apply_augmentation(a, image)
    assert not np.array_equal(second, outputs[0])
    # Picklable (DataLoader workers) and the copy replays the same stream.
    clone = pickle.loads(pickle.dumps(a))
    a.set_random_seed(7)
    clone.set_random_seed(7)
    np.testing.assert_array_equal(aug.apply_augmentation(a, image), aug.apply_augmentation(clone, image))


@pytest.mark.parametrize("backend", ["albumentations", "fast"])
def test_output_is_float32_in_unit_range_with_the_input_shape_and_input_untouched(backend: str) -> None:
    image = _image(70, 90)
    image[:5] = 1.0  # saturated and black areas: brightness, gamma and the warp push at both ends
    image[-5:] = 0.0
    before = image.copy()
    cfg = AugmentConfig(
        backend=backend, probability=1.0, clahe_p=0.5, hflip_p=0.5, brightness=0.5, contrast=0.5
    )
    transform = aug.build_augmentation(cfg, 0)
    for seed in range(60):
        transform.set_random_seed(seed)
        out = aug.apply_augmentation(transform, image)
        assert out.dtype == np.float32 and out.shape == image.shape and out.flags.c_contiguous
        assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(image, before)


def test_disabled_is_none_and_zero_probability_is_identity() -> None:
    image = _image()
    assert aug.build_augmentation(AugmentConfig(enabled=False), 0) is None
    assert aug.build_augmentation(AugmentConfig(enabled=False, backend="albumentations"), 0) is None
    assert aug.apply_augmentation(None, image) is image
    idle = aug.build_augmentation(AugmentConfig(backend="fast", probability=0.0, clahe_p=0.0, hflip_p=0.0), 0)
    for seed in range(20):
        idle.set_random_seed(seed)
        assert idle.sample_params(image.shape) == aug.FastParams()
        np.testing.assert_array_equal(aug.apply_augmentation(idle, image), image)


def test_parameter_draws_respect_ranges_and_probabilities() -> None:
    cfg = AugmentConfig(probability=0.8, clahe_p=0.2, hflip_p=0.3)
    fast = aug.FastAugmentation(cfg, 0)
    shape = (200, 100)
    draws = []
    for seed in range(4000):
        fast.set_random_seed(seed)
        draws.append(fast.sample_params(shape))

    def fired(values: list) -> np.ndarray:
        return np.array([v for v in values if v is not None], dtype=float)

    angle = fired([d.angle for d in draws])
    alpha = fired([d.alpha for d in draws])
    gamma = fired([d.gamma for d in draws])
    clip = fired([d.clahe_clip for d in draws])
    flips = np.array([d.hflip for d in draws])
    n = len(draws)
    for got, p in (
        (len(angle), 0.8),
        (len(alpha), 0.8),
        (len(gamma), 0.8),
        (len(clip), 0.2),
        (flips.sum(), 0.3),
    ):
        assert abs(got / n - p) < 4 * np.sqrt(p * (1 - p) / n)  # within 4 standard errors

    affine = [d for d in draws if d.angle is not None]
    scales = np.array([[d.scale_x, d.scale_y] for d in affine])
    shifts = np.array([[d.translate_x, d.translate_y] for d in affine])

    def uniform_on(values: np.ndarray, low: float, high: float) -> None:
        assert values.min() >= low and values.max() <= high
        width = high - low
        assert values.min() < low + 0.01 * width and values.max() > high - 0.01 * width  # whole range used
        assert abs(values.mean() - (low + high) / 2) < 0.03 * width

    uniform_on(angle, -cfg.affine_degrees, cfg.affine_degrees)
    uniform_on(scales.ravel(), 1 - cfg.affine_scale, 1 + cfg.affine_scale)
    assert abs(np.corrcoef(scales.T)[0, 1]) < 0.1  # x and y scale drawn independently, as A.Affine
    for axis, side in ((0, shape[1]), (1, shape[0])):  # whole pixels, truncated toward 0 as A.Affine
        limit = int(cfg.affine_translate * side)
        assert shifts[:, axis].min() in (-limit, -limit + 1) and shifts[:, axis].max() in (limit - 1, limit)
        assert abs(shifts[:, axis].mean()) < 0.1 * limit
    uniform_on(alpha, 1 - cfg.contrast, 1 + cfg.contrast)
    uniform_on(
        fired([d.beta if d.alpha is not None else None for d in draws]), -cfg.brightness, cfg.brightness
    )
    uniform_on(gamma, cfg.gamma_low, cfg.gamma_high)
    uniform_on(clip, 1.0, aug.CLAHE_CLIP_LIMIT)
    # Ops fire independently of each other.
    both = sum(d.angle is not None and d.gamma is not None for d in draws) / n
    assert abs(both - 0.64) < 0.04


def test_the_default_backend_is_the_albumentations_pipeline() -> None:
    image = _image()
    cfg = AugmentConfig(probability=1.0, clahe_p=0.5, hflip_p=0.5)
    transform = aug.build_augmentation(cfg, 0)
    assert isinstance(transform, A.Compose)
    names = [type(t).__name__ for t in transform.transforms]
    assert names == ["Affine", "RandomBrightnessContrast", "RandomGamma", "CLAHE", "HorizontalFlip"]
    transform.set_random_seed(4)
    first = aug.apply_augmentation(transform, image)
    transform.set_random_seed(4)
    assert np.array_equal(first, aug.apply_augmentation(transform, image))
    transform.set_random_seed(5)
    assert not np.array_equal(first, aug.apply_augmentation(transform, image))
    assert first.dtype == np.float32 and first.shape == image.shape
    assert first.min() >= 0.0 and first.max() <= 1.0


def test_both_backends_change_images_alike_on_average() -> None:
    """Same distributions, so the same average effect over many samples (fixed seeds: deterministic)."""
    image = _image(64, 64)
    stats = {}
    for backend in ("fast", "albumentations"):
        transform = aug.build_augmentation(AugmentConfig(backend=backend), 0)
        means, changes = [], []
        for seed in range(300):
            transform.set_random_seed(seed)
            out = aug.apply_augmentation(transform, image)
            means.append(out.mean())
            changes.append(np.abs(out - image).mean())
        stats[backend] = (np.mean(means), np.mean(changes), np.std(means))
    fast, ref = stats["fast"], stats["albumentations"]
    assert abs(fast[0] - ref[0]) < 0.01
    assert abs(fast[1] - ref[1]) < 0.15 * ref[1]
    assert abs(fast[2] - ref[2]) < 0.2 * ref[2]


def test_image_to_tensor_normalises_in_one_pass_and_in_place_only_when_asked() -> None:
    from xraytriage.config import PreprocessConfig
    from xraytriage.data.tensors import image_to_tensor

    image = _image(40, 30)
    for pp in (PreprocessConfig(), PreprocessConfig(mean=0.45, std=0.27)):
        want = (image - np.float32(pp.mean)) / np.float32(pp.std)
        before = image.copy()
        got = image_to_tensor(image, pp)
        np.testing.assert_array_equal(image, before)  # not in place unless asked
        assert got.shape == (1, 40, 30) and got.dtype.is_floating_point and got.is_contiguous()
        np.testing.assert_allclose(got[0].numpy(), want, rtol=0, atol=1e-6)
        if pp.std == 0.25:  # power-of-two std: identical to the two-pass formula
            np.testing.assert_array_equal(got[0].numpy(), want)
        mine = image.copy()
        shared = image_to_tensor(mine, pp, inplace=True)
        assert np.shares_memory(shared.numpy(), mine)
        np.testing.assert_array_equal(shared.numpy(), got.numpy())
        rgb = image_to_tensor(np.asfortranarray(image), pp, 3)
        assert rgb.shape == (3, 40, 30) and _equal_planes(rgb)


def _equal_planes(tensor) -> bool:
    return bool((tensor[0] == tensor[1]).all() and (tensor[0] == tensor[2]).all())
