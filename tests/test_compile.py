"""Specifications of ``train.compile`` / ``eval.compile`` (torch.compile as a setting): what auto
chooses, a model that fails to compile runs eager with one warning line, the trial compile leaves
no trace, and a compiled run stopped and resumed ends equal to an uninterrupted compiled run."""

import pytest
import torch
from safetensors.torch import load_file

import ratkit.compile as compile_module
from ratkit.compile import compile_model, compile_wanted, is_compiled
from ratkit.config import ConfigError, load_config
from ratkit.models import build_model
from ratkit.train import train

TINY = ["data.dataset=synthetic", "data.val_size=64", "data.train_subset=128", "model.kwargs.channels=[4,8]",
        "model.kwargs.hidden=16", "attack.steps=2", "train.batch_size=32", "train.val_n=32", "eval.attacks=clean",
        "eval.n=32", "eval.aa_n=null", "train.device=cpu", "attack.precision=float32", "train.budget_s=null"]


def _model():
    torch.manual_seed(0)
    return build_model("smallcnn", channels=(4, 8), hidden=16)


def test_auto_compiles_only_where_a_win_was_measured_and_the_work_repays_it(monkeypatch):
    assert compile_wanted("auto", torch.device("cpu"))[0] is False  # measured slower (docs/performance.md)
    assert compile_wanted("auto", torch.device("cuda"))[0] is False  # not measured yet
    monkeypatch.setattr(compile_module, "MEASURED_WINS", ("cuda",))
    assert compile_wanted("auto", torch.device("cuda"))[0] is True
    assert compile_wanted("auto", torch.device("cuda"), expected_seconds=60)[0] is False
    assert compile_wanted("true", torch.device("cpu"))[0] and not compile_wanted("false", torch.device("cuda"))[0]
    with pytest.raises(ValueError):
        compile_wanted("yes", torch.device("cpu"))


def test_the_setting_reads_yaml_booleans_and_refuses_other_values():
    assert load_config(None, ["train.compile=true", "eval.compile=false"]).train.compile == "true"
    assert load_config(None, ["eval.compile=false"]).eval.compile == "false"
    assert load_config(None).train.compile == "auto"
    with pytest.raises(ConfigError, match="train.compile"):
        load_config(None, ["train.compile=fast"])


def test_a_model_that_fails_to_compile_runs_eager_with_one_warning_line(monkeypatch):
    def broken(fn, **kwargs):
        def fails(*args, **kw):
            raise RuntimeError("backend exploded\nsecond line")
        return fails

    monkeypatch.setattr(torch, "compile", broken)
    model = _model()
    model, line = compile_model(model, "true", torch.rand(4, 1, 28, 28))
    assert not is_compiled(model) and line.startswith("warning: torch.compile failed") and "\n" not in line
    assert "backend exploded" in line and line.endswith("running eager")
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)  # and it still runs


def test_the_trial_compile_leaves_weights_buffers_gradients_mode_and_generators_as_they_were():
    model = _model().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    example = torch.rand(8, 1, 28, 28)
    state = torch.get_rng_state()
    model, line = compile_model(model, "true", example)
    assert is_compiled(model), line
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(state, torch.get_rng_state()) and not model.training
    assert all(p.grad is None for p in model.parameters())
    x = torch.rand(3, 1, 28, 28)
    eager = build_model("smallcnn", channels=(4, 8), hidden=16)
    eager.load_state_dict(model.state_dict())  # the state_dict keys are the eager model's
    torch.testing.assert_close(model.eval()(x), eager.eval()(x), rtol=1e-4, atol=1e-5)


def test_a_compiled_run_stopped_and_resumed_ends_equal_to_an_uninterrupted_compiled_run(tmp_path, capsys):
    cfg = load_config("fmnist-cpu", [*TINY, "train.epochs=2", "train.compile=true"])
    whole = train(cfg, tmp_path / "whole")
    assert "torch.compile: on as configured" in capsys.readouterr().out

    def interrupt(progress):
        if progress.global_step == 3:  # mid-epoch 1 (4 steps an epoch)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", quiet=True, on_step=interrupt)
    cut = train(cfg, tmp_path / "cut", resume=True, quiet=True)
    a, b = load_file(str(whole / "last.safetensors")), load_file(str(cut / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if k.startswith("model/"))
    assert (whole / "metrics.jsonl").read_text().count("val_pgd20") == 2
