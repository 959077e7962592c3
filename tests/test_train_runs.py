"""Specifications of the trainer run end to end: exact resume, selection on validation, stops, run directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SRC
from helpers import run_rat as _rat

from ratkit.checkpoints import load_model, read_checkpoint
from ratkit.config import attack_precision, load_config
from ratkit.methods import TRADES
from ratkit.train import TrainingStopped, evaluate_run, learning_rate, train

TINY = ["model.kwargs.channels=[4,8]", "model.kwargs.hidden=16", "attack.steps=2", "train.batch_size=32",
        "train.val_n=64", "eval.attacks=clean,pgd20", "eval.n=64", "eval.aa_n=null", "optim.lr=0.002"]


def _synthetic(*extra):
    return load_config("fmnist-cpu", ["data.dataset=synthetic", "data.val_size=128", "data.train_subset=256",
                                      "train.epochs=2", *TINY, *extra])


def _weights(run_dir, name="last"):
    tensors, _ = read_checkpoint(Path(run_dir) / name)
    return {k: v for k, v in tensors.items() if k.startswith("model/") or k.startswith("optim/")}


def _history(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "seconds" not in k and k != "images_per_s"} for r in rows]


def test_same_seed_gives_bit_identical_runs(tmp_path):
    a = train(_synthetic(), tmp_path / "a", quiet=True)
    b = train(_synthetic(), tmp_path / "b", quiet=True)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(_synthetic("train.seed=1"), tmp_path / "c", quiet=True)
    assert not torch.equal(_weights(c)["model/head.weight"], wa["model/head.weight"])


@pytest.mark.parametrize("stop_at", [3, 8])  # mid-epoch 1, and the end of epoch 1 (8 steps per epoch)
@pytest.mark.parametrize("extra", [[], ["method.awp=true", "method.awp_warmup=1"]])
def test_interrupted_and_resumed_run_ends_bit_identical(tmp_path, stop_at, extra):
    cfg = _synthetic(*extra)
    whole = train(cfg, tmp_path / "whole", quiet=True)

    def interrupt(progress):
        if progress.global_step == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", quiet=True, on_step=interrupt)
    resumed = train(cfg, tmp_path / "cut", resume=True, quiet=True)
    wa, wb = _weights(whole), _weights(resumed)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert _history(whole) == _history(resumed)


def test_train_takes_no_private_argument_fit_enters_the_trainer_its_own_way():
    import inspect

    from ratkit.train.loop import train_built

    assert not [name for name in inspect.signature(train).parameters if name.startswith("_")]
    assert {"data", "model", "method"} <= set(inspect.signature(train_built).parameters)


def test_best_checkpoint_is_chosen_on_validation_robust_accuracy(tmp_path):
    run = train(_synthetic("train.epochs=3"), tmp_path / "r", quiet=True)
    history = _history(run)
    best_epoch = max(range(len(history)), key=lambda i: (history[i]["val_pgd20"], -i)) + 1
    _, meta = load_model(run / "best")
    assert meta["epoch"] == best_epoch
    assert meta["val"]["val_pgd20"] == history[best_epoch - 1]["val_pgd20"]


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import ratkit.train.loop as train_module

    calls = {"n": 0}

    class ExplodesInEpochTwo(TRADES):
        def terms(self, out):
            calls["n"] += 1
            terms = super().terms(out)
            if calls["n"] > 10:  # epoch 1 has 8 steps
                terms["natural"] = terms["natural"] * float("nan")
            return terms

    original = train_module.build_method

    def build(cfg):
        m = original(cfg)
        m.base = ExplodesInEpochTwo(attack=m.base.attack, beta=m.base.beta)
        return m

    monkeypatch.setattr(train_module, "build_method", build)
    with pytest.raises(TrainingStopped, match="non-finite"):
        train(_synthetic(), tmp_path / "r", quiet=True)
    tensors, meta = read_checkpoint(tmp_path / "r" / "last")
    assert meta["progress"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model/"))


def test_run_directory_holds_everything_a_user_needs(tmp_path):
    run = train(_synthetic(), tmp_path / "r", quiet=True)
    evaluate_run(run, _synthetic(), quiet=True)
    for name in ["config.yaml", "metrics.jsonl", "best.safetensors", "best.json", "last.safetensors",
                 "last.json", "eval.json", "eval.csv", "curves.png"]:
        assert (run / name).is_file(), name
    # the config as given, with what the run fixes at its start recorded: the validation eps
    # what the run filled in when it started: the validation eps, and auto's attack precision on this machine
    assert load_config(run / "config.yaml") == _synthetic("train.val_eps=0.1",
                                                          f"attack.precision={attack_precision(_synthetic())}")
    report = json.loads((run / "eval.json").read_text())
    assert report["attacks"]["clean"]["n"] == 64


def test_validation_and_final_evaluation_use_the_protocol_eps_unless_eval_eps_is_set(tmp_path, monkeypatch, capsys):
    import ratkit.train.loop as train_module
    from ratkit.config import evaluation_eps
    from ratkit.data import dataset_info

    protocol = dataset_info("synthetic").linf_eps
    wider = _synthetic("train.epochs=1", f"attack.eps={2 * protocol}")
    assert evaluation_eps(wider) == protocol  # what rat eval uses on the same checkpoint
    assert evaluation_eps(_synthetic(f"attack.eps={2 * protocol}", "eval.eps=0.05")) == 0.05
    seen = []
    real = train_module.evaluate
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **k: seen.append(k["eps"]) or real(*a, **k))
    run = train(wider, tmp_path / "r")
    evaluate_run(run, wider, quiet=True)
    assert seen == [protocol]  # validation
    assert json.loads((run / "eval.json").read_text())["eps"] == protocol
    assert f"validation and evaluation at Linf eps={protocol:.4g}" in capsys.readouterr().out


def test_a_second_run_into_the_same_directory_is_refused(tmp_path):
    from ratkit.checkpoints import CheckpointError

    train(_synthetic("train.epochs=1"), tmp_path / "r", quiet=True)
    with pytest.raises(CheckpointError, match="--resume"):
        train(_synthetic("train.epochs=1"), tmp_path / "r", quiet=True)


def test_learning_rate_schedules():
    cfg = load_config("fmnist-cpu", ["train.epochs=10", "optim.lr=0.1"])
    cosine = [learning_rate(cfg, s, 100) for s in (0, 500, 999)]
    assert cosine[0] == pytest.approx(0.1) and cosine[1] == pytest.approx(0.05) and cosine[2] < 1e-4
    multi = load_config("fmnist-cpu", ["train.epochs=10", "optim.lr=0.05", "optim.schedule=multistep",
                                       "optim.milestones=[5,8]"])
    # milestones count epochs from 1, as the authors' scripts: with 10 steps per epoch the 5th epoch
    # (steps 40-49) is the first at the decayed rate, the 8th (steps 70-79) the first at the second
    assert [learning_rate(multi, s, 10) for s in (39, 40, 69, 70)] == pytest.approx([0.05, 0.005, 0.005, 0.0005])
    warm = load_config("fmnist-cpu", ["optim.lr=0.05", "optim.schedule=constant", "optim.warmup_epochs=1"])
    assert learning_rate(warm, 0, 10) == pytest.approx(0.005) and learning_rate(warm, 10, 10) == pytest.approx(0.05)
    one = load_config("fmnist-cpu", ["train.epochs=10", "optim.lr=0.05", "optim.schedule=onecycle"])
    assert learning_rate(one, 400, 100) == pytest.approx(0.05) and learning_rate(one, 1000, 100) == pytest.approx(0)


@pytest.mark.parametrize("args,needle", [
    (["--set", "method.alpha=2"], "method.rat.alpha"),
    (["--set", "optim.lrr=0.1"], "optim.lrr"),
    (["--epochs", "0"], "train.epochs"),
    (["--method", "trades", "--set", "method.pairing=original"], "method.rat.pairing"),
    (["--config", "no-such-preset"], "no-such-preset"),
])
def test_bad_config_gets_one_line_naming_the_field_and_exit_2(args, needle):
    result = _rat("train", "--dataset", "synthetic", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]


FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir() and not os.environ.get("RAT_DATA_DIR"),
                                   reason="Fashion-MNIST is installed by `make test` (Debian dataset-fashion-mnist)")


@needs_fashion
@pytest.mark.parametrize("method", ["at", "trades", "mart"])
@pytest.mark.parametrize("rat", [False, True])
@pytest.mark.parametrize("awp", [False, True])
def test_every_method_with_and_without_rat_and_awp_trains_on_real_fashion_mnist(tmp_path, method, rat, awp):
    cfg = load_config("fmnist-cpu", [f"method.name={method}", f"method.rat={str(rat).lower()}",
                                     f"method.awp={str(awp).lower()}", "data.train_subset=96", "data.val_size=64",
                                     "train.epochs=1", *TINY])
    run = train(cfg, tmp_path / "r", quiet=True)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert torch.isfinite(torch.tensor(row["train_loss"]))
    assert ("train_taylor1" in row) == rat
    model, meta = load_model(run / "best")
    assert meta["method"] == "-".join(["awp"] * awp + ["rat"] * rat + [method])
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_ctrl_c_saves_progress_and_exits_cleanly_then_resume_finishes(tmp_path):
    import signal
    import time

    run = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [sys.executable, "-m", "ratkit", "train", "--dataset", "synthetic", "--out", str(run), "--epochs", "8",
            "--no-eval", "--set", "data.val_size=128", "--set", "data.train_subset=256",
            *[a for kv in TINY for a in ("--set", kv)]]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "last.safetensors").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and f"rat train --resume {run}" in err
    _, meta = read_checkpoint(run / "last")
    done = meta["progress"]["global_step"]
    assert done >= 8  # at least the first epoch was kept
    result = _rat("train", "--resume", str(run), "--no-eval", "--quiet")
    assert result.returncode == 0, result.stderr
    _, meta = read_checkpoint(run / "last")
    assert meta["progress"]["epoch"] == 8


def _rows(*accuracies):
    return [{"epoch": e + 1, "val_pgd20": a} for e, a in enumerate(accuracies)]


def test_collapse_warning_needs_the_margin_for_the_whole_patience():
    from ratkit.train import robust_collapse

    # the RAT-AT curve of docs/results/bases/rat-at-seed0.json
    curve = [0.606, 0.429, 0.508, 0.364, 0.299]
    assert robust_collapse(_rows(*curve[:2]), 5.0, 2) is None  # one epoch below: not yet
    assert robust_collapse(_rows(*curve[:3]), 5.0, 2) is not None  # 42.9 and 50.8, both > 5 below 60.6
    message = robust_collapse(_rows(*curve), 5.0, 2)
    assert "29.90% at epoch 5" in message and "60.60% at epoch 1" in message
    assert robust_collapse(_rows(0.60, 0.57, 0.56), 5.0, 2) is None  # within the margin
    assert robust_collapse(_rows(0.60, 0.50, 0.56), 5.0, 2) is None  # the last epoch recovered
    assert robust_collapse(_rows(0.50, 0.55, 0.60), 5.0, 2) is None  # rising
    assert robust_collapse(_rows(0.60, 0.50, 0.50), 20.0, 2) is None  # the margin is configurable
    assert robust_collapse(_rows(0.60, 0.50, 0.50), None, 2) is None  # null: off
    assert robust_collapse(_rows(0.60, 0.50, 0.50), 5.0, 3) is None  # not enough epochs yet
    # an unvalidated latest epoch (train.val_every) does not repeat the warning of the ones before
    assert robust_collapse([*_rows(*curve[:3]), {"epoch": 4}], 5.0, 2) is None


def test_trainer_writes_the_collapse_warning_to_metrics_and_stderr(tmp_path, monkeypatch, capsys):
    import ratkit.train as train_module

    accuracies = iter([0.60, 0.40, 0.30, 0.30])
    monkeypatch.setattr(train_module.Trainer, "_validate",
                        lambda self: {"val_clean": 0.8, "val_pgd20": next(accuracies)})
    run = train(_synthetic("train.epochs=4", "train.collapse_margin=10", "train.collapse_epochs=2"),
                tmp_path / "r", quiet=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert ["warning" in r for r in rows] == [False, False, True, True]
    assert "more than 10 points below its best (60.00% at epoch 1)" in rows[2]["warning"]
    assert capsys.readouterr().err.count("warning: validation PGD-20") == 2



def test_trainer_warns_when_validation_finds_one_output_for_every_image(tmp_path, monkeypatch, capsys):
    import ratkit.train as train_module

    accuracies = iter([(0.60, 0.40), (0.08, 0.08), (0.09, 0.09)])  # synthetic data: 10 classes
    monkeypatch.setattr(train_module.Trainer, "_validate",
                        lambda self: dict(zip(("val_clean", "val_pgd20"), next(accuracies))))
    run = train(_synthetic("train.epochs=3"), tmp_path / "r", quiet=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert ["warning" in r for r in rows] == [False, False, True]
    assert "stayed at chance (9.00% clean" in rows[2]["warning"]
    assert capsys.readouterr().err.count("one output for every image") == 1

def test_val_every_validates_every_nth_and_the_last_epoch_and_picks_best_among_them(tmp_path, monkeypatch):
    import ratkit.train as train_module

    accuracies = iter([0.50, 0.70, 0.60])  # epochs 2, 4 and 5 (the last) are validated
    calls = []

    def fake_validate(self):
        calls.append(self.progress.epoch)
        return {"val_clean": 0.8, "val_pgd20": next(accuracies)}

    monkeypatch.setattr(train_module.Trainer, "_validate", fake_validate)
    run = train(_synthetic("train.epochs=5", "train.val_every=2"), tmp_path / "r", quiet=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and calls == [1, 3, 4]  # progress.epoch counts finished epochs before this one
    assert [r["epoch"] for r in rows if "val_pgd20" in r] == [2, 4, 5]
    assert rows[-1]["best_epoch"] == 4
    assert json.loads((run / "best.json").read_text())["epoch"] == 4
    assert (run / "curves.png").stat().st_size > 0


def test_an_unvalidated_epoch_repeats_no_collapse_warning(tmp_path, monkeypatch):
    import ratkit.train as train_module

    accuracies = iter([0.60, 0.40, 0.30, 0.30])  # epochs 2, 4, 6 and 8 are validated
    monkeypatch.setattr(train_module.Trainer, "_validate",
                        lambda self: {"val_clean": 0.8, "val_pgd20": next(accuracies)})
    run = train(_synthetic("train.epochs=8", "train.val_every=2", "train.collapse_margin=10",
                           "train.collapse_epochs=2"), tmp_path / "r", quiet=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # epochs 6 and 8 collapse; epoch 7, between them, was not validated and warns of nothing new
    assert ["warning" in r for r in rows] == [False] * 5 + [True, False, True]


def test_val_every_must_be_positive():
    from ratkit.config import ConfigError

    with pytest.raises(ConfigError, match="train.val_every"):
        _synthetic("train.val_every=0")


def test_the_constant_output_warning_needs_chance_accuracy_that_pgd_cannot_lower():
    from ratkit.train import constant_output

    def rows(*pairs):
        return [{"epoch": e + 1, "val_clean": c, "val_pgd20": r} for e, (c, r) in enumerate(pairs)]

    # awp-rat-exact-trades-seed0 of the regime grid: 8.2% clean and PGD-20 at every validation
    collapsed = rows((0.082, 0.082), (0.082, 0.082), (0.082, 0.082))
    assert constant_output(collapsed[:1], 10, 2) is None  # one validation: not yet
    message = constant_output(collapsed, 10, 2)
    assert "8.20% clean" in message and "one output for every image" in message
    assert constant_output(collapsed, 10, 3) is not None and constant_output(collapsed, 10, 4) is None
    assert constant_output(rows((0.40, 0.20), (0.08, 0.08), (0.09, 0.09)), 10, 2) is not None  # it fell there
    assert constant_output(rows((0.08, 0.08), (0.09, 0.09), (0.40, 0.20)), 10, 2) is None  # it recovered
    assert constant_output(rows((0.12, 0.05), (0.13, 0.06)), 10, 2) is None  # learning: the attack lowers it
    assert constant_output(rows((0.12, 0.12), (0.13, 0.13)), 100, 2) is None  # above chance of 100 classes
    assert constant_output([*collapsed, {"epoch": 4}], 10, 2) is None  # an unvalidated epoch says nothing new
