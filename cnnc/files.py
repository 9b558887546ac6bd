"""Writing the user's files: atomically (a temporary file beside the target, fsync, os.replace),
never over one of the command's own inputs, and without leaving stale temporary files behind.

A temporary file is named `.<target name>.<pid>.<8 hex digits>.tmp`. A save killed by SIGKILL
leaves one behind; the next save of the same target removes those whose process is gone. The
pattern names the target and a pid, so it matches nothing a user would make.
"""
from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

from .diagnostics import DataError


def atomic_write(path, write: Callable[[BinaryIO], None]) -> None:
    """write(f) into a temporary file beside `path`, fsync it, then os.replace it over `path`.

    The temporary file is removed on any failure, KeyboardInterrupt included, so the previous
    file at `path` (if any) is either kept whole or replaced by the complete new one.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise DataError(path, f"cannot write: the folder {folder} does not exist")
    if path.is_dir():
        raise DataError(path, "cannot write: it is a folder")
    remove_stale_temporaries(path)
    # Not tempfile.mkstemp: its files are 0600, and the user's files should get the usual umask mode.
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise DataError(path, f"cannot write here: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        _remove_quietly(tmp)
        if isinstance(e, OSError):
            raise DataError(path, f"cannot write: {e.strerror or e}") from None
        raise
    _fsync_folder(folder)


def atomic_write_bytes(path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def check_writable(path) -> None:
    """A DataError now, rather than after an hour of training, when `path` cannot be written."""
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError(path, f"cannot write: the folder {path.parent} does not exist")
    if path.is_dir():
        raise DataError(path, "cannot write: it is a folder")
    probe = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:
        raise DataError(path, f"cannot write here: {e.strerror}") from None
    _remove_quietly(probe)
    if path.exists() and not os.access(path, os.W_OK):
        raise DataError(path, "cannot write: the file is read-only")


def refuse_overwrite(output, inputs: dict) -> None:
    """A DataError when `output` is one of the command's inputs (`inputs`: what -> path or None)."""
    for what, path in inputs.items():
        if path is not None and same_file(output, path):
            raise DataError(output, f"is the {what}; writing there would destroy it",
                            hint="choose another output file")


def why_missing(path, missing: str = "no such file or folder") -> str:
    """Why a path that does not exist cannot be opened: `missing`, or what else it is (a
    symbolic link loop, a link to nothing, a component that is not a folder)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return f"{missing} (a symbolic link to nothing)" if os.path.islink(path) else missing
    except OSError as e:
        return f"cannot open: {e.strerror}"
    return missing


def same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare where they would be
        return os.path.realpath(a) == os.path.realpath(b)  # realpath, unlike resolve, takes link loops


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files of earlier saves of `path` whose process is gone."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]{{8}}\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match and not _writing(int(match[1])):
            _remove_quietly(path.parent / name)


def _writing(pid: int) -> bool:
    """Whether process `pid` may still be writing its temporary file. Not this process: it saves
    one target at a time, so a file with its pid was left by an earlier process with the same
    pid (containers restart pids at 1)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process, or cannot tell: keep its file
    return True


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; best effort, as not every platform can open a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
