"""Specifications of checkpoint files: safetensors + metadata, no unpickling, tamper-evident."""

import json

import pytest
import torch

from ratkit.checkpoints import CheckpointError, load_model, read_checkpoint, save_model
from ratkit.models import build_model, model_spec

KW = dict(num_classes=10, in_channels=1, mean=(0.3,), std=(0.4,), channels=(4, 8), hidden=16)


def _saved(tmp_path):
    torch.manual_seed(0)
    model = build_model("smallcnn", **KW)
    path = save_model(tmp_path / "best", model, model_spec("smallcnn", **KW), {"dataset": "synthetic"})
    return model, path


def test_round_trip_rebuilds_the_same_model_with_its_metadata(tmp_path):
    model, path = _saved(tmp_path)
    loaded, meta = load_model(path)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))
    assert meta["dataset"] == "synthetic" and meta["model"]["name"] == "smallcnn"
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["sha256"] == meta["sha256"]
    # a run directory, the stem and the sidecar all name the same checkpoint
    for name in (tmp_path, tmp_path / "best", tmp_path / "best.json"):
        assert torch.equal(load_model(name)[0](x), loaded(x))


def test_modified_tensor_bytes_are_refused(tmp_path):
    _, path = _saved(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # flip bits inside the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256"):
        read_checkpoint(path)


def test_foreign_garbage_and_missing_files_get_one_line_errors(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01not a checkpoint at all")
    (tmp_path / "weights.pt").write_bytes(b"\x80\x04pickle")
    for name, pattern in [("foreign.safetensors", "not a ratkit checkpoint"),
                          ("garbage.safetensors", "not a readable safetensors"),
                          ("weights.pt", "no such checkpoint"),
                          ("missing.safetensors", "no such checkpoint")]:
        with pytest.raises(CheckpointError, match=pattern) as info:
            read_checkpoint(tmp_path / name)
        assert "\n" not in str(info.value)


def test_unknown_model_name_in_metadata_is_refused(tmp_path):
    model = build_model("smallcnn", **KW)
    path = save_model(tmp_path / "m", model, {"name": "no-such-net", "kwargs": {}})
    with pytest.raises(CheckpointError, match="no-such-net"):
        load_model(path)
