"""Specifications of the fixed evaluation protocol."""

import pytest
import torch

from ratkit.evaluate import ATTACKS, evaluate, format_report, parse_attacks, protocol_attack
from ratkit.models import build_model


def _model():
    torch.manual_seed(0)
    return build_model("smallcnn", num_classes=10, in_channels=1, mean=(0.5,), std=(0.5,),
                       channels=(4, 8), hidden=16)


def test_protocol_settings_match_the_method_page():
    pgd20 = protocol_attack("pgd20", 0.1, "Linf")
    assert (pgd20.steps, pgd20.step_size, pgd20.loss, pgd20.random_start) == (20, 0.025, "ce", "uniform")
    cw = protocol_attack("cw30", 8 / 255, "Linf")
    assert (cw.steps, cw.loss) == (30, "cw")
    fgsm = protocol_attack("fgsm", 0.5, "L2")
    assert (fgsm.steps, fgsm.step_size, fgsm.random_start, fgsm.norm) == (1, 0.5, "none", "L2")


def test_worst_case_is_the_per_example_and_over_all_attacks():
    model = _model()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(24, 1, 28, 28, generator=g), torch.randint(0, 10, (24,), generator=g)
    # make a few examples correct so the attacks have something to break
    with torch.no_grad():
        y[:12] = model(x[:12]).argmax(1)
    report = evaluate(model, x, y, dataset="synthetic", eps=0.1, attacks=("clean", "fgsm", "pgd20", "cw30"),
                      batch_size=10, quiet=True)
    flags = torch.tensor([[c == "1" for c in r.correct] for r in report.attacks.values()])
    assert report.robust_accuracy == pytest.approx(flags.all(0).float().mean().item())
    assert report.robust_accuracy <= min(r.accuracy for r in report.attacks.values())
    assert report.attacks["clean"].accuracy >= 0.5
    assert report.attacks["pgd20"].accuracy <= report.attacks["clean"].accuracy
    text = format_report(report)
    assert "PGD-20" in text and "robust (worst case)" in text


def test_model_is_left_in_its_mode_and_unchanged():
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    evaluate(model, x, y, dataset="synthetic", eps=0.1, attacks=("clean", "pgd20"), quiet=True)
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_autoattack_feeds_the_worst_case_on_its_subset():
    model = _model()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(6, 1, 28, 28, generator=g), torch.zeros(6, dtype=torch.long)
    with torch.no_grad():
        y[:] = model(x).argmax(1)  # all clean-correct
    report = evaluate(model, x, y, dataset="synthetic", eps=0.1, attacks=("clean", "pgd20", "aa"),
                      batch_size=6, aa_n=4, quiet=True)
    aa = report.attacks["aa"]
    assert aa.n == 4 and len(aa.correct) == 4
    assert report.robust_n == 4
    expected = [all(r.correct[i] == "1" for r in report.attacks.values()) for i in range(4)]
    assert report.robust_accuracy == pytest.approx(sum(expected) / 4)


def test_attack_list_is_parsed_into_protocol_order_and_typos_are_refused():
    assert parse_attacks("aa, clean,pgd20") == ("clean", "pgd20", "aa")
    assert parse_attacks(",".join(ATTACKS)) == ATTACKS
    with pytest.raises(ValueError, match="pgd21"):
        parse_attacks("clean,pgd21")


def test_the_papers_protocol_is_the_scripts_settings():
    from ratkit.attacks import attack_loss
    from ratkit.evaluate import paper_eps

    assert paper_eps(8 / 255) == 0.031 and paper_eps(0.1) == 0.1
    pgd20 = protocol_attack("pgd20", 0.031, "Linf", "paper")
    assert (pgd20.steps, pgd20.step_size, pgd20.loss, pgd20.random_start, pgd20.keep) == (20, 0.003, "ce", "uniform",
                                                                                        "last")
    cw20 = protocol_attack("cw20", 0.1, "Linf", "paper")
    assert (cw20.steps, cw20.step_size, cw20.loss, cw20.kappa, cw20.keep) == (20, pytest.approx(0.01), "cw", 50.0,
                                                                             "last")
    with pytest.raises(ValueError):
        protocol_attack("cw30", 0.031, "Linf", "paper")
    with pytest.raises(ValueError, match="Linf only"):
        protocol_attack("pgd20", 0.5, "L2", "paper")
    from ratkit.evaluate import check_protocol_norm  # the one rule, which `rat eval` asks too

    with pytest.raises(ValueError, match="Linf only"):
        check_protocol_norm("paper", "L2")
    check_protocol_norm("paper", "Linf")
    check_protocol_norm("ours", "L2")
    # -relu(true - other + kappa) of the scripts = min(margin, kappa) - kappa: the same gradient
    logits = torch.tensor([[80.0, 0.0, 1.0], [0.0, 2.0, 1.0]], requires_grad=True)
    y = torch.tensor([1, 1])
    ours = attack_loss("cw", logits, y, kappa=50.0)
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(torch.nn.functional.one_hot(y, 3).bool(), -1e4).amax(1)
    scripts = -torch.relu(true - other + 50.0)
    assert torch.allclose(ours - 50.0, scripts)
    assert parse_attacks("aa,cw20,clean", "paper") == ("clean", "cw20", "aa")


def test_worst_case_examples_are_the_inputs_that_break_each_image():
    model = _model()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(24, 1, 28, 28, generator=g), torch.randint(0, 10, (24,), generator=g)
    with torch.no_grad():
        y[:16] = model(x[:16]).argmax(1)
    report = evaluate(model, x, y, dataset="synthetic", eps=0.1, attacks=("clean", "fgsm", "pgd20"), batch_size=10,
                      quiet=True, keep_adversarial=True)
    adv = report.adversarial
    flags = torch.tensor([[c == "1" for c in r.correct] for r in report.attacks.values()])
    assert torch.equal(adv["correct"], flags.all(0)) and adv["attacks"] == ["clean", "fgsm", "pgd20"]
    assert (adv["x_adv"] - x).abs().max() <= 0.1 + 1e-6
    with torch.no_grad():
        predicted = model(adv["x_adv"]).argmax(1)
    assert torch.equal(predicted == y, adv["correct"])  # each broken image's saved input breaks it
    clean_wrong = ~flags[0]
    assert torch.equal(adv["x_adv"][clean_wrong], x[clean_wrong]) and (adv["attack"][clean_wrong] == 0).all()
    assert report.clean_predictions == model(x).argmax(1).tolist()


def test_rat_eval_writes_the_papers_protocol_summary_csv_and_adversarial_examples(tmp_path):
    import csv
    import json

    from helpers import run_rat
    from safetensors.torch import load_file

    out = run_rat("eval", "--untrained", "smallcnn", "--dataset", "synthetic", "--protocol", "paper",
                  "--attacks", "clean,pgd20,cw20", "--n", "40", "--batch-size", "16", "--json",
                  str(tmp_path / "r.json"), "--save-adv", str(tmp_path / "adv.safetensors"), "--quiet")
    assert out.returncode == 0, out.stderr
    assert "papers' protocol" in out.stdout and "CW-20" in out.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["protocol"] == "paper" and report["eps"] == 0.1
    summary = report["summary"]
    assert summary["protocol"] == "paper" and summary["clean_acc"] == round(100 * report["attacks"]["clean"]["accuracy"], 2)
    assert summary["autoattack_acc"] is None and summary["n_ex"] == 40
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == 40 and list(rows[0]) == ["index", "label", "clean_prediction", "correct_clean",
                                                 "correct_pgd20", "correct_cw20", "robust"]
    assert "".join(r["correct_pgd20"] for r in rows) == report["attacks"]["pgd20"]["correct"]
    assert all((r["clean_prediction"] == r["label"]) == (r["correct_clean"] == "1") for r in rows)
    saved = load_file(tmp_path / "adv.safetensors")
    assert saved["x_adv"].shape == (40, 1, 28, 28) and saved["y"].tolist() == [int(r["label"]) for r in rows]
    assert "".join(str(int(c)) for c in saved["correct"]) == "".join(r["robust"] for r in rows)


def test_the_autoattack_verdicts_are_autoattacks_own():
    from pyautoattack import AutoAttack

    from ratkit.attacks import autoattack_correct

    model = _model().eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(8, 1, 28, 28, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10  # two clean-wrong examples too
    ours = autoattack_correct(model, x, y, eps=0.1, batch_size=8, seed=0)
    _, y_adv = AutoAttack(model, eps=0.1, norm="Linf", version="standard", seed=0,
                          device=x.device).run_standard_evaluation(x, y, batch_size=8)
    assert torch.equal(ours, y_adv == y)
    assert not ours[:2].any()


def test_autoattack_runs_with_the_parameters_frozen(monkeypatch):
    """FAB-T calls backward(): unfrozen, it would compute the weights' gradients (time) and leave
    them in each p.grad. The real attack is too slow here (Square's 5,000 queries on every image
    that survives), so a stand-in records the flags it runs with."""
    import pyautoattack

    from ratkit.attacks import autoattack_correct

    seen = []

    def run_standard_evaluation(self, x, y, batch_size=250):
        seen.append([p.requires_grad for p in self.model.parameters()])
        return x, y

    monkeypatch.setattr(pyautoattack.AutoAttack, "run_standard_evaluation", run_standard_evaluation)
    model = _model().eval()
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    assert autoattack_correct(model, x, y, eps=0.1, batch_size=2, seed=0).all()
    assert len(seen) == 2 and not any(flag for flags in seen for flag in flags)
    assert all(p.requires_grad for p in model.parameters())


def test_every_list_of_attacks_derives_from_the_protocol_tables():
    from ratkit.attacks.protocols import _RUNS
    from ratkit.choices import PROTOCOL_TITLES
    from ratkit.config import EvalConfig
    from ratkit.evaluate import ATTACK_TITLES, ATTACKS, DEFAULT_ATTACKS, PROTOCOL_ATTACKS, PROTOCOLS
    from ratkit.study.grid import DEFAULT_ATTACKS as STUDY_ATTACKS
    from ratkit.study.plots import PLOTTED_KEYS
    from ratkit.study.records import ACCURACY_KEYS

    assert PROTOCOLS == tuple(PROTOCOL_ATTACKS) and ATTACKS == tuple(PROTOCOL_ATTACKS["ours"])
    assert all(DEFAULT_ATTACKS[p] == tuple(PROTOCOL_ATTACKS[p]) for p in PROTOCOLS)
    assert ACCURACY_KEYS == (*ATTACKS, "robust") and set(PLOTTED_KEYS) <= set(ACCURACY_KEYS)
    assert EvalConfig().attacks == STUDY_ATTACKS == ",".join(ATTACKS)
    assert all(ATTACK_TITLES[k] == a.title for t in PROTOCOL_ATTACKS.values() for k, a in t.items())
    # the names and titles (ratkit.choices, no torch) and how each attack runs: the same keys, none left over
    assert all(set(_RUNS[p]) == set(PROTOCOL_TITLES[p]) for p in PROTOCOLS) and set(_RUNS) == set(PROTOCOLS)


def test_an_attack_added_to_the_table_runs_through_the_protocol(monkeypatch):
    import ratkit.evaluate.protocol as ev

    table = dict(ev.PROTOCOL_ATTACKS["ours"])
    table["pgd5"] = ev.ProtocolAttack("PGD-5 (CE)", config=ev._ours_pgd(5, "ce"))
    monkeypatch.setitem(ev.PROTOCOL_ATTACKS, "ours", table)
    monkeypatch.setitem(ev.DEFAULT_ATTACKS, "ours", tuple(table))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(12, 1, 4, 4), torch.arange(12) % 3
    report = ev.evaluate(model, x, y, dataset="synthetic", eps=0.1, attacks=ev.parse_attacks("clean,pgd5"),
                         quiet=True)
    assert report.attacks["pgd5"].accuracy <= report.attacks["clean"].accuracy
    assert "PGD-5 (CE)" in ev.format_report(report)
