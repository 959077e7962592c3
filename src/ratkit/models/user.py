"""A user's model from their own code: ``module.path:callable``, imported, called, wrapped.

``rat train --model nets:Net --set model.kwargs.width=64`` imports ``nets`` (from the current
directory or the installed packages), calls ``Net(width=64)`` and wraps the result with
:func:`~ratkit.models.wrap` and the dataset's normalisation. The classifier head is the one
``nn.Linear`` with as many outputs as the dataset has classes that produces the logits, unless
``model.head`` names it. A run records the name, the kwargs and the head, so later commands
rebuild the same model.

Importing a module runs it. So a model named only inside a file (a checkpoint, a run's
config.yaml) is never imported unless the command line allows it: the same ``--model
module:callable`` again, or ``--trust-model-code`` (:class:`ModelCodePolicy`). Even then a name
taken from a file is called only if it is a model constructor (:func:`is_model_constructor`): a
file naming ``subprocess:run`` with its arguments is refused before anything is called.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .wrap import WrappedModel, wrap

__all__ = ["DATA_KWARGS", "ModelCodePolicy", "UntrustedModelCode", "build_user_model", "data_kwargs",
           "find_classifier_head", "first_line", "is_model_constructor", "is_user_model", "load_callable",
           "policy_or_default", "user_model_spec"]

_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_user_model(name: Any) -> bool:
    """Whether a model name is a user's ``module.path:callable`` (not a registry name)."""
    return isinstance(name, str) and ":" in name


def check_user_model_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"{name!r}: a model from your own code is written module.path:callable, e.g. nets:Net")


class UntrustedModelCode(ValueError):
    """A file names model code that the command line has not allowed to be imported."""


@dataclass(frozen=True)
class ModelCodePolicy:
    """Which user model code may be imported: ``allowed`` names the one the command line gave
    (``--model nets:Net``); ``trust_all`` is ``--trust-model-code``. The default allows none.

    Example: ``ModelCodePolicy(allowed="nets:Net").check("nets:Net", "runs/a/best.safetensors")``"""

    allowed: str | None = None
    trust_all: bool = False

    @classmethod
    def from_flags(cls, model: str | None, trust_model_code: bool) -> "ModelCodePolicy":
        """The policy of a command line's ``--model`` (only a ``module:callable`` name allows code)
        and ``--trust-model-code``."""
        return cls(allowed=model if is_user_model(model) else None, trust_all=bool(trust_model_code))

    def check(self, name: str, source: str) -> None:
        """UntrustedModelCode unless ``name``, which ``source`` (a file) gives, may be imported and
        called: the command line named it, or ``trust_all`` and it is a model constructor (which
        importing it finds out; nothing is called)."""
        if self.allowed is not None and self.allowed == name:
            return
        if self.trust_all:
            try:
                factory = load_callable(name)
            except ValueError as exc:
                raise UntrustedModelCode(f"{source} names model code {exc}") from None
            if not is_model_constructor(factory):
                raise UntrustedModelCode(
                    f"{source} names model code {name}, a {type(factory).__name__} from module "
                    f"{getattr(factory, '__module__', None)!r}, not a model constructor (an nn.Module subclass, or a "
                    f"function from a module outside the standard library); refused even with --trust-model-code")
            return
        module = name.partition(":")[0]
        given = (f" (the command line named {self.allowed}, not the same)" if self.allowed else "")
        raise UntrustedModelCode(f"{source} names model code {name}: loading it imports module {module!r}, "
                                 f"which runs that module's code{given}; to allow it, pass --model {name} "
                                 f"or --trust-model-code")


def policy_or_default(policy: ModelCodePolicy | None, own_model: str | None = None) -> ModelCodePolicy:
    """``policy``, else the default trust rule: a config the caller gave (in Python, on the command
    line, in a study's grid file) is their own, so the model code it names (``own_model``) may be
    imported; code that only a file names (a checkpoint, a resumed run's config.yaml) may not."""
    if policy is not None:
        return policy
    return ModelCodePolicy.from_flags(own_model, False)


def is_model_constructor(obj: Any) -> bool:
    """Whether ``obj`` may build a model: an ``nn.Module`` subclass, or a function defined in a
    module outside the standard library and builtins (where it was defined, not where it was
    imported from: ``from os import system`` in a user's module is still ``os``'s)."""
    if isinstance(obj, type):
        return issubclass(obj, nn.Module)
    if not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
        return False
    home = (getattr(obj, "__module__", None) or "").partition(".")[0]
    return bool(home) and home != "builtins" and home not in sys.stdlib_module_names


def load_callable(name: str):
    """The callable ``module.path:attr`` names, importing the module (the current directory is
    searched first, as ``python -m`` does)."""
    check_user_model_name(name)
    module_name, _, attr = name.partition(":")
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{name}: cannot import module {module_name!r} ({exc}); run from the directory that "
                         "holds it or install it") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{name}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"{name}: {attr!r} is a {type(obj).__name__}, not a class or function")
    return obj


def _linears(net: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]


def find_classifier_head(net: nn.Module, num_classes: int, image_shape: Sequence[int] | None = None,
                         name_head: str = "--set model.head=PATH") -> str:
    """The path of ``net``'s classifier head: the ``nn.Linear`` with ``num_classes`` outputs that
    produces the logits. With several such layers, one forward pass on zeros of ``image_shape``
    picks the one whose output is the module's. A one-line ValueError lists the candidates and
    says how to name the head (``name_head``: the calling command's own flag)."""
    linears = _linears(net)
    listing = ", ".join(f"{n} ({m.in_features}->{m.out_features})" for n, m in linears) or "none"
    candidates = [(n, m) for n, m in linears if m.out_features == num_classes]
    if len(candidates) > 1 and image_shape is not None:
        outputs: dict[str, torch.Tensor] = {}
        hooks = [m.register_forward_hook(lambda mod, args, out, n=n: outputs.__setitem__(n, out))
                 for n, m in candidates]
        param = next(net.parameters(), None)
        try:
            was_training = net.training
            net.eval()
            with torch.no_grad():
                out = net(torch.zeros(2, *image_shape, device=param.device if param is not None else "cpu"))
            net.train(was_training)
        except Exception:  # the forward is the user's: any failure just leaves the choice to them
            out = None
        finally:
            for h in hooks:
                h.remove()
        feeding = [(n, m) for n, m in candidates if out is not None and outputs.get(n) is out]
        if len(feeding) == 1:
            candidates = feeding
    if len(candidates) != 1:
        what = "no" if not candidates else f"{len(candidates)}"
        raise ValueError(f"{type(net).__name__}: {what} nn.Linear layers with {num_classes} outputs feed the logits; "
                         f"name the head with {name_head} (its nn.Linear layers: {listing})")
    return candidates[0][0]


def user_model_spec(name: str, kwargs: dict, head: str, mean: Sequence[float] | None,
                    std: Sequence[float] | None) -> dict:
    """The JSON description of a user's model that a checkpoint carries (see :func:`build_user_model`)."""
    spec = {"name": name, "kwargs": dict(kwargs), "head": head,
            "mean": None if mean is None else [float(v) for v in mean],
            "std": None if std is None else [float(v) for v in std]}
    try:
        json.dumps(spec)
    except TypeError as exc:
        raise TypeError(f"model kwargs must be JSON-serialisable: {exc}") from None
    return spec


DATA_KWARGS = ("num_classes", "in_channels")  # what the data tells a callable that names these parameters


def data_kwargs(factory, kwargs: dict, num_classes: int | None, image_shape: Sequence[int] | None) -> dict:
    """The data's facts a callable is told besides ``kwargs``: ``num_classes`` and ``in_channels``
    (the images' channels), each only when the callable's signature names that parameter (never
    through ``**kwargs``, which may not take it) and ``kwargs`` does not set it already.

    Example: for ``def make(width=8, num_classes=10)``, ``data_kwargs(make, {}, 3, (1, 28, 28))`` is
    ``{"num_classes": 3}``."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins): tell it nothing
        return {}
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    facts = dict(zip(DATA_KWARGS, (num_classes, None if image_shape is None else int(image_shape[0]))))
    return {k: int(v) for k, v in facts.items() if v is not None and k in named and k not in kwargs}


def first_line(exc: BaseException) -> str:
    """``Type: message`` of an exception raised by the user's code, on one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def build_user_model(name: str, kwargs: dict | None = None, *, num_classes: int | None = None,
                     image_shape: Sequence[int] | None = None, head: str | None = None,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     name_head: str = "--set model.head=PATH") -> tuple[WrappedModel, dict]:
    """Import and call ``name`` (``module:callable``) with ``kwargs``, plus ``num_classes`` and
    ``in_channels`` where its signature takes them (:func:`data_kwargs`); wrap the module it returns
    with its head (found when ``head`` is None) and the normalisation. Returns (model, spec); the
    spec's kwargs are those the callable was called with, so a later rebuild calls it the same way.

    Example::

        model, spec = build_user_model("nets:Net", {"width": 64}, num_classes=10, image_shape=(3, 32, 32),
                                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    """
    factory = load_callable(name)
    kwargs = {**(kwargs or {}), **data_kwargs(factory, kwargs or {}, num_classes, image_shape)}
    try:
        net = factory(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{name}: cannot call it with kwargs {kwargs}: {exc}") from None
    except Exception as exc:  # the user's constructor failed: one line naming it, not a traceback
        raise ValueError(f"{name}: calling it with kwargs {kwargs} raised {first_line(exc)}") from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"{name}: returned a {type(net).__name__}, not an nn.Module")
    if head is None:
        if num_classes is None:
            raise ValueError(f"{name}: name the classifier head (model.head), or give the number of classes")
        head = find_classifier_head(net, num_classes, image_shape, name_head)
    model = wrap(net, head=head, mean=mean, std=std)
    if num_classes is not None and model.num_classes != num_classes:
        raise ValueError(f"{name}: head {head!r} has {model.num_classes} outputs, the data has {num_classes} classes")
    return model, user_model_spec(name, kwargs, head, mean, std)


def build_user_from_spec(spec: dict, policy: ModelCodePolicy, source: str) -> WrappedModel:
    """Rebuild a user model from a checkpoint's spec, if ``policy`` allows importing its code."""
    name = spec["name"]
    check_user_model_name(name)
    policy.check(name, source)
    model, _ = build_user_model(name, spec.get("kwargs") or {}, head=spec.get("head") or "fc",
                                mean=spec.get("mean"), std=spec.get("std"))
    return model
