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
