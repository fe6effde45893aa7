"""Faults a run must survive and say: signals, divergence, failed writes, concurrent runs.

- **Signals.** :func:`install_signal_handlers` (called by ``galgen`` at start) turns SIGTERM,
  SIGINT and SIGUSR1 into an orderly stop. Outside training the process stops at once with
  :class:`Interrupted`; during training (:class:`FaultTolerance` arms the deferral) the signal is
  recorded and the run stops at the next step boundary, after saving ``checkpoints/last.ckpt``
  of that point. The run's state becomes ``interrupted`` (with the signal) and the exit status
  ``128 + signal number``. A second Ctrl-C stops at once.
- **Divergence.** :class:`UpdateGuard` holds the per-model bookkeeping every family shares: a
  non-finite loss or gradient, or a loss far above its running median, skips that model's
  update; ``max_bad_steps`` skipped updates in a row (or one loss spike) stop training with
  :class:`Diverged` (state ``diverged``).
- **Writes.** :class:`AtomicCheckpointIO` writes checkpoints to a temporary file that replaces
  the old one only when complete, and loads them with ``weights_only=True``; every failed write
  is one line naming the path (:func:`write_error`).
- **Collisions.** :class:`RunLock`: one ``galgen fit`` per run directory (``<run>/.lock``, an
  advisory ``flock`` with the holder's pid inside; a lock left by a dead process is free).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import statistics
import sys
from collections import deque
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from galgen_lightning.errors import GalgenError

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
LOCK = ".lock"


# --- exceptions that end a run with a state ------------------------------------------------------
class Interrupted(SystemExit):
    """A signal stopped the run: state ``interrupted``, exit status ``128 + signum``."""

    run_state = "interrupted"

    def __init__(self, signum: int, step: int | None = None, checkpoint: str | None = None) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)
        self.signal = signal.Signals(signum).name
        self.step = step
        self.checkpoint = checkpoint

    @property
    def status(self) -> dict:
        """What ``status.json`` records besides the state."""
        return {"signal": self.signal, "checkpoint": self.checkpoint, "error": self.message}

    @property
    def message(self) -> str:
        if self.checkpoint:
            return (
                f"interrupted by {self.signal} at global step {self.step}; saved {self.checkpoint} "
                f"(resume with --ckpt_path {self.checkpoint})"
            )
        return f"interrupted by {self.signal} before training started; nothing to resume"

    def __str__(self) -> str:
        return self.message


class Diverged(GalgenError):
    """Training diverged: state ``diverged``; the message names the model and the step."""

    run_state = "diverged"

    @property
    def status(self) -> dict:
        return {"error": str(self)}


def run_state(exception: BaseException) -> tuple[str, dict]:
    """The ``status.json`` state and extra fields of a run that ended with ``exception``."""
    state = getattr(exception, "run_state", None)
    if state:
        return state, dict(getattr(exception, "status", {}))
    if isinstance(exception, KeyboardInterrupt):
        return "interrupted", {"signal": "SIGINT", "error": "KeyboardInterrupt (a second Ctrl-C): no checkpoint of this point"}
    name = type(exception).__name__
    if name == "SIGTERMException":  # Lightning's own, should galgen's handler not be in place
        return "interrupted", {"signal": "SIGTERM", "error": "SIGTERMException"}
    return "failed", {"error": f"{name}: {exception}"}


# --- signals -------------------------------------------------------------------------------------
class _SignalState:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.deferring = False
        self.pending: int | None = None
        self.installed = False


_STATE = _SignalState()


def _handler(signum: int, frame: Any) -> None:
    if os.getpid() != _STATE.pid:  # a forked worker inherited the handler: default behaviour
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _STATE.pending is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: stop now
    if not _STATE.deferring:
        raise Interrupted(signum)
    if _STATE.pending is None:
        _STATE.pending = signum
        print(f"galgen: {signal.Signals(signum).name} received: stopping after this step (checkpoint follows)", file=sys.stderr, flush=True)


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


def _arm(deferring: bool) -> None:
    _STATE.deferring = deferring
    if deferring and _STATE.installed:
        for signum in SIGNALS:  # over Lightning's SIGTERM handler, which would exit with status 0
            signal.signal(signum, _handler)


def pending_signal() -> int | None:
    return _STATE.pending


def _agree_max(trainer: L.Trainer, value: int) -> int:
    """The largest ``value`` over all processes (DDP), so every rank stops at the same step."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
        t = torch.tensor([value], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())
    return value


def checkpoint_dir(trainer: L.Trainer) -> Path:
    """The checkpoint callback's folder, else ``<run>/checkpoints``."""
    callback = getattr(trainer, "checkpoint_callback", None)
    folder = getattr(callback, "dirpath", None)
    return Path(folder) if folder else Path(trainer.default_root_dir) / "checkpoints"


class FaultTolerance(L.Callback):
    """Stops a signalled ``fit`` at the next step boundary with a checkpoint of that point, and
    makes checkpoint writes atomic (the CLI adds it to every run).

    The checkpoint is ``last.ckpt`` in the checkpoint folder: ``--ckpt_path <run>/checkpoints/last.ckpt``
    (and ``galgen sweep``) resumes from that step.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO) and type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _arm(True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_if_signalled(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._stop_if_signalled(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_signalled(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _arm(False)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        _arm(False)

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        signum = _agree_max(trainer, _STATE.pending or 0)
        if not signum:
            return
        path = checkpoint_dir(trainer) / "last.ckpt"
        from lightning.pytorch.callbacks import ModelCheckpoint

        for callback in trainer.checkpoint_callbacks:  # so that, resumed, it replaces this last.ckpt (not last-v1.ckpt)
            if isinstance(callback, ModelCheckpoint) and callback.dirpath and Path(callback.dirpath) == path.parent:
                callback.last_model_path = str(path)
        trainer.save_checkpoint(path)
        _STATE.pending = None
        raise Interrupted(signum, step=trainer.global_step, checkpoint=str(path))


# --- divergence ----------------------------------------------------------------------------------
def agree_on_all_ranks(flags: torch.Tensor, values: torch.Tensor | None = None) -> tuple[list[bool], list[float]]:
    """Per-model "ok" flags ANDed, and loss values maxed, over all processes (one host sync).

    A model whose update is bad on any rank skips it on every rank, so DDP replicas never drift.
    """
    flags = flags.float()
    values = torch.zeros_like(flags) if values is None else torch.nan_to_num(values.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
    both = torch.cat([flags, values]).tolist()
    n = len(flags)
    return [bool(v) for v in both[:n]], both[n:]


class UpdateGuard:
    """Skipped-update bookkeeping of one pair (models ``"a"`` and ``"b"``), shared by every family.

    Per optimizer step: :meth:`mark` a model whose update must be skipped (its gradients are
    then dropped, so the optimizer leaves its weights alone), :meth:`observe` each finite loss
    (a loss above ``max_loss_ratio`` times the median of the last ``window`` ones is a spike:
    skipped, and training stops); :meth:`end_step` counts, logs and raises :class:`Diverged`
    after ``max_bad_steps`` skipped updates of one model in a row.

    Args:
        family: the family's name, for messages.
        max_bad_steps: consecutive skipped updates of one model that stop training.
        max_loss_ratio: a loss above this multiple of its running median stops training (None: off).
        window: losses in the running median.
        min_history: losses needed before the spike test applies.
    """

    def __init__(self, family: str, max_bad_steps: int = 20, max_loss_ratio: float | None = None, window: int = 100, min_history: int = 20) -> None:
        if max_bad_steps < 1:
            raise GalgenError(f"model.max_bad_steps must be positive, got {max_bad_steps}")
        if max_loss_ratio is not None and not max_loss_ratio > 1:
            raise GalgenError(f"model.max_loss_ratio must be above 1 (or null), got {max_loss_ratio}")
        self.family = family
        self.max_bad_steps = max_bad_steps
        self.max_loss_ratio = max_loss_ratio
        self.min_history = min_history
        self.models = ("a", "b")
        self.skipped = {w: 0 for w in self.models}
        self.streak = {w: 0 for w in self.models}
        self.bad_now = {w: "" for w in self.models}
        self.spike = {w: "" for w in self.models}
        self.history = {w: deque(maxlen=window) for w in self.models}
        self.stepped = False
        self._recorded = {w: 0 for w in self.models}

    def mark(self, which: str, reason: str) -> None:
        self.bad_now[which] = self.bad_now[which] or reason

    def observe(self, which: str, loss: float) -> None:
        """A finite loss of ``which`` this step: a spike above the running median is marked."""
        if not math.isfinite(loss):
            self.mark(which, "loss")
            return
        hist = self.history[which]
        if self.max_loss_ratio is not None and len(hist) >= self.min_history:
            median = statistics.median(hist)
            if median > 0 and loss > self.max_loss_ratio * median:
                self.spike[which] = f"loss {loss:.3g} is above {self.max_loss_ratio:g} x its running median {median:.3g} (model.max_loss_ratio)"
                self.mark(which, "loss spike")
                return
        hist.append(loss)

    def guard_losses(self, module: torch.nn.Module, losses: dict[str, torch.Tensor], finite: dict[str, torch.Tensor] | None = None, what: str = "loss") -> torch.Tensor:
        """The total loss to back-propagate: each model's loss, or a zero over its parameters when
        its loss (or ``finite[which]``) is not finite or spikes (backward still reaches every
        parameter, so DDP's gradient reduction stays in step; the zero gradients are then dropped)."""
        ok = torch.stack([torch.isfinite(losses[w]).all() & (finite[w] if finite else True) for w in self.models])
        flags, values = agree_on_all_ranks(ok, torch.stack([losses[w].detach().float() for w in self.models]))
        total = None
        for which, good, value in zip(self.models, flags, values):
            if good:
                self.observe(which, value)
            else:
                self.mark(which, what)
            if self.bad_now[which]:
                loss = torch.stack([p.sum() for p in module.model(which).parameters()]).sum() * 0.0
            else:
                loss = losses[which]
            total = loss if total is None else total + loss
        return total

    def drop_bad_gradients(self, module: torch.nn.Module, check_grads: bool = True) -> None:
        """Before an optimizer step: mark models whose gradients are non-finite, drop the
        gradients of every marked model (Adam leaves parameters without a gradient untouched)."""
        check = [w for w in self.models if not self.bad_now[w]] if check_grads else []
        grads = {w: [p.grad for p in module.model(w).parameters() if p.grad is not None] for w in check}
        check = [w for w in check if grads[w]]
        if check:
            ok = torch.stack([torch.isfinite(torch.stack(torch._foreach_norm(grads[w]))).all() for w in check])
            flags, _ = agree_on_all_ranks(ok)
            for which, good in zip(check, flags):
                if not good:
                    self.mark(which, "gradient")
        for which in self.models:
            if self.bad_now[which]:
                for p in module.model(which).parameters():
                    p.grad = None
        self.stepped = True

    def end_step(self, module: L.LightningModule) -> None:
        """Once per training batch: count skipped updates, log them, stop on divergence."""
        if not self.stepped:
            return
        self.stepped = False
        step = module.global_step
        for which in self.models:
            reason = self.bad_now[which]
            if reason:
                self.skipped[which] += 1
                self.streak[which] += 1
                if self.streak[which] == 1:
                    log.warning("%s model %s: non-finite %s at global step %d; update skipped", self.family, which.upper(), reason, step)
            else:
                self.streak[which] = 0
            module.log(f"train/skipped_{which}", float(self.skipped[which]), on_step=True, on_epoch=False)
        reasons, spikes = dict(self.bad_now), dict(self.spike)
        self.bad_now = {w: "" for w in self.models}
        self.spike = {w: "" for w in self.models}
        for which in self.models:
            if spikes[which]:
                self.record(module)
                raise Diverged(
                    f"{self.family} model {which.upper()} diverged at global step {step}: {spikes[which]}; "
                    f"training stopped, {last_checkpoint(module)}; try a lower model.lr"
                )
            if self.streak[which] >= self.max_bad_steps:
                self.record(module)
                raise Diverged(
                    f"{self.family} model {which.upper()}: {self.streak[which]} updates in a row skipped for a non-finite "
                    f"{reasons[which]} (model.max_bad_steps={self.max_bad_steps}, global step {step}); "
                    f"training stopped, {last_checkpoint(module)}; try a lower model.lr"
                )

    def record(self, module: L.LightningModule) -> None:
        """A ``training`` record of the skipped updates in ``metrics.jsonl`` (when they changed)."""
        trainer = getattr(module, "_trainer", None)
        if trainer is None or not trainer.is_global_zero or self.skipped == self._recorded:
            return
        from galgen_lightning.rundir import RunDir, RunDirectory

        if not any(isinstance(cb, RunDirectory) for cb in trainer.callbacks):
            return  # a plain Trainer (a notebook, a unit test): no galgen run directory to write into

        RunDir(trainer.default_root_dir).append_metrics(
            {"test": "training", "epoch": trainer.current_epoch, "step": trainer.global_step, **{f"skipped_{w}": self.skipped[w] for w in self.models}}
        )
        self._recorded = dict(self.skipped)


def last_checkpoint(module: L.LightningModule) -> str:
    """Where the last checkpoint is (skipped updates never change the weights, so it is good)."""
    trainer = getattr(module, "_trainer", None)
    callback = getattr(trainer, "checkpoint_callback", None) if trainer is not None else None
    if callback is None:
        return "and no checkpoint was saved (no checkpoint callback)"
    path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    return f"the last good checkpoint is {path}" if path else "and no checkpoint was saved yet"


# --- writes --------------------------------------------------------------------------------------
_WHY = {
    errno.ENOSPC: "no space left on the disk",
    getattr(errno, "EDQUOT", errno.ENOSPC): "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit, ulimit -f)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a file is in the way (not a directory)",
    errno.EEXIST: "a file is in the way",
}


def write_error(path: str | Path, error: OSError, what: str = "write") -> GalgenError:
    """One line for a failed write: the path and why."""
    why = _WHY.get(error.errno or 0) or error.strerror or type(error).__name__
    return GalgenError(f"cannot {what} {path}: {why}")


def make_dir(path: str | Path, what: str = "the run directory") -> Path:
    """``mkdir -p``, or a one-line :class:`GalgenError` naming the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e, f"create {what}") from None
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing (temporary file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written all or nothing (the previous one stays until the new one is complete),
    a failed write one line naming the file; loaded with ``weights_only=True`` (tensors and plain
    containers only: no pickled code runs) and a broken or foreign file one line."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        import io

        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getbuffer())

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None) -> dict[str, Any]:
        # Lightning asks for weights_only=False when not told; galgen's checkpoints hold only
        # tensors and plain containers, so nothing pickled is executed (GALGEN_TRUST_CHECKPOINTS=1
        # restores full unpickling, for a checkpoint you made yourself that needs it)
        trusted = os.environ.get("GALGEN_TRUST_CHECKPOINTS") == "1"
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=bool(weights_only) if trusted else True)
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 (unpickling raises anything)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if "weights_only" in str(e) or "Weights only load failed" in str(e):
                first = "it holds objects other than tensors and plain containers, which galgen does not unpickle (weights_only)"
            raise GalgenError(f"--ckpt_path {path}: not a readable galgen checkpoint: {first[:300]}") from None


# --- one run per directory -----------------------------------------------------------------------
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
