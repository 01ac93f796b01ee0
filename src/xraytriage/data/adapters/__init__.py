"""Dataset adapters: each turns one public dataset, exactly as its publisher ships it, into manifest rows.

``ADAPTERS`` maps the ``xraytriage prepare SOURCE`` name to a module with
``build(root: Path, opts: PrepareOptions) -> Prepared``; modules import lazily so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xraytriage.data.adapters._common import AdapterError, Prepared, PrepareOptions

ADAPTERS: dict[str, tuple[str, str]] = {
    "nih-cxr14": ("nih", "NIH ChestX-ray14: Data_Entry_2017*.csv + images*/"),
    "rsna-pneumonia": (
        "rsna",
        "RSNA Pneumonia (Kaggle): stage_2_train_labels.csv + stage_2_train_images/*.dcm",
    ),
    "chexpert": ("chexpert", "CheXpert v1.0 / v1.0-small: train.csv, valid.csv"),
    "mimic-cxr-jpg": (
        "mimic",
        "MIMIC-CXR-JPG 2.0.0: mimic-cxr-2.0.0-{chexpert,metadata,split}.csv.gz + files/",
    ),
    "siim-pneumothorax": ("siim", "SIIM-ACR Pneumothorax: train-rle.csv + dicom-images-train/"),
    "vindr-cxr": (
        "vindr",
        "VinDr-CXR (PhysioNet annotations/ or Kaggle VinBigData train.csv) + train/*.dicom",
    ),
    "covid-chestxray": ("covid", "ieee8023/covid-chestxray-dataset: metadata.csv + images/"),
    "folder": ("folder", "ROOT/[split/]CLASS/images, optional --demographics CSV or DICOM tags"),
}


def __getattr__(name: str) -> Any:
    """Lazy re-exports: building the CLI parser must not import pandas."""
    if name in {"AdapterError", "Prepared", "PrepareOptions"}:
        return getattr(importlib.import_module("xraytriage.data.adapters._common"), name)
    raise AttributeError(name)


def get_adapter(name: str) -> Callable[[Path, PrepareOptions], Prepared]:
    from xraytriage.data.adapters._common import AdapterError

    if name not in ADAPTERS:
        raise AdapterError(f"unknown source '{name}'; choose one of {', '.join(ADAPTERS)}")
    module = importlib.import_module(f"xraytriage.data.adapters.{ADAPTERS[name][0]}")
    return module.build


__all__ = ["ADAPTERS", "AdapterError", "PrepareOptions", "Prepared", "get_adapter"]
