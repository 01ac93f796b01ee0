"""Columns that identify patients: never a subgroup, never copied into an output.

A manifest may carry anything a hospital export holds (``patient_name``, ``birth_date``, an MRN).
Subgroup tables and reports list every group by its value, so a column whose values name people, or
whose values are nearly all different (one "group" per patient), would publish them. Both are refused
by name before any work, and by content as soon as the data is read.
"""

from __future__ import annotations

import re

import pandas as pd

#: Column names that are identifiers whatever their content.
IDENTIFIER_COLUMNS = frozenset(
    {"path", "patient_id", "study_id", "series_id", "accession", "split", "fold", "patientid", "mrn"}
)
#: Words that make a column name identifying (``patient_name``, ``BirthDate``, ``home_address``).
_IDENTIFYING_WORDS = frozenset(
    {
        "name",
        "names",
        "surname",
        "firstname",
        "lastname",
        "birth",
        "birthdate",
        "dob",
        "mrn",
        "ssn",
        "nhs",
        "accession",
        "address",
        "postcode",
        "zip",
        "phone",
        "telephone",
        "email",
        "passport",
        "uid",
    }
)
#: A column with more distinct values than this share of its rows (and more than
#: ``NEAR_UNIQUE_MIN_VALUES`` of them) behaves like an identifier, not a group.
NEAR_UNIQUE_SHARE = 0.5
NEAR_UNIQUE_MIN_VALUES = 20


def _words(name: str) -> set[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)  # BirthDate -> Birth Date
    return {w for w in re.split(r"[^0-9a-zA-Z]+", spaced.lower()) if w}


def identifying_name(name: str) -> str | None:
    """Why a column's name marks it as an identifier, or None."""
    if name.strip().lower() in IDENTIFIER_COLUMNS:
        return "is an identifier column"
    words = _words(name) & _IDENTIFYING_WORDS
    if words:
        return f"looks like an identifier (its name contains '{sorted(words)[0]}')"
    return None


def identifying_values(values: pd.Series) -> str | None:
    """Why a column's content marks it as an identifier (nearly one value per row), or None."""
    known = values.dropna()
    distinct = int(known.nunique())
    if distinct > NEAR_UNIQUE_MIN_VALUES and distinct > NEAR_UNIQUE_SHARE * len(known):
        return f"has {distinct} different values in {len(known)} rows, nearly one per scan: an identifier"
    return None


def identifier_reason(frame: pd.DataFrame, name: str) -> str | None:
    """Why ``name`` may not be a subgroup of ``frame``: its name or its content; None when it may."""
    why = identifying_name(name)
    if why is None and name in frame.columns:
        why = identifying_values(frame[name])
    return why


def refuse_identifier_subgroups(frame: pd.DataFrame, names: list[str]) -> None:
    """Stop before any inference when a requested subgroup column identifies patients."""
    from xraytriage.config import ConfigError

    for name in dict.fromkeys(names):
        why = identifier_reason(frame, name)
        if why is not None:
            raise ConfigError(
                f"evaluation.subgroups: column '{name}' {why}; reports list every group by its value, so "
                "subgroups must be group attributes such as sex, age_band, view or site"
            )
