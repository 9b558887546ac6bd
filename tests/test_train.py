"""`cnnc train | eval | predict` end to end, through the command line: training learns on each data
layout, runs are reproducible, resume and Ctrl-C continue bit for bit, bad data and a diverging run
never cost the last good checkpoint, eval and predict agree with the network, flags override the
model's `train` line.

Models are written into the current folder and named by relative paths, so the generated kernel
module (whose source names the model file) is the same in every test and Numba's cache serves it.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnnc
from cnnc.cli import main
from cnnc.train import checkpoint
from cnnc.train.checkpoint import load_checkpoint, load_weights, save_weights
from cnnc.train.data import load_dataset
from cnnc.train.optim import SGD, Adam

# -- models -----------------------------------------------------------------------------------

TINY = """\
model tiny
input 1x8x8
conv filters=4 size=3 padding=same activation=relu
maxpool size=2
flatten
dense units=3
softmax
loss cross_entropy
train optimizer=sgd lr=0.1 momentum=0.9 batch=16 epochs=3
"""

# batchnorm (running statistics), dropout (its RNG), Adam (its state), logits output (no softmax).
REG = """\
model reg
input 1x8x8
conv filters=4 size=3 padding=same
batchnorm
relu
maxpool size=2
flatten
dropout rate=0.25
dense units=3
loss cross_entropy
train optimizer=adam lr=0.02 batch=32 epochs=3
"""

NO_LOSS = TINY.replace("model tiny", "model noloss").split("loss cross_entropy")[0]
WIDER = TINY.replace("model tiny", "model wider").replace("filters=4", "filters=6")  # same names, other shapes

MODELS = {"tiny.cnn": TINY, "reg.cnn": REG, "noloss.cnn": NO_LOSS, "wider.cnn": WIDER}
STEPS_TINY = 19  # 300 images in batches of 16
STEPS_REG = 10  # 300 images in batches of 32


def write_models(folder: Path) -> None:
    for name, text in MODELS.items():
        (folder / name).write_text(text)


# -- data: 8x8 gray images, the class says where a bright 3x3 square sits (give or take a pixel) --

CLASSES = ("alpha", "beta", "gamma")  # sorted, so folder order is label order
SPOTS = [(1, 1), (1, 4), (4, 2)]


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    rng.shuffle(y)
    x = rng.integers(0, 90, (n, 8, 8)).astype(np.uint8)
    for i, c in enumerate(y):
        r, col = SPOTS[c][0] + rng.integers(-1, 2), SPOTS[c][1] + rng.integers(-1, 2)
        x[i, r:r + 3, col:col + 3] = rng.integers(120, 200)
    return x, y.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if compress:
        path, data = path.with_name(path.name + ".gz"), gzip.compress(data)
    path.write_bytes(data)
    return path


def write_image_folder(root: Path, splits: dict) -> Path:
    for split, (x, y) in splits.items():
        for i, (image, label) in enumerate(zip(x, y)):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> dict:
    """The same images in each layout: 300 training and 90 test images of 3 classes."""
    root = tmp_path_factory.mktemp("data")
    train, test = make_images(300, 1), make_images(90, 2)
    np.savez(root / "set.npz", x_train=train[0], y_train=train[1], x_test=test[0], y_test=test[1])
    idx = root / "idx"
    idx.mkdir()
    for prefix, (x, y) in (("train", train), ("t10k", test)):
        write_idx(idx / f"{prefix}-images-idx3-ubyte", x, compress=True)
        write_idx(idx / f"{prefix}-labels-idx1-ubyte", y, compress=True)
    write_image_folder(root / "images", {"train": train, "test": test})
    return {"npz": root / "set.npz", "idx": idx, "images": root / "images", "test": test}


# -- running the command ----------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def cnnc_cli(*argv, tty: bool = False) -> tuple[int, str, str]:
    """main(argv) with standard output and error captured (error as a terminal when `tty`)."""
    out, err = io.StringIO(), Terminal() if tty else io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im, np.float32)[None] / np.float32(255)


def cnnc_command() -> list[str]:
    return [shutil.which("cnnc")] if shutil.which("cnnc") else [sys.executable, "-m", "cnnc.cli"]


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_models(tmp_path)
    return tmp_path


def weights(path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def assert_same_bits(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), f"{name} differs"


def assert_same_checkpoint(path_a, path_b) -> None:
    """Everything a checkpoint holds (weights, optimizer state, both RNGs, epoch, classes, validation
    split) agrees."""
    a, b = load_checkpoint(path_a), load_checkpoint(path_b)
    assert_same_bits(a.pop("params"), b.pop("params"))
    assert a.pop("val_rows").tobytes() == b.pop("val_rows").tobytes()
    oa, ob = a.pop("optimizer"), b.pop("optimizer")
    assert oa.keys() == ob.keys()
    for k in oa:
        assert np.asarray(oa[k]).tobytes() == np.asarray(ob[k]).tobytes(), k
    assert a == b


def epoch_lines(out: str) -> list[dict]:
    pattern = re.compile(r"^epoch (\d+)/(\d+)  loss (\S+)  train acc (\S+)(?:  test acc (\S+))?")
    lines = [pattern.match(line) for line in out.splitlines()]
    assert all(lines), out
    return [{"epoch": int(m[1]), "of": int(m[2]), "loss": float(m[3]), "train": float(m[4]),
             "test": float(m[5]) if m[5] else None} for m in lines]


class StepCounter:
    """Replaces an optimizer's step: counts the calls and does `action(n, params)` at each, after
    (or, for KeyboardInterrupt, instead of) the real step."""

    def __init__(self, monkeypatch, cls, interrupt_at=None, after=None):
        self.calls, self.interrupt_at, self.after = 0, interrupt_at, after
        original = cls.step

        def step(optimizer, params, grads, lr=None):
            self.calls += 1
            if self.calls == self.interrupt_at:
                raise KeyboardInterrupt
            original(optimizer, params, grads, lr)
            if self.after:
                self.after(self.calls, params)

        monkeypatch.setattr(cls, "step", step)


# -- training learns, on every layout ---------------------------------------------------------


@pytest.mark.parametrize("layout", ["images", "npz", "idx"])
def test_training_learns_on_each_layout(layout, data):
    code, out, err = cnnc_cli("train", "tiny.cnn", data[layout], "--out", "w.npz", "-q")
    assert code == 0, err
    epochs = epoch_lines(out)
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and all(e["of"] == 3 for e in epochs)
    assert epochs[-1]["loss"] < epochs[0]["loss"] / 2, epochs
    assert epochs[-1]["test"] > 0.9, epochs
    assert "300 images, 90 test (3 classes)" in err
    # The saved weights are the trained ones: eval on the test split agrees.
    code, out, err = cnnc_cli("eval", "tiny.cnn", data[layout], "--weights", "w.npz")
    assert code == 0, err
    accuracy = float(re.search(r"^accuracy (\S+)", out, re.M)[1])
    assert accuracy == epochs[-1]["test"]
    state = load_checkpoint("w.ckpt.npz")
    assert state["epoch"] == 3
    assert state["classes"] == (list(CLASSES) if layout == "images" else ["0", "1", "2"])
    assert_same_bits(state["params"], weights("w.npz"))


# -- reproducibility, resume, Ctrl-C ----------------------------------------------------------


def test_same_seed_same_weights_other_seed_other_weights(data):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        code, _, err = cnnc_cli("train", "reg.cnn", data["npz"], "--epochs", 2, "--seed", seed,
                                "--out", f"{name}.npz", "-q")
        assert code == 0, err
        runs[name] = weights(f"{name}.npz")
    assert_same_bits(runs["a"], runs["b"])
    assert_same_checkpoint("a.ckpt.npz", "b.ckpt.npz")
    assert all(runs["a"][k].tobytes() != runs["c"][k].tobytes() for k in ("conv1.weight", "dense1.weight"))


@pytest.mark.parametrize("model", ["reg.cnn", "tiny.cnn"], ids=["adam-batchnorm-dropout", "sgd-momentum"])
def test_resume_gives_the_weights_of_a_straight_run(model, data):
    code, out, err = cnnc_cli("train", model, data["npz"], "--out", "straight.npz", "-q")
    assert code == 0, err
    assert len(epoch_lines(out)) == 3
    code, out, err = cnnc_cli("train", model, data["npz"], "--out", "split.npz", "--epochs", 1, "-q")
    assert code == 0, err
    assert load_checkpoint("split.ckpt.npz")["epoch"] == 1
    code, out, err = cnnc_cli("train", model, data["npz"], "--out", "split.npz", "--epochs", 3,
                              "--resume", "split.ckpt.npz", "-q")
    assert code == 0, err
    assert "resuming from split.ckpt.npz after epoch 1" in err
    assert [e["epoch"] for e in epoch_lines(out)] == [2, 3]
    assert_same_bits(weights("straight.npz"), weights("split.npz"))
    assert_same_checkpoint("straight.ckpt.npz", "split.ckpt.npz")
    if model == "reg.cnn":  # the state that must survive the resume is really there
        w = weights("split.npz")
        assert np.any(w["batchnorm1.running_mean"] != 0) and np.any(w["batchnorm1.running_var"] != 1)
        assert load_checkpoint("split.ckpt.npz")["optimizer"]["step"] == 3 * STEPS_REG


def test_resume_with_nothing_left_to_do(data):
    assert cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--epochs", 1, "-q")[0] == 0
    before = Path("w.npz").read_bytes(), Path("w.ckpt.npz").read_bytes()
    code, out, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--epochs", 1,
                              "--resume", "w.ckpt.npz")
    assert code == 0 and out == "" and "nothing to do" in err
    assert (Path("w.npz").read_bytes(), Path("w.ckpt.npz").read_bytes()) == before


def test_ctrl_c_in_epoch_2_keeps_epoch_1_and_resumes_exactly(data, monkeypatch):
    assert cnnc_cli("train", "reg.cnn", data["npz"], "--out", "straight.npz", "-q")[0] == 0
    assert cnnc_cli("train", "reg.cnn", data["npz"], "--out", "one.npz", "--epochs", 1, "-q")[0] == 0

    with monkeypatch.context() as patch:
        counter = StepCounter(patch, Adam, interrupt_at=STEPS_REG + 4)  # in the middle of epoch 2
        code, out, err = cnnc_cli("train", "reg.cnn", data["npz"], "--out", "w.npz", "-q")
    assert code == 130 and counter.calls == STEPS_REG + 4
    assert len(epoch_lines(out)) == 1
    assert "Traceback" not in err
    assert "checkpoint after epoch 1 is kept at w.ckpt.npz" in err
    # The epoch-1 files are whole, agree, and are those of a 1-epoch run.
    state = load_checkpoint("w.ckpt.npz")
    assert state["epoch"] == 1
    assert_same_bits(state["params"], weights("w.npz"))
    assert_same_bits(weights("w.npz"), weights("one.npz"))
    assert not list(Path().glob(".*.tmp"))

    # The message says how to continue; doing just that reaches the uninterrupted run's weights.
    command = re.search(r"^continue with: (.*)$", err, re.M)[1]
    argv = shlex.split(command)
    assert argv[:4] == ["cnnc", "train", "reg.cnn", str(data["npz"])]
    assert argv[argv.index("--resume") + 1] == "w.ckpt.npz" and argv[argv.index("--out") + 1] == "w.npz"
    code, out, err = cnnc_cli(*argv[1:])
    assert code == 0, err
    assert [e["epoch"] for e in epoch_lines(out)] == [2, 3]
    assert_same_bits(weights("w.npz"), weights("straight.npz"))
    assert_same_checkpoint("w.ckpt.npz", "straight.ckpt.npz")


def test_a_real_sigint_to_the_installed_command(data, workdir):
    """SIGINT at whatever point the run has reached (a batch, the test pass, the save): exit 130,
    and the last epoch line printed is the epoch of the checkpoint, which is whole."""
    process = subprocess.Popen(cnnc_command() + ["train", "reg.cnn", str(data["npz"]), "--out", "w.npz",
                                                 "--epochs", "100000", "-q"],
                               cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        printed = [process.stdout.readline() for _ in range(3)]  # three epochs done: interrupt now
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "continue with: cnnc train" in err
    last = epoch_lines("".join(printed) + out)[-1]["epoch"]
    state = load_checkpoint("w.ckpt.npz")
    assert state["epoch"] == last >= 3
    assert_same_bits(state["params"], weights("w.npz"))


def test_sigterm_stops_like_ctrl_c(data, workdir):
    """`timeout`, schedulers and `docker stop` send SIGTERM: the run stops gracefully (exit 143),
    and the last epoch printed is that of the checkpoint, which is whole."""
    process = subprocess.Popen(cnnc_command() + ["train", "tiny.cnn", str(data["npz"]), "--out", "w.npz",
                                                 "--epochs", "100000", "-q"],
                               cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        printed = [process.stdout.readline() for _ in range(2)]
        process.terminate()
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, err
    assert "Traceback" not in err and "terminated; the checkpoint after epoch" in err
    assert "continue with: cnnc train" in err
    state = load_checkpoint("w.ckpt.npz")
    assert state["epoch"] == epoch_lines("".join(printed) + out)[-1]["epoch"] >= 2
    assert_same_bits(state["params"], weights("w.npz"))
    assert not list(workdir.glob(".*.tmp"))


def test_sigterm_during_the_save_finishes_it(data, monkeypatch):
    original = checkpoint.save_weights

    def save_weights_terminated(path, params):
        signal.raise_signal(signal.SIGTERM)
        original(path, params)

    monkeypatch.setattr(checkpoint, "save_weights", save_weights_terminated)
    code, _, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "-q")
    assert code == 143 and "terminated; the checkpoint after epoch 1 is kept" in err
    state = load_checkpoint("w.ckpt.npz")
    assert state["epoch"] == 1
    assert_same_bits(state["params"], weights("w.npz"))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back after the run


@pytest.mark.parametrize("stderr", ["separate", "same pipe"])
def test_a_closed_output_pipe_does_not_stop_training(stderr, data, workdir):
    """`cnnc train ... | head -1`: the printing stops, the training goes on to the end and saves."""
    process = subprocess.Popen(cnnc_command() + ["train", "tiny.cnn", str(data["npz"]), "--out", "w.npz",
                                                 "--epochs", "6", "-q"],
                               cwd=workdir, stdout=subprocess.PIPE, text=True,
                               stderr=subprocess.STDOUT if stderr == "same pipe" else subprocess.PIPE)
    first = process.stdout.readline()
    process.stdout.close()  # as `head -1` does
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert first.startswith("training tiny" if stderr == "same pipe" else "epoch 1/6")
    assert load_checkpoint("w.ckpt.npz")["epoch"] == 6
    if stderr == "separate":
        assert "Traceback" not in err and "Exception ignored" not in err
        assert "weights: w.npz" in err


def test_ctrl_c_repeats_the_flags_that_were_given(data, monkeypatch):
    StepCounter(monkeypatch, SGD, interrupt_at=30 + 10)  # batches of 10: epoch 2, batch 10
    code, _, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--lr", 0.05,
                            "--batch", 10, "--seed", 2, "-q")
    assert code == 130
    argv = shlex.split(re.search(r"^continue with: (.*)$", err, re.M)[1])
    for flag, value in (("--lr", "0.05"), ("--batch", "10"), ("--seed", "2"), ("--resume", "w.ckpt.npz")):
        assert argv[argv.index(flag) + 1] == value


def test_ctrl_c_in_the_first_epoch_saves_nothing(data, monkeypatch):
    StepCounter(monkeypatch, SGD, interrupt_at=3)
    code, out, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "-q")
    assert code == 130 and out == ""
    assert "nothing was saved" in err and "Traceback" not in err
    assert not Path("w.npz").exists() and not Path("w.ckpt.npz").exists()


def test_ctrl_c_during_the_save_finishes_it(data, monkeypatch):
    """Ctrl-C while the weights are written waits until the checkpoint is written too."""
    original = checkpoint.save_weights

    def save_weights_interrupted(path, params):
        signal.raise_signal(signal.SIGINT)
        original(path, params)

    monkeypatch.setattr(checkpoint, "save_weights", save_weights_interrupted)
    # CI may start the tests with SIGINT ignored (as a background job); this test is about Python's handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, out, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "-q")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130 and "checkpoint after epoch 1 is kept" in err
    state = load_checkpoint("w.ckpt.npz")
    assert state["epoch"] == 1
    assert_same_bits(state["params"], weights("w.npz"))


def test_ctrl_c_after_resuming_points_back_at_the_checkpoint(data, monkeypatch):
    assert cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--epochs", 1, "-q")[0] == 0
    before = Path("w.ckpt.npz").read_bytes()
    StepCounter(monkeypatch, SGD, interrupt_at=5)
    code, _, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "elsewhere.npz", "--resume", "w.ckpt.npz")
    assert code == 130 and "nothing new was saved" in err
    argv = shlex.split(re.search(r"^continue with: (.*)$", err, re.M)[1])
    assert argv[argv.index("--resume") + 1] == "w.ckpt.npz"
    assert Path("w.ckpt.npz").read_bytes() == before and not Path("elsewhere.npz").exists()


# -- bad data never costs a checkpoint ---------------------------------------------------------


def small_images(root: Path) -> Path:
    x, y = make_images(6, 5)
    return write_image_folder(root, {"train": (x, y), "test": (x, y)})


def save_png(path: Path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def bad_missing(tmp):
    return tmp / "nowhere", "nowhere"


def bad_empty(tmp):
    (tmp / "empty").mkdir()
    return tmp / "empty", "empty"


def bad_class_without_images(tmp):
    root = small_images(tmp / "set")
    for image in (root / "train" / "beta").iterdir():
        image.unlink()
    (root / "train" / "beta" / "notes.txt").write_text("no images here")
    return root, "beta"


def bad_corrupt_image(tmp):
    root = small_images(tmp / "set")
    (root / "train" / "beta" / "0007.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root, "0007.png"


def bad_image_size(tmp):
    root = small_images(tmp / "set")
    save_png(root / "train" / "gamma" / "big.png", np.zeros((9, 8)))
    return root, "big.png"


def bad_image_channels(tmp):
    root = small_images(tmp / "set")
    save_png(root / "test" / "alpha" / "color.png", np.zeros((8, 8, 3)))
    return root, "color.png"


def bad_lengths(tmp):
    x, y = make_images(20, 5)
    np.savez(tmp / "bad.npz", x_train=x, y_train=y[:-1], x_test=x, y_test=y)
    return tmp / "bad.npz", "bad.npz"


def bad_label(tmp):
    x, y = make_images(20, 5)
    y[4] = 3
    np.savez(tmp / "bad.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    return tmp / "bad.npz", "bad.npz"


def bad_too_many_classes(tmp):
    root = small_images(tmp / "set")
    save_png(root / "train" / "delta" / "0.png", np.zeros((8, 8)))
    return root, "train"


def bad_truncated_idx(tmp):
    x, y = make_images(20, 5)
    root = tmp / "idx"
    root.mkdir()
    images = write_idx(root / "train-images-idx3-ubyte", x, compress=False)
    write_idx(root / "train-labels-idx1-ubyte", y, compress=False)
    images.write_bytes(images.read_bytes()[:-30])
    return root, "train-images-idx3-ubyte"


def bad_truncated_gzip(tmp):
    x, y = make_images(20, 5)
    root = tmp / "idx"
    root.mkdir()
    write_idx(root / "train-images-idx3-ubyte", x, compress=True)
    labels = write_idx(root / "train-labels-idx1-ubyte", y, compress=True)
    labels.write_bytes(labels.read_bytes()[:-12])
    return root, "train-labels-idx1-ubyte.gz"


BAD_DATA = [bad_missing, bad_empty, bad_class_without_images, bad_corrupt_image, bad_image_size,
            bad_image_channels, bad_lengths, bad_label, bad_too_many_classes, bad_truncated_idx,
            bad_truncated_gzip]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, data) -> dict[str, bytes]:
    """The bytes of the weights and checkpoint of a good 1-epoch run of tiny.cnn."""
    folder = tmp_path_factory.mktemp("good")
    write_models(folder)
    with contextlib.chdir(folder):
        code, _, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--epochs", 1, "-q")
    assert code == 0, err
    return {name: (folder / name).read_bytes() for name in ("w.npz", "w.ckpt.npz")}


def put_good_run(good_run) -> None:
    for name, content in good_run.items():
        Path(name).write_bytes(content)


def assert_good_run_intact(good_run) -> None:
    for name, content in good_run.items():
        assert Path(name).read_bytes() == content, f"{name} changed"
    assert sorted(p.name for p in Path().glob("w*.npz")) == sorted(good_run)


@pytest.mark.parametrize("make_bad", BAD_DATA, ids=lambda f: f.__name__[4:])
def test_bad_data_exits_1_and_keeps_the_checkpoint(make_bad, good_run, workdir):
    put_good_run(good_run)
    path, named = make_bad(workdir)
    for resume in ([], ["--resume", "w.ckpt.npz"]):
        code, out, err = cnnc_cli("train", "tiny.cnn", path, "--out", "w.npz", "-q", *resume)
        assert code == 1 and out == ""
        assert named in err and "error:" in err, err
        assert "Traceback" not in err
        assert_good_run_intact(good_run)


@pytest.mark.parametrize("make_bad", [bad_corrupt_image, bad_truncated_gzip, bad_image_channels],
                         ids=lambda f: f.__name__[4:])
def test_bad_data_through_the_installed_command(make_bad, good_run, workdir):
    put_good_run(good_run)
    path, named = make_bad(workdir)
    result = subprocess.run(cnnc_command() + ["train", "tiny.cnn", str(path), "--out", "w.npz"],
                            capture_output=True, text=True, cwd=workdir)
    assert result.returncode == 1 and named in result.stderr
    assert "Traceback" not in result.stderr
    assert_good_run_intact(good_run)


@pytest.mark.parametrize("problem", ["optimizer", "model changed", "other model", "not a checkpoint", "missing"])
def test_a_checkpoint_that_does_not_fit_exits_1(problem, good_run, data):
    put_good_run(good_run)
    argv = ["train", "tiny.cnn", data["npz"], "--out", "w.npz", "--resume", "w.ckpt.npz", "--epochs", 2, "-q"]
    if problem == "optimizer":
        argv += ["--optimizer", "adam"]
    elif problem == "model changed":
        Path("tiny.cnn").write_text(TINY.replace("lr=0.1", "lr=0.2"))
    elif problem == "other model":
        argv[1] = "wider.cnn"
    elif problem == "not a checkpoint":
        argv[argv.index("w.ckpt.npz")] = "w.npz"
    else:
        argv[argv.index("w.ckpt.npz")] = "gone.ckpt.npz"
    code, out, err = cnnc_cli(*argv)
    assert code == 1 and out == "" and "Traceback" not in err
    assert ("gone.ckpt.npz" if problem == "missing" else "w.") in err
    expected = {"optimizer": "--optimizer sgd", "model changed": "has changed", "other model": "'tiny', not 'wider'",
                "not a checkpoint": "not a cnnc checkpoint", "missing": "no such"}[problem]
    assert expected in err
    assert_good_run_intact(good_run)


# -- a diverging run ---------------------------------------------------------------------------


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resumed"])
def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(resume, good_run, data):
    put_good_run(good_run)
    argv = ["train", "tiny.cnn", data["npz"], "--out", "w.npz", "--lr", "1e20", "-q"]
    code, out, err = cnnc_cli(*argv, *(["--resume", "w.ckpt.npz"] if resume else []))
    assert code == 1 and out == "" and "Traceback" not in err
    assert "diverged" in err and "learning rate" in err and "--lr" in err
    assert_good_run_intact(good_run)


def test_weights_that_go_bad_in_the_last_step_of_an_epoch_are_not_saved(data, monkeypatch):
    """The loss check comes before each step, so the last step of an epoch needs its own check."""

    def poison(n, params):
        if n == 2 * STEPS_TINY:
            params[0] = np.nan

    StepCounter(monkeypatch, SGD, after=poison)
    code, out, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--epochs", 2, "-q")
    assert code == 1 and len(epoch_lines(out)) == 1
    assert "NaN" in err and "epoch 2" in err and "the weights of epoch 1 are kept in w.npz" in err
    assert load_checkpoint("w.ckpt.npz")["epoch"] == 1
    assert all(np.isfinite(v).all() for v in weights("w.npz").values())


# -- eval and predict ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> Path:
    """tiny.cnn trained for 3 epochs on the image folders: w.npz and w.ckpt.npz."""
    folder = tmp_path_factory.mktemp("trained")
    write_models(folder)
    with contextlib.chdir(folder):
        code, _, err = cnnc_cli("train", "tiny.cnn", data["images"], "--out", "w.npz", "-q")
    assert code == 0, err
    return folder


def parse_evaluation(out: str) -> tuple[float, int, int, dict, np.ndarray, list[str]]:
    m = re.search(r"^accuracy (\S+) \(([\d,]+) of ([\d,]+)\)$", out, re.M)
    per_class = {name: (acc, int(count.replace(",", ""))) for name, acc, count in
                 re.findall(r"^  (\S+) +(\S+) +\(([\d,]+) images\)$", out, re.M)}
    matrix = out.split("confusion matrix (rows: true class, columns: predicted):\n")[1].splitlines()
    header, rows = matrix[0].split(), [line.split() for line in matrix[1:] if not line.strip().startswith("columns:")]
    names = [r[0] for r in rows]
    assert header == [str(i) for i in range(len(rows))]
    confusion = np.array([[int(v.replace(",", "")) for v in r[1:]] for r in rows])
    return float(m[1]), int(m[2].replace(",", "")), int(m[3].replace(",", "")), per_class, confusion, names


def expected_confusion(weights_path, data) -> np.ndarray:
    net = cnnc.compile("tiny.cnn")
    for name, value in load_weights(weights_path, dict(net.params)).items():
        net.params[name] = value
    test = load_dataset(data["images"], net.input_shape, 3, split=("test",))
    predicted = net.forward(test.x_test).argmax(axis=1)
    confusion = np.zeros((3, 3), np.int64)
    np.add.at(confusion, (test.y_test, predicted), 1)
    return confusion


@pytest.mark.parametrize("which", ["trained", "untrained"])
def test_eval_reports_what_the_network_predicts(which, trained, data):
    if which == "trained":
        path = trained / "w.npz"
    else:  # the initial weights: a confusion matrix with plenty off the diagonal
        path = Path("init.npz")
        save_weights(path, {k: v.copy() for k, v in cnnc.compile("tiny.cnn", seed=1).params.items()})
    code, out, err = cnnc_cli("eval", "tiny.cnn", data["images"], "--weights", path)
    assert code == 0, err
    accuracy, right, total, per_class, confusion, names = parse_evaluation(out)
    expected = expected_confusion(path, data)
    assert names == list(CLASSES)
    assert np.array_equal(confusion, expected)
    assert (right, total) == (np.trace(expected), 90)
    assert accuracy == pytest.approx(right / total, abs=5e-5)
    for i, name in enumerate(CLASSES):
        acc, count = per_class[name]
        assert count == expected[i].sum()
        assert float(acc) == pytest.approx(expected[i, i] / count, abs=5e-5)
    if which == "trained":
        assert accuracy > 0.9
    else:
        assert (confusion - np.diag(np.diag(confusion))).sum() > 10


def test_eval_columns_stay_apart_when_counts_fill_the_cell(trained, tmp_path):
    """A count as wide as its column (three digits here) must not run into the class name."""
    x, y = make_images(1000, 9)
    y[:] = 0
    np.savez("zeros.npz", x_train=x[:1], y_train=y[:1], x_test=x, y_test=y)
    code, out, err = cnnc_cli("eval", "tiny.cnn", "zeros.npz", "--weights", trained / "w.npz")
    assert code == 0, err
    _, _, total, _, confusion, names = parse_evaluation(out)
    assert total == 1000 and confusion.sum() == 1000 and names == ["0", "1", "2"]


def test_predict_prints_class_names_and_probabilities(trained, data):
    files = sorted((data["images"] / "test").glob("*/*.png"))[::9]
    code, out, err = cnnc_cli("predict", "tiny.cnn", *files, "--weights", trained / "w.npz")
    assert code == 0, err
    rows = [line.split("\t") for line in out.splitlines()]
    assert [Path(r[0]) for r in rows] == files
    net = cnnc.compile("tiny.cnn")
    for name, value in weights(trained / "w.npz").items():
        net.params[name] = value
    probs = net.forward(np.stack([read_png(f) for f in files]))
    for (path, name, p), row in zip(rows, probs):
        assert name == CLASSES[row.argmax()]  # the names come from the checkpoint beside the weights
        assert float(p) == pytest.approx(row.max(), abs=5e-5)
    right = sum(name == Path(path).parent.name for path, name, _ in rows)
    assert right >= 0.9 * len(rows)
    # --classes overrides the names; a wrong count of names is a user error.
    code, out, _ = cnnc_cli("predict", "tiny.cnn", files[0], "--weights", trained / "w.npz", "--classes", "x,y,z")
    assert code == 0 and out.split("\t")[1] in ("x", "y", "z")
    code, out, err = cnnc_cli("predict", "tiny.cnn", files[0], "--weights", trained / "w.npz", "--classes", "x,y")
    assert code == 1 and "--classes" in err and "3 classes" in err


def test_predict_turns_logits_into_probabilities(data):
    """reg.cnn ends without softmax: its output is logits, and predict prints a probability."""
    net = cnnc.compile("reg.cnn", seed=5)
    save_weights("w.npz", {k: v.copy() for k, v in net.params.items()})  # no checkpoint beside it
    files = sorted((data["images"] / "test").glob("*/*.png"))[:6]
    code, out, err = cnnc_cli("predict", "reg.cnn", *files, "--weights", "w.npz")
    assert code == 0, err
    logits = net.forward(np.stack([read_png(f) for f in files]))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    for (path, name, p), row in zip((line.split("\t") for line in out.splitlines()), probs):
        assert name == str(row.argmax())  # no checkpoint: the classes are numbers
        assert 0 < float(p) <= 1 and float(p) == pytest.approx(row.max(), abs=5e-5)


@pytest.mark.parametrize("problem", ["missing", "other model", "wrong shapes", "not npz"])
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_wrong_weights_exit_1(command, problem, trained, data):
    model, path = "tiny.cnn", trained / "w.npz"
    if problem == "missing":
        path, expected = Path("nope.npz"), "no such file"
    elif problem == "other model":
        model, expected = "reg.cnn", "does not match the model"
    elif problem == "wrong shapes":
        model, expected = "wider.cnn", "conv1.weight is 4x1x3x3 in the file but the model's is 6x1x3x3"
    else:
        path, expected = Path("text.npz"), "not an .npz"
        path.write_text("weights, honest")
    target = data["images"] if command == "eval" else next((data["images"] / "test").glob("*/*.png"))
    code, out, err = cnnc_cli(command, model, target, "--weights", path)
    assert code == 1 and out == ""
    assert str(path) in err and expected in err and "Traceback" not in err


def test_eval_needs_a_test_split(trained):
    x, y = make_images(10, 3)
    np.savez("train_only.npz", x_train=x, y_train=y)
    code, _, err = cnnc_cli("eval", "tiny.cnn", "train_only.npz", "--weights", trained / "w.npz")
    assert code == 1 and "train_only.npz" in err and "test" in err


def test_predict_names_a_bad_image(trained):
    save_png(Path("rgb.png"), np.zeros((8, 8, 3)))
    code, _, err = cnnc_cli("predict", "tiny.cnn", "rgb.png", "--weights", trained / "w.npz")
    assert code == 1 and "rgb.png" in err and "1x8x8" in err


# -- flags, quiet, and what cannot be trained ---------------------------------------------------


def test_flags_override_the_train_line(data):
    """tiny.cnn says sgd lr=0.1 momentum=0.9 batch=16 epochs=3 (seed 0)."""
    code, out, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--epochs", 2, "--batch", 50,
                              "--lr", 0.005, "--seed", 7, "--optimizer", "adam", "-q")
    assert code == 0, err
    assert "adam lr=0.005 batch=50 epochs=2 seed=7" in err
    assert len(epoch_lines(out)) == 2
    state = load_checkpoint("w.ckpt.npz")
    assert state["epoch"] == 2
    assert {k: state["recipe"][k] for k in ("optimizer", "lr", "batch", "epochs", "seed")} == \
        {"optimizer": "adam", "lr": 0.005, "batch": 50, "epochs": 2, "seed": 7}
    assert state["optimizer"]["kind"] == "adam" and state["optimizer"]["step"] == 2 * 6  # 300 / 50 a epoch
    # The seed is the initialization's: the first conv's weights differ from a seed-0 run's.
    code, _, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "s0.npz", "--epochs", 2, "--batch", 50,
                            "--lr", 0.005, "--optimizer", "adam", "-q")
    assert code == 0, err
    assert weights("w.npz")["conv1.weight"].tobytes() != weights("s0.npz")["conv1.weight"].tobytes()
    # Without flags, the train line holds.
    code, out, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "d.npz", "-q")
    assert code == 0 and "sgd lr=0.1 momentum=0.9 batch=16 epochs=3 seed=0" in err
    assert load_checkpoint("d.ckpt.npz")["optimizer"]["kind"] == "sgd"


def test_lr_changes_the_result(data):
    runs = []
    for lr in ("0.1", "0.01"):
        assert cnnc_cli("train", "tiny.cnn", data["npz"], "--out", f"{lr}.npz", "--epochs", 1, "--lr", lr, "-q")[0] == 0
        runs.append(weights(f"{lr}.npz")["dense1.weight"])
    assert runs[0].tobytes() != runs[1].tobytes()


def test_quiet_prints_one_line_per_epoch_and_no_progress_bar(data):
    code, out, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--epochs", 2, "-q", tty=True)
    assert code == 0, err
    assert len(out.splitlines()) == 2 and len(epoch_lines(out)) == 2
    assert "img/s" not in err and "\x1b" not in err  # the bar shows speed, and draws with escapes
    # Not quiet, on a terminal, the progress bar is drawn on standard error; standard output is the same.
    code, out, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "v.npz", "--epochs", 2, tty=True)
    assert code == 0 and len(epoch_lines(out)) == 2
    assert "img/s" in err and "epoch 1/2" in err


@pytest.mark.parametrize("argv", [["--lr", "nan"], ["--lr", "0"], ["--lr", "inf"], ["--momentum", "-0.5"],
                                  ["--momentum", "1.5"], ["--weight-decay", "-1"], ["--epochs", "0"],
                                  ["--optimizer", "rmsprop"]])
def test_impossible_flags_are_usage_errors(argv, data, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "tiny.cnn", str(data["npz"]), *argv])
    assert info.value.code == 2 and "usage:" in capsys.readouterr().err


def test_an_impossible_recipe_is_a_user_error(data):
    Path("nesterov.cnn").write_text(TINY.replace("model tiny", "model nest").replace("momentum=0.9",
                                                                                   "momentum=0.9 nesterov=true"))
    code, out, err = cnnc_cli("train", "nesterov.cnn", data["npz"], "--momentum", 0, "--out", "w.npz")
    assert code == 1 and "Nesterov" in err and "Traceback" not in err
    assert not Path("w.npz").exists()


def test_an_out_folder_that_does_not_exist_fails_before_training(data):
    code, out, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "runs/w.npz")
    assert code == 1 and out == "" and "runs" in err and "does not exist" in err


def test_a_model_without_loss_cannot_be_trained(data):
    code, out, err = cnnc_cli("train", "noloss.cnn", data["npz"], "--out", "w.npz")
    assert code == 1 and out == ""
    assert "noloss.cnn" in err and "add `loss cross_entropy`" in err and "Traceback" not in err
    assert not Path("w.npz").exists()


def test_no_test_split_trains_without_test_accuracy(data):
    x, y = make_images(60, 4)
    np.savez("train_only.npz", x_train=x, y_train=y)
    np.savez("empty_test.npz", x_train=x, y_train=y, x_test=x[:0], y_test=y[:0])
    for path in ("train_only.npz", "empty_test.npz"):
        code, out, err = cnnc_cli("train", "tiny.cnn", path, "--out", "w.npz", "--epochs", 1, "-q")
        assert code == 0, err
        assert epoch_lines(out)[0]["test"] is None and "no test split" in err


def test_no_training_images_is_a_user_error(data):
    x, y = make_images(10, 4)
    np.savez("empty.npz", x_train=x[:0], y_train=y[:0], x_test=x, y_test=y)
    code, _, err = cnnc_cli("train", "tiny.cnn", "empty.npz", "--out", "w.npz")
    assert code == 1 and "empty.npz" in err and "no training images" in err and "Traceback" not in err


# -- hostile weights, checkpoints and data -------------------------------------------------------


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_infinite_weights_are_refused(command, value, trained, data):
    params = weights(trained / "w.npz")
    params["conv1.weight"][0, 0, 1, 1] = value
    save_weights("bad.npz", params)
    target = {"eval": [data["images"]], "predict": [next((data["images"] / "test").glob("*/*.png"))],
              "export": []}[command]
    code, out, err = cnnc_cli(command, "tiny.cnn", *target, "--weights", "bad.npz",
                              *(["-o", "m.onnx"] if command == "export" else []))
    assert code == 1 and out == "" and "Traceback" not in err
    assert "bad.npz" in err and "conv1.weight holds 1 NaN or infinite value" in err
    assert not Path("m.onnx").exists()


@pytest.mark.parametrize("entry, value, expected", [
    ("rng", None, "its entry 'rng' is missing"),
    ("rng", {"bit_generator": "Nope"}, "its entry 'rng' is not a random generator's state"),
    ("epoch", -5, "its epoch is -5"),
    ("epoch", "2", "its entry 'epoch' is a str, not a int"),
    ("classes", None, "its entry 'classes' is missing"),
])
def test_a_damaged_checkpoint_says_which_entry(entry, value, expected, good_run, data):
    put_good_run(good_run)
    state = load_checkpoint("w.ckpt.npz")
    state[entry] = value
    checkpoint.save_checkpoint("w.ckpt.npz", state)
    code, out, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--resume", "w.ckpt.npz",
                              "--epochs", 2, "-q")
    assert code == 1 and out == "" and "Traceback" not in err
    assert f"damaged checkpoint: {expected}" in err


def test_huge_pixels_point_at_the_data_not_the_learning_rate(tmp_path):
    x, y = make_images(64, 4)
    np.savez("huge.npz", x_train=x.astype(np.float32) * np.float32(1e30), y_train=y)
    code, _, err = cnnc_cli("train", "tiny.cnn", "huge.npz", "--out", "w.npz", "-q")
    assert code == 1 and "diverged" in err
    assert "the training images hold values up to" in err and "scale them to [0, 1]" in err
    assert "learning rate" not in err


def test_one_class_trains_with_a_warning_that_says_why(tmp_path):
    x, y = make_images(32, 4)
    np.savez("one.npz", x_train=x, y_train=np.zeros_like(y))
    code, out, err = cnnc_cli("train", "tiny.cnn", "one.npz", "--out", "w.npz", "--epochs", 1, "-q")
    assert code == 0, err
    assert "warning: every training image is of class 0: the network can only learn to answer 0" in err
    assert load_checkpoint("w.ckpt.npz")["epoch"] == 1


def test_predict_names_the_classes_the_checkpoint_has(data, workdir):
    """Trained on two classes of three outputs: the names of those two, a number for the third."""
    x, y = make_images(60, 6)
    keep = y < 2
    write_image_folder(workdir / "two", {"train": (x[keep], y[keep])})
    code, _, err = cnnc_cli("train", "tiny.cnn", workdir / "two", "--out", "w.npz", "--epochs", 1, "-q")
    assert code == 0, err
    files = sorted((workdir / "two" / "train").glob("*/*.png"))[:4]
    code, out, err = cnnc_cli("predict", "tiny.cnn", *files, "--weights", "w.npz")
    assert code == 0, err
    assert {line.split("\t")[1] for line in out.splitlines()} <= {"alpha", "beta", "2"}
    assert {"alpha", "beta"} & {line.split("\t")[1] for line in out.splitlines()}


def test_predict_with_a_damaged_checkpoint_beside_the_weights_still_predicts(trained, data):
    save_weights("w.npz", weights(trained / "w.npz"))
    Path("w.ckpt.npz").write_bytes(b"not a zip")
    image = next((data["images"] / "test").glob("*/*.png"))
    code, out, err = cnnc_cli("predict", "tiny.cnn", image, "--weights", "w.npz")
    assert code == 0 and out.split("\t")[1] in ("0", "1", "2")
    assert err.startswith("warning: ") and "shown as numbers" in err


def test_a_full_disk_at_the_checkpoint_write_says_the_weights_are_newer(data, monkeypatch):
    assert cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--epochs", 1, "-q")[0] == 0
    real = checkpoint.atomic_write_npz

    def disk_full(path, arrays):
        if str(path).endswith(".ckpt.npz"):
            raise cnnc.DataError(path, "cannot write: No space left on device")
        real(path, arrays)

    monkeypatch.setattr(checkpoint, "atomic_write_npz", disk_full)
    code, _, err = cnnc_cli("train", "tiny.cnn", data["npz"], "--out", "w.npz", "--epochs", 2, "-q",
                            "--resume", "w.ckpt.npz")
    assert code == 1 and "No space left on device" in err
    assert "the weights of epoch 2 are saved in w.npz, but this checkpoint was not replaced" in err
    assert load_checkpoint("w.ckpt.npz")["epoch"] == 1


@pytest.mark.parametrize("flags, hint", [(["--lr", "1e308"], "smaller learning rate"),
                                         (["--weight-decay", "1e308"], "weight decay well below 1")])
def test_a_diverging_run_leaks_no_numpy_warning(flags, hint, data):
    result = subprocess.run(cnnc_command() + ["train", "tiny.cnn", str(data["npz"]), "--out", "w.npz", "-q", *flags],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "diverged" in result.stderr and hint in result.stderr
    assert "Warning" not in result.stderr, result.stderr


def test_float_labels_beyond_any_class_are_named(data):
    x, _ = make_images(8, 4)
    np.savez("labels.npz", x_train=x, y_train=np.full(8, 1e300))
    result = subprocess.run(cnnc_command() + ["train", "tiny.cnn", "labels.npz", "--out", "w.npz", "-q"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "y_train holds label 1e+300; expected class indices" in result.stderr
    assert "Warning" not in result.stderr
