"""The one inference data path: a scan becomes a :class:`DecodedScan` or a :class:`ScanFailure`.

:class:`ScanDataset` is the small contract every dataset of scans fulfils (the way MONAI's
``ImageReader`` is one contract with several readers): ``dataset[key]`` returns a decoded, normalised
scan or the reason it could not be used, never an exception for one bad file. Two implementations:
:class:`ManifestScans` (rows of a manifest by position, labelled or not: training, validation,
``evaluate``, the scope's feature pass) and ``scoring.dataset.StreamedScans`` (file paths streamed to
the workers by ``PathStream``: batch scoring). Every loader over them uses the one collate
(:func:`collate_scans` -> :class:`ScanBatch`, failures travelling alongside the decoded scans) and the
one worker set-up (``data.workers.WorkerInit``).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from xraytriage.config import PreprocessConfig
from xraytriage.data.augment import apply_augmentation
from xraytriage.data.tensors import image_to_tensor
from xraytriage.io import REASONS, UnreadableImage, load_image

if TYPE_CHECKING:
    from xraytriage.scope.facts import ScanFacts

log = logging.getLogger(__name__)


def label_matrix(frame: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """float32 targets; NaN where the label is unknown or uncertain (-1), so the loss masks it out."""
    values = np.array(frame[labels].to_numpy(dtype=np.float32, na_value=np.nan), copy=True)
    values[values < 0] = np.nan
    return values


@dataclass(frozen=True)
class ScanFailure:
    """A scan that could not be used, reported instead of raised so one bad file never stops a run.

    ``reason``: a code of ``io.REASONS`` or of the run that found it (``not_a_scan``, ``timeout``,
    ``internal_error``, ...); ``message``: the same for a person; ``index``: the manifest position
    (-1 for a streamed path); ``detail``: the decoder's own detail (``io.errors.OUT_OF_MEMORY``, ...).
    """

    path: str
    reason: str
    message: str
    index: int = -1
    detail: str = ""

    @classmethod
    def unreadable(cls, path: str, exc: UnreadableImage, index: int = -1) -> ScanFailure:
        """The failure of a scan ``load_image`` refused (``path``: the caller's key, as given)."""
        message = REASONS[exc.reason] + (f" ({exc.detail})" if exc.detail else "")
        return cls(path, exc.reason, message, index, exc.detail)


@dataclass
class DecodedScan:
    """One decoded scan: the network input and what the caller needs to file its result."""

    image: torch.Tensor
    path: str
    index: int = -1  # manifest position; -1 for a streamed path
    target: torch.Tensor | None = None  # float32 labels (NaN: unknown) of a manifest row
    sop_uid: str = ""
    study_uid: str = ""
    facts: ScanFacts | None = None  # header attributes for the scope check (streamed scans)


@dataclass
class ScanBatch:
    """Decoded scans stacked for the network, plus the failures of the same batch.

    ``image`` (N x C x H x W), ``index`` (N, int64) and ``target`` (N x L) are None when no scan of
    the batch decoded; ``target`` also when the dataset carries no labels.
    """

    image: torch.Tensor | None
    index: torch.Tensor | None
    target: torch.Tensor | None
    paths: list[str]
    sop_uids: list[str] = field(default_factory=list)
    study_uids: list[str] = field(default_factory=list)
    facts: list[ScanFacts | None] = field(default_factory=list)
    failures: list[ScanFailure] = field(default_factory=list)

    def pin_memory(self) -> ScanBatch:
        """Called by the DataLoader's pinning thread (``pin_memory=True``): page-locked inputs."""
        if self.image is not None:
            self.image = self.image.pin_memory()
        if self.target is not None:
            self.target = self.target.pin_memory()
        return self


def collate_scans(items: list[DecodedScan | ScanFailure]) -> ScanBatch:
    """Stack the decoded scans (``default_collate``: in a worker, straight into shared memory); the
    failures travel alongside so the caller can report them."""
    ok = [it for it in items if not isinstance(it, ScanFailure)]
    failures = [it for it in items if isinstance(it, ScanFailure)]
    image = index = target = None
    if ok:
        image = default_collate([it.image for it in ok])
        index = torch.tensor([it.index for it in ok], dtype=torch.int64)
        if ok[0].target is not None:
            target = default_collate([it.target for it in ok])
    return ScanBatch(
        image=image,
        index=index,
        target=target,
        paths=[it.path for it in ok],
        sop_uids=[it.sop_uid for it in ok],
        study_uids=[it.study_uid for it in ok],
        facts=[it.facts for it in ok],
        failures=failures,
    )


class ScanDataset(Dataset):
    """The contract: ``dataset[key]`` -> :class:`DecodedScan` or :class:`ScanFailure`, never an
    exception for one unreadable file. Inputs are built by :meth:`to_tensor` with the run's (or the
    bundle's) ``PreprocessConfig``: training, evaluation and scoring see exactly the same pixels."""

    def __init__(self, preprocess: PreprocessConfig, in_channels: int = 1) -> None:
        self.preprocess = preprocess
        self.in_channels = in_channels

    def __getitem__(self, key: Any) -> DecodedScan | ScanFailure:
        raise NotImplementedError

    def to_tensor(self, image: np.ndarray, inplace: bool = False) -> torch.Tensor:
        """The network input of a decoded image (``inplace``: the array is ours to normalise)."""
        return image_to_tensor(image, self.preprocess, self.in_channels, inplace=inplace)


class ManifestScans(ScanDataset):
    """Manifest rows by position, labelled (``labels``) or not (``[]``); a scan that cannot be decoded
    yields a :class:`ScanFailure` and a warning. Keys may carry the epoch (:class:`EpochTaggedSampler`)."""

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
        super().__init__(preprocess, in_channels)
        self.paths = frame["path"].astype(str).tolist()
        self.targets = label_matrix(frame, labels) if labels else np.zeros((len(frame), 0), np.float32)
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

    def __getitem__(self, item: int) -> DecodedScan | ScanFailure:
        index, epoch = item & _INDEX_MASK, item >> _EPOCH_SHIFT
        try:
            image = self.load(index)
        except UnreadableImage as exc:
            log.warning("skipping unreadable scan: %s", exc)
            return ScanFailure.unreadable(self.paths[index], exc, index)
        owned = False
        if self.transform is not None:
            # Seeded per (run seed, epoch, scan): identical augmentations whatever the worker count,
            # and a resumed run continues exactly where it stopped.
            self.transform.set_random_seed(_mix(self.augment_seed, epoch, index))
            augmented = apply_augmentation(self.transform, image)
            owned = augmented is not image  # a new array made by the augmentation: normalise it in place
            image = augmented
        tensor = self.to_tensor(image, inplace=owned)
        return DecodedScan(tensor, self.paths[index], index, torch.from_numpy(self.targets[index]))


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
