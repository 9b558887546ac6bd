"""The recipe keys of the train line on small synthetic runs: augmentation and normalization,
label smoothing, warmup and onecycle, AdamW, no decay on batchnorm and bias, the validation split,
keep=best and patience. Each resumes bit for bit; eval, predict and export normalize as training did."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cnnc.cli import load_network
from cnnc.train import loop
from cnnc.train.checkpoint import load_checkpoint
from cnnc.train.data import load_dataset
from cnnc.train.optim import SGD, AdamW
from test_train import (StepCounter, assert_same_bits, assert_same_checkpoint, cnnc_cli, data,  # noqa: F401
                        save_png, weights, workdir)

BASE = """\
model rec
input 1x8x8
conv filters=4 size=3 padding=same bias=false batchnorm=true activation=relu
maxpool size=2
flatten
dense units=3
loss cross_entropy
"""
RECIPES = {
    "adamw": "train optimizer=adamw lr=0.01 weight_decay=0.05 batch=32 epochs=3 schedule=onecycle warmup=1 "
             "label_smoothing=0.1 crop=1 flip=true normalize=auto val=0.2 keep=best patience=5 decay_norm_bias=false",
    "sgd": "train optimizer=sgd lr=0.05 momentum=0.9 nesterov=true weight_decay=1e-3 batch=32 epochs=3 "
           "schedule=cosine warmup=1 label_smoothing=0.2 crop=2 mean=0.3 std=0.4 val=0.1",
}


def write(name: str, recipe: str) -> str:
    Path(f"{name}.cnn").write_text(BASE.replace("model rec", f"model {name}") + recipe + "\n")
    return f"{name}.cnn"


def epochs_of(out: str) -> list[dict]:
    pattern = re.compile(r"^epoch (\d+)/\d+  loss (\S+)  train acc \S+(?:  val loss (\S+) acc (\S+)( \(best\))?)?"
                         r"(?:  test acc (\S+))?")
    found = [pattern.match(line) for line in out.splitlines()]
    assert all(found), out
    return [{"epoch": int(m[1]), "loss": float(m[2]), "val": m[4] and float(m[4]), "best": bool(m[5]),
             "test": m[6] and float(m[6])} for m in found]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_recipe_resumes_bit_for_bit(recipe, data, monkeypatch):
    """Augmentation draws, per-step rates, the split, the best epoch: a run stopped by Ctrl-C in its
    second epoch and resumed ends as the straight run. (The schedules depend on `epochs`, so the
    interrupted run keeps them.)"""
    model = write(recipe, RECIPES[recipe])
    code, out, err = cnnc_cli("train", model, data["npz"], "--out", "straight.npz", "-q")
    assert code == 0, err
    assert len(epochs_of(out)) == 3 and epochs_of(out)[-1]["test"] > 0.6, out
    with monkeypatch.context() as patch:
        StepCounter(patch, AdamW if recipe == "adamw" else SGD, interrupt_at=11)  # 8 or 9 steps an epoch
        code, out, err = cnnc_cli("train", model, data["npz"], "--out", "resumed.npz", "-q")
    assert code == 130 and [e["epoch"] for e in epochs_of(out)] == [1], err
    code, out, err = cnnc_cli("train", model, data["npz"], "--out", "resumed.npz", "--resume", "resumed.ckpt.npz",
                              "-q")
    assert code == 0, err
    assert [e["epoch"] for e in epochs_of(out)] == [2, 3]
    assert_same_bits(weights("straight.npz"), weights("resumed.npz"))
    assert_same_checkpoint("straight.ckpt.npz", "resumed.ckpt.npz")


def test_augmentation_changes_training_and_the_seed_fixes_it(data):
    runs = {}
    for name, recipe in (("plain", "train lr=0.05 batch=32 epochs=1"),
                         ("aug", "train lr=0.05 batch=32 epochs=1 crop=2 flip=true")):
        model = write(name, recipe)
        for copy in ("a", "b"):
            assert cnnc_cli("train", model, data["npz"], "--out", f"{name}{copy}.npz", "-q")[0] == 0
            runs[name + copy] = weights(f"{name}{copy}.npz")
    assert_same_bits(runs["auga"], runs["augb"])
    assert runs["auga"]["conv1.weight"].tobytes() != runs["plaina"]["conv1.weight"].tobytes()


def test_the_validation_split_is_seeded_and_held_out(data):
    model = write("val", "train lr=0.05 batch=32 epochs=1 val=0.2")
    code, out, err = cnnc_cli("train", model, data["npz"], "--out", "w.npz", "-q")
    assert code == 0, err
    assert "300 images (60 of them held out for validation)" in err
    assert epochs_of(out)[0]["val"] is not None and epochs_of(out)[0]["best"]
    rows = load_checkpoint("w.ckpt.npz")["val_rows"]
    assert len(rows) == 60 == len(set(rows.tolist()))
    assert cnnc_cli("train", model, data["npz"], "--out", "again.npz", "-q")[0] == 0
    np.testing.assert_array_equal(load_checkpoint("again.ckpt.npz")["val_rows"], rows)
    assert cnnc_cli("train", model, data["npz"], "--out", "other.npz", "--seed", 1, "-q")[0] == 0
    assert not np.array_equal(load_checkpoint("other.ckpt.npz")["val_rows"], rows)
    # --val on the command line overrides the train line's.
    code, _, err = cnnc_cli("train", model, data["npz"], "--out", "cli.npz", "--val", 0.5, "-q")
    assert code == 0 and "150 of them held out" in err


def scripted_validation(monkeypatch, accuracies: list[float], held_out: int = 60) -> None:
    """The validation accuracy of each epoch is taken from the list (the loss from nothing); the
    test split (of another size than the `held_out` validation images) is measured as it is."""
    script, measured = iter(accuracies), loop.shared_evaluation
    monkeypatch.setattr(loop, "shared_evaluation", lambda net, x, y, world: (1.0, next(script)) if len(x) == held_out
                        else measured(net, x, y, world))


def test_keep_best_and_patience(data, monkeypatch):
    """Best at epoch 2, then two epochs without better: patience=2 stops after epoch 4, and the
    weights file holds epoch 2's weights, those of a 2-epoch run; the checkpoint is epoch 4's."""
    model = write("best", "train lr=0.05 momentum=0.9 batch=32 epochs=6 val=0.2 keep=best patience=2")
    scripted_validation(monkeypatch, [0.5, 0.7, 0.6, 0.7, 0.9, 0.9])
    code, out, err = cnnc_cli("train", model, data["npz"], "--out", "best.npz", "-q")
    assert code == 0, err
    assert [(e["epoch"], e["best"]) for e in epochs_of(out)] == [(1, True), (2, True), (3, False), (4, False)]
    assert "stopped early after epoch 4: 2 epochs without a better validation accuracy than 0.7000 (epoch 2)" in err
    assert "weights of epoch 2, the best validation accuracy (0.7000): best.npz" in err
    state = load_checkpoint("best.ckpt.npz")
    assert state["epoch"] == 4 and state["best"] == {"accuracy": 0.7, "epoch": 2}
    scripted_validation(monkeypatch, [0.5, 0.7])
    assert cnnc_cli("train", model, data["npz"], "--out", "two.npz", "--epochs", 2, "--keep", "last", "-q")[0] == 0
    assert_same_bits(weights("best.npz"), weights("two.npz"))
    assert weights("best.npz")["conv1.weight"].tobytes() != state["params"]["conv1.weight"].tobytes()
    # A stopped run stays stopped when resumed; a larger patience trains on.
    code, out, err = cnnc_cli("train", model, data["npz"], "--out", "best.npz", "--resume", "best.ckpt.npz")
    assert code == 0 and out == "" and "stopped early" in err and "raise --patience" in err
    scripted_validation(monkeypatch, [0.95])
    code, out, err = cnnc_cli("train", model, data["npz"], "--out", "best.npz", "--resume", "best.ckpt.npz",
                              "--patience", 3, "--epochs", 5, "-q")
    assert code == 0, err
    assert [(e["epoch"], e["best"]) for e in epochs_of(out)] == [(5, True)]


def test_eval_predict_and_export_normalize_as_training_did(data):
    model = write("norm", "train lr=0.05 momentum=0.9 batch=32 epochs=2 normalize=auto")
    code, out, err = cnnc_cli("train", model, data["npz"], "--out", "w.npz", "-q")
    assert code == 0, err
    train = load_dataset(data["npz"], (1, 8, 8), split=("train",)).x_train
    saved = weights("w.npz")
    np.testing.assert_allclose(saved["input.mean"], [train.mean(dtype=np.float64)], rtol=1e-6)
    np.testing.assert_allclose(saved["input.std"], [train.std(dtype=np.float64)], rtol=1e-5)
    code, evaluated, err = cnnc_cli("eval", model, data["npz"], "--weights", "w.npz")
    assert code == 0, err
    assert float(re.search(r"^accuracy (\S+)", evaluated, re.M)[1]) == epochs_of(out)[-1]["test"] > 0.8
    net = load_network(Path(model), Path("w.npz"))
    assert net.normalization is not None
    # predict: the image as a PNG, read back as training reads it.
    image = data["test"][0][:1]
    save_png(Path("one.png"), image[0])
    code, predicted, err = cnnc_cli("predict", model, "one.png", "--weights", "w.npz")
    assert code == 0, err
    assert predicted.split("\t")[1] == str(int(net.forward(image[:, None].astype(np.float32) / 255).argmax()))
    # export: the ONNX model takes raw images and gives what cnnc gives.
    ort = pytest.importorskip("onnxruntime")
    assert cnnc_cli("export", model, "--weights", "w.npz", "-o", "m.onnx")[0] == 0
    x = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    onnx_out = ort.InferenceSession("m.onnx").run(None, {"input": x})[0]
    np.testing.assert_allclose(onnx_out, net.forward(x), rtol=1e-4, atol=1e-5)


def test_no_decay_on_batchnorm_and_bias():
    """decay_norm_bias=false: the optimizer decays conv and dense weights only (test_optim checks such a
    per-element decay against torch's parameter groups)."""
    net = load_network(Path(write("nodecay", "train")))
    for flag, kinds in ((True, {"weight", "bias", "gamma", "beta"}), (False, {"weight"})):
        r = loop.Recipe(weight_decay=0.1, decay_norm_bias=flag, momentum=0.9)
        decay = np.broadcast_to(np.float32(loop.optimizer_for(r, net).weight_decay), net.layout.trainable)
        for name in net.layout.trainable_names():
            offset, shape = net.layout.slots[name]
            expected = 0.1 if name.rsplit(".", 1)[1] in kinds else 0.0
            assert np.all(decay[offset:offset + int(np.prod(shape))] == np.float32(expected)), (flag, name)


RECIPE_MISTAKES = [
    ("keep=best without val", "train keep=best", [], "keep=best needs a validation split"),
    ("patience without val", "train patience=3", [], "patience=3 needs a validation split"),
    ("val leaves no training", "train val=0.999", [], "leaves no training images"),
    ("onecycle warmup too long", "train schedule=onecycle warmup=3 epochs=3", [], "warmup (3 epochs) shorter"),
    ("keep=best with --keep and no --val", "train epochs=1", ["--keep", "best"], "needs a validation split"),
]


@pytest.mark.parametrize("recipe, flags, message", [m[1:] for m in RECIPE_MISTAKES], ids=[m[0] for m in RECIPE_MISTAKES])
def test_an_impossible_recipe_exits_1_before_training(recipe, flags, message, data):
    model = write("bad", recipe)
    code, out, err = cnnc_cli("train", model, data["npz"], "--out", "w.npz", *flags)
    assert code == 1 and out == "" and "Traceback" not in err
    assert message in err and "hint:" in err
    assert not Path("w.npz").exists()


FASHION = Path("/usr/share/datasets/fashion-mnist")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fashion_resnet.cnn"


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="needs the dataset-fashion-mnist package")
def test_fashion_resnet_reaches_its_accuracy():
    """The example's recipe on Fashion-MNIST: 0.935 test accuracy at least (about 20 minutes of two
    idle cores; benchmarks/train_fashion_mnist.py runs it beside PyTorch)."""
    code, out, err = cnnc_cli("train", EXAMPLE, FASHION, "--out", "fashion.npz", "-q")
    assert code == 0, err
    assert epochs_of(out)[-1]["test"] >= 0.935, out
