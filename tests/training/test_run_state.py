"""RunState: the best epoch, early-stopping count and checkpoint round trip of a training run."""

from __future__ import annotations

import math

from xraytriage.training.engine import RunState


def _record(epoch: int, auroc: float) -> dict[str, float]:
    return {"epoch": epoch, "val_mean_auroc": auroc, "train_loss": 0.5}


def test_best_epoch_and_bad_epochs() -> None:
    run = RunState(partial={"micro": 3})
    assert run.finish_epoch(_record(1, math.nan))  # the first epoch is the best even when undefined
    assert (run.best_epoch, run.best_score, run.partial) == (1, -math.inf, {})
    assert run.finish_epoch(_record(2, 0.70)) and (run.best_epoch, run.best_score) == (2, 0.70)
    assert not run.finish_epoch(_record(3, 0.70))  # equal is not better
    assert not run.finish_epoch(_record(4, math.nan))
    assert (run.best_epoch, run.bad_epochs, run.epoch, len(run.history)) == (2, 2, 4, 4)
    assert run.finish_epoch(_record(5, 0.71)) and run.bad_epochs == 0


def test_checkpoint_round_trip() -> None:
    run = RunState()
    run.finish_epoch(_record(1, 0.6))
    run.finish_epoch(_record(2, 0.5))
    run.partial = {"micro": 7, "steps": 3}
    state = run.to_checkpoint()
    assert state["best_epoch"] == 1 and state["best_score"] == 0.6 and state["bad_epochs"] == 1
    assert RunState.from_checkpoint(state) == run
