"""The kept speed optimisations (docs/performance.md) change speed, not results, within stated tolerances."""

import json
from pathlib import Path

import pytest
import torch
from helpers import TinyNet

from ratkit.attacks import PGDConfig, pgd
from ratkit.config import load_config
from ratkit.evaluate import protocol_attack
from ratkit.models import build_model
from ratkit.modes import parameters_frozen
from ratkit.train import train
from ratkit.weights import gaussian_noisy_params

# 64 steps: long enough that the runs settle (a shorter run's last epoch still jumps by several points)
TINY = ["data.dataset=synthetic", "data.val_size=256", "data.train_subset=1024", "train.epochs=4",
        "model.kwargs.channels=[4,8]", "model.kwargs.hidden=32", "attack.steps=3", "train.batch_size=64",
        "train.val_n=256", "eval.attacks=clean,pgd20", "eval.n=64", "eval.aa_n=null", "optim.lr=0.003"]


def _final_metrics(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_parameters_frozen_restores_every_flag_also_after_an_exception():
    model = TinyNet()
    model.bn.weight.requires_grad_(False)  # a user-frozen layer stays frozen
    with pytest.raises(RuntimeError):
        with parameters_frozen(model):
            assert not any(p.requires_grad for p in model.parameters())
            raise RuntimeError("boom")
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, True, True, True]


def test_pgd_builds_no_parameter_graph_and_restores_the_flags():
    model = TinyNet().eval()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    pgd(model, x, y, PGDConfig(eps=0.1, step_size=0.05, steps=2))
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def _trained_model():
    torch.manual_seed(0)
    model = build_model("smallcnn", num_classes=10, in_channels=1, channels=[8, 16], hidden=32,
                        input_size=[28, 28])
    from ratkit.data import synthetic_data
    from ratkit.methods import TRADES, trades_attack

    data = synthetic_data(512, seed=0)
    method = TRADES(attack=trades_attack(0.1, 3, 0.04), beta=3.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for epoch in range(3):
        for i in range(0, 512, 64):
            method.step(model, opt, data.x[i:i + 64], data.y[i:i + 64], generator=g)
    return model.eval(), synthetic_data(256, seed=1)


def test_bfloat16_attack_is_as_strong_as_the_float32_attack():
    """Accuracy under a bf16-autocast PGD (measured in float32) is within 3 points of float32 PGD."""
    model, test = _trained_model()
    accuracy = {}
    for precision in ("float32", "bfloat16"):
        cfg = PGDConfig(eps=0.1, step_size=0.025, steps=10, precision=precision)
        x_adv = pgd(model, test.x, test.y, cfg, generator=torch.Generator().manual_seed(0))
        assert x_adv.dtype == torch.float32
        assert (x_adv - test.x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        with torch.no_grad():
            accuracy[precision] = (model(x_adv).argmax(1) == test.y).float().mean().item()
    with torch.no_grad():
        clean = (model(test.x).argmax(1) == test.y).float().mean().item()
    assert clean - accuracy["float32"] > 0.1  # the attack matters on this model, so the comparison means something
    assert abs(accuracy["bfloat16"] - accuracy["float32"]) <= 0.03


def _outcome(tmp_path, name, *overrides):
    return _final_metrics(train(load_config("fmnist-cpu", [*TINY, *overrides]), tmp_path / name, quiet=True))


def test_training_with_a_bfloat16_attack_reaches_the_float32_result_within_3_points(tmp_path):
    fp32 = _outcome(tmp_path, "fp32", "attack.precision=float32")
    bf16 = _outcome(tmp_path, "bf16", "attack.precision=bfloat16")
    assert fp32["val_clean"] - fp32["val_pgd20"] > 0.2  # robustness is being measured, not chance
    for key in ("val_clean", "val_pgd20"):
        assert abs(bf16[key] - fp32[key]) <= 0.03, (key, fp32, bf16)


def test_a_channels_last_update_equals_the_default_layout_to_rounding():
    """On a fixed adversarial batch, loss, backward and optimizer step agree to float rounding.

    (The attack itself is not compared pixel by pixel: TRADES' sign-gradient steps start where
    the gradient is ~0, so rounding decides some signs in any layout; its strength is compared.)
    """
    from ratkit.bench import BenchSettings, bench_method, bench_model

    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    method = bench_method("rat-trades", 0.1, 10)
    x_adv = method.craft(bench_model(BenchSettings()), x, y, generator=torch.Generator().manual_seed(0))
    stepped, strength = [], []
    for layout in (torch.contiguous_format, torch.channels_last):
        model = bench_model(BenchSettings()).to(memory_format=layout)
        crafted = method.craft(model, x, y, generator=torch.Generator().manual_seed(0))
        strength.append(method.loss(model, x, crafted, y).terms["robust"].item())
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        method.update(model, opt, x.contiguous(memory_format=layout), x_adv, y)
        stepped.append(model.state_dict())
    for name, p in stepped[0].items():
        torch.testing.assert_close(stepped[1][name], p, rtol=1e-4, atol=1e-6, msg=name)
    assert strength[1] == pytest.approx(strength[0], rel=0.02)


def test_channels_last_training_reaches_the_default_layout_result_within_3_points(tmp_path):
    """Over many steps the rounding differences grow (as with any change of summation order);
    the outcome stays within the tolerance."""
    nchw = _outcome(tmp_path, "nchw", "train.channels_last=false")
    nhwc = _outcome(tmp_path, "nhwc", "train.channels_last=true")
    for key in ("val_clean", "val_pgd20"):
        assert abs(nhwc[key] - nchw[key]) <= 0.03, (key, nchw, nhwc)


def test_noisy_attack_weights_keep_the_channels_last_layout():
    model = build_model("smallcnn", num_classes=10, in_channels=1, input_size=[28, 28])
    model.to(memory_format=torch.channels_last)
    names = [n for n, p in model.named_parameters() if p.dim() == 4]
    noisy = gaussian_noisy_params(model, names, 1e-4, torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    for name in names:
        assert noisy[name].is_contiguous(memory_format=torch.channels_last)
        assert not noisy[name].requires_grad
        assert 0 < (noisy[name] - params[name]).abs().max() < 1e-3


@pytest.mark.parametrize("name", ["fgsm", "pgd20", "cw30"])
def test_every_protocol_attack_runs_in_float32(name):
    """Evaluation is float32 whatever the training attack used (METHOD.md)."""
    assert protocol_attack(name, 0.1, "Linf").precision == "float32"


def test_evaluation_of_a_channels_last_model_gives_the_same_per_example_results():
    from ratkit.evaluate import evaluate

    model, test = _trained_model()
    attacks = ("clean", "fgsm", "pgd20", "cw30")
    reports = []
    for layout in (torch.contiguous_format, torch.channels_last):
        model.to(memory_format=layout)
        reports.append(evaluate(model, test.x, test.y, dataset="synthetic", eps=0.1, attacks=attacks, quiet=True))
    for name in attacks:
        assert reports[0].attacks[name].correct == reports[1].attacks[name].correct, name
