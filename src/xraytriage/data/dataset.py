"""Torch datasets over manifest rows; unreadable scans are reported and skipped, never fatal."""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from xraytriage.config import PreprocessConfig
from xraytriage.data.augment import apply_augmentation
from xraytriage.data.tensors import image_to_tensor
from xraytriage.io import UnreadableImage, load_image

log = logging.getLogger(__name__)


def label_matrix(frame: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """float32 targets; NaN where the label is unknown or uncertain (-1), so the loss masks it out."""
    values = np.array(frame[labels].to_numpy(dtype=np.float32, na_value=np.nan), copy=True)
    values[values < 0] = np.nan
    return values


class ScanDataset(Dataset):
    """Samples are dicts (image, target, index); a scan that cannot be decoded yields a ``Failure``."""

    def __init__(
        self,
        frame: pd.DataFrame,
        labels: list[str],
        preprocess: PreprocessConfig,
        in_channels: int = 1,
        transform: Any = None,
        image_source: Any = None,
        augment_seed: int = 0,
    ) -> None:
        self.paths = frame["path"].astype(str).tolist()
        self.targets = label_matrix(frame, labels) if labels else np.zeros((len(frame), 0), np.float32)
        self.preprocess = preprocess
        self.in_channels = in_channels
        self.transform = transform
        # Optional faster source of decoded images (the preprocessing cache); same output as load_image.
        self.image_source = image_source
        self.augment_seed = augment_seed

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        if self.image_source is not None:
            return self.image_source(index, self.paths[index])
        image, _ = load_image(self.paths[index], self.preprocess)
        return image

    def __getitem__(self, item: int) -> dict[str, Any] | Failure:
        index, epoch = item & _INDEX_MASK, item >> _EPOCH_SHIFT
        try:
            image = self.load(index)
        except UnreadableImage as exc:
            log.warning("skipping unreadable scan: %s", exc)
            return Failure(index, self.paths[index], exc.reason, str(exc))
        owned = False
        if self.transform is not None:
            # Seeded per (run seed, epoch, scan): identical augmentations whatever the worker count,
            # and a resumed run continues exactly where it stopped.
            self.transform.set_random_seed(_mix(self.augment_seed, epoch, index))
            augmented = apply_augmentation(self.transform, image)
            owned = augmented is not image  # a new array made by the augmentation: normalise it in place
            image = augmented
        tensor = image_to_tensor(image, self.preprocess, self.in_channels, inplace=owned)
        return {"image": tensor, "target": torch.from_numpy(self.targets[index]), "index": index}


_EPOCH_SHIFT = 32
_INDEX_MASK = (1 << _EPOCH_SHIFT) - 1


def _mix(*values: int) -> int:
    digest = hashlib.blake2b(",".join(map(str, values)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class EpochTaggedSampler(Sampler[int]):
    """Wraps a sampler and tags each index with the epoch, so workers can seed augmentation per epoch."""

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler
        self.epoch = 0
        self.skip = 0  # samples to skip at the start of the next pass (mid-epoch resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        tag = self.epoch << _EPOCH_SHIFT
        skip, self.skip = self.skip, 0
        return (tag | int(i) for i in itertools.islice(iter(self.sampler), skip, None))

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Failure:
    index: int
    path: str
    reason: str
    message: str


def collate_skip(batch: list[Any]) -> dict[str, Any]:
    """Collate the decodable samples; failures travel alongside so the caller can report them.

    ``image`` is None when every sample in the batch failed.
    """
    kept = [item for item in batch if not isinstance(item, Failure)]
    failed = [item for item in batch if isinstance(item, Failure)]
    out: dict[str, Any] = default_collate(kept) if kept else {"image": None, "target": None, "index": None}
    out["failed"] = failed
    return out
