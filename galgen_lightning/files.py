"""Files written all or nothing, and one line when a write fails.

The one owner of how galgen writes a file that a reader must never see half-written (a run
directory's records, a data cache chunk, a checkpoint, a samples file), and of the line a failed
write becomes: ``cannot <what> <path>: <why>[; <hint>]``, with ``<why>`` in words a user acts on
(a full disk, a read-only folder, a file in the way). Light on purpose (no torch): the data
cache's worker processes use it too.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from galgen_lightning.errors import GalgenError

WHY = {
    errno.ENOSPC: "no space left on the disk",
    getattr(errno, "EDQUOT", errno.ENOSPC): "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit, ulimit -f)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a file is in the way (not a directory)",
    errno.EEXIST: "a file is in the way",
}
"""Why a write failed, by ``errno``; other errors give the system's own words."""


def write_error(path: str | Path, error: OSError, what: str = "write", hint: str = "") -> GalgenError:
    """One line for a failed write: ``cannot <what> <path>: <why>``, then ``; <hint>`` if given.

    Args:
        path: what could not be written (a file, a folder, or words naming it).
        error: the operating system's error.
        what: the action, e.g. ``"write"`` or ``"create the run directory"``.
        hint: what the user can do about it.
    """
    why = WHY.get(error.errno or 0) or error.strerror or type(error).__name__
    return GalgenError(f"cannot {what} {path}: {why}" + (f"; {hint}" if hint else ""))


def make_dir(path: str | Path, what: str = "the run directory", hint: str = "") -> Path:
    """``mkdir -p path``, or the one line of :func:`write_error` naming it as ``what``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e, f"create {what}", hint) from None
    return path


def atomic_write(
    path: str | Path, content: bytes | memoryview | Callable[[IO[bytes]], Any], name: str | None = None, hint: str = ""
) -> None:
    """Write ``path`` all or nothing: a temporary file, synced, then renamed over ``path``.

    An interruption (Ctrl-C, a full disk, a killed process) leaves the previous ``path``, if
    any, untouched and no temporary file behind (``.<name>.tmp<pid>``, which no reader's glob
    matches). The parent folder is created when missing.

    Args:
        path: the file.
        content: the bytes, or a function that writes them to the open binary file.
        name: how a failed write names the file (default: its path).
        hint: what the user can do about a failed write (see :func:`write_error`).

    Raises:
        GalgenError: one line naming the file and why it could not be written.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(name or path, e, hint=hint) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # the folder itself cannot be written: nothing was left there either
            pass
