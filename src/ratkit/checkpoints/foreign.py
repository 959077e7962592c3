"""Plain PyTorch state dicts in and out of ratkit checkpoints (``rat import`` / ``rat export``).

Published robust models (TRADES, MART, AWP, RAT, robust-overfitting) ship as ``.pt`` state
dicts of the authors' own modules.  Importing renames their tensors onto ratkit's models
(which compute the same maths), so ``rat eval``, ``rat landscape`` and ``rat hessian`` run on
them unchanged.  Files are read with ``weights_only=True``: nothing beyond tensors and plain
containers is unpickled.  The foreign layouts are data (:data:`LAYOUTS`), not code paths.

Those scripts feed the network un-normalised [0, 1] images (TRADES, MART, RAT, AWP's TRADES
code) or normalise outside the model (AWP's AT code, robust-overfitting); ratkit models
normalise inside, so the import takes ``mean``/``std`` (default 0 and 1: no normalisation).
See docs/interop.md for which script needs which.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

EXPORT_FORMAT = "ratkit-export"
_CONTAINER_KEYS = ("state_dict", "model")  # where training scripts nest the weights
_PARALLEL_PREFIX = "module."  # added by nn.DataParallel / DistributedDataParallel
_SHOWN = 5  # how many offending keys an error message names


class InteropError(Exception):
    """A file cannot be imported or exported; the message is one line naming the reason."""


def _guess_wrn(state: dict[str, Tensor]) -> str | None:
    blocks = {k.split(".")[2] for k in state if k.startswith("block1.layer.")}
    head = state.get("head.weight")
    return None if head is None else f"wrn-{6 * len(blocks) + 4}-{head.shape[1] // 64}"


@dataclass(frozen=True)
class Layout:
    """How one family of checkpoints names its tensors, relative to ratkit's names.

    ``signature``: keys whose presence identifies the layout.  ``renames``: (regex,
    replacement) pairs; the first pattern found in a key rewrites it, other keys keep their
    name.  ``unused``: keys the network owns but never reads in ``forward`` (dropped, not
    unmatched).  ``guess``: the ratkit model name the renamed tensors look like, for hints.
    """

    name: str
    source: str
    signature: tuple[str, ...]
    renames: tuple[tuple[str, str], ...] = ()
    unused: str | None = None
    guess: Callable[[dict[str, Tensor]], str | None] = lambda state: None

    def rename(self, key: str) -> str:
        for pattern, replacement in self.renames:
            if re.search(pattern, key):
                return re.sub(pattern, replacement, key, count=1)
        return key


LAYOUTS: tuple[Layout, ...] = (
    Layout("ratkit", "a ratkit model's own state_dict", ("mean", "std", "head.weight")),
    Layout(
        "trades-wrn",
        "WideResNet of TRADES / MART / AWP / RAT / robust-overfitting (wideresnet.py)",
        ("conv1.weight", "block1.layer.0.conv1.weight", "bn1.weight", "fc.weight"),
        renames=((r"\.convShortcut\.", ".shortcut."), (r"^bn1\.", "bn."), (r"^fc\.", "head.")),
        unused=r"^sub_block1\.",  # TRADES/MART build it, forward never calls it
        guess=_guess_wrn,
    ),
    Layout(
        "preact-resnet18",
        "PreActResNet18 of robust-overfitting / AWP / RAT (preactresnet.py)",
        ("conv1.weight", "layer1.0.conv1.weight", "bn.weight", "linear.weight"),
        renames=((r"\.shortcut\.0\.", ".shortcut."), (r"^linear\.", "head.")),
        guess=lambda state: "preactresnet18",
    ),
    Layout(
        "trades-smallcnn",
        "SmallCNN of TRADES (models/small_cnn.py)",
        ("feature_extractor.conv1.weight", "classifier.fc3.weight"),
        renames=(
            (r"^feature_extractor\.conv1\.", "feature_extractor.0."),
            (r"^feature_extractor\.conv2\.", "feature_extractor.2."),
            (r"^feature_extractor\.conv3\.", "feature_extractor.5."),
            (r"^feature_extractor\.conv4\.", "feature_extractor.7."),
            (r"^classifier\.fc1\.", "classifier.0."),
            (r"^classifier\.fc2\.", "classifier.2."),
            (r"^classifier\.fc3\.", "head."),
        ),
        guess=lambda state: "smallcnn",
    ),
)


def _first(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:_SHOWN]) + (f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        return f"a dict with keys {_first([str(k) for k in obj])}" if obj else "an empty dict"
    return f"a {type(obj).__name__}"


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load a ``.pt``/``.pth`` file tensors-only and dig out its flat state dict.

    Accepts the weights at the top level or under ``state_dict`` / ``model`` (nested too),
    and strips DataParallel's ``module.`` prefix.  Returns (state, where it was found).
    """
    path = Path(path)
    if not path.is_file():
        raise InteropError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for pickled objects, RuntimeError for non-torch files
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InteropError(f"{path}: not loadable as a tensors-only PyTorch file ({reason})") from None
    found: dict[str, Any] = {"container": [], "prefix": ""}
    while isinstance(obj, dict) and not (obj and all(isinstance(v, Tensor) for v in obj.values())):
        key = next((k for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            raise InteropError(f"{path}: not a state dict (found {_describe(obj)})")
        found["container"].append(key)
        obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise InteropError(f"{path}: not a state dict (found {_describe(obj)})")
    while all(k.startswith(_PARALLEL_PREFIX) for k in obj):
        obj = {k[len(_PARALLEL_PREFIX):]: v for k, v in obj.items()}
        found["prefix"] += _PARALLEL_PREFIX
    return obj, found


def detect_layout(state: dict[str, Tensor]) -> Layout:
    """The first layout of :data:`LAYOUTS` whose signature keys are all present."""
    for layout in LAYOUTS:
        if all(k in state for k in layout.signature):
            return layout
    tried = "; ".join(f"{lay.name} (needs {', '.join(lay.signature)})" for lay in LAYOUTS)
    raise InteropError(f"unknown layout; tried {tried}; the file has {_first(list(state))}")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _model_kwargs(dataset: str, model: str, mean, std, model_kwargs) -> dict[str, Any]:
    """Constructor arguments as training would pass them, with no normalisation by default."""
    from ..data import DataError, dataset_info
    from ..models import model_kwargs_for

    try:
        info = dataset_info(dataset)
    except DataError as exc:
        raise InteropError(str(exc)) from None
    channels = info.image_shape[0]
    kwargs = model_kwargs_for(model, info, mean=[0.0] * channels, std=[1.0] * channels, **(model_kwargs or {}))
    for name, value in (("mean", mean), ("std", std)):
        if value is not None:
            kwargs[name] = [float(v) for v in value]
    return kwargs


def import_user_model(path, model: str, source, out, mean=None, std=None, model_kwargs=None,
                      head: str | None = None) -> tuple[Path, dict[str, Any]]:
    """A plain state dict of a user's own ``module:callable`` model (its own keys, no mapping) as a
    ratkit checkpoint for ``source`` (a :class:`ratkit.data.source.DataSource`: the data it is for);
    ``mean``/``std``: the normalisation the model expects before its first layer (default none).

    Example: ``import_user_model("net.pt", "nets:Net", DataSource("folder", data_dir="imgs"), "net.safetensors")``"""
    import dataclasses

    from .native import save_model
    from ..data import DataError
    from ..data.source import source_info
    from ..models import build_user_model
    from ..preflight import ModelDoesNotFit, check_model

    path = Path(path)
    raw, found = read_state_dict(path)
    try:
        info = source_info(source, require_eps=False)
        net, spec = build_user_model(model, model_kwargs or {}, num_classes=info.num_classes,
                                     image_shape=info.image_shape, head=head, mean=mean, std=std,
                                     name_head="--head PATH")
    except DataError as exc:
        raise InteropError(str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise InteropError(f"cannot build model {model!r}: {exc}") from None
    target = net.net.state_dict()
    unexpected = [k for k in raw if k not in target]
    missing = [k for k in target if k not in raw and not k.endswith(".num_batches_tracked")]
    wrong = [f"{k} {tuple(raw[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
             if k in raw and raw[k].shape != v.shape]
    if unexpected or missing or wrong:
        parts = ([f"file tensors the model does not have: {_first(unexpected)}"] if unexpected else []) + \
                ([f"model tensors missing from the file: {_first(missing)}"] if missing else []) + \
                ([f"shapes (file vs model) differ: {_first(wrong)}"] if wrong else [])
        raise InteropError(f"{path}: does not fit {model}: {'; '.join(parts)}")
    net.net.load_state_dict({**target, **raw})
    try:  # a model for other images imports fine and fails at its evaluation: found here, before writing
        check_model(net, info.image_shape, info.num_classes, name=model, training=False)
    except ModelDoesNotFit as exc:
        raise InteropError(f"{path}: {exc}") from None
    meta = {"dataset": source.dataset, "data_source": {k: (list(v) if isinstance(v, tuple) else v)
                                                        for k, v in dataclasses.asdict(source).items()},
            "data": {"image_shape": list(info.image_shape), "num_classes": info.num_classes},
            "imported_from": {"file": path.name, "sha256": _file_sha256(path), "layout": "user model",
                              "container": "/".join(found["container"]), "prefix": found["prefix"]}}
    return save_model(out, net, spec, meta), {**meta, "model": spec}


def import_layout(path, model, dataset, out, mean, std, model_kwargs) -> tuple[Path, dict[str, Any]]:
    """:func:`import_state_dict`, returning the checkpoint's metadata as well (``rat import`` prints it)."""
    from .native import save_model
    from ..models import build_from_spec, model_spec

    path = Path(path)
    raw, found = read_state_dict(path)
    layout = detect_layout(raw)
    origin: dict[str, str] = {}  # ratkit name -> name in the file
    unmatched, dropped = [], 0
    for key in raw:
        if layout.unused and re.search(layout.unused, key):
            dropped += 1
        elif layout.rename(key) in origin:  # two file tensors for one place
            unmatched.append(key)
        else:
            origin[layout.rename(key)] = key
    state = {name: raw[key] for name, key in origin.items()}
    if layout.name == "ratkit":  # the file's normalisation, unless the caller overrides it
        file_mean, file_std = state.pop("mean").flatten().tolist(), state.pop("std").flatten().tolist()
        mean, std = (file_mean if mean is None else mean), (file_std if std is None else std)
    guess = layout.guess(state)
    hint = f"; the file looks like {guess}" if guess else ""
    model = model or guess
    if not model:
        raise InteropError(f"{path}: layout {layout.name} does not tell the architecture; name the model")
    try:
        spec = model_spec(model, **_model_kwargs(dataset, model, mean, std, model_kwargs))
        net = build_from_spec(spec)
    except (ValueError, TypeError) as exc:
        raise InteropError(f"cannot build model {model!r}: {exc}") from None

    target = net.state_dict()
    unmatched += [origin[k] for k in state if k not in target]
    missing = [k for k in target if k not in state and k not in ("mean", "std")  # mean/std: set above
               and not k.endswith(".num_batches_tracked")]  # older files lack it; eval never reads it
    if unmatched or missing:
        parts = [f"unmatched file tensors: {_first(unmatched)}"] if unmatched else []
        parts += [f"model tensors missing from the file: {_first(missing)}"] if missing else []
        raise InteropError(f"{path}: layout {layout.name} does not fit model {model}: {'; '.join(parts)}{hint}")
    wrong = [f"{origin[k]} {tuple(v.shape)} vs {tuple(target[k].shape)}"
             for k, v in state.items() if v.shape != target[k].shape]
    if wrong:
        raise InteropError(f"{path}: tensor shapes (file vs {model} for {dataset}) differ: {_first(wrong)}{hint}")
    net.load_state_dict({**target, **state})

    meta = {"dataset": dataset, "imported_from": {
        "file": path.name, "sha256": _file_sha256(path), "layout": layout.name,
        "container": "/".join(found["container"]), "prefix": found["prefix"], "dropped_unused": dropped}}
    return save_model(out, net, spec, meta), {**meta, "model": spec}


def import_state_dict(
    path: str | Path,
    model: str | None,
    dataset: str,
    out: str | Path,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Turn a plain PyTorch state dict into a ratkit checkpoint; returns its ``.safetensors`` path.

    The layout is detected from the keys (:data:`LAYOUTS`); every tensor the network uses
    must find its place and every model tensor must be filled, else :class:`InteropError`.
    ``model`` is a registry name ("wrn-34-10", "preactresnet18", "smallcnn"); None takes the
    one the file looks like.  ``dataset`` sets the classes and input channels and is recorded
    for ``rat eval``.  ``mean``/``std``: the normalisation the authors' script applied before
    the network (default none: mean 0, std 1).  ``model_kwargs`` adds constructor arguments.

    Example::

        import_state_dict("model-wideres-epoch76.pt", "wrn-34-10", "cifar10", "trades.safetensors")
    """
    return import_layout(path, model, dataset, out, mean, std, model_kwargs)[0]


def export_checkpoint(checkpoint: str | Path, out: str | Path, model_code=None) -> tuple[Path, Path]:
    """Write a ratkit checkpoint's model as a plain ``torch.save`` state dict plus a JSON recipe.

    The state dict has the model's own keys (normalisation buffers ``mean``/``std``
    included); the JSON beside it (same stem) names the architecture, its full constructor
    arguments, the normalisation, dataset and classes, so the network can be rebuilt without
    ratkit (docs/interop.md shows how).  Returns (state dict path, JSON path).

    Example::

        export_checkpoint("runs/cifar10-trades/best.safetensors", "trades.pt")
    """
    from .native import CheckpointError, checkpoint_path, load_model
    from ..models.registry import resolve

    out = Path(out)
    if out.suffix == ".json":
        raise InteropError(f"{out}: give the state dict's name (e.g. model.pt); the JSON goes beside it")
    try:
        net, meta = load_model(checkpoint, model_code=model_code)
    except CheckpointError as exc:
        raise InteropError(str(exc)) from None
    spec = meta["model"]
    from ..models import is_user_model

    if is_user_model(spec["name"]):  # the user's own module: its own keys, rebuilt by their code
        state = {k: v.detach().cpu().contiguous() for k, v in net.net.state_dict().items()}
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, out)
        recipe = {"format": EXPORT_FORMAT, "architecture": spec["name"], "kwargs": spec.get("kwargs") or {},
                  "head": spec.get("head"), "mean": spec.get("mean"), "std": spec.get("std"),
                  "dataset": meta.get("dataset"), "num_classes": net.num_classes, "state_dict": out.name,
                  "sha256": _file_sha256(out), "exported_from": checkpoint_path(checkpoint).name,
                  "input": "N x C x H x W float32 in [0, 1], normalised with mean/std (if any) before the module"}
        json_path = out.with_suffix(".json")
        json_path.write_text(json.dumps(recipe, indent=2) + "\n")
        return out, json_path
    cls, kwargs = resolve(spec["name"], spec.get("kwargs") or {})
    bound = inspect.signature(cls).bind(**kwargs)
    bound.apply_defaults()  # every constructor argument, so a rebuild needs no ratkit defaults
    kwargs = json.loads(json.dumps(bound.arguments))
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    recipe = {
        "format": EXPORT_FORMAT, "architecture": spec["name"], "class": f"{cls.__module__}.{cls.__name__}",
        "kwargs": kwargs, "mean": state["mean"].flatten().tolist(), "std": state["std"].flatten().tolist(),
        "dataset": meta.get("dataset"), "num_classes": net.num_classes, "state_dict": out.name,
        "sha256": _file_sha256(out), "exported_from": checkpoint_path(checkpoint).name,
        "input": "N x C x H x W float32 in [0, 1]; the model subtracts mean and divides by std itself",
    }
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(recipe, indent=2) + "\n")
    return out, json_path
