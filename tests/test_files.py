"""cnnc.files and the commands that write: atomic writes, no output over an input, stale temporary
files cleaned up, unwritable places found before any work."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc import files, runtime
from cnnc.cli import main
from cnnc.diagnostics import DataError
from cnnc.train.checkpoint import save_checkpoint, save_weights

MODEL = """\
model small
input 1x8x8
flatten
dense units=3
loss cross_entropy
train batch=8 epochs=1
"""


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    Path("m.cnn").write_text(MODEL)
    np.savez("d.npz", x_train=np.zeros((8, 8, 8), np.uint8), y_train=np.arange(8) % 3)
    save_weights("w.npz", {k: v.copy() for k, v in cnnc.compile("m.cnn").params.items()})
    return tmp_path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


OVERWRITES = [
    (["train", "m.cnn", "d.npz", "--out", "d.npz"], "training data"),
    (["train", "m.cnn", "d.npz", "--out", "./m.cnn"], "model file"),
    (["train", "m.cnn", "d.ckpt.npz", "--out", "d.npz"], "training data"),  # the checkpoint beside --out
    (["train", "m.cnn", "d.npz", "--out", "w.ckpt.npz", "--resume", "w.ckpt.npz"], "checkpoint to resume"),
    (["export", "m.cnn", "--weights", "w.npz", "-o", "w.npz"], "weights file"),
    (["export", "m.cnn", "--weights", "w.npz", "-o", "m.cnn"], "model file"),
    (["compile", "m.cnn", "--emit", "json", "-o", "m.cnn"], "model file"),
    (["dot", "m.cnn", "-o", "m.cnn"], "model file"),
]


@pytest.mark.parametrize("argv, what", OVERWRITES, ids=[f"{a[0]}-{w}" for a, w in OVERWRITES])
def test_an_output_never_replaces_an_input(argv, what, folder, capsys):
    if "d.ckpt.npz" in argv:
        os.replace("d.npz", "d.ckpt.npz")
    if "w.ckpt.npz" in argv:
        save_checkpoint("w.ckpt.npz", {"epoch": 1})
    (folder / "link.cnn").symlink_to("m.cnn")
    before = snapshot(folder)
    code, out, err = run(capsys, *argv)
    assert code == 1 and f"is the {what}; writing there would destroy it" in err
    assert snapshot(folder) == before
    code, _, err = run(capsys, *[("link.cnn" if a == "m.cnn" and i > 1 else a) for i, a in enumerate(argv)])
    assert code == 1 and "would destroy it" in err, "a symbolic link to an input is that input"
    assert snapshot(folder) == before


def test_an_unwritable_out_is_found_before_training(folder, capsys, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained although the weights could not be saved")

    monkeypatch.setattr("cnnc.train.run.train", no_training)
    for out, problem in [("/proc/cnnc-test.npz", "cannot write here"), ("no/such/w.npz", "does not exist"),
                         (".", "is a folder")]:
        code, _, err = run(capsys, "train", "m.cnn", "d.npz", "--out", out)
        assert code == 1 and problem in err, err
    assert not list(folder.glob(".*.tmp"))


def test_export_keeps_the_previous_file_when_the_write_fails(folder, capsys, monkeypatch):
    assert run(capsys, "export", "m.cnn", "--weights", "w.npz", "-o", "m.onnx")[0] == 0
    before = Path("m.onnx").read_bytes()

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    code, _, err = run(capsys, "export", "m.cnn", "--weights", "w.npz", "-o", "m.onnx")
    assert code == 1 and "No space left" in err and "m.onnx" in err
    assert Path("m.onnx").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir() if "onnx" in p.name) == ["m.onnx"]


def test_compile_o_leaves_no_empty_file_on_error(folder, capsys):
    Path("bad.cnn").write_text("model bad\ninput 1x8x8\ndense units=3\n")
    code, _, err = run(capsys, "compile", "bad.cnn", "-o", "out.txt")
    assert code == 1 and "flatten" in err
    assert not Path("out.txt").exists()


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_killed_saves_are_removed_by_the_next_save(tmp_path):
    target = tmp_path / "w.npz"
    stale = tmp_path / f".w.npz.{dead_pid()}.0123abcd.tmp"
    mine = tmp_path / f".w.npz.{os.getpid()}.89abcdef.tmp"  # an earlier process with this pid
    live = tmp_path / f".w.npz.{os.getppid()}.0123abcd.tmp"  # a save under way in another process
    keep = [tmp_path / ".w.npz.tmp", tmp_path / f".other.npz.{dead_pid()}.0123abcd.tmp",
            tmp_path / f"w.npz.{dead_pid()}.0123abcd.tmp", tmp_path / f".w.npz.{dead_pid()}.notes.tmp"]
    for p in [stale, mine, live] + keep:
        p.write_bytes(b"x" * 1000)
    files.atomic_write_bytes(target, b"weights")
    assert target.read_bytes() == b"weights"
    assert not stale.exists() and not mine.exists()
    assert live.exists() and all(p.exists() for p in keep)


def test_a_killed_save_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    """SIGKILL in the middle of a save, for real: the old weights survive, the leftover goes."""
    target = tmp_path / "w.npz"
    files.atomic_write_bytes(target, b"old")
    script = (f"import os, cnnc.files as f\n"
              f"f.atomic_write(r'{target}', lambda out: (out.write(b'new'), out.flush(), os.kill(os.getpid(), 9)))")
    subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(Path(cnnc.__file__).parents[1])})
    assert target.read_bytes() == b"old"
    assert len(list(tmp_path.glob(".w.npz.*.tmp"))) == 1
    files.atomic_write_bytes(target, b"newer")
    assert target.read_bytes() == b"newer" and not list(tmp_path.glob(".*.tmp"))


def test_same_file_sees_links_and_spellings(tmp_path):
    a = tmp_path / "a.npz"
    a.write_bytes(b"1")
    (tmp_path / "b.npz").symlink_to(a)
    assert files.same_file(a, tmp_path / "b.npz")
    assert files.same_file(a, tmp_path / "sub" / ".." / "a.npz")
    assert files.same_file(tmp_path / "new.npz", tmp_path / "." / "new.npz")
    assert not files.same_file(a, tmp_path / "new.npz")
    with pytest.raises(DataError, match="is the data"):
        files.refuse_overwrite(tmp_path / "b.npz", {"data": a, "other": None})


# -- the cache folder of generated modules ------------------------------------------------------


def fresh_model(tag: str) -> str:
    """A model whose generated module no process has imported yet."""
    return MODEL.replace("model small", f"model cache_{tag}_{os.getpid()}_{secrets.token_hex(4)}")


def works(net) -> bool:
    return net.forward(np.ones((2, 1, 8, 8), np.float32)).shape == (2, 3)


@pytest.mark.parametrize("problem", ["a file", "unwritable", "full disk", "unreadable file"])
def test_a_cache_folder_that_cannot_be_used_falls_back_with_a_warning(problem, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNNC_CACHE_DIR", str(cache))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    if problem == "a file":
        cache.write_text("not a folder")
    elif problem == "unwritable":
        monkeypatch.setenv("CNNC_CACHE_DIR", "/proc/cnnc-cache")
    else:
        real_write, real_read = Path.write_text, Path.read_text

        def write_text(self, *a, **k):
            if self.parent == cache and problem == "full disk":
                raise OSError(28, "No space left on device")
            return real_write(self, *a, **k)

        def read_text(self, *a, **k):
            if self.parent == cache and problem == "unreadable file":
                raise PermissionError(13, "Permission denied")
            return real_read(self, *a, **k)

        monkeypatch.setattr(Path, "write_text", write_text)
        monkeypatch.setattr(Path, "read_text", read_text)
        if problem == "unreadable file":
            cache.mkdir()
            net = cnnc.compile_source(text := fresh_model("unreadable"))
            (cache / Path(net.module.__file__).name).touch()  # it is there, but cannot be read
            sys.modules.pop(net.module.__name__)
    net = cnnc.compile_source(text if problem == "unreadable file" else fresh_model(problem.replace(" ", "_")))
    assert works(net)
    assert Path(net.module.__file__).parent.parent == tmp_path / "tmp"
    err = capsys.readouterr().err
    assert err.startswith("warning: cannot use the cache folder") and "CNNC_CACHE_DIR" in err


def test_without_any_writable_folder_the_module_runs_from_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNC_CACHE_DIR", "/proc/cnnc-cache")
    monkeypatch.setattr(tempfile, "tempdir", "/proc/cnnc-tmp")
    net = cnnc.compile_source(fresh_model("memory"))
    assert works(net) and net.module.__file__ is None


def test_an_empty_xdg_cache_home_is_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNC_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    for value in ("", "relative/cache"):
        monkeypatch.setenv("XDG_CACHE_HOME", value)
        assert runtime.cache_dir() == tmp_path / "home" / ".cache" / "cnnc"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.cache_dir() == tmp_path / "xdg" / "cnnc"


# -- devices and pipes where files are expected --------------------------------------------------


@pytest.mark.parametrize("argv, expected", [
    (["compile", "/dev/zero"], "larger than 16 MiB: not a model file"),
    (["eval", "m.cnn", "d.npz", "--weights", "/dev/zero"], "/dev/zero: error: is not a regular file"),
    (["train", "m.cnn", "/dev/zero"], "/dev/zero: error: is neither a file nor a folder"),
])
def test_a_device_is_refused_without_reading_it_all(argv, expected, folder, capsys):
    code, out, err = run(capsys, *argv)
    assert code == 1 and expected in err


def test_a_model_from_a_pipe_is_read_once(folder, capsys):
    """`cnnc train <(cat m.cnn) ...`: the model is read for the graph and for the checkpoint's hash
    from one read; a second read of the pipe would wait forever."""
    fifo = folder / "model.pipe"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"cat m.cnn > '{fifo}'"])
    try:
        code, _, err = run(capsys, "train", fifo, "d.npz", "--out", "w.npz", "-q")
    finally:
        writer.kill()
    assert code == 0, err
    from cnnc.train.checkpoint import load_checkpoint, source_hash

    assert load_checkpoint("w.ckpt.npz")["model_hash"] == source_hash(MODEL)
