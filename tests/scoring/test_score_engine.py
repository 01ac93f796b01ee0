"""Scoring engines: ONNX Runtime on CPU gives PyTorch's answers, and falls back or fails as documented."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

from support.scoring import make_bundle, read_csv_rows, run_score, write_pngs
from xraytriage.config import ConfigError, load_config
from xraytriage.models import load_bundle
from xraytriage.scoring import ScoreOptions, score
from xraytriage.scoring import engine as engine_mod
from xraytriage.scoring.engine import EngineUnavailable, prepare_model, select_runner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def two_class_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("engine") / "model.pt", labels=["effusion", "nodule"])


def _model(bundle_path: Path) -> torch.nn.Module:
    return prepare_model(load_bundle(bundle_path).model, CPU)


def _shape(bundle_path: Path) -> dict[str, int]:
    b = load_bundle(bundle_path)
    return {"in_channels": b.model_config.in_channels, "image_size": b.preprocess.image_size}


def test_onnxruntime_logits_match_pytorch_for_any_batch_size(two_class_bundle: Path) -> None:
    model = _model(two_class_bundle)
    runner = select_runner(model, CPU, "onnxruntime", **_shape(two_class_bundle))
    assert runner.engine == "onnxruntime" and not runner.channels_last
    for n in (1, 5):  # the graph was exported at batch 2: the batch axis is dynamic
        x = torch.randn(n, _shape(two_class_bundle)["in_channels"], 32, 32)
        with torch.no_grad():
            expected = model(x.contiguous(memory_format=torch.channels_last))
        got = runner.forward(x.contiguous(memory_format=torch.channels_last))  # any layout is accepted
        assert got.dtype == torch.float32 and got.shape == (n, 2)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_onnxruntime_uses_the_torch_thread_count(two_class_bundle: Path) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner = select_runner(_model(two_class_bundle), CPU, "auto", **_shape(two_class_bundle))
    finally:
        torch.set_num_threads(before)
    assert runner.forward.threads == 1 and "1 threads" in runner.description


def test_auto_picks_onnxruntime_on_cpu_and_torch_when_compiling(two_class_bundle: Path) -> None:
    model = _model(two_class_bundle)
    assert select_runner(model, CPU, "auto", **_shape(two_class_bundle)).engine == "onnxruntime"
    compiled = select_runner(model, CPU, "auto", compile=True, **_shape(two_class_bundle))
    assert compiled.engine == "torch" and compiled.channels_last and "compiled" in compiled.description
    plain = select_runner(model, CPU, "torch", **_shape(two_class_bundle))
    assert plain.engine == "torch" and plain.forward is not model  # BatchNorm-folded copy


def test_explicit_onnxruntime_refuses_gpu_compile_and_unknown_names(two_class_bundle: Path) -> None:
    model = _model(two_class_bundle)
    with pytest.raises(ValueError, match="--device cpu"):
        select_runner(model, torch.device("cuda"), "onnxruntime")  # checked before anything runs
    with pytest.raises(ValueError, match="drop --compile"):
        select_runner(model, CPU, "onnxruntime", compile=True)
    with pytest.raises(ValueError, match="choose one of auto, torch, onnxruntime"):
        select_runner(model, CPU, "tensorrt")


def test_missing_packages_fall_back_under_auto_and_fail_when_asked_for(
    two_class_bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = _model(two_class_bundle)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with caplog.at_level(logging.WARNING, logger="xraytriage.scoring.engine"):
        runner = select_runner(model, CPU, "auto", **_shape(two_class_bundle))
    assert runner.engine == "torch"
    assert "pip install onnx onnxruntime" in caplog.text
    with pytest.raises(EngineUnavailable, match=r"onnxruntime is missing.*--engine torch"):
        select_runner(model, CPU, "onnxruntime", **_shape(two_class_bundle))
    monkeypatch.delitem(sys.modules, "onnxruntime")
    monkeypatch.setitem(sys.modules, "onnx", None)  # the exporter's package
    with pytest.raises(EngineUnavailable, match="onnx is missing"):
        select_runner(model, CPU, "onnxruntime", **_shape(two_class_bundle))


def test_a_graph_that_disagrees_with_pytorch_is_never_used(
    two_class_bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_call = engine_mod.OnnxRuntimeForward.__call__

    def off_by_a_little(self: engine_mod.OnnxRuntimeForward, x: torch.Tensor) -> torch.Tensor:
        return real_call(self, x) + 0.01  # e.g. a runtime kernel bug

    monkeypatch.setattr(engine_mod.OnnxRuntimeForward, "__call__", off_by_a_little)
    model = _model(two_class_bundle)
    with caplog.at_level(logging.WARNING, logger="xraytriage.scoring.engine"):
        assert select_runner(model, CPU, "auto", **_shape(two_class_bundle)).engine == "torch"
    assert "differ from PyTorch's" in caplog.text and "max difference 0.01" in caplog.text
    with pytest.raises(EngineUnavailable, match="differ from PyTorch's"):
        select_runner(model, CPU, "onnxruntime", **_shape(two_class_bundle))


def test_an_export_that_fails_falls_back_under_auto(
    two_class_bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import xraytriage.deploy.export as export_mod

    def removed(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("the TorchScript-based exporter was removed")  # e.g. a future torch

    monkeypatch.setattr(export_mod, "onnx_graph", removed)
    model = _model(two_class_bundle)
    with caplog.at_level(logging.WARNING, logger="xraytriage.scoring.engine"):
        assert select_runner(model, CPU, "auto", **_shape(two_class_bundle)).engine == "torch"
    assert "exporting the network to ONNX failed (the TorchScript-based exporter was removed)" in caplog.text
    with pytest.raises(EngineUnavailable, match="exporting the network to ONNX failed"):
        select_runner(model, CPU, "onnxruntime", **_shape(two_class_bundle))


def test_both_engines_write_the_same_scores_and_flags(tmp_path: Path, two_class_bundle: Path) -> None:
    write_pngs(tmp_path / "in", 7)
    outs = {}
    for name in ("torch", "onnxruntime", "auto"):
        out = tmp_path / f"{name}.csv"
        rc = run_score(
            tmp_path / "in", two_class_bundle, out, "--workers", "0", "--batch-size", "4", "--engine", name
        )
        assert rc == 0
        outs[name] = {r["path"]: r for r in read_csv_rows(out)}
    assert len(outs["torch"]) == 7
    for name in ("onnxruntime", "auto"):
        assert outs[name].keys() == outs["torch"].keys()
        for path, row in outs["torch"].items():
            for label in ("effusion", "nodule"):
                assert float(outs[name][path][f"prob_{label}"]) == pytest.approx(
                    float(row[f"prob_{label}"]), abs=2e-6
                )


def test_summary_names_the_engine_and_config_selects_it(tmp_path: Path, two_class_bundle: Path) -> None:
    write_pngs(tmp_path / "in", 2)
    summary = score(
        ScoreOptions(two_class_bundle, tmp_path / "in", tmp_path / "a.csv", workers=0, progress=False)
    )
    assert summary.engine.startswith("onnxruntime (CPU") and "engine: onnxruntime" in summary.text()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("score:\n  engine: torch\n")
    assert load_config(cfg).score.engine == "torch"
    cfg.write_text("score:\n  engine: tensorrt\n")
    with pytest.raises(ConfigError, match="engine"):
        load_config(cfg)


def test_cli_reports_an_engine_that_cannot_run(
    tmp_path: Path, two_class_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_pngs(tmp_path / "in", 1)
    rc = run_score(
        tmp_path / "in", two_class_bundle, tmp_path / "s.csv", "--engine", "onnxruntime", "--compile"
    )
    assert rc == 2
    assert "drop --compile" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()  # nothing written before the engine was ready


# --- the exported-graph cache -------------------------------------------------------------------


def _graphs(folder: Path) -> list[Path]:
    return sorted((folder / "onnx").glob("*.onnx")) if (folder / "onnx").is_dir() else []


def test_a_rerun_takes_the_graph_from_the_cache_and_a_bad_one_is_replaced(
    tmp_path: Path, two_class_bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import xraytriage.deploy.export as export_mod

    monkeypatch.setenv("XRAYTRIAGE_CACHE_DIR", str(tmp_path / "cache"))
    b = load_bundle(two_class_bundle)
    model, shape = _model(two_class_bundle), _shape(two_class_bundle)
    x = torch.randn(4, shape["in_channels"], 32, 32)
    first = select_runner(model, CPU, "auto", weights_id=b.model_id, **shape)
    (graph,) = _graphs(tmp_path / "cache")
    assert graph.name.startswith(b.model_id) and graph.stat().st_size > 1000

    exports = []
    real_graph = export_mod.onnx_graph
    monkeypatch.setattr(export_mod, "onnx_graph", lambda *a, **k: exports.append(1) or real_graph(*a, **k))
    again = select_runner(model, CPU, "auto", weights_id=b.model_id, **shape)
    assert again.engine == "onnxruntime" and exports == []  # no export on the rerun
    torch.testing.assert_close(again.forward(x), first.forward(x))

    graph.write_bytes(b"not an onnx graph")  # a damaged or truncated cache file
    with caplog.at_level(logging.WARNING, logger="xraytriage.scoring.engine"):
        repaired = select_runner(model, CPU, "auto", weights_id=b.model_id, **shape)
    assert repaired.engine == "onnxruntime" and exports == [1]
    assert "exporting it again" in caplog.text
    assert graph.read_bytes() != b"not an onnx graph"
    torch.testing.assert_close(repaired.forward(x), first.forward(x))

    other = select_runner(
        model, CPU, "auto", weights_id=b.model_id, in_channels=shape["in_channels"], image_size=48
    )
    assert other.engine == "onnxruntime" and len(_graphs(tmp_path / "cache")) == 2  # input size is in the key


def test_cache_can_be_turned_off_and_an_unwritable_one_costs_nothing_but_time(
    tmp_path: Path, two_class_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = load_bundle(two_class_bundle)
    model, shape = _model(two_class_bundle), _shape(two_class_bundle)
    monkeypatch.setenv("XRAYTRIAGE_CACHE_DIR", "off")
    assert engine_mod.graph_cache_dir() is None
    assert select_runner(model, CPU, "auto", weights_id=b.model_id, **shape).engine == "onnxruntime"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XRAYTRIAGE_CACHE_DIR", str(blocker / "cache"))  # below a file: cannot be created
    assert select_runner(model, CPU, "auto", weights_id=b.model_id, **shape).engine == "onnxruntime"
    monkeypatch.delenv("XRAYTRIAGE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert engine_mod.graph_cache_dir() == tmp_path / "xdg" / "xraytriage" / "onnx"


def test_cache_keeps_to_its_size_limit_dropping_the_least_recently_used(
    tmp_path: Path, two_class_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import time

    cache = tmp_path / "cache"
    monkeypatch.setenv("XRAYTRIAGE_CACHE_DIR", str(cache))
    b = load_bundle(two_class_bundle)
    model, shape = _model(two_class_bundle), _shape(two_class_bundle)
    select_runner(model, CPU, "auto", weights_id=b.model_id, **shape)
    (graph,) = _graphs(cache)
    size = graph.stat().st_size
    graph.unlink()

    now = time.time()
    fakes = []
    for age in (300, 200, 100):  # other bundles' graphs, used 5, 3 and 1 minutes ago
        fake = cache / "onnx" / f"other{age}.onnx"
        fake.write_bytes(b"\0" * 1000)
        os.utime(fake, (now - age, now - age))
        fakes.append(fake)
    monkeypatch.setattr(engine_mod, "CACHE_MAX_BYTES", size + 1500)
    select_runner(model, CPU, "auto", weights_id=b.model_id, **shape)
    assert [f.exists() for f in fakes] == [False, False, True]  # oldest first, until it fits
    assert graph.is_file()

    os.utime(graph, (now - 1000, now - 1000))
    select_runner(model, CPU, "auto", weights_id=b.model_id, **shape)  # a hit marks it recently used
    assert graph.stat().st_mtime > now - 60
