"""Specifications of runs that survive clusters: preemption signals, periodic checkpoints, resume
with changes, starting from given weights, and a time budget that spans resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import SRC
from test_train_runs import TINY, _history, _synthetic, _weights

from ratkit.checkpoints import read_checkpoint, save_model
from ratkit.config import ConfigError, load_config
from ratkit.data import dataset_info
from ratkit.train import (Trainer, TrainingInterrupted, TrainingPreempted, build_model_from_config, learning_rate,
                          prepare_run, train)

EXIT_PREEMPTED = 75


def _env():
    # one thread: on the shared 2-core machine two threads per process thrash (2 s a step, not 0.03)
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def _rat1(*args):
    """`rat` in a fresh interpreter with one thread, as every subprocess here."""
    return subprocess.run([sys.executable, "-m", "ratkit", *args], capture_output=True, text=True, env=_env(),
                          timeout=600)


def _train_args(run, *extra):
    """`rat train` arguments for the config of test_train_runs's `_synthetic()` (8 steps per epoch)."""
    return ["train", "--dataset", "synthetic", "--out", str(run), "--epochs", "2", "--no-eval", "--quiet",
            "--set", "data.val_size=128", "--set", "data.train_subset=256",
            *[a for kv in TINY for a in ("--set", kv)], *extra]


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and not path.exists() and proc.poll() is None:
        time.sleep(0.05)
    assert path.exists() and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "timeout"


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# ----------------------------------------------------------------------------- preemption signals


def test_sigterm_saves_at_a_step_boundary_exits_75_and_the_resumed_run_ends_bit_identical(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = ["--set", "data.train_subset=null"]  # 60 steps per epoch
    reference = _rat1(*_train_args(whole, *args))
    assert reference.returncode == 0, reference.stderr
    proc = subprocess.Popen([sys.executable, "-m", "ratkit", *_train_args(cut, *args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    _wait_for(cut / "last.safetensors", proc)  # written after epoch 1: the signal lands in epoch 2's steps
    time.sleep(0.5)  # usually some steps into epoch 2 (on a loaded machine it may still be epoch 1's end)
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    _, err = proc.communicate(timeout=120)
    assert time.time() - sent < 30
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "Traceback" not in err and f"rat train --resume {cut}" in err and "SIGTERM" in err
    _, meta = read_checkpoint(cut / "last")
    progress = meta["progress"]
    # a step boundary: inside epoch 2 or, if the signal came while epoch 1 was ending (validation,
    # checkpoints), its end; either resumes exactly (the in-process SIGUSR1 test pins an exact step)
    assert progress["epoch"] == 1 and 0 <= progress["step_in_epoch"] < 60
    assert progress["global_step"] == 60 + progress["step_in_epoch"]
    assert (cut / "preempted").read_text().startswith(f"SIGTERM at global step {progress['global_step']};")

    resumed = _rat1("train", "--resume", str(cut), "--no-eval", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert not (cut / "preempted").exists()
    _assert_same_weights(whole, cut)
    assert _history(whole) == _history(cut)


def test_sigusr1_is_a_preemption_notice_and_a_repeat_does_not_cut_the_step(tmp_path):
    before = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)

    def notice(progress):
        if progress.global_step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR1)  # e.g. srun and torchrun both pass it on

    with pytest.raises(TrainingPreempted) as stopped:
        train(_synthetic(), tmp_path / "r", quiet=True, on_step=notice)
    assert stopped.value.signal_name == "SIGUSR1"
    _, meta = read_checkpoint(tmp_path / "r" / "last")
    assert meta["progress"]["global_step"] == 3 and meta["progress"]["step_in_epoch"] == 3
    assert (signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)) == before  # handlers restored


def _worker_pid(parent: int, rank: int) -> int:
    """The pid of torchrun's worker with RANK=rank (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker with RANK={rank} under pid {parent}")


def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_at_one_step_and_rank_0_writes(tmp_path):
    run = tmp_path / "run"
    args = _train_args(run, "--epochs", "3")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "ratkit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    _wait_for(run / "last.safetensors", proc)
    os.kill(_worker_pid(proc.pid, rank=1), signal.SIGTERM)  # rank 0 gets nothing: it must stop all the same
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0  # torchrun reports a worker's non-zero exit as a failure of its own
    assert err.count("rat train: stopped by a signal on another rank") == 1  # from rank 0 only
    _, meta = read_checkpoint(run / "last")
    progress = meta["progress"]
    assert progress["epoch"] == 1 and progress["step_in_epoch"] > 0  # a step boundary in epoch 2
    assert (run / "preempted").read_text().startswith(
        f"a signal on another rank at global step {progress['global_step']};")


# ----------------------------------------------------------------------------- periodic checkpoints

# `rat train` with a line per finished step (global step, training seconds, epoch, step in epoch),
# written from on_step
MARKED_RAT = """
import sys

import ratkit.train
from ratkit.cli import main

marker = open(sys.argv[1], "a", buffering=1)
original = ratkit.train.train


def train(*args, **kwargs):
    def mark(p):
        marker.write(f"{p.global_step} {p.train_seconds!r} {p.epoch} {p.step_in_epoch}\\n")
    return original(*args, on_step=mark, **kwargs)


ratkit.train.train = train
sys.exit(main(sys.argv[2:]))
"""


def _mid_epoch_with_time_left(rows: list[str], every: float, steps_per_epoch: int) -> bool:
    """True when the newest step is at least three intervals into its epoch and the epoch's rest
    will take at least three more (at the mean step time so far). Machine speed varies about 2x,
    so the moment to kill is read from the steps themselves, not from a fixed number of seconds."""
    if not rows:
        return False
    marks = [(float(t), int(e), int(i)) for _, t, e, i in (r.split() for r in rows)]
    seconds, epoch, step_in_epoch = marks[-1]
    epoch_start = max([t for t, e, i in marks if e < epoch], default=0.0)
    per_step = seconds / len(marks)
    return (seconds - epoch_start >= 3 * every
            and (steps_per_epoch - step_in_epoch) * per_step >= 3 * every)


def test_a_kill_9_loses_at_most_checkpoint_every_s_of_training(tmp_path):
    every, steps_per_epoch = 0.05, 60
    run, marker = tmp_path / "r", tmp_path / "steps.txt"
    args = _train_args(run, "--epochs", "3", "--set", "data.train_subset=null",  # 60 steps per epoch
                       "--set", f"train.checkpoint_every_s={every}")
    proc = subprocess.Popen([sys.executable, "-c", MARKED_RAT, str(marker), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        rows = marker.read_text().splitlines() if marker.exists() else []
        if _mid_epoch_with_time_left(rows[:-1], every, steps_per_epoch):  # the last line may be half-written
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before a mid-epoch moment to kill it"
    time.sleep(every / 2)  # so the kill lands anywhere in an interval, not just after a step
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    rows = [line.split() for line in marker.read_text().splitlines() if len(line.split()) == 4]
    seconds = {int(s): float(t) for s, t, _, _ in rows}
    done = max(seconds)  # steps finished at the kill (one that ended in the instant before it has no line yet)
    _, meta = read_checkpoint(run / "last")
    saved = meta["progress"]["global_step"]
    assert meta["progress"]["step_in_epoch"] > 0  # a mid-epoch checkpoint
    assert seconds[saved] == meta["progress"]["train_seconds"]  # the marker and the checkpoint share one clock
    assert saved <= done
    # lost: steps saved+1 .. done; all but the last of them took less than the interval together
    # (the checkpoint follows the first step that completes an interval, and the kill may land
    # while it is being written)
    if done > saved:
        assert seconds[done - 1] - seconds[saved] < every, (saved, done, seconds)


def test_a_run_resumed_from_a_periodic_checkpoint_ends_bit_identical(tmp_path):
    cfg = _synthetic("train.checkpoint_every_s=1e-9")  # `last` after every step
    whole = train(cfg, tmp_path / "whole", quiet=True)

    def crash(progress):  # dies without saving, like a kill -9 or a lost node
        if progress.global_step == 11:
            raise RuntimeError("node lost")

    with pytest.raises(RuntimeError):
        train(cfg, tmp_path / "cut", quiet=True, on_step=crash)
    _, meta = read_checkpoint(tmp_path / "cut" / "last")
    assert meta["progress"]["global_step"] == 10
    resumed = train(cfg, tmp_path / "cut", resume=True, quiet=True)
    _assert_same_weights(whole, resumed)
    assert _history(whole) == _history(resumed)


def test_the_gpu_presets_checkpoint_every_ten_minutes_and_the_cpu_preset_does_not():
    assert load_config("cifar10-rat-trades-wrn34").train.checkpoint_every_s == 600
    assert load_config("cifar100-awp-rat-trades-wrn34").train.checkpoint_every_s == 600
    assert load_config("fmnist-cpu").train.checkpoint_every_s is None


# ----------------------------------------------------------------------------- resume with changes


def test_resume_may_raise_the_epochs_and_the_change_is_recorded(tmp_path):
    run = train(_synthetic("train.epochs=1"), tmp_path / "r", quiet=True)
    result = _rat1("train", "--resume", str(run), "--epochs", "2", "--set", "eval.n=32", "--no-eval", "--quiet")
    assert result.returncode == 0, result.stderr
    rows = _history(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    cfg = load_config(run / "config.yaml")
    assert cfg.train.epochs == 2 and cfg.eval.n == 32
    history = yaml.safe_load((run / "config-history.yaml").read_text())
    assert len(history) == 1 and history[0]["changes"] == {"train.epochs": {"from": 1, "to": 2},
                                                           "eval.n": {"from": 64, "to": 32}}
    _, meta = read_checkpoint(run / "last")
    assert meta["config"]["train"]["epochs"] == 2 and meta["progress"]["epoch"] == 2
    assert rows[1]["lr"] == pytest.approx(learning_rate(cfg, 15, 8))  # cosine over the new total


def test_raising_the_epochs_recomputes_cosine_and_continues_multistep_smoothly():
    short = load_config("fmnist-cpu", ["train.epochs=10", "optim.lr=0.1"])
    longer = load_config("fmnist-cpu", ["train.epochs=20", "optim.lr=0.1"])
    assert learning_rate(short, 999, 100) < 1e-4 and learning_rate(longer, 1000, 100) == pytest.approx(0.05)
    step = ["optim.schedule=multistep", "optim.milestones=[5,8]"]
    short, longer = (load_config("fmnist-cpu", [f"train.epochs={e}", "optim.lr=0.1", *step]) for e in (10, 20))
    assert [learning_rate(longer, s, 100) for s in (999, 1000, 1999)] == pytest.approx(
        [learning_rate(short, 999, 100)] * 3)


@pytest.mark.parametrize("args,field", [
    (["--set", "model.kwargs.hidden=32"], "model.kwargs"),
    (["--seed", "1"], "train.seed"),
    (["--set", "optim.lr=0.1"], "optim.lr"),
    (["--batch-size", "64"], "train.batch_size"),
])
def test_resume_refuses_to_change_what_a_step_computes_with_one_line_and_exit_2(tmp_path, args, field):
    run = prepare_run(_synthetic(), tmp_path / "r")
    config = (run / "config.yaml").read_text()
    result = _rat1("train", "--resume", str(run), *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rat train: error: {field}: cannot change when resuming")
    assert (run / "config.yaml").read_text() == config and not (run / "config-history.yaml").exists()


def test_the_library_refuses_a_resume_under_a_different_model(tmp_path):
    run = prepare_run(_synthetic(), tmp_path / "r")
    with pytest.raises(ConfigError, match="^model.kwargs: cannot change when resuming"):
        train(_synthetic("model.kwargs.hidden=32"), run, resume=True, quiet=True)


# ----------------------------------------------------------------------------- init_from


def _saved_model(path, cfg, seed):
    torch.manual_seed(seed)
    model, spec = build_model_from_config(cfg, dataset_info(cfg.data.dataset))
    return save_model(path, model, spec, {"dataset": cfg.data.dataset})


def test_init_from_starts_a_new_run_from_exactly_those_weights_with_a_fresh_optimizer(tmp_path, monkeypatch):
    source = _saved_model(tmp_path / "given", _synthetic(), seed=5)
    given, _ = read_checkpoint(source)
    seen = {}
    original = Trainer.run_epoch

    def run_epoch(self, epoch):
        if not seen:  # before the first step
            seen.update(weights={k: v.clone() for k, v in self.model.state_dict().items()},
                        optimizer=dict(self.optimizer.state), step=self.progress.global_step)
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)
    run = train(_synthetic("train.epochs=1", f"train.init_from={source}"), tmp_path / "r", quiet=True)
    assert seen["step"] == 0 and seen["optimizer"] == {}
    assert seen["weights"].keys() == {k[len("model/"):] for k in given}
    for k, v in seen["weights"].items():
        assert torch.equal(v, given[f"model/{k}"]), k
    assert load_config(run / "config.yaml").train.init_from == str(source)


def test_init_from_a_different_architecture_is_refused_with_one_line_and_exit_2(tmp_path):
    source = _saved_model(tmp_path / "given", _synthetic(), seed=5)
    result = _rat1(*_train_args(tmp_path / "r", "--set", f"train.init_from={source}",
                               "--set", "model.kwargs.hidden=32"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.init_from" in lines[0] and "hidden 16 (this run: 32)" in lines[0]
    assert not (tmp_path / "r").exists()  # refused before the run directory is made


# ----------------------------------------------------------------------------- time budget


def test_the_time_budget_counts_the_training_before_a_resume(tmp_path, capsys):
    cfg = _synthetic("train.epochs=4", "train.time_budget_s=10000")

    def slow_then_cut(progress):
        progress.train_seconds += 1000  # as if every step took 1000 s more
        if progress.global_step == 10:  # in epoch 2, ~10000 s of training so far
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "r", quiet=True, on_step=slow_then_cut)
    capsys.readouterr()
    train(cfg, tmp_path / "r", resume=True, quiet=True)  # a fresh budget would train all 4 epochs
    assert [r["epoch"] for r in _history(tmp_path / "r")] == [1, 2]  # the partial epoch 2 is finished
    assert capsys.readouterr().out.count("time budget of 10000 s of training reached after epoch 2") == 1


def test_under_torchrun_only_rank_0_prints_the_time_budget_message(tmp_path):
    from test_distributed import TINY as DISTRIBUTED_TINY
    from test_distributed import _run

    result = _run("train", json.dumps([*DISTRIBUTED_TINY, "train.time_budget_s=1e-6"]), tmp_path / "run", 0, 0,
                  ranks=2)
    assert result.stdout.count("time budget of 1e-06 s of training reached after epoch 1") == 1  # as given, not "0 s"
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1


# ----------------------------------------------------------------------------- a dying rank


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_resumes_on_one_process(run: Path) -> None:
    """The run goes on from `last` with one process and completes its epochs."""
    result = _rat1("train", "--resume", str(run), "--no-eval", "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    _, meta = read_checkpoint(run / "last")
    assert meta["progress"]["epoch"] == 6 and meta["progress"]["step_in_epoch"] == 0


def test_a_killed_rank_makes_the_other_exit_non_zero_without_hanging_and_the_run_resumes(tmp_path):
    # two ranks started the way a cluster launcher without torchrun starts them (srun, mpirun):
    # nothing supervises them, so the survivor itself must notice its dead peer
    run = tmp_path / "run"
    args = _train_args(run, "--epochs", "6")
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    ranks = [subprocess.Popen([sys.executable, "-m", "ratkit", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**_env(), **rendezvous, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in (0, 1)]
    try:
        _wait_for(run / "last.safetensors", ranks[0])  # epoch 1 is done: both ranks are in epoch 2
        ranks[1].kill()  # SIGKILL: no handler, no goodbye
        started = time.time()
        _, err = ranks[0].communicate(timeout=120)  # a hang fails here
        assert ranks[0].returncode != 0, err[-2000:]
        assert time.time() - started < 120
    finally:
        for p in ranks:
            p.kill()
            p.wait()
    _assert_resumes_on_one_process(run)


def test_under_torchrun_a_killed_rank_ends_the_job_non_zero_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "ratkit", *_train_args(run, "--epochs", "6")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_for(run / "last.safetensors", proc)
        os.kill(_worker_pid(proc.pid, rank=1), signal.SIGKILL)
        proc.communicate(timeout=120)
        assert proc.returncode != 0
    finally:
        proc.kill()
        proc.wait()
    _assert_resumes_on_one_process(run)
