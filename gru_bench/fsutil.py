"""Crash-safe writes: every output goes to a temporary file in the same folder, then is renamed."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from gru_bench.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # the mode open() gives a new file
# Write errors of the disk, not of the caller's code: a full or read-only disk is a one-line error even when
# it strikes inside the caller's block (while the data is being written).
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO, errno.EACCES, errno.EPERM}


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a file object whose content replaces `path` only if the block finishes without error.

    A crash or Ctrl-C leaves the previous `path` untouched (and no stray temporary file). A path that cannot
    be written (no permission, a folder in the way, disk full) is a UserError naming it, not a traceback;
    other errors raised by the caller's block pass through unchanged. A symlink is written through (its target
    is replaced, the link stays); a path that is not a regular file (a device, a FIFO) is refused.
    """
    path = real_output(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. a file where the folder should be
        raise _unwritable(path.parent, e) from None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _unwritable(path, e) from None
    os.chmod(tmp, FILE_MODE)  # mkstemp creates 0600; give the file the mode open() would
    block_done = False
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            block_done = True
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and (block_done or e.errno in DISK_ERRNOS):
            raise _unwritable(path, e) from None
        raise


def real_output(path: str | os.PathLike) -> Path:
    """Where a write to `path` must go: a symlink's final target; a UserError if it is not a regular file."""
    path = Path(path)
    real = Path(os.path.realpath(path)) if path.is_symlink() else path
    if real.exists() and not real.is_file():
        kind = "a folder" if real.is_dir() else "not a regular file (a device or pipe)"
        raise UserError(f"cannot write {path}: it is {kind}; give the path of a file")
    return real


@contextlib.contextmanager
def atomic_files(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside `folder`; when the block finishes, move every file written there
    into `folder` (renames: they cannot run out of space), else remove it. So a set of files (a report) is
    either all new or all old; other files in `folder` are never touched."""
    folder = Path(os.path.realpath(folder))  # a symlinked report folder stays a link
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    except OSError as e:
        raise _unwritable(folder, e) from None
    try:
        yield staging
        for f in sorted(staging.iterdir()):
            os.replace(f, real_output(folder / f.name))
    except OSError as e:
        raise _unwritable(folder, e) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unwritable(path: Path, e: OSError) -> UserError:
    return UserError(f"cannot write {path} ({e.strerror or e}): give another path, or fix its permissions")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks (downloads are checked and processed files record it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            h.update(chunk)
    return h.hexdigest()
