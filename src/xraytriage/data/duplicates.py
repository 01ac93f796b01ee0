"""One row per image file, one patient per person: the repair ``prepare`` applies to published tables.

Real tables repeat themselves. ieee8023/covid-chestxray-dataset lists some image files twice, under two
different patient ids; other tables repeat a row verbatim. A manifest needs one row per file, and a
split must keep everything of one person together, so:

- identical rows collapse to one;
- one file under several patient ids means those ids are one patient: the ids are joined into connected
  components (scipy's ``connected_components`` does the union-find) and every row of every id in a
  component gets the component's id (``"12+15"``), so no split can put that person in two places;
- rows of one file that still disagree keep the first row; a label they disagree on becomes blank
  (unknown: left out of the loss and of the metrics) rather than a guess.

Everything merged is returned as :class:`DuplicateReport` so ``prepare`` can say what it did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MERGED_ID_SEPARATOR = "+"


@dataclass(frozen=True)
class FileMerge:
    """One file listed on several rows: which patient ids it carried, what became of its rows."""

    path: str
    rows: int
    patient_ids: tuple[str, ...]
    merged_patient_id: str
    blanked_labels: tuple[str, ...] = ()


@dataclass
class DuplicateReport:
    identical_rows_dropped: int = 0
    patients_merged: int = 0  # patient ids folded into another (ids before - ids after)
    files: list[FileMerge] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.identical_rows_dropped or self.patients_merged or self.files)

    def summary(self) -> str:
        """One line for the console."""
        blanked = sum(1 for f in self.files if f.blanked_labels)
        return (
            f"{len(self.files)} file(s) listed more than once: {self.identical_rows_dropped} identical "
            f"row(s) dropped, {self.patients_merged} patient id(s) merged into the patient sharing the "
            f"file, {blanked} file(s) with conflicting labels left blank for those labels"
        )

    def to_frame(self) -> pd.DataFrame:
        """The details, one row per repeated file."""
        return pd.DataFrame(
            {
                "path": [f.path for f in self.files],
                "rows": [f.rows for f in self.files],
                "patient_ids": [" ".join(f.patient_ids) for f in self.files],
                "merged_patient_id": [f.merged_patient_id for f in self.files],
                "blanked_labels": [" ".join(f.blanked_labels) for f in self.files],
            }
        )


def _component_ids(table: pd.DataFrame) -> pd.Series:
    """patient id -> id of its connected component (ids linked by sharing a file)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pids = pd.Index(sorted(table["patient_id"].unique()))
    files = pd.Index(table["path"].unique())
    rows = pids.get_indexer(table["patient_id"])
    cols = files.get_indexer(table["path"]) + len(pids)
    n = len(pids) + len(files)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    members = (
        pd.Series(pids, index=pids)
        .groupby(component[: len(pids)])
        .agg(lambda ids: MERGED_ID_SEPARATOR.join(sorted(ids)) if len(ids) > 1 else ids.iloc[0])
    )
    return pd.Series(members.loc[component[: len(pids)]].to_numpy(), index=pids)


def merge_duplicate_files(table: pd.DataFrame, labels: Sequence[str]) -> tuple[pd.DataFrame, DuplicateReport]:
    """The table with one row per ``path`` and linked patient ids unified; what changed."""
    report = DuplicateReport()
    before = len(table)
    table = table.drop_duplicates().reset_index(drop=True)
    report.identical_rows_dropped = before - len(table)
    table = table.copy()
    table["patient_id"] = table["patient_id"].astype("string").str.strip()
    repeated_paths = set(table.loc[table["path"].duplicated(keep=False), "path"])
    if not repeated_paths and not report.identical_rows_dropped:
        return table, report
    component = _component_ids(table)
    report.patients_merged = int(table["patient_id"].nunique() - component.nunique())
    original = table["patient_id"].copy()
    table["patient_id"] = table["patient_id"].map(component).astype("string")
    keep = ~table["path"].duplicated(keep="first")
    for path, rows in table[table["path"].isin(repeated_paths)].groupby("path", sort=True):
        blank = tuple(
            c for c in labels if c in rows.columns and rows[c].astype("string").nunique(dropna=False) > 1
        )
        if blank:
            table.loc[rows.index[0], list(blank)] = np.nan
        ids = tuple(sorted(original.loc[rows.index].unique()))
        report.files.append(FileMerge(str(path), len(rows), ids, str(rows["patient_id"].iloc[0]), blank))
    return table.loc[keep].reset_index(drop=True), report
