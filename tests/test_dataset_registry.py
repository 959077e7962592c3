"""Specification of the dataset registry: a new dataset is one entry (plus a format file if its
format is new), and everything that takes a dataset name then works for it unchanged."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ratkit.data import (
    DATASETS,
    FORMATS,
    DataError,
    DatasetFiles,
    DatasetInfo,
    FileFormat,
    TensorData,
    dataset_info,
    default_data_dir,
    load_dataset,
)

TINY_MNIST = DatasetInfo(
    name="tiny-mnist",
    num_classes=4,
    image_shape=(1, 16, 16),
    mean=(0.5,),
    std=(0.25,),
    linf_eps=0.1,
    crop_padding=2,
    class_names=("zero", "one", "two", "three"),
    files=DatasetFiles(
        format="idx",  # reuses the (Fashion-)MNIST parser, under file names of its own
        train=("tiny-train-images", "tiny-train-labels"),
        test=("tiny-test-images", "tiny-test-labels"),
        subdirs=("tiny-mnist",),
    ),
)


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv("RAT_DATA_DIR", raising=False)


def _idx(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _tiny_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: class k is bright in quadrant k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    images = rng.integers(0, 60, (n, 16, 16))
    for i, k in enumerate(labels):
        images[i, 8 * (k // 2):8 * (k // 2) + 8, 8 * (k % 2):8 * (k % 2) + 8] += 180
    return images.astype(np.uint8), labels


def write_tiny_mnist(root: Path, n_train: int = 160, n_test: int = 64) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The tiny-mnist files in ``root/tiny-mnist/``; returns the arrays written per split."""
    directory = root / "tiny-mnist"
    directory.mkdir(parents=True)
    written = {"train": _tiny_split(n_train, 0), "test": _tiny_split(n_test, 1)}
    for split, (images, labels) in written.items():
        (directory / f"tiny-{split}-images").write_bytes(_idx(0x803, images))
        (directory / f"tiny-{split}-labels").write_bytes(_idx(0x801, labels))
    return written


@pytest.fixture
def tiny_mnist(monkeypatch, tmp_path):
    """Register tiny-mnist for one test and write its files; yields the data root."""
    monkeypatch.setitem(DATASETS, "tiny-mnist", TINY_MNIST)
    return tmp_path, write_tiny_mnist(tmp_path)


def test_a_registered_idx_dataset_is_found_and_loaded_with_its_own_file_names(tiny_mnist):
    root, written = tiny_mnist
    assert dataset_info("tiny-mnist") is TINY_MNIST
    assert default_data_dir("tiny-mnist", root) == root / "tiny-mnist"  # the entry's sub-folder
    assert default_data_dir("tiny-mnist", root / "tiny-mnist") == root / "tiny-mnist"  # the files directly
    for split, (images, labels) in written.items():
        data = load_dataset("tiny-mnist", split, data_dir=root)
        assert data.info is TINY_MNIST
        assert data.x.shape == (len(labels), 1, 16, 16)
        assert torch.equal(data.x[:, 0], torch.from_numpy(images).float() / 255)
        assert data.y.tolist() == labels.tolist()


def test_a_registered_dataset_keeps_strict_parsing_and_one_line_errors(tiny_mnist):
    root, written = tiny_mnist
    bad = written["test"][1].copy()
    bad[5] = 4  # out of range for 4 classes
    labels = root / "tiny-mnist" / "tiny-test-labels"
    labels.write_bytes(_idx(0x801, bad))
    with pytest.raises(DataError, match=r"tiny-test-labels: label 4 out of range, expected 0\.\.3"):
        load_dataset("tiny-mnist", "test", data_dir=root)
    labels.unlink()
    with pytest.raises(DataError, match="missing IDX file") as excinfo:
        load_dataset("tiny-mnist", "test", data_dir=root)
    assert "\n" not in str(excinfo.value)


def test_a_new_format_is_one_loader_with_the_common_signature(monkeypatch, tmp_path):
    def load_npz(info: DatasetInfo, directory: Path, files: tuple[str, ...]) -> TensorData:
        (name,) = files
        with np.load(directory / name) as arrays:
            x = torch.from_numpy(arrays["x"]).float() / 255
            return TensorData(x, torch.from_numpy(arrays["y"]).long(), info)

    monkeypatch.setitem(FORMATS, "npz", FileFormat(load_npz))
    monkeypatch.setitem(DATASETS, "dots", DatasetInfo(
        name="dots", num_classes=2, image_shape=(3, 4, 4), mean=(0.5,) * 3, std=(0.5,) * 3, linf_eps=8 / 255,
        class_names=("few", "many"), files=DatasetFiles(format="npz", train=("train.npz",), test=("test.npz",)),
    ))
    x = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    np.savez(tmp_path / "test.npz", x=x, y=np.array([0, 1]))
    assert default_data_dir("dots", tmp_path) == tmp_path
    data = load_dataset("dots", "test", data_dir=tmp_path)
    assert torch.equal(data.x, torch.from_numpy(x).float() / 255) and data.y.tolist() == [0, 1]
    assert data.info.name == "dots"


def test_an_entry_naming_an_unknown_format_fails_with_one_line(monkeypatch, tmp_path):
    files = DatasetFiles(format="tfrecord", train=("a",), test=("b",))
    monkeypatch.setitem(DATASETS, "odd", DatasetInfo("odd", 2, (1, 4, 4), (0.5,), (0.5,), 0.1, files=files))
    with pytest.raises(DataError, match="odd: unknown file format 'tfrecord', expected one of .*idx"):
        load_dataset("odd", "test", data_dir=tmp_path)


def test_rat_train_runs_one_epoch_on_a_registered_dataset_with_nothing_else_changed(tiny_mnist, capsys):
    from ratkit.cli import main

    root, _ = tiny_mnist
    run = root / "run"
    code = main(["train", "--dataset", "tiny-mnist", "--data-dir", str(root), "--epochs", "1", "--batch-size", "32",
                 "--out", str(run), "--quiet", "--method", "trades", "--rat",
                 "--set", "data.val_size=32", "--set", "model.kwargs.channels=[4,8]",
                 "--set", "model.kwargs.hidden=16", "--set", "attack.steps=2", "--set", "train.val_n=32",
                 "--set", "eval.attacks=clean,pgd20", "--set", "eval.n=64", "--set", "eval.aa_n=null"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((run / "eval.json").read_text())
    assert report["dataset"] == "tiny-mnist"
    assert report["eps"] == pytest.approx(TINY_MNIST.linf_eps)
    assert report["attacks"]["clean"]["n"] == 64


def test_the_parsers_read_the_facts_of_a_dataset_never_the_registry():
    """The arrows run one way: the registry (datasets.py) imports the format parsers, and they, like
    every module the registry sits on, import the facts from data/info.py, never datasets.py."""
    import ast

    data = Path(__file__).resolve().parents[1] / "src" / "ratkit" / "data"
    below = [*sorted((data / "formats").glob("*.py")), *(data / f for f in ("info.py", "tensordata.py", "errors.py",
                                                                              "streaming.py", "transforms.py"))]
    for path in below:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module is None or "datasets" not in node.module.split("."), f"{path.name}: {node.module}"
