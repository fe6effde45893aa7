"""Small helpers for the process pools of galgen (rendering, conversion, morphology)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

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
