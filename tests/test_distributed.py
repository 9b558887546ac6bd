"""`mpiexec -n N cnnc train`: N = 1, 2 and 4 ranks (4 oversubscribed on a small machine) end with
the weights of a single-process run, a resume may change N, and a rank that fails, dies or hangs
stops the others with a message instead of a hang.

The runs are real processes under mpich's mpiexec (`pip install "cnnc[mpi]"`); without it the
MPI tests skip. Share and lane arithmetic is tested in-process below them.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnc.distributed import SIZE_VARIABLES
from cnnc.train.data import batches, rank_share

ROOT = Path(__file__).resolve().parents[1]

# batchnorm (statistics summed over ranks and lanes), dropout (masks by image index), momentum.
MODEL = """\
model tinympi
input 1x8x8
conv filters=4 size=3 padding=same
batchnorm
relu
maxpool size=2
flatten
dense units=16 activation=relu
dropout rate=0.3
dense units=3
loss cross_entropy
train optimizer=sgd lr=0.05 momentum=0.9 batch=18 epochs=10
"""
# 350 images in batches of 18: 20 steps an epoch, the last one of 8 images, so 200 steps in 10
# epochs; shares are uneven (18 over 4 ranks: 4, 5, 4, 5) and, with CNNC_THREADS=2, a rank's 9
# images run as two lanes.
IMAGES, TEST_IMAGES = 350, 40


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _mpi_missing() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return 'mpi4py is not installed (pip install "cnnc[mpi]")'
    if _mpiexec() is None:
        return 'no mpiexec beside Python or on PATH (pip install "cnnc[mpi]" brings mpich\'s)'
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=_mpi_missing() or "")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A run folder with the model and a small synthetic data set; runs use relative paths so the
    generated module, and Numba's cache of it, is the same in every test."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.cnn").write_text(MODEL)
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, IMAGES + TEST_IMAGES)
    x = (rng.random((len(y), 1, 8, 8), dtype=np.float32) + 0.4 * y[:, None, None, None]).astype(np.float32)
    np.savez(tmp_path / "data.npz", x_train=x[:IMAGES], y_train=y[:IMAGES], x_test=x[IMAGES:], y_test=y[IMAGES:])
    return tmp_path


def environment(threads: int = 2, **extra) -> dict:
    """This environment without a launcher's (mpiexec sets its own for the ranks it starts)."""
    env = dict(os.environ, CNNC_THREADS=str(threads), PYTHONPATH=str(ROOT), **extra)
    for name in SIZE_VARIABLES + ("PYTHONWARNINGS",):
        env.pop(name, None)
    return env


def cnnc(*args) -> list[str]:
    return [sys.executable, "-m", "cnnc.cli", *args]


def ranks(n: int, *args) -> list[str]:
    return [_mpiexec(), "-n", str(n), *cnnc(*args)]


def run(command, timeout=240, **env) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment(**env))


def relative_difference(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), 1e-12)) for k in b)


def weights(path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@needs_mpi
def test_one_two_and_four_ranks_train_the_single_process_model(folder):
    """200 steps with batchnorm and dropout: N = 1, 2, 4 ranks end with the single process's weights
    to float32 rounding; a run of 2 ranks resumed on 4 after epoch 5 too; rank 0 alone prints."""
    alone = run(cnnc("train", "m.cnn", "data.npz", "--out", "alone.npz", "-q"))
    assert alone.returncode == 0, alone.stderr
    reference = weights("alone.npz")
    for n in (1, 2, 4):
        result = run(ranks(n, "train", "m.cnn", "data.npz", "--out", f"n{n}.npz", "-q"))
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("epoch 10/10") == 1, result.stdout  # printed once, by rank 0
        assert _without_speed(result.stdout) == _without_speed(alone.stdout)  # loss, accuracies
        assert relative_difference(weights(f"n{n}.npz"), reference) < 1e-5, n
        assert n == 1 or f"on {n} processes" in result.stderr

    first = run(ranks(2, "train", "m.cnn", "data.npz", "--out", "resumed.npz", "-q", "--epochs", "5"))
    assert first.returncode == 0, first.stderr
    second = run(ranks(4, "train", "m.cnn", "data.npz", "--out", "resumed.npz", "-q", "--resume",
                       "resumed.ckpt.npz"))
    assert second.returncode == 0, second.stderr
    assert "resuming from resumed.ckpt.npz after epoch 5" in second.stderr
    assert relative_difference(weights("resumed.npz"), reference) < 1e-5

    evaluation = run(cnnc("eval", "m.cnn", "data.npz", "--weights", "alone.npz"))
    shared = run(ranks(2, "eval", "m.cnn", "data.npz", "--weights", "alone.npz"))
    assert shared.returncode == 0, shared.stderr
    assert shared.stdout == evaluation.stdout and shared.stdout.startswith("accuracy")


@needs_mpi
def test_a_rank_with_no_images_in_a_step_still_takes_part(folder):
    """A batch of 3 on 4 ranks: rank 0's share of every step is empty, yet it joins every sum."""
    alone = run(cnnc("train", "m.cnn", "data.npz", "--out", "alone.npz", "-q", "--batch", "3", "--epochs", "1",
                     "--limit", "60"))
    four = run(ranks(4, "train", "m.cnn", "data.npz", "--out", "four.npz", "-q", "--batch", "3", "--epochs", "1",
                     "--limit", "60"), threads=1)
    assert four.returncode == 0, four.stderr
    assert relative_difference(weights("four.npz"), weights("alone.npz")) < 1e-5


def _without_speed(lines: str) -> list[str]:
    return [line.split("  ")[:4] for line in lines.splitlines()]


@needs_mpi
def test_a_rank_that_cannot_read_its_data_stops_every_rank_naming_the_file(folder):
    (folder / "broken.npz").write_bytes(b"not a zip")
    result = run([_mpiexec(), "-n", "1", *cnnc("train", "m.cnn", "data.npz", "-q"), ":",
                  "-n", "1", *cnnc("train", "m.cnn", "broken.npz", "-q")], timeout=120)
    assert result.returncode == 1, result.stderr
    assert "rank 1 of 2 cannot start" in result.stderr and "broken.npz" in result.stderr
    assert result.stderr.count("cannot start") == 1  # said once, by rank 0
    assert "Traceback" not in result.stderr
    assert not (folder / "m.npz").exists()


@needs_mpi
@pytest.mark.parametrize("differs", ["model", "cnnc"])
def test_ranks_with_different_models_or_versions_are_refused_before_the_first_step(folder, differs):
    (folder / "other.cnn").write_text(MODEL.replace("units=16", "units=17"))
    other = cnnc("train", "other.cnn", "data.npz", "-q", "--out", "w.npz")
    if differs == "cnnc":  # rank 1 runs a cnnc that calls itself another version
        other = [sys.executable, "-c", "import sys, cnnc; cnnc.__version__ = '0.0.9'; from cnnc.cli import main; "
                 "sys.exit(main(sys.argv[1:]))", "train", "m.cnn", "data.npz", "-q", "--out", "w.npz"]
    result = run([_mpiexec(), "-n", "1", *cnnc("train", "m.cnn", "data.npz", "-q", "--out", "w.npz"), ":",
                  "-n", "1", *other], timeout=120)
    assert result.returncode == 1, result.stderr
    assert f"the ranks differ in {differs}" in result.stderr, result.stderr
    assert differs == "model" or "cnnc 0.0.9" in result.stderr
    assert "epoch" not in result.stdout and not (folder / "w.npz").exists()


def _rank_pid(marker: str, rank: int, timeout: float = 120) -> int:
    """The pid of the cnnc process of `rank` whose command line holds `marker`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker.encode() in command and b"cnnc.cli" in command and f"PMI_RANK={rank}".encode() in env:
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} running {marker}")


def _train_until_saved(marker: str, **env) -> subprocess.Popen:
    """2 ranks on a long run, returned once the first epoch's checkpoint is written."""
    process = subprocess.Popen(ranks(2, "train", "m.cnn", "data.npz", "--out", f"{marker}.npz", "-q",
                                     "--epochs", "500", "--batch", "2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(**env))
    deadline = time.monotonic() + 180
    while not Path(f"{marker}.ckpt.npz").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the first epoch never ended"
        time.sleep(0.2)
    return process


@needs_mpi
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks' processes in /proc")
@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_rank_killed_or_hanging_stops_the_others_within_30_seconds(folder, how):
    """Killed: mpich's mpiexec stops the job at once and says which rank died. Stopped (SIGSTOP, as a
    hung machine, or a launcher that does not notice): the other rank stops on its own after
    $CNNC_MPI_TIMEOUT, saying why. Either way the last checkpoint stays loadable."""
    from cnnc.train.checkpoint import load_checkpoint

    process = _train_until_saved(how, CNNC_MPI_TIMEOUT="5")
    victim = _rank_pid(f"{how}.npz", 1)
    os.kill(victim, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    started = time.monotonic()
    try:
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert time.monotonic() - started < 30
    assert process.returncode != 0
    if how == "stopped":
        assert "no word from the other ranks for 5 s" in stderr and "stopping all 2 ranks" in stderr, stdout + stderr
    else:
        assert "BAD TERMINATION" in stdout and "Killed (signal 9)" in stdout, stdout + stderr  # mpich's report
    state = load_checkpoint(f"{how}.ckpt.npz")
    assert state["epoch"] >= 1


# -- in-process: no MPI needed ------------------------------------------------------------------


def test_cnnc_alone_never_imports_mpi4py():
    code = ("import sys, cnnc, cnnc.cli, cnnc.train.loop; from cnnc.distributed import world; "
            "assert world().size == 1; assert 'mpi4py' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], env=environment(), capture_output=True).returncode == 0


def test_launched_by_mpiexec_without_mpi4py_is_a_clear_error(monkeypatch):
    from cnnc import distributed

    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now fails
    distributed.world.cache_clear()
    try:
        with pytest.raises(distributed.DistributedError, match="one of 2 MPI processes") as error:
            distributed.world()
        assert 'pip install "cnnc[mpi]"' in error.value.render()
    finally:
        distributed.world.cache_clear()


# -- in-process: how a batch is shared out -----------------------------------------------------


@pytest.mark.parametrize("n, count", [(18, 4), (8, 4), (3, 4), (7, 1)])
def test_rank_shares_cover_the_batch_once_and_differ_by_one_at_most(n, count):
    parts = [rank_share(n, r, count) for r in range(count)]
    assert [i for p in parts for i in range(n)[p]] == list(range(n))
    sizes = [p.stop - p.start for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_every_rank_shares_out_the_same_shuffled_batches():
    x, y = np.arange(23)[:, None] * np.ones((1, 3)), np.arange(23)
    whole = [yb.tolist() for _, yb in batches(x, y, 10, np.random.default_rng(1))]
    shares = [list(batches(x, y, 10, np.random.default_rng(1)).shares(r, 3)) for r in range(3)]
    for step, batch in enumerate(whole):
        got = [share[step] for share in shares]
        assert sum((yb.tolist() for _, yb, _, _ in got), []) == batch
        assert all(total == len(batch) for _, _, total, _ in got)
        assert [start for _, _, _, start in got] == [rank_share(len(batch), r, 3).start for r in range(3)]
        assert all(np.array_equal(xb[:, 0], yb) for xb, yb, _, _ in got)
