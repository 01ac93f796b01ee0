"""In- and out-of-scope scans become a reported ``scope`` subgroup only when both occur: the figures of
the validated scope are then shown apart from those outside it; otherwise nothing changes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xraytriage.config import EvaluationConfig
from xraytriage.evaluation.scope_groups import (
    IN_SCOPE_GROUP,
    OUT_OF_SCOPE_GROUP,
    SCOPE_ATTRIBUTE,
    add_scope_group,
)

CFG = EvaluationConfig(subgroups=["sex", "view"])


def test_the_scope_attribute_and_its_groups_have_the_documented_names() -> None:
    assert (SCOPE_ATTRIBUTE, IN_SCOPE_GROUP, OUT_OF_SCOPE_GROUP) == ("scope", "in_scope", "out_of_scope")


def test_both_scopes_add_a_scope_column_and_subgroup_without_touching_the_inputs() -> None:
    frame = pd.DataFrame({"finding": [1, 0, 1], "in_scope": [1, 0, 1]})
    out, cfg = add_scope_group(frame, CFG)
    assert out["scope"].tolist() == ["in_scope", "out_of_scope", "in_scope"]
    assert out["in_scope"].tolist() == [1, 0, 1] and out["finding"].tolist() == [1, 0, 1]
    assert cfg.subgroups == ["sex", "view", "scope"]
    assert "scope" not in frame.columns and CFG.subgroups == ["sex", "view"]  # the caller's are unchanged
    assert cfg.min_group_size == CFG.min_group_size and cfg.confidence == CFG.confidence


def test_a_missing_or_unreadable_scope_value_is_its_own_unknown_group() -> None:
    frame = pd.DataFrame({"in_scope": ["1", "0", None, "n/a", np.nan, 0.0]})
    out, cfg = add_scope_group(frame, CFG)
    assert out["scope"].tolist() == [
        "in_scope",
        "out_of_scope",
        "unknown",
        "unknown",
        "unknown",
        "out_of_scope",
    ]
    assert cfg.subgroups[-1] == "scope"


def test_true_and_false_count_as_in_and_out_of_scope() -> None:
    out, _ = add_scope_group(pd.DataFrame({"in_scope": [True, False]}), CFG)
    assert out["scope"].tolist() == ["in_scope", "out_of_scope"]


def test_a_scope_already_among_the_subgroups_is_not_added_twice() -> None:
    cfg = EvaluationConfig(subgroups=["scope", "sex"])
    out, same = add_scope_group(pd.DataFrame({"in_scope": [0, 1]}), cfg)
    assert same is cfg and same.subgroups == ["scope", "sex"]
    assert out["scope"].tolist() == ["out_of_scope", "in_scope"]


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({"finding": [1, 0]}),  # predictions without scope
        pd.DataFrame({"in_scope": [1, 1, np.nan]}),  # only in scope
        pd.DataFrame({"in_scope": [0, 0]}),  # only out of scope
        pd.DataFrame({"in_scope": [np.nan, np.nan]}),  # nothing known
        pd.DataFrame({"in_scope": ["x", "y"]}),
        pd.DataFrame({"in_scope": [0, 1, 2]}),  # not a 0/1 flag
        pd.DataFrame({"in_scope": [1, 1, 0.5]}),  # no out-of-scope scan (0.5 was truncated to 0: a bug)
        pd.DataFrame({"in_scope": [1, 0, 0.5]}),  # not a 0/1 flag, like 2
    ],
)
def test_without_both_scopes_the_frame_and_config_come_back_unchanged(frame: pd.DataFrame) -> None:
    out, cfg = add_scope_group(frame, CFG)
    assert out is frame and cfg is CFG
    assert "scope" not in out.columns
