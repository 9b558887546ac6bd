"""Compiling a model's kernels before its first call, on two cores when Numba's cache is cold.

A dry run of the generated functions, with every kernel replaced by a recorder, lists the
(kernel, argument types) pairs the model will call. Those missing from Numba's on-disk cache
are compiled by this process and one helper process, each taking the costliest group left, a
group being a kernel module's kernels (`families`; each claims a group by creating a file);
both write Numba's cache, so the real first call then only loads. Should the helper fail, this
process compiles what is left.
Kernels already in the cache are not loaded here: a cached `cnnc compile` only checks them.
Compiling a kernel takes 0.3-10 s and they are independent: two processes halve a cold compile.
"""
from __future__ import annotations

import glob
import importlib
import os
import pickle
import subprocess
import sys
import tempfile
import types

import numba
import numpy as np
from numba.core.registry import CPUDispatcher


def kernel_calls(module: types.ModuleType, probes: list[tuple[str, tuple]]) -> list[tuple[CPUDispatcher, tuple]]:
    """The distinct (kernel, argument types) pairs that module.<function>(*args) would call, in order."""
    calls: dict = {}
    recorders = {}
    for name, value in vars(module).items():
        if isinstance(value, CPUDispatcher):
            def record(*args, kernel=value):
                calls.setdefault((kernel, tuple(numba.typeof(a) for a in args)), None)
            recorders[name] = record
    namespace = {**vars(module), **recorders}
    with np.errstate(all="ignore"):  # the dry run computes on uninitialized buffers
        for function, args in probes:
            real = getattr(module, function)
            types.FunctionType(real.__code__, namespace, None, real.__defaults__)(*args)
    return list(calls)


def load_all(pairs) -> None:
    """Loads each (kernel, argument types) pair's machine code into this process, from Numba's
    cache or by compiling it (a process forked afterwards inherits it)."""
    for kernel, signature in pairs:
        kernel.compile(signature)


def is_cached(kernel: CPUDispatcher, signature: tuple) -> bool:
    """Whether Numba's cache holds machine code for this signature (without loading it).

    A damaged entry (an empty or truncated index, a truncated data file, as a kill or a full disk
    leaves them) is removed, so the kernel is compiled and cached again instead of failing on
    every run: Numba itself would raise from the index, and load a truncated data file at the
    kernel's first call."""
    if signature in kernel.overloads:
        return True
    try:  # Numba's internals: any surprise only means "compile it"
        cache_file = kernel._cache._cache_file
        key = kernel._cache._index_key(signature, kernel.targetctx.codegen())
    except Exception:
        return False
    try:
        name = cache_file._load_index().get(key)
    except Exception:  # unpickling a damaged index raises anything
        remove_cache_entries(cache_file)
        return False
    if name is None:
        return False
    if not complete_pickle(cache_file._data_path(name)):
        remove_cache_entries(cache_file)
        return False
    return True


def complete_pickle(path: str) -> bool:
    """Whether a data file is there and ends as every pickle does (a truncated one almost never
    does); reads one byte, not the file."""
    try:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == pickle.STOP
    except OSError:  # missing, or shorter than a byte
        return False


def remove_cache_entries(cache_file) -> None:
    """A kernel's index and data files in Numba's cache."""
    remove_index(cache_file._index_path)


def remove_index(index: str) -> None:
    data = glob.glob(glob.escape(index[: -len(".nbi")]) + ".*.nbc")
    for path in [index] + data:
        try:
            os.unlink(path)
        except OSError:
            pass


def repair_cache_folders(pairs) -> None:
    """Removes damaged indexes from the cache folders of these kernels, the helpers' too: Numba
    loads a helper's cache while it compiles a caller, and a damaged index would fail that."""
    folders = set()
    for kernel, _ in pairs:
        try:
            folders.add(kernel._cache._cache_file._cache_path)
        except AttributeError:
            pass
    for index in (i for folder in folders for i in glob.glob(os.path.join(glob.escape(folder), "*.nbi"))):
        try:
            with open(index, "rb") as f:
                pickle.load(f)
                pickle.loads(f.read())
        except OSError:
            pass
        except Exception:  # unpickling a damaged index raises anything
            remove_index(index)


# Seconds to compile, measured cold on one core, to hand out the slow ones first (default: 1).
COMPILE_SECONDS = {"conv3x3_backward": 14.0, "conv3x3_forward": 12.0, "conv2d_backward": 7.5, "conv2d_forward": 5.3,
                   "maxpool_forward": 2.0, "dense_forward": 1.8, "dense_backward": 1.6,
                   "batchnorm_train_apply": 0.5, "direct_forward": 2.6, "direct_backward": 2.2,
                   # measured cold under load (others' tests running), so roughly: they embed conv2d_*
                   "convtranspose_backward": 13.0, "convtranspose_forward": 8.0, "upsample_bilinear_forward": 2.3}


def compile_all(pairs: list[tuple[CPUDispatcher, tuple]]) -> int:
    """Makes sure every pair has machine code, in this process or in Numba's cache (cached code
    is not loaded: the first call does that); returns how many had to be compiled."""
    missing = [(k, s) for k, s in pairs if not is_cached(k, s)]
    if missing:
        repair_cache_folders(missing)
    if len(missing) > 1:
        groups = families(missing)
        with tempfile.TemporaryDirectory(prefix="cnnc-compile-") as claims:
            helper = start_helper(groups, claims)
            for index, group in enumerate(groups):
                if helper is None or claim(claims, index):
                    for kernel, signature in group:
                        kernel.compile(signature)
            if helper is not None:
                helper.wait()
    for kernel, signature in missing:  # what the helper left, or could not write to the cache
        if not is_cached(kernel, signature):
            kernel.compile(signature)
    return len(missing)


def families(pairs: list[tuple[CPUDispatcher, tuple]]) -> list[list[tuple[CPUDispatcher, tuple]]]:
    """The pairs grouped by the kernel module that defines them, costliest group first (by
    COMPILE_SECONDS): a module's kernels share helpers, which one process then compiles once for
    all of them (conv3x3_backward and conv3x3_forward took 12.0 + 3.7 s in one process, 10.1 + 7.2
    s in two; resnet20's cold `cnnc compile`, A/B, three each: 18.8-19.8 s kernel by kernel,
    17.6-18.2 s by module). A group that would take longer than all the others together is handed
    out kernel by kernel instead, so that both processes get work (vgg_small, mostly Winograd's
    kernels: 14.5-15.1 s so, 15.8 s as one group)."""
    groups: dict[str, list] = {}
    for pair in sorted(pairs, key=seconds, reverse=True):
        groups.setdefault(pair[0].py_func.__module__, []).append(pair)
    ordered = sorted(groups.values(), key=total_seconds, reverse=True)
    largest, rest = ordered[0], ordered[1:]
    if total_seconds(largest) > sum(map(total_seconds, rest)):  # the other process would wait (or have nothing)
        ordered = sorted([[pair] for pair in largest] + rest, key=total_seconds, reverse=True)
    return ordered


def seconds(pair: tuple[CPUDispatcher, tuple]) -> float:
    return COMPILE_SECONDS.get(pair[0].py_func.__name__, 1.0)


def total_seconds(group: list[tuple[CPUDispatcher, tuple]]) -> float:
    return sum(map(seconds, group))


def claim(folder: str, index: int) -> bool:
    """Takes group `index` for this process: True for the first process to ask."""
    try:
        os.close(os.open(os.path.join(folder, str(index)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


# The helper imports the cnnc that this process runs, whatever its working folder holds: with
# `python -m cnnc.precompile`, a source checkout in the working folder shadowed an installed cnnc,
# so the helper compiled the checkout's kernels into a cache of their own (Numba keys its cache
# by the source path) and this process compiled them all again. `-P` leaves the working folder
# off sys.path; the folder holding this cnnc goes in front only when it is not there already (an
# installed cnnc's site-packages keeps its place behind the standard library).
HELPER = """
import sys
folder = sys.argv[1]
if folder not in sys.path:
    sys.path.insert(0, folder)
from cnnc.precompile import helper_main
helper_main(sys.argv[2])
"""


def start_helper(groups, claims: str) -> subprocess.Popen | None:
    """A helper process compiling the groups of (kernel, signature) it can claim, or None."""
    names = [[(k.py_func.__module__, k.py_func.__name__, s) for k, s in group] for group in groups]
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        helper = subprocess.Popen([sys.executable, "-P", "-c", HELPER, package_parent, claims], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        helper.stdin.write(pickle.dumps(names))
        helper.stdin.close()
        return helper
    except (OSError, pickle.PicklingError):
        return None


def helper_main(claims: str) -> None:
    groups = pickle.loads(sys.stdin.buffer.read())
    for index, group in enumerate(groups):
        if claim(claims, index):
            for module, name, signature in group:
                getattr(importlib.import_module(module), name).compile(signature)
