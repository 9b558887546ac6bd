"""cnnc.npz through its users (weights, checkpoints, npz data sets): crafted files are DataErrors
found from names and headers alone, before any large member is read."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cnnc import npz
from cnnc.diagnostics import DataError
from cnnc.train import checkpoint as ck
from cnnc.train.checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
from cnnc.train.data import load_dataset

SHAPES = {"dense1.weight": (3, 64), "dense1.bias": (3,)}
HUGE = (1 << 40,)  # 4 TiB of float32


def params() -> dict:
    return {name: np.ones(shape, np.float32) for name, shape in SHAPES.items()}


def npy(shape, dtype="<f4", body: bytes = b"\0" * 64) -> bytes:
    """An .npy member whose header claims `shape`, followed by `body` (not necessarily that long)."""
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False, "shape": shape})
    return f.getvalue() + body


def add_members(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "a") as z:
        for name, data in members.items():
            z.writestr(name + ".npy", data)
    return path


@pytest.fixture
def never_read(monkeypatch):
    """Fails the test when a member named in the returned set is read."""
    names = set()
    real = npz.NpzReader.read

    def read(self, name, limit=None):
        assert name not in names, f"{name} was read"
        return real(self, name, limit)

    monkeypatch.setattr(npz.NpzReader, "read", read)
    return names


def test_an_extra_member_is_refused_by_name_before_it_is_read(tmp_path, never_read):
    path = tmp_path / "w.npz"
    save_weights(path, params())
    add_members(path, {"junk": npy(HUGE)})
    never_read.add("junk")
    with pytest.raises(DataError, match="has parameters the model does not: junk"):
        load_weights(path, SHAPES)


def test_a_parameter_claiming_a_huge_shape_is_refused_by_its_header(tmp_path, never_read):
    path = tmp_path / "w.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("dense1.weight.npy", npy(HUGE))
        z.writestr("dense1.bias.npy", npy((3,)))
    never_read.add("dense1.weight")
    with pytest.raises(DataError, match="dense1.weight is 1099511627776 in the file but the model's is 3x64"):
        load_weights(path, SHAPES)


def test_checkpoint_members_the_header_does_not_name_are_never_read(tmp_path, never_read):
    path = tmp_path / "c.ckpt.npz"
    save_checkpoint(path, {"params": params(), "epoch": 2})
    add_members(path, {"junk": npy(HUGE)})
    never_read.add("junk")
    assert load_checkpoint(path)["epoch"] == 2
    assert set(load_weights(path, SHAPES)) == set(SHAPES)


def test_a_checkpoint_array_claiming_more_than_it_holds_is_damaged(tmp_path):
    path = tmp_path / "c.ckpt.npz"
    header = {"version": 1, "state": {"params": {"dense1.weight": {"__array__": "big"}}}}
    np.savez(path, **{ck.FORMAT_KEY: np.array(json.dumps(header))})
    add_members(path, {"big": npy(HUGE)})
    with pytest.raises(DataError, match=r"damaged: big claims 4\.0 TiB but holds"):
        load_checkpoint(path)


def test_a_deeply_nested_checkpoint_header_is_damaged_not_a_recursion_error(tmp_path):
    path = tmp_path / "c.ckpt.npz"
    deep = "[" * 100_000 + "]" * 100_000
    np.savez(path, **{ck.FORMAT_KEY: np.array(f'{{"version": 1, "state": {deep}}}')})
    with pytest.raises(DataError, match="damaged checkpoint"):
        load_checkpoint(path)


def test_an_object_array_is_refused(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, **{"dense1.weight": np.array([None] * 3, dtype=object)})
    with pytest.raises(DataError):
        load_checkpoint(path)


def data_npz(path: Path, **override) -> Path:
    arrays = {"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.zeros(4, np.uint8)}
    np.savez(path, **{k: v for k, v in arrays.items() if k not in override})
    return add_members(path, override)


def test_data_arrays_claiming_a_huge_shape_are_damaged(tmp_path):
    path = data_npz(tmp_path / "d.npz", x_train=npy((1 << 30, 8, 8), "|u1"))
    with pytest.raises(DataError, match="damaged: x_train claims 64.0 GiB but holds"):
        load_dataset(path, (1, 8, 8), 3)


def test_data_members_other_than_the_splits_asked_for_are_never_read(tmp_path, never_read):
    path = data_npz(tmp_path / "d.npz", junk=npy(HUGE), x_test=npy(HUGE))
    never_read.update({"junk", "x_test", "y_test"})
    data = load_dataset(path, (1, 8, 8), 3, split=("train",))
    assert data.x_train.shape == (4, 1, 8, 8)


def test_an_array_larger_than_the_memory_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = data_npz(tmp_path / "d.npz")
    monkeypatch.setattr(npz, "default_limit", lambda: 100)
    with pytest.raises(DataError, match=r"x_train takes 256 bytes, more than the 100 bytes of memory"):
        load_dataset(path, (1, 8, 8), 3)


def test_a_memory_error_while_reading_is_a_message(tmp_path, monkeypatch):
    path = data_npz(tmp_path / "d.npz")

    def no_memory(*a, **k):
        raise MemoryError

    monkeypatch.setattr(np.lib.format, "read_array", no_memory)
    with pytest.raises(DataError, match="does not fit in memory"):
        load_dataset(path, (1, 8, 8), 3)


@pytest.mark.parametrize("load", [lambda p: load_weights(p, SHAPES), load_checkpoint,
                                  lambda p: load_dataset(p, (1, 8, 8), 3)], ids=["weights", "checkpoint", "data"])
def test_an_unreadable_npz_is_unreadable_not_damaged(load, tmp_path, monkeypatch):
    path = data_npz(tmp_path / "d.npz")

    def denied(file, *a, **k):
        if Path(file) == path:
            raise PermissionError(13, "Permission denied")
        return open(file, *a, **k)

    monkeypatch.setattr(npz, "open", denied, raising=False)
    with pytest.raises(DataError) as info:
        load(path)
    assert info.value.message == "cannot read: Permission denied"
