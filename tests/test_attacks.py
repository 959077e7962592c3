"""Specifications of the one attack engine (``ratkit.attacks``)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratkit.attacks import (PGDConfig, attack_loss, cw_margin_loss, fgsm_config, kl_to_target, pgd,
                            project)

from helpers import TinyNet

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _net(seed=0):
    torch.manual_seed(seed)
    return TinyNet().eval()


def _batch(seed, n=5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


configs = st.builds(
    PGDConfig,
    eps=st.sampled_from([0.0, 0.01, 0.1, 0.3, 1.5]),
    step_size=st.sampled_from([0.01, 0.05, 0.5]),
    steps=st.integers(0, 4),
    norm=st.sampled_from(["Linf", "L2"]),
    loss=st.sampled_from(["ce", "cw", "kl"]),
    random_start=st.sampled_from(["none", "uniform", "normal"]),
    restarts=st.integers(1, 2),
    keep=st.sampled_from(["last", "best"]),
    train_mode=st.booleans(),
)


@SETTINGS
@given(cfg=configs, seed=st.integers(0, 50))
def test_pgd_never_leaves_the_epsilon_ball_or_the_image_range(cfg, seed):
    x, y = _batch(seed)
    x_adv = pgd(_net(), x, y, cfg, generator=torch.Generator().manual_seed(seed))
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if cfg.norm == "Linf" else delta.norm(dim=1)
    assert (size <= cfg.eps * (1 + 1e-5) + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@SETTINGS
@given(cfg=configs, seed=st.integers(0, 50))
def test_best_of_restarts_is_never_weaker_than_the_clean_input(cfg, seed):
    cfg = PGDConfig(**{**cfg.__dict__, "keep": "best", "train_mode": False})
    net = _net()
    x, y = _batch(seed)
    x_adv = pgd(net, x, y, cfg, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        clean_logits, adv_logits = net(x), net(x_adv)
    target = torch.softmax(clean_logits, 1)
    clean_loss = attack_loss(cfg.loss, clean_logits, y, target)
    adv_loss = attack_loss(cfg.loss, adv_logits, y, target)
    newly_wrong = (adv_logits.argmax(1) != y) & (clean_logits.argmax(1) == y)
    assert (newly_wrong | (adv_loss >= clean_loss - 1e-6)).all()


def test_more_steps_raise_the_loss_on_average():
    net = _net()
    x, y = _batch(3, n=32)
    weak = pgd(net, x, y, PGDConfig(eps=0.3, step_size=0.05, steps=1, keep="best"))
    strong = pgd(net, x, y, PGDConfig(eps=0.3, step_size=0.05, steps=10, keep="best"))
    with torch.no_grad():
        assert attack_loss("ce", net(strong), y).mean() > attack_loss("ce", net(weak), y).mean()


@SETTINGS
@given(cfg=configs, seed=st.integers(0, 50))
def test_fixed_seed_gives_identical_adversarial_examples(cfg, seed):
    x, y = _batch(seed)
    a = pgd(_net(), x, y, cfg, generator=torch.Generator().manual_seed(seed))
    b = pgd(_net(), x, y, cfg, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)


@settings(max_examples=50, deadline=None)
@given(eps=st.floats(0.01, 3.0), scale=st.floats(0.0, 10.0), seed=st.integers(0, 1000))
def test_l2_projection_is_exact(eps, scale, seed):
    d = torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    p = project(d, eps, "L2")
    norms, p_norms = d.flatten(1).norm(dim=1), p.flatten(1).norm(dim=1)
    outside = norms > eps
    # outside the ball: onto the sphere, same direction; inside: untouched
    assert torch.allclose(p_norms[outside], torch.full_like(p_norms[outside], eps), rtol=1e-9)
    cos = (p.flatten(1) * d.flatten(1)).sum(1)[outside] / (p_norms * norms)[outside]
    assert torch.allclose(cos, torch.ones_like(cos))
    assert torch.equal(p[~outside], d[~outside])


@SETTINGS
@given(cfg=configs, seed=st.integers(0, 20), start_training=st.booleans())
def test_model_mode_and_parameters_are_unchanged_and_get_no_grad(cfg, seed, start_training):
    net = _net()
    net.train(start_training)
    net.bn.eval()  # a user's frozen BN must stay frozen
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    x, y = _batch(seed)
    pgd(net, x, y, cfg, generator=torch.Generator().manual_seed(seed))
    assert [m.training for m in net.modules()] == modes
    for p in net.parameters():
        assert p.grad is None
    after = net.state_dict()
    for k, v in before.items():
        if cfg.train_mode and k.startswith("bn.") and not k.startswith("bn.weight") and not k.startswith("bn.bias"):
            continue  # train-mode attacks update BN running statistics, as in TRADES/AT
        assert torch.equal(after[k], v), k


def test_attack_runs_against_substituted_weights_without_touching_live_ones():
    net = _net()
    x, y = _batch(0)
    cfg = PGDConfig(eps=0.2, step_size=0.05, steps=3, random_start="none")
    live = {k: v.clone() for k, v in net.named_parameters()}
    other = {"conv.weight": net.conv.weight.detach() * -1.0}
    a = pgd(net, x, y, cfg, params=other)
    b = pgd(net, x, y, cfg)
    assert not torch.equal(a, b)
    for k, v in net.named_parameters():
        assert torch.equal(v, live[k])
    # identical weights given functionally give the identical attack
    same = {k: v.detach() for k, v in net.named_parameters()}
    assert torch.equal(pgd(net, x, y, cfg, params=same), b)


def test_fgsm_is_one_signed_gradient_step_from_the_clean_input():
    net = _net()
    x, y = _batch(1)
    eps = 0.05
    x_req = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(net(x_req), y, reduction="sum").backward()
    expected = (x + eps * x_req.grad.sign()).clamp(0, 1)
    assert torch.allclose(pgd(net, x, y, fgsm_config(eps)), expected)


def test_cw_margin_masks_the_true_class_whatever_the_logit_scale():
    logits = torch.tensor([[1e6, 3.0, -2.0], [-5e5, -4e5, -6e5]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    assert torch.equal(cw_margin_loss(logits, y), torch.tensor([3.0 - 1e6, -4e5 + 6e5], dtype=torch.float64))


def test_kl_attack_uses_clean_probabilities_computed_once_in_the_attack_mode():
    net = _net()
    x, y = _batch(2)
    cfg = PGDConfig(eps=0.1, step_size=0.02, steps=3, loss="kl", random_start="normal")
    with torch.no_grad():
        target = torch.softmax(net(x), 1)
    a = pgd(net, x, y, cfg, generator=torch.Generator().manual_seed(0))
    b = pgd(net, x, y, cfg, generator=torch.Generator().manual_seed(0), target_probs=target)
    assert torch.equal(a, b)
    assert torch.allclose(kl_to_target(net(x), target), torch.zeros(len(x)), atol=1e-6)


def test_invalid_settings_are_rejected_with_the_field_named():
    with pytest.raises(ValueError, match="norm"):
        PGDConfig(eps=0.1, step_size=0.01, steps=1, norm="L3")
    with pytest.raises(ValueError, match="loss"):
        PGDConfig(eps=0.1, step_size=0.01, steps=1, loss="hinge")
    with pytest.raises(ValueError, match="restarts"):
        PGDConfig(eps=0.1, step_size=0.01, steps=1, restarts=0)
    assert math.isclose(fgsm_config(0.3).step_size, 0.3)
