"""A whole-job budget (``train.budget_s``, ``rat train --budget 15m``): before a run starts, measure
this machine's speed and choose how much training and how many AutoAttack images fit.

The plan measures two rates on the run's own model, method and precision, on random inputs of the
data's shape and with every random generator restored afterwards (a run whose plan keeps everything
is bit-identical to the same run without a budget): seconds per training step, and seconds per
input gradient of the evaluation (float32, eval mode, at the evaluation's batch size). The
evaluation's cost is counted in input gradients per image (:data:`GRADIENTS_PER_IMAGE`; AutoAttack's
from its standard schedule, calibrated on the main job: docs/main-job.md). If the configured run
does not fit, AutoAttack's images are cut first, down to :data:`AA_FLOOR`, then training steps
(``train.max_steps``, with the learning-rate schedule laid over the shorter run); a plan that keeps
less than :data:`MIN_TRAINING_FRACTION` of the configured training stops the run before it starts.
The plan goes into the run's config.yaml (``train.max_steps``, ``eval.aa_n``) and ``plan.json``;
a resume follows the recorded plan and never plans again.

Example::

    plan = plan_run(cfg, evaluation="preset")
    print(plan.summary())   # "plan for 15 min: this machine trains 530 img/s ... fit"
    cfg = plan.apply(cfg)
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from typing import Callable

from ..config import Config, ConfigError, data_source
from ..data import split_train_val
from ..data.source import load_split, source_info
from ..device import resolve_device
from ..attacks.protocols import parse_attacks
from ..methods import Method, StepPrecision

# what the plan measures: the run's fresh model, its method, and how to make its optimizer
Builder = Callable[[object], tuple[torch.nn.Module, Method, Callable[[torch.nn.Module], torch.optim.Optimizer]]]

# Input gradients (forward + backward) per image of each attack of the protocol; a forward alone counts
# a third. AutoAttack (standard, L-inf): APGD-CE 100 iterations on the clean-correct images, then on
# those still robust APGD-T (9 targets x 100), FAB-T (9 x 100, a gradient and a forward each) and Square
# (5,000 forward queries): 100 * 0.86 + (900 + 1200 + 1667) * 0.70 ~ 2,700 for a model as robust as the
# main job's (clean 86%, AutoAttack 68%). Measured on the main job (docs/main-job.md): 2,124 on a 2-core
# CPU with native bfloat16 (285.6 s for 500 images at 0.269 ms a gradient), 2,597 on the same machine
# slowed to one thread of AVX2 (296.5 s for 200 at 0.571 ms): the schedule's 2,700 bounds both.
GRADIENTS_PER_IMAGE = {"clean": 0.34, "fgsm": 1.34, "pgd20": 21.0, "cw30": 31.0, "pgd100": 101.0, "cw20": 21.0,
                       "aa": 2700.0}
VALIDATION_GRADIENTS = GRADIENTS_PER_IMAGE["clean"] + GRADIENTS_PER_IMAGE["pgd20"]  # clean and PGD-20
AA_FLOOR = 200  # AutoAttack on fewer images than this says too little; training is cut instead
MIN_TRAINING_FRACTION = 0.25  # less of the configured training than this makes no useful model
SAFETY = 0.93  # the share of the budget planned; the rest absorbs checkpoints, loading the test set and noise
PLAN_FILE = "plan.json"


@dataclass
class Plan:
    """What fits in the budget, and the measurements it was chosen from (all seconds)."""

    budget_s: float
    step_s: float  # one training step of the run
    gradient_s: float  # one input gradient of one image in evaluation
    steps_per_epoch: int
    configured_steps: int
    steps: int  # planned optimizer steps
    configured_aa_n: int | None  # AutoAttack images the config asked (None: no AutoAttack)
    aa_n: int | None
    train_s: float  # planned training, validation included
    eval_s: float  # planned final evaluation
    batch_size: int
    cut: list[str] = field(default_factory=list)

    @property
    def epochs(self) -> float:
        return self.steps / self.steps_per_epoch

    def apply(self, cfg: Config) -> Config:
        """``cfg`` with the planned training length and AutoAttack images."""
        train = dataclasses.replace(cfg.train, max_steps=None if self.steps == self.configured_steps else self.steps)
        evaluation = dataclasses.replace(cfg.eval, aa_n=self.aa_n if self.aa_n != self.configured_aa_n else cfg.eval.aa_n)
        return dataclasses.replace(cfg, train=train, eval=evaluation)

    def summary(self) -> str:
        """One or two lines for the start of the run."""
        rate = self.batch_size / self.step_s
        head = (f"plan for {_minutes(self.budget_s)}: this machine trains {rate:.0f} img/s "
                f"({self.step_s:.3f} s a step)")
        aa = "" if self.aa_n is None else f" and AutoAttack on {self.aa_n}"
        what = f"{self.epochs:.3g} epochs ({self.steps} steps){aa}"
        if not self.cut:
            return f"{head}; the config's {what} fit (about {_minutes(self.train_s + self.eval_s)})"
        return (f"{head}; {what} fit (about {_minutes(self.train_s)} training, {_minutes(self.eval_s)} evaluation); "
                f"cut: {', '.join(self.cut)}")

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "epochs": self.epochs}


class BudgetTooSmall(ConfigError):
    """The budget cannot train a useful model on this machine: stop before the run starts."""


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def parse_budget(text: str | float | None) -> float | None:
    """Seconds from ``900``, ``900s``, ``15m``, ``1.5h`` (``none``/``off``: no budget).

    Example: ``parse_budget("15m")`` is 900.0."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    t = text.strip().lower()
    if t in ("none", "off", "null", ""):
        return None
    scale = {"s": 1, "m": 60, "h": 3600}.get(t[-1])
    try:
        value = float(t[:-1] if scale else t) * (scale or 1)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (900, 900s, 15m, 1.5h or none)") from None
    if not value > 0:
        raise ValueError(f"{text!r}: must be > 0")
    return value


def _timed(fn, warmup: int, repeats: int, max_s: float = 8.0) -> float:
    """Mean seconds of ``fn()`` after ``warmup`` calls: ``repeats`` calls, fewer when they run past ``max_s``."""
    for _ in range(warmup):
        fn()
    start, done = time.perf_counter(), 0
    while done < repeats and (done == 0 or time.perf_counter() - start < max_s):
        fn()
        done += 1
    return (time.perf_counter() - start) / done


def measure_speed(cfg: Config, info, build: Builder) -> tuple[float, float]:
    """(seconds per training step, seconds per evaluation input gradient of one image) of the run's
    model, method and precision on this machine, on random inputs; ``build(info)`` gives a fresh
    (model, method, optimizer factory). No generator or state of the run is touched (the model is a
    fresh one, the generators are restored)."""
    device = resolve_device(cfg.train.device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.train.seed)
        model, method, make_optimizer = build(info)
        layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        model.to(device).to(memory_format=layout)
        optimizer = make_optimizer(model)
        precision = StepPrecision(cfg.train.precision, device.type)
        x = torch.rand(cfg.train.batch_size, *info.image_shape, device=device).contiguous(memory_format=layout)
        y = torch.randint(0, info.num_classes, (cfg.train.batch_size,), device=device)
        model.train()
        step_s = _timed(lambda: method.step(model, optimizer, x, y, precision=precision), warmup=2, repeats=5)

        model.eval()
        n = cfg.eval.batch_size
        xe = torch.rand(n, *info.image_shape, device=device).contiguous(memory_format=layout)
        ye = torch.randint(0, info.num_classes, (n,), device=device)

        def gradient():
            xg = xe.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xg), ye), xg)

        gradient_s = _timed(gradient, warmup=1, repeats=3) / n
    return step_s, gradient_s


def _validations(steps: int, steps_per_epoch: int, val_every: int) -> int:
    """How many epochs are validated in a run of ``steps`` steps: every ``val_every``-th and the last."""
    epochs = math.ceil(steps / steps_per_epoch)
    return epochs // val_every + (epochs % val_every != 0)


def plan_run(cfg: Config, *, evaluation: str = "preset", build: Builder | None = None,
             speed: tuple[float, float] | None = None, started: float | None = None,
             train_size: int | None = None, test_size: int | None = None) -> Plan:
    """The plan of ``cfg`` within ``cfg.train.budget_s``. ``evaluation``: ``preset`` (eval.n and
    eval.aa_n), ``full`` (the whole test set: AutoAttack's images cannot be cut) or ``none``.
    ``build(info)``: a fresh (model, method, optimizer factory) of the run, measured with
    :func:`measure_speed`; ``speed``: (step seconds, gradient seconds) to plan with instead of
    measuring (tests emulate a slow machine with it); ``train_size``/``test_size``: the splits' sizes,
    read from the data if None; ``started``: the ``time.monotonic()`` the job began at (``rat train``:
    when its command line was read, before torch is imported), whose seconds so far (imports, data, the measurement) are spent from the
    budget; None: none are.

    Raises :class:`BudgetTooSmall` when less than :data:`MIN_TRAINING_FRACTION` of the configured
    training fits."""
    budget = float(cfg.train.budget_s)
    src = data_source(cfg)
    info = source_info(src)
    if train_size is None:
        full = load_split(src, "train")
        train_size = len(full) - (cfg.data.val_size if cfg.data.val_size else 0)
    if cfg.data.train_subset is not None:
        train_size = min(train_size, cfg.data.train_subset)
    steps_per_epoch = max(1, train_size // cfg.train.batch_size)
    configured = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps is not None:
        configured = min(configured, cfg.train.max_steps)
    step_s, gradient_s = speed if speed is not None else measure_speed(cfg, info, build)

    val_n = cfg.data.val_size if cfg.train.val_n is None else min(cfg.train.val_n, cfg.data.val_size or 0)
    val_s = (val_n or 0) * VALIDATION_GRADIENTS * gradient_s

    def training(steps: int) -> float:
        return steps * step_s + _validations(steps, steps_per_epoch, cfg.train.val_every) * val_s

    attacks = parse_attacks(cfg.eval.attacks) if evaluation != "none" else ()
    if evaluation == "full" or cfg.eval.n is None:
        if test_size is None and attacks:
            test_size = len(load_split(src, "test"))
        n = test_size or 0
    else:
        n = cfg.eval.n
    protocol_s = sum(GRADIENTS_PER_IMAGE.get(a, 21.0) for a in attacks if a != "aa") * n * gradient_s
    has_aa = "aa" in attacks
    configured_aa = (n if evaluation == "full" or cfg.eval.aa_n is None else min(cfg.eval.aa_n, n)) if has_aa else None
    aa_image_s = GRADIENTS_PER_IMAGE["aa"] * gradient_s

    def evaluating(aa_n: int | None) -> float:
        return protocol_s + (aa_n or 0) * aa_image_s

    available = budget * SAFETY - (time.monotonic() - started if started is not None else 0.0)
    steps, aa_n, cut = configured, configured_aa, []
    if training(steps) + evaluating(aa_n) > available and has_aa and evaluation != "full":
        room = (available - training(steps) - protocol_s) / aa_image_s
        aa_n = max(min(AA_FLOOR, configured_aa), min(configured_aa, int(room)))
    if training(steps) + evaluating(aa_n) > available:
        room = available - evaluating(aa_n)
        while steps > 0 and training(steps) > room:  # validations make it a step function: walk down
            steps = min(steps - 1, int(max(0.0, room - _validations(steps, steps_per_epoch,
                                                                     cfg.train.val_every) * val_s) / step_s))
    if aa_n != configured_aa:
        cut.append(f"AutoAttack on {aa_n} of {configured_aa} images")
    if steps != configured:
        cut.append(f"training to {steps} of {configured} steps ({steps / steps_per_epoch:.2f} of "
                   f"{configured / steps_per_epoch:.3g} epochs)")
    plan = Plan(budget_s=budget, step_s=step_s, gradient_s=gradient_s, steps_per_epoch=steps_per_epoch,
                configured_steps=configured, steps=steps, configured_aa_n=configured_aa, aa_n=aa_n,
                train_s=training(max(steps, 1)), eval_s=evaluating(aa_n), batch_size=cfg.train.batch_size, cut=cut)
    if steps < MIN_TRAINING_FRACTION * configured:
        raise BudgetTooSmall(
            f"train.budget_s: {_minutes(budget)} is too little on this machine ({step_s:.3f} s a training step, "
            f"{_minutes(evaluating(aa_n))} of evaluation): {steps} of the configured {configured} training steps "
            f"fit, under the {MIN_TRAINING_FRACTION:.0%} that makes a useful model; give more time (--budget), "
            f"fewer evaluation images (eval.n, eval.aa_n) or no budget (--budget none)")
    return plan


def write_plan(run_dir: Path, plan: Plan) -> None:
    """``plan.json`` in the run directory: what was measured and chosen."""
    (Path(run_dir) / PLAN_FILE).write_text(json.dumps(plan.to_json(), indent=2) + "\n")


def read_plan(run_dir: Path) -> dict | None:
    path = Path(run_dir) / PLAN_FILE
    return json.loads(path.read_text()) if path.is_file() else None
