"""Which scans are compared together: a time window (by the DICOM study date) times a group.

Windows: ``day`` is the ISO date, ``week`` the ISO week (``2026-W49``); a scan without a usable study
date falls in window ``unknown``. Window ``all`` holds every scan (the most power against a slow drift).
Groups: ``all`` scans, then each value of each ``--by`` column on its own (site=A, view=AP, ...); the
columns are not crossed, which would leave too few scans per cell to tell anything.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

ALL = "all"
UNKNOWN_WINDOW = "unknown"
Window = Literal["day", "week"]


@dataclass(frozen=True)
class Cell:
    """One comparison unit: the rows of ``window`` and ``attribute == group``."""

    window: str
    attribute: str
    group: str
    rows: np.ndarray  # positions in the deployed table

    @property
    def name(self) -> str:
        where = "all scans" if self.attribute == ALL else f"{self.attribute}={self.group}"
        return f"{where}, window {self.window}"


def window_keys(study_dates: pd.Series, window: Window) -> pd.Series:
    """ISO date or ISO week per scan; ``unknown`` where the date is absent or not a date."""
    dates = pd.to_datetime(
        study_dates.where(study_dates.astype(str).str.strip() != ""), errors="coerce", format="mixed"
    )
    if window == "day":
        keys = dates.dt.strftime("%Y-%m-%d")
    else:
        iso = dates.dt.isocalendar()
        keys = iso["year"].astype("string") + "-W" + iso["week"].astype("string").str.zfill(2)
    return keys.astype("string").fillna(UNKNOWN_WINDOW).astype(str)


def window_start(key: str) -> pd.Timestamp | None:
    """First day of a window key (for time axes); None for ``all`` / ``unknown``."""
    if key in (ALL, UNKNOWN_WINDOW):
        return None
    if "-W" in key:
        return pd.Timestamp.fromisocalendar(int(key[:4]), int(key[6:]), 1)
    return pd.Timestamp(key)


def ordered_windows(keys: pd.Series) -> list[str]:
    """Dated windows in time order, then ``unknown`` if any, then ``all``."""
    dated = sorted(k for k in set(keys) if k != UNKNOWN_WINDOW)
    return [*dated, *([UNKNOWN_WINDOW] if (keys == UNKNOWN_WINDOW).any() else []), ALL]


def cells(table: pd.DataFrame, window: Window, by: Sequence[str]) -> Iterator[Cell]:
    """Every window x group with at least one scan, in time order. A group holding every scan of its
    window (one site only) repeats the 'all' cell and is left out: a duplicate check adds no
    information but would weaken the multiple-testing correction."""
    keys = window_keys(table["study_date"], window)
    for key in ordered_windows(keys):
        in_window = np.ones(len(table), bool) if key == ALL else (keys == key).to_numpy()
        yield Cell(key, ALL, ALL, np.flatnonzero(in_window))
        for attribute in by:
            values = table[attribute].to_numpy()
            groups = sorted(set(values[in_window]))
            for group in groups if len(groups) > 1 else []:
                yield Cell(key, attribute, str(group), np.flatnonzero(in_window & (values == group)))
