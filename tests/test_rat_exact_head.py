"""Specifications of RAT(taylor="exact-head"): the last layer's Taylor terms in closed form, checked
against autograd (gradients, explicit Hessians, double backpropagation) in float64."""

import pytest
import torch
import torch.nn.functional as F

from head_problem import BASES, head_batch, head_model, head_outputs

from ratkit.config import ConfigError, load_config, method_label
from ratkit.methods import AT, RAT, TRADES, Outputs, head_taylor_statistics
from ratkit.train import build_method


def _head_grad(model, feats, y, create_graph=False):
    """d mean CE(head(h), y) / dW by autograd."""
    loss = F.cross_entropy(model.head(feats), y)
    return torch.autograd.grad(loss, model.head.weight, create_graph=create_graph)[0]


def test_first_order_closed_form_is_the_norm_of_the_autograd_head_gradient_difference():
    model = head_model()
    x, x_adv, y = head_batch()
    out = head_outputs(model, x, x_adv, y)
    g_nat, _ = head_taylor_statistics(out.logits_clean, out.feats_clean, y)
    g_adv, _ = head_taylor_statistics(out.logits_adv, out.feats_adv, y)
    a_nat, a_adv = _head_grad(model, out.feats_clean, y), _head_grad(model, out.feats_adv, y)
    torch.testing.assert_close(g_nat, a_nat, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_adv, a_adv, rtol=1e-10, atol=1e-12)
    closed = torch.linalg.matrix_norm(g_adv - g_nat)
    torch.testing.assert_close(closed, (a_adv - a_nat).flatten().norm(), rtol=1e-10, atol=1e-12)
    assert closed > 1e-4  # not vacuous
    # and the term RAT puts in its loss is exactly alpha * sigma * that norm
    terms = RAT(TRADES(), alpha=0.3, taylor="exact-head", taylor_sigma=0.5, order=(1,)).exact_head_terms(out)
    torch.testing.assert_close(terms["taylor1"], 0.3 * 0.5 * closed, rtol=1e-12, atol=0)


@pytest.mark.parametrize("side", ["clean", "adv"])
def test_hessian_trace_closed_form_is_the_trace_of_the_explicit_head_hessian(side):
    model = head_model()
    x, x_adv, y = head_batch()
    out = head_outputs(model, x, x_adv, y)
    feats = (out.feats_clean if side == "clean" else out.feats_adv).detach()
    logits = out.logits_clean if side == "clean" else out.logits_adv
    _, trace = head_taylor_statistics(logits, feats, y)
    bias = model.head.bias.detach()
    shape = model.head.weight.shape

    def mean_ce(w_flat):
        return F.cross_entropy(feats @ w_flat.view(shape).T + bias, y)

    hessian = torch.autograd.functional.hessian(mean_ce, model.head.weight.detach().flatten())
    assert hessian.shape == (shape.numel(), shape.numel())
    torch.testing.assert_close(trace, hessian.diagonal().sum(), rtol=1e-10, atol=1e-12)
    assert trace > 1e-3


def _double_backprop_terms(model, x, x_adv, y, alpha, sigma):
    """The exact-head terms from autograd of CE with respect to W (create_graph=True): the head
    gradients, and the Hessian's diagonal entry by entry; both differentiable to the network weights."""
    model.train()
    feats_nat, feats_adv = model.features(x), model.features(x_adv)
    g_nat = _head_grad(model, feats_nat, y, create_graph=True)
    g_adv = _head_grad(model, feats_adv, y, create_graph=True)

    def trace(g):
        flat = g.flatten()
        diag = [torch.autograd.grad(flat[i], model.head.weight, create_graph=True)[0].flatten()[i]
                for i in range(flat.numel())]
        return torch.stack(diag).sum()

    first = alpha * sigma * (g_adv - g_nat).flatten().norm()
    second = alpha / 2 * sigma**2 / 2 * F.relu(trace(g_adv) - trace(g_nat))
    return first, second


def test_gradients_of_the_terms_equal_double_backpropagation_through_every_layer():
    model = head_model(seed=1)
    x, x_adv, y = head_batch(n=8, seed=1)
    alpha, sigma = 0.2, 0.7
    rat = RAT(TRADES(), alpha=alpha, taylor="exact-head", taylor_sigma=sigma)
    if rat.exact_head_terms(head_outputs(model, x, x_adv, y))["taylor2"] == 0:
        x, x_adv = x_adv, x  # take the side with the larger curvature as adversarial: the non-zero branch
    ours = rat.exact_head_terms(head_outputs(model, x, x_adv, y))
    first, second = _double_backprop_terms(model, x, x_adv, y, alpha, sigma)
    torch.testing.assert_close(ours["taylor1"], first, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(ours["taylor2"], second, rtol=1e-10, atol=1e-14)
    assert second > 0
    params = [p for p in model.parameters()]
    for closed, autograd in ((ours["taylor1"], first), (ours["taylor2"], second)):
        want = torch.autograd.grad(autograd, params, retain_graph=True, allow_unused=True)
        got = torch.autograd.grad(closed, params, retain_graph=True, allow_unused=True)
        for (name, _), a, b in zip(model.named_parameters(), got, want):
            a = torch.zeros_like(_) if a is None else a
            b = torch.zeros_like(_) if b is None else b
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12, msg=name)
        conv = model.feature_extractor[0].weight
        assert torch.autograd.grad(closed, conv, retain_graph=True)[0].abs().max() > 0  # reaches the first conv


def test_relative_terms_hold_their_normalisers_constant_and_lie_in_the_unit_interval():
    model = head_model(seed=2)
    x, x_adv, y = head_batch(seed=2)
    out = head_outputs(model, x, x_adv, y)
    rel = RAT(TRADES(), alpha=1.0, taylor="exact-head").exact_head_terms(out)
    g_nat, tr_nat = head_taylor_statistics(out.logits_clean, out.feats_clean, y)
    g_adv, tr_adv = head_taylor_statistics(out.logits_adv, out.feats_adv, y)
    norm = torch.linalg.matrix_norm
    size1, size2 = (norm(g_adv) + norm(g_nat)).detach(), (tr_adv + tr_nat).detach()
    torch.testing.assert_close(rel["taylor1"], norm(g_adv - g_nat) / size1, rtol=1e-12, atol=0)
    torch.testing.assert_close(rel["taylor2"], 0.5 * F.relu(tr_adv - tr_nat) / size2, rtol=1e-12, atol=0)
    assert 0 < rel["taylor1"] <= 1 and 0 <= rel["taylor2"] <= 0.5
    # the gradient is the sigma-scaled term's, divided by the (constant) normaliser
    raw = RAT(TRADES(), alpha=1.0, taylor="exact-head", taylor_sigma=1.0, order=(1,)).exact_head_terms(out)
    w = model.head.weight
    torch.testing.assert_close(torch.autograd.grad(rel["taylor1"], w, retain_graph=True)[0],
                               torch.autograd.grad(raw["taylor1"], w, retain_graph=True)[0] / size1,
                               rtol=1e-10, atol=1e-14)


def test_relative_terms_do_not_change_when_features_grow_and_the_head_shrinks_alike():
    """h -> c h, W -> W / c leaves every prediction as it is; the sigma-scaled terms scale by c and c^2
    (an optimiser could lower them without changing the function), the relative ones do not move."""
    model = head_model(seed=3)
    x, x_adv, y = head_batch(seed=3)
    out = head_outputs(model, x, x_adv, y)
    c = 7.0
    scaled = Outputs(y=y, feats_adv=c * out.feats_adv, logits_adv=out.logits_adv, feats_clean=c * out.feats_clean,
                     logits_clean=out.logits_clean)
    rel, raw = RAT(TRADES(), taylor="exact-head"), RAT(TRADES(), taylor="exact-head", taylor_sigma=1e-2)
    a, b = rel.exact_head_terms(out), rel.exact_head_terms(scaled)
    torch.testing.assert_close(a["taylor1"], b["taylor1"], rtol=1e-12, atol=0)
    torch.testing.assert_close(a["taylor2"], b["taylor2"], rtol=1e-12, atol=0)
    a, b = raw.exact_head_terms(out), raw.exact_head_terms(scaled)
    torch.testing.assert_close(b["taylor1"], c * a["taylor1"], rtol=1e-12, atol=0)
    torch.testing.assert_close(b["taylor2"], c * c * a["taylor2"], rtol=1e-12, atol=0)


def test_a_negative_curvature_gap_is_neither_rewarded_nor_penalised():
    model = head_model(seed=4)
    x, x_adv, y = head_batch(seed=4)
    out = head_outputs(model, x, x_adv, y)
    # swap the roles: whichever side has the larger trace becomes "adversarial" once, "clean" once
    swapped = Outputs(y=y, feats_adv=out.feats_clean, logits_adv=out.logits_clean, feats_clean=out.feats_adv,
                      logits_clean=out.logits_adv)
    rat = RAT(TRADES(), taylor="exact-head", order=(2,))
    values = [rat.exact_head_terms(o)["taylor2"] for o in (out, swapped)]
    assert sorted(v.item() > 0 for v in values) == [False, True]
    zero = next(v for v in values if v.item() == 0)
    grads = torch.autograd.grad(zero, [p for p in model.parameters()], allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)


def test_identical_clean_and_adversarial_batches_give_zero_terms_and_finite_gradients():
    model = head_model()
    x, _, y = head_batch()
    for sigma in (None, 1e-2):
        loss = RAT(TRADES(), taylor="exact-head", taylor_sigma=sigma).loss(model, x, x, y)
        assert loss.terms["taylor1"].item() == 0 and loss.terms["taylor2"].item() == 0
        grads = torch.autograd.grad(loss.loss, [p for p in model.parameters()])
        assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("base", sorted(BASES))
def test_exact_head_with_alpha_zero_is_exactly_its_base(base):
    model = head_model(torch.float32)
    x, x_adv, y = head_batch(dtype=torch.float32)
    base_loss = BASES[base]().loss(model, x, x_adv, y).loss
    for sigma in (None, 1e-4):
        rat = RAT(BASES[base](), alpha=0.0, taylor="exact-head", taylor_sigma=sigma)
        assert torch.equal(rat.loss(model, x, x_adv, y).loss, base_loss)


@pytest.mark.parametrize("order,present", [((1,), {"taylor1"}), ((2,), {"taylor2"}), ((1, 2), {"taylor1", "taylor2"})])
def test_order_selects_the_exact_terms_and_the_base_keeps_its_one_minus_alpha_rule(order, present):
    model = head_model()
    x, x_adv, y = head_batch()
    terms = RAT(TRADES(), alpha=0.3, order=order, taylor="exact-head").loss(model, x, x_adv, y).terms
    assert {k for k in terms if k.startswith("taylor")} == present
    plain = TRADES().loss(model, x, x_adv, y).terms
    torch.testing.assert_close(terms["natural"], 0.7 * plain["natural"], rtol=1e-12, atol=0)
    assert torch.equal(terms["robust"], plain["robust"])


def test_exact_head_on_at_uses_one_clean_forward_and_bothhead_outputs():
    model = head_model()
    x, x_adv, y = head_batch()
    calls = []
    handle = model.head.register_forward_hook(lambda *a: calls.append(1))
    loss = RAT(AT(), taylor="exact-head").loss(model, x, x_adv, y)
    handle.remove()
    assert len(calls) == 2
    # gap terms, not targets: their gradient reaches the clean output too, on every base
    g = torch.autograd.grad(loss.terms["taylor1"], loss.outputs.logits_clean)[0]
    assert torch.count_nonzero(g) > 0


def test_rat_refuses_soft_target_settings_with_exact_head_and_taylor_sigma_without_it():
    for kwargs, needle in [({"taylor": "exact-head", "clean_terms": "always"}, "clean_terms"),
                           ({"taylor": "exact-head", "clean_terms": "never"}, "clean_terms"),
                           ({"taylor": "exact-head", "pairing": "reference"}, "pairing"),
                           ({"taylor": "exact-head", "taylor_sigma": 0.0}, "taylor_sigma"),
                           ({"taylor": "exact-head", "taylor_sigma": -1.0}, "taylor_sigma"),
                           ({"taylor": "analytic", "taylor_sigma": 1e-3}, "taylor_sigma")]:
        with pytest.raises(ValueError, match=needle):
            RAT(TRADES(), **kwargs)


def test_the_config_and_build_method_accept_exact_head():
    cfg = load_config("fmnist-cpu", ["method.taylor=exact-head"])
    method = build_method(cfg)
    assert isinstance(method, RAT) and method.taylor == "exact-head" and method.taylor_sigma is None
    assert method_label(cfg) == "rat-exact-trades"
    cfg = load_config("fmnist-cpu", ["method.name=at", "method.taylor=exact-head", "method.taylor_sigma=1e-3",
                                     "method.awp=true"])
    method = build_method(cfg)
    assert method.method.taylor == "exact-head" and method.method.taylor_sigma == 1e-3
    assert isinstance(method.method.base, AT)
    assert method_label(cfg) == "awp-rat-exact-at"


def test_exact_head_inside_awp_from_the_first_epoch_is_warned_of_before_the_run_starts():
    from ratkit.preflight import exact_head_in_awp_line

    warned = ["method.rat.taylor=exact-head", "method.awp=true"]
    assert "method.awp.warmup=2" in exact_head_in_awp_line(load_config("fmnist-cpu", warned))
    assert "method.awp.warmup=2" in exact_head_in_awp_line(load_config("fmnist-cpu", warned + ["method.awp.warmup=1"]))
    for quiet in (warned + ["method.awp.warmup=2"], ["method.rat.taylor=exact-head"], ["method.awp=true"],
                  ["method.awp=true", "method.rat.taylor=trh"]):
        assert exact_head_in_awp_line(load_config("fmnist-cpu", quiet)) is None


@pytest.mark.parametrize("overrides,field", [
    (["method.taylor=exact-head", "method.clean_terms=always"], "method.rat.clean_terms"),
    (["method.taylor=exact-head", "method.pairing=reference"], "method.rat.pairing"),
    (["method.taylor=exact-head", "method.taylor_sigma=0"], "method.rat.taylor_sigma"),
    (["method.rat.taylor_sigma=1e-3"], "method.rat.taylor_sigma"),
])
def test_the_config_names_the_field_of_a_setting_exact_head_cannot_use(overrides, field):
    with pytest.raises(ConfigError) as info:
        load_config("fmnist-cpu", overrides)
    assert str(info.value).startswith(field)


@pytest.mark.parametrize("base,sigma", [("trades", None), ("at", None), ("trades", 1e-4)])
def test_a_few_steps_of_exact_head_rat_lower_the_loss_on_a_fixedhead_batch(base, sigma):
    model = head_model(torch.float32)
    x, _, y = head_batch(n=32, dtype=torch.float32)
    method = RAT(BASES[base](), taylor="exact-head", taylor_sigma=sigma)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    steps = [method.step(model, opt, x, y, generator=g) for _ in range(25)]
    losses = [s.loss.item() for s in steps]
    assert all(torch.isfinite(v).all() for s in steps for v in s.terms.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sum(losses[-5:]) < sum(losses[:5])


def test_rat_train_with_exact_head_inside_awp_warns_before_the_first_step_and_trains(tmp_path, capsys):
    from tiny import tiny_run

    from ratkit.cli import main

    sets = [a for s in tiny_run("method.rat.taylor=exact-head") for a in ("--set", s)]
    assert main(["train", "--rat", "--awp", "--out", str(tmp_path / "run"), "--quiet", "--no-eval", *sets]) == 0
    assert "set method.awp.warmup=2" in capsys.readouterr().err
    recorded = load_config(tmp_path / "run" / "config.yaml")
    assert recorded.method.rat["taylor"] == "exact-head" and recorded.method.awp is not None
