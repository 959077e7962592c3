"""The threat radius has one home (ratkit.threat): rat train, rat eval and ratkit.fit train, validate
and evaluate at the radii it gives, for built-in and own data; radii that cannot be meant are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TinyNet

import ratkit
from ratkit.cli import main
from ratkit.config import ConfigError, load_config
from ratkit.methods import AT, AWP, RAT, TRADES
from ratkit.methods.awp import innermost
from ratkit.threat import RadiusError, Threat, method_at_radius, threat
from ratkit.train import Trainer, load_run_config

TINY = ["--train-subset", "32", "--epochs", "1", "--batch-size", "16", "--quiet", "--set", "data.val_size=16",
        "--set", "train.val_n=8", "--set", "model.kwargs.channels=[2,4]", "--set", "model.kwargs.hidden=8",
        "--set", "attack.steps=1", "--set", "eval.attacks=clean", "--set", "eval.n=8"]
FIT = dict(epochs=1, batch_size=16, val_size=16, quiet=True, settings=["train.val_n=8", "attack.steps=1",
                                                                        "eval.attacks=clean"])


@pytest.fixture
def trained_attacks(monkeypatch):
    """The training attack of every Trainer built in the test (rat train and fit share the class)."""
    attacks = []
    build = Trainer.__init__

    def spy(self, *args, **kwargs):
        build(self, *args, **kwargs)
        attacks.append(innermost(self.method).attack)

    monkeypatch.setattr(Trainer, "__init__", spy)
    return attacks


def _arrays(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    return (0.05 + 0.09 * y[:, None, None, None] + 0.05 * torch.rand(n, 1, 28, 28, generator=g)).clamp(0, 1), y


def _write_npz(root):
    root.mkdir()
    for split, (n, seed) in {"train": (48, 0), "test": (16, 1)}.items():
        x, y = _arrays(n, seed)
        np.savez(root / f"{split}.npz", x=(x[:, 0] * 255).round().to(torch.uint8).numpy(), y=y.numpy())
    return root


def _eval_eps(tmp_path, run, *flags) -> float:
    out = tmp_path / f"eval-{len(list(tmp_path.glob('eval-*.json')))}.json"
    assert main(["eval", str(run), "--attacks", "clean", "--n", "8", "--quiet", "--no-resume", "--json", str(out),
                 *flags]) == 0
    return json.loads(out.read_text())["eps"]


@pytest.mark.parametrize("dataset, eps, norm, expected, step", [
    ("synthetic", None, "Linf", 0.1, 0.04),  # the dataset's protocol eps, the preset's step
    ("synthetic", None, "L2", 0.5, 0.04),
    ("synthetic", 0.05, "Linf", 0.05, 0.0125),  # --eps: the step follows, eps / 4
    ("npz", 0.05, "Linf", 0.05, 0.0125),  # own data: the radius given
    ("npz", 0.3, "L2", 0.3, 0.075),
])
def test_rat_train_rat_eval_and_fit_train_validate_and_evaluate_at_the_radii_threat_gives(
        tmp_path, capsys, trained_attacks, dataset, eps, norm, expected, step):
    data = _write_npz(tmp_path / "arrays") if dataset == "npz" else None
    flags = ["--norm", norm] + (["--eps", str(eps)] if eps is not None else [])
    flags += ["--data-dir", str(data)] if data else []
    run = tmp_path / "run"
    assert main(["train", "--dataset", dataset, *flags, *TINY, "--out", str(run)]) == 0
    t = threat(load_run_config(run))
    assert t == Threat(norm=norm, train_eps=expected, train_step=step, val_eps=expected, eval_eps=expected)
    attack = trained_attacks[-1]
    assert (attack.eps, attack.step_size, attack.norm) == (t.train_eps, t.train_step, norm)
    assert load_run_config(run).train.val_eps == t.val_eps
    assert json.loads((run / "eval.json").read_text())["eps"] == pytest.approx(t.eval_eps)
    assert _eval_eps(tmp_path, run, "--norm", norm) == pytest.approx(t.eval_eps)  # no --eps: the run's own
    if eps is not None and norm == "L2":  # the run's L2 radius is no Linf radius
        capsys.readouterr()
        assert main(["eval", str(run), "--attacks", "clean", "--quiet", "--no-resume"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--norm L2" in err
    if dataset != "npz":
        return
    x, y = _arrays(48, 0)
    torch.manual_seed(0)
    result = ratkit.fit(TinyNet(), (x, y), eps=eps, norm=norm, run_dir=tmp_path / "fit", test=_arrays(16, 1), **FIT)
    fitted = threat(load_run_config(result.run_dir))
    assert fitted == t and result.report["eps"] == pytest.approx(t.eval_eps)
    attack = trained_attacks[-1]
    assert (attack.eps, attack.step_size, attack.norm) == (t.train_eps, t.train_step, norm)
    # the fit run evaluated on files: the radius it recorded, no --eps needed (issue 42)
    assert _eval_eps(tmp_path, result.run_dir, "--trust-model-code", "--dataset", "npz", "--data-dir", str(data),
                     "--norm", norm) == pytest.approx(t.eval_eps)


@pytest.mark.parametrize("method", [RAT(TRADES()), AWP(AT()), TRADES()])
def test_fit_trains_a_given_method_at_the_runs_radius_not_its_default(tmp_path, trained_attacks, method):
    x, y = _arrays(48, 0)
    result = ratkit.fit(TinyNet(), (x, y), eps=0.05, norm="L2", method=method, run_dir=tmp_path / "fit", **FIT)
    attack = trained_attacks[-1]
    assert (attack.eps, attack.step_size, attack.norm) == (0.05, 0.05 / 4, "L2")
    assert type(innermost(method)).training_attack(1.0).loss == attack.loss  # its own recipe, at the radius
    ratkit.fit(TinyNet(), (x, y), eps=0.05, norm="L2", method=method, run_dir=result.run_dir, resume=True,
               **{**FIT, "epochs": 2})
    assert (trained_attacks[-1].eps, trained_attacks[-1].norm) == (0.05, "L2")


def test_a_method_given_an_attack_at_another_radius_is_refused_in_one_line_before_the_run(tmp_path):
    x, y = _arrays(48, 0)
    method = RAT(AT(attack=AT.training_attack(8 / 255, steps=3)))  # an attack of its own, not the default
    with pytest.raises(RadiusError) as err:
        ratkit.fit(TinyNet(), (x, y), eps=0.05, method=method, run_dir=tmp_path / "fit", **FIT)
    assert "\n" not in str(err.value) and "0.05" in str(err.value) and "0.03137" in str(err.value)
    assert not (tmp_path / "fit").exists()
    same = AT(attack=AT.training_attack(0.05, steps=3))
    assert method_at_radius(same, 0.05, "Linf") is same  # an attack at the run's radius is kept as given


@pytest.mark.parametrize("argv", [
    ["train", "--dataset", "synthetic", "--eps", "8"],
    ["train", "--dataset", "synthetic", "--set", "eval.eps=8"],
    ["eval", "--untrained", "smallcnn", "--dataset", "synthetic", "--eps", "8", "--attacks", "clean", "--n", "4"],
])
def test_an_linf_radius_of_1_or_more_is_refused_in_one_line_with_the_hint(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--quiet", *(["--out", "run"] if argv[0] == "train" else ["--no-resume"])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "8/255 = 0.0314" in err and "L-infinity" in err
    assert list(tmp_path.iterdir()) == []  # no run directory, nothing written


def test_an_l2_radius_of_1_or_more_is_a_radius_and_fit_refuses_linf_8(tmp_path):
    assert threat(load_config(None, [("attack.norm", "L2"), ("data.eps", 8.0)])).eval_eps == 8.0
    x, y = _arrays(48, 0)
    with pytest.raises(ConfigError, match="8/255 = 0.0314"):
        ratkit.fit(TinyNet(), (x, y), eps=8, run_dir=tmp_path / "fit", **FIT)
    assert not (tmp_path / "fit").exists()


def test_own_data_without_a_radius_is_one_message_from_one_home():
    from ratkit.data import DataError
    from ratkit.data.source import DataSource, source_info

    with pytest.raises(ConfigError) as config_err:
        load_config(None, [("data.dataset", "python")])
    with pytest.raises(DataError) as data_err:
        source_info(DataSource("python", num_classes=3, image_shape=(1, 8, 8)))
    assert str(config_err.value) == "data.eps: " + str(data_err.value) and "--eps" in str(data_err.value)


def test_a_recorded_linf_radius_of_1_or_more_is_refused_by_rat_eval(tmp_path, capsys):
    """rat import --eps records the radius unchecked (it names no norm); rat eval under Linf refuses it."""
    data = _write_npz(tmp_path / "arrays")
    torch.save(TinyNet().state_dict(), tmp_path / "plain.pt")
    out = tmp_path / "net.safetensors"
    assert main(["import", str(tmp_path / "plain.pt"), "--model", "helpers:TinyNet", "--dataset", "npz",
                 "--data-dir", str(data), "--eps", "8", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--model", "helpers:TinyNet", "--attacks", "clean", "--quiet", "--no-resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "8/255 = 0.0314" in err
    assert main(["eval", str(out), "--model", "helpers:TinyNet", "--attacks", "clean", "--quiet", "--no-resume",
                 "--norm", "L2", "--n", "4"]) == 0  # an L2 radius of 8 can be meant
