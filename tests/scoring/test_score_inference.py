"""The shared inference loop (``iter_logits``) and the ``--compile`` scoring path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from support.scoring import make_bundle, read_csv_rows, run_score, write_pngs
from xraytriage.data.dataset import ScanBatch
from xraytriage.inference import iter_logits


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    net[1].running_mean.uniform_(-1, 1)  # eval-mode BatchNorm that is not the identity
    return net.eval()


def test_iter_logits_streams_pads_and_leaves_autograd_to_the_caller() -> None:
    net = _tiny_net()
    xs = [torch.randn(3, 3, 8, 8), None, torch.randn(1, 3, 8, 8)]
    batches = [ScanBatch(x, None, None, paths=[f"batch{i}"]) for i, x in enumerate(xs)]
    seen = []
    for out in iter_logits(net, batches, torch.device("cpu"), inference_mode=True, pad_to=4):
        # Between batches the caller is outside no_grad/inference_mode (Grad-CAM needs autograd).
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        seen.append(out.batch.paths[0])
        x = out.batch.image
        if x is None:
            assert out.inputs is None and out.logits is None
            continue
        assert out.inputs.is_contiguous(memory_format=torch.channels_last)
        assert out.logits.dtype == torch.float32 and out.logits.shape == (x.shape[0], 4)  # padding dropped
        with torch.no_grad():
            expected = net(x)
        torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    assert seen == ["batch0", "batch1", "batch2"]  # one yield per batch, in order, the empty one included


def test_compiled_scoring_matches_eager_and_compiles_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch._dynamo

    bundle = make_bundle(tmp_path / "m.pt")
    write_pngs(tmp_path / "in", 5)  # batch 4: the short last batch is padded, not recompiled
    assert (
        run_score(tmp_path / "in", bundle, tmp_path / "eager.csv", "--workers", "0", "--batch-size", "4") == 0
    )

    compiled = []
    real_compile = torch.compile

    def spy(model, **kwargs):
        compiled.append(kwargs)
        return real_compile(model, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    t0 = time.perf_counter()
    rc = run_score(
        tmp_path / "in", bundle, tmp_path / "comp.csv", "--workers", "0", "--batch-size", "4", "--compile"
    )
    elapsed = time.perf_counter() - t0
    torch._dynamo.reset()
    assert rc == 0
    assert compiled == [{"dynamic": False}]
    eager = {r["path"]: float(r["prob_finding"]) for r in read_csv_rows(tmp_path / "eager.csv")}
    comp = {r["path"]: float(r["prob_finding"]) for r in read_csv_rows(tmp_path / "comp.csv")}
    assert comp.keys() == eager.keys() and len(comp) == 5
    for path, p in eager.items():
        assert comp[path] == pytest.approx(p, abs=1e-4)
    print(f"compiled scoring of 5 scans: {elapsed:.1f} s")
