"""What is checked before a run starts (ratkit.preflight): a mistake in the user's data, model or
command is found before the first training step, reported in one line with exit code 2, and leaves
no run directory; rat import and rat eval give a loaded model the same trial pass."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import yaml
from helpers import TinyNet
from test_own_model_and_data import _train_args, _write_folder, _write_npz, user_code  # noqa: F401 (a fixture)

from ratkit.cli import main

MODELS = """
import torch
from torch import nn


class RGB(nn.Module):  # takes 3 channels whatever the data has
    def __init__(self, width=4, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


class Softmax(RGB):
    def forward(self, x):
        return super().forward(x).softmax(1)


class Pair(RGB):
    def forward(self, x):
        logits = super().forward(x)
        return logits, logits


class Raises(RGB):
    def forward(self, x):
        raise KeyError("the forward of Raises")


class Detached(RGB):
    def forward(self, x):
        return super().forward(x.detach())


class Five(RGB):
    def __init__(self):
        super().__init__(classes=5)


def broken(width=4):
    raise RuntimeError("no weights file here")


class Classifier(nn.Module):  # its head is not called fc
    def __init__(self, width=4):
        super().__init__()
        self.body = nn.Conv2d(3, width, 3, padding=1)
        self.classifier = nn.Linear(width, 3)

    def forward(self, x):
        return self.classifier(self.body(x).mean((2, 3)))


class Flexible(nn.Module):
    def __init__(self, in_channels, classes):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def told(width=4, num_classes=10, in_channels=3):  # names both: told the data's
    return Flexible(in_channels, num_classes)


def untold(**kwargs):  # takes anything, names nothing: told nothing
    untold.received = dict(kwargs)
    return Flexible(1, 3)
"""


@pytest.fixture
def models(tmp_path, user_code):
    """The name of a module of the user's own (user_code's, importable from the current directory)
    holding MODELS too."""
    module = user_code.partition(":")[0]
    with open(tmp_path / f"{module}.py", "a") as f:
        f.write(MODELS)
    return module


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _evaluated(args: list[str]) -> list[str]:
    """_train_args with the evaluation after training (a quick one) instead of --no-eval."""
    return [a for a in args if a != "--no-eval"] + ["--set", "eval.attacks=clean", "--set", "eval.aa_n=null"]


def _break_test_npz(data, how: str) -> None:
    path = data / "test.npz"
    if how == "missing":
        path.unlink()
        return
    with np.load(path) as npz:
        x, y = npz["x"], npz["y"]
    if how == "nan":
        x = x.astype(np.float32) / 255
        x[0, 0, 0, 0] = np.nan
    elif how == "label outside":
        y = y.copy()
        y[0] = 5
    elif how == "lengths":
        y = y[:-1]
    np.savez(path, x=x, y=y)


@pytest.mark.parametrize("how, says", [("missing", "missing file"), ("nan", "non-finite"),
                                       ("label outside", "label 5 out of range"), ("lengths", "11 labels")])
def test_bad_test_npz_stops_rat_train_before_the_run_directory(tmp_path, user_code, capsys, how, says):
    data = _write_npz(tmp_path / "arrays")
    _break_test_npz(data, how)
    run = tmp_path / "run"
    assert main(_evaluated(_train_args("npz", data, user_code, run, 1))) == 2
    err = _one_line(capsys)
    assert "test.npz" in err and says in err
    assert not run.exists()


def test_test_images_of_another_size_stop_rat_train_before_the_run_directory(tmp_path, user_code, capsys):
    data = _write_folder(tmp_path / "imgs")
    other = _write_folder(tmp_path / "other", size=10)
    (data / "test").rename(tmp_path / "unused")
    (other / "test").rename(data / "test")
    run = tmp_path / "run"
    assert main(_evaluated(_train_args("folder", data, user_code, run, 1))) == 2
    err = _one_line(capsys)
    assert "test images are (10, 10)" in err and "(8, 8)" in err
    assert not run.exists()


def test_a_run_without_evaluation_trains_past_a_bad_test_split_with_one_warning(tmp_path, user_code, capsys):
    data = _write_npz(tmp_path / "arrays")
    _break_test_npz(data, "missing")
    run = tmp_path / "run"
    assert main(_train_args("npz", data, user_code, run, 1)) == 0  # --no-eval: the test split is never read
    warnings = [line for line in capsys.readouterr().err.splitlines() if "test.npz" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:")
    assert (run / "last.safetensors").exists()


@pytest.mark.parametrize("model, data_mode, says", [
    ("RGB", "L", "its first convolution 'conv' takes 3 channels"),
    ("broken", "RGB", "RuntimeError: no weights file here"),
    ("Softmax", "RGB", "is not the output of its head 'fc'"),
    ("Pair", "RGB", "the output of Pair (a tuple of 2 items)"),
    ("Raises", "RGB", "KeyError: 'the forward of Raises'"),
    ("Detached", "RGB", "no gradient with respect to the images"),
])
def test_a_model_that_does_not_fit_the_data_stops_rat_train_before_the_run_directory(
        tmp_path, models, capsys, model, data_mode, says):
    data = _write_folder(tmp_path / "imgs", mode=data_mode)
    run = tmp_path / "run"
    assert main(_train_args("folder", data, f"{models}:{model}", run, 1)) == 2
    err = _one_line(capsys)
    assert says in err and f"{models}:{model}" in err
    if data_mode == "L":
        assert "1x8x8 (1 channel)" in err
    assert not run.exists()


def test_the_trial_pass_leaves_the_model_as_it_was():
    from ratkit.models import wrap
    from ratkit.preflight import check_model

    torch.manual_seed(0)
    model = wrap(TinyNet(num_classes=3, in_channels=1), head="fc").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    check_model(model, (1, 8, 8), 3, name="TinyNet", training=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm's statistics too
    assert all(p.grad is None for p in model.parameters())
    assert not any(m.training for m in model.modules()) and torch.equal(torch.get_rng_state(), rng)


def test_rat_import_onto_data_of_another_channel_count_is_refused_before_writing(tmp_path, models, capsys):
    data = _write_folder(tmp_path / "gray", mode="L")
    torch.save(getattr(__import__(models), "RGB")().state_dict(), tmp_path / "plain.pt")
    out = tmp_path / "net.safetensors"
    assert main(["import", str(tmp_path / "plain.pt"), "--model", f"{models}:RGB", "--dataset", "folder",
                 "--data-dir", str(data), "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert "takes 3 channels" in err and "1x8x8" in err
    assert not out.exists()


def test_rat_eval_of_a_model_that_cannot_run_on_the_data_is_one_line_and_keeps_no_state(
        tmp_path, models, capsys, monkeypatch):
    import ratkit.preflight

    data = _write_folder(tmp_path / "gray", mode="L")
    torch.save(getattr(__import__(models), "RGB")().state_dict(), tmp_path / "plain.pt")
    out = tmp_path / "net.safetensors"
    with monkeypatch.context() as m:  # an import made before rat import gave the model its trial pass
        m.setattr(ratkit.preflight, "check_model", lambda *a, **k: None)
        assert main(["import", str(tmp_path / "plain.pt"), "--model", f"{models}:RGB", "--dataset", "folder",
                     "--data-dir", str(data), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--model", f"{models}:RGB", "--eps", "0.03", "--attacks", "clean",
                 "--quiet"]) == 2
    err = _one_line(capsys)
    assert "takes 3 channels" in err and str(out) in err
    assert not out.with_suffix(".eval-state").exists()


def test_rat_import_names_its_own_head_flag(tmp_path, models, capsys):
    data = _write_folder(tmp_path / "imgs")
    torch.save(getattr(__import__(models), "Five")().state_dict(), tmp_path / "plain.pt")
    assert main(["import", str(tmp_path / "plain.pt"), "--model", f"{models}:Five", "--dataset", "folder",
                 "--data-dir", str(data), "--out", str(tmp_path / "net.safetensors")]) == 2
    err = _one_line(capsys)
    assert "--head PATH" in err and "--set" not in err


def test_a_callable_is_told_the_classes_and_channels_only_through_parameters_it_names(models):
    from ratkit.models.user import ModelCodePolicy, build_user_from_spec, build_user_model

    facts = dict(num_classes=3, image_shape=(1, 8, 8))
    model, spec = build_user_model(f"{models}:told", {"width": 4}, **facts)
    assert spec["kwargs"] == {"width": 4, "num_classes": 3, "in_channels": 1} and model.num_classes == 3
    rebuilt = build_user_from_spec(spec, ModelCodePolicy(allowed=f"{models}:told"), "the checkpoint")
    assert rebuilt.net.conv.in_channels == 1 and rebuilt.num_classes == 3  # called the same way again
    _, spec = build_user_model(f"{models}:told", {"num_classes": 3, "in_channels": 1, "width": 2}, **facts)
    assert spec["kwargs"] == {"num_classes": 3, "in_channels": 1, "width": 2}  # the user's own values win
    _, spec = build_user_model(f"{models}:untold", {}, **facts)
    assert spec["kwargs"] == {} and sys.modules[models].untold.received == {}  # **kwargs: never told


def test_a_run_prints_its_class_mapping_and_head_and_records_the_head(tmp_path, models, capsys):
    data = _write_folder(tmp_path / "gray", mode="L")
    for split in ("train", "test"):  # folder names that sort as text, not as numbers
        for old, new in (("cat", "1"), ("dog", "10"), ("eel", "2")):
            (data / split / old).rename(data / split / new)
    run = tmp_path / "run"
    args = [a for a in _train_args("folder", data, f"{models}:told", run, 1) if a != "--quiet"]
    assert main(args) == 0  # told in_channels=1: a model for 3 channels by default fits grayscale data
    out = capsys.readouterr().out
    assert "0 '1', 1 '10', 2 '2'" in out
    assert f"model {models}:told(width=4, num_classes=3, in_channels=1): head 'fc'" in out
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["head"] == "fc"


def test_a_new_run_from_a_recorded_config_with_another_model_finds_that_models_head(tmp_path, models):
    data = _write_folder(tmp_path / "imgs")
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(_train_args("folder", data, f"{models}:told", first, 1)) == 0
    assert main(["train", "--config", str(first / "config.yaml"), "--model", f"{models}:Classifier",
                 "--out", str(second), "--quiet", "--no-eval"]) == 0  # not the recorded head 'fc'
    assert yaml.safe_load((second / "config.yaml").read_text())["model"]["head"] == "classifier"


def test_fine_tuning_from_a_checkpoint_whose_callable_was_not_told_the_data_still_works(tmp_path, models):
    """A checkpoint of an older ratkit records only the user's kwargs; one made now adds what the
    data told the callable. Both are the same model for train.init_from."""
    from ratkit.checkpoints import read_checkpoint, save_checkpoint

    data = _write_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    assert main(_train_args("folder", data, f"{models}:told", run, 1)) == 0
    tensors, meta = read_checkpoint(run / "best.safetensors")
    assert meta["model"]["kwargs"] == {"width": 4, "num_classes": 3, "in_channels": 3}
    meta["model"]["kwargs"] = {"width": 4}
    save_checkpoint(tmp_path / "older.safetensors", tensors, meta)
    assert main(_train_args("folder", data, f"{models}:told", tmp_path / "tuned", 1, "--set",
                            f"train.init_from={tmp_path / 'older.safetensors'}")) == 0


def test_a_resume_given_the_config_the_run_started_from_takes_the_head_the_run_recorded(tmp_path, models):
    from tiny import tiny_run

    from ratkit.config import load_config
    from ratkit.models import ModelCodePolicy
    from ratkit.train import TrainingInterrupted, load_run_config, train

    cfg = load_config("fmnist-cpu", tiny_run(f"model.name={models}:told", "model.kwargs={}", "train.epochs=2"))

    def interrupt(progress):
        if progress.global_step == 5:  # in the second epoch
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "run", quiet=True, on_step=interrupt)
    assert cfg.model.head is None and load_run_config(tmp_path / "run").model.head == "fc"
    train(cfg, tmp_path / "run", resume=True, quiet=True, model_code=ModelCodePolicy(allowed=cfg.model.name))
    assert load_run_config(tmp_path / "run").model.head == "fc"


def test_a_run_that_recorded_its_head_is_the_run_a_config_without_one_asks_for():
    """A study finds its own run again (and resumes it) though the run recorded the head it found."""
    from ratkit.config import load_config
    from ratkit.preflight import with_head
    from ratkit.train import same_run

    cfg = load_config("fmnist-cpu", ["model.name=nets:Net"])
    assert same_run(with_head(cfg, "fc"), cfg)
    assert not same_run(with_head(cfg, "fc"), with_head(cfg, "classifier"))
