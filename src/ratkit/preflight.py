"""What is checked before a run starts: a mistake in the user's data, model or command is found
before the first training step, reported in one line, and leaves no run directory.

:func:`ratkit.train.train` (``rat train``, a study's runs) calls :func:`check_run_start` before the
run directory is made: the test split of a file dataset is read and checked with the training split
(:func:`check_test_split`), so bad test files stop the run now and not after training; a user's
``module:callable`` model is built and given one trial pass, forward and backward, on one batch
(:func:`check_model`). ``rat import`` and ``rat eval`` give the model they load the same trial pass
(forward and the gradient an attack needs) before they write anything. docs/bring-your-model.md
lists all of it ("What is checked before a run starts").

Example::

    cfg, lines = check_run_start(cfg, lambda cfg, info: build_model_from_config(cfg, info))
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .config import Config, ConfigError, data_source
from .data import DataError
from .data.source import check_split, source_info
from .modes import model_mode
from .models.user import first_line, is_user_model
from .models.wrap import WrappedModel, describe

__all__ = ["TRIAL_BATCH", "ModelDoesNotFit", "check_model", "check_run_start", "check_test_split",
           "class_mapping_line", "exact_head_in_awp_line", "with_head"]

TRIAL_BATCH = 2  # images of the trial pass: more than one, for BatchNorm in train mode


class ModelDoesNotFit(ValueError):
    """The model does not run on the data as a classifier of its images: what the trial pass found."""


def check_test_split(src, evaluation: str = "preset") -> str | None:
    """The test split of a file dataset read and checked now (:func:`ratkit.data.source.check_split`),
    not after training: its DataError is raised, unless no evaluation follows (``evaluation``
    ``"none"``: ``rat train --no-eval``), which never reads it; then the warning line is returned."""
    try:
        check_split(src, "test")
    except DataError as exc:
        if evaluation != "none":
            raise
        return f"warning: {exc} (no evaluation follows, so the run trains without the test split)"
    return None


def _first_convolution(model: nn.Module) -> tuple[list, list]:
    """Pre-hooks recording the first convolution that runs (its name in the user's module, and the
    module), and the hooks."""
    names = {m: n for n, m in (model.net if isinstance(model, WrappedModel) else model).named_modules()}
    seen: list[tuple[str, nn.Module]] = []

    def record(module, args):
        if not seen:
            seen.append((names.get(module, "?"), module))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return seen, hooks


def check_model(model: nn.Module, image_shape: Sequence[int], num_classes: int, *, name: str,
                training: bool) -> None:
    """One trial pass of ``model`` on :data:`TRIAL_BATCH` random images in [0, 1] of ``image_shape``:
    the forward runs and returns one row of ``num_classes`` logits per image, differentiable with
    respect to the images (every attack needs that gradient); with ``training``, in train mode and
    with a backward pass that reaches a trainable parameter.

    The model is left as it was: its buffers (BatchNorm's running statistics) are copies during the
    pass, no parameter's ``.grad`` is touched, modes and the random generators are restored.
    Raises :class:`ModelDoesNotFit` (one line) naming what does not fit: the channels its first
    convolution takes, the shape of what it returned.

    Example: ``check_model(model, (1, 28, 28), 10, name="nets:Net", training=True)``"""
    shape = "x".join(str(int(d)) for d in image_shape)
    channels = int(image_shape[0])
    where = f"a batch of {TRIAL_BATCH} images {shape} ({channels} channel{'s' if channels != 1 else ''})"
    device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
    x = torch.rand(TRIAL_BATCH, *image_shape, generator=torch.Generator().manual_seed(0)).to(device)
    x.requires_grad_(True)
    y = torch.arange(TRIAL_BATCH, device=device) % max(1, num_classes)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    seen, hooks = _first_convolution(model)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), model_mode(model, training):
            logits = torch.func.functional_call(model, buffers, (x,), strict=False)
    except Exception as exc:  # the user's forward: whatever it raises becomes one line
        hint = ""
        if seen and seen[0][1].in_channels != channels:
            hint = f"; its first convolution {seen[0][0]!r} takes {seen[0][1].in_channels} channels"
        raise ModelDoesNotFit(f"{name}: its forward on {where} fails{hint}: {first_line(exc)}") from None
    finally:
        for h in hooks:
            h.remove()
    expected = (TRIAL_BATCH, num_classes)
    if not isinstance(logits, Tensor) or tuple(logits.shape) != expected:
        raise ModelDoesNotFit(f"{name}: its forward on {where} returns {describe(logits)}, expected logits of "
                              f"shape {expected}: one row per image, one column per class")
    params = [p for p in model.parameters() if p.requires_grad] if training else []
    grads: Sequence[Tensor | None] = [None]
    if logits.requires_grad:
        try:
            loss = nn.functional.cross_entropy(logits.float(), y)
            grads = torch.autograd.grad(loss, [x, *params], allow_unused=True)
        except Exception as exc:
            raise ModelDoesNotFit(f"{name}: its backward pass on {where} fails: {first_line(exc)}") from None
    if grads[0] is None:
        raise ModelDoesNotFit(f"{name}: its logits on {where} have no gradient with respect to the images (a "
                              "detach, torch.no_grad, argmax or rounding in its forward?); every attack needs it")
    if training and all(g is None for g in grads[1:]):
        raise ModelDoesNotFit(f"{name}: no trainable parameter gets a gradient from its logits on {where}; "
                              "training would change nothing")


def class_mapping_line(info, dataset: str, limit: int = 12) -> str:
    """Which label each class of a file dataset got, as the run starts: the class folders' names
    sort as text ("1", "10", "2" are labels 0, 1, 2); an npz's labels are its ``y``."""
    names = list(info.class_names)
    shown = ", ".join(f"{i} {n!r}" for i, n in enumerate(names[:limit]))
    more = f", ... ({len(names)} classes)" if len(names) > limit else ""
    how = "the class folders' names sorted as text" if dataset == "folder" else "y, named by the classes array if any"
    return f"classes (label name; from {how}): {shown}{more}"


def _head_line(cfg: Config, model: nn.Module, spec: dict) -> str:
    """Which layer of the user's model is its head, how it was chosen, and how the callable was called."""
    head = model.head
    kwargs = ", ".join(f"{k}={v!r}" for k, v in spec["kwargs"].items())
    how = ("named by model.head" if cfg.model.head
           else f"the one nn.Linear with {head.out_features} outputs feeding the logits")
    return (f"model {cfg.model.name}({kwargs}): head {spec['head']!r} (nn.Linear {head.in_features} -> "
            f"{head.out_features}), {how}")


def check_run_start(cfg: Config, build: Callable[[Config, object], tuple[nn.Module, dict]], *,
                    evaluation: str = "preset") -> tuple[Config, list[str]]:
    """What a new run checks before its directory is made: the test split of a file dataset
    (:func:`check_test_split`; ``evaluation`` ``"none"``: a warning), and a user's model built by
    ``build(cfg, info)`` ((model, spec)) and given the trial pass of :func:`check_model` in train mode.

    Returns ``cfg`` with the head of a user's model recorded (``model.head``, for config.yaml) and the
    lines to print as the run starts (warnings first: the class mapping, the head). Raises DataError
    or ConfigError (``model: ...``), one line each."""
    src = data_source(cfg)
    lines = [w for w in [check_test_split(src, evaluation)] if w]
    if not (src.from_files or is_user_model(cfg.model.name)):
        return cfg, lines
    info = source_info(src)
    if src.from_files:
        lines.append(class_mapping_line(info, src.dataset))
    if is_user_model(cfg.model.name):
        model, spec = build(cfg, info)
        try:
            check_model(model, info.image_shape, info.num_classes, name=cfg.model.name, training=True)
        except ModelDoesNotFit as exc:
            raise ConfigError(f"model: {exc}") from None
        lines.append(_head_line(cfg, model, spec))
        cfg = with_head(cfg, spec["head"])
    return cfg, lines


def exact_head_in_awp_line(cfg: Config) -> str | None:
    """A warning line for RAT's exact-head terms inside AWP perturbing from the first epoch: in the
    regime grid that collapsed to one output for every image within 40 steps, at every seed tried
    (docs/method.md, "AWP without warm-up around exact-head collapses"); a warm-up of 2 learned."""
    rat, awp = cfg.method.rat, cfg.method.awp
    if not (rat and awp and rat.get("taylor") == "exact-head" and awp.get("warmup", 0) <= 1):
        return None
    return ("warning: RAT's exact-head terms inside AWP from the first epoch collapsed to one output for "
            "every image in ratkit's measurements; set method.awp.warmup=2 (docs/method.md)")


def with_head(cfg: Config, head: str | None) -> Config:
    """``cfg`` with ``model.head``: the head of a user's model, recorded in the run's config.yaml."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, head=head))
