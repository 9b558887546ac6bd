"""A class per pixel: the loss on a C x H x W output, masks as data (npz, IDX, images/ + masks/
folders), pixel accuracy and IoU in `cnnc eval`, PNG masks from `cnnc predict`, ONNX export, and
the Fashion-MNIST segmentation set of examples/fashion_segmentation.py.

Kernels are checked in test_kernels_loss.py and whole networks against PyTorch in test_models.py
(`every_op_pixels`, `pixel_logits`); this file checks the rest of the path.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from PIL import Image

import cnnc
from checks import central_difference
from cnnc.cli import main
from cnnc.diagnostics import DataError
from cnnc.export.onnx import to_onnx
from cnnc.train.checkpoint import load_weights
from cnnc.train.data import load_dataset
from cnnc.train.evaluate import Evaluation

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")

# Bright squares on a dim background; the mask marks the squares (class 1), the rest is class 0.
SEG = """\
model seg
input 1x10x8
conv filters=6 size=3 padding=same activation=relu
conv filters=6 size=3 padding=same activation=relu
conv filters=2 size=1
softmax axis=channels
loss cross_entropy
train optimizer=adam lr=0.02 batch=16 epochs=4
"""


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_masks(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 80, (n, 10, 8)).astype(np.uint8)
    y = np.zeros((n, 10, 8), np.uint8)
    for i in range(n):
        r, c, size = rng.integers(0, 6), rng.integers(0, 5), rng.integers(2, 5)
        x[i, r:r + size, c:c + size] = rng.integers(150, 250)
        y[i, r:r + size, c:c + size] = 1
    return x, y


def write_mask_folders(root: Path, splits: dict) -> Path:
    for split, (x, y) in splits.items():
        for name in ("images", "masks"):
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i, (image, mask) in enumerate(zip(x, y)):
            Image.fromarray(image).save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i:03d}.png")
    return root


def cnnc_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("masks")
    train, test = make_masks(240, 1), make_masks(40, 2)
    np.savez(root / "set.npz", x_train=train[0], y_train=train[1], x_test=test[0], y_test=test[1])
    write_mask_folders(root / "folders", {"train": train, "test": test})
    (root / "seg.cnn").write_text(SEG)
    return {"root": root, "npz": root / "set.npz", "folders": root / "folders", "test": test,
            "model": root / "seg.cnn"}


@pytest.fixture(scope="module")
def trained(data) -> Path:
    weights = data["root"] / "w.npz"
    code, out, err = cnnc_cli("train", data["model"], data["npz"], "--out", weights, "-q")
    assert code == 0, err
    return weights


def trained_net(data, weights) -> cnnc.Network:
    net = cnnc.compile(data["model"])
    for name, value in load_weights(weights, dict(net.params)).items():
        net.params[name] = value
    return net


# -- the network ------------------------------------------------------------------------------


def test_forward_returns_probabilities_per_pixel():
    net = cnnc.compile_source(SEG)
    x = np.random.default_rng(0).random((3, 1, 10, 8), dtype=np.float32)
    probs = net.forward(x)
    assert probs.shape == (3, 2, 10, 8) and net.label_shape == (10, 8)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-6) and (probs > 0).all()


def test_whole_model_gradients_match_finite_differences():
    net = cnnc.compile_source(SEG.replace("filters=6", "filters=3"), seed=4)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 1, 10, 8)).astype(np.float32)
    y = rng.integers(0, 2, (3, 10, 8))
    net.loss_and_grads(x, y)
    analytic = {n: g.copy() for n, g in net.grads.items()}
    for name, grad in analytic.items():
        view = net.params[name].reshape(-1)
        for i in rng.choice(view.size, size=min(4, view.size), replace=False):
            numeric = central_difference(lambda: net.loss_and_grads(x, y)[0], view, i, h=1e-2)
            assert numeric == pytest.approx(grad.reshape(-1)[i], rel=3e-2, abs=2e-3), (name, i)


def test_one_lane_and_three_lanes_give_the_same_step(monkeypatch):
    """`total` is the step's images: each lane divides its pixels' sum by the step's pixels."""
    net = cnnc.compile_source(SEG)
    rng = np.random.default_rng(6)
    x = rng.random((13, 1, 10, 8), dtype=np.float32)
    y = rng.integers(0, 2, (13, 10, 8))
    results = []
    for lanes in ("1", "3"):
        monkeypatch.setenv("CNNC_THREADS", lanes)
        loss, correct = net.loss_grads_correct(x, y)
        results.append((loss, correct, net.grad_vector.copy()))
    (l1, c1, g1), (l3, c3, g3) = results
    assert l3 == pytest.approx(l1, rel=1e-6) and c1 == c3
    assert np.abs(g1 - g3).max() <= 1e-6 * np.abs(g1).max()
    assert c1 == np.count_nonzero(net.forward(x).argmax(axis=1) == y)  # right pixels, not images


def test_masks_of_the_wrong_shape_are_refused():
    net = cnnc.compile_source(SEG)
    x = np.zeros((2, 1, 10, 8), np.float32)
    with pytest.raises(cnnc.InputError, match="2x10x8 masks"):
        net.loss_and_grads(x, [0, 1])
    with pytest.raises(cnnc.InputError, match="0..1"):
        net.loss_and_grads(x, np.full((2, 10, 8), 2))


def test_onnx_softmax_runs_over_the_channels():
    net = cnnc.compile_source(SEG, seed=3)
    model = to_onnx(net.parsed, dict(net.params))
    (softmax,) = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert [(a.name, a.i) for a in softmax.attribute] == [("axis", 1)]
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(7).random((2, 1, 10, 8), dtype=np.float32)
    assert np.abs(session.run(None, {"input": x})[0] - net.forward(x)).max() < 1e-5


def test_dot_labels_show_the_axis(tmp_path):
    (tmp_path / "seg.cnn").write_text(SEG)
    code, out, err = cnnc_cli("dot", tmp_path / "seg.cnn")
    assert code == 0, err
    assert "axis=channels" in out and "2x10x8" in out
    code, out, err = cnnc_cli("dot", tmp_path / "seg.cnn", "--stage", "optimized", "--mode", "training")
    assert code == 0 and "softmax1" not in out  # fused into the loss


# -- data -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["npz", "folders"])
def test_masks_load_from_npz_and_folders(data, layout):
    ds = load_dataset(data[layout], (1, 10, 8), 2, label_shape=(10, 8))
    x, y = data["test"]
    assert ds.y_train.shape == (240, 10, 8) and ds.y_train.dtype == np.int64
    assert np.array_equal(ds.y_test, y) and np.allclose(ds.x_test[:, 0], x / 255)
    assert ds.classes == ["0", "1"]


def test_palette_and_black_and_white_masks_are_class_indices(tmp_path):
    root = write_mask_folders(tmp_path, {"train": make_masks(2, 3)})
    mask = np.asarray(Image.open(root / "train/masks/000.png"))
    Image.fromarray(mask.astype(bool)).save(root / "train/masks/000.png")  # mode 1
    palette = Image.fromarray(np.asarray(Image.open(root / "train/masks/001.png")), mode="P")
    palette.putpalette([0, 0, 0, 255, 255, 255] * 128)
    palette.save(root / "train/masks/001.png")
    ds = load_dataset(root, (1, 10, 8), 2, label_shape=(10, 8))
    assert np.array_equal(ds.y_train, make_masks(2, 3)[1])


@pytest.mark.parametrize("breakage, words", [
    (lambda root: (root / "train/masks/001.png").unlink(), ["001.png", "has no mask", "masks/001.png"]),
    (lambda root: (root / "train/images/001.png").unlink(), ["masks/001.png", "mask without an image"]),
    (lambda root: Image.new("RGB", (8, 10)).save(root / "train/masks/001.png"), ["001.png", "mode L, P or 1", "RGB"]),
    (lambda root: Image.new("L", (8, 9)).save(root / "train/masks/001.png"), ["001.png", "10x8 pixels", "9x8"]),
    (lambda root: Image.new("L", (8, 10), 255).save(root / "train/masks/001.png"), ["label 255", "2 classes", "0/1"]),
    (lambda root: (root / "train/masks").rename(root / "train/labels"), ["train", "no masks/ folder", "images/"]),
])
def test_mask_folder_mistakes_name_the_file(tmp_path, breakage, words):
    root = write_mask_folders(tmp_path, {"train": make_masks(3, 4)})
    breakage(root)
    with pytest.raises(DataError) as info:
        load_dataset(root, (1, 10, 8), 2, label_shape=(10, 8))
    message = info.value.render()
    assert all(w in message for w in words), message


@pytest.mark.parametrize("y, words", [
    (np.zeros((5, 10, 7), np.uint8), ["y_train", "5x10x7", "10x8 pixels", "N x 10x8 masks"]),
    (np.zeros(5, np.uint8), ["y_train", "has shape 5", "a mask per image"]),
    (np.full((5, 10, 8), 255, np.uint8), ["y_train", "label 255", "2 classes"]),
])
def test_npz_mask_mistakes_name_the_file_and_shapes(tmp_path, y, words):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((5, 10, 8), np.uint8), y_train=y)
    with pytest.raises(DataError) as info:
        load_dataset(path, (1, 10, 8), 2, label_shape=(10, 8))
    message = info.value.render()
    assert str(path) in message and all(w in message for w in words), message


def test_a_classifier_given_masks_is_told_why(tmp_path):
    path = tmp_path / "masks.npz"
    np.savez(path, x_train=np.zeros((5, 10, 8), np.uint8), y_train=np.zeros((5, 10, 8), np.uint8))
    with pytest.raises(DataError, match="one class index per image") as info:
        load_dataset(path, (1, 10, 8), 2)
    assert "softmax axis=channels" in info.value.render()


# -- train, eval, predict ---------------------------------------------------------------------


def test_training_learns_the_masks(data, trained):
    net = trained_net(data, trained)
    x, y = data["test"]
    accuracy = np.mean(net.forward(x[:, None] / np.float32(255)).argmax(axis=1) == y)
    assert accuracy > 0.95


def test_training_prints_pixel_accuracy(data, tmp_path):
    code, out, err = cnnc_cli("train", data["model"], data["folders"], "--out", tmp_path / "w.npz", "-q",
                              "--epochs", "1", "--limit", "64")
    assert code == 0, err
    train_acc = float((out + err).split("train acc ")[1].split()[0])  # of the pixels
    assert 0 < train_acc <= 1


def test_eval_reports_pixel_accuracy_and_iou(data, trained):
    code, out, err = cnnc_cli("eval", data["model"], data["folders"], "--weights", trained)
    assert code == 0, err
    net = trained_net(data, trained)
    x, y = data["test"]
    predicted = net.forward(x[:, None] / np.float32(255)).argmax(axis=1)
    right = int(np.count_nonzero(predicted == y))
    assert f"pixel accuracy {right / y.size:.4f} ({right:,} of {y.size:,} pixels)" in out
    ious = [np.sum((predicted == k) & (y == k)) / np.sum((predicted == k) | (y == k)) for k in (0, 1)]
    assert f"mean IoU {np.mean(ious):.4f} (over the 2 classes" in out
    assert f"  1  {np.mean(predicted[y == 1] == 1):.4f}  {ious[1]:.4f}  ({np.sum(y == 1):,} pixels)" in out


def test_mean_iou_leaves_out_classes_in_neither_labels_nor_predictions():
    confusion = np.array([[6, 2, 0], [1, 3, 0], [0, 0, 0]])
    ev = Evaluation(loss=0.5, accuracy=9 / 12, classes=["a", "b", "c"], confusion=confusion, per_pixel=True)
    assert ev.iou()[:2] == pytest.approx([6 / 9, 3 / 6]) and np.isnan(ev.iou()[2])
    assert ev.mean_iou() == pytest.approx((6 / 9 + 3 / 6) / 2)


def test_predict_writes_masks_as_png(data, trained, tmp_path):
    images = sorted((data["folders"] / "test" / "images").glob("*.png"))[:3]
    code, out, err = cnnc_cli("predict", data["model"], *images, "--weights", trained, "--masks", tmp_path / "out")
    assert code == 0, err
    net = trained_net(data, trained)
    x = np.stack([np.asarray(Image.open(p))[None] for p in images]) / np.float32(255)
    expected = net.forward(x).argmax(axis=1)
    for image, row, mask in zip(images, out.splitlines(), expected):
        path = tmp_path / "out" / f"{image.stem}.mask.png"
        assert row.split("\t")[:2] == [str(image), str(path)]
        with Image.open(path) as png:
            assert png.mode == "P" and png.getpalette()[:6] == [0, 0, 0, 255, 255, 255]
            assert np.array_equal(np.asarray(png), mask)  # pixel value = class index
    assert np.mean(expected == np.stack([np.asarray(Image.open(p)) for p in
                                         (data["folders"] / "test" / "masks" / i.name for i in images)])) > 0.9


def test_predict_never_writes_a_mask_over_an_input(data, trained, tmp_path):
    first, image = tmp_path / "a.png", tmp_path / "a.mask.png"  # the first one's mask would replace the second
    for path in (first, image):
        Image.fromarray(data["test"][0][0]).save(path)
    before = image.read_bytes()
    code, _, err = cnnc_cli("predict", data["model"], first, image, "--weights", trained, "--masks", tmp_path)
    assert code == 1 and "would destroy it" in err and "Traceback" not in err
    assert image.read_bytes() == before


# -- the Fashion-MNIST segmentation set -------------------------------------------------------


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs the dataset-fashion-mnist package")
def test_fashion_segmentation_set(tmp_path):
    make = load_example("fashion_segmentation")
    out = tmp_path / "fseg.npz"
    arrays = make.write_segmentation_set(FASHION, out, limit=50)
    ds = load_dataset(out, (1, 28, 28), 2, label_shape=(28, 28))
    assert ds.x_train.shape == (50, 1, 28, 28) and ds.y_test.shape == (50, 28, 28)
    assert np.array_equal(ds.y_train, arrays["x_train"] > 0)
    assert 0.2 < ds.y_train.mean() < 0.8  # garments and background both


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs the dataset-fashion-mnist package")
def test_unet_tiny_learns_fashion_masks_from_a_few_images(tmp_path):
    """examples/unet_tiny.cnn (convtranspose, upsample, concat skips) on 512 images for two epochs;
    the whole set reaches >= 0.95 pixel accuracy (docs/language.md, section 7)."""
    make = load_example("fashion_segmentation")
    make.write_segmentation_set(FASHION, tmp_path / "fseg.npz", limit=512)
    weights = tmp_path / "unet.npz"
    code, out, err = cnnc_cli("train", ROOT / "examples" / "unet_tiny.cnn", tmp_path / "fseg.npz", "--out", weights,
                              "--epochs", "2", "--batch", "32", "-q")
    assert code == 0, err
    code, out, err = cnnc_cli("eval", ROOT / "examples" / "unet_tiny.cnn", tmp_path / "fseg.npz", "--weights", weights)
    assert code == 0, err
    accuracy = float(out.split("pixel accuracy ")[1].split()[0])
    mean_iou = float(out.split("mean IoU ")[1].split()[0])
    assert accuracy > 0.9 and mean_iou > 0.8, out


# -- over MPI ranks ---------------------------------------------------------------------------

PIXEL_MPI = """\
model pixelmpi
input 1x10x8
conv filters=4 size=3 padding=same
batchnorm
relu
conv filters=2 size=1
softmax axis=channels
loss cross_entropy
train optimizer=sgd lr=0.1 momentum=0.9 batch=18 epochs=3
"""


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or _mpiexec() is None,
                    reason='needs mpi4py and mpiexec (pip install "cnnc[mpi]")')
def test_two_ranks_train_and_evaluate_the_pixel_model_as_one_process(tmp_path, monkeypatch):
    """Uneven shares (18 images over 2 ranks, 2 lanes each; a last step of 4): the step's pixel
    count divides every share, so two ranks end with the single process's weights and eval."""
    from cnnc.distributed import SIZE_VARIABLES

    monkeypatch.chdir(tmp_path)
    Path("m.cnn").write_text(PIXEL_MPI)
    (x, y), (xt, yt) = make_masks(76, 5), make_masks(20, 6)
    np.savez("d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    env = dict(os.environ, CNNC_THREADS="2", PYTHONPATH=str(ROOT))
    for name in SIZE_VARIABLES + ("PYTHONWARNINGS",):
        env.pop(name, None)
    command = [sys.executable, "-m", "cnnc.cli"]
    runs = {}
    for name, launch in (("alone", []), ("two", [_mpiexec(), "-n", "2"])):
        result = subprocess.run(launch + command + ["train", "m.cnn", "d.npz", "--out", f"{name}.npz", "-q"],
                                capture_output=True, text=True, timeout=240, env=env)
        assert result.returncode == 0, result.stderr
        evaluation = subprocess.run(launch + command + ["eval", "m.cnn", "d.npz", "--weights", "alone.npz"],
                                    capture_output=True, text=True, timeout=240, env=env)
        assert evaluation.returncode == 0, evaluation.stderr
        runs[name] = (np.load(f"{name}.npz"), evaluation.stdout)
    (alone, eval_alone), (two, eval_two) = runs["alone"], runs["two"]
    for k in alone.files:
        assert np.abs(two[k] - alone[k]).max() <= 1e-5 * np.abs(alone[k]).max(), k
    assert eval_two == eval_alone and eval_alone.startswith("pixel accuracy")
