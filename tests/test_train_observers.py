"""Specifications of the trainer's observers and state (ratkit.train), apart from the loop."""

import json

import pytest
import torch

from ratkit.train.run_log import RunLog
from ratkit.train.state import EpochSums, Progress
from ratkit.train.stopping import StepBoundaryInterrupt, StopConditions, TrainingPreempted

# the `progress` of a `last` written mid-epoch before EpochSums existed (a RAT-TRADES run)
SAVED_PROGRESS = {
    "epoch": 1, "step_in_epoch": 3, "global_step": 11, "best_val_robust": 0.015625, "best_epoch": 1,
    "train_seconds": 3.0314775879978697,
    "partial": {"loss": 186.04167938232422, "correct": 10, "seen": 96, "seconds": 1.7498719340001117,
                "terms": {"natural": 178.04523086547852, "robust": 0.5238671600818634}},
    "history": [{"epoch": 1, "lr": 0.0016, "train_loss": 1.94, "train_adv_acc": 0.105, "val_pgd20": 0.015625,
                 "best_epoch": 1}],
}


def test_progress_of_an_existing_checkpoint_reads_back_and_saves_the_same():
    progress = Progress.from_dict(json.loads(json.dumps(SAVED_PROGRESS, sort_keys=True)))
    assert progress.partial == EpochSums(loss=186.04167938232422, correct=10, seen=96, seconds=1.7498719340001117,
                                         terms={"natural": 178.04523086547852, "robust": 0.5238671600818634})
    assert progress.to_dict() == SAVED_PROGRESS
    between_epochs = {**SAVED_PROGRESS, "step_in_epoch": 0, "partial": None}
    assert Progress.from_dict(between_epochs).partial is None
    assert Progress.from_dict(between_epochs).to_dict() == between_epochs


def test_epoch_sums_give_the_per_example_means_of_the_metrics_row():
    sums = EpochSums()
    sums.add(EpochSums(loss=64.0, correct=8, seen=32, seconds=0.5, terms={"natural": 32.0, "robust": 16.0}))
    sums.add(EpochSums(loss=32.0, correct=24, seen=32, seconds=1.5, terms={"natural": 16.0, "robust": 16.0}))
    row = sums.row(3, lr=0.1)
    assert list(row) == ["epoch", "lr", "train_loss", "train_adv_acc", "train_natural", "train_robust",
                         "train_seconds", "images_per_s"]
    assert row == {"epoch": 3, "lr": 0.1, "train_loss": 1.5, "train_adv_acc": 0.5, "train_natural": 0.75,
                   "train_robust": 0.5, "train_seconds": 2.0, "images_per_s": 32.0}


def test_only_the_main_rank_writes_the_run_log(tmp_path, capsys):
    row = {"epoch": 1, "train_loss": 1.0, "train_adv_acc": 0.5, "train_seconds": 1.0, "images_per_s": 64.0,
           "warning": "robust accuracy is collapsing"}
    RunLog(tmp_path, epochs=2, quiet=False, main=False).epoch_done(row)
    assert not (tmp_path / "metrics.jsonl").exists() and capsys.readouterr() == ("", "")
    RunLog(tmp_path, epochs=2, quiet=True, main=True).epoch_done(row)
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == row
    assert capsys.readouterr().err == "warning: robust accuracy is collapsing\n"  # even when quiet


def test_stop_conditions_raise_the_request_at_the_step_boundary(tmp_path):
    stops = StopConditions(tmp_path, torch.device("cpu"), time_budget_s=10.0)
    stops.honour_requests()  # no interrupt handler: nothing to honour
    stops.interrupt = StepBoundaryInterrupt()
    stops.honour_requests()
    stops.interrupt.request, stops.interrupt.signal_name = StepBoundaryInterrupt.PREEMPT, "SIGTERM"
    with pytest.raises(TrainingPreempted) as caught:
        stops.honour_requests()
    assert caught.value.signal_name == "SIGTERM" and caught.value.run_dir == tmp_path
    stops.interrupt.request = StepBoundaryInterrupt.CTRL_C
    with pytest.raises(KeyboardInterrupt) as caught:
        stops.honour_requests()
    assert type(caught.value) is KeyboardInterrupt  # Ctrl-C, not a preemption
    assert not stops.budget_reached(Progress(train_seconds=9.0))
    assert stops.budget_reached(Progress(train_seconds=10.0))
    assert not stops.budget_reached(Progress(train_seconds=10.0, step_in_epoch=3))  # an epoch is finished first
