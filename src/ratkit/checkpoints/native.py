"""Checkpoints: a safetensors file whose header carries JSON metadata, plus a JSON sidecar.

Loading never unpickles anything. The metadata (model spec, dataset, normalisation, training
config) lives inside the safetensors header, so one atomic rename publishes weights and
metadata together; a SHA-256 of the tensor bytes is stored there too, so a tampered file is
refused. The ``.json`` sidecar is a copy for humans and tools; it is not read back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..files import atomic_write_bytes, tensors_sha256
from ..moved import warn_moved

FORMAT = "ratkit-checkpoint"
VERSION = 1
_META_KEY = "ratkit"
_MODEL_PREFIX = "model/"


class CheckpointError(Exception):
    """A checkpoint is missing, not ours, of an unknown version, or tampered with."""


def __getattr__(name: str):
    if name == "_atomic_write_bytes":  # its old, private name
        warn_moved("ratkit.checkpoints.native._atomic_write_bytes", "ratkit.files.atomic_write_bytes")
        return atomic_write_bytes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def checkpoint_path(path: str | os.PathLike) -> Path:
    """Resolve what a user may name: a run directory (its best checkpoint), a ``.safetensors``
    file, its ``.json`` sidecar, or the common stem."""
    p = Path(path)
    if p.is_dir():
        p = p / "best.safetensors"
    elif p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    elif p.suffix != ".safetensors":
        p = p.with_name(p.name + ".safetensors")
    return p


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and JSON-able ``meta`` atomically; returns the ``.safetensors`` path."""
    from safetensors.torch import save

    target = checkpoint_path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    full_meta = {"format": FORMAT, "version": VERSION, "sha256": tensors_sha256(tensors), **meta}
    text = json.dumps(full_meta, sort_keys=True)
    atomic_write_bytes(target, save(tensors, metadata={_META_KEY: text}))
    atomic_write_bytes(target.with_suffix(".json"), (json.dumps(full_meta, indent=2, sort_keys=True) + "\n").encode())
    return target


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and verify a checkpoint; raises :class:`CheckpointError` with a one-line reason."""
    from safetensors.torch import load

    target = checkpoint_path(path)
    if not target.is_file():
        raise CheckpointError(f"{target}: no such checkpoint file")
    raw = target.read_bytes()
    try:
        tensors = load(raw)
        meta_text = _header_metadata(raw).get(_META_KEY)
    except Exception as exc:  # safetensors raises several exception types on malformed input
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{target}: not a readable safetensors file ({reason})") from None
    if meta_text is None:
        raise CheckpointError(f"{target}: safetensors file without ratkit metadata (not a ratkit checkpoint)")
    try:
        meta = json.loads(meta_text)
    except json.JSONDecodeError:
        raise CheckpointError(f"{target}: ratkit metadata is not valid JSON") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{target}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{target}: checkpoint version {meta.get('version')!r}, this ratkit reads {VERSION}")
    if tensors_sha256(tensors) != meta.get("sha256"):
        raise CheckpointError(f"{target}: tensor data does not match its recorded SHA-256 (file modified or corrupt)")
    return {k: v.to(device) for k, v in tensors.items()}, meta


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's ratkit metadata from its header alone, without reading or verifying the
    tensors (:func:`read_checkpoint` does both): for questions such as how many epochs ``last``
    has trained, asked before the run is loaded anyway.

    Example: ``read_checkpoint_meta("runs/a/last")["progress"]["epoch"]``"""
    target = checkpoint_path(path)
    if not target.is_file():
        raise CheckpointError(f"{target}: no such checkpoint file")
    try:
        with open(target, "rb") as f:
            length = f.read(8)
            raw = length + f.read(int.from_bytes(length, "little"))
        meta = json.loads(_header_metadata(raw)[_META_KEY])
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{target}: not a readable ratkit checkpoint header ({type(exc).__name__})") from None
    return meta


def _header_metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (8-byte little-endian length, then JSON)."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    return header.get("__metadata__") or {}


def save_model(
    path: str | os.PathLike,
    model: nn.Module,
    model_spec: dict[str, Any],
    meta: dict[str, Any] | None = None,
    extra_tensors: dict[str, Tensor] | None = None,
) -> Path:
    """Save a model's state under ``model/`` plus optional extra tensors (e.g. optimizer state)."""
    tensors = {_MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
    tensors.update(extra_tensors or {})
    return save_checkpoint(path, tensors, {"model": model_spec, **(meta or {})})


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               model_code=None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from its spec and load its weights; returns (model in eval mode, meta).

    A model from a user's own code (``module:callable``) is rebuilt only if ``model_code`` (a
    :class:`~ratkit.models.ModelCodePolicy`) allows importing it: reading a file never runs code
    that only the file names.

    Example::

        model, meta = load_model("runs/my-run")  # its best.safetensors; or a .safetensors file
        print(meta["dataset"], meta["model"]["name"])
        model, meta = load_model("runs/mine", model_code=ModelCodePolicy(allowed="nets:Net"))
    """
    from ..models import UntrustedModelCode, build_from_spec

    tensors, meta = read_checkpoint(path, device)
    spec = meta.get("model")
    if not isinstance(spec, dict) or "name" not in spec:
        raise CheckpointError(f"{checkpoint_path(path)}: metadata has no model spec")
    try:
        model = build_from_spec(spec, model_code, source=str(checkpoint_path(path)))
    except UntrustedModelCode as exc:
        raise CheckpointError(str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{checkpoint_path(path)}: cannot build model {spec.get('name')!r}: {exc}") from None
    state = {k[len(_MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(_MODEL_PREFIX)}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{checkpoint_path(path)}: weights do not fit model {spec['name']!r}: {first}") from None
    return model.to(device).eval(), meta


def trained_shape(meta: dict[str, Any]) -> tuple[tuple[int, ...] | None, int | None]:
    """(image shape C x H x W, number of classes) a checkpoint's model was trained for: recorded by
    the trainer (``meta["data"]``), else the facts of its built-in dataset, else (None, None)."""
    data = meta.get("data")
    if isinstance(data, dict) and data.get("image_shape"):
        return tuple(int(d) for d in data["image_shape"]), data.get("num_classes")
    from ..data import DATASETS

    info = DATASETS.get(meta.get("dataset"))
    if info is not None:
        return tuple(info.image_shape), info.num_classes
    return None, None


def check_model_fits_data(meta: dict[str, Any], info, where: str, dataset: str, model: nn.Module | None = None) -> None:
    """CheckpointError (one line) when a checkpoint's model was made for another image shape or
    another number of classes than ``info``'s: its numbers would mean nothing (a 3x32x32 model on
    1x28x28 images still runs, and reports chance)."""
    shape, classes = trained_shape(meta)
    if model is not None and getattr(model, "num_classes", None) is not None:
        classes = int(model.num_classes)
    data_shape, data_classes = tuple(info.image_shape), info.num_classes
    problems = []
    if shape is not None and tuple(shape) != data_shape:
        problems.append(f"images {'x'.join(map(str, shape))} (the data's: {'x'.join(map(str, data_shape))})")
    if classes is not None and int(classes) != int(data_classes):
        problems.append(f"{classes} classes (the data's: {data_classes})")
    if problems:
        raise CheckpointError(f"{where}: the model was made for " + " and ".join(problems)
                              + f"; it does not fit the {dataset} data")


def recorded_data(meta: dict[str, Any], dataset: str | None = None, data_dir: str | None = None,
                  eps: float | None = None):
    """The data a checkpoint's model was trained on, as a :class:`ratkit.data.source.DataSource`: the
    run's recorded ``data:`` config (a file dataset's statistics and eps included), else its
    dataset's name. ``dataset``/``data_dir`` name other data to use instead (only what they say of
    it, under the radius the run recorded); ``eps`` fills in a radius the checkpoint does not record.

    Example: ``source_info(recorded_data(read_checkpoint("runs/a/best")[1])).num_classes``"""
    import dataclasses

    from ..config import ConfigError, config_from_dict, data_source
    from ..data.source import DataSource

    recorded = None
    if isinstance(meta.get("data_source"), dict):  # rat import of a user's model: its data as given there
        fields = {f.name for f in dataclasses.fields(DataSource)}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in meta["data_source"].items() if k in fields}
        recorded = DataSource(**d)
    elif isinstance(meta.get("config"), dict):
        try:
            recorded = data_source(config_from_dict(meta["config"]))
        except ConfigError:
            recorded = None
    if recorded is None:
        recorded = DataSource(meta.get("dataset") or "fashion-mnist")
    if dataset is not None and dataset != recorded.dataset:  # other data, the run's own radius
        return DataSource(dataset, data_dir=data_dir, eps=eps if eps is not None else recorded.eps)
    changes: dict[str, Any] = {}
    if data_dir is not None and data_dir != recorded.data_dir:  # other files: the model keeps its own
        changes.update(data_dir=data_dir, mean=None, std=None)   # normalisation; theirs is not needed
    if eps is not None and recorded.eps is None and (recorded.from_files or recorded.dataset != "fashion-mnist"):
        changes["eps"] = eps
    return dataclasses.replace(recorded, **changes) if changes else recorded
