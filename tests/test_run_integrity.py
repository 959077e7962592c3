"""Issue 35: a resume cannot change what a run is measured by; every run that trained has a best;
bad model arguments are one line with nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import QUICK_EVAL, tiny_run

from ratkit.cli import main
from ratkit.config import ConfigError, load_config
from ratkit.train import resume_config, train, validation_eps

TINY = tiny_run("train.epochs=2", *QUICK_EVAL, "optim.lr=0.002")


def test_a_resume_keeps_the_validation_eps_while_the_final_evaluation_may_change(tmp_path):
    run = train(load_config("fmnist-cpu", TINY + ["eval.eps=0.02"]), tmp_path / "run", quiet=True)
    cfg = resume_config(run, ["train.epochs=3", "eval.eps=0.1"])
    assert validation_eps(cfg) == pytest.approx(0.02) and cfg.eval.eps == pytest.approx(0.1)


def test_a_run_from_before_val_eps_validates_at_the_eps_it_started_with(tmp_path):
    import yaml

    run = train(load_config("fmnist-cpu", TINY + ["eval.eps=0.02"]), tmp_path / "run", quiet=True)
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["train"]["val_eps"] == pytest.approx(0.02)
    del recorded["train"]["val_eps"]  # as the last release wrote it
    (run / "config.yaml").write_text(yaml.safe_dump(recorded))
    assert validation_eps(resume_config(run, ["train.epochs=3", "eval.eps=0.1"])) == pytest.approx(0.02)


@pytest.mark.parametrize("change", ["train.val_n=8", "train.val_eps=0.3"])
def test_a_resume_cannot_change_the_validation_set_up(tmp_path, change):
    run = train(load_config("fmnist-cpu", TINY), tmp_path / "run", quiet=True)
    with pytest.raises(ConfigError, match=change.split("=")[0]):
        resume_config(run, [change])


def test_a_resume_with_fewer_epochs_than_trained_is_refused_in_one_line(tmp_path, capsys):
    run = train(load_config("fmnist-cpu", TINY), tmp_path / "run", quiet=True)
    before = (run / "last.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "1", "--quiet", "--no-eval"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.epochs" in err and "2 epochs" in err
    assert (run / "last.safetensors").read_bytes() == before


def test_a_run_stopped_by_its_time_budget_between_validations_has_a_best(tmp_path):
    run = train(load_config("fmnist-cpu", TINY + ["train.epochs=6", "train.val_every=4", "train.time_budget_s=1e-6"]),
                tmp_path / "run", quiet=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "val_pgd20" in rows[0]  # stopped after epoch 1, which was validated
    assert (run / "best.safetensors").exists()


@pytest.mark.parametrize("bad", ["model.kwargs.foo=1", "model.kwargs.channels=four", "model.kwargs={channels: [4], hidden: 16}"])
def test_bad_model_arguments_are_one_line_and_leave_no_run_directory(tmp_path, capsys, bad):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--quiet", "--no-eval"] + [a for o in TINY for a in ("--set", o)]
    assert main(args + ["--set", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model" in err
    assert not out.exists()


def _npz(root: Path, seed: int = 0, n: int = 48) -> Path:
    import numpy as np

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for split, count in (("train", n), ("test", 16)):
        np.savez(root / f"{split}.npz", x=rng.integers(0, 256, (count, 28, 28), dtype=np.uint8),
                 y=np.arange(count) % 4)
    return root


def test_a_resume_on_other_data_is_refused_naming_what_changed_and_moved_files_are_allowed(tmp_path, capsys):
    import shutil

    data = _npz(tmp_path / "arrays")
    run = tmp_path / "run"
    settings = ["data.dataset=npz", f"data.data_dir={data}", "data.eps=0.1", "data.val_size=8", "train.val_n=8",
                "train.batch_size=8", "train.epochs=1", "model.kwargs.channels=[4,8]", "model.kwargs.hidden=16",
                "attack.steps=1", "attack.step_size=null"]
    train(load_config("fmnist-cpu", settings), run, quiet=True)
    assert (run / "data-fingerprint.json").is_file()
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--data-dir", str(moved), "--quiet", "--no-eval"]) == 0
    other = _npz(tmp_path / "other", seed=1)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "3", "--data-dir", str(other), "--quiet", "--no-eval"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train split" in err and "differ" in err
    fewer = _npz(tmp_path / "fewer", n=40)
    assert main(["train", "--resume", str(run), "--epochs", "3", "--data-dir", str(fewer), "--quiet", "--no-eval"]) == 2
    assert "examples" in capsys.readouterr().err


def test_a_last_saved_on_cuda_is_refused_on_cpu_in_one_line(tmp_path, capsys):
    import torch

    from ratkit.checkpoints import read_checkpoint, save_checkpoint

    run = train(load_config("fmnist-cpu", TINY), tmp_path / "run", quiet=True)
    tensors, meta = read_checkpoint(run / "last")
    tensors["rng/generator"] = torch.zeros(16, dtype=torch.uint8)  # the size of a CUDA generator's state
    save_checkpoint(run / "last", tensors, {k: v for k, v in meta.items() if k not in ("sha256", "format", "version")})
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet", "--no-eval"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cuda" in err and "train.init_from" in err
