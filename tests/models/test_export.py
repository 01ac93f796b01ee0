"""Export to ONNX/TorchScript: probabilities match PyTorch, dynamic batch axis, embedded metadata."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xraytriage.commands import export as export_cmd
from xraytriage.commands.exit_codes import EXIT_EXPORT_MISMATCH
from xraytriage.config import ModelConfig, PreprocessConfig
from xraytriage.deploy import export as exp
from xraytriage.models import load_bundle
from xraytriage.models.bundle import save_bundle
from xraytriage.models.factory import build_model


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads():
    """One thread is faster on the shared 2-core CI box; leave the setting as found for later tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="resnet18", weights=None, task="binary")
    model = build_model(cfg, 1).eval()
    path = tmp_path_factory.mktemp("bundle") / "model.pt"
    save_bundle(
        path,
        model,
        cfg,
        PreprocessConfig(image_size=64, mean=0.4, std=0.3),
        ["finding"],
        {"finding": 0.37},
        "binary",
        temperatures={"finding": 1.7},
    )
    return path


def _args(**kw: object) -> argparse.Namespace:
    base = {"opset": 17, "atol": 1e-4, "rtol": 1e-3, "no_check": False}
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_outputs_calibrated_probabilities_for_any_batch_size(
    bundle_path: Path, tmp_path: Path, fmt: str
) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'ts'}"
    assert export_cmd.run(_args(model=bundle_path, format=fmt, out=out)) == 0
    bundle = load_bundle(bundle_path)
    for n in (1, 3):
        x = torch.randn(n, 1, 64, 64, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            logits = bundle.model(x)
        expected = torch.sigmoid(logits / 1.7).numpy()
        got = exp.run_exported(out, fmt, x.numpy())
        assert got.shape == (n, 1)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)
        # probabilities, not logits: the temperature is applied inside the graph
        assert not np.allclose(got, torch.sigmoid(logits).numpy(), atol=1e-4)

    for meta in (exp.read_export_metadata(out), json.loads(out.with_name(out.name + ".json").read_text())):
        assert meta["labels"] == ["finding"]
        assert meta["thresholds"] == {"finding": pytest.approx(0.37)}
        assert meta["task"] == "binary" and meta["temperatures"] == {"finding": pytest.approx(1.7)}
        assert meta["model_id"] == bundle.model_id
        assert PreprocessConfig.model_validate(meta["preprocess"]) == bundle.preprocess


def test_onnx_graph_has_dynamic_batch_and_opset(bundle_path: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    exp.export_bundle(bundle_path, "onnx", out, check=False)
    proto = onnx.load(str(out))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    keys = {p.key for p in proto.metadata_props}
    assert {"labels", "thresholds", "preprocess", "model_id", "task", "temperatures"} <= keys


def test_export_exits_nonzero_when_outputs_differ(
    bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = exp.run_exported
    monkeypatch.setattr(exp, "run_exported", lambda path, fmt, batch: real(path, fmt, batch) + 0.01)
    rc = export_cmd.run(_args(model=bundle_path, format="torchscript", out=tmp_path / "m.ts"))
    assert rc == EXIT_EXPORT_MISMATCH


def test_export_reports_missing_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = export_cmd.run(_args(model=tmp_path / "nope.pt", format="onnx", out=tmp_path / "m.onnx"))
    assert rc == 1 and "model bundle not found" in capsys.readouterr().err


def test_multiclass_export_outputs_softmax(tmp_path: Path) -> None:
    cfg = ModelConfig(arch="resnet18", weights=None, task="multiclass")
    labels = ["normal", "nodule", "effusion"]
    path = tmp_path / "mc.pt"
    save_bundle(
        path,
        build_model(cfg, 3).eval(),
        cfg,
        PreprocessConfig(image_size=64),
        labels,
        dict.fromkeys(labels, 0.5),
        "multiclass",
        temperatures=dict.fromkeys(labels, 2.0),
    )
    out = tmp_path / "mc.ts"
    result = exp.export_bundle(path, "torchscript", out)
    assert result.parity is not None and result.parity.ok
    x = np.random.default_rng(0).standard_normal((3, 1, 64, 64)).astype(np.float32)
    got = exp.run_exported(out, "torchscript", x)
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert exp.read_export_metadata(out)["labels"] == labels
