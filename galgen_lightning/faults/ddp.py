"""DDP faults: a rank that dies or hangs stops the others within a bounded time, and is named.

- **The collective timeout.** ``GALGEN_DDP_TIMEOUT`` (seconds, default :data:`DEFAULT_TIMEOUT`)
  is the process group's timeout (:func:`configure_ddp`, called by the CLI): a collective that waits
  longer for a rank fails instead of waiting Lightning's 30 minutes. Rank 0 runs the evaluations
  alone while the other ranks wait in the next collective, so the timeout must exceed the
  longest evaluation.
- **Heartbeats.** Each rank keeps ``<run>/.ranks/rank<k>.json`` (its pid and host), touched at
  most every :data:`BEAT` seconds while it trains (:class:`Heartbeat`).
- **Naming the lost rank.** When a collective fails (the peer's socket closed, or the timeout),
  :func:`rank_lost` reads the heartbeats: a rank whose process is gone (same host), or whose
  heartbeat is older than half the timeout, is the one lost. The run's state is ``failed`` with a
  one-line message naming it (:class:`RankLost`, ``lost_ranks`` in ``status.json``); when rank 0
  is the one lost, the lowest surviving rank records it (:func:`records_for_the_lost`).
- **A child that dies while rank 0 is busy.** Lightning's launcher watches the processes it
  started and kills every rank when one of them ends badly; galgen's watcher
  (:class:`WatchedLauncher`) first records the lost rank, so the state is never left ``running``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from galgen_lightning.errors import GalgenError, first_line
from galgen_lightning.files import atomic_write

ENV = "GALGEN_DDP_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
"""Seconds a collective waits for the other ranks (longer than any evaluation rank 0 runs alone)."""
FOLDER = ".ranks"
BEAT = 1.0
"""Seconds between two heartbeats of a training rank (at most)."""

_COLLECTIVE = re.compile(r"gloo|nccl|connection (closed|reset)|broken pipe|timed out|timeout|socket|collective|store", re.I)


def timeout_seconds() -> float:
    """``GALGEN_DDP_TIMEOUT`` in seconds (default :data:`DEFAULT_TIMEOUT`).

    Raises:
        GalgenError: the variable is not a positive number.
    """
    text = os.environ.get(ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise GalgenError(f"{ENV}={text}: expected a positive number of seconds (the DDP collective timeout)")
    return value


def configure_ddp(trainer: Any) -> None:
    """Under DDP: the process group's timeout from ``GALGEN_DDP_TIMEOUT`` (unless the strategy was
    given another one and the variable is unset), and galgen's watcher of the child processes."""
    from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
    from lightning.pytorch.strategies import DDPStrategy

    strategy = getattr(trainer, "strategy", None)
    if not isinstance(strategy, DDPStrategy):
        return
    if os.environ.get(ENV, "").strip() or getattr(strategy, "_timeout", None) in (None, default_pg_timeout):
        strategy._timeout = timedelta(seconds=timeout_seconds())
    launcher = strategy.launcher
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    if type(launcher) is _SubprocessScriptLauncher:
        strategy._launcher = WatchedLauncher(launcher.cluster_environment, launcher.num_processes, launcher.num_nodes)


# --- heartbeats ----------------------------------------------------------------------------------
def heartbeat_path(folder: str | Path, rank: int) -> Path:
    return Path(folder) / FOLDER / f"rank{rank}.json"


class Heartbeat:
    """This rank's ``<run>/.ranks/rank<k>.json``: written at setup, touched while training.

    Args:
        folder: the run directory.
        rank: this process's global rank.
    """

    def __init__(self, folder: str | Path, rank: int) -> None:
        self.path = heartbeat_path(folder, rank)
        self.rank = rank
        self.last = 0.0

    def start(self) -> None:
        record = {"rank": self.rank, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        atomic_write(self.path, (json.dumps(record) + "\n").encode())
        self.path.with_suffix(".exit").unlink(missing_ok=True)  # how an earlier attempt of this rank ended
        self.last = time.monotonic()

    def beat(self) -> None:
        now = time.monotonic()
        if now - self.last >= BEAT:
            self.last = now
            try:
                os.utime(self.path)
            except OSError:
                pass  # a heartbeat is a hint; never a reason to stop training


def _process_gone(pid: int) -> bool:
    """Whether ``pid`` (on this host) has ended (a zombie not yet reaped has ended too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def find_lost(folder: str | Path, me: int, world: int, timeout: float) -> list[tuple[int, str]]:
    """The other ranks that are gone or silent, with why: ``[(rank, "pid 123 ended"), ...]``.

    A rank on this host whose process has ended is lost; failing that, one whose heartbeat is
    older than half the collective ``timeout`` (stopped, hung, or on a host that is gone).
    """
    host, now = socket.gethostname(), time.time()
    gone: list[tuple[int, str]] = []
    silent: list[tuple[int, str]] = []
    for rank in range(world):
        if rank == me:
            continue
        path = heartbeat_path(folder, rank)
        try:
            record = json.loads(path.read_text())
            age = now - path.stat().st_mtime
        except (OSError, ValueError):
            silent.append((rank, "it never reported (no heartbeat)"))
            continue
        pid, where = int(record.get("pid", -1)), str(record.get("host", "?"))
        ended = _exit_text(folder, rank)
        if where == host and pid > 0 and _process_gone(pid):
            gone.append((rank, f"its process (pid {pid}) ended{ended}"))
        elif age >= timeout / 2:
            silent.append((rank, f"pid {pid} on {where} stopped responding: no heartbeat for {age:.0f} s"))
    return gone or silent


def _exit_text(folder: str | Path, rank: int) -> str:
    """`` with exit code N (SIGKILL)`` when the launcher's watcher saw the rank end."""
    try:
        code = int(json.loads((Path(folder) / FOLDER / f"rank{rank}.exit").read_text())["returncode"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if code < 0:
        import signal

        try:
            return f" by {signal.Signals(-code).name}"
        except ValueError:
            return f" by signal {-code}"
    return f" with exit status {code}"


# --- the failure, named --------------------------------------------------------------------------
class RankLost(GalgenError):
    """Another DDP rank died or hung: state ``failed``, the message names it.

    Args:
        message: the one-line message.
        ranks: the ranks lost.
    """

    run_state = "failed"

    def __init__(self, message: str, ranks: list[int]) -> None:
        super().__init__(message)
        self.ranks = ranks

    @property
    def status(self) -> dict:
        return {"error": str(self), "lost_ranks": self.ranks}


def is_collective_failure(exception: BaseException) -> bool:
    """Whether ``exception`` is a failed collective (a peer's closed socket, a timeout)."""
    import torch

    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(exception, dist_error):
        return True
    return isinstance(exception, RuntimeError) and bool(_COLLECTIVE.search(str(exception)))


def _why(exception: BaseException) -> str:
    text = first_line(exception, limit=1000)
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # gloo's "[.../pair.cc:537] " prefix
    return text.split(". This is typically", 1)[0][:200]


def _checkpoint_text(trainer: Any) -> str:
    callback = getattr(trainer, "checkpoint_callback", None)
    path = (getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")) if callback is not None else ""
    return f"resume with --ckpt_path {path}" if path else "no checkpoint was saved yet"


def rank_lost(exception: BaseException, trainer: Any) -> RankLost | None:
    """The failure of a DDP run whose collective failed, naming the rank lost; None when
    ``exception`` is not such a failure (or the run is not distributed)."""
    if isinstance(exception, RankLost):
        return exception
    known = getattr(exception, "_galgen_rank_lost", None)
    if known is not None:
        return known
    world = int(getattr(trainer, "world_size", 1) or 1)
    if world <= 1 or not is_collective_failure(exception):
        return None
    me, step, folder = int(trainer.global_rank), int(trainer.global_step), Path(trainer.default_root_dir)
    try:
        timeout = timeout_seconds()
    except GalgenError:  # reported when the run started; here only the message needs a number
        timeout = DEFAULT_TIMEOUT
    lost = find_lost(folder, me, world, timeout)
    if not lost:  # no rank is gone or silent: the error is the run's own, told as it is
        return None
    named = "; ".join(f"rank {r}: {why}" for r, why in lost)
    head = f"DDP rank{'s' * (len(lost) > 1)} {', '.join(str(r) for r, _ in lost)} lost at global step {step} ({named})"
    message = f"{head}; rank {me} stopped: {_why(exception)} ({ENV}={timeout:g} s); {_checkpoint_text(trainer)}"
    result = RankLost(message, [r for r, _ in lost])
    try:
        exception._galgen_rank_lost = result  # type: ignore[attr-defined]
    except AttributeError:
        pass
    return result


def records_for_the_lost(trainer: Any, lost_ranks: list[int]) -> bool:
    """Whether this rank writes the run's state: rank 0 does, or, when rank 0 is lost, the lowest survivor."""
    rank, world = int(trainer.global_rank), int(getattr(trainer, "world_size", 1) or 1)
    if 0 not in lost_ranks:
        return rank == 0
    survivors = [r for r in range(world) if r not in lost_ranks]
    return bool(survivors) and rank == survivors[0]


# --- the launcher's watcher ----------------------------------------------------------------------
_RECORDERS: list[Callable[[RankLost], None]] = []


def on_child_lost(record: Callable[[RankLost], None]) -> None:
    """Register how rank 0 records a child rank that ended (the run directory's state)."""
    _RECORDERS[:] = [record]


def _lightning_launcher() -> type:
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    return _SubprocessScriptLauncher


class WatchedLauncher(_lightning_launcher()):  # type: ignore[misc]
    """Lightning's launcher of the other ranks (``_SubprocessScriptLauncher``), whose watcher
    records a child that ended badly (``<run>/.ranks/rank<k>.exit`` and the run's state) before
    it stops every rank as Lightning's does."""

    def launch(self, function: Callable, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        from lightning.fabric.strategies.launchers.subprocess_script import _set_num_threads_if_needed

        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
            folder = Path(trainer.default_root_dir) if trainer is not None else None
            first = self.cluster_environment.node_rank() * self.num_processes  # this node's rank 0, globally
            _watcher()(main_pid=os.getpid(), child_processes=self.procs, folder=folder, trainer=trainer, first=first).start()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)


def _watcher() -> type:
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    class Watcher(_ChildProcessObserver):
        def __init__(self, main_pid: int, child_processes: list, folder: Path | None, trainer: Any, first: int = 0) -> None:
            super().__init__(main_pid=main_pid, child_processes=child_processes)
            self.folder, self.trainer, self.first = folder, trainer, first

        def _terminate_all(self) -> None:
            try:
                self._record()
            finally:
                super()._terminate_all()

        def _record(self) -> None:
            # child i is the node's local rank i + 1: its global rank counts the nodes before this one
            ended = [(self.first + i + 1, p) for i, p in enumerate(self._child_processes) if p.returncode]
            if not ended or self.folder is None:
                return
            for rank, proc in ended:
                atomic_write(
                    self.folder / FOLDER / f"rank{rank}.exit",
                    json.dumps({"rank": rank, "pid": proc.pid, "returncode": proc.returncode}).encode(),
                )
            trainer = self.trainer
            lost = [(rank, f"its process (pid {proc.pid}) ended{_exit_text(self.folder, rank)}") for rank, proc in ended]
            named = "; ".join(f"rank {r}: {why}" for r, why in lost)
            step = int(getattr(trainer, "global_step", 0) or 0)
            message = (
                f"DDP rank{'s' * (len(lost) > 1)} {', '.join(str(r) for r, _ in lost)} lost at global step {step} ({named}); "
                f"the launcher stopped every rank; {_checkpoint_text(trainer)}"
            )
            for record in _RECORDERS:
                record(RankLost(message, [r for r, _ in lost]))

    return Watcher
