"""Specifications of the base-method registry: one entry adds a method to the config, training and RAT/AWP."""

from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from ratkit.attacks import PGDConfig
from ratkit.config import ConfigError, load_config
from ratkit.methods import AT, AWP, BASE_METHODS, MART, RAT, TRADES, BaseMethod, Outputs, compose_method, train_attack
from ratkit.models import build_model
from ratkit.train import build_method


@dataclass
class MixedAT(BaseMethod):
    """Half clean, half adversarial cross-entropy (Goodfellow et al., 2015): a newcomer's base method."""

    attack: PGDConfig = field(default_factory=lambda: MixedAT.training_attack(8 / 255))
    needs_clean: ClassVar[bool] = True
    labels_clean: ClassVar[bool] = True
    primary_term: ClassVar[str] = "adv_ce"
    attack_objective: ClassVar[str] = "cw"
    attack_start: ClassVar[str] = "uniform"

    def terms(self, out: Outputs):
        return {"adv_ce": 0.5 * F.cross_entropy(out.logits_adv, out.y),
                "clean_ce": 0.5 * F.cross_entropy(out.logits_clean, out.y)}


def test_one_registry_entry_makes_a_new_base_method_configurable_composable_and_trainable(monkeypatch):
    with pytest.raises(ConfigError, match="method.name"):
        load_config("fmnist-cpu", ["method.name=mixed-at"])
    monkeypatch.setitem(BASE_METHODS, "mixed-at", MixedAT)

    cfg = load_config("fmnist-cpu", ["method.name=mixed-at", "method.awp=true", "attack.steps=2",
                                     "attack.precision=float32"])
    method = build_method(cfg)
    assert isinstance(method, AWP) and isinstance(method.method, RAT) and isinstance(method.method.base, MixedAT)
    attack = method.method.base.attack  # its own recipe on the config's threat model
    assert (attack.loss, attack.random_start, attack.eps, attack.steps) == ("cw", "uniform", 0.1, 2)

    torch.manual_seed(0)
    model = build_model("smallcnn", channels=(4, 8), hidden=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
    before = [p.detach().clone() for p in model.parameters()]
    out = method.step(model, optimizer, x, y, generator=g)
    assert {"adv_ce", "clean_ce", "taylor1", "taylor2"} <= set(out.terms) and torch.isfinite(out.loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_each_base_method_carries_its_own_training_attack():
    for cls, loss, start in [(AT, "ce", "uniform"), (TRADES, "kl", "normal"), (MART, "ce", "normal")]:
        expected = train_attack(0.1, 5, 0.02, "L2", loss=loss, random_start=start, precision="bfloat16")
        assert cls.training_attack(0.1, 5, 0.02, "L2", "bfloat16") == expected
        assert cls.from_settings(0.1, 5, 0.02, "L2", "bfloat16").attack == expected
        assert cls().attack == train_attack(8 / 255, loss=loss, random_start=start)


def test_hyperparameters_reach_the_base_methods_that_have_them():
    assert compose_method("trades", 0.1, beta=3.0).beta == 3.0
    assert compose_method("mart", 0.1, beta=3.0).beta == 3.0
    assert compose_method("at", 0.1, beta=3.0) == AT(attack=AT.training_attack(0.1))  # beta means nothing to AT


def test_compose_method_wraps_as_asked_and_the_wrappers_check_their_settings():
    method = compose_method("mart", 0.1, steps=2, rat={"alpha": 0.3}, awp={})
    assert isinstance(method, AWP) and method.gamma == AWP(RAT(MART())).gamma
    assert isinstance(method.method, RAT) and method.method.alpha == 0.3 and isinstance(method.method.base, MART)
    with pytest.raises(ValueError, match="RAT.alpha"):
        compose_method("trades", 0.1, rat={"alpha": 2.0})
    with pytest.raises(ValueError, match="AWP.warmup"):
        compose_method("trades", 0.1, awp={"warmup": -1})


def test_unknown_base_method_names_list_the_registry():
    with pytest.raises(ValueError, match="at, trades, mart"):
        compose_method("pgd", 0.1)
    with pytest.raises(ConfigError, match="method.name: must be one of at, trades, mart"):
        load_config("fmnist-cpu", ["method.name=pgd"])


def test_the_config_names_the_field_of_a_setting_a_wrapper_refuses():
    for overrides, message in [(["method.rat.alpha=2"], "method.rat.alpha: must be in [0, 1], got 2.0"),
                               (["method.alpha=2"], "method.rat.alpha: must be in [0, 1], got 2.0"),
                               (["method.rat.sigma=-1"], "method.rat.sigma: must be >= 0, got -1.0"),
                               (["method.awp.gamma=-1"], "method.awp.gamma: must be >= 0, got -1.0"),
                               (["method.awp=true", "method.awp_warmup=-2"], "method.awp.warmup: must be >= 0")]:
        with pytest.raises(ConfigError) as info:
            load_config("fmnist-cpu", overrides)
        assert str(info.value).startswith(message)
