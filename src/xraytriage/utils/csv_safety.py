"""Spreadsheet formula injection: no text cell the tool writes may start a formula.

A DICOM field, a file name or an error message can hold ``=HYPERLINK("http://...")``; a spreadsheet
opening the CSV would run it. Text cells starting with ``=``, ``+``, ``-``, ``@``, tab or carriage
return get a leading apostrophe (OWASP's advice); numbers are left alone. Relative paths get ``./``
instead, which keeps them pointing at the same file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    """``value`` unchanged unless it is text a spreadsheet would read as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def safe_path(value: str) -> str:
    """A relative path that would start a formula, made harmless without changing the file it names."""
    return "./" + value if value.startswith(FORMULA_PREFIXES) else value


def safe_row(row: Sequence[object]) -> list[object]:
    return [safe_cell(v) for v in row]


def safe_frame(frame: pd.DataFrame, path_columns: Iterable[str] = ("path",)) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells cannot start a formula (path columns keep naming their file)."""
    paths = set(path_columns)
    out = frame.copy()
    for column in out.columns:
        series = out[column]
        if not (pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)):
            continue
        fix = safe_path if column in paths else safe_cell
        out[column] = series.map(lambda v, fix=fix: fix(v) if isinstance(v, str) else v)
    return out
