"""View positions as datasets spell them, and ``prepare --views``'s selection.

Publishers write the same projection many ways: DICOM ViewPosition ``PA``/``AP``/``LL``, CheXpert's
``Frontal/Lateral`` column, MIMIC-CXR's ``AP AXIAL``/``PA LLD``, covid-chestxray's ``AP Supine``/``L``.
``frontal`` is any view whose first word is PA or AP (a supine, erect, axial or decubitus frontal film
is still a frontal projection) or that is written ``FRONTAL``; ``lateral`` is any view naming a lateral
(``L``, ``LL``, ``RL``, ``LATERAL``, ``XTABLE LATERAL``). Other words match a view exactly.
"""

from __future__ import annotations

import pandas as pd

FRONTAL_WORDS = frozenset({"PA", "AP"})
LATERAL_VIEWS = frozenset({"L", "LL", "RL", "LATERAL", "LAT", "XTABLE LATERAL", "LATERAL DECUBITUS"})
ALIASES = ("frontal", "lateral")


def normalise_view(value: object) -> str:
    """Upper case, single spaces; '' for a missing view."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    return " ".join(str(value).replace("_", " ").upper().split())


def is_frontal(view: str) -> bool:
    words = view.split()
    return view == "FRONTAL" or (bool(words) and words[0] in FRONTAL_WORDS)


def is_lateral(view: str) -> bool:
    return view in LATERAL_VIEWS or "LATERAL" in view.split()


def parse_views(spec: str) -> list[str]:
    """``'frontal'`` / ``'PA,AP'`` / ``'frontal,LL'`` -> the normalised entries (empty ones dropped)."""
    return [
        normalise_view(v) if v.strip().lower() not in ALIASES else v.strip().lower()
        for v in spec.split(",")
        if v.strip()
    ]


def view_matches(views: pd.Series, spec: str) -> pd.Series:
    """True where a row's view is one of ``spec`` (a missing view never matches)."""
    wanted = parse_views(spec)
    exact = {w for w in wanted if w not in ALIASES}

    def keep(value: object) -> bool:
        view = normalise_view(value)
        if not view:
            return False
        return (
            view in exact
            or ("frontal" in wanted and is_frontal(view))
            or ("lateral" in wanted and is_lateral(view))
        )

    return views.map(keep).astype(bool)
