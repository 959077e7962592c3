"""What a run refuses and what it records (issue 42, sections 2-4): npz labels that skip numbers
(refused, or remapped on request and recorded), fewer than 2 classes, a resume that asks for fewer
epochs or steps than were trained, a refused resume that changes nothing, the final epoch validated
whatever ended the run, the validation hold-out of small data, an absolute data directory, and the
method ``ratkit.fit`` trained recorded in its config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ratkit.cli import main
from test_own_model_and_data import NET_CODE, user_code  # noqa: F401 (a fixture)
from tiny import QUICK_EVAL, tiny_run


def write_npz(root: Path, train_labels, test_labels, size: int = 28) -> Path:
    """Grayscale uint8 images whose brightness follows the label, N x H x W."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, labels in (("train", train_labels), ("test", test_labels)):
        y = np.asarray(labels, dtype=np.int64)
        x = np.clip(30 + 17 * (y[:, None, None] % 12) + rng.integers(0, 30, (len(y), size, size)), 0, 255)
        np.savez(root / f"{split}.npz", x=x.astype(np.uint8), y=y)
    return root


def npz_run(data, out, *changes, val_size: bool = True) -> list[str]:
    """``rat train`` on npz data with the tests' tiny settings and the built-in SmallCNN."""
    settings = tiny_run("data.dataset=npz", "data.train_subset=null", "data.val_size=8", "train.batch_size=8",
                        "train.val_n=8", *QUICK_EVAL, *changes)
    if not val_size:
        settings = [s for s in settings if not s.startswith("data.val_size=")]
    return ["train", "--dataset", "npz", "--data-dir", str(data), "--eps", "0.03", "--out", str(out), "--quiet",
            "--budget", "none", *[a for s in settings for a in ("--set", s)]]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def recorded(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


# ----------------------------------------------------------------------------- labels and classes


def test_npz_labels_that_skip_numbers_are_refused_in_one_line_naming_them_and_leave_no_run(tmp_path, capsys):
    data = write_npz(tmp_path / "skips", np.tile([3, 7, 9, 11], 12), [3, 7, 9, 11])
    assert main(npz_run(data, tmp_path / "run")) == 2
    err = one_line(capsys)
    assert "3, 7, 9, 11" in err and "data.labels=remap" in err
    assert not (tmp_path / "run").exists()


def test_remap_trains_on_the_labels_present_records_the_mapping_and_eval_maps_test_labels_alike(tmp_path, capsys):
    from ratkit.checkpoints import read_checkpoint
    from ratkit.data.source import DataSource, load_split

    data = write_npz(tmp_path / "skips", np.tile([3, 7, 9, 11], 12), [11, 3, 9, 7, 3, 11, 7, 9])
    run = tmp_path / "run"
    assert main(npz_run(data, run, "data.labels=remap", "train.epochs=1")) == 0
    assert recorded(run)["data"]["labels"] == "remap" and recorded(run)["data"]["label_map"] == [3, 7, 9, 11]
    _, meta = read_checkpoint(run / "best")
    assert meta["data"]["num_classes"] == 4
    assert meta["data"]["class_names"] == ["class_3", "class_7", "class_9", "class_11"]
    src = DataSource("npz", data_dir=str(data), eps=0.03, labels="remap", label_map=(3, 7, 9, 11))
    assert load_split(src, "test").y.tolist() == [3, 0, 2, 1, 0, 3, 1, 2]
    capsys.readouterr()
    assert main(["eval", str(run), "--attacks", "clean", "--quiet", "--no-resume"]) == 0  # the test labels mapped
    assert "clean" in capsys.readouterr().out
    write_npz(data, np.tile([3, 7, 9, 11], 12), [3, 5])  # a test label the training split does not have
    assert main(["eval", str(run), "--attacks", "clean", "--quiet", "--no-resume"]) == 2
    err = one_line(capsys)
    assert "label 5" in err and "3, 7, 9, 11" in err


@pytest.mark.parametrize("method", [["--method", "at", "--no-rat"], ["--method", "trades", "--rat"],
                                    ["--method", "mart", "--awp"]])
def test_one_class_is_refused_for_every_method_in_one_line_and_leaves_no_run(tmp_path, capsys, method):
    data = write_npz(tmp_path / "one", np.zeros(48, dtype=int), np.zeros(8, dtype=int))
    assert main(npz_run(data, tmp_path / "run") + method) == 2
    assert "1 class" in one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_one_class_folder_and_one_class_given_to_fit_are_refused(tmp_path):
    from PIL import Image

    import ratkit
    from ratkit.data import DataError
    from ratkit.data.source import DataSource, source_info

    for split in ("train", "test"):
        (tmp_path / "imgs" / split / "cat").mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 100, dtype=np.uint8)).save(tmp_path / "imgs" / split / "cat" / "0.png")
    with pytest.raises(DataError, match="1 class"):
        source_info(DataSource("folder", data_dir=str(tmp_path / "imgs"), eps=0.03))
    with pytest.raises(DataError, match="1 class"):
        ratkit.fit(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1)),
                   (torch.rand(20, 1, 8, 8), torch.zeros(20, dtype=torch.long)), eps=0.03, run_dir=tmp_path / "fit")
    assert not (tmp_path / "fit").exists()


# ----------------------------------------------------------------------------- the validation hold-out, the data directory


def test_small_data_without_val_size_holds_out_a_tenth_and_records_it(tmp_path, capsys):
    from ratkit.config import load_config
    from ratkit.train.rundir import with_data_record

    data = write_npz(tmp_path / "small", np.arange(90) % 3, np.arange(12) % 3)
    run = tmp_path / "run"
    assert main(npz_run(data, run, "train.epochs=1", val_size=False)) == 0  # was: val_size 5000 must be in 0..89
    assert recorded(run)["data"]["val_size"] == 9
    # the built-in datasets keep what they had: the presets' own, 5,000 where none is set
    assert load_config("fmnist-cpu").data.val_size == 5000
    assert with_data_record(load_config(None, ["data.val_size=null"])).data.val_size == 5000


def test_the_data_directory_is_recorded_absolute_so_eval_and_resume_work_from_elsewhere(tmp_path, monkeypatch, capsys):
    from ratkit.config import load_config
    from ratkit.train import load_run_config, same_run

    write_npz(tmp_path / "arrays", np.arange(48) % 3, np.arange(12) % 3)
    monkeypatch.chdir(tmp_path)
    assert main(npz_run("arrays", "run", "train.epochs=1")) == 0
    assert recorded(tmp_path / "run")["data"]["data_dir"] == str(tmp_path / "arrays")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--attacks", "clean", "--quiet", "--no-resume"]) == 0
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--quiet", "--no-eval"]) == 0
    # a grid or config naming the directory relative to where it runs is the same run
    monkeypatch.chdir(tmp_path)
    relative = load_config(str(tmp_path / "run" / "config.yaml"), ["data.data_dir=arrays"])
    assert same_run(load_run_config(tmp_path / "run"), relative)


# ----------------------------------------------------------------------------- resume: what was trained, refusals


def _stopped_run(tmp_path, stop, *changes):
    """A tiny synthetic run of 8 epochs of 4 steps, validated every 4th, stopped by ``stop``."""
    from ratkit.config import load_config
    from ratkit.train import TrainingInterrupted, train

    cfg = load_config(None, tiny_run("train.epochs=8", "train.val_every=4", "train.budget_s=null", *QUICK_EVAL,
                                     *changes))
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(cfg, run, quiet=True, **stop)
    return run


def _stop_at_step(n):
    def on_step(progress):
        if progress.global_step == n:
            raise KeyboardInterrupt
    return {"on_step": on_step}


def test_a_resume_asking_fewer_epochs_or_steps_than_were_started_is_refused_and_changes_nothing(tmp_path, capsys):
    run = _stopped_run(tmp_path, _stop_at_step(13))  # one step into epoch 4
    before, _ = files(run), capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 2
    err = one_line(capsys)
    assert "3 epochs and 1 steps of epoch 4" in err and "--epochs 4" in err
    assert main(["train", "--resume", str(run), "--set", "train.max_steps=12", "--quiet"]) == 2
    assert "13 steps" in one_line(capsys)
    assert files(run) == before


def test_a_run_ending_on_an_unvalidated_epoch_validates_it_even_with_nothing_left_to_train(tmp_path, capsys):
    def on_epoch_end(row):
        if row["epoch"] == 3:  # epoch 3 (not validated: val_every 4) ended and saved
            raise KeyboardInterrupt

    run = _stopped_run(tmp_path, {"on_epoch_end": on_epoch_end})
    assert not (run / "best.safetensors").exists()
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 0  # was: no best, exit 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and "val_pgd20" in rows[-1] and rows[-1]["best_epoch"] == 3
    assert (run / "best.safetensors").exists() and (run / "eval.json").exists()


def test_a_run_stopped_right_after_its_last_step_closes_and_validates_that_epoch_on_resume(tmp_path):
    from ratkit.train import load_run_config, train

    run = _stopped_run(tmp_path, _stop_at_step(6), "train.max_steps=6")  # stopped inside epoch 2, steps all taken
    train(load_run_config(run), run, resume=True, quiet=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and "val_pgd20" in rows[-1]
    assert (run / "best.safetensors").exists()


def test_every_refused_resume_leaves_the_run_directory_byte_identical(tmp_path, capsys, user_code):
    model, path = user_code, tmp_path / f"{user_code.split(':')[0]}.py"  # the user's module, in tmp_path
    data = write_npz(tmp_path / "arrays", np.arange(48) % 3, np.arange(12) % 3)
    run = tmp_path / "run"
    assert main(npz_run(data, run, "train.epochs=2", "train.val_every=1", "model.kwargs={width: 4, channels: 1}")
                + ["--model", model, "--no-eval"]) == 0
    before, _ = files(run), capsys.readouterr()
    resume = ["train", "--resume", str(run), "--epochs", "3", "--quiet", "--no-eval"]
    refusals = {
        "model code not allowed": resume,
        "fewer epochs": ["train", "--resume", str(run), "--epochs", "1", "--model", model, "--quiet"],
        "a field a resume may not change": resume + ["--model", model, "--seed", "5"],
        "another model": resume + ["--model", model.replace(":Net", ":Other")],
        "--config": resume + ["--model", model, "--config", str(run / "config.yaml")],
        "missing data": resume + ["--model", model, "--data-dir", str(tmp_path / "nowhere")],
    }
    for why, args in refusals.items():
        assert main(args) == 2, why
        one_line(capsys)
        assert files(run) == before, why
    # refused after the model and data are built: other data, a model that no longer builds, a modified checkpoint
    moved = write_npz(tmp_path / "other", (np.arange(48) + 1) % 3, np.arange(12) % 3)
    assert main(resume + ["--model", model, "--data-dir", str(moved)]) == 2
    assert "data:" in one_line(capsys) and files(run) == before
    path.write_text(NET_CODE.replace("classes=3):", "classes=3, *, depth):"))
    sys.modules.pop(model.split(":")[0], None)
    assert main(resume + ["--model", model]) == 2
    assert "model" in one_line(capsys) and files(run) == before
    path.write_text(NET_CODE)
    sys.modules.pop(model.split(":")[0], None)
    last = bytearray((run / "last.safetensors").read_bytes())
    last[-3] ^= 0xFF
    (run / "last.safetensors").write_bytes(bytes(last))
    before = files(run)
    assert main(resume + ["--model", model]) == 2
    assert "SHA-256" in one_line(capsys) and files(run) == before


# ----------------------------------------------------------------------------- ratkit.fit records its method


def _fit_data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 3
    x = (0.2 + 0.25 * y[:, None, None, None] + 0.1 * torch.rand(40, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y


def _fit_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(16, 3))


def test_fit_records_the_method_it_trained_so_a_resume_rebuilds_it_and_refuses_another(tmp_path):
    import ratkit
    from ratkit.config import ConfigError
    from ratkit.methods import AT, AWP, MART, RAT, TRADES
    from ratkit.threat import method_at_radius
    from ratkit.train import build_method, load_run_config

    common = dict(eps=0.03, batch_size=8, val_size=8, lr=0.05, quiet=True, settings=["train.val_n=8"])
    method = AWP(RAT(MART(attack=MART.training_attack(0.03, steps=2), beta=4.0), alpha=0.1), gamma=0.02)
    run = tmp_path / "fit"
    ratkit.fit(_fit_net(), _fit_data(), method=method, epochs=1, run_dir=run, **common)
    cfg = load_run_config(run)
    m = recorded(run)["method"]
    assert (m["name"], m["beta"], m["rat"]["alpha"], m["awp"]["gamma"]) == ("mart", 4.0, 0.1, 0.02)
    assert cfg.attack.steps == 2 and build_method(cfg) == method_at_radius(method, 0.03, "Linf")
    ratkit.fit(_fit_net(), _fit_data(), method=None, epochs=2, run_dir=run, resume=True, **common)  # the recorded one
    assert load_run_config(run).train.epochs == 2 and build_method(load_run_config(run)) == build_method(cfg)
    with pytest.raises(ConfigError, match="cannot change when resuming"):
        ratkit.fit(_fit_net(), _fit_data(), method=TRADES(), epochs=3, run_dir=run, resume=True, **common)

    class MyAT(AT):
        pass

    for unrecordable in (MyAT(), AWP(AWP(AT()))):
        with pytest.raises(ConfigError, match="cannot record|cannot be recorded"):
            ratkit.fit(_fit_net(), _fit_data(), method=unrecordable, epochs=1, run_dir=tmp_path / "no", **common)
        assert not (tmp_path / "no").exists()
