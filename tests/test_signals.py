"""Issue 35, part 1: a real SIGTERM/SIGUSR1, sent from another process during start-up or during
the final evaluation of `rat train`, exits 75 with a `preempted` file, and `--resume` finishes the
run as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import SRC
from tiny import tiny_run

TINY = tiny_run("eval.aa_n=null", "optim.lr=0.002")


def _env(tmp_path):
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def _rat(tmp_path, *args):
    return subprocess.Popen([sys.executable, "-m", "ratkit", *args], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _settings(*extra):
    return [a for o in (*TINY, *extra) for a in ("--set", o)]


def test_a_notice_during_start_up_exits_75_and_resume_starts_the_run(tmp_path):
    # a model whose second construction is slow: the first is the check before the run directory
    # (preflight), the second the trainer's, so the notice arrives while the run is being built
    (tmp_path / "slow_nets.py").write_text(
        "import pathlib, time\nfrom ratkit.models import SmallCNN\nbuilt = []\n"
        "def Net(**kwargs):\n    built.append(1)\n    if len(built) == 2:\n"
        f"        pathlib.Path({str(tmp_path / 'importing')!r}).write_text('')\n        time.sleep(30)\n"
        "    return SmallCNN(**kwargs)\n")
    run = tmp_path / "run"
    proc = _rat(tmp_path, "train", "--out", str(run), "--quiet", "--no-eval", "--model", "slow_nets:Net",
                *_settings("model.kwargs.in_channels=1", "model.kwargs.input_size=[28,28]",
                           "train.budget_s=null"))  # a plan would build the model once more
    _wait_for(tmp_path / "importing", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert (run / "preempted").exists() and (run / "config.yaml").exists()
    assert not (run / "last.safetensors").exists()
    (tmp_path / "slow_nets.py").write_text("from ratkit.models import SmallCNN as Net\n")
    proc = _rat(tmp_path, "train", "--resume", str(run), "--model", "slow_nets:Net", "--quiet", "--no-eval")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert (run / "last.safetensors").exists() and not (run / "preempted").exists()


def test_a_notice_while_the_users_model_is_checked_exits_75_before_any_run_directory(tmp_path):
    """The check of a user's model runs before the run directory exists: a notice there leaves
    nothing to resume, and says so; the same command then starts the run."""
    (tmp_path / "slow_nets.py").write_text(
        "import pathlib, time\nfrom ratkit.models import SmallCNN as Net\n"
        f"pathlib.Path({str(tmp_path / 'importing')!r}).write_text('')\ntime.sleep(30)\n")
    run = tmp_path / "run"
    proc = _rat(tmp_path, "train", "--out", str(run), "--quiet", "--no-eval", "--model", "slow_nets:Net",
                *_settings("model.kwargs.in_channels=1", "model.kwargs.input_size=[28,28]"))
    _wait_for(tmp_path / "importing", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75 and "nothing was saved yet" in err, err
    assert not run.exists()


def test_a_notice_during_the_final_evaluation_exits_75_and_resume_finishes_it(tmp_path):
    eval_settings = ("eval.attacks=clean,pgd20", "eval.n=null", "eval.batch_size=8")
    straight = _rat(tmp_path, "train", "--out", str(tmp_path / "straight"), "--quiet", *_settings(*eval_settings))
    assert straight.wait(timeout=600) == 0
    run = tmp_path / "run"
    proc = _rat(tmp_path, "train", "--out", str(run), "--quiet", *_settings(*eval_settings))
    _wait_for(run / "best.eval-state", proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert (run / "preempted").exists() and not (run / "eval.json").exists()
    proc = _rat(tmp_path, "train", "--resume", str(run), "--quiet")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    a = json.loads((tmp_path / "straight" / "eval.json").read_text())["attacks"]
    b = json.loads((run / "eval.json").read_text())["attacks"]
    assert {k: v["correct"] for k, v in a.items()} == {k: v["correct"] for k, v in b.items()}
