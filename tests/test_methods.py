"""Specifications of the training methods: AT, TRADES, MART and the wrappers RAT and AWP."""

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ratkit.attacks import kl_to_target
from ratkit.methods import (AT, AWP, MART, RAT, TRADES, InvalidSetting, NonFiniteLossError, Outputs,
                            forward_outputs, head_gradient_sums, head_gradient_sums_autograd, soft_target_table,
                            train_attack, trades_attack)
from ratkit.models import build_model

EPS = 0.1


def _model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return build_model("smallcnn", channels=(4, 8), hidden=16).to(dtype)


def _batch(n=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


BASES = {
    "at": lambda: AT(attack=train_attack(EPS, steps=3)),
    "trades": lambda: TRADES(attack=trades_attack(EPS, steps=3)),
    "mart": lambda: MART(attack=train_attack(EPS, steps=3, random_start="normal")),
}


def test_analytic_and_autograd_head_statistics_agree_in_float64():
    model = _model(torch.float64)
    x, y = _batch(dtype=torch.float64)
    with torch.no_grad():
        feats = model.features(x)
        logits = model.head(feats)
    analytic = head_gradient_sums(logits, feats, y)
    autograd = head_gradient_sums_autograd(model.head, feats, y)
    assert torch.allclose(analytic, autograd, atol=1e-6, rtol=0)
    assert analytic.abs().max() > 1e-4  # the check is not vacuous


@pytest.mark.parametrize("base", sorted(BASES))
def test_rat_with_alpha_zero_is_exactly_its_base(base):
    model = _model()
    x, y = _batch()
    x_adv = BASES[base]().craft(model, x, y, generator=torch.Generator().manual_seed(0))
    base_loss = BASES[base]().loss(model, x, x_adv, y).loss
    rat_loss = RAT(BASES[base](), alpha=0.0).loss(model, x, x_adv, y).loss
    assert torch.equal(base_loss, rat_loss)
    # and with sigma = 0 the crafted batch is the base's own
    rat_adv = RAT(BASES[base](), alpha=0.0, sigma=0.0).craft(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rat_adv, x_adv)


@pytest.mark.parametrize("base", sorted(BASES))
def test_crafting_under_weight_noise_never_touches_the_live_parameters(base):
    model = _model()
    x, y = _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rat = RAT(BASES[base](), sigma=1e-2)
    noisy = rat.craft(model, x, y, generator=torch.Generator().manual_seed(0))
    plain = BASES[base]().craft(model, x, y, generator=torch.Generator().manual_seed(0))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert not torch.equal(noisy, plain)  # the noise did reach the attack


@settings(max_examples=60, deadline=None)
@given(gap=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=12),
       tie=st.booleans())
def test_soft_targets_are_valid_distributions_even_when_all_gaps_tie(gap, tie):
    g = torch.tensor(gap, dtype=torch.float64)
    if tie:
        g = torch.full_like(g, g[0].item())
    table = soft_target_table(g)
    c = len(gap)
    assert not torch.isnan(table).any()
    assert (table >= 0).all()
    assert torch.allclose(table.sum(dim=1), torch.ones(c, dtype=torch.float64))
    assert torch.allclose(table.diagonal(), torch.full((c,), 2.0 / c, dtype=torch.float64))
    if tie:
        off = table[~torch.eye(c, dtype=torch.bool)]
        assert torch.allclose(off, torch.full_like(off, (1 - 2.0 / c) / (c - 1)))


def test_soft_targets_need_two_classes():
    with pytest.raises(ValueError, match="2 classes"):
        soft_target_table(torch.tensor([1.0]))


def _reference_table(gap):
    """METHOD.md step 3, written out with loops."""
    c = len(gap)
    keep = 2.0 / c
    v = gap - gap.min()
    v = v / v.sum()
    table = torch.zeros(c, c, dtype=gap.dtype)
    for k in range(c):
        others = sum(v[j] for j in range(c) if j != k)
        for j in range(c):
            table[k, j] = keep if j == k else (1 - keep) * v[j] / others
    return table


def _reference_kl(target, logits):
    p = torch.softmax(logits, 1)
    return (torch.xlogy(target, target) - target * torch.log(p)).sum(1).mean()  # 0 log 0 = 0, as KLDivLoss


@pytest.mark.parametrize("pairing", ["fixed", "reference"])
def test_rat_trades_loss_equals_a_plain_float64_transcription_of_the_method(pairing):
    alpha, beta = 0.2, 6.0
    model = _model(torch.float64, seed=3)
    x, y = _batch(n=12, dtype=torch.float64, seed=4)
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)).clamp(0, 1)
    rat = RAT(TRADES(beta=beta), alpha=alpha, pairing=pairing)
    ours = rat.loss(model, x, x_adv, y).loss

    # --- independent transcription of METHOD.md, step 2 with autograd on the head weight ---
    model.train()
    logits_nat, logits_adv = model(x), model(x_adv)

    def head_grad_sums(inp):
        m = copy.deepcopy(model)
        m.zero_grad()
        F.cross_entropy(m(inp), y).backward()
        return m.head.weight.grad.sum(1)

    s_nat, s_adv = head_grad_sums(x), head_grad_sums(x_adv)
    t1n, t1a, t2n, t2a = s_nat.abs(), s_adv.abs(), s_nat * s_nat, s_adv * s_adv
    tab = _reference_table
    second_adv = tab(t2n - t2a) if pairing == "fixed" else tab(t2a - t2n)
    p_nat = torch.softmax(logits_nat, 1)
    expected = ((1 - alpha) * F.cross_entropy(logits_nat, y)
                + beta * (p_nat * (torch.log(p_nat) - torch.log_softmax(logits_adv, 1))).sum(1).mean()
                + alpha * 0.5 * (_reference_kl(tab(t1n - t1a)[y], logits_adv) + _reference_kl(tab(t1a - t1n)[y], logits_nat))
                + alpha / 2 * 0.5 * (_reference_kl(second_adv[y], logits_adv) + _reference_kl(tab(t2a - t2n)[y], logits_nat)))
    assert torch.allclose(ours, expected, rtol=1e-10, atol=1e-12)


def test_reference_and_fixed_pairing_differ_only_in_the_second_order_term():
    model = _model(torch.float64)
    x, y = _batch(dtype=torch.float64)
    x_adv = (x + 0.1 * torch.rand_like(x)).clamp(0, 1)
    fixed = RAT(TRADES(), pairing="fixed").loss(model, x, x_adv, y).terms
    ref = RAT(TRADES(), pairing="reference").loss(model, x, x_adv, y).terms
    assert torch.equal(fixed["taylor1"], ref["taylor1"]) and torch.equal(fixed["natural"], ref["natural"])
    assert not torch.equal(fixed["taylor2"], ref["taylor2"])


@pytest.mark.parametrize("order,present", [((1,), {"taylor1"}), ((2,), {"taylor2"}), ((1, 2), {"taylor1", "taylor2"})])
def test_order_selects_the_taylor_terms(order, present):
    model = _model()
    x, y = _batch()
    terms = RAT(TRADES(), order=order).loss(model, x, x, y).terms
    assert {k for k in terms if k.startswith("taylor")} == present


def test_rat_at_scales_the_adversarial_cross_entropy_and_uses_one_clean_forward():
    model = _model()
    x, y = _batch()
    x_adv = (x + 0.05).clamp(0, 1)
    terms = RAT(AT(), alpha=0.3).loss(model, x, x_adv, y).terms
    plain = AT().loss(model, x, x_adv, y).terms
    assert torch.allclose(terms["adv_ce"], 0.7 * plain["adv_ce"])
    calls = []
    handle = model.head.register_forward_hook(lambda *a: calls.append(1))
    RAT(AT()).loss(model, x, x_adv, y)
    handle.remove()
    assert len(calls) == 2  # one clean, one adversarial forward; nothing recomputed


@pytest.mark.parametrize("base,auto_has_clean", [("at", False), ("mart", False), ("trades", True)])
def test_clean_output_terms_follow_the_base_unless_asked(base, auto_has_clean):
    """auto keeps RAT's clean-output KL terms only for a base that fits the clean output to the
    labels; "always" is the authors' formula on any base; the adversarial halves never change."""
    model = _model(torch.float64, seed=3)
    x, y = _batch(n=12, dtype=torch.float64, seed=4)
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)).clamp(0, 1)
    on, off, auto = (RAT(BASES[base](), clean_terms=c).loss(model, x, x_adv, y) for c in ("always", "never", "auto"))
    assert RAT(BASES[base]()).clean_terms == "auto"
    assert {k: v.item() for k, v in auto.terms.items()} == {k: v.item() for k, v in (on if auto_has_clean else off).terms.items()}
    # what "always" adds is exactly the clean halves: the KL of p(x) to the clean-side soft targets
    rat = RAT(BASES[base](), clean_terms="always")
    s_nat, s_adv = rat.statistics(model, on.outputs)
    tab, yy, logits = soft_target_table, y, on.outputs.logits_clean
    clean_half = (0.2 * 0.5 * _reference_kl(tab(s_adv.abs() - s_nat.abs())[yy], logits)
                  + 0.1 * 0.5 * _reference_kl(tab(s_adv * s_adv - s_nat * s_nat)[yy], logits))
    added = on.terms["taylor1"] + on.terms["taylor2"] - off.terms["taylor1"] - off.terms["taylor2"]
    assert torch.allclose(added, clean_half, rtol=1e-10, atol=1e-12)
    # with the clean terms off, no gradient reaches the clean logits through the Taylor terms
    assert off.terms["taylor1"].grad_fn is not None
    clean_logits = off.outputs.logits_clean
    assert clean_logits.requires_grad == (base != "at")  # RAT-AT's clean pass needs no graph at all
    if clean_logits.requires_grad:
        g = torch.autograd.grad(off.terms["taylor1"] + off.terms["taylor2"], clean_logits, allow_unused=True)[0]
        assert g is None or torch.count_nonzero(g) == 0


def test_rat_validates_its_settings():
    for kwargs, needle in [({"alpha": 1.5}, "alpha"), ({"pairing": "x"}, "pairing"), ({"order": (3,)}, "order"),
                           ({"clean_terms": "yes"}, "clean_terms"),
                           ({"order": ()}, "order"), ({"sigma": -1}, "sigma"), ({"taylor": "x"}, "taylor")]:
        with pytest.raises(ValueError, match=needle):
            RAT(TRADES(), **kwargs)
    with pytest.raises(TypeError):
        RAT(RAT(TRADES()))


@pytest.mark.parametrize("inner", ["trades", "rat-trades", "at"])
def test_awp_leaves_the_weights_as_the_optimizer_set_them(inner):
    make = {"trades": lambda: TRADES(attack=trades_attack(EPS, steps=2)),
            "rat-trades": lambda: RAT(TRADES(attack=trades_attack(EPS, steps=2)), sigma=0.0),
            "at": lambda: AT(attack=train_attack(EPS, steps=2))}[inner]
    gamma = 0.05
    model = _model(torch.float64)
    x, y = _batch(dtype=torch.float64)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    AWP(make(), gamma=gamma).step(model, opt, x, y, generator=torch.Generator().manual_seed(0))

    # by hand: same x_adv, v = gamma ||w|| g/||g|| from the base objective, step at w + v, remove v
    method = make()
    x_adv = method.craft(twin, x, y, generator=torch.Generator().manual_seed(0))
    weights = [p for p in twin.parameters() if p.dim() > 1]
    proxy = copy.deepcopy(twin)
    obj = method.objective(proxy, x, x_adv, y)
    grads = torch.autograd.grad(obj, [p for p in proxy.parameters() if p.dim() > 1])
    vs = [gamma * w.norm() / g.norm() * g for w, g in zip(weights, grads)]
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    with torch.no_grad():
        for w, v in zip(weights, vs):
            w.add_(v)
    twin_opt.zero_grad()
    method.loss(twin, x, x_adv, y).loss.backward()
    twin_opt.step()
    with torch.no_grad():
        for w, v in zip(weights, vs):
            w.sub_(v)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-10), name


def test_awp_restores_the_weights_when_the_loss_is_not_finite():
    model = _model()
    x, y = _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    class Exploding(TRADES):
        def terms(self, out):
            terms = super().terms(out)
            terms["natural"] = terms["natural"] * float("inf")
            return terms

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError):
        AWP(Exploding(attack=trades_attack(EPS, steps=1)), gamma=0.1).step(model, opt, x, y)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def _awp_step_equals_plain_step(warmup: int, epoch: int) -> bool:
    model, twin = _model(), _model()
    x, y = _batch()
    for m, wrap in ((model, True), (twin, False)):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        method = TRADES(attack=trades_attack(EPS, steps=1))
        (AWP(method, gamma=0.1, warmup=warmup) if wrap else method).step(
            m, opt, x, y, generator=torch.Generator().manual_seed(0), epoch=epoch)
    return all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_awp_during_warmup_is_the_plain_step():
    assert _awp_step_equals_plain_step(warmup=2, epoch=0)


def test_awp_warmup_counts_epochs_from_one_like_the_authors_scripts():
    # their loop: for epoch in range(1, epochs + 1): ... if epoch >= awp_warmup: perturb. So warmup 10
    # perturbs from the 10th epoch on, which is the trainer's 0-based epoch 9
    assert _awp_step_equals_plain_step(warmup=10, epoch=8)
    assert not _awp_step_equals_plain_step(warmup=10, epoch=9)
    assert not _awp_step_equals_plain_step(warmup=1, epoch=0) and not _awp_step_equals_plain_step(warmup=0, epoch=0)


def test_awp_gamma_follows_the_base_method_unless_given():
    # AWP's authors: 5e-3 with TRADES, 1e-2 with PGD-AT; MART follows TRADES (a KL-regularised loss)
    assert AWP(RAT(TRADES())).gamma == 5e-3 and AWP(AT()).gamma == 1e-2 and AWP(RAT(AT())).gamma == 1e-2
    assert AWP(MART()).gamma == 5e-3
    assert AWP(AT(), gamma=3e-3).gamma == 3e-3


@pytest.mark.parametrize("name", ["at", "trades", "mart", "rat-at", "rat-trades", "rat-mart", "awp-trades", "awp-rat-trades"])
def test_every_composition_lowers_its_loss_on_a_fixed_batch(name):
    model = _model()
    x, y = _batch(n=32)
    base = BASES[name.split("-")[-1]]()
    method = RAT(base) if "rat" in name else base
    method = AWP(method, gamma=1e-3) if name.startswith("awp") else method
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = [method.step(model, opt, x, y, generator=g).loss.item() for _ in range(25)]
    assert sum(losses[-5:]) < sum(losses[:5])


# --------------------------------------------------------------------------- the one KL helper
# The four formulas ratkit had before kl_to_target was the only KL, transcribed as they were;
# the helper must give the same bits, values and gradients alike.


def _former_rat_kl(targets, logits):
    return (torch.xlogy(targets, targets) - targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _former_attack_kl(logits, target_probs):
    log_p = F.log_softmax(logits, dim=1)
    return (torch.xlogy(target_probs, target_probs) - target_probs * log_p).sum(dim=1)


def _former_trades_terms(out):
    kl = F.kl_div(F.log_softmax(out.logits_adv, dim=1), F.softmax(out.logits_clean, dim=1), reduction="batchmean")
    return {"natural": F.cross_entropy(out.logits_clean, out.y), "robust": 6.0 * kl}


def _former_mart_terms(out):
    y = out.y
    adv_probs = F.softmax(out.logits_adv, dim=1)
    top2 = adv_probs.argsort(dim=1)[:, -2:]
    runner_up = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    bce = F.cross_entropy(out.logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), runner_up)
    nat_probs = F.softmax(out.logits_clean, dim=1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = (torch.xlogy(nat_probs, nat_probs) - nat_probs * torch.log(adv_probs + 1e-12)).sum(dim=1)
    robust = (kl * (1.0000001 - true_probs)).mean()
    return {"adv_bce": bce, "robust": 6.0 * robust}


def _random_logits(seed, n=64, classes=10):
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(n, 1, generator=g) * 8  # from nearly uniform to nearly one-hot predictions
    adv = (torch.randn(n, classes, generator=g) * scale).requires_grad_()
    clean = (torch.randn(n, classes, generator=g) * scale).requires_grad_()
    return adv, clean, torch.randint(0, classes, (n,), generator=g)


def _same_bits(a, b, inputs):
    """Equal values and equal gradients with respect to every input, bit for bit."""
    assert torch.equal(a, b)
    grads_a = torch.autograd.grad(a.sum(), inputs, retain_graph=True, allow_unused=True)
    grads_b = torch.autograd.grad(b.sum(), inputs, retain_graph=True, allow_unused=True)
    for ga, gb in zip(grads_a, grads_b):
        assert (ga is None and gb is None) or torch.equal(ga, gb)
    assert any(g is not None for g in grads_a)


@pytest.mark.parametrize("seed", range(5))
def test_the_kl_helper_gives_the_former_rat_and_attack_kl_to_the_bit(seed):
    adv, clean, y = _random_logits(seed)
    soft = soft_target_table(torch.randn(10, generator=torch.Generator().manual_seed(seed)))[y]
    one_hot = F.one_hot(y, 10).to(adv.dtype)  # zeros in the target: 0 log 0 = 0
    for target in (soft, one_hot, torch.softmax(clean, 1).detach()):
        _same_bits(kl_to_target(adv, target, "mean"), _former_rat_kl(target, adv), [adv])
        _same_bits(kl_to_target(adv, target), _former_attack_kl(adv, target), [adv])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("base,former", [("trades", _former_trades_terms), ("mart", _former_mart_terms)])
def test_trades_and_mart_losses_through_the_kl_helper_are_the_former_code_to_the_bit(seed, base, former):
    adv, clean, y = _random_logits(seed)
    out = Outputs(y=y, feats_adv=adv, logits_adv=adv, feats_clean=clean, logits_clean=clean)
    ours, theirs = {"trades": TRADES, "mart": MART}[base]().terms(out), former(out)
    assert ours.keys() == theirs.keys()
    for name in ours:
        _same_bits(ours[name], theirs[name], [adv, clean])
    _same_bits(sum(ours.values()), sum(theirs.values()), [adv, clean])


def test_the_kl_helper_refuses_unknown_reductions_and_probs_without_log_eps():
    adv, clean, _ = _random_logits(0, n=4)
    with pytest.raises(ValueError, match="batchmean"):
        kl_to_target(adv, torch.softmax(clean, 1), "sum")
    with pytest.raises(ValueError, match="log_eps"):
        kl_to_target(adv, torch.softmax(clean, 1), probs=torch.softmax(adv, 1))


@pytest.mark.parametrize("base", [TRADES, MART])
@pytest.mark.parametrize("beta", [-1, float("nan")])
def test_trades_and_mart_refuse_a_negative_beta_naming_it(base, beta):
    with pytest.raises(InvalidSetting, match="beta") as err:
        base(beta=beta)
    assert (err.value.method, err.value.setting) == (base.__name__, "beta")
    base(beta=0.0)  # no robust term is allowed
