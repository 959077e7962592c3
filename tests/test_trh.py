"""Specifications of RAT(taylor="trh"): the TrH control of exact-head, the adversarial head Hessian trace
alone (Wang et al., arXiv 2211.12624), checked against autograd's Hessian of the head in float64."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, hessian

from ratkit.config import ConfigError, load_config
from ratkit.methods import AT, RAT, TRADES, InvalidSetting, forward_outputs, train_attack, trades_attack
from ratkit.models import build_model
from ratkit.train import build_method

EPS = 0.1
# torch itself warns when torch.func.hessian first loads its decompositions
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _model(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return build_model("smallcnn", channels=(4, 8), hidden=16).to(dtype)


def _batch(n=12, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g, dtype=dtype)
    x_adv = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=dtype)).clamp(0, 1)
    return x, x_adv, torch.randint(0, 10, (n,), generator=g)


def _outputs(model, x, x_adv, y):
    return forward_outputs(model, x, x_adv, y, with_clean=True)


def _head_hessian_traces(model, feats, y):
    """Traces of the weight and the bias blocks of the Hessian of mean CE(head(h), y), by autograd."""
    head = model.head
    params = {k: v.detach() for k, v in head.named_parameters()}

    def mean_ce(p):
        return F.cross_entropy(functional_call(head, p, (feats.detach(),)), y)

    h = hessian(mean_ce)(params)
    weight = h["weight"]["weight"].reshape(head.weight.numel(), head.weight.numel())
    return weight.diagonal().sum(), h["bias"]["bias"].diagonal().sum()


@pytest.mark.parametrize("sigma", [None, 0.3])
def test_the_trh_term_is_the_autograd_trace_of_the_adversarial_head_hessian(sigma):
    model = _model()
    x, x_adv, y = _batch()
    out = _outputs(model, x, x_adv, y)
    tr_adv, bias_adv = _head_hessian_traces(model, out.feats_adv, y)
    tr_nat, _ = _head_hessian_traces(model, out.feats_clean, y)
    alpha = 0.3
    term = RAT(TRADES(), alpha=alpha, taylor="trh", taylor_sigma=sigma).trh_terms(out)
    assert set(term) == {"trh"}
    # relative: exact-head's second-order normaliser; absolute: sigma^2 / 2
    scale = 1 / (tr_adv + tr_nat) if sigma is None else sigma**2 / 2
    torch.testing.assert_close(term["trh"], alpha / 2 * scale * tr_adv, rtol=1e-10, atol=1e-14)
    assert tr_adv > 1e-3 and term["trh"] > 0
    # the bias block is left out, as in exact-head: it would add the batch mean of sum_k p_k (1 - p_k)
    p = torch.softmax(out.logits_adv, dim=1)
    torch.testing.assert_close(bias_adv, (p * (1 - p)).sum(dim=1).mean().detach(), rtol=1e-10, atol=1e-14)


def test_trh_differs_from_exact_heads_second_order_term_by_the_clean_trace_alone():
    """Same normaliser, same weight: where the curvature gap is positive, trh's value and gradient
    are exact-head's plus the clean trace's (the gradient reaching the first convolution)."""
    model = _model(seed=1)
    x, x_adv, y = _batch(seed=1)
    exact = RAT(TRADES(), alpha=0.4, taylor="exact-head", order=(2,))
    if exact.exact_head_terms(_outputs(model, x, x_adv, y))["taylor2"] == 0:
        x, x_adv = x_adv, x  # the side with the larger curvature as adversarial: the non-zero branch
    out = _outputs(model, x, x_adv, y)
    gap = exact.exact_head_terms(out)["taylor2"]
    trh = RAT(TRADES(), alpha=0.4, taylor="trh").trh_terms(out)["trh"]
    tr_nat, _ = _head_hessian_traces(model, out.feats_clean, y)
    tr_adv, _ = _head_hessian_traces(model, out.feats_adv, y)
    clean_part = 0.4 / 2 * tr_nat / (tr_adv + tr_nat)
    assert gap > 0
    torch.testing.assert_close(trh, gap + clean_part, rtol=1e-10, atol=1e-14)
    params = list(model.parameters())
    g_trh = torch.autograd.grad(trh, params, retain_graph=True, allow_unused=True)
    g_gap = torch.autograd.grad(gap, params, retain_graph=True, allow_unused=True)
    tr_nat_graph = _trace(out.logits_clean, out.feats_clean)
    g_clean = torch.autograd.grad(0.4 / 2 * tr_nat_graph / (tr_adv + tr_nat), params, retain_graph=True,
                                  allow_unused=True)
    for (name, p), a, b, c in zip(model.named_parameters(), g_trh, g_gap, g_clean):
        a, b, c = (torch.zeros_like(p) if t is None else t for t in (a, b, c))
        torch.testing.assert_close(a, b + c, rtol=1e-8, atol=1e-12, msg=name)
    conv = model.feature_extractor[0].weight
    assert torch.autograd.grad(trh, conv, retain_graph=True)[0].abs().max() > 0


def _trace(logits, feats):
    """The closed-form trace with respect to W, differentiable (the one checked against autograd above)."""
    p = torch.softmax(logits, dim=1)
    return ((p * (1 - p)).sum(dim=1) * (feats * feats).sum(dim=1)).mean()


def test_no_gradient_of_the_trh_term_reaches_the_clean_output():
    model = _model()
    x, x_adv, y = _batch()
    for sigma in (None, 1e-2):
        loss = RAT(TRADES(), taylor="trh", taylor_sigma=sigma).loss(model, x, x_adv, y)
        (g,) = torch.autograd.grad(loss.terms["trh"], loss.outputs.logits_clean, allow_unused=True)
        assert g is None or torch.count_nonzero(g) == 0
        (g,) = torch.autograd.grad(loss.terms["trh"], loss.outputs.logits_adv)
        assert torch.count_nonzero(g) > 0


def test_order_two_and_order_one_and_two_are_the_same_trace_term_and_alpha_zero_is_the_base():
    model = _model()
    x, x_adv, y = _batch()
    a = RAT(TRADES(), alpha=0.3, taylor="trh", order=(2,)).loss(model, x, x_adv, y)
    b = RAT(TRADES(), alpha=0.3, taylor="trh", order=(1, 2)).loss(model, x, x_adv, y)
    assert set(a.terms) == set(b.terms) == {"natural", "robust", "trh"}
    assert torch.equal(a.loss, b.loss)
    plain = TRADES().loss(model, x, x_adv, y).terms
    torch.testing.assert_close(a.terms["natural"], 0.7 * plain["natural"], rtol=1e-12, atol=0)
    for base in (TRADES, AT):
        zero = RAT(base(), alpha=0.0, taylor="trh").loss(model, x, x_adv, y).loss
        assert torch.equal(zero, base().loss(model, x, x_adv, y).loss)


@pytest.mark.parametrize("kwargs,setting", [
    ({"order": (1,)}, "order"),
    ({"clean_terms": "always"}, "clean_terms"),
    ({"clean_terms": "never"}, "clean_terms"),
    ({"pairing": "reference"}, "pairing"),
    ({"taylor_sigma": 0.0}, "taylor_sigma"),
])
def test_trh_refuses_settings_it_cannot_use_naming_the_setting(kwargs, setting):
    with pytest.raises(InvalidSetting) as info:
        RAT(TRADES(), taylor="trh", **kwargs)
    assert info.value.setting == setting


def test_the_config_builds_trh_and_names_the_field_it_refuses():
    method = build_method(load_config("fmnist-cpu", ["method.taylor=trh", "method.taylor_sigma=1e-2"]))
    assert isinstance(method, RAT) and method.taylor == "trh" and method.taylor_sigma == 1e-2
    with pytest.raises(ConfigError) as info:
        load_config("fmnist-cpu", ["method.taylor=trh", "method.order=[1]"])
    assert str(info.value).startswith("method.rat.order")


@pytest.mark.parametrize("base", ["trades", "at"])
def test_rat_trh_trains_a_step_on_trades_and_at(base):
    model = _model(torch.float32)
    x, _, y = _batch(n=16, dtype=torch.float32)
    inner = TRADES(attack=trades_attack(EPS, steps=2)) if base == "trades" else AT(attack=train_attack(EPS, steps=2))
    method = RAT(inner, taylor="trh")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = [p.detach().clone() for p in model.parameters()]
    step = method.step(model, opt, x, y, generator=torch.Generator().manual_seed(0))
    assert "trh" in step.terms and step.terms["trh"] > 0
    assert all(torch.isfinite(v).all() for v in step.terms.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
