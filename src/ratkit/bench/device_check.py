"""The device check (``scripts/device_check.sh``): does a GPU compute what the CPU computes, and
what do the paper's training steps cost on it. One run, one JSON
(``docs/performance/gpu.json``), three parts:

1. **Correctness**, the device against the CPU, in float32 with TF32 off (``strict_float32``).
   Both devices draw their random numbers from one CPU generator: ratkit draws random starts
   and RAT's weight noise on the generator's device and then moves them, so both attacks start
   from the same noise.

   * RAT-TRADES on a fixed batch: the two attacks may part where the sign of a gradient near 0
     is decided by rounding, so their difference is reported, not judged. The loss and one SGD
     step are then computed on both devices from the same weights and the same (the
     reference's) adversarial batch, and judged against ``TOLERANCES``.
   * PGD-20 of our protocol on 512 images, with a small model briefly trained so that its
     verdicts are neither all right nor all wrong: the number of per-example verdicts that
     differ is reported (a handful at the decision boundary is rounding, not a bug).
2. **Throughput**: seconds per step of TRADES, RAT-TRADES, AWP-TRADES and AWP-RAT-TRADES for
   WRN-34-10 at batch 128 on 32x32 inputs, timed by ``rat bench``'s interleaved rounds, with the
   whole step (attack, loss, backward) in float32 and in bf16 autocast (``train.precision`` and
   ``attack.precision`` both bfloat16; RAT's statistics stay float32); the evaluation attacks'
   seconds per image on WRN-34-10; and
   AutoAttack's images per second on a briefly trained WRN-16-4.
3. **Ratios and estimates**: RAT's two ratios with bootstrap intervals over rounds, and the
   wall time of each CIFAR-10 preset's 200 epochs (training, validation, final evaluation).

Its command line is :func:`main` (``python -m ratkit.bench.device_check``, or the documented
``python -m ratkit.device_check``): without a CUDA device it exits at once with ``EXIT_NO_DEVICE``;
``--device cpu`` runs everything on the CPU (``tests/test_device_check.py`` does so with tiny sizes).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..attacks import pgd
from ..config import load_config, method_label
from ..data import dataset_info
from ..data.synthetic import synthetic_data
from ..device import environment, resolve_device
from ..evaluate import evaluate, parse_attacks, protocol_attack, strict_float32
from ..models import build_model, model_kwargs_for
from ..modes import model_mode
from .steps import (TARGETS, TIME_RATIOS, BenchSettings, bench_method, dominant_precision, ratio_ci, ratios,
                    summarise_times, time_configs)

EXIT_NO_DEVICE = 69  # sysexits.h EX_UNAVAILABLE: nothing to check on this machine; not a failure of the check

TIMED_CONFIGS = ("trades", "rat-trades", "awp-trades", "awp-rat-trades")
RATIOS = ("rat_trades_over_trades", "awp_rat_trades_over_awp_trades")
PRESETS = ("cifar10-trades-wrn34", "cifar10-rat-trades-wrn34", "cifar10-awp-trades-wrn34",
           "cifar10-awp-rat-trades-wrn34")
CIFAR10_SIZES = {"train": 50_000, "test": 10_000}  # the presets hold data.val_size of the training set out

# Float32 on both devices, TF32 off: the loss may differ by reordered sums only. The step is judged
# against the exact (float64, reference device) step: the device's float32 step may be at most
# TOLERANCES["update_error_ratio"] times as far from it as the reference's own float32 step is, both
# measured as max |w_float32 - w_float64| / max |dw|. A fixed bound on the device-reference difference
# cannot be set: float32's own error in this step is about 4-5e-3 of the update on the CPU (largest in
# the first convolution's weights, whose gradient sums 64 x 32 x 32 positions), and the first H200 run
# measured 3.9e-3 between the devices, which a 1e-3 bound failed (docs/performance.md, "Device check").
TOLERANCES = {"loss_rel": 1e-4, "weights_abs": 1e-4, "update_error_ratio": 4.0}
LEARNING_RATE = 0.1  # the presets' SGD: lr 0.1, momentum 0.9, weight decay 5e-4


@dataclass
class Net:
    """A model by registry name, built for a dataset's image shape; its data are synthetic of that shape."""

    name: str
    dataset: str = "cifar10"
    kwargs: dict = field(default_factory=dict)

    def build(self, seed: int) -> nn.Module:
        """Seeded, on the CPU, in the layout ``rat train`` and ``rat eval`` use (channels_last)."""
        torch.manual_seed(seed)
        model = build_model(self.name, **model_kwargs_for(self.name, dataset_info(self.dataset), **self.kwargs))
        return model.to(memory_format=torch.channels_last)

    def data(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        info = dataset_info(self.dataset)
        d = synthetic_data(n, seed=seed, num_classes=info.num_classes, image_shape=info.image_shape)
        return d.x, d.y

    @property
    def eps(self) -> float:
        return dataset_info(self.dataset).linf_eps


@dataclass
class DeviceCheckSettings:
    """What to check and time. The defaults fit in about 8 minutes on one recent GPU."""

    device: str = "cuda"
    reference: str = "cpu"
    seed: int = 0
    attack_steps: int = 10  # the training attack, steps of eps / 4
    # correctness
    step_net: Net = field(default_factory=lambda: Net("wrn-16-4"))
    step_batch: int = 64
    verdict_net: Net = field(default_factory=lambda: Net("smallcnn", "fashion-mnist"))
    verdict_images: int = 512
    verdict_train_steps: int = 100
    # throughput and estimates
    throughput: bool = True
    timed_net: Net = field(default_factory=lambda: Net("wrn-34-10"))
    batch_size: int = 128
    precisions: tuple[str, ...] = ("float32", "bfloat16")
    rounds: int = 6
    steps_per_round: int = 3
    warmup: int = 2
    eval_images: int = 256
    eval_batch: int = 256  # the presets' eval.batch_size and the trainer's validation batch
    aa_net: Net = field(default_factory=lambda: Net("wrn-16-4"))
    aa_images: int = 256
    aa_train_steps: int = 100
    presets: tuple[str, ...] = PRESETS
    resamples: int = 2000


# ----------------------------------------------------------------------------- correctness


def _max_abs(a: Tensor, b: Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def step_errors(before: dict, after: dict[str, dict], weights: list[str]) -> dict:
    """How far each float32 step (``after["device"]``, ``after["reference"]``) lies from the exact one
    (``after["exact"]``, float64), relative to the largest weight update, and the ratio the check
    judges: the device's error over the reference's (1 where the device is the reference)."""
    update = max(_max_abs(after["exact"][k], before[k]) for k in weights)

    def error(role: str) -> float:
        return max(_max_abs(after[role][k], after["exact"][k]) for k in weights) / max(update, 1e-30)

    device, reference = error("device"), error("reference")
    weights_abs = max(_max_abs(after["device"][k], after["reference"][k]) for k in weights)
    return {"max_update": update, "weights_abs": weights_abs, "update_rel": weights_abs / max(update, 1e-30),
            "update_error": {"device": device, "reference": reference},
            "update_error_ratio": device / reference if reference > 0 else (1.0 if device == 0 else float("inf"))}


def compare_rat_trades_step(s: DeviceCheckSettings) -> dict:
    """RAT-TRADES on one fixed batch: the attack from the same noise (reported), then the loss and one
    SGD step from identical weights and inputs on both devices and in float64 on the reference
    (judged against ``TOLERANCES``)."""
    method = bench_method("rat-trades", s.step_net.eps, s.attack_steps)
    x, y = s.step_net.data(s.step_batch, seed=s.seed + 1)
    x = x.contiguous(memory_format=torch.channels_last)  # as the trainer lays out its batches
    initial = s.step_net.build(s.seed)
    devices = {"device": torch.device(s.device), "reference": torch.device(s.reference)}
    x_adv, after, losses = {}, {}, {}
    with strict_float32():
        for role, dev in devices.items():
            model = copy.deepcopy(initial).to(dev)
            generator = torch.Generator().manual_seed(s.seed)  # on the CPU for both: the same noise
            x_adv[role] = method.craft(model, x.to(dev), y.to(dev), generator=generator).cpu()
        steps = {**{role: (dev, torch.float32) for role, dev in devices.items()},
                 "exact": (devices["reference"], torch.float64)}
        for role, (dev, dtype) in steps.items():
            model = copy.deepcopy(initial).to(dev, dtype)
            optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9, weight_decay=5e-4)
            out = method.update(model, optimizer, x.to(dev, dtype), x_adv["reference"].to(dev, dtype), y.to(dev))
            losses[role] = {"loss": out.loss.item(), **{k: v.item() for k, v in out.terms.items()}}
            after[role] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    before = initial.state_dict()
    weights = [k for k, _ in initial.named_parameters()]
    errors = step_errors(before, after, weights)
    buffers_abs = max((_max_abs(after["device"][k], after["reference"][k]) for k in before
                       if k not in weights and before[k].is_floating_point()), default=0.0)
    measured = {"loss_rel": _rel(losses["device"]["loss"], losses["reference"]["loss"]),
                "weights_abs": errors["weights_abs"], "update_error_ratio": errors["update_error_ratio"]}
    return {
        "model": s.step_net.name, "batch": s.step_batch, "attack_steps": s.attack_steps,
        "attack": {"x_adv_max_abs_diff": _max_abs(x_adv["device"], x_adv["reference"]),
                   "x_adv_fraction_differing": (x_adv["device"] - x_adv["reference"]).abs().gt(1e-6)
                   .float().mean().item()},
        "loss": losses, "terms_rel_diff": {k: _rel(v, losses["reference"][k]) for k, v in losses["device"].items()},
        "buffers_max_abs_diff": buffers_abs, **errors, **measured,
        "passed": all(measured[k] <= TOLERANCES[k] for k in measured),
    }


def briefly_trained(net: Net, steps: int, s: DeviceCheckSettings) -> nn.Module:
    """``net`` after ``steps`` TRADES steps on synthetic data of its shape: robust on some images
    and not on others, so that attack verdicts and AutoAttack's cost mean something."""
    device = torch.device(s.device)
    model = net.build(s.seed).to(device)
    method = bench_method("trades", net.eps, s.attack_steps)
    x, y = net.data(2048, seed=s.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(s.seed)
    for _ in range(steps):
        rows = torch.randint(0, len(x), (s.batch_size,), generator=generator)
        method.step(model, optimizer, x[rows].to(device), y[rows].to(device), generator=generator)
    return model


def pgd20_verdicts(model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int, batch_size: int = 256
                   ) -> tuple[Tensor, Tensor]:
    """Per example (on the CPU): classified correctly clean, and under our protocol's PGD-20. The
    random starts come from one CPU generator, so every device attacks from the same starts."""
    cfg = protocol_attack("pgd20", eps, "Linf")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    clean, robust = [], []
    with model_mode(model, False), strict_float32():
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            x_adv = pgd(model, xb, yb, cfg, generator=generator)
            with torch.no_grad():
                clean.append((model(xb).argmax(1) == yb).cpu())
                robust.append((model(x_adv).argmax(1) == yb).cpu())
    return torch.cat(clean), torch.cat(robust)


def compare_pgd20_verdicts(s: DeviceCheckSettings) -> dict:
    """The per-example PGD-20 verdicts of one briefly trained model, on the device and on the reference."""
    trained = briefly_trained(s.verdict_net, s.verdict_train_steps, s).cpu()
    x, y = s.verdict_net.data(s.verdict_images, seed=s.seed + 1)
    verdicts = {role: pgd20_verdicts(copy.deepcopy(trained).to(dev), x, y, s.verdict_net.eps, s.seed)
                for role, dev in (("device", torch.device(s.device)), ("reference", torch.device(s.reference)))}
    (clean_d, pgd_d), (clean_r, pgd_r) = verdicts["device"], verdicts["reference"]
    differ = (pgd_d != pgd_r).nonzero().flatten().tolist()
    return {"model": s.verdict_net.name, "dataset_shape": s.verdict_net.dataset, "images": len(y),
            "train_steps": s.verdict_train_steps, "eps": s.verdict_net.eps,
            "clean_accuracy": {"device": clean_d.float().mean().item(), "reference": clean_r.float().mean().item()},
            "pgd20_accuracy": {"device": pgd_d.float().mean().item(), "reference": pgd_r.float().mean().item()},
            "clean_verdicts_differing": int((clean_d != clean_r).sum()),
            "pgd20_verdicts_differing": len(differ), "differing_examples": differ[:50]}


# ----------------------------------------------------------------------------- throughput


def median_ci(rounds: list[list[float]], resamples: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of one configuration's median seconds per step, whole rounds resampled: the
    bench's paired ratio interval (:func:`ratkit.bench.ratio_ci`) over a constant 1 s.

    Example: ``median_ci([[1.0, 1.1], [1.2, 1.0]])``"""
    return list(ratio_ci(rounds, [[1.0]] * len(rounds), resamples=resamples, seed=seed))


def time_steps(s: DeviceCheckSettings, precision: str) -> dict:
    """Seconds per step of ``TIMED_CONFIGS`` (``rat bench``'s timing) with the whole step, attack
    included, in ``precision``, each median with its interval, and RAT's ratios with theirs."""
    bench = BenchSettings(dataset=s.timed_net.dataset, model=s.timed_net.name, model_kwargs=s.timed_net.kwargs,
                          batch_size=s.batch_size, attack_steps=s.attack_steps, rounds=s.rounds,
                          steps_per_round=s.steps_per_round, warmup=s.warmup, configs=TIMED_CONFIGS,
                          device=s.device, seed=s.seed, memory=False, attack_precision=precision,
                          step_precision=precision)
    times = time_configs(bench)  # times[name][round]: that round's step seconds
    configs = summarise_times(times, s.batch_size)
    for name, entry in configs.items():
        entry["ci95_s_per_step"] = median_ci(times[name], s.resamples, seed=s.seed)
    values = ratios(configs, None)
    with_intervals = {}
    for key in RATIOS:
        num, den = TIME_RATIOS[key]
        interval = list(ratio_ci(times[num], times[den], resamples=s.resamples, seed=s.seed))
        with_intervals[key] = {"value": values[key], "ci95": interval, "target_at_most": TARGETS[key],
                               "met": values[key] <= TARGETS[key]}
    return {"step_precision": precision, "configs": configs, "ratios": with_intervals}


def evaluation_costs(s: DeviceCheckSettings) -> dict:
    """Seconds per image of the protocol's PGD-engine attacks on the timed model (their cost does not
    depend on robustness: fixed steps), and AutoAttack on a briefly trained ``aa_net`` (its cost does:
    every attack after APGD-CE runs only on the images still robust)."""
    device = torch.device(s.device)
    common = dict(batch_size=s.eval_batch, seed=s.seed, quiet=True)
    x, y = s.timed_net.data(s.eval_images, seed=s.seed + 1)
    timed = s.timed_net.build(s.seed).to(device)
    report = evaluate(timed, x, y, dataset=s.timed_net.dataset, eps=s.timed_net.eps,
                      attacks=("clean", "fgsm", "pgd20", "cw30"), **common)
    per_image = {name: r.seconds / r.n for name, r in report.attacks.items()}
    del timed
    aa_model = briefly_trained(s.aa_net, s.aa_train_steps, s)
    x, y = s.aa_net.data(s.aa_images, seed=s.seed + 1)
    aa = evaluate(aa_model, x, y, dataset=s.aa_net.dataset, eps=s.aa_net.eps, attacks=("clean", "pgd20", "aa"),
                  **common)
    return {"model": s.timed_net.name, "images": s.eval_images, "s_per_image": per_image,
            "autoattack": {"model": s.aa_net.name, "train_steps": s.aa_train_steps, "images": s.aa_images,
                           "images_per_s": s.aa_images / aa.attacks["aa"].seconds,
                           "clean_accuracy": aa.attacks["clean"].accuracy,
                           "pgd20_accuracy": aa.attacks["pgd20"].accuracy,
                           "aa_accuracy": aa.attacks["aa"].accuracy,
                           "pgd20_s_per_image": aa.attacks["pgd20"].seconds / s.aa_images}}


def preset_estimate(preset: str, steps: dict[str, dict], costs: dict) -> dict:
    """Hours of a preset's whole run: its epochs of training steps (AWP's warm-up epochs at the cost
    of the step without AWP), validation each epoch, and the final evaluation. AutoAttack's
    seconds per image are scaled from ``aa_net`` to the timed model by their PGD-20 costs."""
    cfg = load_config(preset)
    name, epochs = method_label(cfg), cfg.train.epochs
    steps_per_epoch = (CIFAR10_SIZES["train"] - cfg.data.val_size) // cfg.train.batch_size
    warm = min(cfg.method.awp["warmup"], epochs) if cfg.method.awp is not None else 0
    no_awp = name.removeprefix("awp-")
    training_h = {precision: steps_per_epoch * (warm * t["configs"][no_awp]["median_s_per_step"]
                                                + (epochs - warm) * t["configs"][name]["median_s_per_step"]) / 3600
                  for precision, t in steps.items()}
    per_image, aa = dict(costs["s_per_image"]), costs["autoattack"]
    per_image["aa"] = (1 / aa["images_per_s"]) * per_image["pgd20"] / aa["pgd20_s_per_image"]
    val_n = cfg.data.val_size if cfg.train.val_n is None else min(cfg.train.val_n, cfg.data.val_size)
    validation_h = epochs * val_n * (per_image["clean"] + per_image["pgd20"]) / 3600
    test_n = cfg.eval.n or CIFAR10_SIZES["test"]
    aa_n = min(test_n, cfg.eval.aa_n or test_n)
    attacks = parse_attacks(cfg.eval.attacks)
    final_h = sum(per_image[a] * (aa_n if a == "aa" else test_n) for a in attacks) / 3600
    preset_precision = dominant_precision(cfg.train.precision, cfg.attack.precision)  # the timings' key
    total = training_h.get(preset_precision)
    return {"method": name, "epochs": epochs, "steps_per_epoch": steps_per_epoch, "awp_warmup_epochs": warm,
            "precision": preset_precision, "training_h": training_h, "validation_h": validation_h,
            "final_evaluation_h": final_h, "of_which_autoattack_h": per_image["aa"] * aa_n / 3600,
            "total_h": None if total is None else total + validation_h + final_h}


# ----------------------------------------------------------------------------- the whole run


def run_device_check(s: DeviceCheckSettings, progress: Callable[[str], None] | None = None) -> dict:
    """Every part in order (correctness first, so a broken set-up fails in seconds); one JSON-able dict.

    Example: ``run_device_check(DeviceCheckSettings(device="cuda"))["correctness"]["rat_trades_step"]["passed"]``"""
    say = progress or (lambda message: None)
    started = time.perf_counter()
    result = {"settings": asdict(s), "environment": device_environment(s.device), "tolerances": dict(TOLERANCES)}
    say("correctness: RAT-TRADES loss and one SGD step")
    step = compare_rat_trades_step(s)
    say("correctness: PGD-20 verdicts")
    result["correctness"] = {"rat_trades_step": step, "pgd20_verdicts": compare_pgd20_verdicts(s)}
    if s.throughput:
        steps = {}
        for precision in s.precisions:
            say(f"throughput: {s.timed_net.name}, step in {precision}")
            steps[precision] = time_steps(s, precision)
        say("evaluation: attack costs and AutoAttack")
        costs = evaluation_costs(s)
        result.update(throughput=steps, evaluation=costs,
                      estimates={p: preset_estimate(p, steps, costs) for p in s.presets})
    result["wall_s"] = time.perf_counter() - started
    return result


def device_environment(device: str) -> dict:
    """``rat bench``'s environment plus what decides float32 arithmetic on a GPU."""
    env = environment(device)
    env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None,
               cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
               matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return env


def format_check(result: dict) -> str:
    s, env = result["settings"], result["environment"]
    step, verdicts = result["correctness"]["rat_trades_step"], result["correctness"]["pgd20_verdicts"]
    tol = result["tolerances"]
    lines = [f"device check: {s['device']} ({env.get('gpu', env['cpu'])}) against {s['reference']}, "
             f"torch {env['torch']}, CUDA {env['cuda']}",
             f"RAT-TRADES step ({step['model']}, batch {step['batch']}, float32, TF32 off): "
             f"loss rel diff {step['loss_rel']:.2e} (tol {tol['loss_rel']:g}), weights max abs diff "
             f"{step['weights_abs']:.2e} (tol {tol['weights_abs']:g}), update rel diff {step['update_rel']:.2e}; "
             f"error against float64 {step['update_error']['device']:.2e} on the device, "
             f"{step['update_error']['reference']:.2e} on the reference, ratio {step['update_error_ratio']:.2f} "
             f"(tol {tol['update_error_ratio']:g}): {'PASSED' if step['passed'] else 'FAILED'}",
             f"  attack from the same noise (reported): x_adv max abs diff {step['attack']['x_adv_max_abs_diff']:.2e}, "
             f"{100 * step['attack']['x_adv_fraction_differing']:.3f}% of entries differ",
             f"PGD-20 verdicts ({verdicts['model']}, {verdicts['images']} images): "
             f"{verdicts['pgd20_verdicts_differing']} differ (clean: {verdicts['clean_verdicts_differing']}); "
             f"PGD-20 accuracy {100 * verdicts['pgd20_accuracy']['device']:.2f}% on the device, "
             f"{100 * verdicts['pgd20_accuracy']['reference']:.2f}% on the reference"]
    for precision, t in result.get("throughput", {}).items():
        lines.append(f"{s['timed_net']['name']}, batch {s['batch_size']}, step in {precision}: "
                     + ", ".join(f"{name} {c['median_s_per_step']:.3f} s/step [{c['ci95_s_per_step'][0]:.3f}, "
                                 f"{c['ci95_s_per_step'][1]:.3f}]" for name, c in t["configs"].items()))
        lines.append("  " + ", ".join(f"{key} {r['value']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] "
                                      f"(target <= {r['target_at_most']}: {'met' if r['met'] else 'NOT met'})"
                                      for key, r in t["ratios"].items()))
    if "evaluation" in result:
        ev, aa = result["evaluation"], result["evaluation"]["autoattack"]
        lines.append(f"evaluation on {ev['model']} (float32, TF32 off), s/image: "
                     + ", ".join(f"{k} {v:.4f}" for k, v in ev["s_per_image"].items()))
        lines.append(f"AutoAttack on {aa['model']} after {aa['train_steps']} TRADES steps: {aa['images_per_s']:.1f} "
                     f"images/s (clean {100 * aa['clean_accuracy']:.1f}%, AA {100 * aa['aa_accuracy']:.1f}%)")
        for preset, e in result["estimates"].items():
            lines.append(f"{preset}: {e['epochs']} epochs, training " + ", ".join(
                f"{v:.1f} h ({p} attack)" for p, v in e["training_h"].items())
                + f", validation {e['validation_h']:.1f} h, final evaluation {e['final_evaluation_h']:.1f} h "
                f"(AutoAttack {e['of_which_autoattack_h']:.1f} h); total "
                + ("-" if e["total_h"] is None else f"{e['total_h']:.1f} h"))
    lines.append(f"wall time {result['wall_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The device check's command line. Not a ``rat`` subcommand: ``python -m ratkit.device_check``
    runs it, as ``scripts/device_check.sh`` does."""
    p = argparse.ArgumentParser(prog="device_check", description="The device check: does a GPU compute what the "
                                "CPU computes (a RAT-TRADES step, PGD-20's verdicts), and what the paper's training "
                                "steps cost on it: throughput, RAT's ratios with intervals and the presets' 200-epoch "
                                "estimates (docs/performance.md, 'Device check').")
    d = DeviceCheckSettings()
    p.add_argument("--out", default="docs/performance/gpu.json", help="the JSON to write")
    p.add_argument("--device", default=d.device, help="the device checked (default cuda)")
    p.add_argument("--reference", default=d.reference, help="the device it is checked against (default cpu)")
    p.add_argument("--rounds", type=int, default=d.rounds, help="timing rounds per precision")
    p.add_argument("--steps-per-round", type=int, default=d.steps_per_round)
    p.add_argument("--aa-images", type=int, default=d.aa_images)
    p.add_argument("--correctness-only", action="store_true", help="skip the throughput and the estimates")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("device_check: no GPU here (torch.cuda.is_available() is False), so nothing was checked. Run it "
              "on a machine with a CUDA device and a CUDA build of torch; tests/test_device_check.py runs the "
              "check's CPU side.", file=sys.stderr)
        return EXIT_NO_DEVICE
    try:
        device, reference = resolve_device(args.device), resolve_device(args.reference)
    except ValueError as exc:
        p.error(str(exc))
    settings = replace(d, device=str(device), reference=str(reference), rounds=args.rounds,
                       steps_per_round=args.steps_per_round, aa_images=args.aa_images,
                       throughput=not args.correctness_only)
    started = time.perf_counter()
    result = run_device_check(settings, lambda m: print(f"[{time.perf_counter() - started:6.0f} s] {m}",
                                                        file=sys.stderr, flush=True))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_check(result))
    print(f"wrote {out}")
    return 0 if result["correctness"]["rat_trades_step"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
