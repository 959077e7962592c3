"""Specification tests for a user's own data: image folders, npz archives, uint8 storage, streaming."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ratkit.data import DataError, TensorData, dataset_info, iterate_batches
from ratkit.data.formats.common import to_float_images
from ratkit.data.formats.folder import (
    FolderImages,
    check_same_classes,
    decode_image,
    load_folder_split,
    scan_folder,
)
from ratkit.data.formats.npz import check_label_range, load_npz_split, npz_class_names, npz_num_classes
from ratkit.data.streaming import (
    StreamedData,
    available_memory,
    fits_in_memory,
    iterate_streamed_batches,
)
from ratkit.data.tensordata import _float_table, epoch_order, uint8_to_float

CLASSES = ("bird", "cat", "dog")


def assert_one_line_error(excinfo, *needles) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert str(needle) in msg, f"{needle!r} not in {msg!r}"


def pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_folder(root: Path, split: str = "train", per_class: int = 3, mode: str = "RGB", size=(8, 8),
                 suffix: str = ".png", seed: int = 0) -> dict[Path, np.ndarray]:
    """root/split/<class>/<i>.png for the three CLASSES; returns the pixels written (H x W [x 3])."""
    written = {}
    for c, name in enumerate(CLASSES):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (*size, 3) if mode == "RGB" else size
            arr = pixels(seed + 100 * c + i, shape)
            path = folder / f"img{i}{suffix}"
            Image.fromarray(arr).convert(mode).save(path)
            written[path] = arr
    return written


# ------------------------------------------------------------------------ image folders


def test_a_folder_split_lists_sorted_classes_and_sorted_files_ignoring_hidden_and_other_files(tmp_path):
    for name in ("zebra", "ant", "moth"):  # created out of order
        (tmp_path / "train" / name).mkdir(parents=True)
        for f in ("b.PNG", "a.jpg", "c.Webp"):
            Image.fromarray(pixels(0, (8, 8, 3))).save(tmp_path / "train" / name / f,
                                                        format={"b.PNG": "PNG", "a.jpg": "JPEG", "c.Webp": "WEBP"}[f])
        (tmp_path / "train" / name / "notes.txt").write_text("not an image")
        (tmp_path / "train" / name / ".hidden.png").write_bytes(b"not even an image")
    (tmp_path / "train" / ".cache").mkdir()
    (tmp_path / "train" / "README.md").write_text("ignored")
    index = scan_folder(tmp_path, "train")
    assert index.classes == ("ant", "moth", "zebra")
    assert [f.name for f in index.files] == ["a.jpg", "b.PNG", "c.Webp"] * 3
    assert index.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and index.labels.dtype == np.int64
    assert scan_folder(tmp_path, "train").files == index.files  # deterministic
    assert index.size == (8, 8) and index.first_differing is None and len(index) == 9


def test_load_folder_split_returns_the_written_pixels_as_uint8_nchw(tmp_path):
    written = write_folder(tmp_path)
    x, y, classes = load_folder_split(tmp_path, "train")
    assert x.dtype == torch.uint8 and x.shape == (9, 3, 8, 8)
    assert y.dtype == torch.int64 and y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert classes == CLASSES
    for i, arr in enumerate(written.values()):
        assert np.array_equal(x[i].numpy(), arr.transpose(2, 0, 1))


def test_a_folder_of_greyscale_images_has_one_channel_and_one_colour_image_makes_it_three(tmp_path):
    write_folder(tmp_path, mode="L")
    Image.fromarray(pixels(1, (8, 8))).convert("1").save(tmp_path / "train" / "cat" / "bilevel.bmp")
    Image.fromarray(pixels(2, (8, 8))).convert("LA").save(tmp_path / "train" / "dog" / "alpha.png")
    index = scan_folder(tmp_path, "train")
    assert index.mode_channels == 1
    x, _, _ = load_folder_split(tmp_path, "train")
    assert x.shape == (11, 1, 8, 8)
    Image.fromarray(pixels(3, (8, 8))).convert("P").save(tmp_path / "train" / "dog" / "palette.png")
    assert scan_folder(tmp_path, "train").mode_channels == 3  # a palette counts as colour


def test_channels_forces_grey_to_repeated_rgb_and_colour_to_pillow_luma(tmp_path):
    grey = write_folder(tmp_path / "g", mode="L")
    x, _, _ = load_folder_split(tmp_path / "g", "train", channels=3)
    first = next(iter(grey.values()))
    assert x.shape == (9, 3, 8, 8) and all(np.array_equal(x[0, c].numpy(), first) for c in range(3))
    colour = write_folder(tmp_path / "c", mode="RGB")
    x, _, _ = load_folder_split(tmp_path / "c", "train", channels=1)
    path = next(iter(colour))
    assert x.shape == (9, 1, 8, 8)
    assert np.array_equal(x[0, 0].numpy(), np.asarray(Image.open(path).convert("L")))


def test_image_size_resizes_every_image_with_pillow_bilinear(tmp_path):
    written = write_folder(tmp_path, size=(8, 8))
    x, _, _ = load_folder_split(tmp_path, "train", image_size=(5, 6))
    assert x.shape == (9, 3, 5, 6)
    path = next(iter(written))
    expected = np.asarray(Image.open(path).convert("RGB").resize((6, 5), Image.BILINEAR, reducing_gap=None))
    assert np.array_equal(x[0].numpy(), expected.transpose(2, 0, 1))
    assert np.array_equal(decode_image(path, 3, (5, 6)), x[0].numpy())


def test_a_folder_with_images_of_two_sizes_names_the_first_that_differs(tmp_path):
    write_folder(tmp_path)
    odd = tmp_path / "train" / "cat" / "img1.png"
    Image.fromarray(pixels(0, (10, 12, 3))).save(odd)
    Image.fromarray(pixels(0, (11, 12, 3))).save(tmp_path / "train" / "dog" / "img0.png")
    index = scan_folder(tmp_path, "train")
    assert index.size is None and index.first_differing == odd
    with pytest.raises(DataError) as e:
        load_folder_split(tmp_path, "train")
    assert_one_line_error(e, odd, "10x12", "8x8", "bird", "data.image_size: [H, W]")
    with pytest.raises(DataError) as e:
        FolderImages(index)
    assert_one_line_error(e, odd, "data.image_size")
    x, _, _ = load_folder_split(tmp_path, "train", image_size=(8, 8))
    assert x.shape == (9, 3, 8, 8)


def test_sixteen_bit_greyscale_is_rounded_to_eight_bits(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    values = np.array([[0, 128, 257, 384], [65535, 65407, 32896, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "train" / "a" / "deep.png")
    assert scan_folder(tmp_path, "train").mode_channels == 1
    x, _, _ = load_folder_split(tmp_path, "train")
    assert x[0, 0].tolist() == [[0, 0, 1, 1], [255, 255, 128, 4]]


def test_folder_images_decodes_the_rows_of_load_folder_split_and_pickles(tmp_path):
    write_folder(tmp_path, mode="L")
    x, y, _ = load_folder_split(tmp_path, "train", channels=3, image_size=(6, 6))
    images = pickle.loads(pickle.dumps(FolderImages(scan_folder(tmp_path, "train"), channels=3, image_size=(6, 6))))
    assert len(images) == 9 and images.shape == (3, 6, 6) and torch.equal(images.labels, y)
    for i in range(9):
        image, label = images[i]
        assert image.dtype == torch.uint8 and torch.equal(image, x[i]) and label == int(y[i])


def _no_class_folders(root):
    (root / "train").mkdir(parents=True)
    (root / "train" / "stray.png").write_bytes(b"")
    return root / "train", "no class folders"


def _empty_class(root):
    write_folder(root)
    (root / "train" / "empty").mkdir()
    (root / "train" / "empty" / "notes.txt").write_text("x")
    return root / "train" / "empty", "no images"


def _not_an_image(root):
    write_folder(root)
    bad = root / "train" / "cat" / "fake.jpg"
    bad.write_bytes(b"this is text, not a JPEG")
    return bad, "not an image"


def _float_mode(root):
    write_folder(root)
    bad = root / "train" / "cat" / "float.png"
    Image.fromarray(np.zeros((8, 8), np.float32)).save(bad, format="TIFF")
    return bad, "unsupported pixel mode 'F'"


@pytest.mark.parametrize("case", [_no_class_folders, _empty_class, _not_an_image, _float_mode])
def test_a_bad_folder_raises_one_line_data_error_naming_the_path(tmp_path, case):
    path, problem = case(tmp_path)
    with pytest.raises(DataError) as e:
        scan_folder(tmp_path, "train")
    assert_one_line_error(e, path, problem)


def test_a_missing_split_folder_is_named_with_the_expected_layout(tmp_path):
    write_folder(tmp_path, "train")
    with pytest.raises(DataError) as e:
        load_folder_split(tmp_path, "test")
    assert_one_line_error(e, tmp_path / "test", "missing test folder", "<class>")


def test_a_truncated_image_fails_at_decoding_naming_the_file(tmp_path):
    write_folder(tmp_path)
    bad = tmp_path / "train" / "dog" / "img2.png"
    bad.write_bytes(bad.read_bytes()[:60])  # the header survives, the pixels do not
    index = scan_folder(tmp_path, "train")  # headers only: the scan cannot tell
    assert bad in index.files
    with pytest.raises(DataError) as e:
        load_folder_split(tmp_path, "train")
    assert_one_line_error(e, bad, "cannot decode")
    with pytest.raises(DataError) as e:
        FolderImages(index)[8]
    assert_one_line_error(e, bad)


def test_train_and_test_with_different_classes_are_refused_naming_the_differences(tmp_path):
    write_folder(tmp_path, "train")
    write_folder(tmp_path, "test")
    (tmp_path / "test" / "bird").rename(tmp_path / "test" / "fish")
    train, test = scan_folder(tmp_path, "train"), scan_folder(tmp_path, "test")
    with pytest.raises(DataError) as e:
        check_same_classes(train, test, tmp_path)
    assert_one_line_error(e, tmp_path, "only in train: bird", "only in test: fish")
    check_same_classes(train, train, tmp_path)


@pytest.mark.parametrize("kwargs,problem", [
    ({"channels": 2}, "channels must be 1 or 3"),
    ({"image_size": (8,)}, "image_size must be two positive integers"),
    ({"image_size": (0, 8)}, "image_size must be two positive integers"),
])
def test_bad_channels_or_image_size_are_refused(tmp_path, kwargs, problem):
    write_folder(tmp_path)
    with pytest.raises(DataError) as e:
        load_folder_split(tmp_path, "train", **kwargs)
    assert_one_line_error(e, tmp_path, problem)


# -------------------------------------------------------------------------- npz archives


def test_npz_uint8_images_stay_uint8_nchw_and_float_images_become_float32(tmp_path):
    hwc = pixels(0, (4, 5, 6, 3))
    np.savez(tmp_path / "train.npz", x=hwc, y=np.array([[2], [0], [1], [2]]))  # y as N x 1 (Keras)
    x, y = load_npz_split(tmp_path, "train")
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 5, 6) and torch.equal(x, torch.from_numpy(hwc).permute(0, 3, 1, 2))
    assert y.dtype == torch.int64 and y.tolist() == [2, 0, 1, 2]
    grey = np.random.default_rng(1).random((3, 5, 6))
    np.savez(tmp_path / "test.npz", x=grey, y=np.array([0, 1, 2], dtype=np.uint8))
    x, y = load_npz_split(tmp_path, "test")
    assert x.dtype == torch.float32 and x.shape == (3, 1, 5, 6)
    assert torch.equal(x[:, 0], torch.from_numpy(grey.astype(np.float32)))


GOOD_X, GOOD_Y = np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 2, 1])


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("arrays,problem", [
    ({"y": GOOD_Y}, "missing array 'x', found arrays y"),
    ({"x": GOOD_X}, "missing array 'y'"),
    ({"x": np.array([None] * 4, dtype=object), "y": GOOD_Y}, "holds Python objects"),
    ({"x": GOOD_X.astype(bool), "y": GOOD_Y}, "dtype bool"),
    ({"x": GOOD_X.astype(np.int32), "y": GOOD_Y}, "dtype int32"),
    ({"x": np.full((4, 8, 8), 1.5), "y": GOOD_Y}, "expected floating point in [0, 1]"),
    ({"x": np.full((4, 8, 8), -0.1, np.float32), "y": GOOD_Y}, "expected floating point in [0, 1]"),
    ({"x": np.full((4, 8, 8), np.nan), "y": GOOD_Y}, "non-finite"),
    ({"x": np.zeros((4, 64), np.uint8), "y": GOOD_Y}, "expected N x H x W or N x H x W x C"),
    ({"x": np.zeros((4, 8, 8, 2), np.uint8), "y": GOOD_Y}, "with C 1 or 3"),
    ({"x": np.zeros((4, 3, 8, 8), np.uint8), "y": GOOD_Y}, "channels last"),
    ({"x": np.zeros((0, 8, 8), np.uint8), "y": GOOD_Y[:0]}, "at least one image"),
    ({"x": GOOD_X, "y": GOOD_Y[:3]}, "3 labels in y but 4 images in x"),
    ({"x": GOOD_X, "y": GOOD_Y.astype(np.float32)}, "expected integer labels"),
    ({"x": GOOD_X, "y": GOOD_Y > 0}, "expected integer labels"),
    ({"x": GOOD_X, "y": np.array([0, -3, 1, 1])}, "label -3 is negative"),
    ({"x": GOOD_X, "y": np.zeros((4, 2), np.int64)}, "expected N or N x 1 labels"),
])
def test_a_bad_npz_raises_one_line_data_error_naming_the_file(tmp_path, arrays, problem):
    np.savez(tmp_path / "train.npz", **arrays)
    with pytest.raises(DataError) as e:
        load_npz_split(tmp_path, "train")
    assert_one_line_error(e, tmp_path / "train.npz", problem)


@pytest.mark.parametrize("write,problem", [
    (lambda p: None, "missing file"),
    (lambda p: p.write_bytes(b"plain text"), "not a readable .npz archive"),
    (lambda p: p.write_bytes(pickle.dumps({"x": 1})), "not a readable .npz archive"),
    (lambda p: p.write_bytes(npy_bytes(GOOD_X)), "a single .npy array"),
])
def test_a_missing_or_foreign_npz_file_is_named(tmp_path, write, problem):
    write(tmp_path / "train.npz")
    with pytest.raises(DataError) as e:
        load_npz_split(tmp_path, "train")
    assert_one_line_error(e, tmp_path / "train.npz", problem)


def test_test_labels_beyond_the_training_classes_are_refused(tmp_path):
    train_y, test_y = torch.tensor([0, 2, 1]), torch.tensor([0, 3])
    assert npz_num_classes(train_y) == 3 and npz_num_classes(train_y, ("a", "b", "c", "d")) == 4
    check_label_range(tmp_path / "train.npz", train_y, 3)
    with pytest.raises(DataError) as e:
        check_label_range(tmp_path / "test.npz", test_y, npz_num_classes(train_y))
    assert_one_line_error(e, tmp_path / "test.npz", "label 3 out of range, expected 0..2")


def test_npz_class_names_come_from_train_and_must_agree_with_test(tmp_path):
    np.savez(tmp_path / "train.npz", x=GOOD_X, y=GOOD_Y)
    assert npz_class_names(tmp_path) is None
    np.savez(tmp_path / "train.npz", x=GOOD_X, y=GOOD_Y, classes=np.array(["ant", "bee", "cow"]))
    np.savez(tmp_path / "test.npz", x=GOOD_X, y=GOOD_Y, classes=np.array([b"ant", b"bee", b"cow"]))
    assert npz_class_names(tmp_path) == ("ant", "bee", "cow")
    np.savez(tmp_path / "test.npz", x=GOOD_X, y=GOOD_Y, classes=np.array(["ant", "bee", "owl"]))
    with pytest.raises(DataError) as e:
        npz_class_names(tmp_path)
    assert_one_line_error(e, tmp_path / "test.npz", "differ")
    for bad, problem in ((np.array(["a", "a"]), "appears twice"), (np.array([1, 2]), "expected a list of strings"),
                         (np.array(["a", " "]), "class name 1 is empty")):
        np.savez(tmp_path / "train.npz", x=GOOD_X, y=GOOD_Y, classes=bad)
        with pytest.raises(DataError) as e:
            npz_class_names(tmp_path)
        assert_one_line_error(e, tmp_path / "train.npz", problem)


# ------------------------------------------------------------------ uint8 TensorData


def all_pixel_values() -> TensorData:
    """Every uint8 value, in a 16 x 1 x 4 x 4 dataset."""
    x = torch.randperm(256, generator=torch.Generator().manual_seed(0)).to(torch.uint8).reshape(16, 1, 4, 4)
    return TensorData(x, torch.arange(16) % 3, dataset_info("synthetic"))


def test_uint8_batches_are_bit_identical_to_to_float_images_of_the_whole_array():
    data = all_pixel_values()
    as_float = TensorData(to_float_images(data.x.numpy()), data.y, data.info)
    for shuffle in (False, True):
        u = list(iterate_batches(data, 5, shuffle=shuffle, generator=torch.Generator().manual_seed(1)))
        f = list(iterate_batches(as_float, 5, shuffle=shuffle, generator=torch.Generator().manual_seed(1)))
        assert len(u) == len(f) == 4
        for (xu, yu), (xf, yf) in zip(u, f):
            assert xu.dtype == torch.float32 and torch.equal(xu, xf) and torch.equal(yu, yf)
    assert torch.equal(data.as_float().x, as_float.x) and as_float.as_float() is as_float


def test_the_device_lookup_table_holds_the_cpu_division_values():
    values = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(_float_table(torch.device("cpu"))[values.long()], uint8_to_float(values))
    assert torch.equal(uint8_to_float(values), to_float_images(values.numpy()))


def test_uint8_tensor_data_keeps_its_dtype_and_takes_a_quarter_of_the_bytes():
    data = all_pixel_values()
    for part in (data.subset([3, 1]), data.first(4), data.subset(2), data.to("cpu")):
        assert part.x.dtype == torch.uint8
    assert data.nbytes == 256 + 16 * 8 and data.as_float().nbytes == 4 * 256 + 16 * 8
    with pytest.raises(DataError) as e:
        TensorData(data.x.int(), data.y, data.info)
    assert_one_line_error(e, "synthetic", "uint8", "int32")


def test_start_batch_skips_batches_but_draws_the_whole_permutation():
    data = all_pixel_values()
    g_all, g_rest = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    full = list(iterate_batches(data, 3, shuffle=True, generator=g_all, drop_last=True))
    rest = list(iterate_batches(data, 3, shuffle=True, generator=g_rest, drop_last=True, start_batch=2))
    assert len(full) == 5 and len(rest) == 3
    assert all(torch.equal(a, b) and torch.equal(ya, yb) for (a, ya), (b, yb) in zip(full[2:], rest))
    assert torch.equal(g_all.get_state(), g_rest.get_state())
    assert list(iterate_batches(data, 3, shuffle=False, start_batch=9)) == []


# ---------------------------------------------------------------------------- streaming


@pytest.fixture
def folder(tmp_path):
    write_folder(tmp_path, per_class=5, size=(6, 6))  # 15 RGB images
    return tmp_path


def streamed(folder: Path) -> StreamedData:
    return StreamedData(dataset_info("synthetic"), FolderImages(scan_folder(folder, "train")))


def same_batches(a, b) -> bool:
    a, b = list(a), list(b)
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streamed_batches_equal_in_memory_batches_for_a_seeded_generator(folder, num_workers):
    stream = streamed(folder)
    memory = stream.load()
    x, _, _ = load_folder_split(folder, "train")
    assert memory.x.dtype == torch.uint8 and torch.equal(memory.x, x)
    for kwargs in ({"drop_last": True}, {"drop_last": False, "start_batch": 2}, {"shuffle": False}):
        kwargs = {"shuffle": True, **kwargs}
        expected = iterate_batches(memory, 4, generator=torch.Generator().manual_seed(3), **kwargs)
        got = iterate_streamed_batches(stream, 4, generator=torch.Generator().manual_seed(3),
                                       num_workers=num_workers, **kwargs)
        assert same_batches(got, expected)


def test_in_memory_and_streamed_batches_are_the_one_epoch_order_cut_into_batches(folder):
    """Both iterators take their order from epoch_order, so neither can drift from the other."""
    stream = streamed(folder)
    memory = stream.load()
    for kwargs in ({"shuffle": True, "drop_last": True, "start_batch": 1}, {"shuffle": False, "drop_last": False}):
        order, starts = epoch_order("synthetic", 15, 4, generator=torch.Generator().manual_seed(5), **kwargs)
        positions = torch.arange(15) if order is None else order
        expected = [(memory.as_float().x[positions[s:s + 4]], memory.y[positions[s:s + 4]]) for s in starts]
        assert len(expected) == (2 if kwargs["drop_last"] else 4)
        for batches in (iterate_batches(memory, 4, generator=torch.Generator().manual_seed(5), **kwargs),
                        iterate_streamed_batches(stream, 4, generator=torch.Generator().manual_seed(5), **kwargs)):
            assert same_batches(batches, expected)


def test_a_streamed_subset_covers_its_examples_and_knows_labels_without_decoding(folder):
    stream = streamed(folder)
    memory = stream.load()
    part = stream.subset(torch.tensor([14, 0, 7, 3]))
    assert len(part) == 4 and torch.equal(part.y, memory.y[[14, 0, 7, 3]])
    assert torch.equal(part.load().x, memory.x[[14, 0, 7, 3]])
    assert torch.equal(part.first(2).load().x, memory.x[[14, 0]]) and len(stream.first(100)) == 15
    assert same_batches(iterate_streamed_batches(part, 3, shuffle=True, generator=torch.Generator().manual_seed(0)),
                        iterate_batches(part.load(), 3, shuffle=True, generator=torch.Generator().manual_seed(0)))


def test_streaming_leaves_the_global_random_state_alone(folder):
    before = torch.get_rng_state()
    list(iterate_streamed_batches(streamed(folder), 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(torch.get_rng_state(), before)


def test_a_file_that_fails_in_a_worker_process_is_named_on_one_line(folder):
    stream = streamed(folder)
    bad = folder / "train" / "cat" / "img1.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(DataError) as in_process:
        stream.dataset[stream.dataset.files.index(bad)]
    with pytest.raises(DataError) as e:
        list(iterate_streamed_batches(stream, 4, shuffle=False, num_workers=1))
    assert_one_line_error(e, bad, "cannot decode")
    assert str(e.value) == str(in_process.value)  # not wrapped in the worker's traceback


def test_fits_in_memory_compares_the_bytes_with_the_available_memory(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000 kB\nMemFree: 100 kB\nMemAvailable: 4000 kB\n")
    no_cgroup = tmp_path / "none"
    assert available_memory(meminfo, tmp_path, no_cgroup) == 4000 * 1024
    # a SLURM-style cgroup with 1 MiB left below its limit, under a parent without one
    job = tmp_path / "cg" / "job_1"
    job.mkdir(parents=True)
    (job / "memory.max").write_text(str(3 * 2**20))
    (job / "memory.current").write_text(str(2 * 2**20))
    (tmp_path / "cg" / "memory.max").write_text("max\n")
    (tmp_path / "self_cgroup").write_text("0::/job_1\n")
    assert available_memory(meminfo, tmp_path / "cg", tmp_path / "self_cgroup") == 2**20
    monkeypatch.setattr("ratkit.data.streaming.available_memory", lambda: 1000)
    assert fits_in_memory(10, (1, 5, 10)) and not fits_in_memory(11, (1, 5, 10))
    assert not fits_in_memory(10, (1, 5, 10), dtype=torch.float32) and fits_in_memory(5, (1, 5, 10), np.uint16)
    monkeypatch.setattr("ratkit.data.streaming.available_memory", lambda: None)
    assert fits_in_memory(10**12, (3, 224, 224))


def test_a_data_source_takes_every_field_it_shares_with_the_data_config_by_name():
    """A field added to both DataConfig and DataSource is carried over with no third edit."""
    import dataclasses

    from ratkit.config import DataConfig, data_source, load_config
    from ratkit.data.source import DataSource

    shared = {f.name for f in dataclasses.fields(DataSource)} & {f.name for f in dataclasses.fields(DataConfig)}
    assert {"dataset", "data_dir", "eps", "mean", "std", "labels", "label_map"} <= shared
    data = DataConfig(**{name: f"<{name}>" for name in shared})
    assert {name: getattr(DataSource.from_config(data), name) for name in shared} == {n: f"<{n}>" for n in shared}
    lists = DataSource.from_config(DataConfig(mean=[0.5], std=[0.25], image_size=[8, 8]), eps=0.1)
    assert (lists.mean, lists.std, lists.image_size, lists.eps) == ((0.5,), (0.25,), (8, 8), 0.1)  # hashable tuples
    cfg = load_config("fmnist-cpu", ["data.dataset=npz", "data.data_dir=arrays", "data.eps=0.1", "data.mean=[0.3]",
                                     "data.std=[0.2]", "data.labels=remap", "data.label_map=[1,3]"])
    assert DataSource.from_config(cfg.data) == data_source(cfg)
