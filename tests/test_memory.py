"""The memory estimate: it covers what a call allocates, `compile` shows it, and sizes that cannot
fit are located errors (never a MemoryError or ValueError traceback) before anything is allocated."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc import memory
from cnnc.cli import main
from cnnc.diagnostics import ModelError

ROOT = Path(__file__).parent.parent
LENET = ROOT / "examples" / "lenet5.cnn"

TINY = """\
model tiny
input 1x8x8
conv filters=4 size=3 padding=same activation=relu
maxpool size=2
flatten
dense units=3
softmax
loss cross_entropy
train batch=16 epochs=1
"""


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def traced_peak(call) -> int:
    """Peak bytes NumPy allocated during call() (kernel workspaces are Numba's and not traced)."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("model", ["examples/lenet5", "examples/resnet_tiny", "tests/models/encoder_decoder"])
def test_the_estimate_covers_what_a_call_allocates(model):
    net = cnnc.compile(ROOT / f"{model}.cnn")
    x = np.random.default_rng(0).random((24, *net.input_shape), dtype=np.float32)
    y = np.zeros(24, np.int64)
    net.loss_and_grads(x, y)  # lane buffers, lazy imports and first-call compiles come first, unmeasured
    net.forward(x)
    for mode, call in (("training", lambda: net.loss_and_grads(x, y)), ("inference", lambda: net.forward(x))):
        peak = traced_peak(call)
        estimate = net.memory(mode).bytes(24)
        assert peak <= estimate <= 3 * peak + net.memory(mode).fixed, (mode, peak, estimate)


def test_the_estimate_grows_with_the_batch_and_finds_the_largest_batch_that_fits():
    est = cnnc.compile(LENET).memory("training")
    sizes = [est.bytes(b) for b in (1, 2, 64, 65)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[1]
    limit = est.bytes(40) + 1
    fits = est.max_batch(limit, 1000)
    assert est.bytes(fits) <= limit < est.bytes(fits + 1)
    assert est.max_batch(est.fixed, 1000) == 0


def test_compile_prints_memory_at_batch_1_and_at_the_train_line_batch(capsys):
    code, out, err = run(capsys, "compile", LENET)
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if line.startswith("memory:")]
    assert "inference at batch 1" in line and "training at batch 64" in line  # lenet5's train line


HUGE = {
    "dense": ("input 1x8x8\nflatten\ndense units=999999999999999999\ndense units=3\n", 4, "dense1"),
    "input": ("input 3x100000x100000\nglobalavgpool\nflatten\ndense units=3\n", 2, "input"),
    "padding": ("input 1x8x8\nconv filters=4 size=3 padding=1000000\nglobalavgpool\nflatten\ndense units=3\n", 3,
                "conv1"),
    "filters": ("input 1x28x28\nconv filters=10000000 size=3 padding=same\nglobalavgpool\nflatten\ndense units=3\n",
                3, "conv1"),
}


@pytest.mark.parametrize("case", HUGE)
@pytest.mark.parametrize("command", ["compile", "python", "train"])
def test_sizes_that_cannot_fit_are_located_errors(case, command, tmp_path, capsys):
    layers, line, name = HUGE[case]
    model = tmp_path / "huge.cnn"
    model.write_text(f"model huge\n{layers}loss cross_entropy\n")
    data = tmp_path / "d.npz"
    np.savez(data, x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.zeros(4, np.uint8))
    argv = {"compile": ["compile", model], "python": ["compile", model, "--emit", "python"],
            "train": ["train", model, data, "--out", tmp_path / "w.npz"]}[command]
    code, out, err = run(capsys, *argv, "--max-memory", "16G")  # the same answer on every machine
    assert code == 1 and out == ""
    assert err.startswith(f"{model}:{line}:1: error: ") and "needs about" in err and name in err
    assert "even batch 1 needs" in err
    assert not (tmp_path / "w.npz").exists()


def test_train_suggests_a_batch_that_fits(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("tiny.cnn").write_text(TINY)
    rng = np.random.default_rng(0)
    np.savez("d.npz", x_train=rng.integers(0, 255, (40, 8, 8), dtype=np.uint8), y_train=np.arange(40) % 3)
    net = cnnc.compile("tiny.cnn")
    limit = net.memory("training").bytes(7)
    code, out, err = run(capsys, "train", "tiny.cnn", "d.npz", "--batch", 64, "--max-memory", limit)
    assert code == 1 and "training at batch 64 needs about" in err and f"but --max-memory is {memory.human(limit)};" in err
    assert err.startswith("tiny.cnn:3:1: error:") and "conv1 4x8x8" in err  # the largest tensor
    assert "batch 7 fits: --batch 7" in err
    assert not Path("tiny.npz").exists()
    code, _, err = run(capsys, "train", "tiny.cnn", "d.npz", "--batch", 7, "--max-memory", limit, "-q")
    assert code == 0, err


def test_eval_runs_at_a_batch_that_fits(tmp_path, capsys, monkeypatch):
    """Inference results do not depend on the batch: eval and predict shrink it to fit."""
    monkeypatch.chdir(tmp_path)
    Path("tiny.cnn").write_text(TINY)
    net = cnnc.compile("tiny.cnn")
    cnnc.train.checkpoint.save_weights("w.npz", {k: v.copy() for k, v in net.params.items()})
    x = np.random.default_rng(1).integers(0, 255, (300, 8, 8), dtype=np.uint8)
    np.savez("d.npz", x_test=x, y_test=np.arange(300) % 3)
    full = run(capsys, "eval", "tiny.cnn", "d.npz", "--weights", "w.npz")
    assert memory.inference_batch(net.memory(), net.memory().bytes(5)) == 5
    small = run(capsys, "eval", "tiny.cnn", "d.npz", "--weights", "w.npz", "--max-memory", net.memory().bytes(5))
    assert full[0] == small[0] == 0 and full[1] == small[1]
    code, _, err = run(capsys, "eval", "tiny.cnn", "d.npz", "--weights", "w.npz", "--max-memory", 1000)
    assert code == 1 and "inference at batch 1 needs about" in err


@pytest.mark.parametrize("text, size", [("8G", 8 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29),
                                        ("100000", 100000), ("64kb", 64 << 10)])
def test_parse_size(text, size):
    assert memory.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1G", "nan", "8X", "0"])
def test_bad_max_memory_is_a_usage_error(text, capsys):
    with pytest.raises(SystemExit) as info:
        main(["compile", str(LENET), "--max-memory", text])
    assert info.value.code == 2


def test_the_python_interface_refuses_parameters_that_cannot_exist():
    with pytest.raises(ModelError) as info:
        cnnc.compile_source("model m\ninput 1x8x8\nflatten\ndense units=999999999999999999\n")
    assert info.value.line == 4


def test_parameters_beyond_the_memory_are_refused_before_they_are_allocated(monkeypatch):
    monkeypatch.setattr(memory, "default_limit", lambda: 10_000)
    with pytest.raises(ModelError) as info:
        cnnc.compile_source("model m\ninput 1x8x8\nflatten\ndense units=3000\ndense units=3\n")
    assert info.value.line == 4 and "do not fit in memory" in info.value.message


def test_train_checks_again_once_the_data_has_taken_its_share(tmp_path, capsys, monkeypatch):
    """The first check comes before the data set is read; the memory it then takes is the data's."""
    monkeypatch.chdir(tmp_path)
    Path("tiny.cnn").write_text(TINY)
    np.savez("d.npz", x_train=np.zeros((40, 8, 8), np.uint8), y_train=np.arange(40) % 3)
    need = cnnc.compile("tiny.cnn").memory("training").bytes(16)
    limits = iter([10 * need, need // 2])  # plenty before the data set is read, half after

    monkeypatch.setattr(memory, "default_limit", lambda: next(limits, need // 2))
    code, _, err = run(capsys, "train", "tiny.cnn", "d.npz")
    assert code == 1 and "training at batch 16 needs about" in err and "is available" in err
    assert not Path("tiny.npz").exists()


@pytest.mark.parametrize("model, group", [("resnet20", 16), ("vgg_small", 16), ("lenet5", 55), ("mobilenet_v1", None)])
def test_inference_groups_keep_the_largest_activation_in_a_core_s_l2(model, group):
    """A group's largest activation is at most GROUP_BYTES, with at least GROUP_MIN_IMAGES images
    (vgg_small's 128 KB an image: 16, not 8); depthwise networks (mobilenet_v1) run whole slices."""
    net = cnnc.compile(ROOT / "examples" / f"{model}.cnn")
    assert net.forward_group == group
    if group is not None:
        per_image = net.memory().largest(1)[0].bytes_per_image
        assert group * per_image <= memory.GROUP_BYTES or group == memory.GROUP_MIN_IMAGES
