"""Specification tests for ratkit.data: strict loaders, splits, batching and augmentation."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ratkit.data import (
    DATASETS,
    DataError,
    TensorData,
    augment,
    dataset_info,
    default_data_dir,
    iterate_batches,
    load_dataset,
    random_crop,
    random_hflip,
    split_train_val,
    synthetic_data,
)

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv("RAT_DATA_DIR", raising=False)


def assert_one_line_error(excinfo, *needles: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


# ------------------------------------------------------------------ real Fashion-MNIST


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian fashion-mnist package not installed")
def test_real_fashion_mnist_loads_from_debian_directory_with_standard_shapes():
    test = load_dataset("fashion-mnist", "test")
    assert test.x.shape == (10000, 1, 28, 28)
    assert test.x.dtype == torch.float32 and test.y.dtype == torch.int64
    assert 0.0 <= test.x.min() and test.x.max() <= 1.0
    assert set(test.y.tolist()) == set(range(10))
    assert test.info is DATASETS["fashion-mnist"]
    train = load_dataset("fashion-mnist", "train")
    assert len(train) == 60000 and train.x.shape[1:] == (1, 28, 28)


# --------------------------------------------------------------------------- IDX


def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload


def write_idx_split(directory: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    prefix = "train" if split == "train" else "t10k"
    files = {
        f"{prefix}-images-idx3-ubyte": idx_bytes(0x803, images.shape, images.astype(np.uint8).tobytes()),
        f"{prefix}-labels-idx1-ubyte": idx_bytes(0x801, labels.shape, labels.astype(np.uint8).tobytes()),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if gz:
            with gzip.open(directory / (name + ".gz"), "wb") as f:
                f.write(data)
        else:
            (directory / name).write_bytes(data)


def tiny_idx(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_files_plain_or_gzip_load_with_exact_pixels(tmp_path, gz):
    images, labels = tiny_idx()
    write_idx_split(tmp_path, "test", images, labels, gz)
    data = load_dataset("mnist", "test", data_dir=tmp_path)
    assert data.x.shape == (12, 1, 28, 28) and data.x.dtype == torch.float32
    assert torch.equal(data.x[:, 0], torch.from_numpy(images).float() / 255)
    assert data.y.tolist() == labels.tolist() and data.y.dtype == torch.int64


def test_idx_image_size_is_taken_from_header(tmp_path):
    rng = np.random.default_rng(1)
    write_idx_split(tmp_path, "train", rng.integers(0, 256, (3, 5, 7), dtype=np.uint8), np.array([0, 1, 2]), False)
    data = load_dataset("fashion-mnist", "train", data_dir=tmp_path)
    assert data.x.shape == (3, 1, 5, 7) and data.info.image_shape == (1, 5, 7)


def test_idx_found_in_dataset_subfolder_of_rat_data_dir(tmp_path, monkeypatch):
    images, labels = tiny_idx()
    write_idx_split(tmp_path / "fashion-mnist", "test", images, labels, True)
    monkeypatch.setenv("RAT_DATA_DIR", str(tmp_path))
    assert default_data_dir("fashion-mnist") == tmp_path / "fashion-mnist"
    assert len(load_dataset("fashion-mnist", "test")) == 12


def test_explicit_data_dir_wins_over_rat_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RAT_DATA_DIR", str(tmp_path / "env"))
    (tmp_path / "arg").mkdir()
    assert default_data_dir("cifar10", tmp_path / "arg") == tmp_path / "arg"


def corrupt_idx(tmp_path: Path, case: str) -> str:
    """Write a test split broken in one way; return the file name the error must name."""
    images, labels = tiny_idx()
    write_idx_split(tmp_path, "test", images, labels, gz=False)
    img, lab = tmp_path / "t10k-images-idx3-ubyte", tmp_path / "t10k-labels-idx1-ubyte"
    if case == "wrong magic":
        img.write_bytes(idx_bytes(0x801, images.shape, images.tobytes()))
        return img.name
    if case == "truncated":
        img.write_bytes(img.read_bytes()[:-5])
        return img.name
    if case == "truncated header":
        lab.write_bytes(lab.read_bytes()[:6])
        return lab.name
    if case == "count mismatch":
        lab.write_bytes(idx_bytes(0x801, (11,), labels[:11].astype(np.uint8).tobytes()))
        return lab.name
    if case == "label out of range":
        bad = labels.copy()
        bad[3] = 10
        lab.write_bytes(idx_bytes(0x801, bad.shape, bad.astype(np.uint8).tobytes()))
        return lab.name
    if case == "missing file":
        lab.unlink()
        return lab.name
    if case == "corrupt gzip":
        img.unlink()
        (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
        return img.name
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["wrong magic", "truncated", "truncated header", "count mismatch", "label out of range", "missing file", "corrupt gzip"],
)
def test_corrupt_idx_raises_one_line_data_error_naming_the_file(tmp_path, case):
    name = corrupt_idx(tmp_path, case)
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", "test", data_dir=tmp_path)
    assert_one_line_error(excinfo, name)


def test_wrong_idx_magic_message_states_found_and_expected(tmp_path):
    corrupt_idx(tmp_path, "wrong magic")
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", "test", data_dir=tmp_path)
    assert_one_line_error(excinfo, "0x00000801", "0x00000803")


def test_missing_data_directory_raises_data_error_naming_it(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", "test", data_dir=tmp_path / "nope")
    assert_one_line_error(excinfo, "nope")


def test_dataset_without_default_location_asks_for_data_dir():
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", "test")
    assert_one_line_error(excinfo, "--data-dir", "RAT_DATA_DIR")


def test_unknown_dataset_and_bad_split_raise_data_error():
    with pytest.raises(DataError) as excinfo:
        load_dataset("imagenet", "train")
    assert_one_line_error(excinfo, "imagenet", "cifar10", "fashion-mnist")
    with pytest.raises(DataError):
        dataset_info("imagenet")
    with pytest.raises(DataError) as excinfo:
        load_dataset("synthetic", "validation")
    assert_one_line_error(excinfo, "validation")


def test_dataset_info_table_matches_conventions():
    assert set(DATASETS) == {"fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "synthetic"}
    for name, info in DATASETS.items():
        assert info.name == name
        assert len(info.mean) == len(info.std) == info.image_shape[0]
        assert len(info.class_names) == info.num_classes
    assert [n for n, i in DATASETS.items() if i.hflip] == ["cifar10", "cifar100"]
    assert DATASETS["cifar10"].linf_eps == pytest.approx(8 / 255)
    assert DATASETS["fashion-mnist"].linf_eps == 0.1


# ------------------------------------------------------------------------- CIFAR


def cifar_batch(n: int, num_classes: int, label_key: bytes, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"testing batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path) -> dict[str, dict]:
    d = root / "cifar-10-batches-py"
    batches = {f"data_batch_{i}": cifar_batch(3, 10, b"labels", i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(4, 10, b"labels", 99)
    for name, batch in batches.items():
        dump(d / name, batch)
    return batches


def assert_cifar_layout(x: torch.Tensor, data: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        i, c, h, w = rng.integers(0, len(data)), rng.integers(0, 3), rng.integers(0, 32), rng.integers(0, 32)
        assert x[i, c, h, w].item() == pytest.approx(data[i, c * 1024 + h * 32 + w] / 255)
    assert torch.equal((x * 255).round().to(torch.uint8).flatten(1), torch.from_numpy(data))


def test_cifar10_pickles_load_with_channel_plane_pixel_layout(tmp_path):
    batches = write_cifar10(tmp_path)
    test = load_dataset("cifar10", "test", data_dir=tmp_path)  # parent-directory layout
    assert test.x.shape == (4, 3, 32, 32) and test.x.dtype == torch.float32
    assert_cifar_layout(test.x, batches["test_batch"][b"data"])
    assert test.y.tolist() == batches["test_batch"][b"labels"]
    train = load_dataset("cifar10", "train", data_dir=tmp_path / "cifar-10-batches-py")  # direct layout
    assert len(train) == 15
    assert_cifar_layout(train.x, np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)]))
    assert train.y.tolist() == sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])


def test_cifar100_pickles_use_fine_labels(tmp_path):
    d = tmp_path / "cifar-100-python"
    batch = cifar_batch(5, 100, b"fine_labels", 7)
    batch[b"coarse_labels"] = [0] * 5
    dump(d / "test", batch)
    data = load_dataset("cifar100", "test", data_dir=tmp_path)
    assert data.info.num_classes == 100
    assert data.y.tolist() == batch[b"fine_labels"]
    assert_cifar_layout(data.x, batch[b"data"])


def test_cifar_pickle_with_legacy_numpy_core_path_loads(tmp_path):
    # The distributed files were written by Python 2 / numpy 1.x: numpy.core.multiarray._reconstruct.
    batch = cifar_batch(2, 10, b"labels", 3)
    raw = pickle.dumps(batch, protocol=2)
    legacy = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy
    (tmp_path / "test_batch").write_bytes(legacy)
    data = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert_cifar_layout(data.x, batch[b"data"])


def test_cifar_missing_batch_file_is_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", "train", data_dir=tmp_path)
    assert_one_line_error(excinfo, "data_batch_3")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _drop_data_key(path: Path) -> None:
    batch = cifar_batch(4, 10, b"labels", 1)
    del batch[b"data"]
    dump(path, batch)


def _wrong_shape(path: Path) -> None:
    batch = cifar_batch(4, 10, b"labels", 1)
    batch[b"data"] = batch[b"data"].reshape(4, 3, 32, 32)
    dump(path, batch)


def _label_out_of_range(path: Path) -> None:
    batch = cifar_batch(4, 10, b"labels", 1)
    batch[b"labels"][2] = 10
    dump(path, batch)


def _count_mismatch(path: Path) -> None:
    batch = cifar_batch(4, 10, b"labels", 1)
    batch[b"labels"] = batch[b"labels"][:3]
    dump(path, batch)


def _not_a_dict(path: Path) -> None:
    dump(path, [1, 2, 3])


@pytest.mark.parametrize(
    "corrupt", [_truncate, _drop_data_key, _wrong_shape, _label_out_of_range, _count_mismatch, _not_a_dict]
)
def test_corrupt_cifar_pickle_raises_one_line_data_error_naming_the_file(tmp_path, corrupt):
    write_cifar10(tmp_path)
    corrupt(tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert_one_line_error(excinfo, "test_batch")


class _RunsCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_cifar_pickle_calling_os_system_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    d = tmp_path / "cifar-10-batches-py"
    dump(d / "test_batch", {b"data": _RunsCommand(f"touch {marker}"), b"labels": [0]})
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert_one_line_error(excinfo, "refusing to unpickle", "system", "test_batch")
    assert not marker.exists()


def test_cifar_pickle_may_not_use_codecs_other_than_latin1(tmp_path):
    # _codecs.encode is allowed only because protocol-2 bytes need it; other codecs stay blocked.
    payload = b"\x80\x02}q\x00(C\x04datac_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R" \
              b"C\x06labels]u."
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "test_batch").write_bytes(payload)
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert_one_line_error(excinfo, "test_batch", "rot13")


# -------------------------------------------------------------------------- SVHN


def svhn_arrays(n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n, dtype=np.uint8) % 10 + 1).reshape(n, 1)  # 1..10, 10 means digit 0
    return X, y


def test_svhn_mat_loads_with_label_10_as_zero_and_hwcn_layout(tmp_path):
    X, y = svhn_arrays(12)
    (tmp_path / "svhn").mkdir()
    scipy.io.savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": X, "y": y})
    data = load_dataset("svhn", "test", data_dir=tmp_path)
    assert data.x.shape == (12, 3, 32, 32) and data.x.dtype == torch.float32
    assert data.y.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    for i, c, h, w in [(0, 0, 0, 0), (3, 2, 5, 31), (11, 1, 30, 7)]:
        assert data.x[i, c, h, w].item() == pytest.approx(X[h, w, c, i] / 255)
    assert torch.equal((data.x * 255).round().to(torch.uint8), torch.from_numpy(X).permute(3, 2, 0, 1))


@pytest.mark.parametrize(
    "case", ["garbage", "missing X", "X wrong shape", "count mismatch", "label 0", "label 11", "missing file"]
)
def test_corrupt_svhn_mat_raises_one_line_data_error_naming_the_file(tmp_path, case):
    path = tmp_path / "train_32x32.mat"
    X, y = svhn_arrays()
    if case == "garbage":
        path.write_bytes(b"MATLAB 5.0 MAT-file, but then nothing useful" + bytes(20))
    elif case == "missing X":
        scipy.io.savemat(path, {"y": y})
    elif case == "X wrong shape":
        scipy.io.savemat(path, {"X": X[:, :, 0, :], "y": y})
    elif case == "count mismatch":
        scipy.io.savemat(path, {"X": X, "y": y[:-1]})
    elif case in ("label 0", "label 11"):
        y[2, 0] = 0 if case == "label 0" else 11
        scipy.io.savemat(path, {"X": X, "y": y})
    elif case == "missing file":
        (tmp_path / "test_32x32.mat").write_bytes(b"")
    with pytest.raises(DataError) as excinfo:
        load_dataset("svhn", "train", data_dir=tmp_path)
    assert_one_line_error(excinfo, "train_32x32.mat")


# --------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_balanced_and_split_specific():
    a, b = load_dataset("synthetic", "train"), load_dataset("synthetic", "train")
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert a.x.shape == (2048, 1, 28, 28) and a.x.dtype == torch.float32 and a.y.dtype == torch.int64
    assert 0.0 <= a.x.min() and a.x.max() <= 1.0
    assert set(a.y.tolist()) == set(range(10))
    test = load_dataset("synthetic", "test")
    assert len(test) == 512 and set(test.y.tolist()) == set(range(10))
    assert not torch.equal(test.x, a.x[:512])


def test_the_split_names_are_written_once_and_synthetic_sizes_every_split():
    from ratkit.data import info, synthetic

    assert synthetic.SPLITS is info.SPLITS
    assert tuple(synthetic.SPLIT_SIZES) == info.SPLITS


def test_synthetic_classes_are_separable_by_whole_image_but_not_by_one_pixel():
    train, test = load_dataset("synthetic", "train"), load_dataset("synthetic", "test")
    means = torch.stack([train.x[train.y == k].mean(0) for k in range(10)]).flatten(1)
    dist = torch.cdist(test.x.flatten(1), means)
    assert (dist.argmin(1) == test.y).float().mean() > 0.8
    pixel = (test.x.flatten(1)[:, :, None] - means.T[None]).abs().argmin(2)  # N x pixels
    best_single_pixel = (pixel == test.y[:, None]).float().mean(0).max()
    assert best_single_pixel < 0.5


def test_synthetic_data_sizes_and_info_follow_arguments():
    d = synthetic_data(30, seed=3, num_classes=3, image_shape=(3, 8, 8))
    assert d.x.shape == (30, 3, 8, 8)
    assert d.info.num_classes == 3 and d.info.image_shape == (3, 8, 8) and len(d.info.mean) == 3
    assert set(d.y.tolist()) == {0, 1, 2}
    assert torch.equal(d.x, synthetic_data(30, seed=3, num_classes=3, image_shape=(3, 8, 8)).x)


# --------------------------------------------------------- TensorData, splits, batches


def test_tensor_data_subset_and_first():
    d = synthetic_data(20)
    assert len(d.first(5)) == 5 and len(d.first(100)) == 20 and len(d.first(0)) == 0
    assert torch.equal(d.subset(torch.tensor([3, 1])).y, d.y[[3, 1]])
    assert torch.equal(d.subset(slice(2, 4)).x, d.x[2:4])
    assert d.subset(7).x.shape == (1, 1, 28, 28)


def test_split_train_val_is_disjoint_covering_and_seeded():
    d = synthetic_data(100)
    d = TensorData(d.x, d.y, d.info)
    d.x[:, 0, 0, 0] = torch.arange(100, dtype=torch.float32)  # tag each example
    train, val = split_train_val(d, 30, seed=0)
    ids_t, ids_v = set(train.x[:, 0, 0, 0].tolist()), set(val.x[:, 0, 0, 0].tolist())
    assert len(train) == 70 and len(val) == 30
    assert ids_t.isdisjoint(ids_v) and ids_t | ids_v == set(range(100))
    _, val_again = split_train_val(d, 30, seed=0)
    _, val_other = split_train_val(d, 30, seed=1)
    assert torch.equal(val.x, val_again.x)
    assert not torch.equal(val.x, val_other.x)


def test_split_train_val_edge_cases():
    d = synthetic_data(10)
    train, val = split_train_val(d, 0, seed=0)
    assert train is d and len(val) == 0 and val.x.shape[1:] == d.x.shape[1:]
    for bad in (10, 11, -1):
        with pytest.raises(DataError):
            split_train_val(d, bad, seed=0)


def test_iterate_batches_covers_data_and_is_deterministic_per_generator():
    d = synthetic_data(23)
    plain = list(iterate_batches(d, 5, shuffle=False))
    assert [len(y) for _, y in plain] == [5, 5, 5, 5, 3]
    assert torch.equal(torch.cat([x for x, _ in plain]), d.x)
    assert [len(y) for _, y in iterate_batches(d, 5, shuffle=False, drop_last=True)] == [5, 5, 5, 5]

    def shuffled(seed):
        return list(iterate_batches(d, 5, shuffle=True, generator=torch.Generator().manual_seed(seed)))

    a, b, c = shuffled(0), shuffled(0), shuffled(1)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in c]))
    ys = torch.cat([y for _, y in a])
    assert sorted(ys.tolist()) == sorted(d.y.tolist())
    for x, y in a:  # x and y stay paired
        for xi, yi in zip(x, y):
            match = (d.x == xi).flatten(1).all(1).nonzero().flatten()
            assert d.y[match[0]] == yi


# --------------------------------------------------------------------- transforms


def windows(padded: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """All h x w windows of padded C x H' x W': (num_windows, C, h, w)."""
    u = padded.unfold(1, h, 1).unfold(2, w, 1)  # C x oy x ox x h x w
    return u.permute(1, 2, 0, 3, 4).reshape(-1, padded.shape[0], h, w)


def test_random_crop_outputs_are_windows_of_padded_input_with_independent_offsets():
    x = (torch.arange(2 * 6 * 7, dtype=torch.float32) + 1).reshape(1, 2, 6, 7).repeat(64, 1, 1, 1)
    out = random_crop(x, 3, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x[0], (3, 3, 3, 3))
    wins = windows(padded, 6, 7)
    matches = [(wins == o).flatten(1).all(1).nonzero().flatten().tolist() for o in out]
    assert all(len(m) == 1 for m in matches)
    assert len({m[0] for m in matches}) > 10  # offsets drawn per image, not per batch


def test_random_crop_with_zero_padding_is_identity():
    x = torch.rand(4, 3, 8, 8)
    assert random_crop(x, 0, torch.Generator().manual_seed(0)) is x


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 4), c=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6),
    padding=st.integers(0, 4), seed=st.integers(0, 2**31 - 1),
)
def test_random_crop_keeps_shape_and_only_input_values_or_zero(n, c, h, w, padding, seed):
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    out = random_crop(x, padding, torch.Generator().manual_seed(seed + 1))
    assert out.shape == x.shape
    allowed = set(x.flatten().tolist()) | {0.0}
    assert set(out.flatten().tolist()) <= allowed
    for xi, oi in zip(x, out):
        wins = windows(torch.nn.functional.pad(xi, (padding,) * 4), h, w)
        assert (wins == oi).flatten(1).all(1).any()


def test_random_hflip_p1_is_flip_and_p0_is_identity():
    x = torch.rand(5, 3, 4, 6)
    assert torch.equal(random_hflip(x, torch.Generator().manual_seed(0), p=1.0), torch.flip(x, dims=[3]))
    assert torch.equal(random_hflip(x, torch.Generator().manual_seed(0), p=0.0), x)
    mixed = random_hflip(x.repeat(40, 1, 1, 1), torch.Generator().manual_seed(0))
    flipped = (mixed == torch.flip(x.repeat(40, 1, 1, 1), dims=[3])).flatten(1).all(1)
    assert 0 < flipped.sum() < 200


@pytest.mark.parametrize("name", ["cifar10", "fashion-mnist", "synthetic"])
def test_augment_keeps_dtype_range_and_is_reproducible_per_seed(name):
    info = DATASETS[name]
    x = torch.rand(16, *info.image_shape)
    a = augment(x, info, torch.Generator().manual_seed(5))
    b = augment(x, info, torch.Generator().manual_seed(5))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, b)
    if info.crop_padding:
        assert not torch.equal(a, augment(x, info, torch.Generator().manual_seed(6)))
