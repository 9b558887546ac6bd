"""Weights files and resume checkpoints: what `cnnc train --out`/`--resume` write and read.

- A weights file (``--out WEIGHTS.npz``, ``--weights``) is a plain ``.npz`` keyed by parameter name
  (``conv1.weight``, ``bn1.running_mean``, ...), float32 arrays in PyTorch layouts, so
  ``{k: torch.from_numpy(v) for k, v in np.load(path).items()}`` is a PyTorch state_dict. A run
  that normalized its input (``normalize=auto``, ``mean=``/``std=``) adds the per-channel
  ``input.mean`` and ``input.std`` (NORMALIZATION_NAMES; drop them for PyTorch), which
  ``load_normalization`` reads and ``load_weights`` leaves aside.
- The checkpoint that ``--resume`` continues from is kept beside it as ``WEIGHTS.ckpt.npz``
  (``checkpoint_path``): ``runs/lenet.npz`` -> ``runs/lenet.ckpt.npz``, ``w`` -> ``w.ckpt.npz``.
  It is an .npz too: every numpy array of the state is an entry named by its path in the state
  (``params/conv1.weight``, ``optimizer/exp_avg``) and everything else (ints of any size, floats,
  strings, lists, None, nested dicts, i.e. the epoch, class names, model name and hash, and the
  RNG's bit-generator state with its 128-bit integers) is JSON in the entry ``__cnnc_checkpoint__``,
  so a state round-trips exactly (tuples come back as lists). numpy scalars keep their dtype.
  The trainer's state holds, by convention: ``params`` (dict name -> array), ``optimizer``
  (the optimizer's state_dict), ``epoch`` (epochs completed), ``rng`` (``rng_state(rng)``),
  ``classes`` (list of str), ``model`` (model name) and ``model_hash`` (``source_hash(text)``);
  ``check_resume`` compares the last two with the model being trained. A recipe with a
  validation split adds ``val_rows`` (the held-out training images) and ``best`` (the best
  validation accuracy and its epoch); the normalization is in ``params`` as in the weights.

Every file is written atomically: into a temporary file in the destination folder, flushed and
fsynced, then moved over the destination with os.replace. A crash or Ctrl-C mid-write leaves the
previous file intact and no partial file behind. Problems with a user's files are DataErrors
naming the file.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from cnnc.diagnostics import DataError
from cnnc.files import atomic_write
from cnnc.npz import NpzReader

FORMAT_KEY = "__cnnc_checkpoint__"
FORMAT_VERSION = 1
CHECKPOINT_SUFFIX = ".ckpt.npz"
NORMALIZATION_NAMES = ("input.mean", "input.std")  # no parameter's kind is `mean` or `std`


def checkpoint_path(weights_path) -> Path:
    """The resume checkpoint kept beside a weights file: WEIGHTS.npz -> WEIGHTS.ckpt.npz."""
    p = Path(weights_path)
    stem = p.name[: -len(".npz")] if p.name.lower().endswith(".npz") else p.name
    return p.with_name(stem + CHECKPOINT_SUFFIX)


def source_hash(text: str) -> str:
    """A hash of a model's source text, to tell whether a checkpoint belongs to this model."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# Weights


def save_weights(path, params: dict) -> None:
    """Write parameters as an .npz keyed by parameter name, atomically."""
    arrays = {}
    for name, value in params.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"parameter names must be non-empty strings, got {name!r}")
        arrays[name] = np.ascontiguousarray(value)
    atomic_write_npz(path, arrays)


def load_weights(path, expected: dict) -> dict[str, np.ndarray]:
    """Read a weights .npz and check it against `expected` (name -> shape, or an array whose
    shape is used): every name present, no others, same shapes. Returns float32 arrays.
    A checkpoint file is accepted too: its parameters are used. The names and each array's
    shape are checked before any array is read."""
    shapes = {name: tuple(getattr(s, "shape", s)) for name, s in expected.items()}
    with NpzReader(path) as npz:
        members = {name: name for name in npz.names}
        if FORMAT_KEY in npz.names:
            members = _parameter_members(path, _read_header(path, npz))
        _check_names(path, shapes, {n: m for n, m in members.items() if n not in NORMALIZATION_NAMES})
        out = {}
        for name, shape in shapes.items():
            stored, dtype = npz.header(members[name])
            if stored != shape:
                raise DataError(path, f"{name} is {_shape(stored)} in the file but the model's "
                                f"is {_shape(shape)}")
            if dtype.kind not in "fiu":
                raise DataError(path, f"{name} has dtype {dtype}; expected float32")
            with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, refused below
                out[name] = _finite(path, name, npz.read(members[name]).astype(np.float32))
    return out


def network_weights(net) -> dict[str, np.ndarray]:
    """What a weights file holds of a network: a copy of every parameter, and its input
    normalization (NORMALIZATION_NAMES) when it has one."""
    params = {name: view.copy() for name, view in net.params.items()}
    if net.normalization is not None:
        params.update(zip(NORMALIZATION_NAMES, net.normalization))
    return params


def load_network_weights(net, path) -> None:
    """A weights file's (or checkpoint's) parameters and normalization into net, all read and
    checked before any parameter is changed (a DataError naming the file otherwise)."""
    params = load_weights(path, {n: v.shape for n, v in net.params.items()})
    normalization = load_normalization(path, net.input_shape[0])
    for name, value in params.items():
        net.params[name] = value
    net.normalization = normalization


def load_normalization(path, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The input normalization (mean, std), C float32 values each, saved in a weights file or
    checkpoint; None when the run that wrote it did not normalize."""
    with NpzReader(path) as npz:
        members = {name: name for name in npz.names}
        if FORMAT_KEY in npz.names:
            members = _parameter_members(path, _read_header(path, npz))
        if not all(n in members for n in NORMALIZATION_NAMES):
            return None
        values = []
        for name in NORMALIZATION_NAMES:
            stored, dtype = npz.header(members[name])
            if stored != (channels,) or dtype.kind != "f":
                raise DataError(path, f"{name} is {_shape(stored)} {dtype}; expected {channels} float values, "
                                "one per input channel")
            values.append(_finite(path, name, npz.read(members[name]).astype(np.float32)))
    if not np.all(values[1] > 0):
        raise DataError(path, "input.std holds values <= 0; these weights cannot be used")
    return values[0], values[1]


def _finite(path, name: str, array: np.ndarray) -> np.ndarray:
    """Weights with NaN or infinite values give plausible-looking nonsense: refuse them."""
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise DataError(path, f"{name} holds {bad:,} NaN or infinite value{'s' if bad > 1 else ''}; "
                        "these weights cannot be used", hint="were they saved from a run that diverged?")
    return array


def _parameter_members(path, tree) -> dict[str, str]:
    """Parameter name -> the checkpoint member holding it, from the checkpoint's header."""
    params = tree.get("params") if isinstance(tree, dict) else None
    if not isinstance(params, dict) or not all(_is_array_node(v) for v in params.values()):
        raise DataError(path, "damaged checkpoint: its header lists no parameters")
    return {name: node["__array__"] for name, node in params.items()}


def _check_names(path, shapes: dict, members: dict) -> None:
    missing = [n for n in shapes if n not in members]
    unexpected = sorted(n for n in members if n not in shapes)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"lacks {_names(missing)}")
        if unexpected:
            parts.append(f"has parameters the model does not: {_names(unexpected)}")
        raise DataError(path, "does not match the model: " + "; ".join(parts),
                        hint="were these weights trained with another model file?")


# ---------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path, state: dict) -> None:
    """Write a resume checkpoint (see the module docstring for what it holds), atomically."""
    arrays: dict[str, np.ndarray] = {}
    tree = _flatten(state, "", arrays)
    arrays[FORMAT_KEY] = np.array(json.dumps({"version": FORMAT_VERSION, "state": tree}))
    atomic_write_npz(path, arrays)


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by save_checkpoint, exactly as it was saved. Only the members its
    header names are read."""
    with NpzReader(path) as npz:
        _require_checkpoint(path, npz)
        return _unflatten(path, _read_header(path, npz), npz)


def check_checkpoint(path) -> None:
    """A DataError unless `path` is a checkpoint (from the member names alone: nothing is read)."""
    with NpzReader(path) as npz:
        _require_checkpoint(path, npz)


def _require_checkpoint(path, npz: NpzReader) -> None:
    if FORMAT_KEY not in npz.names:
        raise DataError(path, "is not a cnnc checkpoint",
                        hint=f"--resume takes the {CHECKPOINT_SUFFIX} file that `cnnc train` "
                        "keeps beside its --out weights")


def checkpoint_classes(path) -> list:
    """The class names a checkpoint holds, from its header alone (no array is read)."""
    with NpzReader(path) as npz:
        if FORMAT_KEY not in npz.names:
            raise DataError(path, "is not a cnnc checkpoint")
        tree = _read_header(path, npz)
    classes = tree.get("classes") if isinstance(tree, dict) else None
    return classes if isinstance(classes, list) and not any(_is_array_node(c) or isinstance(c, (dict, list))
                                                            for c in classes) else []


def check_resume(path, checkpoint: dict, model: str, model_hash: str) -> None:
    """A DataError when a checkpoint was written for another model or another version of it."""
    saved_model, saved_hash = checkpoint.get("model"), checkpoint.get("model_hash")
    if saved_model != model:
        raise DataError(path, f"this checkpoint is for model '{saved_model}', not '{model}'")
    if saved_hash != model_hash:
        raise DataError(path, f"model '{model}' has changed since this checkpoint was written",
                        hint="resume with the model file as it was, or train from scratch")


def rng_state(rng: np.random.Generator) -> dict:
    """The generator's bit-generator state, a JSON-able dict (plus arrays for MT19937)."""
    return rng.bit_generator.state


def generator_from_state(state: dict) -> np.random.Generator:
    """A numpy Generator continuing exactly where the one `rng_state` was taken from stopped."""
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def _flatten(value, key: str, arrays: dict):
    """The JSON tree of `value`; its arrays and numpy scalars go into `arrays` under their path."""
    if isinstance(value, dict):
        tree = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k or k.startswith("__"):
                raise ValueError(f"checkpoint keys must be non-empty strings not starting "
                                 f"with '__', got {k!r}")
            tree[k] = _flatten(v, f"{key}/{k}" if key else k, arrays)
        return tree
    if isinstance(value, (list, tuple)):
        return [_flatten(v, f"{key}/{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, (np.ndarray, np.generic)):
        if value.dtype == object:
            raise ValueError(f"checkpoint entry {key} is an object array")
        if key in arrays:
            raise ValueError(f"two checkpoint entries share the path {key}")
        arrays[key] = np.asarray(value)
        return {"__array__" if isinstance(value, np.ndarray) else "__scalar__": key}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"checkpoint entry {key} has type {type(value).__name__}, which an .npz "
                     "cannot hold")


HEADER_LIMIT = 64 << 20  # bytes of JSON: far more than any checkpoint's header


def _read_header(path, npz: NpzReader):
    """The state tree of the checkpoint's JSON header."""
    try:
        header = json.loads(str(npz.read(FORMAT_KEY, HEADER_LIMIT)[()]))
        version, tree = header["version"], header["state"]
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        raise DataError(path, "damaged checkpoint: its header is unreadable") from None
    if version != FORMAT_VERSION:
        raise DataError(path, f"checkpoint format {version} is not the supported {FORMAT_VERSION}")
    return tree


def _is_array_node(node) -> bool:
    return (isinstance(node, dict) and len(node) == 1 and {"__array__", "__scalar__"} & set(node)
            and isinstance(node.get("__array__", node.get("__scalar__")), str))


def _unflatten(path, tree, npz: NpzReader):
    def build(node):
        if _is_array_node(node):
            key = node.get("__array__", node.get("__scalar__"))
            if key not in npz.members:
                raise DataError(path, f"damaged checkpoint: entry {key} is missing")
            value = npz.read(key)
            return value if "__array__" in node else value[()]
        if isinstance(node, dict):
            return {k: build(v) for k, v in node.items()}
        if isinstance(node, list):
            return [build(v) for v in node]
        return node

    try:
        return build(tree)
    except RecursionError:
        raise DataError(path, "damaged checkpoint: its header is nested too deeply") from None


# ---------------------------------------------------------------------------------------------
# Files


def atomic_write_npz(path, arrays: dict) -> None:
    """Write an .npz atomically (cnnc/files.py): the previous file is kept whole or replaced whole."""
    atomic_write(path, lambda f: _write_npz(f, arrays))


def _write_npz(f, arrays: dict) -> None:
    """What np.savez writes (a zip of .npy members), without its keyword-argument interface, where
    an array named `file` or `allow_pickle` would collide with the function's own arguments."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _shape(shape) -> str:
    return "x".join(map(str, shape)) if len(shape) else "a scalar"
