"""Checkpoints: a safetensors file whose header carries JSON metadata, plus a JSON sidecar.

Loading never unpickles anything. The metadata (model spec, dataset, normalisation, training
config) lives inside the safetensors header, so one atomic rename publishes weights and
metadata together; a SHA-256 of the tensor bytes is stored there too, so a tampered file is
refused. The ``.json`` sidecar is a copy for humans and tools; it is not read back.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

FORMAT = "ratkit-checkpoint"
VERSION = 1
_META_KEY = "ratkit"
_MODEL_PREFIX = "model/"


class CheckpointError(Exception):
    """A checkpoint is missing, not ours, of an unknown version, or tampered with."""


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """Digest of names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    _atomic_write_bytes(target, save(tensors, metadata={_META_KEY: text}))
    _atomic_write_bytes(target.with_suffix(".json"), (json.dumps(full_meta, indent=2, sort_keys=True) + "\n").encode())
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


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from its spec and load its weights; returns (model in eval mode, meta).

    Example::

        model, meta = load_model("runs/my-run")  # its best.safetensors; or a .safetensors file
        print(meta["dataset"], meta["model"]["name"])
    """
    from .models import build_from_spec

    tensors, meta = read_checkpoint(path, device)
    spec = meta.get("model")
    if not isinstance(spec, dict) or "name" not in spec:
        raise CheckpointError(f"{checkpoint_path(path)}: metadata has no model spec")
    try:
        model = build_from_spec(spec)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{checkpoint_path(path)}: cannot build model {spec.get('name')!r}: {exc}") from None
    state = {k[len(_MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(_MODEL_PREFIX)}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{checkpoint_path(path)}: weights do not fit model {spec['name']!r}: {first}") from None
    return model.to(device).eval(), meta
