"""cnnc.train.checkpoint: weights files, resume checkpoints, atomic writes and their errors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cnnc.diagnostics import DataError
from cnnc.train import checkpoint as ck
from cnnc.train.checkpoint import (
    check_resume,
    checkpoint_path,
    generator_from_state,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    save_weights,
    source_hash,
)
from cnnc.train.optim import Adam


def params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv1.weight": rng.standard_normal((6, 1, 5, 5)).astype(np.float32),
        "conv1.bias": rng.standard_normal(6).astype(np.float32),
        "dense1.weight": rng.standard_normal((10, 24)).astype(np.float32),
        "dense1.bias": rng.standard_normal(10).astype(np.float32),
    }


def state() -> dict:
    rng = np.random.default_rng(42)
    rng.random(17)  # move it off its seed
    adam = Adam(1e-3)
    flat = np.random.default_rng(1).standard_normal(50).astype(np.float32)
    adam.step(flat, flat.copy())
    return {
        "params": params(),
        "optimizer": adam.state_dict(),
        "epoch": 3,
        "rng": rng_state(rng),
        "classes": ["cat", "dog", "émeu"],
        "model": "lenet5",
        "model_hash": source_hash("model lenet5\ninput 1x28x28\n"),
        "lr": 0.1 + 0.2,  # a float that only round-trips exactly through repr
        "best": None,
    }


def assert_same(a, b):
    """Deep equality with numpy arrays compared exactly, dtypes and types included."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b)
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


# ---------------------------------------------------------------------------------------------
# File names


@pytest.mark.parametrize(
    "weights, ckpt",
    [("lenet.npz", "lenet.ckpt.npz"), ("runs/w.NPZ", "runs/w.ckpt.npz"), ("w", "w.ckpt.npz"),
     ("a.b.npz", "a.b.ckpt.npz")],
)
def test_checkpoint_path(weights, ckpt):
    assert checkpoint_path(weights) == Path(ckpt)
    assert checkpoint_path(Path(weights)) == Path(ckpt)


# ---------------------------------------------------------------------------------------------
# Weights


def test_weights_round_trip_and_plain_np_load(tmp_path):
    path = tmp_path / "w.npz"
    save_weights(path, params())
    with np.load(path) as raw:
        assert sorted(raw.files) == sorted(params())
        for name, value in params().items():
            np.testing.assert_array_equal(raw[name], value)
            assert raw[name].dtype == np.float32
    loaded = load_weights(path, {k: v.shape for k, v in params().items()})
    assert_same(loaded, params())
    # expected may also be given as arrays
    assert_same(load_weights(path, params()), params())
    assert os.listdir(tmp_path) == ["w.npz"]


def test_weights_are_a_pytorch_state_dict(tmp_path):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 6, 5)
            self.dense1 = torch.nn.Linear(24, 10)

    path = tmp_path / "w.npz"
    save_weights(path, params())
    net = Net()
    with np.load(path) as raw:
        net.load_state_dict({k: torch.from_numpy(raw[k]) for k in raw.files}, strict=True)
    np.testing.assert_array_equal(net.conv1.weight.detach().numpy(), params()["conv1.weight"])


def test_weights_views_into_a_flat_vector(tmp_path):
    flat = np.arange(12, dtype=np.float32)
    views = {"a.weight": flat[:6].reshape(2, 3), "a.bias": flat[6:9], "b.bias": flat[9:]}
    save_weights(tmp_path / "w.npz", views)
    loaded = load_weights(tmp_path / "w.npz", views)
    np.testing.assert_array_equal(loaded["b.bias"], [9, 10, 11])


def weights_error(path, expected=None) -> DataError:
    with pytest.raises(DataError) as info:
        load_weights(path, expected if expected is not None else params())
    assert info.value.path == str(path)
    return info.value


def test_weights_missing_file_and_folder(tmp_path):
    assert "no such file" in weights_error(tmp_path / "nope.npz").message
    assert "folder" in weights_error(tmp_path).message


def test_weights_not_an_npz(tmp_path):
    text = tmp_path / "w.npz"
    text.write_text("not numpy")
    assert "not an .npz" in weights_error(text).message
    npy = tmp_path / "w.npy"
    np.save(npy, np.zeros(3))
    assert ".npy" in weights_error(npy).message
    good = tmp_path / "good.npz"
    save_weights(good, params())
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:-100])
    weights_error(cut)


def test_weights_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "w.npz"
    stored = params()
    stored["extra.weight"] = stored.pop("dense1.bias")
    save_weights(path, stored)
    err = weights_error(path)
    assert "lacks dense1.bias" in err.message and "extra.weight" in err.message


def test_weights_shape_mismatch_names_both_shapes(tmp_path):
    path = tmp_path / "w.npz"
    save_weights(path, params())
    expected = {k: v.shape for k, v in params().items()}
    expected["conv1.weight"] = (6, 3, 5, 5)
    err = weights_error(path, expected)
    assert "conv1.weight" in err.message and "6x1x5x5" in err.message and "6x3x5x5" in err.message


def test_load_weights_accepts_a_checkpoint(tmp_path):
    path = tmp_path / "w.ckpt.npz"
    save_checkpoint(path, state())
    assert_same(load_weights(path, params()), params())


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_checkpoint_round_trip_is_exact(tmp_path):
    path = tmp_path / "w.ckpt.npz"
    original = state()
    save_checkpoint(path, original)
    loaded = load_checkpoint(path)
    assert_same(loaded, original)
    assert loaded["rng"]["state"]["state"] > 2**64  # 128-bit PCG64 state survived
    # the restored generator continues the sequence exactly
    rng = np.random.default_rng(42)
    rng.random(17)
    np.testing.assert_array_equal(generator_from_state(loaded["rng"]).random(5), rng.random(5))
    # and the optimizer state is loadable
    Adam(1e-3).load_state_dict(loaded["optimizer"])


def test_checkpoint_of_other_bit_generators(tmp_path):
    rng = np.random.Generator(np.random.MT19937(7))
    rng.integers(0, 10, 3)
    save_checkpoint(tmp_path / "c.npz", {"rng": rng_state(rng)})
    restored = generator_from_state(load_checkpoint(tmp_path / "c.npz")["rng"])
    assert restored.integers(0, 1000, 5).tolist() == rng.integers(0, 1000, 5).tolist()


def test_checkpoint_rejects_what_an_npz_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="set"):
        save_checkpoint(tmp_path / "c.npz", {"x": {1, 2}})
    with pytest.raises(ValueError, match="__"):
        save_checkpoint(tmp_path / "c.npz", {"__array__": 1})
    assert not list(tmp_path.iterdir())


def test_check_resume(tmp_path):
    ckpt = state()
    check_resume(tmp_path, ckpt, "lenet5", source_hash("model lenet5\ninput 1x28x28\n"))
    with pytest.raises(DataError, match="for model 'lenet5', not 'vgg'"):
        check_resume(tmp_path, ckpt, "vgg", ckpt["model_hash"])
    with pytest.raises(DataError, match="has changed"):
        check_resume(tmp_path, ckpt, "lenet5", source_hash("model lenet5\ninput 3x28x28\n"))


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_checkpoint(tmp_path / "missing.ckpt.npz")
    weights = tmp_path / "w.npz"
    save_weights(weights, params())
    with pytest.raises(DataError) as info:
        load_checkpoint(weights)
    assert "not a cnnc checkpoint" in info.value.message and ".ckpt.npz" in info.value.hint
    damaged = tmp_path / "d.npz"
    np.savez(damaged, **{ck.FORMAT_KEY: np.array("{not json")})
    with pytest.raises(DataError, match="damaged"):
        load_checkpoint(damaged)
    header = '{"version": 1, "state": {"a": {"__array__": "a"}}}'
    np.savez(damaged, **{ck.FORMAT_KEY: np.array(header)})
    with pytest.raises(DataError, match="entry a is missing"):
        load_checkpoint(damaged)


# ---------------------------------------------------------------------------------------------
# Atomic writes


class Crash(Exception):
    pass


def fail_midway(monkeypatch, exc=Crash):
    """Make the npz writer write part of the archive, then fail like a crash or Ctrl-C."""
    real = ck._write_npz

    def write_then_fail(f, arrays):
        real(f, arrays)
        f.truncate(f.tell() // 2)
        raise exc()

    monkeypatch.setattr(ck, "_write_npz", write_then_fail)


@pytest.mark.parametrize("exc", [Crash, KeyboardInterrupt])
def test_failed_checkpoint_write_keeps_the_old_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "w.ckpt.npz"
    old = state()
    save_checkpoint(path, old)
    before = path.read_bytes()
    fail_midway(monkeypatch, exc)
    newer = dict(old, epoch=4)
    with pytest.raises(exc):
        save_checkpoint(path, newer)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 3
    assert os.listdir(tmp_path) == ["w.ckpt.npz"]  # no temporary file left behind


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    fail_midway(monkeypatch)
    with pytest.raises(Crash):
        save_weights(tmp_path / "w.npz", params())
    assert os.listdir(tmp_path) == []


def test_crash_at_fsync_or_replace_keeps_the_old_weights(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    save_weights(path, params())
    before = path.read_bytes()
    newer = {k: v + 1 for k, v in params().items()}
    for target in ("fsync", "replace"):
        with monkeypatch.context() as m:
            m.setattr(os, target, lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
            with pytest.raises(KeyboardInterrupt):
                save_weights(path, newer)
        assert path.read_bytes() == before
        assert os.listdir(tmp_path) == ["w.npz"]
    save_weights(path, newer)
    np.testing.assert_array_equal(load_weights(path, params())["conv1.bias"], newer["conv1.bias"])


def test_write_into_a_missing_folder_or_unwritable_place(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        save_weights(tmp_path / "no" / "w.npz", params())

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(DataError, match="No space left"):
        save_checkpoint(tmp_path / "c.npz", state())
    assert os.listdir(tmp_path) == []
