"""Training engine on CPU with tiny images: outputs, TensorBoard tags, resume, divergence, leakage."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from support.training import tiny_config
from xraytriage.config import load_config
from xraytriage.data.manifest import ManifestError
from xraytriage.evaluation.metrics import binary_metrics
from xraytriage.models import load_bundle
from xraytriage.models.bundle import logits_to_probabilities
from xraytriage.training import engine
from xraytriage.training.checkpoint import CHECKPOINT_NAME, load_checkpoint


def test_training_writes_run_directory_and_tensorboard(tiny_manifest: Path, tmp_path: Path) -> None:
    result = engine.train(tiny_config(tiny_manifest), tmp_path / "run")
    run = tmp_path / "run"
    for name in ("model.pt", "config.yaml", "metrics.json", CHECKPOINT_NAME):
        assert (run / name).is_file(), name
    bundle = load_bundle(run / "model.pt")
    assert bundle.labels == ["finding"] and 0.0 <= bundle.thresholds["finding"] <= 1.0
    assert bundle.preprocess.image_size == 32 and bundle.metadata["best_epoch"] == result.best_epoch
    assert len(result.history) == 2
    # the validated scope: the validation reference holds the calibrated probabilities the threshold
    # was chosen on (what inference gives on the validation scans), one OOD distance per scan
    from xraytriage.inference import predict_manifest

    reference = bundle.scope["validation"]
    val = pd.read_csv(tiny_manifest)
    val = val[val["split"] == "val"].assign(path=lambda f: [str(tiny_manifest.parent / p) for p in f["path"]])
    expected = predict_manifest(bundle, val, num_workers=0, device="cpu", progress=None)
    np.testing.assert_allclose(reference["probabilities"]["finding"], expected["prob_finding"], atol=1e-5)
    assert reference["n_scans"] == len(val) == len(reference["ood_scores"])
    assert reference["out_of_scope_rate"] == 0.0 and set(bundle.scope["values"]["view"]) <= {"AP", "PA"}
    assert bundle.scope["ood"]["precision"].shape == (512, 512)  # resnet18's pooled features

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(
        str(run / "tensorboard"), size_guidance={"tensors": 0, "histograms": 0, "images": 0}
    )
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in (
        "train/loss",
        "train/grad_norm",
        "train/images_per_sec",
        "train/lr_head",
        "train/lr_backbone",
        "epoch/val_loss",
        "val/auroc/finding",
        "val/sensitivity/finding",
        "val/specificity/finding",
    ):
        assert tag in scalars, tag
    assert any(t.startswith("val_subgroup_sensitivity/finding/") for t in scalars)
    assert "train/augmented_batch" in events.Tags()["images"]
    assert any(t.startswith("weights/") for t in events.Tags()["histograms"])
    assert any(t.startswith("val/pr_curve/finding") for t in events.Tags()["tensors"])
    assert (run / "tensorboard" / "hparams").is_dir()


def test_interrupted_run_resumes_bit_for_bit(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(tiny_manifest)
    engine.train(cfg, tmp_path / "straight")

    original = engine.Trainer._train_one_epoch

    def interrupt_second_epoch(self: engine.Trainer, epoch: int, partial: dict | None = None) -> dict:
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch, partial)

    monkeypatch.setattr(engine.Trainer, "_train_one_epoch", interrupt_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        engine.train(cfg, tmp_path / "resumed")
    assert load_checkpoint(tmp_path / "resumed" / CHECKPOINT_NAME)["epoch"] == 1
    monkeypatch.setattr(engine.Trainer, "_train_one_epoch", original)
    with pytest.raises(FileExistsError, match="--resume"):
        engine.train(cfg, tmp_path / "resumed")
    engine.train(cfg, tmp_path / "resumed", resume=True)

    a = load_checkpoint(tmp_path / "straight" / CHECKPOINT_NAME)
    b = load_checkpoint(tmp_path / "resumed" / CHECKPOINT_NAME)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = engine.Trainer._loss

    def nan_in_second_epoch(
        self: engine.Trainer, logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        loss = original(self, logits, targets)
        return (
            loss * float("nan")
            if self.net.training and self.scheduler.last_epoch >= self._steps_per_epoch()
            else loss
        )

    monkeypatch.setattr(engine.Trainer, "_loss", nan_in_second_epoch)
    with pytest.raises(engine.TrainingDiverged, match=r"lower train\.lr"):
        engine.train(tiny_config(tiny_manifest), tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["epoch"] == 1


def test_patient_leakage_blocks_training(tiny_manifest: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(tiny_manifest)
    frame["path"] = [str(tiny_manifest.parent / p) for p in frame["path"]]
    train_patient = frame.loc[frame["split"] == "train", "patient_id"].iloc[0]
    frame.loc[frame.index[frame["split"] == "val"][0], "patient_id"] = train_patient
    leaky = tmp_path / "leaky.csv"
    frame.to_csv(leaky, index=False)
    with pytest.raises(ManifestError, match="more than one split"):
        engine.train(tiny_config(leaky), tmp_path / "run")
    assert not (tmp_path / "run" / "model.pt").exists()


def test_augmentation_is_identical_whatever_the_worker_count(tiny_manifest: Path) -> None:
    from torch.utils.data import DataLoader

    from xraytriage.data.augment import build_augmentation
    from xraytriage.data.dataset import EpochTaggedSampler, ManifestScans, collate_scans
    from xraytriage.data.manifest import read_manifest
    from xraytriage.data.workers import WorkerInit

    cfg = tiny_config(tiny_manifest, "augment.probability=1.0")
    frame = read_manifest(tiny_manifest, labels=["finding"]).head(8)

    def batch_for(workers: int, epoch: int) -> torch.Tensor:
        ds = ManifestScans(
            frame, ["finding"], cfg.preprocess, 1, build_augmentation(cfg.augment, 0), augment_seed=5
        )
        sampler = EpochTaggedSampler(torch.utils.data.SequentialSampler(ds))
        sampler.set_epoch(epoch)
        loader = DataLoader(
            ds,
            batch_size=8,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_scans,
            worker_init_fn=WorkerInit(),
        )
        return next(iter(loader)).image

    zero, two = batch_for(0, 0), batch_for(2, 0)
    assert torch.equal(zero, two)
    assert not torch.equal(zero, batch_for(0, 1))  # a new epoch draws new augmentations
    assert not torch.equal(zero[0], zero[1])


def test_an_unreadable_manifest_scan_travels_as_a_failure_in_its_batch(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    """A row whose file is not an image never raises: it becomes the one failure type, with its path,
    reason and manifest position, next to the decoded scans of its batch (the same with 2 workers)."""
    from torch.utils.data import DataLoader

    from xraytriage.data.dataset import ManifestScans, ScanFailure, collate_scans, label_matrix
    from xraytriage.data.manifest import read_manifest
    from xraytriage.data.workers import WorkerInit
    from xraytriage.io import REASONS

    cfg = tiny_config(tiny_manifest)
    frame = read_manifest(tiny_manifest, labels=["finding"]).head(6).copy()
    bad = tmp_path / "notes.png"
    bad.write_text("not pixels")
    frame.loc[frame.index[2], "path"] = str(bad)
    dataset = ManifestScans(frame, ["finding"], cfg.preprocess, 1)
    for workers in (0, 2):
        loader = DataLoader(
            dataset, batch_size=4, num_workers=workers, collate_fn=collate_scans, worker_init_fn=WorkerInit()
        )
        first, second = list(loader)
        assert first.index.tolist() == [0, 1, 3] and second.index.tolist() == [4, 5]
        sig = "unrecognised file signature"
        message = f"{REASONS['not_an_image']} ({sig})"
        assert first.failures == [ScanFailure(str(bad), "not_an_image", message, index=2, detail=sig)]
        assert second.failures == []
        assert first.paths == [frame["path"].iloc[i] for i in (0, 1, 3)]
        assert first.image.shape == (3, 1, 32, 32) and first.image.dtype == torch.float32
        expected = torch.from_numpy(label_matrix(frame.iloc[[0, 1, 3]], ["finding"]))
        assert torch.equal(first.target, expected)


def test_the_scope_takes_the_validation_features_from_the_final_validation_pass(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One inference pass over the validation scans at the end of training: the feature pass runs
    over the training scans only, and the recorded OOD distances are those a separate pass gives."""
    from xraytriage.scope.collect import FeaturePass, ScopeRecorder

    passes: list[int] = []
    real = FeaturePass.__call__

    def counting(self: FeaturePass, frame: pd.DataFrame):
        passes.append(len(frame))
        return real(self, frame)

    monkeypatch.setattr(FeaturePass, "__call__", counting)
    cfg = tiny_config(tiny_manifest, "train.epochs=1")
    trainer = engine.Trainer(cfg, tmp_path / "run")
    trainer.fit()
    assert passes == [len(trainer.train_frame)]
    bundle = load_bundle(tmp_path / "run" / "model.pt")
    separate = FeaturePass(bundle.model, cfg.preprocess, 1, torch.device("cpu"))
    _, distances = ScopeRecorder(cfg.scope, separate, cfg.seed).reference(
        trainer.train_frame, trainer.val_frame
    )
    assert len(distances) == len(trainer.val_frame) == len(bundle.scope["validation"]["ood_scores"])
    np.testing.assert_allclose(bundle.scope["validation"]["ood_scores"], distances, rtol=1e-4)


def test_frozen_warmup_trains_only_the_head(tiny_manifest: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_manifest, "train.epochs=1", "train.freeze_epochs=1", "augment.enabled=false")
    trainer = engine.Trainer(cfg, tmp_path / "run")
    trainer._data()
    trainer._model()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer._train_one_epoch(0)
    after = trainer.model.state_dict()
    assert not torch.equal(before["fc.1.weight"], after["fc.1.weight"])
    assert torch.equal(before["layer1.0.conv1.weight"], after["layer1.0.conv1.weight"])
    lrs = {g["name"]: g["initial_lr"] for g in trainer.optimizer.param_groups}
    assert lrs["backbone"] < lrs["head"]  # backbone fine-tunes at backbone_lr_mult of the head's rate


def test_multilabel_pos_weight_early_stopping_and_temperature(tiny_manifest: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(tiny_manifest)
    frame["path"] = [str(tiny_manifest.parent / p) for p in frame["path"]]
    frame["female"] = (frame["sex"] == "F").astype(float)
    frame.loc[frame.index[::5], "female"] = float("nan")  # unknown labels are masked, not negatives
    manifest = tmp_path / "multi.csv"
    frame.to_csv(manifest, index=False)
    cfg = tiny_config(
        manifest,
        "data.labels=[finding,female]",
        "model.task=multilabel",
        "train.imbalance=pos_weight",
        "train.epochs=6",
        "train.early_stopping_patience=1",
        "train.lr=1e-6",
        "evaluation.temperature_scaling=true",
    )
    result = engine.train(cfg, tmp_path / "run")
    assert len(result.history) < 6  # a learning rate this small cannot improve twice in a row
    bundle = load_bundle(tmp_path / "run" / "model.pt")
    assert bundle.labels == ["finding", "female"] and set(bundle.thresholds) == {"finding", "female"}
    assert set(bundle.temperatures) == {"finding", "female"}  # one temperature per label
    assert all(t > 0 for t in bundle.temperatures.values()) and bundle.temperatures["finding"] != 1.0
    assert bundle.temperatures["finding"] != bundle.temperatures["female"]
    for label in bundle.labels:  # how each threshold was chosen travels with the bundle
        op = bundle.operating_points[label]
        assert op["threshold"] == bundle.thresholds[label] and op["policy"] == "target_sensitivity"
        assert op["rule"] == "lower_bound" and (op["lower_bound"] is not None or op["fallback"])
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["temperatures"] == bundle.temperatures
    assert bundle.model(torch.zeros(1, 1, 32, 32)).shape == (1, 2)


def test_ctrl_c_mid_epoch_saves_and_resumes_bit_for_bit(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(tiny_manifest, "train.batch_size=4")
    engine.train(cfg, tmp_path / "straight")

    def ctrl_c_after_first_step_of_epoch_two(self: engine.Trainer, epoch: int, steps: int) -> bool:
        return epoch == 1 and steps == 1

    monkeypatch.setattr(engine.Trainer, "_should_stop", ctrl_c_after_first_step_of_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        engine.train(cfg, tmp_path / "resumed")
    saved = load_checkpoint(tmp_path / "resumed" / CHECKPOINT_NAME)
    assert saved["epoch"] == 1 and saved["partial"]["micro"] == 1  # mid-epoch state, not the epoch start
    monkeypatch.undo()
    result = engine.train(cfg, tmp_path / "resumed", resume=True)
    assert [r["epoch"] for r in result.history] == [1, 2]

    a = load_checkpoint(tmp_path / "straight" / CHECKPOINT_NAME)
    b = load_checkpoint(tmp_path / "resumed" / CHECKPOINT_NAME)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    straight_loss = json.loads(a["history_json"])[1]["train_loss"]
    assert abs(result.history[1]["train_loss"] - straight_loss) < 1e-6  # the epoch's loss spans both parts


def test_sigint_handler_asks_for_a_clean_stop(tiny_manifest: Path, tmp_path: Path) -> None:
    import signal

    trainer = engine.Trainer(tiny_config(tiny_manifest), tmp_path / "run")
    previous = trainer._install_interrupt_handler()
    try:
        signal.raise_signal(signal.SIGINT)
        assert trainer._stop_requested  # first Ctrl-C: finish the step, save, stop
        with pytest.raises(KeyboardInterrupt):  # second Ctrl-C: abort at once
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("scaling", [True, False])
def test_thresholds_are_chosen_on_the_calibrated_probabilities(scaling: bool) -> None:
    """Was: thresholds chosen on temperature-1 probabilities, T fitted afterwards and applied before the
    threshold at inference (stored threshold: validation sensitivity 0.900 at T=1, 1.000 with T)."""
    rng = np.random.default_rng(0)
    n = 4000
    true = rng.normal(-1.0, 2.0, (n, 2))
    y = (rng.random((n, 2)) < _sigmoid(true)).astype(float)
    logits = (true * np.array([3.0, 0.5])).astype(np.float32)  # over- and under-confident
    frame = pd.DataFrame({"patient_id": [f"p{i // 2}" for i in range(n)], "a": y[:, 0], "b": y[:, 1]})
    frame["prob_a"], frame["prob_b"] = (
        _sigmoid(logits[:, 0].astype(float)),
        _sigmoid(logits[:, 1].astype(float)),
    )
    cfg = load_config(
        None,
        [
            "data.labels=[a,b]",
            f"evaluation.temperature_scaling={str(scaling).lower()}",
            "evaluation.operating_point.rule=point_estimate",
        ],
    )
    metrics: dict = {}
    temps, ops = engine.Trainer._calibrate_and_choose(
        SimpleNamespace(cfg=cfg, labels=["a", "b"]), frame, logits, metrics
    )
    if scaling:
        assert temps["a"] == pytest.approx(3.0, rel=0.1) and temps["b"] == pytest.approx(0.5, rel=0.1)
    else:
        assert temps == {"a": 1.0, "b": 1.0}
    # what evaluate and score will compute from these logits with the bundle's temperatures
    probs = logits_to_probabilities(torch.from_numpy(logits), "multilabel", [temps["a"], temps["b"]]).numpy()
    for j, label in enumerate(["a", "b"]):
        applied = binary_metrics(y[:, j], probs[:, j].astype(float), ops[label].threshold)
        assert applied["sensitivity"] == ops[label].validation_value == metrics[f"{label}/sensitivity"]
        assert 0.9 <= applied["sensitivity"] < 0.91  # the promised operating point, not a flag-everything one
        assert applied["specificity"] == metrics[f"{label}/specificity"] and applied["specificity"] > 0.3
