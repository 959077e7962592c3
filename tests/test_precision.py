"""Specifications of a training step's precision (train.precision, ``StepPrecision``) and of the
trainer's data on the run's device: float32 is the step as it was, bfloat16 and float16 run the
whole step in that precision with the loss terms and RAT's statistics in float32, float16's
scaler skips overflowing steps without calling them non-finite, and evaluation stays float32."""

from pathlib import Path

import pytest
import torch
from tiny import tiny_run

import ratkit.methods.rat as rat_module
from ratkit.config import ConfigError, load_config
from ratkit.evaluate import strict_float32
from ratkit.methods import (AWP, RAT, TRADES, NonFiniteLossError, StepPrecision, compose_method, forward_outputs,
                            trades_attack)
from ratkit.models import build_model
from ratkit.train import Trainer, cudnn_autotuned, resume_config, train

EPS = 0.1
TINY = tiny_run("attack.steps=2", "eval.attacks=clean", "eval.n=32", "eval.aa_n=null", "train.device=cpu")


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("smallcnn", channels=(4, 8), hidden=16)


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _rat_trades(attack_precision="float32"):
    return RAT(TRADES(attack=trades_attack(EPS, steps=2, precision=attack_precision)))


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def _same(a, b):
    return all(torch.equal(u, v) for u, v in zip(a, b))


def _head_output_dtypes(model):
    """Record the dtype of every output of the model's head (attack and loss forwards alike)."""
    seen = []
    model.head.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    return seen


# ----------------------------------------------------------------------------- float32


@pytest.mark.parametrize("attack_precision", ["float32", "bfloat16"])
def test_float32_step_is_bit_identical_to_the_step_as_it_was(attack_precision):
    """train.precision float32 (the default) is the old step: craft, loss, backward, optimizer step,
    with attack.precision's semantics untouched."""
    x, y = _batch()
    results = []
    for precision in (None, StepPrecision("float32"), "by hand"):
        model, method = _model(), _rat_trades(attack_precision)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        generator = torch.Generator().manual_seed(1)
        for _ in range(2):
            if precision == "by hand":
                x_adv = method.craft(model, x, y, generator=generator)
                optimizer.zero_grad(set_to_none=True)
                loss = method.loss(model, x, x_adv, y).loss
                loss.backward()
                optimizer.step()
            else:
                loss = method.step(model, optimizer, x, y, generator=generator, precision=precision).loss
        results.append((loss.detach(), _weights(model)))
    for loss, weights in results[1:]:
        assert torch.equal(loss, results[0][0]) and _same(weights, results[0][1])


# ----------------------------------------------------------------------------- bfloat16 and float16


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
@pytest.mark.parametrize("awp", [False, True])
def test_a_lower_precision_step_runs_attack_and_loss_in_it_and_changes_the_weights(precision, awp):
    model = _model()
    seen = _head_output_dtypes(model)
    method = AWP(_rat_trades()) if awp else _rat_trades()
    before = _weights(model)
    x, y = _batch()
    out = method.step(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y,
                      generator=torch.Generator().manual_seed(0), precision=StepPrecision(precision))
    assert seen and set(seen) == {getattr(torch, precision)}  # every forward: attack, AWP's objective, loss
    assert out.loss.dtype == torch.float32 and all(t.dtype == torch.float32 for t in out.terms.values())
    assert torch.isfinite(out.loss)
    after = _weights(model)
    assert not _same(before, after) and all(torch.isfinite(w).all() for w in after)


def test_a_bfloat16_attack_stays_bfloat16_under_a_float16_step():
    """attack.precision=bfloat16 pins the attack to bf16; the loss forward runs in the step's float16."""
    model, method = _model(), _rat_trades("bfloat16")
    seen = _head_output_dtypes(model)
    x, y = _batch()
    with StepPrecision("float16").autocast("cpu"):
        method.craft(model, x, y, generator=torch.Generator().manual_seed(0))
    attack = set(seen)
    seen.clear()
    with StepPrecision("float16").autocast("cpu"):
        forward_outputs(model, x, x, y, with_clean=True)
    assert attack == {torch.bfloat16} and set(seen) == {torch.float16}


@pytest.mark.parametrize("taylor", ["analytic", "autograd", "exact-head", "trh", "adv-trace"])
def test_rat_statistics_and_soft_targets_are_float32_under_bfloat16_autocast(monkeypatch, taylor):
    dtypes = []

    def spy(function):
        def recorded(*args, **kwargs):
            result = function(*args, **kwargs)
            tensors = [a for a in args if torch.is_tensor(a) and a.is_floating_point()]
            tensors += list(result) if isinstance(result, tuple) else [result]
            dtypes.extend((function.__name__, t.dtype) for t in tensors)
            return result
        return recorded

    for name in ("head_gradient_sums", "head_gradient_sums_autograd", "head_taylor_statistics", "soft_target_table",
                 "trades_head_trace"):
        monkeypatch.setattr(rat_module, name, spy(getattr(rat_module, name)))
    model, method = _model(), RAT(TRADES(attack=trades_attack(EPS, steps=1)), taylor=taylor)
    x, y = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method.loss(model, x, x, y)
    assert dtypes and {dtype for _, dtype in dtypes} == {torch.float32}, dtypes
    assert all(t.dtype == torch.float32 for t in out.terms.values())
    assert (taylor == "trh") == any(name == "trades_head_trace" for name, _ in dtypes)


def test_float16_step_scales_the_backward_and_skips_an_overflowing_step_without_a_non_finite_error():
    model, method = _model(), _rat_trades()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    precision = StepPrecision("float16")
    assert precision.scaler is not None and StepPrecision("bfloat16").scaler is None
    huge = 2.0 ** 24  # the scaled gradients overflow float16: the scaler skips the step and lowers the scale
    precision.load_state_dict({**precision.state_dict(), "scale": huge})
    x, y = _batch()
    before = _weights(model)
    out = method.step(model, optimizer, x, y, generator=torch.Generator().manual_seed(0), precision=precision)
    assert torch.isfinite(out.loss)
    assert _same(before, _weights(model))  # skipped, not applied
    assert precision.state_dict()["scale"] < huge
    for _ in range(40):  # the scale comes down until a step goes through
        method.step(model, optimizer, x, y, generator=torch.Generator().manual_seed(0), precision=precision)
        if not _same(before, _weights(model)):
            break
    assert not _same(before, _weights(model)) and all(torch.isfinite(w).all() for w in _weights(model))


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "float16"])
def test_a_non_finite_loss_is_still_an_error_and_never_applied(precision):
    model, method = _model(), _rat_trades()
    with torch.no_grad():
        model.head.bias[0] = float("nan")
    before = _weights(model)
    x, y = _batch()
    with pytest.raises(NonFiniteLossError):
        method.step(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y,
                    generator=torch.Generator().manual_seed(0), precision=StepPrecision(precision))
    assert all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(before, _weights(model)))


def test_step_precision_refuses_an_unknown_name_and_a_batch_on_another_device_type():
    with pytest.raises(ValueError, match="float64"):
        StepPrecision("float64")
    with pytest.raises(ValueError, match="for cuda got a batch on cpu"):
        StepPrecision("bfloat16", "cuda").autocast("cpu")
    StepPrecision("float32", "cuda").autocast("cpu")  # float32 is no autocast: any device


# ----------------------------------------------------------------------------- config and trainer


def test_train_precision_is_validated_and_defaults_to_float32():
    assert load_config("fmnist-cpu").train.precision == "float32"
    for name in ("float32", "bfloat16", "float16"):
        assert load_config("fmnist-cpu", [f"train.precision={name}"]).train.precision == name
    with pytest.raises(ConfigError, match=r"^train\.precision: must be one of float32, bfloat16, float16"):
        load_config("fmnist-cpu", ["train.precision=float64"])


def test_the_trainer_holds_its_data_on_the_run_device_and_steps_in_train_precision(tmp_path):
    trainer = Trainer(load_config("fmnist-cpu", [*TINY, "train.precision=bfloat16"]), tmp_path, quiet=True)
    for data in (trainer.train_data, trainer.val_data):
        assert data.x.device == trainer.device and data.y.device == trainer.device
    assert trainer.precision.name == "bfloat16" and trainer.precision.device_type == trainer.device.type


def test_a_bfloat16_run_trains_and_a_resume_may_not_change_the_precision(tmp_path):
    run = train(load_config("fmnist-cpu", [*TINY, "train.precision=bfloat16"]), tmp_path / "r", quiet=True)
    assert (Path(run) / "last.safetensors").exists()
    with pytest.raises(ConfigError, match=r"^train\.precision: cannot change when resuming"):
        resume_config(run, ["train.precision=float32"])


def test_the_float16_scaler_state_is_saved_with_last_and_restored(tmp_path):
    cfg = load_config("fmnist-cpu", [*TINY, "train.precision=float16"])
    trainer = Trainer(cfg, tmp_path, quiet=True)
    state = {**trainer.precision.state_dict(), "scale": 512.0, "_growth_tracker": 7}
    trainer.precision.load_state_dict(state)
    trainer.last.save(trainer.progress)
    resumed = Trainer(cfg, tmp_path, quiet=True)
    resumed.restore_last()
    assert resumed.precision.state_dict() == state


def test_float16_run_interrupted_and_resumed_ends_bit_identical(tmp_path):
    cfg = load_config("fmnist-cpu", [*TINY, "train.precision=float16", "train.epochs=2"])
    whole = train(cfg, tmp_path / "whole", quiet=True)

    def interrupt(progress):
        if progress.global_step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", quiet=True, on_step=interrupt)
    resumed = train(cfg, tmp_path / "cut", resume=True, quiet=True)
    from ratkit.checkpoints import read_checkpoint

    a, meta_a = read_checkpoint(Path(whole) / "last")
    b, meta_b = read_checkpoint(Path(resumed) / "last")
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("model/", "optim/")))
    assert meta_a["grad_scaler"] == meta_b["grad_scaler"]


# ----------------------------------------------------------------------------- cuDNN autotuning


def test_training_autotunes_cudnn_on_cuda_only_and_evaluation_turns_it_off():
    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with cudnn_autotuned(torch.device("cpu")):
            assert torch.backends.cudnn.benchmark is False
        with cudnn_autotuned(torch.device("cuda")):  # only the flag: no GPU needed
            assert torch.backends.cudnn.benchmark is True
            with strict_float32():
                assert torch.backends.cudnn.benchmark is False
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = saved


def test_a_composed_method_steps_in_every_precision():
    """compose_method's methods (what the config and rat bench build) take the step's precision."""
    x, y = _batch()
    for name in ("at", "trades", "mart"):
        method = compose_method(name, EPS, steps=1, rat={}, awp={})
        for precision in ("bfloat16", "float16"):
            model = _model()
            out = method.step(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y,
                              generator=torch.Generator().manual_seed(0), precision=StepPrecision(precision))
            assert torch.isfinite(out.loss)
