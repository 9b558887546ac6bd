"""Data sets: finding, reading and checking the DATA argument of `cnnc train`/`eval`, the images of
`cnnc predict`, and cutting a split into shuffled batches.

This module owns the three data layouts of the contract and every error a user's data can cause
(always a `DataError` naming the file and what is wrong, never a traceback):

1. A folder of images, ``DATA/train/<class>/*`` and optionally ``DATA/test/<class>/*``.
   Classes are numbered in sorted order of the ``train/`` folder names; ``test/`` uses the same
   list and may lack a class but not add one. Files ending in .png, .jpg, .jpeg, .bmp or .gif
   (any case) are images; other files, hidden entries (``.DS_Store``, ``.ipynb_checkpoints``)
   and sub-folders of a class folder are ignored. Images are decoded with Pillow, in sorted
   file-name order, and must already have the model's size and channel count:

   - a 1-channel model accepts modes ``L`` (8-bit gray), ``1`` (black and white, read as 0/255)
     and ``P`` (palette) when every colour of its palette is a gray and it has no transparency;
   - a 3-channel model accepts ``RGB`` and ``P`` without transparency (palette entries are
     RGB colours, so a gray-palette GIF is fine here too);
   - anything else is an error giving the image's channel count and mode: ``RGB`` or colour
     ``P`` for a 1-channel model, ``L``/``1`` for a 3-channel one, ``LA``/``PA`` (2),
     ``RGBA``/``CMYK`` and ``P`` with transparency (4), and 16/32-bit modes (``I;16``, ``I``,
     ``F``), which have no lossless 8-bit reading.

   Nothing is resized. An animated GIF contributes its first frame. For a model with a loss per
   pixel each split holds ``images/`` and ``masks/`` in place of class folders (`_load_mask_folders`).
2. An ``.npz`` file, or a folder holding exactly one, with ``x_train, y_train, x_test, y_test``
   as Keras's mnist.npz. Images are N x H x W (1-channel models only), N x C x H x W or
   N x H x W x C: a 4-d array is read as NCHW when its trailing dims equal the model's (C, H, W),
   else as NHWC when they equal (H, W, C); NCHW wins when both match (e.g. 3x3x3). uint8 is
   scaled to [0, 1], float16/32/64 is taken as is (it must be finite), other dtypes are errors.
   Labels are integers (float labels only when all are whole numbers), shape N or N x 1; for a
   model with a loss per pixel they are masks, N x H x W (or N x 1 x H x W), a class per pixel.
3. A folder with the MNIST/Fashion-MNIST IDX files ``train-images-idx3-ubyte``,
   ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
   optionally ``.gz`` (the uncompressed file wins when both exist). The IDX header is parsed here.

A folder that has ``train/`` or ``test/`` sub-folders is an image folder; otherwise one with IDX
files is IDX; otherwise one with a single .npz is npz. In every layout the test split may be
absent altogether (``x_test`` and ``y_test`` are then None) unless it is the only split asked
for; half of a split (images without labels) is always an error. For npz and IDX data the class
names are "0", "1", ... up to ``num_classes`` (or up to the largest label when it is not given).
"""
from __future__ import annotations

import gzip
import math
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnc.diagnostics import DataError
from cnnc.files import why_missing
from cnnc.memory import default_limit, human
from cnnc.npz import NpzReader

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLITS = ("train", "test")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/).
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
EXPECTED_LAYOUTS = (
    "expected train/<class>/ image folders (and optionally test/<class>/), "
    "an .npz with x_train, y_train, x_test, y_test, "
    "or MNIST IDX files (train-images-idx3-ubyte[.gz], ...)"
)


@dataclass
class Dataset:
    """A loaded data set: float32 N x C x H x W images and int64 labels per split."""

    x_train: np.ndarray | None
    y_train: np.ndarray | None
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    classes: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---------------------------------------------------------------------------------------------
# Entry points


def load_dataset(path, input_shape, num_classes=None, split=SPLITS, progress=None, label_shape=()) -> Dataset:
    """Read DATA in whichever of the three layouts it has, checked against the model's (C, H, W).

    `label_shape` is one image's label: () for a class per image, (H, W) for a mask, a class per
    pixel (a model whose loss is per pixel): npz and IDX labels are then N x H x W arrays, and an
    image folder holds ``images/`` and ``masks/`` per split (see `_load_mask_folders`).

    `split` names the splits to load ("train", "test"); the others are left None. Labels must
    lie in [0, num_classes) when num_classes is given. Decoding a folder of images takes a while
    (about 0.5 ms an image), so `progress(done, total)`, if given, is called as images are read.
    """
    path = Path(path)
    input_shape = tuple(int(d) for d in input_shape)
    split = tuple(split)
    unknown = set(split) - set(SPLITS)
    if unknown or not split:
        raise ValueError(f"split must name some of {SPLITS}, got {split!r}")
    if not path.exists():
        raise DataError(path, why_missing(path))
    if not path.is_file() and not path.is_dir():
        raise DataError(path, f"is neither a file nor a folder; {EXPECTED_LAYOUTS}")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return _load_npz(path, input_shape, num_classes, split, label_shape)
        hint = "pass the folder that holds the IDX files" if "idx" in path.name else None
        raise DataError(path, f"not a data set: {EXPECTED_LAYOUTS}", hint=hint)
    layout = _detect_layout(path)
    if layout == "images" and label_shape:
        return _load_mask_folders(path, input_shape, num_classes, split, progress)
    if layout == "images":
        return _load_image_folders(path, input_shape, num_classes, split, progress)
    if layout == "idx":
        return _load_idx_folder(path, input_shape, num_classes, split, label_shape)
    return _load_npz(layout, input_shape, num_classes, split, label_shape)


def load_images(paths, input_shape) -> np.ndarray:
    """Decode image files (for `cnnc predict`) into a float32 N x C x H x W array in [0, 1]."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise DataError(p, why_missing(p, "no such image file") if not p.exists() else "is not a file")
    return _to_float(_decode_all(paths, tuple(int(d) for d in input_shape)))


class Batches:
    """One epoch of mini-batches: (x, y) pairs of `batch_size` rows, the last one possibly short.

    With a numpy Generator the order is a permutation drawn once, here, so the batches of an
    epoch are fixed by the generator's state when they are made; without one the order is kept
    (evaluation). `len()` is the number of batches, for progress bars. `transform(x, rows)`, if
    given, returns the images x of training rows `rows` as a step sees them (augmented).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, rng=None, transform=None):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        if int(batch_size) < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.x, self.y, self.batch_size = x, y, int(batch_size)
        self.order = rng.permutation(len(x)) if rng is not None else None
        self.transform = transform

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.x), self.batch_size):
            rows = self._rows(start)
            yield self._images(rows), self.y[rows]

    def shares(self, rank: int, ranks: int):
        """Process `rank`'s share of each batch when `ranks` processes share every step:
        (x, y, total, start), its images and labels, the batch's size and where its share
        begins in the batch. Only the share's rows are copied."""
        for start in range(0, len(self.x), self.batch_size):
            rows = self._rows(start)
            total = len(range(len(self.x))[rows]) if isinstance(rows, slice) else len(rows)
            part = rank_share(total, rank, ranks)
            mine = np.arange(len(self.x))[rows][part] if isinstance(rows, slice) else rows[part]
            yield self._images(mine), self.y[mine], total, part.start

    def _images(self, rows):
        if self.transform is None:
            return self.x[rows]
        return self.transform(self.x[rows], np.arange(len(self.x))[rows] if isinstance(rows, slice) else rows)

    def _rows(self, start: int):
        if self.order is None:
            return slice(start, start + self.batch_size)
        return self.order[start : start + self.batch_size]


def rank_share(n: int, rank: int, ranks: int) -> slice:
    """Process `rank`'s contiguous share of n items cut among `ranks` (sizes differ by one at most)."""
    return slice(rank * n // ranks, (rank + 1) * n // ranks)


def batches(x, y, batch_size, rng=None, transform=None) -> Batches:
    """Shuffled (with `rng`) mini-batches of (x, y); see `Batches`."""
    return Batches(x, y, batch_size, rng, transform)


# ---------------------------------------------------------------------------------------------
# Which layout


def _detect_layout(folder: Path):
    """'images', 'idx', or the path of the folder's one .npz; a DataError for anything else."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError as e:
        raise DataError(folder, f"cannot read folder: {e.strerror}") from None
    visible = [e for e in entries if not e.startswith(".")]
    if not visible:
        raise DataError(folder, f"the folder is empty; {EXPECTED_LAYOUTS}")
    if any((folder / s).is_dir() for s in SPLITS):
        return "images"
    idx_names = {n for pair in IDX_FILES.values() for n in pair}
    if any(e in idx_names or (e.endswith(".gz") and e[:-3] in idx_names) for e in visible):
        return "idx"
    npzs = [e for e in visible if e.lower().endswith(".npz") and (folder / e).is_file()]
    if len(npzs) == 1:
        return folder / npzs[0]
    if len(npzs) > 1:
        raise DataError(folder, f"holds {len(npzs)} .npz files ({', '.join(npzs)}); "
                        "expected exactly one", hint="pass the .npz file itself")
    shown = ", ".join(visible[:5]) + (", ..." if len(visible) > 5 else "")
    hint = None
    if any(e.lower().endswith(IMAGE_SUFFIXES) for e in visible):
        hint = "put the images in train/<class>/ folders, one folder per class"
    raise DataError(folder, f"matches no data layout (it holds {shown}); {EXPECTED_LAYOUTS}",
                    hint=hint)


# ---------------------------------------------------------------------------------------------
# Layout 1: folders of images


def _load_image_folders(root: Path, input_shape, num_classes, split, progress) -> Dataset:
    class_root = root / "train" if (root / "train").is_dir() else root / "test"
    _require_splits(root, split, {s: (root / s).is_dir() for s in SPLITS}, "folder")
    classes = _class_folders(class_root)
    if num_classes is not None and len(classes) > num_classes:
        raise DataError(class_root, f"has {len(classes)} class folders but the model's output "
                        f"has {num_classes} classes")
    # List every split before decoding any image: layout mistakes surface at once, and the
    # progress total is known.
    listed = {s: _list_split_folder(root / s, classes)
              for s in SPLITS if s in split and (root / s).is_dir()}
    total = sum(len(files) for files, _ in listed.values())
    _check_fits(root, total * math.prod(input_shape) * 5, f"{total:,} images of {_fmt(input_shape)} "
                "take as bytes and float32")
    counter = _Progress(progress, total)
    out = {s: (_to_float(_decode_all(files, input_shape, counter)), labels)
           for s, (files, labels) in listed.items()}
    return _dataset(out, classes, f"image folders in {root}")


def _class_folders(split_dir: Path) -> list[str]:
    names = sorted(e.name for e in _scan(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DataError(split_dir, "has no class folders; expected "
                        f"{split_dir.name}/<class>/*.png, one folder per class",
                        hint="put each class's images into a folder named after the class")
    return names


def _list_split_folder(split_dir: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """The image files of one split and their labels, numbered by position in `classes`."""
    files, labels = [], []
    for name in _class_folders(split_dir):
        if name not in classes:
            raise DataError(split_dir / name, f"is a class that train/ lacks "
                            f"(train/ has {', '.join(classes)})")
        images = _image_files(split_dir / name)
        if not images:
            raise DataError(split_dir / name, "class folder without images "
                            f"(expected files ending in {', '.join(IMAGE_SUFFIXES)})")
        files += images
        labels += [classes.index(name)] * len(images)
    return files, np.asarray(labels, dtype=np.int64)


class _Progress:
    """Calls progress(done, total) every `every` images and at the end, when a callback is given."""

    def __init__(self, callback, total: int, every: int = 500):
        self.callback, self.total, self.every, self.done = callback, total, every, 0

    def advance(self) -> None:
        self.done += 1
        if self.callback and (self.done % self.every == 0 or self.done == self.total):
            self.callback(self.done, self.total)


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        folder / e.name
        for e in _scan(folder)
        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES)
    )


def _scan(folder: Path) -> list:
    """The entries of a folder of the data set; a DataError naming it when it cannot be read."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as e:
        raise DataError(folder, f"cannot read folder: {e.strerror}",
                        hint="check its permissions" if isinstance(e, PermissionError) else None) from None


def _decode_all(files: list[Path], input_shape, counter: _Progress | None = None) -> np.ndarray:
    """Decode every file into one preallocated uint8 N x C x H x W array (the files are counted
    first, so 100,000 images cost one array and no list of small ones)."""
    out = np.empty((len(files), *input_shape), dtype=np.uint8)
    for i, f in enumerate(files):
        out[i] = _decode(f, input_shape)
        if counter is not None:
            counter.advance()
    return out


def _decode(path: Path, input_shape) -> np.ndarray:
    """One image as a uint8 C x H x W array, under the mode rules of the module docstring."""
    from PIL import Image

    c, h, w = input_shape
    if c not in (1, 3):
        raise DataError(path, f"the model takes {c}-channel input but image files can only feed "
                        "1-channel (gray) or 3-channel (RGB) models",
                        hint="use an .npz with N x C x H x W arrays instead")
    target = "L" if c == 1 else "RGB"
    try:
        with warnings.catch_warnings():
            # Pillow warns of decompression bombs; an image larger than the model is refused here
            # from its header, before it is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            if im.width * im.height > w * h:
                raise DataError(path, f"the model takes {c}x{h}x{w} images but this one is "
                                f"{len(im.getbands())}x{im.height}x{im.width} ({im.mode})",
                                hint="cnnc does not resize or convert images; prepare them "
                                "with the model's size and channel count")
            im.load()
            if im.mode.startswith(("I", "F")):
                raise DataError(path, f"has more than 8 bits per pixel (mode {im.mode}); the "
                                f"model takes 8-bit {c}x{h}x{w} images",
                                hint="save it as 8-bit; cnnc does not resize or convert images")
            channels, mode = _channels(im, c)
            if channels != c or im.size != (w, h):
                raise DataError(path, f"the model takes {c}x{h}x{w} images but this one is "
                                f"{channels}x{im.height}x{im.width} ({mode})",
                                hint="cnnc does not resize or convert images; prepare them "
                                "with the model's size and channel count")
            arr = np.asarray(im if im.mode == target else im.convert(target), dtype=np.uint8)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for corrupt files
        raise DataError(path, f"cannot read image: {e}") from None
    return arr[None] if c == 1 else arr.transpose(2, 0, 1)


def _channels(im, wanted: int) -> tuple[int, str]:
    """The channel count an image counts as for a model taking `wanted` channels, and a label."""
    mode = im.mode
    if mode in ("L", "1"):
        return 1, mode
    if mode == "RGB":
        return 3, mode
    if mode == "P":
        if "transparency" in im.info:
            return 4, "P with transparency"
        if wanted == 1 and not _gray_palette(im):
            return 3, "P with colour palette"
        return wanted if wanted in (1, 3) else 3, mode
    return len(im.getbands()), mode


def _gray_palette(im) -> bool:
    """Whether every palette entry the image uses is a gray (r == g == b)."""
    palette = np.frombuffer(im.palette.tobytes(), dtype=np.uint8)
    rgb = palette[: len(palette) // 3 * 3].reshape(-1, 3) if im.palette.mode == "RGB" else None
    if rgb is None:
        return False
    used = np.unique(np.asarray(im))
    used = used[used < len(rgb)]
    return bool(np.all((rgb[used, 0] == rgb[used, 1]) & (rgb[used, 1] == rgb[used, 2])))


# ---------------------------------------------------------------------------------------------
# Layout 1 for a class per pixel: folders of images and their masks


MASK_FOLDERS = ("images", "masks")


def _load_mask_folders(root: Path, input_shape, num_classes, split, progress) -> Dataset:
    """``DATA/train/images/NAME.png`` with its mask ``DATA/train/masks/NAME.png`` (any image
    suffix; image and mask are paired by the name without it), and optionally the same under
    ``test/``. A mask is a 1-channel image of the model's output H x W whose pixel values are the
    class indices: mode ``L``, ``P`` (the palette indices; VOC's masks) or ``1`` (0 and 1)."""
    _require_splits(root, split, {s: (root / s).is_dir() for s in SPLITS}, "folder")
    listed = {s: _list_mask_split(root / s) for s in SPLITS if s in split and (root / s).is_dir()}
    total = sum(len(images) for images, _ in listed.values())
    per_image = math.prod(input_shape) * 5 + math.prod(input_shape[1:]) * 9  # uint8 + float32; uint8 + int64
    _check_fits(root, total * per_image, f"{total:,} images of {_fmt(input_shape)} and their masks take "
                "as bytes, float32 and int64")
    counter = _Progress(progress, total)
    out = {}
    for s, (images, masks) in listed.items():
        x = _to_float(_decode_all(images, input_shape, counter))
        y = np.stack([_decode_mask(m, input_shape[1:]) for m in masks]).astype(np.int64) if masks else \
            np.zeros((0, *input_shape[1:]), np.int64)
        _check_labels(root / s / "masks", y, num_classes, "a mask")
        out[s] = (x, y)
    return _numbered_dataset(out, num_classes, f"image and mask folders in {root}")


def _list_mask_split(split_dir: Path) -> tuple[list[Path], list[Path]]:
    """The images of a split and their masks, paired by name; a DataError for a missing folder, an
    image without a mask or a mask without an image."""
    folders = {}
    for name in MASK_FOLDERS:
        folder = split_dir / name
        if not folder.is_dir():
            raise DataError(split_dir, f"has no {name}/ folder; a model with a loss per pixel takes "
                            f"{split_dir.name}/images/*.png and their masks {split_dir.name}/masks/*.png",
                            hint="put each image in images/ and its mask, a class index per pixel, "
                            "under the same name in masks/")
        folders[name] = {}
        for f in _image_files(folder):
            if f.stem in folders[name]:
                raise DataError(f, f"has the name of {folders[name][f.stem].name} without its suffix; "
                                "images and masks are paired by that name")
            folders[name][f.stem] = f
    images, masks = folders["images"], folders["masks"]
    if not images:
        raise DataError(split_dir / "images", f"holds no images (files ending in {', '.join(IMAGE_SUFFIXES)})")
    for stem, f in images.items():
        if stem not in masks:
            raise DataError(f, f"has no mask: expected {split_dir.name}/masks/{stem}.png")
    for stem, f in masks.items():
        if stem not in images:
            raise DataError(f, f"is a mask without an image: expected {split_dir.name}/images/{stem}.png")
    stems = sorted(images)
    return [images[s] for s in stems], [masks[s] for s in stems]


def _decode_mask(path: Path, label_shape) -> np.ndarray:
    """One mask as an H x W array of class indices."""
    from PIL import Image

    h, w = label_shape
    try:
        with Image.open(path) as im:
            if im.size != (w, h):
                raise DataError(path, f"the model's output has {h}x{w} pixels but this mask is "
                                f"{im.height}x{im.width}", hint="cnnc does not resize masks")
            if im.mode not in ("L", "P", "1"):
                raise DataError(path, f"a mask must be a 1-channel image of class indices (mode L, P or 1), "
                                f"not {im.mode}", hint="save the mask as 8-bit gray with the class index as "
                                "each pixel's value")
            return np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for corrupt files
        raise DataError(path, f"cannot read mask: {e}") from None


# ---------------------------------------------------------------------------------------------
# Layout 2: npz


def _load_npz(path: Path, input_shape, num_classes, split, label_shape=()) -> Dataset:
    """Only the x_/y_ arrays of the splits asked for are read, each after its header is checked."""
    with NpzReader(path, ".npz file (a zip of .npy arrays) holding x_train, y_train, x_test, y_test") as npz:
        keys = set(npz.names)
        present = {s: f"x_{s}" in keys or f"y_{s}" in keys for s in SPLITS}
        _require_splits(path, split, present, "npz")
        out = {}
        for s in SPLITS:
            if s not in split or not present[s]:
                continue
            for k in (f"x_{s}", f"y_{s}"):
                if k not in keys:
                    holds = ", ".join(sorted(keys))
                    raise DataError(path, f"has no array '{k}' (it holds {holds})")
            shape, dtype = npz.checked_header(f"x_{s}")
            _check_fits(path, math.prod(shape) * (dtype.itemsize + 4), f"x_{s} ({_fmt(shape)} {dtype}) "
                        "takes as read and as float32")
            x = _images_from_array(npz.read(f"x_{s}"), input_shape, path, f"x_{s}")
            y = _labels_from_array(npz.read(f"y_{s}"), path, f"y_{s}", label_shape)
            _check_labels(path, y, num_classes, f"y_{s}")
            _check_lengths(path, x, y, f"x_{s}", f"y_{s}")
            out[s] = (x, y)
    return _numbered_dataset(out, num_classes, f"{path}")


# ---------------------------------------------------------------------------------------------
# Layout 3: IDX files


def _load_idx_folder(folder: Path, input_shape, num_classes, split, label_shape=()) -> Dataset:
    found = {s: [_idx_file(folder, n) for n in IDX_FILES[s]] for s in SPLITS}
    _require_splits(folder, split, {s: any(found[s]) for s in SPLITS}, "idx")
    out = {}
    for s in SPLITS:
        if s not in split or not any(found[s]):
            continue
        for name, f in zip(IDX_FILES[s], found[s]):
            if f is None:
                raise DataError(folder / name, f"missing (the folder holds the other {s} file)")
        images_path, labels_path = found[s]
        x = _images_from_array(read_idx(images_path), input_shape, images_path)
        y = _labels_from_array(read_idx(labels_path), labels_path, label_shape=label_shape)
        _check_labels(labels_path, y, num_classes)
        if len(x) != len(y):
            raise DataError(labels_path, f"holds {len(y)} labels but {images_path.name} "
                            f"holds {len(x)} images")
        out[s] = (x, y)
    return _numbered_dataset(out, num_classes, f"IDX files in {folder}")


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path) -> np.ndarray:
    """An IDX file (optionally gzip-compressed) as a numpy array in native byte order. The header
    is read first and the data only up to the size it gives, so a crafted file (a gzip bomb, dims
    beyond the memory) costs nothing."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES:
                raise DataError(path, f"not an IDX file (bad magic number {magic.hex() or 'none'})")
            ndim = magic[3]
            raw_dims = f.read(4 * ndim)
            if ndim == 0 or len(raw_dims) < 4 * ndim:
                raise DataError(path, f"truncated IDX header ({4 + len(raw_dims)} bytes)")
            dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
            dtype = np.dtype(IDX_DTYPES[magic[2]])
            expected = math.prod(dims) * dtype.itemsize
            _check_fits(path, expected, f"the header says {_fmt(dims)}")
            data = f.read(expected + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(path, f"cannot read IDX file: {e}") from None
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has extra bytes"
        holds = len(data) if len(data) < expected else f"more than {expected}"
        raise DataError(path, f"{problem}: the header says {_fmt(dims)} ({expected} bytes of data) "
                        f"but the file holds {holds}")
    array = np.frombuffer(data, dtype=dtype).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _check_fits(path, size: int, what: str) -> None:
    """A DataError when `size` bytes would not fit in the memory available."""
    limit = default_limit()
    if limit is not None and size > limit:
        raise DataError(path, f"{what}: {human(size)}, more than the {human(limit)} of memory available")


# ---------------------------------------------------------------------------------------------
# Arrays: layout, scaling and labels (shared by npz and IDX)


def _images_from_array(x: np.ndarray, input_shape, path, name: str = "the file") -> np.ndarray:
    """Images as float32 N x C x H x W, from N x H x W, N x C x H x W or N x H x W x C."""
    c, h, w = input_shape
    model = f"{c}x{h}x{w}"
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise DataError(path, f"{name} has dtype {x.dtype}; expected uint8 (0-255) or float images")
    if x.ndim == 3 and x.shape[1:] == (h, w) and c == 1:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1:] == (c, h, w):
        pass
    elif x.ndim == 4 and x.shape[1:] == (h, w, c):
        x = x.transpose(0, 3, 1, 2)
    else:
        layouts = f"N x {model} or N x {h}x{w}x{c}" + (f" or N x {h}x{w}" if c == 1 else "")
        raise DataError(path, f"{name} has shape {_fmt(x.shape)} but the model takes {model} "
                        f"images (expected {layouts})",
                        hint="cnnc does not resize or convert images")
    if x.dtype == np.uint8:
        return _to_float(np.ascontiguousarray(x))
    if not np.all(np.isfinite(x)):
        raise DataError(path, f"{name} holds NaN or infinite values")
    biggest = float(np.abs(x).max()) if x.size else 0.0
    if biggest > float(np.finfo(np.float32).max):
        raise DataError(path, f"{name} holds values up to {biggest:g}, beyond float32's range "
                        f"(±{np.finfo(np.float32).max:g})", hint="scale the images to [0, 1]")
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x if x.flags.writeable else x.copy()


def _to_float(u8: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1], dividing in float32 as torchvision's ToTensor does."""
    x = u8.astype(np.float32)
    x /= np.float32(255)
    return x


def _labels_from_array(y: np.ndarray, path, name: str = "the file", label_shape=()) -> np.ndarray:
    if label_shape:
        return _masks_from_array(y, path, name, label_shape)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = "store class indices, e.g. y.argmax(axis=1)" if y.ndim == 2 else None
        if y.ndim == 3:
            hint = ("a class per pixel needs a model that ends in a CxHxW output with `softmax axis=channels`"
                    " (or logits) before `loss cross_entropy`")
        raise DataError(path, f"{name} has shape {_fmt(y.shape)}; expected one class index "
                        "per image", hint=hint)
    return _integer_labels(y, path, name)


def _masks_from_array(y: np.ndarray, path, name: str, label_shape) -> np.ndarray:
    """Masks, a class per pixel: N x H x W (or N x 1 x H x W) for a model whose output is C x H x W."""
    if y.ndim == 4 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 3 or y.shape[1:] != tuple(label_shape):
        hint = ("a model with a loss per pixel takes a mask per image, not one class"
                if y.ndim in (1, 2) else "cnnc does not resize masks")
        raise DataError(path, f"{name} has shape {_fmt(y.shape)} but the model's output has "
                        f"{_fmt(label_shape)} pixels: expected N x {_fmt(label_shape)} masks, "
                        "a class index per pixel", hint=hint)
    return _integer_labels(y, path, name)


def _integer_labels(y: np.ndarray, path, name: str) -> np.ndarray:
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y) & (y == np.round(y))):
            raise DataError(path, f"{name} holds labels that are not whole numbers; "
                            "expected class indices")
        if y.size and np.abs(y).max() >= 2**53:  # beyond int64 (and exact floats): no class index
            raise DataError(path, f"{name} holds label {np.abs(y).max():g}; expected class indices")
    elif y.dtype.kind not in "iub":
        raise DataError(path, f"{name} has dtype {y.dtype}; expected integer class labels")
    return y.astype(np.int64)


def _fmt(shape) -> str:
    return "x".join(map(str, shape)) if len(shape) else "scalar"


def _check_lengths(path, x, y, xname, yname):
    if len(x) != len(y):
        raise DataError(path, f"{xname} holds {len(x)} images but {yname} holds {len(y)} labels")


def _check_labels(path, y: np.ndarray, num_classes, name: str = "the file"):
    if len(y) == 0:
        return
    low, high = int(y.min()), int(y.max())
    if low < 0:
        raise DataError(path, f"{name} holds label {low}; class indices start at 0")
    if num_classes is not None and high >= num_classes:
        hint = None
        if y.ndim == 3:
            hint = ("a mask's values are class indices; a 0/255 black-and-white mask means classes 0 and 255: "
                    "store it as 0/1" if high == 255 else "a mask's values are class indices")
        raise DataError(path, f"{name} holds label {high} but the model has {num_classes} "
                        f"classes (0-{num_classes - 1})", hint=hint)


# ---------------------------------------------------------------------------------------------
# Assembling


def _require_splits(where, split, present: dict, layout: str):
    """The train split must exist when asked for; test only when it is the only split asked for."""
    names = {"folder": {"train": "train/ folder", "test": "test/ folder"},
             "npz": {"train": "x_train/y_train arrays", "test": "x_test/y_test arrays"},
             "idx": {s: f"{IDX_FILES[s][0]} file" for s in SPLITS}}[layout]
    for s in split:
        required = s == "train" or split == ("test",)
        if required and not present[s]:
            raise DataError(where, f"has no {names[s]}; {EXPECTED_LAYOUTS}")


def _numbered_dataset(out: dict, num_classes, source: str) -> Dataset:
    """A Dataset whose classes are numbers, from the labels when num_classes is not given."""
    if num_classes is None:
        num_classes = max((int(y.max()) + 1 for _, y in out.values() if len(y)), default=0)
    return _dataset(out, [str(i) for i in range(num_classes)], source)


def _dataset(out: dict, classes: list[str], source: str) -> Dataset:
    train, test = out.get("train", (None, None)), out.get("test", (None, None))
    return Dataset(train[0], train[1], test[0], test[1], classes=classes, source=source)
