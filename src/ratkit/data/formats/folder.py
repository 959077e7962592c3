"""Image folders, the layout of torchvision's ``ImageFolder``: one sub-folder per class.

::

    DIR/train/<class>/*.png|jpg|jpeg|bmp|webp
    DIR/test/<class>/...

Class names are the sub-folder names, sorted, and a class's label is its position in that
order; files are sorted by name within each class, so the order of the examples depends
only on the names. Suffixes are matched case-insensitively; hidden files and folders (names
starting with ``.``) and files with other suffixes are ignored, and sub-folders of a class
folder are not searched.

Scanning (:func:`scan_folder`) reads only the image headers (Pillow opens lazily), so it is
cheap even for a large folder; pixels are decoded by :func:`decode_image`, either all at once
into a uint8 tensor (:func:`load_folder_split`) or one image at a time by a DataLoader
(:class:`FolderImages`, for data larger than memory).

Pixels: images are converted with Pillow to "L" (1 channel, ITU-R 601-2 luma for colour
images) or "RGB" (3 channels, grey repeated); an alpha channel is dropped, not composited;
16-bit greyscale is rounded to 8 bits (v / 257); an animated file gives its first frame; EXIF
orientation is not applied (as in torchvision). Images are resized only on request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError

__all__ = [
    "COLOR_MODES",
    "GRAYSCALE_MODES",
    "IMAGE_SUFFIXES",
    "FolderImages",
    "FolderIndex",
    "check_same_classes",
    "decode_image",
    "load_folder_split",
    "scan_folder",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")  # compared lower-case

# Pillow modes, as read from a file's header. An image in a grayscale mode has one channel of
# information (plus, for "LA", an alpha channel that is dropped). A palette image ("P", "PA")
# counts as colour: its palette may hold colours, and telling would mean decoding it; pass
# channels=1 to read such a folder as greyscale. Other modes (32-bit float "F", "LAB", "HSV",
# ...) cannot come from the formats above in the usual way and are refused at scan time.
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})
COLOR_MODES = frozenset({"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


@dataclass(frozen=True, eq=False)
class FolderIndex:
    """One split of an image folder as found by :func:`scan_folder`: files and headers, no pixels.

    ``files`` and ``labels`` (int64, read-only) are in example order; ``classes`` are the
    sorted class-folder names (label k is ``classes[k]``). ``mode_channels`` is 1 when every
    image is in a grayscale mode (:data:`GRAYSCALE_MODES`), else 3. ``size`` is the common
    (H, W) of all images, or None when they differ, and then ``first_differing`` is the first
    file (in example order) whose size is not that of ``files[0]``.
    """

    files: tuple[Path, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    mode_channels: int
    size: tuple[int, int] | None
    first_differing: Path | None = None

    def __len__(self) -> int:
        return len(self.files)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _read_header(path: Path) -> tuple[str, tuple[int, int]]:
    """(Pillow mode, (H, W)) of an image file, reading only its header."""
    try:
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
    except Exception as e:  # UnidentifiedImageError, OSError, DecompressionBombError, ...
        raise DataError(f"{path}: not an image Pillow can read ({type(e).__name__}: {e})") from e
    if mode not in GRAYSCALE_MODES and mode not in COLOR_MODES:
        raise DataError(
            f"{path}: unsupported pixel mode {mode!r}, expected 8-bit greyscale, 16-bit greyscale, "
            "palette or colour images"
        )
    return mode, (h, w)


def scan_folder(directory: Path, split: str) -> FolderIndex:
    """Index ``directory/split``: its class folders, their image files, and the images' headers.

    Raises a one-line :class:`DataError` naming the path when the split folder is missing, has
    no class folders, a class folder has no images, or a file with an image suffix is not an
    image Pillow can identify.

    Example: ``scan_folder(Path("flowers"), "train").classes`` is ``("daisy", "rose", "tulip")``
    for ``flowers/train/{daisy,rose,tulip}/*.jpg``.
    """
    root = Path(directory) / split
    if not root.is_dir():
        raise DataError(
            f"{root}: missing {split} folder, expected {Path(directory)}/{split}/<class>/<image files>"
        )
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)
    if not class_dirs:
        raise DataError(f"{root}: no class folders, expected one sub-folder of images per class")
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        images = sorted(
            (p for p in class_dir.iterdir() if _visible(p) and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
            key=lambda p: p.name,
        )
        if not images:
            raise DataError(
                f"{class_dir}: class folder has no images, expected files ending in "
                f"{', '.join(IMAGE_SUFFIXES)} (sub-folders are not searched)"
            )
        files.extend(images)
        labels.extend([label] * len(images))
    grayscale = True
    size: tuple[int, int] | None = None
    first_differing: Path | None = None
    for i, path in enumerate(files):
        mode, hw = _read_header(path)
        grayscale = grayscale and mode in GRAYSCALE_MODES
        if i == 0:
            size = hw
        elif first_differing is None and hw != size:
            first_differing = path
    label_array = np.asarray(labels, dtype=np.int64)
    label_array.flags.writeable = False
    return FolderIndex(
        files=tuple(files),
        labels=label_array,
        classes=tuple(p.name for p in class_dirs),
        mode_channels=1 if grayscale else 3,
        size=None if first_differing is not None else size,
        first_differing=first_differing,
    )


def check_same_classes(train: FolderIndex, test: FolderIndex, directory: Path) -> None:
    """Raise a one-line :class:`DataError` unless train and test have the same class folders.

    Example: ``check_same_classes(scan_folder(d, "train"), scan_folder(d, "test"), d)``
    """
    if train.classes == test.classes:
        return
    only_train = sorted(set(train.classes) - set(test.classes))
    only_test = sorted(set(test.classes) - set(train.classes))
    parts = [f"only in train: {', '.join(only_train)}" if only_train else "",
             f"only in test: {', '.join(only_test)}" if only_test else ""]
    raise DataError(
        f"{directory}: train and test must have the same class folders; {'; '.join(p for p in parts if p)}"
    )


def _check_request(where: Path, channels: int | None, image_size) -> tuple[int, int] | None:
    if channels is not None and channels not in (1, 3):
        raise DataError(f"{where}: channels must be 1 or 3, got {channels!r}")
    if image_size is None:
        return None
    try:
        h, w = (int(s) for s in image_size)
        ok = (h, w) == tuple(image_size) and h > 0 and w > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DataError(f"{where}: image_size must be two positive integers [H, W], got {image_size!r}")
    return h, w


def _eight_bit(im: Image.Image, path: Path) -> Image.Image:
    """A 16-bit greyscale image as 8-bit "L", rounding v / 257 (Pillow's own convert clips at 255)."""
    v = np.asarray(im).astype(np.int64)
    if v.size and (v.min() < 0 or v.max() > 65535):
        raise DataError(f"{path}: {im.mode} pixel values {v.min()}..{v.max()} are not 16-bit, expected 0..65535")
    return Image.fromarray(((v * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def decode_image(path: Path, channels: int, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image file to a uint8 array C x H x W.

    The image is converted to "L" (``channels=1``) or "RGB" (``channels=3``) and then, when
    ``image_size`` (H, W) is given and differs, resized with Pillow's ``Image.BILINEAR`` filter
    (``reducing_gap=None``: an exact, antialiased bilinear resampling, not a draft decode).
    A file that cannot be decoded (truncated, corrupt) raises a one-line :class:`DataError`
    naming it.

    Example: ``decode_image(Path("cat.png"), 3, (32, 32)).shape`` is ``(3, 32, 32)``.
    """
    path = Path(path)
    _check_request(path, channels, image_size)
    try:
        with Image.open(path) as im:
            if im.mode in _SIXTEEN_BIT_MODES:
                im = _eight_bit(im, path)
            im = im.convert("L" if channels == 1 else "RGB")
            if image_size is not None:
                h, w = image_size
                im = im.resize((int(w), int(h)), Image.BILINEAR, reducing_gap=None)
            arr = np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except Exception as e:  # a corrupt file can fail in almost any way inside Pillow
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    if arr.ndim == 2:
        return arr[None].copy()
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _different_sizes(index: FolderIndex) -> DataError:
    first, other = index.files[0], index.first_differing
    (h0, w0), (h, w) = _read_header(first)[1], _read_header(other)[1]
    return DataError(
        f"{other}: image is {h}x{w} (HxW) but {first} is {h0}x{w0}; images of different sizes must be "
        f"resized, set data.image_size: [H, W] (e.g. [{h0}, {w0}])"
    )


def _target(index: FolderIndex, directory: Path, channels: int | None, image_size) -> tuple[int, tuple[int, int]]:
    """(channels, (H, W)) of the decoded images, or the error for a folder of mixed sizes."""
    image_size = _check_request(directory, channels, image_size)
    if image_size is None:
        if index.size is None:
            raise _different_sizes(index)
        image_size = index.size
    return (index.mode_channels if channels is None else channels), image_size


def load_folder_split(
    directory: Path,
    split: str,
    *,
    channels: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Read a whole split into memory: (x uint8 N x C x H x W, y int64 N, class names).

    ``channels`` defaults to the folder's (1 if every image is greyscale, else 3);
    ``image_size`` (H, W) resizes every image (see :func:`decode_image`). Without it, all
    images must have one size, or a one-line :class:`DataError` names the first that differs.

    Example: ``x, y, classes = load_folder_split(Path("flowers"), "test", image_size=(64, 64))``
    """
    directory = Path(directory)
    return load_folder_index(scan_folder(directory, split), directory, channels=channels, image_size=image_size)


def load_folder_index(
    index: FolderIndex,
    directory: Path,
    *,
    channels: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """:func:`load_folder_split` for a folder already scanned (``index``), so a caller that needed
    the scan for the dataset's facts does not read every header again.

    Example: ``x, y, classes = load_folder_index(scan_folder(root, "train"), root)``
    """
    c, (h, w) = _target(index, Path(directory), channels, image_size)
    x = np.empty((len(index), c, h, w), dtype=np.uint8)
    for i, path in enumerate(index.files):
        x[i] = _decode_checked(path, c, (h, w), image_size is not None)
    return torch.from_numpy(x), torch.from_numpy(index.labels.copy()), index.classes


def _decode_checked(path: Path, channels: int, size: tuple[int, int], resize: bool) -> np.ndarray:
    """decode_image, resizing only on request, and refusing a file whose size changed since the scan."""
    arr = decode_image(path, channels, size if resize else None)
    if arr.shape[1:] != size:
        raise DataError(
            f"{path}: image is {arr.shape[1]}x{arr.shape[2]} (HxW) but the folder's images are "
            f"{size[0]}x{size[1]}; was the file changed after the folder was scanned?"
        )
    return arr


class FolderImages(torch.utils.data.Dataset):
    """A map-style dataset over a scanned folder that decodes one image per item.

    ``dataset[i]`` is ``(uint8 tensor C x H x W, int label)``; ``labels`` (int64 tensor) and
    ``classes`` are known from the scan, without decoding. It holds only paths and labels, so
    it pickles cheaply into DataLoader worker processes. ``channels`` and ``image_size`` are
    as in :func:`load_folder_split` (a folder of mixed sizes needs ``image_size``).

    Example::

        images = FolderImages(scan_folder(Path("flowers"), "train"), image_size=(64, 64))
        x, label = images[0]
    """

    def __init__(self, index: FolderIndex, channels: int | None = None,
                 image_size: tuple[int, int] | None = None) -> None:
        where = index.files[0].parent.parent if index.files else Path(".")
        self.channels, self.image_size = _target(index, where, channels, image_size)
        self.resize = image_size is not None
        self.files = index.files
        self.labels = torch.from_numpy(index.labels.copy())
        self.classes = index.classes

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every item."""
        return (self.channels, *self.image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        arr = _decode_checked(self.files[i], self.channels, self.image_size, self.resize)
        return torch.from_numpy(arr), int(self.labels[i])
