"""The demo end to end (reduced size), the synthetic DICOMs it is built on, and the review notebook
executed on the demo's evaluation by a real Jupyter kernel (nbclient)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from xraytriage.data.synthetic import SCOPE_VARIANTS, SyntheticSpec, generate_dataset
from xraytriage.io import load_image

ROOT = Path(__file__).resolve().parents[1]


def test_synthetic_dicoms_are_standard_and_deterministic(tmp_path: Path) -> None:
    spec = SyntheticSpec(n_patients=12, size=64, seed=7)
    first = pd.read_csv(generate_dataset(tmp_path / "a", spec, progress=False))
    second = pd.read_csv(generate_dataset(tmp_path / "b", spec, progress=False))
    assert first.equals(second)
    syntaxes, photometrics, bits = set(), set(), set()
    for rel in first["path"]:
        a, b = pydicom.dcmread(tmp_path / "a" / rel), pydicom.dcmread(tmp_path / "b" / rel)
        assert a.PixelData == b.PixelData
        syntaxes.add(str(a.file_meta.TransferSyntaxUID))
        photometrics.add(a.PhotometricInterpretation)
        bits.add(int(a.BitsStored))
        assert a.Modality in {"DX", "CR"} and a.PatientAge.endswith("Y") and a.ViewPosition in {"PA", "AP"}
        assert (
            a.InstitutionName and a.PatientSex in {"F", "M"} and "WindowCenter" in a and "RescaleSlope" in a
        )
    assert syntaxes == {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"}
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"} and bits <= {12, 14, 16}
    assert set(first["split"]) <= {"train", "val", "test"}
    assert first.groupby("patient_id")["split"].nunique().max() == 1  # patient-level split


def test_nodule_is_bright_whatever_the_photometric_interpretation(tmp_path: Path) -> None:
    """MONOCHROME1 files must decode like MONOCHROME2 ones: the lungs dark, the nodule bright."""
    frame = pd.read_csv(
        generate_dataset(tmp_path, SyntheticSpec(n_patients=40, size=64, seed=1), progress=False)
    )
    means = {}
    for photometric, group in frame.groupby("photometric"):
        images = [load_image(tmp_path / p)[0] for p in group["path"]]
        means[photometric] = float(np.mean([im.mean() for im in images]))
    assert abs(means["MONOCHROME1"] - means["MONOCHROME2"]) < 0.03


DEMO_ARGS = [
    "--patients",
    "30",
    "train.epochs=1",
    "preprocess.image_size=32",
    "model.arch=resnet18",
    "data.num_workers=0",
    "evaluation.bootstrap_iterations=30",
    "evaluation.min_group_size=2",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One reduced demo run, shared by the end-to-end test and the notebook test."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "xraytriage", "demo", "--out", str(out), *DEMO_ARGS],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return out, proc


@pytest.mark.slow
def test_demo_runs_end_to_end(demo: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, proc = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rel in (
        "run/model.pt",
        "run/config.yaml",
        "run/metrics.json",
        "eval/metrics.json",
        "eval/subgroups.csv",
        "eval/predictions.csv",
        "eval/report.html",
        "scores.csv",
    ):
        assert (out / rel).is_file(), rel
    assert any((out / "run" / "tensorboard").iterdir())
    manifest = pd.read_csv(out / "data" / "manifest.csv")
    scores = pd.read_csv(out / "scores.csv")
    planted = {"lateral.dcm", "paediatric.dcm", "ct_slice.dcm", "mr_slice.dcm", "photograph.jpg"}
    planted |= {"extremity_cr.dcm"} & {p.name for p in (out / "incoming").iterdir()}  # with pydicom-data
    planted |= {f"{name}.dcm" for name in SCOPE_VARIANTS}
    assert len(scores) == int((manifest["split"] == "test").sum()) + len(planted)
    in_scope = {Path(p).name: v for p, v in zip(scores["path"], scores["in_scope"], strict=True)}
    assert all(in_scope[name] == 0 for name in planted), in_scope  # every planted file flagged
    assert all(scores.loc[scores["in_scope"] == 0, "flag_finding"] == 1)  # never a negative
    assert "view=LL not validated [AP, PA]" in proc.stdout and "modality=CT not validated" in proc.stdout
    assert len(list((out / "dicom_results").glob("SR_*.dcm"))) == len(scores) - 1  # all but the photograph
    errors = pd.read_csv(out / "score_errors.csv")
    reasons = {Path(p).name: r for p, r in zip(errors["path"], errors["reason"], strict=True)}
    assert sorted(reasons) == ["empty.dcm", "notes.txt", "truncated_transfer.dcm"]
    assert reasons["notes.txt"] == "not_a_scan" and reasons["empty.dcm"] == "empty_file"
    assert "2 bad files reported, 1 file(s) that are not scans skipped" in proc.stdout
    assert "\r" not in proc.stderr  # output captured, not a terminal: no progress-bar fragments
    assert "tensorboard --logdir" in proc.stdout and "miss_rate" in proc.stdout
    subgroup_row = next(line for line in proc.stdout.splitlines() if line.strip().startswith("sex=F "))
    assert re.search(r"\d\.\d{3} \(\d\.\d{3}-\d\.\d{3}\)", subgroup_row), subgroup_row  # rate + interval
    for text in (
        proc.stdout,
        proc.stderr,
        (out / "scores.csv").read_text(),
        (out / "eval/metrics.json").read_text(),
    ):
        assert "Demo^Patient" not in text and "19500101" not in text


def execute_notebook(path: Path, workdir: Path):
    """Run every cell in a fresh kernel of *this* interpreter (the venv's ipykernel), whatever kernels
    the machine has registered: the kernelspec is written to ``workdir`` and found through JUPYTER_PATH
    (set by the caller), so nothing is installed into the user's Jupyter directories."""
    import nbclient
    import nbformat

    spec_dir = workdir / "jupyter" / "kernels" / "xraytriage-test"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "xraytriage tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="xraytriage-test",
        timeout=300,
        allow_errors=True,  # errors are asserted on below, with the traceback in the message
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    return notebook


def _outputs(notebook, cell_id: str) -> list:
    cells = [c for c in notebook.cells if c.get("id") == cell_id]
    assert len(cells) == 1, f"notebook has no cell with id {cell_id!r}"
    return cells[0].outputs


def _text(outputs: list) -> str:
    parts = []
    for out in outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.append(out.data.get("text/plain", ""))
    return "\n".join(parts)


def _images(outputs: list) -> int:
    return sum("image/png" in out.get("data", {}) for out in outputs)


@pytest.mark.slow
def test_review_notebook_runs_on_the_demo_evaluation(
    demo: tuple[Path, subprocess.CompletedProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, proc = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    eval_dir = out / "eval"
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("XRAYTRIAGE_EVAL_DIR", str(eval_dir))
    monkeypatch.delenv("XRAYTRIAGE_MODEL", raising=False)  # the default must find the demo's run/model.pt
    monkeypatch.setenv("XRAYTRIAGE_CAM_DIR", str(tmp_path / "cams"))
    notebook = execute_notebook(ROOT / "notebooks" / "review.ipynb", tmp_path)

    errors = [
        f"cell {cell.get('id')}: {o.ename}: {o.evalue}\n" + "\n".join(o.traceback)
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        if o.output_type == "error"
    ]
    assert not errors, errors[0]

    metrics = json.loads((eval_dir / "metrics.json").read_text())
    predictions = pd.read_csv(eval_dir / "predictions.csv")
    subgroups = pd.read_csv(eval_dir / "subgroups.csv")
    labels = metrics["labels"]

    # the operating point shown is metrics.json's threshold, to the last digit
    shown = dict(
        re.findall(
            r"operating point \[(.+?)\]: threshold = (\S+)", _text(_outputs(notebook, "operating-point"))
        )
    )
    assert set(shown) == set(labels)
    for label in labels:
        assert float(shown[label]) == metrics["classes"][label]["threshold"]

    # figures from xraytriage.evaluation.plots: ROC/PR, subgroup and calibration per class
    assert _images(_outputs(notebook, "roc-pr")) == len(labels)
    assert _images(_outputs(notebook, "subgroups")) == len(labels)
    assert _images(_outputs(notebook, "calibration")) == len(labels)
    assert "DIFFERS" not in _text(_outputs(notebook, "calibration"))

    # the subgroup table lists every group of the evaluation, including the insufficient ones
    table = _text(_outputs(notebook, "subgroups"))
    for group in subgroups["group"]:
        assert group in table, group
    assert (subgroups["status"] != "ok").any() and "insufficient data" in table

    # worst misses: the lowest-scored positives, with one Grad-CAM overlay each, from the evaluated model
    label = labels[0]
    positives = predictions[predictions[label] == 1].sort_values(f"prob_{label}")
    assert len(positives) > 0
    expected = positives.head(8)
    worst_text = _text(_outputs(notebook, "worst"))
    for path in expected["path"]:
        assert Path(path).name in worst_text
    cams = _outputs(notebook, "worst-cams")
    cam_text = _text(cams)
    assert f"model id {metrics['model_id']}, matches metrics.json" in cam_text
    assert _images(cams) == len(labels)
    assert len(list((tmp_path / "cams").glob("*.png"))) == len(expected)
    drift = float(re.search(r"evaluated probability (\S+)", cam_text).group(1))
    assert drift < 1e-4

    # the committed notebook stays without outputs
    committed = json.loads((ROOT / "notebooks" / "review.ipynb").read_text())
    assert all(not c.get("outputs") for c in committed["cells"] if c["cell_type"] == "code")
