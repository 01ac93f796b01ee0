"""Fast checks of the committed review notebook (tests/test_demo.py executes it on the demo's outputs)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "review.ipynb"

# cells test_demo.py reads the outputs of
CELL_IDS = ("setup", "operating-point", "roc-pr", "subgroups", "gaps", "calibration", "worst", "worst-cams")


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def _code(notebook) -> list[str]:
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def test_committed_notebook_is_valid_and_has_no_outputs(notebook) -> None:
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {cell.id} has outputs: clear them before committing"
            assert cell.execution_count is None, f"cell {cell.id} has an execution count"
    assert notebook.metadata.kernelspec.name == "python3"  # the default kernel of any Jupyter install
    ids = [cell.get("id") for cell in notebook.cells]
    assert len(ids) == len(set(ids))
    assert set(CELL_IDS) <= set(ids)


def test_notebook_uses_the_project_functions_that_exist(notebook) -> None:
    """Every ``from xraytriage... import name`` resolves, and the figures and calibration come from the
    project (not re-implemented in the notebook)."""
    imported: set[str] = set()
    for source in _code(notebook):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("xraytriage"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                    imported.add(alias.name)
    assert {
        "roc_pr_figure",
        "calibration_figure",
        "subgroup_figure",
        "reliability_curve",
        "expected_calibration_error",
        "write_cams",
        "load_bundle",
    } <= imported
    defined = {
        node.name
        for source in _code(notebook)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef)
    }
    assert not defined & imported, "the notebook redefines a project function"


def test_every_environment_variable_is_documented(notebook) -> None:
    used = set()
    for source in _code(notebook):
        used |= set(re.findall(r"os\.environ\.get\(\s*\"(\w+)\"", source))
    assert {"XRAYTRIAGE_EVAL_DIR", "XRAYTRIAGE_MODEL"} <= used
    intro = notebook.cells[0]
    assert intro.cell_type == "markdown"
    for name in used:
        assert f"`{name}`" in intro.source, f"{name} is read but not described in the first cell"
