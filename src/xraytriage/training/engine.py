"""The fine-tuning loop: transfer-learning schedule, AMP, checkpoints, DDP, TensorBoard.

Structure follows torchvision's ``references/classification``: build data, build model, one
``train_one_epoch`` and one ``validate`` per epoch, checkpoint, repeat. Nothing in the step loop
synchronises with the GPU except at logging intervals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from xraytriage.columns import prob_column
from xraytriage.config import Config, ConfigError, DataConfig, ModelConfig, PreprocessConfig, save_config
from xraytriage.data.dataset import label_matrix
from xraytriage.evaluation.audit import audit_manifest
from xraytriage.inference import autocast_for, predict_loader, predictions_frame, probabilities
from xraytriage.models.bundle import save_bundle
from xraytriage.models.factory import build_model, head_parameters
from xraytriage.models.pretrained import adopt_expected_input, expected_input
from xraytriage.training import distributed as dist_utils
from xraytriage.training.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from xraytriage.training.epoch_log import EpochLogger, Throughput
from xraytriage.training.loaders import create_loaders
from xraytriage.training.losses import masked_bce, multiclass_ce
from xraytriage.training.schedule import warmup_cosine
from xraytriage.utils.atomic import atomic_write_text
from xraytriage.utils.lock import OutputLocked, exclusive_lock, lock_file_for
from xraytriage.utils.progress import show_progress
from xraytriage.utils.runtime import (
    resolve_amp_dtype,
    resolve_device,
    seed_everything,
    use_deterministic_kernels,
)

log = logging.getLogger(__name__)

BEST_WEIGHTS = "best_weights.pt"
BUNDLE_NAME = "model.pt"


# Settings a resumed run may not change: they define what the checkpoint's weights were trained on.
# Within data, how the scans are read (workers, cache folder) does not change what is learnt.
_RESUME_FIXED = {"data": DataConfig, "preprocess": PreprocessConfig, "model": ModelConfig}
_RESUME_FREE_DATA_KEYS = frozenset({"num_workers", "cache_dir"})


def resume_changes(saved: dict[str, Any], cfg: Config) -> list[str]:
    """``section.key old -> new`` for each data/preprocess/model setting that differs from ``saved``
    (the checkpoint's config), read through today's schema so keys added since compare as defaults."""
    changes = []
    now = cfg.to_yaml_dict()
    for section, schema in _RESUME_FIXED.items():
        stored = saved.get(section, {})
        with contextlib.suppress(Exception):  # an old or edited checkpoint: compare what it holds
            stored = schema.model_validate(stored).model_dump(mode="json")
        for key in sorted(set(stored) | set(now[section])):
            if section == "data" and key in _RESUME_FREE_DATA_KEYS:
                continue
            if stored.get(key) != now[section].get(key):
                changes.append(f"{section}.{key} {stored.get(key)!r} -> {now[section].get(key)!r}")
    return changes


class TrainingDiverged(RuntimeError):
    """Loss became NaN/inf; the last good checkpoint is kept."""


class _StopAtStep(KeyboardInterrupt):
    """Ctrl-C honoured at an optimiser-step boundary; carries the exact mid-epoch state to save."""

    def __init__(self, epoch: int, partial: dict[str, Any]) -> None:
        super().__init__()
        self.epoch = epoch
        self.partial = partial


@dataclass
class TrainResult:
    run_dir: Path
    bundle_path: Path
    best_epoch: int
    best_score: float
    history: list[dict[str, Any]] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    val_metrics: dict[str, Any] = field(default_factory=dict)
    operating_points: dict[str, Any] = field(default_factory=dict)  # label -> OperatingPoint


def _num_outputs(cfg: Config) -> int:
    return 1 if cfg.model.task == "binary" else len(cfg.data.labels)


def _build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """Head at the full learning rate; backbone at ``backbone_lr_mult`` of it."""
    head = {id(p) for p in head_parameters(model)}
    head_params = [p for p in model.parameters() if id(p) in head]
    backbone = [p for p in model.parameters() if id(p) not in head]
    t = cfg.train
    groups = [
        {"params": backbone, "lr": t.lr * t.backbone_lr_mult, "name": "backbone"},
        {"params": head_params, "lr": t.lr, "name": "head"},
    ]
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=True
        )
    return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)


def _set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    head = {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        if id(p) not in head:
            p.requires_grad_(trainable)


@dataclass(frozen=True)
class ValidationPass:
    """What one validation pass gives: metrics, the prediction table (probabilities at temperature 1),
    the logits (rows aligned with the table) and, when asked, the pooled features with their rows'
    positions in the table (what the scope's recorder takes)."""

    metrics: dict[str, Any]
    frame: pd.DataFrame
    logits: np.ndarray
    features: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class RunState:
    """Where a run stands between steps: what a checkpoint saves and ``--resume`` restores."""

    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch
    best_score: float = -math.inf  # validation mean AUROC of the best epoch
    best_epoch: int = -1  # 1-based; -1 before the first epoch
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    partial: dict[str, Any] = field(default_factory=dict)  # position inside an interrupted epoch

    def finish_epoch(self, record: dict[str, Any]) -> bool:
        """Append the epoch's record and update best/bad epochs; True when it is the new best."""
        self.history.append(record)
        self.epoch = int(record["epoch"])
        self.partial = {}
        score = record["val_mean_auroc"]
        improved = (math.isfinite(score) and score > self.best_score) or self.best_epoch < 0
        if improved:
            self.best_score = score if math.isfinite(score) else -math.inf
            self.best_epoch = self.epoch
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return improved

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "partial": self.partial,
            "epoch": self.epoch,
            "history_json": json.dumps(self.history),
            "best_score": float(self.best_score),
            "best_epoch": int(self.best_epoch),
            "bad_epochs": int(self.bad_epochs),
        }

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> RunState:
        return cls(
            epoch=int(state["epoch"]),
            history=json.loads(state["history_json"]),
            best_score=float(state["best_score"]),
            best_epoch=int(state["best_epoch"]),
            bad_epochs=int(state["bad_epochs"]),
            partial=dict(state.get("partial") or {}),
        )


class Trainer:
    """One training run in one run directory; ``fit()`` trains (or resumes) and writes the bundle."""

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.dist = dist_utils.init_distributed(cfg.train.device)
        if self.dist.enabled and torch.cuda.is_available() and cfg.train.device != "cpu":
            self.device = torch.device("cuda", self.dist.local_rank)
        else:
            self.device = resolve_device(cfg.train.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            use_deterministic_kernels()
        self.amp_dtype = resolve_amp_dtype(cfg.train.amp, self.device)
        self.labels = list(cfg.data.labels)
        self.writer: Any = None
        self.epoch_log = EpochLogger(cfg, self.labels)  # with the TensorBoard writer once fit() opens it
        self._stop_requested = False
        self._resume_state: dict[str, Any] | None = None  # the checkpoint, once _check_run_dir read it
        self._adopt_pretrained_input()

    def _adopt_pretrained_input(self) -> None:
        """Chest-X-ray weights were trained on their own intensity scaling and size: the run (and so its
        bundle, hence evaluation and scoring) uses it, unless the config set those keys itself."""
        entry = expected_input(self.cfg.model.weights)
        if entry is not None:
            for note in adopt_expected_input(self.cfg.preprocess, entry):
                self._log_main("%s", note)

    # ------------------------------------------------------------------ set-up
    def _log_main(self, msg: str, *args: Any) -> None:
        if self.dist.is_main:
            log.info(msg, *args)

    def _data(self) -> None:
        loaders = create_loaders(self.cfg, self.dist, pin_memory=self.device.type == "cuda")
        self._audit(loaders.frame)
        self.train_frame, self.val_frame = loaders.train_frame, loaders.val_frame
        self.train_set, self.val_set = loaders.train_set, loaders.val_set
        self.train_loader, self.val_loader = loaders.train_loader, loaders.val_loader
        self.train_sampler, self.generator = loaders.train_sampler, loaders.generator
        self.pos_weight = None
        if self.cfg.train.imbalance == "pos_weight" and self.cfg.model.task != "multiclass":
            targets = self.train_set.targets
            pos = np.nansum(targets, axis=0)
            neg = np.sum(~np.isnan(targets), axis=0) - pos
            pw = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0).astype(np.float32)
            self.pos_weight = torch.from_numpy(pw[: _num_outputs(self.cfg)]).to(self.device)

    def _audit(self, frame: pd.DataFrame) -> None:
        if self.dist.is_main:
            for line in audit_manifest(frame, self.labels, self.cfg.evaluation).summary_lines():
                log.info("audit: %s", line)

    def _model(self) -> None:
        cfg = self.cfg
        model = build_model(cfg.model, _num_outputs(cfg)).to(self.device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = _build_optimizer(cfg, model)
        steps_per_epoch = self._steps_per_epoch()
        total = steps_per_epoch * cfg.train.epochs
        warmup = round(cfg.train.warmup_epochs * steps_per_epoch)
        self.scheduler = warmup_cosine(self.optimizer, total, warmup)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        net: nn.Module = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)
            self._log_main("DDP over %s with %d rank(s)", self.dist.backend, self.dist.world_size)
        if cfg.train.compile:
            net = torch.compile(net)
        self.net = net

    def _steps_per_epoch(self) -> int:
        batches = len(self.train_loader)
        if self.cfg.train.max_steps_per_epoch:
            batches = min(batches, self.cfg.train.max_steps_per_epoch * self.cfg.train.grad_accum_steps)
        return max(1, math.ceil(batches / self.cfg.train.grad_accum_steps))

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = self.cfg.train
        if self.cfg.model.task == "multiclass":
            return multiclass_ce(logits, targets, t.label_smoothing)
        return masked_bce(logits, targets[:, : logits.shape[1]], self.pos_weight, t.label_smoothing)

    # ------------------------------------------------------------------ checkpoints
    def _state(self, run: RunState) -> dict[str, Any]:
        return {
            **run.to_checkpoint(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "loader_generator": self.generator.get_state(),
            "config_json": json.dumps(self.cfg.to_yaml_dict()),
            "labels": self.labels,
        }

    def _restore(self) -> RunState:
        path = self.run_dir / CHECKPOINT_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from (was this run directory trained?)")
        state = self._resume_state or load_checkpoint(path)
        self._resume_state = None
        if list(state["labels"]) != self.labels:
            raise ValueError(
                f"{path}: checkpoint labels {state['labels']} differ from data.labels {self.labels}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        self.generator.set_state(state["loader_generator"])
        run = RunState.from_checkpoint(state)
        where = f"epoch {run.epoch}"
        if run.partial:
            where += f" and {run.partial['micro']} batch(es) of epoch {run.epoch + 1}"
        self._log_main("resuming %s after %s", self.run_dir, where)
        return run

    # ------------------------------------------------------------------ loop
    def _should_stop(self, epoch: int, steps: int) -> bool:
        """True once Ctrl-C (SIGINT) asked the run to stop at the next optimiser-step boundary."""
        return self._stop_requested

    def _train_one_epoch(self, epoch: int, partial: dict[str, Any] | None = None) -> dict[str, float]:
        cfg = self.cfg.train
        self.net.train()
        frozen = epoch < cfg.freeze_epochs
        _set_backbone_trainable(self.model, not frozen)
        self.train_sampler.set_epoch(epoch)
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        loss_sum = torch.zeros((), device=self.device)
        seen = steps = micro = 0
        prior_seconds = 0.0
        if partial:  # mid-epoch resume: replay the epoch's shuffle, skip the batches already trained
            self.generator.set_state(partial["epoch_generator"])
            micro, steps, seen = int(partial["micro"]), int(partial["steps"]), int(partial["seen"])
            loss_sum += float(partial["loss_sum"])
            prior_seconds = float(partial.get("seconds", 0.0))
            self.train_sampler.skip = micro * cfg.batch_size
        epoch_generator = partial["epoch_generator"] if partial else self.generator.get_state()
        max_micro = cfg.max_steps_per_epoch * cfg.grad_accum_steps if cfg.max_steps_per_epoch else None
        start = time.perf_counter() - prior_seconds
        throughput = Throughput(start, self.dist.world_size)
        total = min(len(self.train_loader), max_micro) if max_micro else len(self.train_loader)
        shown = self.dist.is_main and show_progress()
        bar = self.epoch_log.bar(self.train_loader, epoch, micro, total, frozen, shown)
        self.optimizer.zero_grad(set_to_none=True)
        global_step = self.scheduler.last_epoch
        for batch in bar:
            if batch.image is None:
                continue
            images = batch.image.to(self.device, non_blocking=True, memory_format=memory_format)
            targets = batch.target.to(self.device, non_blocking=True)
            if epoch == 0 and micro == 0:
                self.epoch_log.augmented_batch(batch.image, epoch)
            with autocast_for(self.device, self.amp_dtype):
                logits = self.net(images)
            loss = self._loss(logits, targets)
            self.scaler.scale(loss / cfg.grad_accum_steps).backward()
            loss_sum += loss.detach() * images.shape[0]
            seen += images.shape[0]
            throughput.add(images.shape[0])
            micro += 1
            if micro % cfg.grad_accum_steps == 0:
                self.scaler.unscale_(self.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=float("inf"))
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                steps += 1
                global_step += 1
                if steps % cfg.log_every_steps == 0:  # the only host-device sync in the loop
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise TrainingDiverged(
                            f"loss became {value} at epoch {epoch + 1}, step {steps}; lower train.lr or "
                            f"set train.amp=off. The last good checkpoint is {self.run_dir / CHECKPOINT_NAME}"
                        )
                    rate = throughput.read()
                    self.epoch_log.step(bar, value, float(grad_norm), rate, self.optimizer, global_step)
            if max_micro and micro >= max_micro:
                break
            if micro % cfg.grad_accum_steps == 0 and self._should_stop(epoch, steps):
                bar.close()
                raise _StopAtStep(
                    epoch,
                    {
                        "epoch_generator": epoch_generator,
                        "micro": micro,
                        "steps": steps,
                        "seen": seen,
                        "loss_sum": float(loss_sum),
                        "seconds": time.perf_counter() - start,
                    },
                )
        bar.close()
        elapsed = time.perf_counter() - start
        if seen == 0:
            raise RuntimeError("no training sample could be decoded; check the errors logged above")
        mean_loss = float(loss_sum) / seen
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(
                f"training loss is {mean_loss} after epoch {epoch + 1}; lower train.lr or set train.amp=off. "
                f"The last good checkpoint is kept in {self.run_dir / CHECKPOINT_NAME}"
            )
        return {
            "train_loss": mean_loss,
            "train_images_per_sec": seen * self.dist.world_size / max(elapsed, 1e-9),
            "train_seconds": elapsed,
        }

    def _install_interrupt_handler(self) -> Any:
        """First Ctrl-C finishes the current step and saves; a second one aborts at once."""
        if self.dist.enabled or threading.current_thread() is not threading.main_thread():
            return None

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            log.warning("Ctrl-C: finishing the current step, then saving (press Ctrl-C again to abort)")

        return signal.signal(signal.SIGINT, request_stop)

    def _validate(self, epoch: int, with_features: bool = False) -> ValidationPass:
        """One pass over the validation scans, every rank's rows gathered.

        ``with_features``: the same pass also collects the pooled features (eager model; the scope's
        OOD reference), so the end of training does not infer the validation scans twice.
        """
        net = self.net if not self.dist.enabled else self.model
        parts: list[torch.Tensor] | None = None
        if with_features:
            from xraytriage.models.features import LogitsAndFeatures

            net, parts = LogitsAndFeatures(self.model), []
        logits, indices, failures = predict_loader(
            net, self.val_loader, self.device, self.amp_dtype, self.cfg.train.channels_last, features=parts
        )
        pooled = torch.cat(parts).numpy() if parts else np.zeros((0, 0), np.float32)
        gathered = dist_utils.gather_objects((logits, indices, pooled), self.dist)
        decoded = [g for g in gathered if len(g[1])]
        logits = np.concatenate([g[0] for g in decoded]) if decoded else logits
        pooled = np.concatenate([g[2] for g in decoded]) if decoded and parts is not None else pooled
        indices = np.concatenate([g[1] for g in gathered])
        # DistributedSampler pads with repeated samples: keep each index once.
        indices, first = np.unique(indices, return_index=True)
        logits = logits[first]
        features = (pooled[first], indices) if with_features else None
        probs = probabilities(logits, self.cfg.model.task)
        frame = predictions_frame(self.val_frame, self.labels, probs, indices)
        targets = torch.from_numpy(label_matrix(frame, self.labels))
        val_loss = float(self._loss(torch.from_numpy(logits), targets))
        metrics: dict[str, Any] = {"val_loss": val_loss, "val_failed": len(failures)}
        from xraytriage.evaluation.metrics import binary_metrics
        from xraytriage.evaluation.thresholds import choose_operating_point

        aurocs = []
        patients = frame["patient_id"].to_numpy()
        for label in self.labels:
            y, p = frame[label].to_numpy(float), frame[prob_column(label)].to_numpy(float)
            thr = choose_operating_point(y, p, self.cfg.evaluation.operating_point, patients).threshold
            m = binary_metrics(y, p, thr)
            metrics[f"{label}/threshold"] = thr
            for key in ("auroc", "sensitivity", "specificity", "miss_rate", "auprc"):
                metrics[f"{label}/{key}"] = m.get(key)
            if m.get("auroc") is not None:
                aurocs.append(m["auroc"])
        metrics["val_mean_auroc"] = float(np.mean(aurocs)) if aurocs else float("nan")
        return ValidationPass(metrics, frame, logits, features)

    # ------------------------------------------------------------------ TensorBoard
    def _open_writer(self) -> None:
        if self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        self.epoch_log = EpochLogger(self.cfg, self.labels, self.writer)

    # ------------------------------------------------------------------ main
    def fit(self) -> TrainResult:
        """Train (or resume) holding an exclusive lock on the run directory; the config is written
        only once the run directory has been checked (a refused run changes nothing)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            refusal: Exception | None = None
            if self.dist.is_main:
                try:
                    where = f"run directory {self.run_dir}"
                    stack.enter_context(exclusive_lock(lock_file_for(self.run_dir), where))
                    self._check_run_dir()
                except (OutputLocked, FileExistsError, FileNotFoundError, ConfigError) as exc:
                    refusal = exc
            refusal = dist_utils.broadcast_object(refusal, self.dist)
            if refusal is not None:
                raise refusal
            if self.dist.is_main:
                save_config(self.cfg, self.run_dir / "config.yaml")
            return self._fit()

    def _check_run_dir(self) -> None:
        """A new run needs a directory without a checkpoint; a resumed one the same data, preprocessing
        and model settings as the checkpoint (a bundle must never claim preprocessing it was not
        trained with). Epochs, learning rate and the like may change."""
        path = self.run_dir / CHECKPOINT_NAME
        if not self.resume:
            if path.exists():
                raise FileExistsError(
                    f"{self.run_dir} already holds a training checkpoint: pass --resume to continue it, "
                    "or choose a new --out directory"
                )
            return
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from (was this run directory trained?)")
        self._resume_state = load_checkpoint(path)
        changed = resume_changes(json.loads(self._resume_state["config_json"]), self.cfg)
        if changed:
            shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
            raise ConfigError(
                f"{self.run_dir}: --resume with changed settings ({shown}); data, preprocess and model "
                "settings must stay as trained (train.epochs and the like may change): restore them, "
                "or start a new run with another --out"
            )

    def _fit(self) -> TrainResult:
        cfg = self.cfg
        seed_everything(cfg.seed + self.dist.rank)
        self._data()
        self._model()
        run = self._restore() if self.resume else RunState()
        self._open_writer()
        self._log_main(
            "training %s on %d scans (val %d) on %s%s, %d epoch(s)",
            cfg.model.arch,
            len(self.train_set),
            len(self.val_set),
            self.device,
            f" with {self.amp_dtype}".replace("torch.", "") if self.amp_dtype else "",
            cfg.train.epochs,
        )
        previous_handler = self._install_interrupt_handler()
        try:
            for epoch in range(run.epoch, cfg.train.epochs):
                record: dict[str, Any] = {"epoch": epoch + 1}
                record.update(self._train_one_epoch(epoch, run.partial or None))
                validated = self._validate(epoch)
                val_frame = validated.frame
                record.update(validated.metrics)
                improved = run.finish_epoch(record)
                if improved and self.dist.is_main:
                    save_checkpoint(
                        self.run_dir / BEST_WEIGHTS,
                        {
                            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                            "epoch": epoch + 1,
                        },
                    )
                if self.dist.is_main:
                    save_checkpoint(self.run_dir / CHECKPOINT_NAME, self._state(run))
                    self.epoch_log.epoch(epoch, record, val_frame, self.model)
                    log.info(
                        "epoch %d/%d  train loss %.4f  val loss %.4f  val AUROC %.4f  %.0f img/s%s",
                        epoch + 1,
                        cfg.train.epochs,
                        record["train_loss"],
                        record["val_loss"],
                        record["val_mean_auroc"],
                        record["train_images_per_sec"],
                        "  *best*" if improved else "",
                    )
                patience = cfg.train.early_stopping_patience
                if patience and run.bad_epochs >= patience:
                    self._log_main("early stopping: no val AUROC improvement for %d epoch(s)", patience)
                    break
        except _StopAtStep as stop:
            if self.dist.is_main:
                interrupted = dataclasses.replace(run, epoch=stop.epoch, partial=stop.partial)
                save_checkpoint(self.run_dir / CHECKPOINT_NAME, self._state(interrupted))
                log.warning(
                    "interrupted: saved epoch %d after %d batch(es) to %s; continue with "
                    "`xraytriage train --resume --config ... --out %s`",
                    stop.epoch + 1,
                    stop.partial["micro"],
                    self.run_dir / CHECKPOINT_NAME,
                    self.run_dir,
                )
            raise
        except KeyboardInterrupt:
            if self.dist.is_main:
                log.warning(
                    "interrupted: the checkpoint of the last finished epoch is in %s; continue with --resume",
                    self.run_dir,
                )
            raise
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        return self._finish(run)

    def _calibrate_and_choose(
        self, frame: pd.DataFrame, logits: np.ndarray, metrics: dict[str, Any]
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """Per-label temperatures fitted on the validation *logits*, then each label's operating point
        chosen on the calibrated probabilities that inference will produce (same function, same
        arithmetic), so the stored threshold means on validation what it means when applied.
        ``frame``'s probabilities and ``metrics``' per-label figures are updated to match."""
        from xraytriage.evaluation.calibration import fit_temperatures
        from xraytriage.evaluation.metrics import binary_metrics
        from xraytriage.evaluation.thresholds import choose_operating_point

        cfg = self.cfg
        temperatures = dict.fromkeys(self.labels, 1.0)
        if cfg.evaluation.temperature_scaling and cfg.model.task != "multiclass":
            fitted = fit_temperatures(logits, frame[self.labels].to_numpy(float))
            temperatures = dict(zip(self.labels, fitted))
            probs = probabilities(logits, cfg.model.task, fitted)
            for j, label in enumerate(self.labels):
                frame[prob_column(label)] = probs[:, j].astype(np.float64)
        operating_points = {}
        for label in self.labels:
            y, p = frame[label].to_numpy(float), frame[prob_column(label)].to_numpy(float)
            op = choose_operating_point(y, p, cfg.evaluation.operating_point, frame["patient_id"].to_numpy())
            operating_points[label] = op
            m = binary_metrics(y, p, op.threshold)
            metrics[f"{label}/threshold"] = op.threshold
            for key in ("sensitivity", "specificity", "miss_rate"):
                metrics[f"{label}/{key}"] = m.get(key)
        return temperatures, operating_points

    def _record_scope(
        self, val_predictions: pd.DataFrame, val_features: tuple[np.ndarray, np.ndarray] | None
    ) -> Any:
        """The validated scope (headers of the training and validation scans, the feature reference,
        the calibrated validation probabilities); see :mod:`xraytriage.scope`. ``val_features``: the
        validation scans' features from the final validation pass (None: the recorder runs a pass)."""
        from xraytriage.scope.collect import FeaturePass, ScopeRecorder

        cfg = self.cfg
        features = FeaturePass(
            self.model,
            cfg.preprocess,
            cfg.model.in_channels,
            self.device,
            self.amp_dtype,
            cfg.train.batch_size,
            cfg.data.num_workers,
            self.train_set.image_source,
        )
        probabilities = {label: val_predictions[prob_column(label)].tolist() for label in self.labels}
        self._log_main("recording the validated scope (headers and features of the training scans)")
        scope = ScopeRecorder(cfg.scope, features, cfg.seed).record(
            self.train_frame, self.val_frame, probabilities, val_features
        )
        self.model.train(False)
        return scope

    def _finish(self, run: RunState) -> TrainResult:
        cfg = self.cfg
        dist_utils.barrier(self.dist)
        best_path = self.run_dir / BEST_WEIGHTS
        if best_path.is_file():
            self.model.load_state_dict(load_checkpoint(best_path)["model"])
        # The scope's validation features ride along the final validation pass when that pass runs the
        # eager model anyway (not under train.compile, whose logits would otherwise change).
        scope_cfg = cfg.scope
        together = scope_cfg.enabled and scope_cfg.ood and (self.dist.enabled or self.net is self.model)
        validated = self._validate(run.best_epoch - 1, with_features=together)
        metrics, frame, logits = validated.metrics, validated.frame, validated.logits
        temperatures, operating_points = self._calibrate_and_choose(frame, logits, metrics)
        thresholds = {label: op.threshold for label, op in operating_points.items()}
        scope = self._record_scope(frame, validated.features) if self.dist.is_main else None
        result = TrainResult(
            run_dir=self.run_dir,
            bundle_path=self.run_dir / BUNDLE_NAME,
            best_epoch=run.best_epoch,
            best_score=run.best_score,
            history=run.history,
            thresholds=thresholds,
            val_metrics=metrics,
            operating_points=operating_points,
        )
        if self.dist.is_main:
            save_bundle(
                result.bundle_path,
                self.model,
                cfg.model,
                cfg.preprocess,
                self.labels,
                thresholds,
                cfg.model.task,
                temperatures=temperatures,
                operating_points={label: op.to_json() for label, op in operating_points.items()},
                scope=scope.to_payload() if scope is not None else None,
                metadata={
                    "best_epoch": run.best_epoch,
                    "val_mean_auroc": run.best_score,
                    "epochs_run": len(run.history),
                    "operating_point": cfg.evaluation.operating_point.model_dump(mode="json"),
                    "train_scans": len(self.train_set),
                    "val_scans": len(self.val_set),
                    "torch": str(torch.__version__),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
            )
            summary = {
                "schema": "xraytriage.train_metrics/1",
                "best_epoch": run.best_epoch,
                "best_val_mean_auroc": run.best_score,
                "thresholds": thresholds,
                "temperatures": temperatures,
                "operating_points": {label: op.to_json() for label, op in operating_points.items()},
                "val": {k: v for k, v in metrics.items()},
                "history": run.history,
            }
            atomic_write_text(
                self.run_dir / "metrics.json", json.dumps(_finite(summary), indent=2, default=_json_default)
            )
            if self.writer is not None:
                hparams = {
                    "arch": cfg.model.arch,
                    "lr": cfg.train.lr,
                    "batch_size": cfg.train.batch_size,
                    "epochs": cfg.train.epochs,
                    "image_size": cfg.preprocess.image_size,
                    "weights": str(cfg.model.weights),
                    "optimizer": cfg.train.optimizer,
                }
                final = {"hparam/val_mean_auroc": run.best_score}
                for label in self.labels:
                    final[f"hparam/val_sensitivity_{label}"] = metrics.get(f"{label}/sensitivity") or 0.0
                self.writer.add_hparams(hparams, final, run_name="hparams")
                self.writer.close()
        dist_utils.cleanup(self.dist)
        return result


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: undefined figures are written as null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value


def train(cfg: Config, run_dir: str | Path, resume: bool = False) -> TrainResult:
    """Train (or resume) a run; the run directory ends with model.pt, metrics.json and config.yaml."""
    return Trainer(cfg, run_dir, resume=resume).fit()
