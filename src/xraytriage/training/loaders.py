"""The training and validation loaders of a run, built by one public factory: ``create_loaders``.

The engine asks for loaders and gets them with everything that decides the sample order (the seeded
generator, the epoch-tagged sampler that resumes mid-epoch) in one object, the way timm's
``create_loader`` is one factory with a documented signature. Reading the manifest, the patient-level
split checks, the decode cache and the worker settings live here, not in the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler, WeightedRandomSampler

from xraytriage.config import Config
from xraytriage.data.augment import build_augmentation
from xraytriage.data.cache import open_matching_cache
from xraytriage.data.dataset import EpochTaggedSampler, ManifestScans, collate_scans
from xraytriage.data.manifest import ManifestError, check_split_values, patient_leakage, read_manifest
from xraytriage.data.workers import WorkerInit
from xraytriage.training.distributed import DistInfo
from xraytriage.utils.runtime import worker_start_method


@dataclass
class RunLoaders:
    """What ``create_loaders`` returns: the whole manifest (for the audit), both splits, their
    datasets and loaders, and the sampler + generator a checkpoint saves to resume the sample order."""

    frame: pd.DataFrame
    train_frame: pd.DataFrame
    val_frame: pd.DataFrame
    train_set: ManifestScans
    val_set: ManifestScans
    train_loader: DataLoader
    val_loader: DataLoader
    train_sampler: EpochTaggedSampler
    generator: torch.Generator


def split_frames(cfg: Config, frame: pd.DataFrame, source: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The train and validation rows; a ManifestError naming the fix when a split is missing or a
    patient is in two splits."""
    if "split" not in frame.columns:
        raise ManifestError(
            f"{source}: no 'split' column; add one (train/val/test) or run `xraytriage prepare ... --split`"
        )
    check_split_values(frame, [cfg.data.train_split, cfg.data.val_split, cfg.data.test_split], str(source))
    leaks = patient_leakage(frame)
    if leaks:
        raise ManifestError(
            f"{source}: {len(leaks)} patient(s) appear in more than one split (patient-level leakage); "
            "re-split by patient before training"
        )
    train = frame[frame["split"] == cfg.data.train_split].reset_index(drop=True)
    val = frame[frame["split"] == cfg.data.val_split].reset_index(drop=True)
    if train.empty:
        raise ManifestError(f"{source}: no rows with split == '{cfg.data.train_split}' (data.train_split)")
    if val.empty:
        raise ManifestError(f"{source}: no rows with split == '{cfg.data.val_split}' (data.val_split)")
    return train, val


def _cache_source(cfg: Config) -> Any:
    """The preprocessing cache (decode once) when data.cache_dir is set; None: decode every epoch."""
    if cfg.data.cache_dir is None:
        return None
    return open_matching_cache(cfg.data.cache_dir, cfg.preprocess, dtype=cfg.data.cache_dtype)


def _train_sampler(
    cfg: Config, dist: DistInfo, train_set: ManifestScans, generator: torch.Generator
) -> Sampler:
    if dist.enabled:
        return DistributedSampler(train_set, shuffle=True, seed=cfg.seed, drop_last=True)
    if cfg.train.imbalance == "sampler":
        pos = np.nan_to_num(train_set.targets[:, 0]) > 0
        w_pos, w_neg = 0.5 / max(pos.sum(), 1), 0.5 / max((~pos).sum(), 1)
        weights = torch.tensor(np.where(pos, w_pos, w_neg), dtype=torch.double)
        return WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=generator)
    return RandomSampler(train_set, generator=generator)


def _loader_options(cfg: Config, pin_memory: bool) -> dict[str, Any]:
    workers = cfg.data.num_workers
    options: dict[str, Any] = {
        "num_workers": workers,
        "collate_fn": collate_scans,
        "pin_memory": pin_memory,
        "persistent_workers": workers > 0,
        "worker_init_fn": WorkerInit(),
    }
    if workers > 0:
        options["prefetch_factor"] = 4
        options.update(worker_start_method(cfg.preprocess.gpu_decode, workers))
    return options


def create_loaders(cfg: Config, dist: DistInfo, pin_memory: bool = False) -> RunLoaders:
    """Read ``cfg.data.manifest`` and build the seeded training loader (augmented, shuffled or
    class-balanced, sharded under DDP) and the validation loader (in order, sharded under DDP).
    ``pin_memory``: True when batches go to a GPU."""
    if cfg.data.manifest is None:
        raise ManifestError("data.manifest is not set: point it at a manifest CSV (see README)")
    labels = list(cfg.data.labels)
    frame = read_manifest(cfg.data.manifest, cfg.data.root, labels)
    train_frame, val_frame = split_frames(cfg, frame, cfg.data.manifest)
    in_ch = cfg.model.in_channels
    augment = build_augmentation(cfg.augment, seed=cfg.seed)
    source = _cache_source(cfg)
    train_set = ManifestScans(
        train_frame, labels, cfg.preprocess, in_ch, augment, source, augment_seed=cfg.seed
    )
    val_set = ManifestScans(val_frame, labels, cfg.preprocess, in_ch, None, source)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_sampler = EpochTaggedSampler(_train_sampler(cfg, dist, train_set, generator))
    options = _loader_options(cfg, pin_memory)
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.train.batch_size,
        sampler=train_sampler,
        drop_last=len(train_set) > cfg.train.batch_size,
        generator=generator,
        **options,
    )
    val_sampler = DistributedSampler(val_set, shuffle=False) if dist.enabled else None
    val_loader = DataLoader(
        val_set, batch_size=cfg.train.batch_size, shuffle=False, sampler=val_sampler, **options
    )
    return RunLoaders(
        frame, train_frame, val_frame, train_set, val_set, train_loader, val_loader, train_sampler, generator
    )
