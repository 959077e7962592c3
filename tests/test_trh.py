"""Specifications of the TrH controls of exact-head (Wang et al., arXiv 2211.12624): RAT(taylor="trh"), the
trace of the base objective's head Hessian (TRADES, PGD-AT, MART), and RAT(taylor="adv-trace"), the
adversarial cross-entropy's trace alone (earlier releases' "trh"), checked against autograd's Hessian of
the head in float64; old run directories' "trh" loads as "adv-trace"."""

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.func import functional_call, hessian

from head_problem import EPS, head_batch, head_model, head_outputs

from ratkit.config import ConfigError, config_to_dict, load_config, method_label
from ratkit.methods import AT, MART, RAT, TRADES, InvalidSetting, train_attack, trades_attack
from ratkit.methods.base import Outputs
from ratkit.methods.rat import ce_head_trace, mart_head_trace, trades_head_trace
from ratkit.train import build_method, load_run_config, prepare_run

# torch itself warns when torch.func.hessian first loads its decompositions
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _head_hessian_traces(model, feats, y):
    """Traces of the weight and the bias blocks of the Hessian of mean CE(head(h), y), by autograd (None for
    a head without a bias)."""
    head = model.head
    params = {k: v.detach() for k, v in head.named_parameters()}

    def mean_ce(p):
        return F.cross_entropy(functional_call(head, p, (feats.detach(),)), y)

    h = hessian(mean_ce)(params)
    weight = h["weight"]["weight"].reshape(head.weight.numel(), head.weight.numel())
    return weight.diagonal().sum(), h["bias"]["bias"].diagonal().sum() if "bias" in h else None


@pytest.mark.parametrize("sigma", [None, 0.3])
def test_the_adv_trace_term_is_the_autograd_trace_of_the_adversarial_head_hessian(sigma):
    model = head_model()
    x, x_adv, y = head_batch()
    out = head_outputs(model, x, x_adv, y)
    tr_adv, bias_adv = _head_hessian_traces(model, out.feats_adv, y)
    tr_nat, _ = _head_hessian_traces(model, out.feats_clean, y)
    alpha = 0.3
    term = RAT(TRADES(), alpha=alpha, taylor="adv-trace", taylor_sigma=sigma).adv_trace_terms(out)
    assert set(term) == {"adv_trace"}
    # relative: exact-head's second-order normaliser; absolute: sigma^2 / 2
    scale = 1 / (tr_adv + tr_nat) if sigma is None else sigma**2 / 2
    torch.testing.assert_close(term["adv_trace"], alpha / 2 * scale * tr_adv, rtol=1e-10, atol=1e-14)
    assert tr_adv > 1e-3 and term["adv_trace"] > 0
    # the bias block is left out, as in exact-head: it would add the batch mean of sum_k p_k (1 - p_k)
    p = torch.softmax(out.logits_adv, dim=1)
    torch.testing.assert_close(bias_adv, (p * (1 - p)).sum(dim=1).mean().detach(), rtol=1e-10, atol=1e-14)


def test_adv_trace_differs_from_exact_heads_second_order_term_by_the_clean_trace_alone():
    """Same normaliser, same weight: where the curvature gap is positive, adv-trace's value and gradient
    are exact-head's plus the clean trace's (the gradient reaching the first convolution)."""
    model = head_model(seed=1)
    x, x_adv, y = head_batch(seed=1)
    exact = RAT(TRADES(), alpha=0.4, taylor="exact-head", order=(2,))
    if exact.exact_head_terms(head_outputs(model, x, x_adv, y))["taylor2"] == 0:
        x, x_adv = x_adv, x  # the side with the larger curvature as adversarial: the non-zero branch
    out = head_outputs(model, x, x_adv, y)
    gap = exact.exact_head_terms(out)["taylor2"]
    trh = RAT(TRADES(), alpha=0.4, taylor="adv-trace").adv_trace_terms(out)["adv_trace"]
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


def test_no_gradient_of_the_adv_trace_term_reaches_the_clean_output_but_trhs_on_trades_does():
    model = head_model()
    x, x_adv, y = head_batch()
    for sigma in (None, 1e-2):
        loss = RAT(TRADES(), taylor="adv-trace", taylor_sigma=sigma).loss(model, x, x_adv, y)
        (g,) = torch.autograd.grad(loss.terms["adv_trace"], loss.outputs.logits_clean, allow_unused=True)
        assert g is None or torch.count_nonzero(g) == 0
        (g,) = torch.autograd.grad(loss.terms["adv_trace"], loss.outputs.logits_adv)
        assert torch.count_nonzero(g) > 0
        # TRADES' objective has the clean output in it, and so has its trace
        loss = RAT(TRADES(), taylor="trh", taylor_sigma=sigma).loss(model, x, x_adv, y)
        for logits in (loss.outputs.logits_clean, loss.outputs.logits_adv):
            (g,) = torch.autograd.grad(loss.terms["trh"], logits, retain_graph=True)
            assert torch.count_nonzero(g) > 0


@pytest.mark.parametrize("taylor,term", [("trh", "trh"), ("adv-trace", "adv_trace")])
def test_order_two_and_order_one_and_two_are_the_same_trace_term_and_alpha_zero_is_the_base(taylor, term):
    model = head_model()
    x, x_adv, y = head_batch()
    a = RAT(TRADES(), alpha=0.3, taylor=taylor, order=(2,)).loss(model, x, x_adv, y)
    b = RAT(TRADES(), alpha=0.3, taylor=taylor, order=(1, 2)).loss(model, x, x_adv, y)
    assert set(a.terms) == set(b.terms) == {"natural", "robust", term}
    assert torch.equal(a.loss, b.loss)
    plain = TRADES().loss(model, x, x_adv, y).terms
    torch.testing.assert_close(a.terms["natural"], 0.7 * plain["natural"], rtol=1e-12, atol=0)
    for base in (TRADES, AT, MART):
        zero = RAT(base(), alpha=0.0, taylor=taylor).loss(model, x, x_adv, y).loss
        assert torch.equal(zero, base().loss(model, x, x_adv, y).loss)


@pytest.mark.parametrize("taylor", ["trh", "adv-trace"])
@pytest.mark.parametrize("kwargs,setting", [
    ({"order": (1,)}, "order"),
    ({"clean_terms": "always"}, "clean_terms"),
    ({"clean_terms": "never"}, "clean_terms"),
    ({"pairing": "reference"}, "pairing"),
    ({"taylor_sigma": 0.0}, "taylor_sigma"),
])
def test_the_trace_controls_refuse_settings_they_cannot_use_naming_the_setting(taylor, kwargs, setting):
    with pytest.raises(InvalidSetting) as info:
        RAT(TRADES(), taylor=taylor, **kwargs)
    assert info.value.setting == setting


@pytest.mark.parametrize("kwargs", [
    {"taylor": "adv-trace", "trh_coef": 0.1},
    {"taylor": "exact-head", "trh_coef": 0.1},
    {"taylor": "analytic", "trh_coef": 0.1},
    {"taylor": "trh", "trh_coef": 0.0},
    {"taylor": "trh", "trh_coef": -1.0},
    {"taylor": "trh", "trh_coef": float("nan")},
    {"taylor": "trh", "trh_coef": float("inf")},
    {"taylor": "trh", "trh_coef": 0.1, "taylor_sigma": 0.1},
])
def test_trh_coef_is_refused_outside_trh_when_not_positive_and_beside_taylor_sigma(kwargs):
    with pytest.raises(InvalidSetting) as info:
        RAT(TRADES(), **kwargs)
    assert info.value.setting == "trh_coef"


def test_the_config_builds_trh_and_adv_trace_and_names_the_field_it_refuses():
    method = build_method(load_config("fmnist-cpu", ["method.taylor=trh", "method.taylor_sigma=1e-2"]))
    assert isinstance(method, RAT) and method.taylor == "trh" and method.taylor_sigma == 1e-2
    method = build_method(load_config("fmnist-cpu", ["method.rat.taylor=trh", "method.rat.trh_coef=0.5"]))
    assert method.taylor == "trh" and method.trh_coef == 0.5 and method.taylor_sigma is None
    cfg = load_config("fmnist-cpu", ["method.rat.taylor=adv-trace"])
    assert build_method(cfg).taylor == "adv-trace" and method_label(cfg) == "rat-adv-trace-trades"
    with pytest.raises(ConfigError) as info:
        load_config("fmnist-cpu", ["method.taylor=trh", "method.order=[1]"])
    assert str(info.value).startswith("method.rat.order")
    with pytest.raises(ConfigError) as info:
        load_config("fmnist-cpu", ["method.rat.taylor=exact-head", "method.rat.trh_coef=0.5"])
    assert str(info.value).startswith("method.rat.trh_coef")


@pytest.mark.parametrize("taylor,term,coef", [("trh", "trh", None), ("trh", "trh", 1e-3),
                                             ("adv-trace", "adv_trace", None)])
@pytest.mark.parametrize("base", ["trades", "at"])
def test_rat_trace_controls_train_a_step_on_trades_and_at(base, taylor, term, coef):
    model = head_model(torch.float32)
    x, _, y = head_batch(n=16, dtype=torch.float32)
    inner = TRADES(attack=trades_attack(EPS, steps=2)) if base == "trades" else AT(attack=train_attack(EPS, steps=2))
    method = RAT(inner, taylor=taylor, trh_coef=coef)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = [p.detach().clone() for p in model.parameters()]
    step = method.step(model, opt, x, y, generator=torch.Generator().manual_seed(0))
    assert term in step.terms and step.terms[term] > 0
    assert all(torch.isfinite(v).all() for v in step.terms.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _random_head(batch, classes, dim, bias, seed, std=1.5):
    """A float64 head with spread-out logits, and clean and adversarial features and labels for it."""
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(dim, classes, bias=bias).to(torch.float64)
    with torch.no_grad():
        head.weight.copy_(std * torch.randn(classes, dim, generator=g, dtype=torch.float64))
        if bias:
            head.bias.copy_(torch.randn(classes, generator=g, dtype=torch.float64))
    feats = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    feats_adv = feats + 0.7 * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    return head, feats, feats_adv, torch.randint(0, classes, (batch,), generator=g)


def _autograd_base_trace(base, head, feats, feats_adv, y):
    """The trace of the Hessian of the base's own loss (its ``terms`` summed) with respect to every parameter
    of the head, by torch.func.hessian."""
    params = {k: v.detach() for k, v in head.named_parameters()}

    def objective(p):
        out = Outputs(y=y, feats_adv=feats_adv, logits_adv=functional_call(head, p, (feats_adv,)),
                      feats_clean=feats, logits_clean=functional_call(head, p, (feats,)))
        return sum(base.terms(out).values())

    h = hessian(objective)(params)
    return sum(h[k][k].reshape(v.numel(), v.numel()).diagonal().sum() for k, v in params.items())


HEADS = [(1, 2, 3), (5, 3, 4), (12, 10, 6)]  # (batch, classes, features)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("beta", [0.0, 1.0, 6.0])
@pytest.mark.parametrize("batch,classes,dim", HEADS)
def test_the_trades_closed_form_is_the_autograd_trace_of_the_trades_objectives_head_hessian(batch, classes, dim,
                                                                                           beta, bias):
    head, h, h_adv, y = _random_head(batch, classes, dim, bias, seed=batch + classes)
    expected = _autograd_base_trace(TRADES(beta=beta), head, h, h_adv, y)
    got = trades_head_trace(head(h), h, head(h_adv), h_adv, beta, bias)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # the KL part is not the adversarial cross-entropy's trace: the clean features enter it
    assert not torch.allclose(got, ce_head_trace(head(h_adv), h_adv, bias)) or beta == 0


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("beta", [0.0, 1.0, 6.0])
@pytest.mark.parametrize("batch,classes,dim", HEADS)
def test_the_mart_closed_form_is_the_autograd_trace_of_the_mart_objectives_head_hessian(batch, classes, dim,
                                                                                       beta, bias):
    head, h, h_adv, y = _random_head(batch, classes, dim, bias, seed=batch * classes)
    expected = _autograd_base_trace(MART(beta=beta), head, h, h_adv, y)
    got = mart_head_trace(head(h), h, head(h_adv), h_adv, y, beta, bias)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch,classes,dim", HEADS)
def test_the_at_closed_form_is_the_autograd_trace_of_the_adversarial_cross_entropys_head_hessian(batch, classes,
                                                                                                dim, bias):
    head, h, h_adv, y = _random_head(batch, classes, dim, bias, seed=batch + 2 * classes)
    expected = _autograd_base_trace(AT(), head, h, h_adv, y)
    torch.testing.assert_close(ce_head_trace(head(h_adv), h_adv, bias), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_at_equal_outputs_trades_kl_trace_is_beta_times_the_spread_times_the_feature_gap(beta):
    """p = q (the head maps h and h' to the same logits): the (log p - log q) terms vanish and the KL part
    is beta (1 - |p|^2) |h - h'|^2, a clean-versus-adversarial feature gap."""
    head, h, _, _ = _random_head(6, 5, 8, bias=False, seed=3)  # 5 x 8: a 3-dimensional null space
    null = torch.linalg.svd(head.weight.detach()).Vh[5:]  # feature directions the head ignores
    h_adv = h + torch.randn(6, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) @ null
    p = torch.softmax(head(h), dim=1)
    torch.testing.assert_close(head(h_adv), head(h), rtol=0, atol=1e-12)
    spread = 1 - (p * p).sum(dim=1)
    expected = (spread * (h * h).sum(dim=1)).mean() + beta * (spread * ((h - h_adv) ** 2).sum(dim=1)).mean()
    torch.testing.assert_close(trades_head_trace(head(h), h, head(h_adv), h_adv, beta, False), expected,
                               rtol=1e-9, atol=1e-12)
    assert ((h - h_adv) ** 2).sum() > 1e-2


@pytest.mark.parametrize("base", [TRADES(beta=3.0), AT(), MART(beta=2.0)], ids=["trades", "at", "mart"])
@pytest.mark.parametrize("bias", [True, False])
def test_the_trh_term_of_a_model_is_its_coefficient_times_the_base_objectives_head_trace(base, bias):
    """Through RAT.loss on a network: the head's bias is in the trace when the head has one; trh_coef is the
    whole weight; the relative default is exact-head's alpha / 2 / (tr H_adv + tr H_nat), taylor_sigma's
    alpha / 2 sigma^2 / 2."""
    model = head_model()
    if not bias:
        model.head = nn.Linear(model.head.in_features, model.head.out_features, bias=False).to(torch.float64)
    x, x_adv, y = head_batch()
    out = head_outputs(model, x, x_adv, y)
    trace = _autograd_base_trace(base, model.head, out.feats_clean, out.feats_adv, y)
    assert abs(trace) > 1e-3
    term = RAT(base, alpha=0.3, taylor="trh", trh_coef=0.05).loss(model, x, x_adv, y).terms["trh"]
    torch.testing.assert_close(term, 0.05 * trace, rtol=1e-9, atol=1e-12)
    tr_nat, _ = _head_hessian_traces(model, out.feats_clean, y)
    tr_adv, _ = _head_hessian_traces(model, out.feats_adv, y)
    for sigma, scale in ((None, 1 / (tr_adv + tr_nat)), (0.2, 0.2**2 / 2)):
        term = RAT(base, alpha=0.3, taylor="trh", taylor_sigma=sigma).loss(model, x, x_adv, y).terms["trh"]
        torch.testing.assert_close(term, 0.3 / 2 * scale * trace, rtol=1e-9, atol=1e-12)


def test_on_at_trh_is_adv_trace_with_the_head_bias_in_the_trace():
    """PGD-AT's objective is the adversarial cross-entropy: the two controls differ by the bias block alone."""
    model = head_model()
    x, x_adv, y = head_batch()
    trh = RAT(AT(), alpha=0.3, taylor="trh").loss(model, x, x_adv, y)
    adv = RAT(AT(), alpha=0.3, taylor="adv-trace").loss(model, x, x_adv, y)
    _, bias_adv = _head_hessian_traces(model, trh.outputs.feats_adv, y)
    tr_nat, _ = _head_hessian_traces(model, trh.outputs.feats_clean, y)
    tr_adv, _ = _head_hessian_traces(model, trh.outputs.feats_adv, y)
    torch.testing.assert_close(trh.terms["trh"] - adv.terms["adv_trace"], 0.3 / 2 * bias_adv / (tr_adv + tr_nat),
                               rtol=1e-9, atol=1e-14)
    assert bias_adv > 1e-3


def _write_run_config(run_dir, method):
    cfg = load_config("fmnist-cpu")
    d = config_to_dict(cfg)
    d["method"] = method
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(d, sort_keys=False))


@pytest.mark.parametrize("method", [
    {"name": "trades", "beta": 3.0, "rat": {"alpha": 0.2, "sigma": 1e-4, "order": [1, 2], "pairing": "fixed",
                                            "noise_layers": "conv", "taylor": "trh", "taylor_sigma": None,
                                            "clean_terms": "auto"}, "awp": None},
    {"name": "at", "beta": 3.0, "rat": True, "taylor": "trh", "taylor_sigma": 0.01},  # the flat form
], ids=["nested", "flat"])
def test_a_run_directory_from_before_trh_coef_loads_its_taylor_trh_as_adv_trace(tmp_path, method):
    _write_run_config(tmp_path / "old", method)
    cfg = load_run_config(tmp_path / "old")
    assert cfg.method.rat["taylor"] == "adv-trace" and cfg.method.rat["trh_coef"] is None
    assert build_method(cfg).taylor == "adv-trace"


def test_a_run_directory_written_now_keeps_its_trh_and_records_trh_coef(tmp_path):
    for coef in (None, 1e-3):
        cfg = load_config("fmnist-cpu", ["method.rat.taylor=trh", ("method.rat.trh_coef", coef)])
        run_dir = prepare_run(cfg, tmp_path / f"run-{coef}")
        assert "trh_coef" in yaml.safe_load((run_dir / "config.yaml").read_text())["method"]["rat"]
        loaded = load_run_config(run_dir)
        assert loaded == cfg and loaded.method.rat["taylor"] == "trh" and loaded.method.rat["trh_coef"] == coef
