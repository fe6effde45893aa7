"""How a run ends: the exceptions that carry a state, and the state of any exception.

``status.json`` records ``interrupted`` (a signal: :class:`Interrupted`, exit status
``128 + signal``), ``diverged`` (:class:`Diverged`), or ``failed`` (anything else; a lost DDP
rank is named, see :mod:`galgen_lightning.faults.ddp`). :func:`run_state` maps an exception to
the state and the extra fields to record.
"""

from __future__ import annotations

import signal
from typing import Any

from galgen_lightning.errors import GalgenError
from galgen_lightning.faults.ddp import rank_lost


class Interrupted(SystemExit):
    """A signal stopped the run: state ``interrupted``, exit status ``128 + signum``."""

    run_state = "interrupted"

    def __init__(self, signum: int, step: int | None = None, checkpoint: str | None = None, at_once: bool = False) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)
        self.signal = signal.Signals(signum).name
        self.step = step
        self.checkpoint = checkpoint
        self.at_once = at_once

    @property
    def status(self) -> dict:
        """What ``status.json`` records besides the state."""
        return {"signal": self.signal, "checkpoint": self.checkpoint, "error": self.message}

    @property
    def message(self) -> str:
        if self.at_once:
            return f"stopped at once by a second {self.signal}: no checkpoint of this point"
        if self.checkpoint:
            return (
                f"interrupted by {self.signal} at global step {self.step}; saved {self.checkpoint} "
                f"(resume with --ckpt_path {self.checkpoint})"
            )
        # outside training steps (data setup, a sanity check, galgen validate): no checkpoint of this
        # point, but a resumed fit's own --ckpt_path is still there to resume from
        return f"interrupted by {self.signal} outside a training step: no checkpoint of this point"

    def __str__(self) -> str:
        return self.message


class Diverged(GalgenError):
    """Training diverged: state ``diverged``; the message names the model and the step."""

    run_state = "diverged"

    @property
    def status(self) -> dict:
        return {"error": str(self)}


def run_state(exception: BaseException, trainer: Any = None) -> tuple[str, dict]:
    """The ``status.json`` state and extra fields of a run that ended with ``exception``.

    Args:
        exception: what ended the run.
        trainer: the Lightning trainer, when known: under DDP, a collective that failed because
            another rank died or hung is told as ``failed`` naming that rank (``lost_ranks``).
    """
    state = getattr(exception, "run_state", None)
    if state:
        return state, dict(getattr(exception, "status", {}))
    if isinstance(exception, KeyboardInterrupt):
        return "interrupted", {"signal": "SIGINT", "error": "KeyboardInterrupt (a second Ctrl-C): no checkpoint of this point"}
    name = type(exception).__name__
    if name == "SIGTERMException":  # Lightning's own, should galgen's handler not be in place
        return "interrupted", {"signal": "SIGTERM", "error": "SIGTERMException"}
    lost = rank_lost(exception, trainer) if trainer is not None else None
    if lost is not None:
        return lost.run_state, lost.status
    return "failed", {"error": f"{name}: {exception}"}
