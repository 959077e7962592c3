"""Specifications of `rat study`: skip complete runs, resume interrupted ones, aggregate honestly."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from helpers import run_rat
from tiny import tiny_run

from ratkit import study
from ratkit.study import StudyError, aggregate, load_grid, run_config, run_study, write_aggregate
from ratkit.train import TrainingInterrupted, train

TINY = tiny_run("data.val_size=128", "data.train_subset=256", "train.epochs=2", "attack.steps=2", "train.val_n=64",
                "optim.lr=0.002")
STUDIES = Path(__file__).resolve().parents[1] / "src" / "ratkit" / "configs" / "studies"
PILOTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "pilots"  # a research log, not presets
# torch itself warns when forward-mode AD (the Hessian) first loads its decompositions
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _grid(tmp_path, **extra):
    spec = {"name": "tiny", "preset": "fmnist-cpu", "overrides": TINY, "seeds": [0, 1],
            "runs": {"trades": ["method.rat=false"], "rat-trades": ["method.rat=true"]},
            "pairs": [["rat-trades", "trades"]],
            "eval": {"attacks": "clean,pgd20", "n": 64, "aa_n": None},
            "hessian": {"n": 8, "top_k": 1, "probes": 2, "max_iter": 3}, **extra}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_grid(path)


def test_study_runs_the_grid_writes_one_small_result_per_run_and_aggregates(tmp_path):
    grid = _grid(tmp_path)
    result = run_study(grid, tmp_path / "runs", tmp_path / "results", log=lambda m: None)
    files = sorted(p.name for p in (tmp_path / "results").glob("*-seed*.json"))
    assert files == ["rat-trades-seed0.json", "rat-trades-seed1.json", "trades-seed0.json", "trades-seed1.json"]
    record = json.loads((tmp_path / "results" / "trades-seed1.json").read_text())
    assert record["seed"] == 1 and record["epochs"] == 2 and len(record["history"]) == 2
    assert set(record["accuracy"]) == {"clean", "pgd20", "robust"} and record["accuracy"]["clean"]["n"] == 64
    assert record["hessian"]["loss"] == "adversarial" and record["hessian"]["trace"] is not None
    assert record["machine"]["torch"] and record["machine"]["cpu_count"] >= 1
    assert "correct" not in json.dumps(record)  # no per-example strings: result files stay small
    assert (tmp_path / "results" / "results.md").exists() and (tmp_path / "results" / "accuracy.png").exists()
    assert result["configs"]["trades"]["seeds"] == [0, 1]
    assert result["pairs"][0]["seeds"] == [0, 1]


def test_complete_runs_are_skipped_without_training(tmp_path, monkeypatch):
    grid = _grid(tmp_path, seeds=[0])
    run_study(grid, tmp_path / "runs", tmp_path / "results", log=lambda m: None)
    before = {p.name: p.read_text() for p in (tmp_path / "results").glob("*-seed*.json")}

    def no_training(*args, **kwargs):
        raise AssertionError("a complete run was trained again")

    monkeypatch.setattr(study.runner, "run_one", no_training)
    messages = []
    run_study(grid, tmp_path / "runs", tmp_path / "results", log=messages.append)
    assert messages == ["trades-seed0: complete, skipped", "rat-trades-seed0: complete, skipped"]
    assert {p.name: p.read_text() for p in (tmp_path / "results").glob("*-seed*.json")} == before


def test_an_interrupted_run_is_resumed_and_ends_as_an_uninterrupted_one(tmp_path):
    grid = _grid(tmp_path, seeds=[0], runs={"trades": ["method.rat=false"]}, pairs=[], hessian=None)
    cfg = run_config(grid, "trades", 0)

    def interrupt(progress):
        if progress.global_step == 10:  # in the second epoch
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "runs" / "trades-seed0", quiet=True, on_step=interrupt)
    messages = []
    run_study(grid, tmp_path / "runs", tmp_path / "results", log=messages.append)
    assert "trades-seed0: resuming" in messages
    resumed = json.loads((tmp_path / "results" / "trades-seed0.json").read_text())
    run_study(grid, tmp_path / "fresh", tmp_path / "fresh-results", log=lambda m: None)
    fresh = json.loads((tmp_path / "fresh-results" / "trades-seed0.json").read_text())
    assert resumed["accuracy"]["pgd20"]["accuracy"] == fresh["accuracy"]["pgd20"]["accuracy"]
    assert [r["val_pgd20"] for r in resumed["history"]] == [r["val_pgd20"] for r in fresh["history"]]


USER_NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(width * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))
"""


def test_a_grid_naming_the_users_model_resumes_its_own_interrupted_run(tmp_path, monkeypatch):
    # the grid file is the user naming the code: allowed on a resume as on the first start
    import sys
    import uuid

    module = f"studynet_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(USER_NET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = [o for o in TINY if not o.startswith("model.")] + [f"model.name={module}:Net", "model.kwargs={}"]
    grid = _grid(tmp_path, seeds=[0], overrides=overrides, runs={"own": ["method.rat=false"]}, pairs=[],
                 landscape={"n": 8, "points": 3, "adversarial": "none"}, outputs={"n": 8})
    cfg = run_config(grid, "own", 0)

    def interrupt(progress):
        if progress.global_step == 10:  # in the second epoch
            raise KeyboardInterrupt

    try:
        with pytest.raises(TrainingInterrupted):
            train(cfg, tmp_path / "runs" / "own-seed0", quiet=True, on_step=interrupt)
        messages = []
        run_study(grid, tmp_path / "runs", tmp_path / "results", log=messages.append, aggregate_after=False)
    finally:
        sys.modules.pop(module, None)
    assert "own-seed0: resuming" in messages
    record = json.loads((tmp_path / "results" / "own-seed0.json").read_text())
    assert record["epochs"] == 2 and record["config_full"]["model"]["name"] == f"{module}:Net"
    assert {"hessian", "landscape", "outputs"} <= set(record)  # measured on the grid's model as well


def test_a_measurement_added_to_the_grid_later_is_added_to_complete_runs_without_retraining(tmp_path, monkeypatch):
    landscape = {"n": 16, "points": 5, "span": 0.5, "adversarial": "regenerated"}
    grid = _grid(tmp_path, seeds=[0], runs={"trades": ["method.rat=false"]}, pairs=[], hessian=None)
    run_study(grid, tmp_path / "runs", tmp_path / "results", log=lambda m: None)
    result = tmp_path / "results" / "trades-seed0.json"
    before = json.loads(result.read_text())
    assert "landscape" not in before

    def no_training(*args, **kwargs):
        raise AssertionError("a complete run was trained or evaluated again")

    monkeypatch.setattr(study.runner, "run_one", no_training)
    later = _grid(tmp_path, seeds=[0], runs={"trades": ["method.rat=false"]}, pairs=[], hessian=None,
                  landscape=landscape, outputs={"n": 16})
    messages = []
    run_study(later, tmp_path / "runs", tmp_path / "results", log=messages.append)
    after = json.loads(result.read_text())
    assert "trades-seed0: landscape" in messages and "trades-seed0: outputs" in messages
    assert {k: v for k, v in after.items() if k not in ("landscape", "outputs")} == before
    assert set(after["outputs"]) == {"clean", "adversarial"} and after["outputs"]["clean"]["n"] == 16
    land = after["landscape"]
    assert land["coordinates"] == [-0.5, -0.25, 0.0, 0.25, 0.5] and land["n"] == 16 and land["seed"] == 0
    assert len(land["adversarial_accuracy"]) == 5 and land["adversarial"] == "regenerated"
    # at the trained weights the landscape's adversarial accuracy is a PGD-10 accuracy: <= clean
    assert land["adversarial_accuracy"][2] <= land["clean_accuracy"][2]

    # without the run's checkpoint the result is kept as it is, and said so
    moved = tmp_path / "elsewhere"
    (tmp_path / "results" / "trades-seed0.json").write_text(json.dumps(before))
    messages.clear()
    run_study(later, moved, tmp_path / "results", log=messages.append)
    assert any("lacks landscape, outputs" in m and "kept as is" in m for m in messages)
    assert json.loads(result.read_text()) == before


def _landscape(centre_loss, rise, centre_acc, drop):
    """A 3-point landscape: ``rise`` / ``drop`` at both ends, so the mean over the grid is 2/3 of it."""
    return {"coordinates": [-1.0, 0.0, 1.0], "adversarial": "regenerated", "n": 8, "seed": 0,
            "clean_loss": [1.0, 0.5, 1.0], "clean_accuracy": [0.5, 0.9, 0.5],
            "adversarial_loss": [centre_loss + rise, centre_loss, centre_loss + rise],
            "adversarial_accuracy": [centre_acc - drop, centre_acc, centre_acc - drop]}


def test_flatness_is_aggregated_per_configuration_and_paired_and_the_landscapes_are_overlaid(tmp_path):
    grid = _grid(tmp_path)
    records = []
    for seed, (base_rise, rat_rise) in enumerate([(3.0, 1.5), (6.0, 3.0)]):
        b, r = _record("trades", seed, 0.8, 0.6), _record("rat-trades", seed, 0.8, 0.6)
        b["landscape"], r["landscape"] = _landscape(0.7, base_rise, 0.7, 0.3), _landscape(0.9, rat_rise, 0.7, 0.3)
        b["hessian"], r["hessian"] = {"top_eigenvalue": 40.0 + seed, "trace": 300.0}, {"top_eigenvalue": 10.0,
                                                                                        "trace": 200.0}
        records += [b, r]
    for rec in records:
        (tmp_path / f"{rec['config']}-seed{rec['seed']}.json").write_text(json.dumps(rec))
    result = write_aggregate(grid, tmp_path)
    trades = result["configs"]["trades"]
    assert trades["adv_loss_rise"]["mean"] == pytest.approx((2.0 + 4.0) / 2)  # 2/3 of 3 and of 6
    assert trades["adv_accuracy_drop"]["mean"] == pytest.approx(0.2)
    assert trades["landscape"]["adversarial_loss"] == pytest.approx([0.7 + 4.5, 0.7, 0.7 + 4.5])
    pair = result["pairs"][0]
    assert pair["adv_loss_rise"]["diffs"] == pytest.approx([1.0 - 2.0, 2.0 - 4.0])
    assert pair["adv_accuracy_drop"]["diffs"] == pytest.approx([0.0, 0.0])
    assert pair["hessian_top_eigenvalue"]["diffs"] == pytest.approx([-30.0, -31.0])
    text = (tmp_path / "results.md").read_text()
    assert "Flatness and output scale, RAT − base" in text and "| rat-trades − trades | 2 | -30.5 ± 0.71" in text
    assert (tmp_path / "landscape.png").stat().st_size > 1000
    assert (tmp_path / "differences.png").stat().st_size > 1000


def _record(config, seed, clean, pgd, seconds=10.0):
    return {"config": config, "seed": seed, "grid": "tiny", "seconds_per_epoch": seconds, "history": [],
            "accuracy": {"clean": {"accuracy": clean, "n": 100}, "pgd20": {"accuracy": pgd, "n": 100}}}


def test_aggregation_gives_mean_std_over_seeds_and_a_paired_comparison(tmp_path):
    from scipy import stats

    grid = _grid(tmp_path)
    base = [(0.80, 0.60), (0.82, 0.62), (0.78, 0.61)]
    rat = [(0.81, 0.63), (0.83, 0.62), (0.80, 0.64)]
    records = ([_record("trades", s, *v) for s, v in enumerate(base)]
               + [_record("rat-trades", s, *v, seconds=11.0) for s, v in enumerate(rat)])
    result = aggregate(grid, records)
    clean = result["configs"]["trades"]["clean"]
    assert clean["mean"] == pytest.approx(0.80) and clean["std"] == pytest.approx(0.02) and clean["n"] == 3
    pair = result["pairs"][0]
    diffs = [r[1] - b[1] for r, b in zip(rat, base)]
    assert pair["pgd20"]["diffs"] == pytest.approx(diffs)
    assert pair["pgd20"]["mean"] == pytest.approx(sum(diffs) / 3)
    assert pair["pgd20"]["p_value"] == pytest.approx(stats.ttest_rel([r[1] for r in rat], [b[1] for b in base]).pvalue)
    assert pair["time_ratio"]["mean"] == pytest.approx(1.1)
    # seconds per epoch are the median over a run's epochs: one epoch slowed by other work does not count
    slowed = {**records[0], "history": [{"epoch": e, "train_seconds": t} for e, t in enumerate([10, 11, 90], 1)]}
    assert aggregate(grid, [slowed])["configs"]["trades"]["seconds_per_epoch"]["mean"] == 11
    # a seed present for only one side of a pair is not paired
    partial = aggregate(grid, records[:3] + records[3:5])
    assert partial["pairs"][0]["seeds"] == [0, 1]


def test_markdown_reports_mean_plus_minus_std_and_the_paired_difference(tmp_path):
    grid = _grid(tmp_path)
    records = [_record("trades", 0, 0.80, 0.60), _record("trades", 1, 0.82, 0.62),
               _record("rat-trades", 0, 0.81, 0.63), _record("rat-trades", 1, 0.83, 0.61)]
    for r in records:
        (tmp_path / f"{r['config']}-seed{r['seed']}.json").write_text(json.dumps(r))
    write_aggregate(grid, tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "| trades | 2 | 81.00 ± 1.41 | 61.00 ± 1.41 |" in text
    assert "| rat-trades − trades | 2 | +1.00 ± 0.00 (p 0.00) | +1.00 ± 2.83" in text
    assert f"`rat study --grid {grid.name} --aggregate-only`" in text  # how to remake it


def test_the_grid_files_in_configs_studies_are_valid():
    core = load_grid(STUDIES / "core.yaml")
    assert set(core.runs) == {"trades", "rat-trades", "awp-trades", "awp-rat-trades", "rat-exact-trades"} and core.seeds == [0, 1, 2]
    cfg = run_config(core, "awp-rat-trades", 2)
    assert cfg.method.awp is not None and cfg.method.rat is not None and cfg.train.seed == 2 and cfg.data.dataset == "fashion-mnist"
    # every grid file builds every run's configuration
    for path in [*sorted(STUDIES.glob("*.yaml")), *sorted(PILOTS.glob("*.yaml"))]:
        grid = load_grid(path)
        assert grid.runs, path.name
        for run_name in grid.runs:
            assert run_config(grid, run_name, grid.seeds[0]).train.seed == grid.seeds[0]
    # the regime grid's base runs are pilot 6's, so that pilot's trained runs count as its seed 0
    regime, pilot = load_grid(STUDIES / "regime.yaml"), load_grid(PILOTS / "regime-pilot-6.yaml")
    for name in ("at", "trades"):
        assert run_config(regime, name, 0) == run_config(pilot, name, 0)
    assert run_config(regime, "rat-exact-at", 0).method.rat["taylor"] == "exact-head"
    # each regime ablation is the regime grid's rat-trades with one setting changed
    ablations, reference = load_grid(STUDIES / "regime-ablations.yaml"), run_config(regime, "rat-trades", 0)
    for spec in ("checkpoints", "eval", "hessian", "landscape", "outputs"):
        assert getattr(ablations, spec) == getattr(regime, spec), spec
    changed = {"alpha-0.1": {"alpha": 0.1}, "alpha-0.4": {"alpha": 0.4}}  # the rest dropped in issue 32
    assert set(ablations.runs) == set(changed)
    for name, fields in changed.items():
        cfg = run_config(ablations, name, 0)
        assert all(cfg.method.rat[k] != reference.method.rat[k] for k in fields)
        assert replace(reference, method=replace(reference.method, rat={**reference.method.rat, **fields})) == cfg, name
    # each exact-head ablation is the regime grid's rat-exact-trades with one setting changed
    exact, reference = load_grid(STUDIES / "regime-exact-ablations.yaml"), run_config(regime, "rat-exact-trades", 0)
    for spec in ("checkpoints", "eval", "hessian", "landscape", "outputs"):
        assert getattr(exact, spec) == getattr(regime, spec), spec
    assert exact.seeds == [0, 1] and reference.method.rat["taylor"] == "exact-head"
    changed = {"exact-first-order-only": {"order": [1]}, "exact-second-order-only": {"order": [2]},
               "exact-alpha-0.1": {"alpha": 0.1}, "exact-alpha-0.4": {"alpha": 0.4},
               "exact-taylor-sigma-0.12": {"taylor_sigma": 0.12}}
    assert set(exact.runs) == set(changed)
    for name, fields in changed.items():
        cfg = run_config(exact, name, 0)
        assert all(cfg.method.rat[k] != reference.method.rat[k] for k in fields)
        assert replace(reference, method=replace(reference.method, rat={**reference.method.rat, **fields})) == cfg, name
    # the TrH controls are the exact-head runs with TrH of the base objective, at a fixed coefficient
    for control, exact_name, base in (("trh-trades", "rat-exact-trades", "trades"), ("trh-at", "rat-exact-at", "at")):
        cfg, ref = run_config(regime, control, 0), run_config(regime, exact_name, 0)
        coef = cfg.method.rat["trh_coef"]
        assert coef is not None and 0 < coef < 1e-3, control
        changed = {"taylor": "trh", "trh_coef": coef}
        assert replace(ref, method=replace(ref.method, rat={**ref.method.rat, **changed})) == cfg, control
        assert (control, base) in regime.pairs and (exact_name, control) in regime.pairs
    # the warm-up pair differs in RAT alone, and its control from awp-trades in AWP's warm-up alone
    warm, plain = run_config(regime, "awp-trades-warmup", 0), run_config(regime, "awp-trades", 0)
    assert warm.method.awp["warmup"] == 2
    assert replace(plain, method=replace(plain.method, awp={**plain.method.awp, "warmup": 2})) == warm
    exact_warm = run_config(regime, "awp-rat-exact-trades-warmup", 0)
    assert exact_warm.method.rat["taylor"] == "exact-head"
    assert replace(exact_warm, method=replace(exact_warm.method, rat=None)) == warm
    assert ("awp-rat-exact-trades-warmup", "awp-trades-warmup") in regime.pairs
    # the exact form against the authors' (issue 43, part 4), in both grids
    assert {("rat-exact-trades", "rat-trades"), ("rat-exact-at", "rat-at")} <= set(regime.pairs)
    assert ("rat-exact-trades", "rat-trades") in core.pairs
    # the budget runs differ from the core grid's seed-0 runs in the number of epochs only
    budget = load_grid(STUDIES / "budget.yaml")
    for longer_name, core_name in (("trades-16ep", "trades"), ("rat-trades-16ep", "rat-trades")):
        longer, core_cfg = run_config(budget, longer_name, 0), run_config(core, core_name, 0)
        assert longer.train.epochs == 2 * core_cfg.train.epochs
        assert replace(longer, train=replace(longer.train, epochs=core_cfg.train.epochs)) == core_cfg


def test_bad_grids_are_refused_with_one_line(tmp_path):
    with pytest.raises(StudyError, match="pair"):
        _grid(tmp_path, pairs=[["rat-trades", "mart"]])
    with pytest.raises(StudyError, match="method.rat.alpha"):
        _grid(tmp_path, runs={"bad": ["method.rat.alpha=3"]}, pairs=[])
    (tmp_path / "x.yaml").write_text("name: x\nrunz: {}\n")
    result = run_rat("study", "--grid", str(tmp_path / "x.yaml"))
    assert result.returncode == 2 and "runz" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_parallel_study_runs_each_run_in_its_own_process_with_the_same_results(tmp_path, monkeypatch):
    from ratkit.study.runner import usable_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    grid = _grid(tmp_path, seeds=[0], hessian=None)
    messages = []
    result = study.run_study_parallel(tmp_path / "tiny.yaml", grid, tmp_path / "runs", tmp_path / "results",
                                      jobs=2, log=messages.append)
    assert sorted(p.name for p in (tmp_path / "results").glob("*-seed*.json")) == [
        "rat-trades-seed0.json", "trades-seed0.json"]
    assert (tmp_path / "runs" / "trades-seed0.log").exists() and not any("FAILED" in m for m in messages)
    assert result["pairs"][0]["seeds"] == [0]
    # the same run, sequentially, gives the same numbers (CPU: bit-identical training)
    run_study(grid, tmp_path / "seq", tmp_path / "seq-results", only=["trades"], log=lambda m: None)
    parallel = json.loads((tmp_path / "results" / "trades-seed0.json").read_text())
    sequential = json.loads((tmp_path / "seq-results" / "trades-seed0.json").read_text())
    assert parallel["accuracy"]["pgd20"]["accuracy"] == sequential["accuracy"]["pgd20"]["accuracy"]
    assert [h["val_pgd20"] for h in parallel["history"]] == [h["val_pgd20"] for h in sequential["history"]]
    # two processes at once: each ran on its share of the cores, not a thread per core
    assert parallel["machine"]["threads"] == max(1, usable_cores() // 2)


def test_each_parallel_run_process_gets_its_share_of_the_cores_unless_the_user_set_one(monkeypatch):
    import ratkit.study.runner as runner

    monkeypatch.setattr(runner, "usable_cores", lambda: 16)
    assert runner.child_environment(2, {})["OMP_NUM_THREADS"] == "8"
    assert runner.child_environment(3, {})["OMP_NUM_THREADS"] == "5"
    assert runner.child_environment(32, {})["OMP_NUM_THREADS"] == "1"
    assert runner.child_environment(2, {"OMP_NUM_THREADS": "3", "PATH": "/bin"}) == {"OMP_NUM_THREADS": "3", "PATH": "/bin"}


def test_the_usable_cores_are_the_affinity_a_scheduler_granted_not_the_machines_count(monkeypatch):
    from ratkit.study.runner import usable_cores

    monkeypatch.setattr("os.cpu_count", lambda: 128)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {4, 5, 6}, raising=False)
    assert usable_cores() == 3
    monkeypatch.delattr("os.sched_getaffinity")
    assert usable_cores() == 128


def test_evaluate_only_records_runs_trained_elsewhere_from_best_and_metrics_alone(tmp_path):
    grid = _grid(tmp_path, seeds=[0], runs={"trades": ["method.rat=false"]}, pairs=[], hessian=None)
    run_study(grid, tmp_path / "runs", tmp_path / "results", log=lambda m: None)
    reference = json.loads((tmp_path / "results" / "trades-seed0.json").read_text())
    (tmp_path / "results" / "trades-seed0.json").unlink()
    for f in (tmp_path / "runs" / "trades-seed0").glob("last.*"):
        f.unlink()  # copied without the resume state
    messages = []
    run_study(grid, tmp_path / "runs", tmp_path / "results", evaluate_only=True, log=messages.append)
    again = json.loads((tmp_path / "results" / "trades-seed0.json").read_text())
    assert not any("training" in m for m in messages)
    assert again["accuracy"] == {k: {**v, "seconds": again["accuracy"][k].get("seconds")} if "seconds" in v else v
                                 for k, v in reference["accuracy"].items()}
    assert again["history"] == reference["history"]
    # a configuration with no trained run is skipped, not trained
    grid2 = _grid(tmp_path, seeds=[1], runs={"trades": ["method.rat=false"]}, pairs=[], hessian=None)
    run_study(grid2, tmp_path / "runs", tmp_path / "results", evaluate_only=True, log=messages.append)
    assert "trades-seed1: no trained run" in messages[-1] and not (tmp_path / "runs" / "trades-seed1").exists()


# ----------------------------------------------------------------------------- best and last checkpoints

ONE_RUN = {"seeds": [0], "runs": {"trades": ["method.rat=false"]}, "pairs": [], "hessian": None}


def _expected_gap(record):
    return {k: record["accuracy"][k]["accuracy"] - record["last"]["accuracy"][k]["accuracy"] for k in record["accuracy"]}


def test_a_grid_with_last_evaluates_the_last_checkpoint_with_the_same_protocol(tmp_path):
    grid = _grid(tmp_path, checkpoints=["best", "last"], **ONE_RUN)
    messages = []
    result = run_study(grid, tmp_path / "runs", tmp_path / "results", log=messages.append)
    record = json.loads((tmp_path / "results" / "trades-seed0.json").read_text())
    assert "trades-seed0: last" in messages
    assert record["last"]["epoch"] == 2  # the weights after the last of the 2 epochs
    assert {k: v["n"] for k, v in record["last"]["accuracy"].items()} == {k: v["n"] for k, v in
                                                                          record["accuracy"].items()}
    assert record["best_minus_last"] == pytest.approx(_expected_gap(record))
    run = tmp_path / "runs" / "trades-seed0"
    last_report = json.loads((run / "eval-last.json").read_text())
    assert last_report["last_epoch"] == 2 and "last.safetensors (epoch 2)" in last_report["checkpoint"]
    best_report = json.loads((run / "eval.json").read_text())  # eval.json stays the best checkpoint's
    assert best_report["best_epoch"] == record["best_epoch"] and "best.safetensors" in best_report["checkpoint"]
    assert result["configs"]["trades"]["last"]["epochs"] == [2]
    assert "## Last epoch" in (tmp_path / "results" / "results.md").read_text()


def test_a_record_without_last_gets_it_from_the_run_directory_without_retraining(tmp_path, monkeypatch):
    run_study(_grid(tmp_path, **ONE_RUN), tmp_path / "runs", tmp_path / "results", log=lambda m: None,
              aggregate_after=False)
    result = tmp_path / "results" / "trades-seed0.json"
    before = json.loads(result.read_text())
    assert "last" not in before and "best_minus_last" not in before

    def no_training(*args, **kwargs):
        raise AssertionError("a complete run was trained or its best checkpoint evaluated again")

    monkeypatch.setattr(study.runner, "run_one", no_training)
    monkeypatch.setattr(study.runner, "record_run", no_training)
    later = _grid(tmp_path, checkpoints=["best", "last"], **ONE_RUN)
    messages = []
    run_study(later, tmp_path / "runs", tmp_path / "results", log=messages.append, aggregate_after=False)
    after = json.loads(result.read_text())
    assert "trades-seed0: last" in messages
    assert {k: v for k, v in after.items() if k not in ("last", "best_minus_last")} == before
    assert after["last"]["epoch"] == 2 and set(after["last"]["accuracy"]) == set(before["accuracy"])
    assert after["best_minus_last"] == pytest.approx(_expected_gap(after))
    messages.clear()
    run_study(later, tmp_path / "runs", tmp_path / "results", log=messages.append, aggregate_after=False)
    assert messages == ["trades-seed0: complete, skipped"]

    # a run directory without its last checkpoint (copied without the resume state): kept as is, and said so
    for f in (tmp_path / "runs" / "trades-seed0").glob("last.*"):
        f.unlink()
    result.write_text(json.dumps(before))
    messages.clear()
    run_study(later, tmp_path / "runs", tmp_path / "results", log=messages.append, aggregate_after=False)
    assert any("lacks last" in m and "no last checkpoint" in m and "kept as is" in m for m in messages)
    assert json.loads(result.read_text()) == before
    # and recorded from best alone (evaluate only), the record leaves last out until the checkpoint is there
    monkeypatch.undo()
    result.unlink()
    messages.clear()
    run_study(later, tmp_path / "runs", tmp_path / "results", evaluate_only=True, log=messages.append,
              aggregate_after=False)
    assert "last" not in json.loads(result.read_text())
    assert any("has no last checkpoint; last left out" in m for m in messages)


def _with_last(record, best_epoch, last_epoch, clean, pgd):
    record["best_epoch"] = best_epoch
    record["last"] = {"epoch": last_epoch, "accuracy": {"clean": {"accuracy": clean, "n": 100},
                                                        "pgd20": {"accuracy": pgd, "n": 100}}}
    record["best_minus_last"] = _expected_gap(record)
    return record


def test_aggregate_and_markdown_report_the_last_epoch_and_the_best_minus_last_gap(tmp_path):
    grid = _grid(tmp_path, checkpoints=["best", "last"])
    records = [_with_last(_record("trades", 0, 0.80, 0.60), 7, 10, 0.84, 0.55),
               _with_last(_record("trades", 1, 0.82, 0.62), 8, 10, 0.86, 0.58),
               _with_last(_record("rat-trades", 0, 0.81, 0.63), 9, 10, 0.83, 0.62),
               _with_last(_record("rat-trades", 1, 0.83, 0.61), 8, 10, 0.85, 0.60)]
    for r in records:
        (tmp_path / f"{r['config']}-seed{r['seed']}.json").write_text(json.dumps(r))
    result = write_aggregate(grid, tmp_path)
    last = result["configs"]["trades"]["last"]
    assert last["seeds"] == [0, 1] and last["epochs"] == [10, 10] and last["best_epochs"] == [7, 8]
    assert last["accuracy"]["pgd20"]["mean"] == pytest.approx(0.565) and last["accuracy"]["pgd20"]["images"] == 100
    assert last["best_minus_last"]["pgd20"]["mean"] == pytest.approx(0.045)
    assert last["best_minus_last"]["clean"]["mean"] == pytest.approx(-0.04)
    assert result["configs"]["trades"]["pgd20"]["mean"] == pytest.approx(0.61)  # best, as without last
    pair = result["pairs"][0]["last"]
    assert pair["seeds"] == [0, 1]
    assert pair["accuracy"]["pgd20"]["diffs"] == pytest.approx([0.62 - 0.55, 0.60 - 0.58])
    assert pair["best_minus_last"]["pgd20"]["diffs"] == pytest.approx([0.01 - 0.05, 0.01 - 0.04])
    assert result["grid"]["checkpoints"] == ["best", "last"]
    text = (tmp_path / "results.md").read_text()
    assert "| trades | 2 | 81.00 ± 1.41 | 61.00 ± 1.41 |" in text  # the best checkpoint's table is unchanged
    assert "## Last epoch" in text and "| trades | 2 | 10 | 85.00 ± 1.41 | 56.50 ± 2.12 |" in text
    assert "## Best − last" in text and "| trades | 2 | 7, 8 | -4.00 ± 0.00 | +4.50 ± 0.71 |" in text
    assert "| rat-trades − trades | 2 | -1.00 ± 0.00 (p 0.00) | +4.50 ± 3.54 (p " in text  # at the last epoch
    assert "| rat-trades − trades | 2 | +2.00 ± 0.00 (p 0.00) | -3.50 ± 0.71 (p " in text  # best − last, paired


def test_without_last_the_aggregate_and_markdown_are_as_before(tmp_path):
    records = [_record("trades", 0, 0.80, 0.60), _record("trades", 1, 0.82, 0.62),
               _record("rat-trades", 0, 0.81, 0.63), _record("rat-trades", 1, 0.83, 0.61)]
    # a grid asking for last, over result files written before the option existed: no last tables
    for grid in (_grid(tmp_path), _grid(tmp_path, checkpoints=["best", "last"])):
        result = aggregate(grid, records)
        assert "last" not in result["configs"]["trades"] and "last" not in result["pairs"][0]
        text = study.format_markdown(result)
        assert "Last epoch" not in text and "Best − last" not in text and "last epoch" not in text
    assert "checkpoints" not in aggregate(_grid(tmp_path), records)["grid"]  # results.json as before the option


@pytest.mark.parametrize("name", ["core", "budget", "bases", "regime", "regime-ablations"])
def test_the_committed_results_aggregate_exactly_as_they_were_written(name):
    results = STUDIES.parents[3] / "docs" / "results" / name
    if not (results / "results.json").exists():
        pytest.skip(f"no committed results in {results}")
    grid = load_grid(STUDIES / f"{name}.yaml")
    records = [r for r in study.read_results(results) if r.get("grid", grid.name) == grid.name]
    result = aggregate(grid, records)
    assert json.dumps(result, indent=1) + "\n" == (results / "results.json").read_text()
    assert study.format_markdown(result) == (results / "results.md").read_text()


def test_an_attack_only_later_seeds_have_is_aggregated_over_those_seeds(tmp_path):
    grid = _grid(tmp_path)
    records = [_record("trades", 0, 0.80, 0.60), _record("trades", 1, 0.82, 0.62),
               _record("rat-trades", 0, 0.81, 0.63), _record("rat-trades", 1, 0.83, 0.61)]
    for r, aa in ((records[1], 0.50), (records[2], 0.55), (records[3], 0.54)):  # seed 0 of trades lacks it
        r["accuracy"]["aa"] = {"accuracy": aa, "n": 50}
    result = aggregate(grid, records)
    aa = result["configs"]["trades"]["aa"]
    assert aa["mean"] == pytest.approx(0.50) and aa["n"] == 1 and aa["images"] == 50
    assert result["configs"]["rat-trades"]["aa"]["n"] == 2
    assert result["pairs"][0]["aa"]["diffs"] == pytest.approx([0.54 - 0.50])  # seed 1, the one both have
    assert result["pairs"][0]["pgd20"]["n"] == 2
    text = study.format_markdown(result)
    assert "| trades | 2 | 81.00 ± 1.41 | 61.00 ± 1.41 | 50.00 (1 of 2 seeds) |" in text


def test_the_regime_pilot_grid_evaluates_best_and_last_and_the_checkpoints_option_is_checked(tmp_path):
    pilot = load_grid(PILOTS / "regime-pilot.yaml")
    assert pilot.checkpoints == ["best", "last"] and set(pilot.runs) == {"trades", "at"} and pilot.seeds == [0]
    assert pilot.hessian is None and pilot.landscape is None and pilot.outputs == study.OutputsSpec(n=1000)
    cfg = run_config(pilot, "at", 0)
    assert cfg.method.name == "at" and not cfg.method.rat and cfg.optim.name == "sgd"
    assert cfg.optim.schedule == "multistep" and cfg.optim.milestones[0] < cfg.train.epochs
    assert cfg.data.val_size == 5000 and cfg.data.train_subset is not None
    with pytest.raises(StudyError, match="checkpoints"):
        _grid(tmp_path, checkpoints=["last"])


# ----------------------------------------------------------------------------- the package's seams


def test_measurement_blocks_are_typed_specs_with_their_defaults_and_unknown_keys_are_refused(tmp_path):
    grid = _grid(tmp_path, landscape={"n": 16}, outputs={"n": 32})
    assert grid.landscape == study.LandscapeSpec(n=16, points=21, span=1.0, adversarial="regenerated")
    assert grid.hessian == study.HessianSpec(n=8, top_k=1, probes=2, max_iter=3)
    assert grid.eval == study.EvalSpec(attacks="clean,pgd20", n=64, aa_n=None)
    assert load_grid(STUDIES / "budget.yaml").hessian is None
    empty = _grid(tmp_path, eval={}, hessian={})  # as with the untyped blocks: nothing asked, the preset's eval
    assert empty.hessian is None and empty.eval == study.EvalSpec(attacks=None, n=None, aa_n=None)
    cfg = run_config(empty, "trades", 0)
    assert empty.eval.apply(cfg).eval == replace(cfg.eval, n=None, aa_n=None)
    with pytest.raises(StudyError, match=r"hessian: unknown keys \['prob'\]"):
        _grid(tmp_path, hessian={"n": 8, "prob": 2})
    with pytest.raises(StudyError, match="landscape: points must be odd"):
        _grid(tmp_path, landscape={"points": 4})
    with pytest.raises(StudyError, match="outputs.n"):
        _grid(tmp_path, outputs={"n": 0})


def test_each_result_file_is_handed_to_on_result_with_its_message(tmp_path, monkeypatch):
    grid = _grid(tmp_path, seeds=[0], hessian=None)
    monkeypatch.setattr(study.runner, "run_one", lambda grid, name, seed, out, **kw: {"config": name, "seed": seed})
    calls = []
    run_study(grid, tmp_path / "runs", tmp_path / "results", on_result=lambda paths, msg: calls.append((paths, msg)),
              log=lambda m: None, aggregate_after=False)
    results = tmp_path / "results"
    assert calls == [([results / "trades-seed0.json"], "study tiny: result of trades-seed0"),
                     ([results / "rat-trades-seed0.json"], "study tiny: result of rat-trades-seed0")]
    assert json.loads((results / "trades-seed0.json").read_text()) == {"config": "trades", "seed": 0}


def test_git_commit_commits_only_the_given_files(tmp_path, monkeypatch):
    import subprocess

    from ratkit.study.commits import git_commit

    for key in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{key}_NAME", "test")
        monkeypatch.setenv(f"GIT_{key}_EMAIL", "test@example.com")
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    (tmp_path / "a.json").write_text("{}\n")
    (tmp_path / "b.json").write_text("{}\n")
    assert git_commit([Path("a.json")], "study tiny: result of a")
    log = subprocess.run(["git", "log", "--format=%s", "--name-only"], capture_output=True, text=True).stdout
    assert log.split() == ["study", "tiny:", "result", "of", "a", "a.json"]
    assert not git_commit([Path("missing.json")], "nothing")


def test_study_commit_commits_each_result_with_the_aggregate_remade(tmp_path, monkeypatch):
    """``rat study --commit``: after every committed result the committed aggregate matches the
    committed result files (a study stopped between runs leaves main consistent)."""
    import subprocess

    from ratkit.study.commits import commit_results

    for key in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{key}_NAME", "test")
        monkeypatch.setenv(f"GIT_{key}_EMAIL", "test@example.com")
    grid = _grid(tmp_path)
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    results = Path("results")
    commit = commit_results(lambda m: None, grid, results, Path("runs"))
    for seed, pgd in ((0, 0.60), (1, 0.64)):
        result = results / f"trades-seed{seed}.json"
        results.mkdir(exist_ok=True)
        result.write_text(json.dumps(_record("trades", seed, 0.8, pgd)))
        commit([result], f"study tiny: result of trades-seed{seed}")
        committed = subprocess.run(["git", "show", "HEAD:results/results.json"], capture_output=True,
                                   text=True, check=True).stdout
        assert json.loads(committed)["configs"]["trades"]["pgd20"]["n"] == seed + 1
    names = subprocess.run(["git", "show", "--format=%s", "--name-only", "HEAD"], capture_output=True,
                           text=True).stdout.split("\n")
    assert names[0] == "study tiny: result of trades-seed1"
    assert {"results/trades-seed1.json", "results/results.json", "results/results.md"} <= set(names)
    assert "runs/.commit.lock" not in names and "results/trades-seed0.json" not in names


def test_the_pilot_curve_script_reads_training_logs_alone(tmp_path):
    """scripts/plot_val_curves.py: the figure and the best/last table of runs not yet evaluated."""
    import subprocess
    import sys

    for run, curve in (("at-seed0", [0.50, 0.62, 0.58]), ("trades-seed0", [0.55, 0.60, 0.61]),
                       ("mart-seed0", [0.60, 0.66, 0.64, 0.62, 0.60, 0.56])):
        (tmp_path / run).mkdir()
        rows = [{"epoch": e + 1, "val_pgd20": v, "train_adv_acc": 0.7} for e, v in enumerate(curve)]
        (tmp_path / run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "at-seed0" / "config.yaml").write_text(yaml.safe_dump({"optim": {"schedule": "multistep",
                                                                                  "milestones": [2]}}))
    script = Path(__file__).resolve().parents[1] / "scripts" / "plot_val_curves.py"
    out = tmp_path / "curves.png"
    result = subprocess.run([sys.executable, str(script), str(tmp_path), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| at-seed0 | 3 | 62.0 (2) | 58.0 | 4.0 |  | 70.0 |" in result.stdout  # too short to smooth
    assert "| trades-seed0 | 3 | 61.0 (3) | 61.0 | 0.0 |  | 70.0 |" in result.stdout
    # the smoothed gap: the best 5-validation mean (62.4, epochs 1-5) minus the last one (61.6, epochs 2-6)
    assert "| mart-seed0 | 6 | 66.0 (2) | 56.0 | 10.0 | 62.4 - 61.6 = 0.8 | 70.0 |" in result.stdout
    assert out.stat().st_size > 1000
