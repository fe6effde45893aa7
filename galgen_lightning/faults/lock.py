"""One ``galgen fit`` per run directory: :class:`RunLock`.

``<run>/.lock`` is an advisory ``flock`` held for the life of the process, with the holder's pid
inside; a lock file left by a process that is gone holds no lock (the OS released it) and is
taken over.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from galgen_lightning.errors import GalgenError
from galgen_lightning.files import make_dir, write_error

LOCK = ".lock"


class RunLock:
    """``<run>/.lock``: held (``flock``) for the life of a ``galgen fit`` process; the holder's pid
    is written inside. A lock file left by a process that is gone holds no lock and is taken over."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.fd: int | None = None
        self.created = False

    def acquire(self) -> RunLock:
        import fcntl

        self.created = not self.folder.exists()
        make_dir(self.folder)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(self.path, e, "create the lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise GalgenError(
                f"--trainer.default_root_dir {self.folder} is in use by another galgen process (pid {holder}, lock {self.path}); "
                "wait for it or choose another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        # a run that stopped before writing anything (a bad option, a bad source) leaves no folder
        if self.created and [p.name for p in self.folder.iterdir()] == [LOCK]:
            self.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.folder.rmdir()


def is_rank_zero_launch() -> bool:
    """Whether this process is the first of its job (DDP children and other nodes lock nothing)."""
    return all(os.environ.get(k, "0") in ("0", "") for k in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"))
