"""Build models by name, describe them as JSON data, and pick RAT's noise targets.

The registry is a plain dict so that a checkpoint's JSON metadata
(``model_spec``) is enough to rebuild the architecture (``build_from_spec``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from torch import nn

from .base import RobustModel
from .preact_resnet import PreActResNet18
from .resnet import ResNet18
from .small_cnn import SmallCNN
from .user import build_user_from_spec, is_user_model, policy_or_default
from .wideresnet import WideResNet

MODELS: dict[str, type[RobustModel]] = {
    "smallcnn": SmallCNN,
    "wideresnet": WideResNet,
    "preactresnet18": PreActResNet18,
    "resnet18": ResNet18,
}

_WRN_NAME = re.compile(r"^wrn-(\d+)-(\d+)$")

NOISE_TARGETS = ("conv", "linear", "all")


def _known_names() -> str:
    return ", ".join(list(MODELS) + ["wrn-D-W (e.g. wrn-34-10)"])


def resolve(name: str, kwargs: dict[str, Any]) -> tuple[type[RobustModel], dict[str, Any]]:
    """Map a name (plain or "wrn-D-W") to a class and the full constructor kwargs."""
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {name!r}; known: {_known_names()}")
    key = name.strip().lower()
    if key in MODELS:
        return MODELS[key], dict(kwargs)
    m = _WRN_NAME.match(key)
    if m:
        depth, widen = int(m.group(1)), int(m.group(2))
        for k, v in (("depth", depth), ("widen_factor", widen)):
            if k in kwargs and kwargs[k] != v:
                raise ValueError(f"model name {name!r} implies {k}={v} but {k}={kwargs[k]!r} was given")
        return WideResNet, {**kwargs, "depth": depth, "widen_factor": widen}
    raise ValueError(f"unknown model {name!r}; known: {_known_names()}")


def model_kwargs_for(name: str, info: Any, **overrides: Any) -> dict[str, Any]:
    """Constructor arguments of model ``name`` for a dataset (``info``: its ``num_classes``,
    ``image_shape``, ``mean``, ``std``, as ``ratkit.data.dataset_info`` gives), then ``overrides``.
    The one place that knows which models need the image size (SmallCNN's ``input_size``).

    Example: ``build_model("smallcnn", **model_kwargs_for("smallcnn", dataset_info("cifar10")))``
    """
    kwargs: dict[str, Any] = dict(num_classes=info.num_classes, in_channels=info.image_shape[0],
                                  mean=list(info.mean), std=list(info.std))
    if name.strip().lower() == "smallcnn":
        kwargs["input_size"] = list(info.image_shape[1:])
    kwargs.update(overrides)
    return kwargs


def build_model(name: str, **kwargs: Any) -> RobustModel:
    """Build a model by registry name (case-insensitive) or "wrn-D-W".

    Example::

        model = build_model("wrn-34-10", num_classes=10)  # CIFAR normalisation inside the model
        model = build_model("smallcnn", **model_kwargs_for("smallcnn", dataset_info("fashion-mnist")))
    """
    cls, full_kwargs = resolve(name, kwargs)
    return cls(**full_kwargs)


def _to_json(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    return value


def model_spec(name: str, **kwargs: Any) -> dict:
    """JSON-able description of a model (tuples become lists); see :func:`build_from_spec`."""
    resolve(name, kwargs)  # fail now, not when the checkpoint is loaded
    spec = {"name": name, "kwargs": _to_json(kwargs)}
    try:
        json.dumps(spec)
    except TypeError as e:
        raise TypeError(f"model kwargs must be JSON-serialisable: {e}") from None
    return spec


def build_from_spec(spec: dict, policy=None, source: str = "the checkpoint") -> RobustModel:
    """Rebuild the model described by :func:`model_spec` (lists become tuples again), or a user's
    ``module:callable`` model (:mod:`ratkit.models.user`) if ``policy`` (a ModelCodePolicy; default:
    none allowed) lets its code be imported; ``source`` names the file in the refusal."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"a model spec is a dict with 'name' and 'kwargs', got {spec!r}")
    if is_user_model(spec["name"]):
        return build_user_from_spec(spec, policy_or_default(policy), source)
    kwargs = _from_json(dict(spec.get("kwargs") or {}))
    return build_model(spec["name"], **kwargs)


def noise_target_names(model: nn.Module, layers: str = "conv") -> list[str]:
    """Names (as in ``named_parameters()``) of the weights RAT perturbs with noise.

    "conv": the weight of every ``nn.Conv2d``; "linear": the weight of every
    ``nn.Linear`` (head included); "all": every parameter with dim > 1.
    Layers are found by module type, never by parameter name.
    """
    if layers not in NOISE_TARGETS:
        raise ValueError(f"unknown noise target layers {layers!r}; expected one of {', '.join(NOISE_TARGETS)}")
    params = list(model.named_parameters())
    if layers == "all":
        return [n for n, p in params if p.dim() > 1]
    kind = nn.Conv2d if layers == "conv" else nn.Linear
    wanted = {
        id(m.weight) for m in model.modules() if isinstance(m, kind) and isinstance(m.weight, nn.Parameter)
    }
    return [n for n, p in params if id(p) in wanted]
