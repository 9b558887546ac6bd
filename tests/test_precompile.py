"""Compiling a model's kernels ahead of the first call: the dry run finds exactly the kernel
signatures the real calls use, and a cold compile (two processes) leaves them all in Numba's cache."""
from __future__ import annotations

import importlib.util
import os
import py_compile
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np

import cnnc
from cnnc.precompile import claim, families, kernel_calls

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def spy_calls(module, probes):
    """The (kernel, argument types) pairs of the real calls, which run."""
    seen = {}
    namespace = dict(vars(module))
    for name, value in vars(module).items():
        if isinstance(value, numba.core.registry.CPUDispatcher):
            def spy(*args, kernel=value):
                seen.setdefault((kernel, tuple(numba.typeof(a) for a in args)), None)
                return kernel(*args)
            namespace[name] = spy
    for function, args in probes:
        real = getattr(module, function)
        type(real)(real.__code__, namespace, None, real.__defaults__)(*args)
    return list(seen)


def test_the_dry_run_finds_the_signatures_of_the_real_calls():
    for example, kernels in (("resnet_tiny", {"conv2d_forward", "conv2d_backward", "direct_backward", "dense_backward"}),
                             ("vgg_small", {"direct_forward", "conv3x3_backward", "dense_backward"})):
        net = cnnc.compile(EXAMPLES / f"{example}.cnn")
        x = np.random.default_rng(0).standard_normal((2,) + net.input_shape).astype(np.float32)
        y = np.array([1, 0])
        probes = [("forward", (x, net.vector)),
                  ("loss_and_grads", (x, y, net.vector.copy(), net.grad_vector.copy(), 3))]
        dry = kernel_calls(net.module, probes)
        assert dry == spy_calls(net.module, probes)
        assert {k.py_func.__name__ for k, _ in dry} >= kernels


def test_families_keep_a_modules_kernels_together_unless_one_module_is_most_of_the_work():
    """resnet20: Winograd's two kernels in one group (they share helpers), the costliest first;
    vgg_small, where Winograd's kernels outweigh all the others, gets them one by one, as does a
    model whose kernels all come from one module (or the helper would have nothing to do)."""
    def groups(example):
        net = cnnc.compile(EXAMPLES / f"{example}.cnn")
        x, y = np.ones((1,) + net.input_shape, np.float32), np.zeros(1, np.int64)
        pairs = kernel_calls(net.module, [("forward", (x, net.vector)),
                                          ("loss_and_grads", (x, y, net.vector, net.grad_vector, 0))])
        found = families(pairs)
        assert sorted(sum(found, []), key=repr) == sorted(pairs, key=repr)  # every pair, once
        return [{k.py_func.__name__ for k, _ in group} for group in found]

    resnet20 = groups("resnet20")
    assert resnet20[0] == {"conv3x3_forward", "conv3x3_backward"}
    assert {"conv2d_forward", "conv2d_backward"} in resnet20 and {"direct_forward", "direct_backward"} in resnet20
    vgg_small = groups("vgg_small")
    assert vgg_small[:2] == [{"conv3x3_backward"}, {"conv3x3_forward"}]
    assert {"direct_forward", "direct_backward"} in vgg_small
    from cnnc.kernels.conv import conv2d_backward, conv2d_forward  # one module's kernels alone: one each
    alone = families([(conv2d_forward, ()), (conv2d_backward, ())])
    assert [[k.py_func.__name__ for k, _ in group] for group in alone] == [["conv2d_backward"], ["conv2d_forward"]]


def test_claims_go_to_the_first_asker(tmp_path):
    assert claim(str(tmp_path), 3) and not claim(str(tmp_path), 3) and claim(str(tmp_path), 4)


TINY = """
input 1x5x5
flatten
dense units=4 activation=relu
dense units=3
softmax
loss cross_entropy
"""


def test_a_cold_compile_fills_the_cache_and_a_fresh_process_runs_from_it(tmp_path):
    """Three fresh processes on an empty cache: `cnnc compile` compiles every kernel (itself and
    its helper process), the same command again finds them all cached, and a program runs the
    model from the cache (once a crash: a cached caller of parallel kernels)."""
    model = tmp_path / "tiny.cnn"
    model.write_text(TINY)
    env = {**os.environ, "CNNC_CACHE_DIR": str(tmp_path / "cnnc"), "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    command = [shutil.which("cnnc")] if shutil.which("cnnc") else [sys.executable, "-m", "cnnc.cli"]
    counts = []
    for _ in range(2):
        done = subprocess.run(command + ["compile", str(model)], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        found = re.search(r"kernels: (\d+) \((\d+) compiled, (\d+) from Numba's cache\)", done.stdout)
        counts.append(tuple(map(int, found.groups())))
    (total, compiled, cached), again = counts
    assert total >= 5 and compiled == total and cached == 0
    assert again == (total, 0, total)
    program = ("import numpy as np, cnnc, sys; net = cnnc.compile(sys.argv[1]);"
               "print(net.forward(np.ones((2, 1, 5, 5), np.float32)).sum())")
    done = subprocess.run([sys.executable, "-c", program, str(model)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert abs(float(done.stdout) - 2.0) < 1e-5  # two rows of softmax probabilities


SMALL = """\
model small
input 1x4x4
flatten
dense units=3
loss cross_entropy
"""


def test_damaged_caches_repair_themselves(tmp_path):
    """What kills and full disks leave in the caches: an empty Numba index, a truncated data
    file, a corrupt .pyc beside a generated module. Each run still works and puts the cache right."""
    model = tmp_path / "small.cnn"
    model.write_text(SMALL)
    numba_cache, cnnc_cache = tmp_path / "numba", tmp_path / "cnnc"
    env = {**os.environ, "CNNC_CACHE_DIR": str(cnnc_cache), "NUMBA_CACHE_DIR": str(numba_cache)}
    command = [shutil.which("cnnc")] if shutil.which("cnnc") else [sys.executable, "-m", "cnnc.cli"]

    def compiled() -> tuple[int, int]:
        done = subprocess.run(command + ["compile", str(model)], capture_output=True, text=True, env=env)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        found = re.search(r"kernels: (\d+) \((\d+) compiled", done.stdout)
        return int(found[1]), int(found[2])

    total, _ = compiled()
    (index,) = numba_cache.rglob("dense.dense_forward-*.nbi")
    index.write_bytes(b"")
    (helper,) = numba_cache.rglob("dense._matmul_wt_small-*.nbi")  # loaded when a caller compiles
    helper.write_bytes(helper.read_bytes()[:20])
    (data,) = numba_cache.rglob("layout.nchw_to_cnhw-*.nbc")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    for module in cnnc_cache.glob("cnnc_model_*.py"):
        pyc = Path(importlib.util.cache_from_source(str(module)))
        py_compile.compile(str(module), cfile=str(pyc))
        pyc.write_bytes(pyc.read_bytes()[:16] + b"\xff" * 64)  # a valid header, a damaged body
    assert compiled() == (total, 2)
    assert compiled() == (total, 0)
    program = ("import numpy as np, cnnc, sys; net = cnnc.compile(sys.argv[1]); net.compile();"
               "x = np.ones((2, 1, 4, 4), np.float32); print(net.loss_and_grads(x, np.zeros(2, np.int64))[0])")
    done = subprocess.run([sys.executable, "-c", program, str(model)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) > 0
