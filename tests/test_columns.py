"""The column-name convention has one home (#21 item 4): xraytriage.columns."""

from __future__ import annotations

import re
from pathlib import Path

import xraytriage
from xraytriage.columns import flag_column, prob_column, prob_labels
from xraytriage.scoring.outputs import score_columns


def test_names_of_a_label() -> None:
    assert prob_column("Pleural Effusion") == "prob_Pleural Effusion"
    assert flag_column("finding") == "flag_finding"
    assert prob_labels(["path", "prob_a", "finding", "prob_b_c", "flag_a", "xprob_z"]) == ["a", "b_c"]


def test_scores_file_uses_the_convention() -> None:
    columns = score_columns(["a", "b"])
    assert (
        columns.index("prob_a") < columns.index("prob_b") < columns.index("flag_a") < columns.index("flag_b")
    )


def test_no_module_spells_the_convention_out() -> None:
    root = Path(xraytriage.__file__).parent
    spelled = re.compile(r"""f["'](prob|flag)_\{|["'](prob|flag)_["']""")
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for path in sorted(root.rglob("*.py"))
        if path.name != "columns.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if spelled.search(line)
    ]
    assert offenders == []
