"""Reading a user's .npz without trusting it: the member names are listed before any member is
read, each member's .npy header (shape, dtype) is checked before its data, and only the members
the caller asks for are read. A crafted file (a header claiming a huge shape, an extra member
that inflates to gigabytes) is a DataError, never a MemoryError or a machine brought to swap.
"""
from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .diagnostics import DataError
from .files import why_missing
from .memory import default_limit, human

NPY_MAGIC = b"\x93NUMPY"


class NpzReader:
    """An open .npz: `names` (members without .npy), `header(name)`, `read(name)`. A context manager."""

    def __init__(self, path, what: str = ".npz file (a zip of .npy arrays)"):
        self.path = Path(path)
        self.archive = open_zip(self.path, what)
        self.members = {i.filename[: -len(".npy")]: i for i in self.archive.infolist()
                        if i.filename.endswith(".npy")}
        self.names = list(self.members)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.archive.close()

    def header(self, name: str) -> tuple[tuple, np.dtype]:
        """The member's shape and dtype, read from its .npy header alone."""
        try:
            with self.archive.open(self.members[name]) as f:
                shape, _, dtype = _read_header(f)
        except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as e:
            raise DataError(self.path, f"the .npz file is damaged: member {name} is unreadable ({e})") from None
        return shape, dtype

    def checked_header(self, name: str) -> tuple[tuple, np.dtype]:
        """The member's shape and dtype, once they are known to be numbers the member really holds."""
        shape, dtype = self.header(name)
        if dtype.hasobject:
            raise DataError(self.path, f"{name} holds Python objects, which cnnc does not load")
        size = math.prod(shape) * dtype.itemsize
        if size > self.members[name].file_size:
            raise DataError(self.path, f"the .npz file is damaged: {name} claims {human(size)} "
                            f"but holds {human(self.members[name].file_size)}")
        return shape, dtype

    def read(self, name: str, limit: int | None = None) -> np.ndarray:
        """The member as an array, after its header has been checked (`checked_header`) and its
        size found to be at most `limit` bytes (default: most of the available memory)."""
        shape, dtype = self.checked_header(name)
        size = math.prod(shape) * dtype.itemsize
        limit = default_limit() if limit is None else limit
        if limit is not None and size > limit:
            raise DataError(self.path, f"{name} takes {human(size)}, more than the {human(limit)} of "
                            "memory available")
        try:
            with self.archive.open(self.members[name]) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except MemoryError:
            raise DataError(self.path, f"{name} ({human(size)}) does not fit in memory") from None
        except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as e:
            raise DataError(self.path, f"the .npz file is damaged: cannot read {name} ({e})") from None


def open_zip(path: Path, what: str) -> zipfile.ZipFile:
    if not path.exists():
        raise DataError(path, why_missing(path, "no such file"))
    if path.is_dir():
        raise DataError(path, f"is a folder, not an {what.split(' (')[0]}")
    if not path.is_file():  # a device or a pipe: a zip needs a file to seek in
        raise DataError(path, f"is not a regular file, so not an {what.split(' (')[0]}")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
        if magic == NPY_MAGIC:
            raise DataError(path, "is a single .npy array, not an .npz of named arrays")
        return zipfile.ZipFile(path)
    except PermissionError as e:
        raise DataError(path, f"cannot read: {e.strerror}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile):
        raise DataError(path, f"is not an {what} or is damaged") from None


def _read_header(f) -> tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version in ((2, 0), (3, 0)):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unknown .npy format version {version}")
