"""A user's own model (module:callable) and own data (folder, npz) through rat train, eval, resume,
import and ratkit.fit, and the trust rule for model code named in files."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ratkit.cli import main

PIL = pytest.importorskip("PIL.Image")

NET_CODE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=4, channels=3, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(width * 4, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))
"""


def _write_folder(root: Path, per_class=(16, 4), size=8, mode="RGB") -> Path:
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        for c, name in enumerate(("cat", "dog", "eel")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                base = np.full((size, size, 3), 60 + 70 * c, dtype=np.uint8)
                img = np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)
                PIL.fromarray(img if mode == "RGB" else img[..., 0], mode=mode).save(folder / f"{i}.png")
    return root


def _write_npz(root: Path, n=(48, 12), size=8) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in zip(("train", "test"), n):
        y = np.arange(count) % 3
        x = np.clip(60 + 70 * y[:, None, None, None] + rng.integers(0, 40, (count, size, size, 3)), 0, 255)
        np.savez(root / f"{split}.npz", x=x.astype(np.uint8), y=y.astype(np.int64))
    return root


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A module of the user's own, importable from the current directory, with a unique name."""
    name = f"nets_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(NET_CODE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"{name}:Net"
    sys.modules.pop(name, None)


def _train_args(dataset, data_dir, model, out, epochs=2, *extra):
    return ["train", "--dataset", dataset, "--data-dir", str(data_dir), "--model", model, "--eps", "0.03",
            "--epochs", str(epochs), "--batch-size", "8", "--out", str(out), "--quiet", "--no-eval",
            "--set", "data.val_size=6", "--set", "train.val_n=6", "--set", "attack.steps=2",
            "--set", "model.kwargs.width=4", "--set", "optim.schedule=constant", *extra]


def _model_tensors(path: Path) -> dict:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model/")}


@pytest.mark.parametrize("dataset", ["folder", "npz"])
def test_own_data_and_model_train_evaluate_and_resume_bit_identical(tmp_path, user_code, capsys, dataset):
    data = _write_folder(tmp_path / "imgs") if dataset == "folder" else _write_npz(tmp_path / "arrays")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(_train_args(dataset, data, user_code, straight, 2)) == 0
    assert (straight / "best.safetensors").exists() and (straight / "last.safetensors").exists()
    import yaml

    recorded = yaml.safe_load((straight / "config.yaml").read_text())
    assert recorded["data"]["eps"] == 0.03 and len(recorded["data"]["mean"]) == 3  # statistics recorded
    assert recorded["model"]["name"] == user_code

    assert main(_train_args(dataset, data, user_code, split, 1)) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(split), "--epochs", "2", "--quiet", "--no-eval"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and user_code in err and "--trust-model-code" in err
    assert main(["train", "--resume", str(split), "--epochs", "2", "--model", user_code, "--quiet", "--no-eval"]) == 0
    a, b = _model_tensors(straight / "last.safetensors"), _model_tensors(split / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    capsys.readouterr()
    assert main(["eval", str(straight), "--model", user_code, "--attacks", "clean,pgd20", "--quiet"]) == 0
    assert "PGD-20" in capsys.readouterr().out
    assert main(["eval", str(straight), "--attacks", "clean", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model" in err and user_code.split(":")[0] in err
    assert main(["eval", str(straight), "--trust-model-code", "--attacks", "clean", "--quiet", "--no-resume"]) == 0


def test_own_data_without_eps_stops_with_one_line(tmp_path, user_code, capsys):
    data = _write_folder(tmp_path / "imgs")
    args = [a for a in _train_args("folder", data, user_code, tmp_path / "run") if a not in ("--eps", "0.03")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--eps" in err
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_naming_model_code_never_imports_it_without_permission(tmp_path, user_code, capsys):
    data = _write_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    assert main(_train_args("folder", data, user_code, run, 1)) == 0
    # a checkpoint whose metadata names a module that would write a file when imported
    import json

    from ratkit.checkpoints import read_checkpoint, save_checkpoint

    evil = f"evil_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported.txt"
    (tmp_path / f"{evil}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nNet = None\n")
    tensors, meta = read_checkpoint(run / "best.safetensors")
    meta["model"]["name"] = f"{evil}:Net"
    save_checkpoint(tmp_path / "evil.safetensors", tensors, json.loads(json.dumps(meta)))
    for command in (["eval", str(tmp_path / "evil.safetensors"), "--attacks", "clean", "--quiet"],
                    ["eval", str(tmp_path / "evil.safetensors"), "--model", user_code, "--attacks", "clean"],
                    ["export", str(tmp_path / "evil.safetensors"), "--out", str(tmp_path / "x.pt")],
                    ["hessian", str(tmp_path / "evil.safetensors"), "--n", "4", "--quiet"]):
        capsys.readouterr()
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and evil in err
    assert not marker.exists() and evil not in sys.modules


def test_trust_model_code_still_calls_only_a_model_constructor_a_file_names(tmp_path, user_code, capsys):
    # a checkpoint and a run directory edited to run a shell command through the model's "constructor"
    import json

    import yaml

    from ratkit.checkpoints import read_checkpoint, save_checkpoint

    data = _write_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    assert main(_train_args("folder", data, user_code, run, 1)) == 0
    pwned = tmp_path / "PWNED"  # the current directory, where `touch PWNED` would run
    tensors, meta = read_checkpoint(run / "best.safetensors")
    meta["model"].update(name="subprocess:run", kwargs={"args": f"touch {pwned}", "shell": True})
    save_checkpoint(tmp_path / "evil.safetensors", tensors, json.loads(json.dumps(meta)))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"].update(name="subprocess:run", kwargs={"args": f"touch {pwned}", "shell": True})
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for command in (["eval", str(tmp_path / "evil.safetensors"), "--trust-model-code", "--attacks", "clean",
                     "--quiet", "--no-resume"],
                    ["export", str(tmp_path / "evil.safetensors"), "--trust-model-code",
                     "--out", str(tmp_path / "x.pt")],
                    ["train", "--resume", str(run), "--trust-model-code", "--epochs", "2", "--quiet", "--no-eval"]):
        capsys.readouterr()
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "subprocess:run" in err and "not a model constructor" in err, err
    assert not pwned.exists()


def test_a_model_constructor_is_a_module_class_or_a_function_outside_the_standard_library(tmp_path, user_code):
    from ratkit.models import ModelCodePolicy, UntrustedModelCode
    from ratkit.models.user import is_model_constructor

    module = user_code.partition(":")[0]
    with open(tmp_path / f"{module}.py", "a") as f:
        f.write("\nfrom os import system\nimport subprocess\n\ndef make(width=4):\n    return Net(width)\n\n"
                "factory = make\nplain = 3\n")
    trusted = ModelCodePolicy(trust_all=True)
    for allowed in (user_code, f"{module}:make", f"{module}:factory", "torch.nn:Linear"):
        trusted.check(allowed, "the checkpoint")
    for refused in ("subprocess:run", "os:system", "builtins:exec", "collections:OrderedDict",
                    f"{module}:system", f"{module}:subprocess.run", "functools:partial"):
        with pytest.raises(UntrustedModelCode, match="not a model constructor"):
            trusted.check(refused, "the checkpoint")
    with pytest.raises(UntrustedModelCode, match="plain"):
        trusted.check(f"{module}:plain", "the checkpoint")
    # the command line naming it is the user's own choice, as for a new run
    ModelCodePolicy(allowed="os:system").check("os:system", "the checkpoint")
    assert not is_model_constructor(print) and is_model_constructor(torch.nn.Conv2d)


def test_the_default_model_code_policy_allows_only_the_model_of_the_callers_own_config():
    """Written once (models.user): a config the caller gave allows its model; what only a file names is refused."""
    from ratkit.models import ModelCodePolicy, UntrustedModelCode, policy_or_default

    given = ModelCodePolicy(trust_all=True)
    assert policy_or_default(given, "nets:Net") is given
    policy_or_default(None, "nets:Net").check("nets:Net", "the run's config")  # allowed: nothing is imported
    for policy, named in ((policy_or_default(None), "nets:Net"), (policy_or_default(None, "nets:Net"), "nets:Other"),
                          (policy_or_default(None, "smallcnn"), "nets:Net")):
        with pytest.raises(UntrustedModelCode, match="--trust-model-code"):
            policy.check(named, "the checkpoint")


def test_a_model_for_other_images_or_classes_is_refused_in_one_line(tmp_path, user_code, capsys):
    folder = _write_folder(tmp_path / "imgs")
    other = _write_folder(tmp_path / "gray", size=10, mode="L")
    run = tmp_path / "run"
    assert main(_train_args("folder", folder, user_code, run, 1)) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--model", user_code, "--data-dir", str(other), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "3x8x8" in err and "1x10x10" in err


def test_a_training_set_smaller_than_a_batch_is_refused_and_leaves_no_run(tmp_path, user_code, capsys):
    data = _write_folder(tmp_path / "imgs", per_class=(3, 2))
    args = _train_args("folder", data, user_code, tmp_path / "run") + ["--batch-size", "64"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.batch_size" in err
    assert not (tmp_path / "run").exists()


def test_import_a_plain_state_dict_of_an_own_model_and_evaluate_it(tmp_path, user_code, capsys):
    import importlib

    data = _write_folder(tmp_path / "imgs")
    module, _, attr = user_code.partition(":")
    net = getattr(importlib.import_module(module), attr)(width=4)
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    out = tmp_path / "net.safetensors"
    assert main(["import", str(tmp_path / "plain.pt"), "--model", user_code, "--dataset", "folder",
                 "--data-dir", str(data), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--model", user_code, "--eps", "0.03", "--attacks", "clean,pgd20",
                 "--quiet", "--no-resume"]) == 0
    assert "PGD-20" in capsys.readouterr().out


def test_fit_trains_a_plain_module_on_a_dataset_writes_a_run_rat_eval_opens_and_resumes(tmp_path, user_code, capsys):
    import importlib

    import ratkit
    from ratkit.methods import AT

    module, _, attr = user_code.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 3
    x = (0.2 + 0.25 * y[:, None, None, None] + 0.1 * torch.rand(40, 3, 8, 8, generator=g)).clamp(0, 1)

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return x[i], int(y[i])

    rows = []
    common = dict(eps=0.03, method=AT(attack=AT.training_attack(0.03, steps=2)), batch_size=8, val_size=8, lr=0.05, quiet=True,
                  settings=["train.val_n=8"], model_kwargs={"width": 4})
    def net():  # the same initial weights for both runs: the user's module is built before fit
        torch.manual_seed(0)
        return cls(width=4)

    straight = ratkit.fit(net(), Pairs(), epochs=2, run_dir=tmp_path / "fit", on_epoch_end=rows.append,
                          test=Pairs(), **common)
    assert straight.best.exists() and straight.last.exists() and len(rows) == 2 and "val_pgd20" in rows[-1]
    assert straight.report is not None and "clean" in straight.report["attacks"]
    ratkit.fit(net(), Pairs(), epochs=1, run_dir=tmp_path / "fit2", **common)
    resumed = ratkit.fit(net(), Pairs(), epochs=2, run_dir=tmp_path / "fit2", resume=True, **common)
    a, b = _model_tensors(straight.last), _model_tensors(resumed.last)
    assert all(torch.equal(a[k], b[k]) for k in a)
    npz = tmp_path / "arrays"
    npz.mkdir()
    for split in ("train", "test"):
        np.savez(npz / f"{split}.npz", x=(x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8), y=y.numpy())
    capsys.readouterr()
    assert main(["eval", str(straight.run_dir), "--model", user_code, "--dataset", "npz", "--data-dir", str(npz),
                 "--eps", "0.03", "--attacks", "clean", "--quiet"]) == 0


def test_streamed_and_in_memory_folders_train_identically(tmp_path, user_code):
    data = _write_folder(tmp_path / "imgs")
    runs = {}
    for stream in ("false", "true"):
        runs[stream] = tmp_path / f"stream-{stream}"
        assert main(_train_args("folder", data, user_code, runs[stream], 1, "--set", f"data.stream={stream}",
                                "--set", "data.workers=1", "--set", "data.augment=true")) == 0
    a, b = _model_tensors(runs["false"] / "last.safetensors"), _model_tensors(runs["true"] / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_streamed_run_resumed_mid_epoch_ends_bit_identical(tmp_path, user_code):
    from ratkit.config import load_config
    from ratkit.models import ModelCodePolicy
    from ratkit.train import TrainingInterrupted, load_run_config, train

    data = _write_folder(tmp_path / "imgs")
    overrides = ["data.dataset=folder", f"data.data_dir={data}", "data.eps=0.03", "data.stream=true",
                 "data.workers=0", "data.val_size=6", "train.val_n=6", "train.batch_size=8", "train.epochs=2",
                 f"model.name={user_code}", "model.kwargs={width: 4}", "attack.steps=2", "attack.step_size=null",
                 "optim.schedule=constant", "data.augment=true"]
    train(load_config(None, overrides), tmp_path / "straight", quiet=True)

    def stop(progress):
        if progress.global_step == 7:  # epoch 2, its second step
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train(load_config(None, overrides), tmp_path / "split", quiet=True, on_step=stop)
    train(load_run_config(tmp_path / "split"), tmp_path / "split", resume=True, quiet=True,
          model_code=ModelCodePolicy(allowed=user_code))
    a, b = _model_tensors(tmp_path / "straight" / "last.safetensors"), _model_tensors(tmp_path / "split" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_save_adv_keeps_every_evaluated_image_with_the_outputs_permissions(tmp_path, user_code):
    import os

    data = _write_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    assert main(_train_args("folder", data, user_code, run, 1)) == 0
    adv, report = tmp_path / "adv.safetensors", tmp_path / "report.json"
    assert main(["eval", str(run), "--model", user_code, "--attacks", "clean,pgd20,aa", "--aa-n", "3", "--quiet",
                 "--save-adv", str(adv), "--json", str(report), "--no-resume"]) == 0
    tensors = load_file(str(adv))
    assert tensors["x_adv"].shape == (12, 3, 8, 8) and tensors["y"].shape == (12,)  # all 12, not AutoAttack's 3
    assert os.stat(adv).st_mode & 0o777 == os.stat(report).st_mode & 0o777


def test_rat_train_eval_json_has_the_summary_block_and_the_per_example_csv(tmp_path, user_code):
    import json

    data = _write_npz(tmp_path / "arrays")
    run = tmp_path / "run"
    args = [a for a in _train_args("npz", data, user_code, run, 1) if a != "--no-eval"]
    assert main(args + ["--set", "eval.attacks=clean,pgd20", "--set", "eval.n=6"]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["summary"]["clean_acc"] is not None and report["best_epoch"] == 1
    rows = (run / "eval.csv").read_text().splitlines()
    assert rows[0].startswith("index,label,clean_prediction") and len(rows) == 7


def test_fine_tuning_a_checkpoint_on_data_with_other_classes_is_refused(tmp_path, user_code, capsys):
    folder = _write_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    assert main(_train_args("folder", folder, user_code, run, 1)) == 0
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    for split, n in (("train", 40), ("test", 8)):
        np.savez(arrays / f"{split}.npz", x=np.zeros((n, 8, 8, 3), np.uint8), y=np.arange(n) % 5)
    capsys.readouterr()
    args = _train_args("npz", arrays, user_code, tmp_path / "tuned", 1, "--set", f"train.init_from={run}",
                       "--set", "model.kwargs.classes=3")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "3 classes" in err and "5" in err
    assert not (tmp_path / "tuned").exists()


def test_evaluate_takes_uint8_images_as_the_same_images_in_0_1():
    from ratkit.evaluate import evaluate

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    from ratkit.models import wrap

    model = wrap(net, head="1")
    x8 = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(10) % 3
    a = evaluate(model, x8, y, dataset="folder", eps=0.03, attacks=("clean", "pgd20"), quiet=True)
    b = evaluate(model, x8.float() / 255, y, dataset="folder", eps=0.03, attacks=("clean", "pgd20"), quiet=True)
    assert a.clean_predictions == b.clean_predictions and a.attacks["pgd20"].correct == b.attacks["pgd20"].correct
