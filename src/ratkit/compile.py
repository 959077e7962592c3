"""``torch.compile`` as a setting (``train.compile``, ``eval.compile``: ``auto``, ``true``, ``false``).

The model is compiled in place (``nn.Module.compile``), so its parameters, state_dict and
checkpoints are the eager model's, and every user of it (the training step, the attacks,
validation, AutoAttack) runs the compiled forward. Graphs are compiled per input shape
(``dynamic=False``): a graph is a function of the shape alone, so a resumed run compiles the same
kernels as an uninterrupted one and ends equal to it. ``auto`` compiles only where it was measured
to win net of its compile time (docs/performance.md, "Compiled steps"): on the CPUs measured a
compiled step was 1.6-1.75x slower, and no GPU has been measured yet, so ``auto`` is off everywhere
today; ``true`` turns it on. A model that fails to compile runs eager with one warning line, never
an error.

Example::

    from ratkit.compile import compile_model
    model, line = compile_model(model, "true", torch.rand(8, 1, 28, 28))
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

from .choices import COMPILE_CHOICES

# Where auto compiles: the device types on which a compiled step was measured to win net of its
# compile time (benchmarks/compile_step.py). None yet: slower on the CPUs measured, GPUs not measured.
MEASURED_WINS: tuple[str, ...] = ()
# and then only work expected to last at least this long: compiling takes tens of seconds cold
AUTO_MIN_SECONDS = 600.0


def compile_wanted(setting: str, device: torch.device, expected_seconds: float | None = None) -> tuple[bool, str]:
    """Whether to compile, and why. ``expected_seconds``: how long the work is expected to take
    (None: unknown, taken as long).

    Example: ``compile_wanted("auto", torch.device("cpu"))`` is ``(False, "auto -> off: ...")``."""
    if setting not in COMPILE_CHOICES:
        raise ValueError(f"compile: {setting!r} is not one of {COMPILE_CHOICES}")
    if setting != "auto":
        return setting == "true", f"{'on' if setting == 'true' else 'off'} as configured"
    if device.type not in MEASURED_WINS:
        measured = "was slower than eager" if device.type == "cpu" else "has not been measured to win"
        return False, f"auto -> off: on {device.type} torch.compile {measured} (docs/performance.md)"
    if expected_seconds is not None and expected_seconds < AUTO_MIN_SECONDS:
        return False, f"auto -> off: about {expected_seconds:.0f} s of work does not repay compiling"
    return True, f"auto -> on: measured faster on {device.type}, and the work is long enough to repay compiling"


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model``'s forward runs through ``torch.compile`` (``nn.Module.compile``)."""
    return getattr(model, "_compiled_call_impl", None) is not None


def _eager(model: nn.Module) -> None:
    model._compiled_call_impl = None  # what nn.Module.compile set; None is eager again


def _trial(model: nn.Module, example: Tensor) -> None:
    """One forward and backward through the compiled model in the modes the training step and the
    attacks use, leaving no trace: weights, buffers (BatchNorm statistics), gradients, mode and the
    random generators are as before."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = [p.grad for p in model.parameters()]
    was_training = model.training
    devices = [example.device] if example.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            for training in (True, False):
                model.train(training)
                x = example.clone().requires_grad_(True)
                out = model(x)
                out = out[1] if isinstance(out, tuple) else out
                out.float().sum().backward()
    finally:
        model.train(was_training)
        model.load_state_dict(saved)
        for p, g in zip(model.parameters(), grads):
            p.grad = g


def compile_model(model: nn.Module, setting: str, example: Tensor, *,
                  expected_seconds: float | None = None) -> tuple[nn.Module, str]:
    """``model`` compiled in place if ``setting`` asks for it (:func:`compile_wanted`), tried once on
    ``example`` (a batch of the shape it will see); the model and a line saying what happened.
    A compile failure leaves the model eager and the line starts with ``warning:``."""
    wanted, why = compile_wanted(setting, example.device, expected_seconds)
    if not wanted:
        _eager(model)
        return model, f"torch.compile: {why}"
    try:
        import torch._dynamo

        # a graph that fails to compile later (another input shape or mode) runs eager, not an error
        torch._dynamo.config.suppress_errors = True
        # one graph per (train/eval mode, grad mode, autocast, with_features, shape): a training step, its
        # attack and validation need more than dynamo's default of 8, past which it would run eager
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
        model.compile(dynamic=False)
        _trial(model, example)
    except Exception as exc:  # noqa: BLE001 - any failure: eager, with one line saying why
        _eager(model)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return model, f"warning: torch.compile failed ({type(exc).__name__}: {first[:200]}); running eager"
    return model, f"torch.compile: {why}"


def compile_for_evaluation(model: nn.Module, setting: str, image_shape, device: torch.device, *,
                           batch_size: int = 64, quiet: bool = False) -> nn.Module:
    """``eval.compile`` / ``rat eval --compile``: the model compiled (or not) for the attacks, tried on a
    batch of the data's ``image_shape``; the line is printed unless ``auto`` left it off quietly."""
    example = torch.rand(min(batch_size, 64), *image_shape, device=device)
    model, line = compile_model(model, setting, example)
    print_line(line, quiet or (setting == "auto" and not is_compiled(model)))
    return model


def print_line(line: str, quiet: bool) -> None:
    """A compile line on stdout, or a warning on stderr whatever ``quiet`` says."""
    if line.startswith("warning"):
        print(line, file=sys.stderr, flush=True)
    elif not quiet:
        print(line, flush=True)
