"""Specifications of the whole-job budget (``train.budget_s``, ``rat train --budget``): what the plan
keeps and cuts on an emulated slow machine (injected speeds), that a run follows its plan and a
resume the recorded one, and that measuring leaves the run as it would be without a budget."""

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

import ratkit.train.budget as budget
from ratkit.config import load_config
from ratkit.train import learning_rate, resume_config, train
from ratkit.train.budget import AA_FLOOR, BudgetTooSmall, parse_budget, plan_run

from helpers import run_rat

TINY = ["data.dataset=synthetic", "data.val_size=64", "data.train_subset=256", "train.epochs=4",
        "model.kwargs.channels=[4,8]", "model.kwargs.hidden=16", "attack.steps=2", "train.batch_size=32",
        "train.val_n=32", "eval.attacks=clean", "eval.n=32", "eval.aa_n=null", "train.device=cpu"]
# the main job's shape: 4 epochs of 50,000 images in batches of 128 (390 steps an epoch), validation PGD-20
# on 1,000, the protocol on 1,000 and AutoAttack on 500
MAIN = dict(train_size=50_000, test_size=10_000)


def _preset(*extra):
    return load_config("fmnist-cpu", ["train.budget_s=900", *extra])


def test_durations_read_as_seconds_minutes_or_hours():
    assert parse_budget("900") == 900 and parse_budget("15m") == 900 and parse_budget("1.5h") == 5400
    assert parse_budget("45s") == 45 and parse_budget("none") is None and parse_budget(None) is None
    for bad in ("soon", "-5m", "0"):
        with pytest.raises(ValueError):
            parse_budget(bad)


def test_on_a_fast_machine_the_plan_keeps_the_whole_configured_job():
    plan = plan_run(_preset(), speed=(0.2, 1e-4), **MAIN)  # 4 x 390 steps: 312 s; evaluation ~2.8 min
    assert plan.steps == plan.configured_steps == 4 * 390 and plan.aa_n == plan.configured_aa_n == 500
    assert plan.cut == [] and "fit" in plan.summary() and "cut" not in plan.summary()
    cfg = _preset()
    assert plan.apply(cfg) == cfg  # nothing recorded differs from the config


def test_a_slower_machine_cuts_autoattack_images_first():
    plan = plan_run(_preset(), speed=(0.25, 4e-4), **MAIN)
    assert plan.steps == plan.configured_steps and AA_FLOOR <= plan.aa_n < 500
    assert plan.train_s + plan.eval_s <= 900 and plan.cut == [f"AutoAttack on {plan.aa_n} of 500 images"]
    assert plan.apply(_preset()).eval.aa_n == plan.aa_n and plan.apply(_preset()).train.max_steps is None


def test_a_slow_machine_cuts_training_too_and_lays_the_schedule_over_the_shorter_run():
    plan = plan_run(_preset(), speed=(0.8, 3e-4), **MAIN)  # an AVX2 laptop in float32
    assert plan.aa_n == AA_FLOOR and 0.25 * plan.configured_steps <= plan.steps < plan.configured_steps
    assert plan.train_s + plan.eval_s <= 900 * budget.SAFETY + 1e-6
    assert len(plan.cut) == 2 and "training to" in plan.summary() and "AutoAttack on 200" in plan.summary()
    cfg = plan.apply(_preset())
    assert cfg.train.max_steps == plan.steps and cfg.eval.aa_n == AA_FLOOR
    spe = plan.steps_per_epoch  # cosine reaches its end at the planned last step, not mid-way
    assert learning_rate(cfg, plan.steps, spe) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(cfg, plan.steps // 2, spe) == pytest.approx(cfg.optim.lr / 2, rel=1e-2)


def test_a_budget_that_cannot_make_a_useful_model_stops_before_the_run():
    with pytest.raises(BudgetTooSmall, match="too little on this machine"):
        plan_run(_preset(), speed=(3.0, 1e-3), **MAIN)


def test_no_evaluation_leaves_the_whole_budget_to_training():
    slow = (0.8, 3e-4)
    assert plan_run(_preset(), speed=slow, evaluation="none", **MAIN).steps > plan_run(_preset(), speed=slow,
                                                                                        **MAIN).steps


def test_a_run_follows_its_plan_records_it_and_a_resume_does_not_plan_again(tmp_path, monkeypatch, capsys):
    # 8 steps an epoch, 32 configured; 1 s a step and a 30 s budget leave 27 steps (3.4 epochs: 93% of the budget is planned)
    monkeypatch.setattr(budget, "measure_speed", lambda cfg, info, build: (1.0, 1e-6))
    cfg = load_config("fmnist-cpu", [*TINY, "train.budget_s=30"])

    def interrupt(progress):
        if progress.global_step == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "r", on_step=interrupt)
    out = capsys.readouterr().out
    assert "plan for 30 s" in out and "cut: training to 27 of 32 steps" in out
    plan = json.loads((tmp_path / "r" / "plan.json").read_text())
    assert plan["steps"] == 27 and plan["configured_steps"] == 32
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["train"]["max_steps"] == 27

    monkeypatch.setattr(budget, "measure_speed", lambda *a: pytest.fail("a resume planned again"))
    run = train(resume_config(tmp_path / "r"), tmp_path / "r", resume=True, quiet=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and "val_pgd20" in rows[-1]  # the cut epoch is validated
    meta = json.loads((run / "last.json").read_text())
    assert meta["progress"]["global_step"] == 27


def test_measuring_the_machine_leaves_the_run_bit_identical_to_the_run_without_a_budget(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real measurement (conftest emulates a fast machine)
    a = train(load_config("fmnist-cpu", [*TINY, "train.epochs=1", "train.budget_s=3600"]), tmp_path / "a", quiet=True)
    b = train(load_config("fmnist-cpu", [*TINY, "train.epochs=1", "train.budget_s=null"]), tmp_path / "b", quiet=True)
    assert (a / "plan.json").is_file() and not (b / "plan.json").exists()
    wa, wb = load_file(str(a / "last.safetensors")), load_file(str(b / "last.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa if k.startswith("model/"))


def test_rat_train_budget_flag(tmp_path):
    result = run_rat("train", "--budget", "soon", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "--budget" in result.stderr
    assert not (tmp_path / "r").exists()
    result = run_rat("train", "--budget", "1s", "--out", str(tmp_path / "r"), *[a for kv in TINY for a in ("--set", kv)],
                     "--set", "eval.attacks=clean,aa", "--set", "eval.aa_n=200", "--set", "eval.n=200")
    assert result.returncode == 2 and "too little on this machine" in result.stderr and not (tmp_path / "r").exists()


def test_a_run_recorded_with_its_plan_and_resolved_precision_is_the_run_its_config_asks_for(tmp_path, monkeypatch):
    """A study or `--out` finds its run again: what the run filled in (auto's precision, the plan's
    max_steps and aa_n) does not make it another run; any other difference does."""
    from ratkit.train import load_run_config, same_run

    monkeypatch.setattr(budget, "measure_speed", lambda cfg, info, build: (1.0, 1e-6))
    cfg = load_config("fmnist-cpu", [*TINY, "train.budget_s=30", "attack.precision=auto"])
    run = train(cfg, tmp_path / "r", evaluation="none", quiet=True)
    recorded = load_run_config(run)
    assert recorded.attack.precision != "auto" and recorded.train.max_steps == 27
    assert same_run(recorded, cfg)
    assert not same_run(recorded, load_config("fmnist-cpu", [*TINY, "train.budget_s=30", "train.seed=1"]))
