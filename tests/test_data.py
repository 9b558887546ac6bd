"""cnnc.train.data: the three DATA layouts, their errors, batches and predict's image loading."""
from __future__ import annotations

import gzip
import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnc.diagnostics import DataError
from cnnc.train.data import Dataset, batches, load_dataset, load_images, read_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")
GRAY = (1, 8, 8)
RGB = (3, 8, 8)


# ---------------------------------------------------------------------------------------------
# helpers


def save_image(path: Path, array: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def red_palette_image() -> Image.Image:
    return Image.fromarray(np.array([[[200, 0, 0]] * 8] * 8, np.uint8)).convert("P")


def gray(value: int, size=(8, 8)) -> np.ndarray:
    return np.full(size, value, dtype=np.uint8)


def image_folder(root: Path, classes=("cat", "dog"), per_class=2, test=True, size=(8, 8)) -> Path:
    """train/<class>/ (and test/<class>/) of gray PNGs whose pixel value encodes class and index."""
    for split in ("train", "test") if test else ("train",):
        for c, name in enumerate(classes):
            for i in range(per_class):
                save_image(root / split / name / f"{i}.png", gray(10 * c + i, size))
    return root


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    types = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    array = np.asarray(array)
    array = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    header = bytes([0, 0, types[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def idx_folder(root: Path, n_train=5, n_test=3, compress=False, size=(8, 8)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte",
                  rng.integers(0, 256, (n, *size), dtype=np.uint8), compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte",
                  (np.arange(n) % 10).astype(np.uint8), compress)
    return root


def npz_file(path: Path, x_train=None, y_train=None, x_test=None, y_test=None, **extra) -> Path:
    rng = np.random.default_rng(1)
    arrays = {
        "x_train": rng.integers(0, 256, (6, 8, 8), dtype=np.uint8) if x_train is None else x_train,
        "y_train": np.arange(6, dtype=np.uint8) % 3 if y_train is None else y_train,
        "x_test": rng.integers(0, 256, (4, 8, 8), dtype=np.uint8) if x_test is None else x_test,
        "y_test": np.arange(4, dtype=np.uint8) % 3 if y_test is None else y_test,
    }
    arrays.update(extra)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not False})
    return path


def data_error(path, shape=GRAY, **kw) -> DataError:
    with pytest.raises(DataError) as info:
        load_dataset(path, shape, **kw)
    return info.value


# ---------------------------------------------------------------------------------------------
# Layout 1: image folders


def test_image_folder_gray(tmp_path):
    ds = load_dataset(image_folder(tmp_path, classes=("dog", "cat", "bird")), GRAY)
    assert isinstance(ds, Dataset)
    assert ds.classes == ["bird", "cat", "dog"]  # sorted folder names
    assert ds.x_train.shape == (6, 1, 8, 8) and ds.x_train.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.y_train.tolist() == [0, 0, 1, 1, 2, 2]
    # bird was written as class index 2 (value 20 + i); sorted it becomes label 0.
    assert ds.x_train[0, 0, 0, 0] == np.float32(20) / np.float32(255)
    assert ds.x_train[1, 0, 0, 0] == np.float32(21) / np.float32(255)
    assert ds.x_test.shape == (6, 1, 8, 8) and ds.y_test.tolist() == ds.y_train.tolist()
    assert "image folders" in ds.source


def test_image_folder_reports_progress(tmp_path):
    image_folder(tmp_path, per_class=3)
    calls = []
    load_dataset(tmp_path, GRAY, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (12, 12)  # train and test together


def many_images(root: Path, count: int, classes: int = 4) -> Path:
    for i in range(count):
        folder = root / "train" / str(i % classes)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((28, 28), i % 256, np.uint8)).save(folder / f"{i:06d}.png")
    return root


def peak_memory_of_loading(root: Path):
    tracemalloc.start()
    try:
        ds = load_dataset(root, (1, 28, 28))
        return ds, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_image_folder_decodes_into_one_array(tmp_path):
    """Peak memory is the uint8 array plus the float32 result (1.25x the result) and a little for
    the file list; a list of per-image arrays stacked at the end would need 2x."""
    ds, peak = peak_memory_of_loading(many_images(tmp_path, 1000))
    assert ds.x_train.shape == (1000, 1, 28, 28)
    assert peak < 1.25 * ds.x_train.nbytes + 750_000


@pytest.mark.slow
def test_hundred_thousand_images(tmp_path):
    """The same bound as above, 1.25x the result and 750 bytes a file (measured: 1.25x and 480
    bytes a file; the list of 100,000 paths is no longer small beside the images)."""
    ds, peak = peak_memory_of_loading(many_images(tmp_path, 100_000))
    assert ds.x_train.shape == (100_000, 1, 28, 28)
    assert peak < 1.25 * ds.x_train.nbytes + 750 * 100_000


def test_image_folder_rgb_and_every_extension(tmp_path):
    colours = np.zeros((8, 8, 3), dtype=np.uint8)
    colours[..., 0], colours[..., 1], colours[..., 2] = 255, 128, 0
    save_image(tmp_path / "train" / "a" / "x.png", colours)
    save_image(tmp_path / "train" / "a" / "y.BMP", colours)
    save_image(tmp_path / "train" / "b" / "z.jpeg", colours, quality=100)
    save_image(tmp_path / "train" / "b" / "w.jpg", colours, quality=100)
    save_image(tmp_path / "train" / "b" / "v.gif", colours)  # palette (P) image
    (tmp_path / "train" / "b" / "notes.txt").write_text("ignored")
    (tmp_path / "train" / "b" / ".hidden.png").write_bytes(b"ignored")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    ds = load_dataset(tmp_path, RGB)
    assert ds.x_train.shape == (5, 3, 8, 8) and ds.x_test is None and ds.y_test is None
    assert ds.classes == ["a", "b"] and ds.y_train.tolist() == [0, 0, 1, 1, 1]
    np.testing.assert_allclose(ds.x_train[0, :, 3, 3], [1.0, 128 / 255, 0.0], rtol=1e-6)


def test_gray_palette_and_bilevel_images_count_as_one_channel(tmp_path):
    save_image(tmp_path / "train" / "a" / "p.gif", gray(77))  # gray palette GIF
    bilevel = Image.fromarray(np.eye(8, dtype=bool))
    bilevel.save(tmp_path / "train" / "a" / "b.png")
    assert bilevel.mode == "1"
    ds = load_dataset(tmp_path, GRAY)
    assert ds.x_train.shape == (2, 1, 8, 8)
    # sorted: b.png (bilevel, 0/255) then p.gif (77)
    np.testing.assert_array_equal(ds.x_train[0, 0], np.eye(8, dtype=np.float32))
    assert ds.x_train[1, 0, 2, 2] == np.float32(77) / np.float32(255)


@pytest.mark.parametrize(
    "make, model, this",
    [
        (lambda: Image.fromarray(np.zeros((8, 8, 3), np.uint8)), GRAY, "3x8x8 (RGB)"),
        (lambda: Image.fromarray(gray(5)), RGB, "1x8x8 (L)"),
        (lambda: Image.fromarray(gray(5, (10, 12))), GRAY, "1x10x12 (L)"),
        (lambda: Image.fromarray(np.zeros((8, 8, 4), np.uint8)), RGB, "4x8x8 (RGBA)"),
        (lambda: Image.fromarray(np.zeros((8, 8, 2), np.uint8), "LA"), GRAY, "2x8x8 (LA)"),
        (lambda: Image.fromarray(np.zeros((8, 8), np.uint16)), GRAY, "more than 8 bits"),
        (lambda: red_palette_image(), GRAY, "3x8x8 (P with colour palette)"),
    ],
)
def test_image_of_wrong_shape_or_channels_names_file_and_both_shapes(tmp_path, make, model, this):
    bad = tmp_path / "train" / "a" / "bad.png"
    bad.parent.mkdir(parents=True)
    make().save(bad)
    save_image(tmp_path / "train" / "a" / "good.png",
               gray(1) if model == GRAY else np.zeros((8, 8, 3), np.uint8))
    err = data_error(tmp_path, model)
    assert err.path == str(bad)
    assert f"{model[0]}x8x8" in err.message and this in err.message
    assert "resize" in err.hint


def test_palette_image_with_transparency_is_four_channels(tmp_path):
    colours = np.zeros((8, 8, 3), np.uint8)
    colours[:4] = [200, 0, 0]
    path = tmp_path / "train" / "a" / "t.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(colours).quantize(2).save(path, transparency=1)
    err = data_error(tmp_path, RGB)
    assert err.path == str(path) and "4x8x8 (P with transparency)" in err.message


@pytest.mark.parametrize("content", [b"not an image at all", None])
def test_corrupt_or_truncated_image(tmp_path, content):
    path = save_image(tmp_path / "train" / "a" / "x.png", np.random.default_rng(0).integers(
        0, 256, (8, 8), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(content if content is not None else data[: len(data) // 2])
    err = data_error(tmp_path)
    assert err.path == str(path) and "cannot read image" in err.message


def test_class_folder_without_images(tmp_path):
    image_folder(tmp_path, test=False)
    (tmp_path / "train" / "empty").mkdir()
    (tmp_path / "train" / "empty" / "readme.txt").write_text("x")
    err = data_error(tmp_path)
    assert err.path == str(tmp_path / "train" / "empty") and "without images" in err.message


def test_test_class_missing_from_train(tmp_path):
    image_folder(tmp_path)
    save_image(tmp_path / "test" / "emu" / "0.png", gray(3))
    err = data_error(tmp_path)
    assert err.path == str(tmp_path / "test" / "emu") and "train/ lacks" in err.message


def test_test_may_lack_a_class(tmp_path):
    image_folder(tmp_path, classes=("a", "b", "c"), test=False)
    save_image(tmp_path / "test" / "c" / "0.png", gray(3))
    ds = load_dataset(tmp_path, GRAY)
    assert ds.y_test.tolist() == [2]


def test_more_class_folders_than_model_classes(tmp_path):
    image_folder(tmp_path, classes=("a", "b", "c"))
    err = data_error(tmp_path, num_classes=2)
    assert err.path == str(tmp_path / "train") and "3 class folders" in err.message
    assert load_dataset(tmp_path, GRAY, num_classes=3).classes == ["a", "b", "c"]


def test_split_folder_without_class_folders(tmp_path):
    save_image(tmp_path / "train" / "0.png", gray(1))
    err = data_error(tmp_path)
    assert err.path == str(tmp_path / "train") and "no class folders" in err.message


def test_splits_requested(tmp_path):
    image_folder(tmp_path, test=False)
    ds = load_dataset(tmp_path, GRAY, split=("train",))
    assert ds.x_test is None
    err = data_error(tmp_path, split=("test",))
    assert "no test/ folder" in err.message
    image_folder(tmp_path / "other", test=True)
    ds = load_dataset(tmp_path / "other", GRAY, split=("test",))
    assert ds.x_train is None and ds.x_test.shape == (4, 1, 8, 8)


def test_load_images_for_predict(tmp_path):
    a = save_image(tmp_path / "a.png", gray(255))
    b = save_image(tmp_path / "b.png", gray(0))
    x = load_images([a, str(b)], GRAY)
    assert x.shape == (2, 1, 8, 8) and x.dtype == np.float32
    assert x[0].min() == 1.0 and x[1].max() == 0.0
    with pytest.raises(DataError) as info:
        load_images([a, tmp_path / "missing.png"], GRAY)
    assert info.value.path == str(tmp_path / "missing.png")
    with pytest.raises(DataError, match="3x8x8"):
        load_images([a], RGB)


# ---------------------------------------------------------------------------------------------
# Which layout, and paths that are none


def test_missing_path(tmp_path):
    err = data_error(tmp_path / "nope")
    assert err.path == str(tmp_path / "nope") and "no such" in err.message


def test_empty_folder(tmp_path):
    (tmp_path / ".DS_Store").write_text("")
    err = data_error(tmp_path)
    assert err.path == str(tmp_path) and "empty" in err.message


def test_folder_matching_no_layout_says_what_was_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    save_image(tmp_path / "loose.png", gray(1))
    err = data_error(tmp_path)
    assert "matches no data layout" in err.message and "notes.txt" in err.message
    for expected in ("train/<class>/", ".npz", "train-images-idx3-ubyte"):
        assert expected in err.message
    assert "one folder per class" in err.hint


def test_file_that_is_no_data_set(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("1,2,3")
    assert "not a data set" in data_error(path).message


# ---------------------------------------------------------------------------------------------
# Layout 2: npz


def test_npz_nhw_uint8(tmp_path):
    path = npz_file(tmp_path / "d.npz")
    ds = load_dataset(path, GRAY)
    raw = np.load(path)
    assert ds.x_train.shape == (6, 1, 8, 8) and ds.x_test.shape == (4, 1, 8, 8)
    scaled = raw["x_train"].astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(ds.x_train[:, 0], scaled)
    assert ds.y_train.dtype == np.int64 and ds.classes == ["0", "1", "2"]
    assert load_dataset(path, GRAY, num_classes=10).classes == [str(i) for i in range(10)]


def test_npz_nhwc_and_nchw_float(tmp_path):
    rng = np.random.default_rng(2)
    nhwc = rng.random((6, 8, 8, 3), dtype=np.float32)
    ds = load_dataset(npz_file(tmp_path / "a.npz", x_train=nhwc, x_test=nhwc[:4]), RGB)
    np.testing.assert_array_equal(ds.x_train, nhwc.transpose(0, 3, 1, 2))
    assert ds.x_train.flags.c_contiguous
    nchw = rng.random((6, 3, 8, 8)).astype(np.float64)
    ds = load_dataset(npz_file(tmp_path / "b.npz", x_train=nchw, x_test=nchw[:4]), RGB)
    assert ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(ds.x_train, nchw.astype(np.float32))


def test_npz_ambiguous_layout_prefers_nchw(tmp_path):
    x = np.arange(6 * 27, dtype=np.uint8).reshape(6, 3, 3, 3)
    ds = load_dataset(npz_file(tmp_path / "d.npz", x_train=x, x_test=x[:4]), (3, 3, 3))
    np.testing.assert_array_equal(ds.x_train, x.astype(np.float32) / np.float32(255))


def test_folder_with_one_npz_and_with_two(tmp_path):
    npz_file(tmp_path / "mnist.npz")
    assert load_dataset(tmp_path, GRAY).x_train.shape == (6, 1, 8, 8)
    npz_file(tmp_path / "other.npz")
    err = data_error(tmp_path)
    assert "2 .npz files" in err.message and err.path == str(tmp_path)


def test_npz_without_test_arrays(tmp_path):
    ds = load_dataset(npz_file(tmp_path / "d.npz", x_test=False, y_test=False), GRAY)
    assert ds.x_test is None and ds.y_test is None


def test_npz_labels_n_by_1_and_whole_floats(tmp_path):
    y = (np.arange(6) % 3).reshape(6, 1)
    ds = load_dataset(npz_file(tmp_path / "a.npz", y_train=y.astype(np.float32)), GRAY)
    assert ds.y_train.tolist() == [0, 1, 2, 0, 1, 2] and ds.y_train.dtype == np.int64


@pytest.mark.parametrize(
    "arrays, words",
    [
        (dict(y_train=False), ["no array 'y_train'"]),
        (dict(x_test=False), ["no array 'x_test'"]),
        (dict(x_train=False, y_train=False), ["no x_train/y_train"]),
        (dict(y_train=np.zeros(5, np.uint8)), ["x_train holds 6 images", "y_train holds 5"]),
        (dict(x_train=np.zeros((6, 9, 9), np.uint8)), ["x_train has shape 6x9x9", "1x8x8"]),
        (dict(x_train=np.zeros((6, 8, 8, 3), np.uint8)), ["6x8x8x3"]),
        (dict(x_train=np.zeros((6, 8, 8), np.int32)), ["dtype int32"]),
        (dict(x_train=np.full((6, 8, 8), np.nan, np.float32)), ["NaN"]),
        (dict(y_train=np.eye(6, 3)), ["y_train has shape 6x3"]),
        (dict(y_train=np.full(6, 0.5)), ["not whole numbers"]),
        (dict(y_train=np.array([0, 1, 2, 0, 1, -1])), ["label -1"]),
        (dict(y_test=np.array([0, 1, 2, 10])), ["y_test holds label 10", "10 classes"]),
    ],
)
def test_npz_errors(tmp_path, arrays, words):
    path = npz_file(tmp_path / "d.npz", **arrays)
    err = data_error(path, num_classes=10)
    assert err.path == str(path)
    for word in words:
        assert word in err.message


def test_npz_that_is_not_one(tmp_path):
    text = tmp_path / "d.npz"
    text.write_text("hello")
    assert "not an .npz" in data_error(text).message
    npy = tmp_path / "e.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros(3))
    assert ".npy" in data_error(npy).message
    good = npz_file(tmp_path / "f.npz").read_bytes()
    damaged = tmp_path / "g.npz"
    damaged.write_bytes(good[: len(good) // 2])
    assert data_error(damaged).path == str(damaged)


# ---------------------------------------------------------------------------------------------
# Layout 3: IDX


@pytest.mark.parametrize("compress", [False, True])
def test_idx_folder(tmp_path, compress):
    root = idx_folder(tmp_path, compress=compress)
    ds = load_dataset(root, GRAY)
    suffix = ".gz" if compress else ""
    raw = read_idx(root / f"train-images-idx3-ubyte{suffix}")
    assert raw.shape == (5, 8, 8) and raw.dtype == np.uint8
    np.testing.assert_array_equal(ds.x_train[:, 0], raw.astype(np.float32) / np.float32(255))
    assert ds.y_train.tolist() == [0, 1, 2, 3, 4] and ds.y_test.tolist() == [0, 1, 2]
    assert ds.classes == ["0", "1", "2", "3", "4"]
    assert "IDX" in ds.source


def test_idx_float_images_and_int_labels(tmp_path):
    x = np.random.default_rng(0).random((3, 8, 8)).astype(">f4")
    write_idx(tmp_path / "train-images-idx3-ubyte", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2], ">i4"))
    ds = load_dataset(tmp_path, GRAY)
    np.testing.assert_array_equal(ds.x_train[:, 0], x.astype(np.float32))
    assert ds.x_test is None and ds.y_train.tolist() == [0, 1, 2]


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_idx(tmp_path, compress):
    root = idx_folder(tmp_path, compress=compress)
    path = root / ("t10k-images-idx3-ubyte" + (".gz" if compress else ""))
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    err = data_error(root)
    assert err.path == str(path)
    assert ("truncated" in err.message) if not compress else ("cannot read" in err.message)


def test_idx_with_short_data_inside_valid_gzip(tmp_path):
    root = idx_folder(tmp_path)
    path = root / "train-labels-idx1-ubyte"
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()[:-2]))
    path.unlink()
    err = data_error(root)
    assert err.path == str(path) + ".gz" and "truncated" in err.message and "5" in err.message


def test_idx_bad_magic_and_count_mismatch(tmp_path):
    root = idx_folder(tmp_path)
    labels = root / "train-labels-idx1-ubyte"
    labels.write_bytes(b"\x12\x34" + labels.read_bytes()[2:])
    err = data_error(root)
    assert err.path == str(labels) and "magic" in err.message
    write_idx(labels, np.zeros(4, np.uint8))
    err = data_error(root)
    assert err.path == str(labels) and "4 labels" in err.message and "5 images" in err.message


def test_idx_missing_partner_file_and_wrong_size(tmp_path):
    root = idx_folder(tmp_path)
    os.remove(root / "t10k-labels-idx1-ubyte")
    err = data_error(root)
    assert err.path == str(root / "t10k-labels-idx1-ubyte") and "missing" in err.message
    root = idx_folder(tmp_path / "b", size=(9, 9))
    err = data_error(root)
    assert err.path == str(root / "train-images-idx3-ubyte") and "5x9x9" in err.message


def test_idx_labels_out_of_range(tmp_path):
    root = idx_folder(tmp_path)
    err = data_error(root, num_classes=3)
    assert err.path == str(root / "train-labels-idx1-ubyte") and "label 4" in err.message


@pytest.mark.skipif(not FASHION.is_dir(), reason=f"Fashion-MNIST not installed at {FASHION}")
def test_real_fashion_mnist():
    ds = load_dataset(FASHION, (1, 28, 28), num_classes=10)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() and ds.x_train.max() == 1.0
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert ds.classes == [str(i) for i in range(10)]


# ---------------------------------------------------------------------------------------------
# batches


def test_batches_cover_every_row_once_with_a_short_last_batch():
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    y = np.arange(10)
    b = batches(x, y, 4, np.random.default_rng(0))
    assert len(b) == 3
    got = list(b)
    assert [len(yb) for _, yb in got] == [4, 4, 2]
    seen = np.concatenate([yb for _, yb in got])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    for xb, yb in got:  # rows stay paired
        np.testing.assert_array_equal(xb[:, 0, 0, 0], yb.astype(np.float32))


def test_batches_are_seeded_and_ordered_without_rng():
    x, y = np.zeros((7, 2), np.float32), np.arange(7)
    first = [yb.tolist() for _, yb in batches(x, y, 3, np.random.default_rng(5))]
    again = [yb.tolist() for _, yb in batches(x, y, 3, np.random.default_rng(5))]
    assert first == again
    assert [yb.tolist() for _, yb in batches(x, y, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError):
        batches(x, y, 0)
    with pytest.raises(ValueError):
        batches(x, y[:3], 2)


# ---------------------------------------------------------------------------------------------
# Hostile files and folders


@pytest.mark.parametrize("which", ["train", "train/dog"])
def test_an_unreadable_folder_is_named(which, tmp_path, monkeypatch):
    root = image_folder(tmp_path / "d")
    real = os.scandir

    def scandir(path="."):
        if Path(path) == root / which:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    err = data_error(root)
    assert err.path == str(root / which) and err.message == "cannot read folder: Permission denied"


def test_a_symlink_loop_is_not_called_missing(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert "symbolic links" in data_error(tmp_path / "a").message
    (tmp_path / "c").symlink_to(tmp_path / "nothing")
    assert "a symbolic link to nothing" in data_error(tmp_path / "c").message
    with pytest.raises(DataError, match="symbolic links"):
        load_images([tmp_path / "a"], GRAY)


def test_an_image_larger_than_pillows_bomb_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "d")
    save_image(root / "train" / "dog" / "big.png", gray(1, (40, 40)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow warns above this, errs above twice it
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = data_error(root)
    assert err.path.endswith("big.png") and "1x40x40" in err.message and "1x8x8" in err.message
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_float64_pixels_beyond_float32_are_named_not_nan(tmp_path):
    import warnings

    x = np.zeros((4, 8, 8))
    x[2, 3, 3] = 1e300
    path = npz_file(tmp_path / "d.npz", x_train=x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        err = data_error(path)
    assert "x_train holds values up to 1e+300, beyond float32's range" in err.message


def test_an_idx_gzip_bomb_is_read_only_as_far_as_its_header_says(tmp_path):
    root = idx_folder(tmp_path, n_train=5)
    labels = root / "train-labels-idx1-ubyte"
    header_and_data = labels.read_bytes()
    labels.unlink()
    bomb = labels.with_name(labels.name + ".gz")
    bomb.write_bytes(gzip.compress(header_and_data + bytes(50 << 20), compresslevel=1))
    tracemalloc.start()
    try:
        err = data_error(root)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.path == str(bomb) and "has extra bytes" in err.message
    assert peak < 5 << 20


def test_data_larger_than_the_memory_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import cnnc.train.data as data_module

    monkeypatch.setattr(data_module, "default_limit", lambda: 300)
    err = data_error(image_folder(tmp_path / "images"))
    assert "8 images of 1x8x8 take as bytes and float32: 2.5 KiB, more than the 300 bytes" in err.message
    err = data_error(idx_folder(tmp_path / "idx"))
    assert "the header says 5x8x8" in err.message and "more than the 300 bytes" in err.message


def test_npz_images_that_would_not_fit_as_float32_are_refused_before_reading(tmp_path, monkeypatch):
    import cnnc.npz
    import cnnc.train.data as data_module

    path = npz_file(tmp_path / "d.npz")  # x_train: 6x8x8 uint8, 384 bytes; 1,920 as read and as float32
    monkeypatch.setattr(cnnc.npz, "default_limit", lambda: 1000)
    monkeypatch.setattr(data_module, "default_limit", lambda: 1000)
    err = data_error(path)
    assert "x_train (6x8x8 uint8) takes as read and as float32: 1.9 KiB, more than the 1000 bytes" in err.message
