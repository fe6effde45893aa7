"""The one home of galgen's process pools (rendering, conversion, morphology)."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
"""Environment variables that set the thread count of the numeric libraries."""


@contextmanager
def single_threaded_children() -> Iterator[None]:
    """Make processes started inside the block use one thread per numeric library.

    A pool of ``k`` workers on ``k`` cores runs fastest with one thread each; the parent's own
    setting comes back when the block ends.
    """
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: "1" for name in THREAD_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pool_context(start: str = "fork", preload: list[str] | None = None) -> Any:
    """A multiprocessing context for galgen's pools.

    Args:
        start: on Linux, ``"fork"`` for workers that touch only numpy/GalSim/astropy (they
            start at once, importing nothing), or ``"forkserver"`` for workers started from a
            process whose torch threads are running (a plain fork can then leave a worker dead and
            the pool hanging). Elsewhere always ``"spawn"``.
        preload: modules the fork server imports once (``forkserver`` only).
    """
    import multiprocessing

    if not sys.platform.startswith("linux"):
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context(start)
    if start == "forkserver" and preload:
        context.set_forkserver_preload(preload)  # takes effect when the server first starts
    return context


@contextmanager
def imap(fn: Callable[[T], R], tasks: Sequence[T], workers: int, start: str = "fork") -> Iterator[Iterator[R]]:
    """``fn`` over ``tasks``, results in order: in-process for one worker or one task, else in a
    pool of ``min(workers, len(tasks))`` single-threaded processes closed on exit or interruption.

    Use as ``with imap(fn, tasks, workers) as results: for r in results: ...``.
    """
    if workers <= 1 or len(tasks) < 2:
        yield map(fn, tasks)
        return
    with single_threaded_children(), warnings.catch_warnings():
        # Python >= 3.12 warns about forking a process with threads (torch's); the workers take
        # no lock those threads could hold, as torch's own DataLoader workers do not
        warnings.filterwarnings("ignore", message=".*use of fork\\(\\) may lead to deadlocks.*")
        with pool_context(start).Pool(min(workers, len(tasks))) as pool:
            yield pool.imap(fn, tasks)


def map_ordered(fn: Callable[[T], R], tasks: Sequence[T], workers: int, start: str = "fork") -> list[R]:
    """:func:`imap` collected into a list."""
    with imap(fn, tasks, workers, start) as results:
        return list(results)


class WorkerPool:
    """Worker processes that outlive one call (a callback measuring every few epochs keeps one).

    Each worker imports the parent's ``__main__`` module once when it starts (the ``galgen``
    script imports Lightning: seconds). Workers come from a fork server on Linux. Use it as a
    context manager or call :meth:`close`.

    Args:
        workers: number of processes (at least 2; 1 needs no pool).
        preload: modules the fork server imports once.
    """

    def __init__(self, workers: int, preload: list[str] | None = None) -> None:
        if workers < 2:
            raise ValueError(f"a WorkerPool needs at least 2 workers, got {workers}")
        self.workers = workers
        self.preload = list(preload or [])
        self._executor: Any = None

    def executor(self) -> Any:
        """The ``ProcessPoolExecutor``, started on first use (workers start as tasks arrive)."""
        if self._executor is None:
            from concurrent.futures import ProcessPoolExecutor

            with single_threaded_children():
                self._executor = ProcessPoolExecutor(self.workers, mp_context=pool_context("forkserver", self.preload))
        return self._executor

    def discard(self) -> None:
        """Drop a broken executor without waiting; the next :meth:`executor` starts a new one."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def close(self) -> None:
        """Stop the workers (waits for running tasks)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
