"""torchrun / DDP on CPU with the gloo backend: two processes train one model and agree with a
single-process evaluation of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xraytriage.config import ScopeConfig
from xraytriage.data.manifest import read_manifest
from xraytriage.data.synthetic import SyntheticSpec, generate_dataset
from xraytriage.evaluation.metrics import binary_metrics
from xraytriage.inference import predict_manifest
from xraytriage.models import load_bundle
from xraytriage.scope.collect import FeaturePass, ScopeRecorder


def torchrun_train(
    processes: int, port: int, manifest: Path, run: Path, *overrides: str
) -> subprocess.CompletedProcess:
    """``torchrun -m xraytriage train`` on the CPU (gloo) with a tiny ResNet-18 configuration."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "TMPDIR": str(run.parent)}
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
    train = ["-m", "xraytriage", "train", "--config", "configs/demo.yaml", "--out", str(run)]
    tiny = [
        f"data.manifest={manifest}",
        "data.num_workers=0",
        "model.arch=resnet18",
        "preprocess.image_size=32",
    ]
    tiny += ["train.batch_size=4", "train.device=cpu", "train.histogram_every_epochs=0"]
    return subprocess.run(
        [*launcher, f"--master_port={port}", *train, *tiny, *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.mark.slow
def test_two_process_ddp_training_matches_single_process_evaluation(tmp_path: Path) -> None:
    manifest = generate_dataset(
        tmp_path / "data", SyntheticSpec(n_patients=24, size=64, seed=11), progress=False
    )
    run = tmp_path / "run"
    proc = torchrun_train(2, 29571, manifest, run, "train.epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "metrics.json").read_text())
    assert len(summary["history"]) == 2
    # Rank 0 alone wrote the run directory: one event file, one checkpoint.
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1

    bundle = load_bundle(run / "model.pt")
    frame = read_manifest(manifest, labels=["finding"])
    val = frame[frame["split"] == "val"].reset_index(drop=True)
    single = predict_manifest(bundle, val, batch_size=4, device="cpu")
    assert len(single) == len(val)  # every validation scan counted once, none padded twice
    y, p = single["finding"].to_numpy(float), single["prob_finding"].to_numpy(float)
    metrics = binary_metrics(y, p, bundle.thresholds["finding"])
    gathered = summary["val"]
    # Rank-based figures from the gathered predictions equal a single-process evaluation.
    for key in ("auroc", "auprc"):
        expected, got = metrics[key], gathered[f"finding/{key}"]
        assert (got is None) if expected is None else np.isclose(got, expected, atol=1e-6), key
    # The operating threshold is one of the validation scores (target-sensitivity policy): the gathered
    # predictions are the single-process ones, up to float noise from different batch sizes.
    assert np.min(np.abs(p - bundle.thresholds["finding"])) < 1e-5
    # The scope's validation features came from both ranks' final validation pass: one OOD distance
    # per scan, those a single-process feature pass gives.
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    separate = FeaturePass(bundle.model, bundle.preprocess, 1, torch.device("cpu"))
    _, distances = ScopeRecorder(ScopeConfig(), separate).reference(train, val)
    assert len(distances) == len(val) == len(bundle.scope["validation"]["ood_scores"])
    np.testing.assert_allclose(bundle.scope["validation"]["ood_scores"], distances, rtol=1e-4)


def test_torchrun_with_one_process_runs_the_ddp_path(tmp_path: Path) -> None:
    """One process under torchrun joins a process group and trains through DDP, the same code several
    processes run: a one-GPU machine checks the distributed path (NCCL there, gloo here)."""
    manifest = generate_dataset(
        tmp_path / "data", SyntheticSpec(n_patients=12, size=48, seed=2), progress=False
    )
    proc = torchrun_train(1, 29573, manifest, tmp_path / "run", "train.epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DDP over gloo with 1 rank(s)" in proc.stderr
    assert (tmp_path / "run" / "model.pt").is_file()


def test_a_plain_run_joins_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from xraytriage.training.distributed import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    info = init_distributed("cpu")
    assert not info.enabled and info.world_size == 1 and info.backend == ""
