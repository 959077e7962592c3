"""Specifications of the device check (`scripts/device_check.sh`, `ratkit.bench.device_check`), run here on
the CPU against the CPU with tiny sizes, so that the GPU script cannot rot between GPU runs."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ratkit.bench import ratio_ci
from ratkit.bench.device_check import (EXIT_NO_DEVICE, RATIOS, PRESETS, TIMED_CONFIGS, TOLERANCES,
                                       DeviceCheckSettings, Net, median_ci, format_check, preset_estimate,
                                       run_device_check, step_errors)

ROOT = Path(__file__).resolve().parents[1]


def _tiny(dataset):
    return Net("smallcnn", dataset, {"channels": [4, 8], "hidden": 16})


TINY = DeviceCheckSettings(
    device="cpu", reference="cpu", attack_steps=2, step_net=_tiny("cifar10"), step_batch=8,
    verdict_net=_tiny("fashion-mnist"), verdict_images=16, verdict_train_steps=2, timed_net=_tiny("cifar10"),
    batch_size=4, rounds=2, steps_per_round=1, warmup=0, eval_images=4, eval_batch=4, aa_net=_tiny("cifar10"),
    aa_images=4, aa_train_steps=0, resamples=50)


@pytest.fixture(scope="module")
def tiny_result():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend with whatever else runs on the machine
    try:
        return run_device_check(TINY)
    finally:
        torch.set_num_threads(threads)


def test_the_cpu_against_itself_agrees_exactly_and_passes_the_tolerances(tiny_result):
    step = tiny_result["correctness"]["rat_trades_step"]
    assert step["passed"]
    assert step["loss_rel"] == step["weights_abs"] == step["update_rel"] == step["buffers_max_abs_diff"] == 0.0
    assert step["update_error_ratio"] == 1.0  # the same float32 step, judged against the float64 one
    assert step["update_error"]["reference"] > 0  # float32 is not float64: the yardstick is not zero
    assert step["attack"]["x_adv_max_abs_diff"] == 0.0  # the same CPU generator: the same starts and noise
    assert step["max_update"] > 0  # the step did move the weights
    assert set(step["loss"]["device"]) == {"loss", "natural", "robust", "taylor1", "taylor2"}
    verdicts = tiny_result["correctness"]["pgd20_verdicts"]
    assert verdicts["images"] == 16 and verdicts["pgd20_verdicts_differing"] == 0
    assert verdicts["clean_verdicts_differing"] == 0


def test_the_step_is_judged_by_its_error_against_float64_relative_to_the_references():
    """A device as far from the exact step as the reference's own float32 rounding passes, though the
    two float32 steps differ by more than 1e-3 of the update (the first H200 run: 3.9e-3); a device
    ten times as far fails."""
    before = {"w": torch.zeros(3)}
    exact = {"w": torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)}
    reference = {"w": torch.tensor([1.004, -0.5, 0.25])}  # float32 rounding: 4e-3 of the update
    close = step_errors(before, {"exact": exact, "reference": reference,
                                 "device": {"w": torch.tensor([0.996, -0.5, 0.25])}}, ["w"])
    assert close["update_rel"] == pytest.approx(8e-3, rel=1e-3)
    assert close["update_error_ratio"] == pytest.approx(1.0, rel=1e-3)
    assert close["update_error_ratio"] <= TOLERANCES["update_error_ratio"]
    far = step_errors(before, {"exact": exact, "reference": reference,
                               "device": {"w": torch.tensor([1.0, -0.46, 0.25])}}, ["w"])
    assert far["update_error_ratio"] == pytest.approx(10.0, rel=1e-3)
    assert far["update_error_ratio"] > TOLERANCES["update_error_ratio"]


def test_the_report_has_every_part_and_is_json(tiny_result, tmp_path):
    back = json.loads(json.dumps(tiny_result))
    assert set(back["throughput"]) == {"float32", "bfloat16"}
    for timed in back["throughput"].values():
        assert set(timed["configs"]) == set(TIMED_CONFIGS)
        for entry in timed["configs"].values():
            lo, hi = entry["ci95_s_per_step"]
            assert lo <= hi and entry["timed_steps"] == TINY.rounds * TINY.steps_per_round
        assert set(timed["ratios"]) == set(RATIOS)
        for r in timed["ratios"].values():
            assert r["ci95"][0] <= r["ci95"][1] and r["value"] > 0
    assert set(back["evaluation"]["s_per_image"]) == {"clean", "fgsm", "pgd20", "cw30"}
    assert back["evaluation"]["autoattack"]["images_per_s"] > 0
    assert set(back["estimates"]) == set(PRESETS)
    assert all(e["total_h"] > 0 for e in back["estimates"].values())
    assert back["environment"]["cudnn_allow_tf32"] in (True, False)
    text = format_check(back)
    assert "PASSED" in text and "PGD-20 verdicts" in text and "cifar10-awp-rat-trades-wrn34" in text


def test_the_estimate_counts_awp_warmup_epochs_at_the_cost_of_the_step_without_awp():
    steps = {"float32": {"configs": {n: {"median_s_per_step": t} for n, t in
                                     (("trades", 1.0), ("rat-trades", 2.0), ("awp-trades", 3.0),
                                      ("awp-rat-trades", 4.0))}}}
    costs = {"s_per_image": {"clean": 0.001, "fgsm": 0.002, "pgd20": 0.02, "cw30": 0.03},
             "autoattack": {"images_per_s": 10.0, "pgd20_s_per_image": 0.01}}
    e = preset_estimate("cifar10-awp-rat-trades-wrn34", steps, costs)
    assert e["steps_per_epoch"] == (50_000 - 1000) // 128 and e["awp_warmup_epochs"] == 10
    assert e["training_h"]["float32"] == pytest.approx(382 * (10 * 2.0 + 190 * 4.0) / 3600)
    assert e["validation_h"] == pytest.approx(200 * 1000 * 0.021 / 3600)
    aa = 0.1 * 0.02 / 0.01  # AutoAttack's 0.1 s per image, scaled by the two models' PGD-20 costs
    assert e["final_evaluation_h"] == pytest.approx(10_000 * (0.001 + 0.002 + 0.02 + 0.03 + aa) / 3600)
    assert e["total_h"] == pytest.approx(e["training_h"]["float32"] + e["validation_h"] + e["final_evaluation_h"])


def test_the_intervals_resample_whole_rounds():
    assert median_ci([[1.0, 1.0]] * 4, resamples=100) == [1.0, 1.0]
    drifting_a, drifting_b = [[1.0], [2.0], [3.0], [4.0]], [[2.0], [4.0], [6.0], [8.0]]
    assert list(ratio_ci(drifting_a, drifting_b, resamples=100)) == [0.5, 0.5]  # a drift shared by a round cancels
    low, high = median_ci(drifting_a, resamples=200)
    assert 1.0 <= low < high <= 4.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run the check")
def test_the_script_without_a_gpu_exits_at_once_with_a_clear_message(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PY": sys.executable}
    started = time.perf_counter()
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh"), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == EXIT_NO_DEVICE, proc.stderr
    assert "no GPU" in proc.stderr and "torch.cuda.is_available()" in proc.stderr
    assert not out.exists()
    assert time.perf_counter() - started < 60  # the time to import torch, not to run anything
