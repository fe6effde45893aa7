"""One process at a time in a folder: :class:`FolderLock`, and :class:`RunLock` for ``galgen fit``.

Every "one process per folder" rule of galgen uses :class:`FolderLock`: a run directory (one
``galgen fit``), a sweep folder (one ``galgen sweep``), a download folder (one ``galgen data
download``) and a data cache folder (one process fills it; the others wait). The lock is a
``flock`` through the ``filelock`` library, held for as long as the holder needs it, with the
holder's pid written inside for the message of whoever finds it taken. The OS releases the lock
of a process that dies, so a lock file left behind is free.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from galgen_lightning.errors import GalgenError
from galgen_lightning.files import write_error

LOCK = ".lock"


class FolderLock:
    """``<folder>/<name>``, held by one process at a time.

    Args:
        folder: the folder (created when missing).
        name: the lock file's name in it.
        label: how a failure to create the folder or the lock file names it (default: the path).
        hint: what the user can do about that failure (see :func:`~galgen_lightning.files.write_error`).
    """

    def __init__(self, folder: str | Path, name: str = LOCK, label: str | None = None, hint: str = "") -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.label, self.hint = label, hint
        self._lock = None

    def acquire(self, busy: Callable[[str], GalgenError] | None = None, waiting: str | None = None) -> FolderLock:
        """Take the lock.

        Args:
            busy: when another process holds it, the error to raise, given the holder's pid
                (``"?"`` when unknown); default: wait for it.
            waiting: with ``busy`` None, the line printed (stderr) before waiting.

        Raises:
            GalgenError: ``busy``'s, or one line when the lock file cannot be created.
        """
        from filelock import FileLock, Timeout

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(self.label or self.folder, e, "create", self.hint) from None
        lock = FileLock(str(self.path))
        try:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if busy is not None:
                    raise busy(self.holder()) from None
                if waiting:
                    print(waiting, file=sys.stderr, flush=True)
                lock.acquire()
            with contextlib.suppress(OSError):  # the pid is for messages only
                self.path.write_text(f"{os.getpid()}\n")
        except OSError as e:
            raise write_error(self.label or self.path, e, "lock", self.hint) from None
        self._lock = lock
        return self

    def holder(self) -> str:
        """The pid written by the process that holds the lock (``"?"`` when unknown)."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock now (without taking it)."""
        from filelock import FileLock, Timeout

        if not self.path.exists():
            return False
        lock = FileLock(str(self.path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        except OSError:
            return False
        lock.release()
        return False

    def release(self) -> None:
        if self._lock is None:
            return
        with contextlib.suppress(OSError):
            self.path.write_text("")
        self._lock.release()
        self._lock = None

    @contextlib.contextmanager
    def held(self, busy: Callable[[str], GalgenError] | None = None, waiting: str | None = None) -> Iterator[None]:
        """The lock for the length of a ``with`` block (see :meth:`acquire`)."""
        self.acquire(busy, waiting)
        try:
            yield
        finally:
            self.release()


class RunLock(FolderLock):
    """``<run>/.lock``: one ``galgen fit`` (or ``validate``) per run directory, for the life of the
    process. A run that stopped before writing anything leaves no folder behind."""

    def __init__(self, folder: str | Path) -> None:
        super().__init__(folder, LOCK, f"the run directory {folder}")
        self.created = False

    @classmethod
    def new(cls, base: Path, name: str) -> RunLock:
        """The held lock of a new run directory ``base/name``, or ``name-2``, ``name-3`` ... when
        that is taken. Each candidate is made with one ``mkdir``, which fails when the folder
        exists, so two commands started in the same second get two folders (a check for the
        name, then a ``mkdir``, lets both pick the same one and refuses the second)."""
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(base, e, "create") from None
        for k in itertools.count(1):
            folder = base / (name if k == 1 else f"{name}-{k}")
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError as e:
                raise write_error(folder, e, "create the run directory") from None
            lock = cls(folder)
            lock.created = True  # this process made it: removed again if it stops before writing
            return lock.acquire()
        raise AssertionError("unreachable")

    def acquire(self, busy: Callable[[str], GalgenError] | None = None, waiting: str | None = None) -> RunLock:
        self.created = self.created or not self.folder.exists()
        folder, path = self.folder, self.path

        def in_use(holder: str) -> GalgenError:
            return GalgenError(
                f"--trainer.default_root_dir {folder} is in use by another galgen process (pid {holder}, lock {path}); "
                "wait for it or choose another directory"
            )

        super().acquire(busy or in_use, waiting)
        return self

    def release(self) -> None:
        if self._lock is None:
            return
        super().release()
        # a run that stopped before writing anything (a bad option, a bad source) leaves no folder
        if self.created and [p.name for p in self.folder.iterdir()] == [LOCK]:
            self.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.folder.rmdir()


def is_rank_zero_launch() -> bool:
    """Whether this process is the first of its job (DDP children and other nodes lock nothing)."""
    return all(os.environ.get(k, "0") in ("0", "") for k in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"))
