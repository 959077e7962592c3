"""Specifications of `rat bench` and of the naive reference-style baseline it measures against."""

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_rat

from ratkit.bench import (CONFIGS, TARGETS, TIME_RATIOS, BenchSettings, bench_method, bench_model, format_bench,
                          gemm_precision, make_step,
                          measure_memory, naive_module, ratio_ci, run_bench, width_kwargs)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import naive_trades  # noqa: E402

TINY = dict(model_kwargs={"channels": [4, 8], "hidden": 16}, batch_size=8, attack_steps=1, rounds=1,
            steps_per_round=1, warmup=0, memory=False)


def _fixed_batch(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    # inside [0.1, 0.9]: the reference script's unclipped random start then equals ours
    return 0.1 + 0.8 * torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _library_and_naive(name, pairing="fixed"):
    settings = BenchSettings()
    x, y = _fixed_batch()
    ours, theirs = bench_model(settings), bench_model(settings)
    method = bench_method(name, eps=0.1, attack_steps=10)
    common = dict(eps=0.1, step_size=0.025, steps=10, beta=6.0)
    if name == "rat-trades":
        method.pairing = pairing
        naive_loss = lambda m, xx, yy, generator: naive_trades.naive_rat_trades_loss(  # noqa: E731
            m, xx, yy, alpha=0.2, sigma=1e-4, pairing=pairing, generator=generator, **common)
    else:
        naive_loss = lambda m, xx, yy, generator: naive_trades.naive_trades_loss(  # noqa: E731
            m, xx, yy, generator=generator, **common)
    return method, ours, theirs, naive_loss, x, y


@pytest.mark.parametrize("name,pairing", [("trades", "fixed"), ("rat-trades", "fixed"), ("rat-trades", "reference")])
def test_naive_and_library_give_the_same_loss_on_a_fixed_batch(name, pairing):
    method, ours, theirs, naive_loss, x, y = _library_and_naive(name, pairing)
    x_adv = method.craft(ours, x, y, generator=torch.Generator().manual_seed(5))
    fast = method.loss(ours, x, x_adv, y).loss
    slow = naive_loss(theirs, x, y, torch.Generator().manual_seed(5))
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


def test_naive_and_library_rat_trades_take_the_same_optimisation_step():
    method, ours, theirs, naive_loss, x, y = _library_and_naive("rat-trades")
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    method.step(ours, opt_ours, x, y, generator=torch.Generator().manual_seed(5))
    naive_trades.naive_step(lambda m, xx, yy, **kw: naive_loss(m, xx, yy, kw["generator"]), theirs, opt_theirs,
                            x, y, generator=torch.Generator().manual_seed(5))
    before = bench_model(BenchSettings())
    moved = 0.0
    for (name, a), b, c in zip(ours.named_parameters(), theirs.parameters(), before.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, (a - c).abs().max().item())
    assert moved > 1e-4  # the step did change the weights


def test_the_naive_rat_trades_runs_the_attack_on_a_noisy_copy_not_on_the_live_model():
    _, _, theirs, naive_loss, x, y = _library_and_naive("rat-trades")
    before = {k: v.clone() for k, v in theirs.state_dict().items()}
    naive_loss(theirs, x, y, torch.Generator().manual_seed(5))
    for k, v in theirs.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bench_times_every_configuration_and_reports_every_ratio_against_its_target():
    result = run_bench(BenchSettings(**TINY), with_scaling=False)
    assert set(result["configs"]) == set(CONFIGS)
    for entry in result["configs"].values():
        assert entry["median_s_per_step"] > 0 and entry["timed_steps"] == 1
        assert entry["images_per_s"] == pytest.approx(8 / entry["median_s_per_step"])
    for key, (num, den) in TIME_RATIOS.items():
        expected = result["configs"][num]["median_s_per_step"] / result["configs"][den]["median_s_per_step"]
        assert result["ratios"][key] == pytest.approx(expected)
    for key, bound in TARGETS.items():
        target = result["targets"][key]
        if key == "rat_peak_mem_over_base":  # memory was not measured in this run
            assert target["value"] is None and target["met"] is None
        else:
            assert target["met"] == (result["ratios"][key] <= bound)
    json.dumps(result)


def test_peak_memory_is_measured_in_one_subprocess_per_configuration(monkeypatch):
    import ratkit.bench.steps as steps

    settings = BenchSettings(batch_size=64, attack_steps=1, rounds=1, steps_per_round=1, warmup=0,
                             configs=("at", "rat-exact-at"))
    measured = []

    def spy(name, s):
        measured.append(name)
        return measure_memory(name, s)

    monkeypatch.setattr(steps, "measure_memory", spy)
    result = run_bench(settings, with_scaling=False)
    assert measured == ["at", "rat-exact-at"]
    at, rat_at = (result["configs"][name]["peak_step_bytes"] for name in measured)
    # RAT's exact-head terms around PGD-AT differentiate the clean pass, so its activations are kept as
    # well as the adversarial one's (the soft-target RAT-AT runs its clean pass without a graph)
    assert 0 < at < rat_at
    assert result["ratios"]["rat_peak_mem_over_base_exact_at"] == pytest.approx(rat_at / at)
    assert "rat_peak_mem_over_base" not in result["ratios"]  # that one is RAT-TRADES over TRADES


def test_scaling_reports_seconds_per_step_by_batch_size_and_width():
    from ratkit.bench import scaling

    out = scaling(BenchSettings(**TINY), batch_sizes=(4, 8), widths=(0.5, 1.0))
    assert [r["batch_size"] for r in out["by_batch_size"]] == [4, 8]
    assert [r["model_kwargs"]["channels"] for r in out["by_width"]] == [[2, 4], [4, 8]]
    assert out["by_width"][0]["parameters"] < out["by_width"][1]["parameters"]
    assert all(r["trades"] > 0 and r["rat-trades"] > 0 for r in out["by_batch_size"] + out["by_width"])


def test_width_scaling_understands_smallcnn_and_wide_resnets():
    assert width_kwargs("smallcnn", {}, 2.0) == ("smallcnn", {"channels": [64, 128]})
    assert width_kwargs("wrn-16-4", {}, 0.5) == ("wrn-16-2", {})
    assert width_kwargs("preactresnet18", {}, 2.0) is None


def test_rat_bench_cli_prints_the_table_and_writes_the_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_rat("bench", "--width", "0.125", "--batch-size", "8", "--steps", "1", "--rounds", "1",
                     "--attack-steps", "1", "--configs", "trades,rat-trades,naive-trades", "--no-memory",
                     "--no-scaling", "--quiet", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "rat_trades_over_trades" in result.stdout and "trades_over_naive_trades" in result.stdout
    data = json.loads(out.read_text())
    assert set(data["ratios"]) == {"rat_trades_over_trades", "trades_over_naive_trades"}
    assert data["settings"]["model_kwargs"] == {"channels": [4, 8]}


@pytest.mark.parametrize("args,needle", [(["--configs", "trades,warp"], "--configs"), (["--steps", "0"], "--steps"),
                                         (["--model", "nonsense"], "--model"), (["--width", "2", "--model",
                                                                                 "resnet18"], "--width")])
def test_rat_bench_refuses_bad_flags_with_one_line(args, needle):
    result = run_rat("bench", "--no-memory", "--no-scaling", *args)
    assert result.returncode == 2
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_naive_baseline_is_found_in_the_source_tree():
    assert naive_module() is not None


def test_the_ratio_interval_collapses_to_one_when_both_configurations_ran_alike():
    rounds = [[0.30, 0.41], [0.52, 0.33], [0.29, 0.35], [0.61, 0.31]]
    assert ratio_ci(rounds, [list(r) for r in rounds]) == (1.0, 1.0)


def test_the_ratio_interval_of_a_constant_paired_ratio_is_that_ratio_however_noisy_the_rounds():
    # every round of the numerator is 1.25x the same round of the denominator, while the rounds
    # themselves differ 3x: pairing by round cancels the machine's slow spells
    den = [[0.2, 0.25], [0.6, 0.55], [0.3, 0.31], [0.4, 0.22], [0.2, 0.5]]
    num = [[1.25 * t for t in r] for r in den]
    low, high = ratio_ci(num, den)
    assert low == pytest.approx(1.25, abs=1e-12) and high == pytest.approx(1.25, abs=1e-12)


def test_the_ratio_interval_holds_the_point_and_narrows_with_more_rounds():
    g = torch.Generator().manual_seed(3)

    def noisy(rounds, scale):
        return (scale * (1 + 0.1 * torch.rand(rounds, 2, generator=g))).tolist()

    widths = []
    for rounds in (8, 128):
        num, den = noisy(rounds, 1.1), noisy(rounds, 1.0)
        point = (torch.tensor(num).flatten().median() / torch.tensor(den).flatten().median()).item()
        low, high = ratio_ci(num, den)
        assert low < 1.1 < high and low <= point * 1.001 and point <= high * 1.001
        widths.append(high - low)
    assert widths[1] < widths[0] / 2
    assert ratio_ci(num, den, seed=1) != ratio_ci(num, den, seed=2)
    assert ratio_ci(num, den, seed=1) == ratio_ci(num, den, seed=1)


def test_bench_reports_a_ci_for_every_time_ratio_and_the_flop_rate_of_every_configuration():
    configs = ("at", "rat-at", "trades", "rat-trades", "naive-trades")
    settings = BenchSettings(**{**TINY, "rounds": 3, "configs": configs, "attack_precision": "bfloat16"})
    result = run_bench(settings, with_scaling=False)
    time_ratios = [k for k in TIME_RATIOS if k in result["ratios"]]
    assert set(time_ratios) == {"rat_at_over_at", "rat_trades_over_trades", "trades_over_naive_trades"}
    assert set(result["ratio_ci"]) == {f"{k}_ci" for k in time_ratios}
    for key in time_ratios:
        low, high = result["ratio_ci"][f"{key}_ci"]
        assert low <= result["ratios"][key] <= high
    # the float32 GEMM for the naive baseline, the attack's bfloat16 for the library
    assert set(result["gemm_gflops"]) == {"float32", "bfloat16"} and min(result["gemm_gflops"].values()) > 0
    for name, entry in result["configs"].items():
        assert entry["flops_per_step"] > 0 and len(entry["rounds_s"]) == 3
        assert entry["gflops_per_s"] == pytest.approx(entry["flops_per_step"] / entry["median_s_per_step"] / 1e9)
        assert entry["gemm_precision"] == ("float32" if name == "naive-trades" else "bfloat16")
        assert entry["percent_of_gemm"] == pytest.approx(
            100 * entry["gflops_per_s"] / result["gemm_gflops"][entry["gemm_precision"]])
    # RAT around PGD-AT pays one more clean forward; the FLOP count shows it
    assert result["configs"]["rat-at"]["flops_per_step"] > result["configs"]["at"]["flops_per_step"]
    table = format_bench(result)
    assert "GFLOP/s" in table and "% of GEMM" in table and "bfloat16" in table
    low, high = result["ratio_ci"]["rat_trades_over_trades_ci"]
    assert f"{result['ratios']['rat_trades_over_trades']:.3f} [{low:.3f}, {high:.3f}]" in table
    json.dumps(result)


@pytest.mark.parametrize("step_precision,expected", [("float32", False), ("bfloat16", True)])
def test_the_bench_runs_the_library_step_in_its_step_precision(step_precision, expected):
    """`rat bench --precision` times the step `rat train` runs with that train.precision: every
    forward pass of the step, the attack's included, under autocast; float32 none."""
    settings = BenchSettings(**{**TINY, "step_precision": step_precision})
    model, seen = bench_model(settings), []
    model.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    x, y = _fixed_batch(8)
    make_step("trades", settings)(model, torch.optim.SGD(model.parameters(), lr=0.01), x, y, torch.Generator())
    assert len(seen) == 4 and set(seen) == {expected}  # 1 attack step; TRADES' clean target, clean and adv passes
    assert gemm_precision("trades", settings) == step_precision and gemm_precision("naive-trades", settings) == "float32"


def test_rat_bench_cli_times_a_bfloat16_step_and_says_so(tmp_path):
    out = tmp_path / "bench.json"
    result = run_rat("bench", "--width", "0.125", "--batch-size", "8", "--steps", "1", "--rounds", "1",
                     "--attack-steps", "1", "--configs", "trades,rat-trades", "--precision", "bfloat16",
                     "--no-memory", "--no-scaling", "--quiet", "--json", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["settings"]["step_precision"] == "bfloat16" and "bfloat16" in data["gemm_gflops"]
    assert "step bfloat16" in result.stdout


def test_rat_bench_compile_times_the_compiled_library_model_and_keeps_the_naive_baseline_eager():
    """`rat bench --compile` measures what train.compile: true trains: the library's model compiled
    (in the warm-up steps), the naive baselines eager; the report says so."""
    from ratkit.bench.steps import _runner, _synthetic_batches
    from ratkit.compile import is_compiled

    settings = BenchSettings(**{**TINY, "compile": True})
    device = torch.device("cpu")
    batches = _synthetic_batches(settings, device)
    assert is_compiled(_runner("trades", settings, device, batches).model)
    assert not is_compiled(_runner("naive-trades", settings, device, batches).model)
    assert not is_compiled(_runner("trades", BenchSettings(**TINY), device, batches).model)
