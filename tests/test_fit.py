"""Training from Python (cnnc/train/fit.py through Network's methods): net.fit learns and returns the
metrics log's rows, trains exactly as `cnnc train` does, takes every recipe key as a keyword;
evaluate and predict agree with `cnnc eval` and the network; save and load round-trip; mistakes
are clear errors."""
from __future__ import annotations

import re

import numpy as np
import pytest
import rich.console

import cnnc
from cnnc.diagnostics import DataError, InputError
from cnnc.train.checkpoint import load_checkpoint
from cnnc.train.data import load_dataset
from cnnc.train.fit import History
from cnnc.train.loop import TrainingError
from cnnc.train.metrics import read_metrics
from test_metrics import same_training
from test_train import NO_LOSS, assert_same_bits, cnnc_cli, data, weights, workdir  # noqa: F401 (fixtures)


@pytest.fixture
def arrays(data) -> dict:
    """The test data set's images and labels, read as `cnnc train` reads them."""
    d = load_dataset(data["npz"], (1, 8, 8), 3)
    return {"x": d.x_train, "y": d.y_train, "xt": d.x_test, "yt": d.y_test}


def test_fit_learns_and_returns_the_metrics_log(arrays):
    net = cnnc.compile("tiny.cnn")
    history = net.fit(arrays["x"], arrays["y"], validation_data=(arrays["xt"], arrays["yt"]),
                      out="f.npz", verbose=False)
    assert isinstance(history, History) and len(history) == 3  # the train line's epochs=3
    losses = history["loss"]
    assert losses[-1] < losses[0] / 2 and history["test_accuracy"][-1] > 0.9
    assert history.history["epoch"] == [1, 2, 3] and history.history["lr"] == [0.1] * 3
    assert history.rows == read_metrics("f.metrics.csv")  # floats round-trip exactly
    assert_same_bits(weights("f.npz"), {k: np.asarray(v) for k, v in net.params.items()})


def test_fit_trains_as_cnnc_train_does(arrays, data):
    code, _, err = cnnc_cli("train", "reg.cnn", data["npz"], "--out", "c.npz", "--epochs", 2, "-q")
    assert code == 0, err
    net = cnnc.compile("reg.cnn")  # seed 0, the train line's
    net.fit(arrays["x"], arrays["y"], epochs=2, validation_data=(arrays["xt"], arrays["yt"]),
            out="f.npz", verbose=False)
    assert_same_bits(weights("f.npz"), weights("c.npz"))
    same_training(read_metrics("f.metrics.csv"), read_metrics("c.metrics.csv"))


def test_evaluate_equals_cnnc_eval_on_the_same_weights(arrays, data):
    net = cnnc.compile("tiny.cnn")
    net.fit(arrays["x"], arrays["y"], epochs=1, out="f.npz", verbose=False)
    loss, accuracy = net.evaluate(arrays["xt"], arrays["yt"])
    code, out, err = cnnc_cli("eval", "tiny.cnn", data["npz"], "--weights", "f.npz")
    assert code == 0, err
    assert f"accuracy {accuracy:.4f} (" in out and f"\nloss {loss:.4f}\n" in out
    expected = np.mean(net.forward(arrays["xt"]).argmax(axis=1) == arrays["yt"])
    assert accuracy == expected
    probs = net.forward(arrays["xt"]).astype(np.float64)
    assert loss == pytest.approx(-np.mean(np.log(probs[np.arange(len(probs)), arrays["yt"]])), rel=1e-6)


def test_evaluate_takes_the_loss_of_logits(arrays):
    net = cnnc.compile("reg.cnn")  # no softmax: the output is logits
    logits = net.forward(arrays["xt"]).astype(np.float64)
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    loss, _ = net.evaluate(arrays["xt"], arrays["yt"], batch=7)
    assert loss == pytest.approx(-np.mean(log_p[np.arange(len(log_p)), arrays["yt"]]), rel=1e-6)


@pytest.mark.parametrize("model", ["tiny.cnn", "reg.cnn"], ids=["softmax", "logits"])
def test_predict_gives_probabilities_in_batches(model, arrays):
    net = cnnc.compile(model)
    x = np.random.default_rng(5).random((23, 1, 8, 8), dtype=np.float32)
    probs = net.predict(x, batch=4)
    assert probs.shape == (23, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    out = net.forward(x)
    expected = out if model == "tiny.cnn" else np.exp(out) / np.exp(out).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)  # batches of 4 cut the lanes otherwise


def test_recipe_keys_are_fit_keywords(arrays):
    net = cnnc.compile("tiny.cnn")
    history = net.fit(arrays["x"], arrays["y"], epochs=2, batch=50, lr=0.01, optimizer="adam",
                      schedule="step", step_size=1, gamma=0.5, seed=3, out="f.npz", verbose=False)
    state = load_checkpoint("f.ckpt.npz")
    assert state["recipe"]["optimizer"] == "adam" and state["recipe"]["batch"] == 50
    assert state["optimizer"]["step"] == 2 * 6  # 300 images in batches of 50, twice
    assert history["lr"] == [0.01, 0.005]


def test_validation_split_holds_out_the_last_images(arrays):
    net = cnnc.compile("tiny.cnn")
    history = net.fit(arrays["x"], arrays["y"], epochs=1, validation_split=0.2, verbose=False)
    held_out = cnnc.compile("tiny.cnn")  # the same start, trained on the first 240 only
    held_out.fit(arrays["x"][:240], arrays["y"][:240], epochs=1,
                 validation_data=(arrays["x"][240:], arrays["y"][240:]), verbose=False)
    assert_same_bits(dict(net.params), dict(held_out.params))
    assert history["test_accuracy"] == [held_out.evaluate(arrays["x"][240:], arrays["y"][240:]).accuracy]


def test_save_and_load_round_trip(arrays):
    net = cnnc.compile("reg.cnn")
    net.fit(arrays["x"], arrays["y"], epochs=1, verbose=False)  # batchnorm's running statistics too
    net.save("s.npz")
    other = cnnc.compile("reg.cnn", seed=9)
    other.load("s.npz")
    assert_same_bits({k: np.asarray(v) for k, v in other.params.items()},
                     {k: np.asarray(v) for k, v in net.params.items()})
    assert np.array_equal(other.forward(arrays["xt"]), net.forward(arrays["xt"]))
    np.savez("arrays.npz", x_train=arrays["x"], y_train=arrays["y"], x_test=arrays["xt"], y_test=arrays["yt"])
    code, out, err = cnnc_cli("eval", "reg.cnn", "arrays.npz", "--weights", "s.npz")  # the CLI reads them too
    assert code == 0, err
    assert f"accuracy {net.evaluate(arrays['xt'], arrays['yt']).accuracy:.4f} (" in out


def test_save_and_load_keep_the_input_normalization(arrays):
    """A network trained with normalize=auto saves its normalization beside the weights, as
    `cnnc train` does, and load brings it back: the loaded network predicts the same."""
    net = cnnc.compile("reg.cnn")
    net.fit(arrays["x"], arrays["y"], epochs=1, normalize="auto", verbose=False)
    assert net.normalization is not None
    net.save("n.npz")
    other = cnnc.compile("reg.cnn", seed=9)
    other.load("n.npz")
    for loaded, trained in zip(other.normalization, net.normalization):
        assert np.array_equal(loaded, trained)
    assert np.array_equal(other.forward(arrays["xt"]), net.forward(arrays["xt"]))


def test_fit_and_evaluate_a_model_with_a_class_per_pixel():
    """Masks as labels: fit learns, evaluate gives the loss and accuracy per pixel, as the network's
    own forward does; a vector of labels is refused with the masks' shape."""
    net = cnnc.compile_source("input 1x6x5\nconv filters=4 size=3 padding=same activation=relu\n"
                              "conv filters=2 size=1\nsoftmax axis=channels\nloss cross_entropy\n"
                              "train optimizer=adam lr=0.01 batch=8 epochs=3\n")
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (24, 1, 6, 5)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    history = net.fit(x, y, verbose=False)
    assert history["loss"][-1] < history["loss"][0]
    loss, accuracy = net.evaluate(x, y)
    probs = net.forward(x).astype(np.float64)
    picked = np.take_along_axis(probs, y[:, None], axis=1)
    assert loss == pytest.approx(-np.log(np.maximum(picked, 1e-12)).mean(), rel=1e-6)
    assert accuracy == pytest.approx(np.mean(probs.argmax(axis=1) == y))
    with pytest.raises(InputError, match="labels must be 24x6x5 masks"):
        net.fit(x, y[:, 0, 0], verbose=False)


def test_loading_weights_of_another_model_is_a_clear_error(arrays):
    cnnc.compile("tiny.cnn").save("tiny.npz")
    wider = cnnc.compile("wider.cnn")
    before = wider.vector.copy()
    with pytest.raises(DataError, match=r"tiny.npz: error: conv1.weight is 4x1x3x3 in the file but the "
                                        r"model's is 6x1x3x3"):
        wider.load("tiny.npz")
    with pytest.raises(DataError, match="does not match the model: lacks batchnorm1"):
        cnnc.compile("reg.cnn").load("tiny.npz")
    with pytest.raises(DataError, match="missing.npz"):
        wider.load("missing.npz")
    assert np.array_equal(wider.vector, before)


BAD_FIT = {
    "misspelt keyword": (dict(momentun=0.9), TypeError, r"unexpected keyword argument 'momentun'; did you mean "
                         r"'momentum'\? \(the recipe's keys: optimizer, lr, momentum,"),
    "unknown keyword": (dict(dropout=0.5), TypeError, r"unexpected keyword argument 'dropout' \(the recipe's keys"),
    "negative lr": (dict(lr=-1.0), InputError, r"`lr` must be a number > 0, not `-1.0`"),
    "fractional batch": (dict(batch=2.5), InputError, r"`batch` must be a positive integer, not `2.5`"),
    "unknown optimizer": (dict(optimizer="rmsprop"), InputError, r"`optimizer` must be one of sgd, adam"),
    "a list": (dict(momentum=[0.9]), InputError, r"momentum must be a number, a bool or a name, not a list"),
    "impossible recipe": (dict(nesterov=True, momentum=0.0), TrainingError, r"cannot train with sgd"),
    "both validations": (dict(validation_split=0.1, validation_data=([], [])), InputError,
                         "give validation_data or validation_split, not both"),
    "validation split of 1": (dict(validation_split=1.0), InputError, "validation_split must be a fraction"),
    "validation pair": (dict(validation_data=np.zeros((3, 1, 8, 8))), InputError,
                        r"validation_data must be a pair \(x, y\)"),
}


@pytest.mark.parametrize("problem", BAD_FIT)
def test_bad_fit_arguments_are_clear_errors(problem, arrays):
    keywords, error, message = BAD_FIT[problem]
    net = cnnc.compile("tiny.cnn")
    before = net.vector.copy()
    with pytest.raises(error, match=message):
        net.fit(arrays["x"], arrays["y"], verbose=False, **keywords)
    assert np.array_equal(net.vector, before)


@pytest.mark.parametrize(("x", "y", "message"), [
    (np.zeros((4, 8, 8), np.float32), [0, 1, 2, 0], "tiny takes float32 images of shape N x 1x8x8, not 4x8x8"),
    (np.ones((4, 1, 8, 8), np.float32), [0, 1, 2], "labels must be a vector of 4 integers .* not shape 3"),
    (np.ones((4, 1, 8, 8), np.float32), [0, 1, 2, 3], r"labels must lie in 0..2 \(tiny has 3 outputs\); got 0..3"),
    (np.ones((4, 1, 8, 8), np.float32), [0.5, 1, 2, 0], "labels must be integers, not float64"),
])
def test_bad_arrays_are_clear_errors(x, y, message):
    net = cnnc.compile("tiny.cnn")
    for call in (lambda: net.fit(x, y, verbose=False), lambda: net.evaluate(x, y)):
        with pytest.raises(InputError, match=message):
            call()


def test_a_model_without_loss_cannot_fit():
    net = cnnc.compile_source(NO_LOSS)
    with pytest.raises(InputError, match="has no `loss` statement"):
        net.fit(np.ones((4, 1, 8, 8), np.float32), [0, 1, 2, 0], verbose=False)


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_verbose_shows_progress_and_epoch_lines_and_can_be_turned_off(terminal, arrays, capsys, monkeypatch):
    monkeypatch.setattr(rich.console.Console, "is_terminal", property(lambda self: terminal))
    net = cnnc.compile("tiny.cnn")
    net.fit(arrays["x"], arrays["y"], epochs=2, verbose=True)
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", capsys.readouterr().out)  # the terminal's controls
    assert re.search(r"^epoch 1/2  loss \S+  train acc \S+", out, re.M)
    assert re.search(r"^epoch 2/2  loss", out, re.M)
    assert ("━" in out) == terminal  # the progress bar, drawn in a terminal (or a notebook) only
    net.fit(arrays["x"], arrays["y"], epochs=1, verbose=False)
    assert capsys.readouterr() == ("", "")
