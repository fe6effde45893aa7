"""Signals: SIGTERM, SIGINT and SIGUSR1 become an orderly stop.

:func:`install_signal_handlers` (called by ``galgen`` at start) routes the three signals to one
handler. Outside training the process stops at once with :class:`~galgen_lightning.faults.state.Interrupted`;
during training (the :class:`~galgen_lightning.faults.callback.FaultTolerance` callback arms the
deferral) the signal is recorded and the run stops at the next step boundary, after saving
``checkpoints/last.ckpt`` of that point. A second Ctrl-C stops at once. Under DDP the ranks agree
on the signal at each step boundary (:func:`agree_max`).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import lightning as L
import torch

from galgen_lightning.faults.state import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class _SignalState:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.deferring = False
        self.pending: int | None = None
        self.installed = False


_STATE = _SignalState()


def _handler(signum: int, frame: Any) -> None:
    if os.getpid() != _STATE.pid:  # a forked worker (data loader, process pool) inherited the handler
        if (
            signum == signal.SIGINT
        ):  # a terminal's Ctrl-C reaches the whole group: the main process stops the run, and its workers
            return
        signal.signal(signum, signal.SIG_DFL)  # default behaviour (a pool's terminate() sends SIGTERM)
        os.kill(os.getpid(), signum)
        return
    if _STATE.pending is not None and signum == signal.SIGINT:
        raise Interrupted(signum, at_once=True)  # a second Ctrl-C: stop now, exit 130
    if not _STATE.deferring:
        raise Interrupted(signum)
    if _STATE.pending is None:
        _STATE.pending = signum
        print(
            f"galgen: {signal.Signals(signum).name} received: stopping after this step (checkpoint follows)",
            file=sys.stderr,
            flush=True,
        )


def install_signal_handlers() -> dict:
    """Route SIGTERM, SIGINT and SIGUSR1 to galgen's handler (main thread only); ignore SIGXFSZ so
    that a file-size limit is an error on the write (EFBIG), not a killed process.

    Returns the previous handlers, for :func:`restore_signal_handlers`."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    _STATE.pid = os.getpid()
    _STATE.pending = None
    _STATE.deferring = False
    previous = {}
    for signum in (*SIGNALS, getattr(signal, "SIGXFSZ", None)):
        if signum is not None:
            previous[signum] = signal.signal(signum, signal.SIG_IGN if signum not in SIGNALS else _handler)
    _STATE.installed = True
    return previous


def restore_signal_handlers(previous: dict) -> None:
    """Put back what :func:`install_signal_handlers` replaced (in-process use: tests, notebooks)."""
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    _STATE.installed = False
    _STATE.deferring = False
    _STATE.pending = None


def arm(deferring: bool) -> None:
    """Defer signals to the next step boundary (training) or stop at once (``deferring=False``)."""
    _STATE.deferring = deferring
    if deferring and _STATE.installed:
        for signum in SIGNALS:  # over Lightning's SIGTERM handler, which would exit with status 0
            signal.signal(signum, _handler)


def pending_signal() -> int | None:
    """The signal received and not yet acted on, if any."""
    return _STATE.pending


def agree_max(trainer: L.Trainer, value: int) -> int:
    """The largest ``value`` over all processes (DDP), so every rank stops at the same step."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
        t = torch.tensor([value], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())
    return value


def clear_pending() -> None:
    """Forget the pending signal (it was acted on)."""
    _STATE.pending = None
