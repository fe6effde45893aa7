"""What every launcher does around one run, and the sweep folder's own files.

- :func:`start` prepares a run directory (an attempt that died before its first checkpoint is
  moved to ``<out>/.attempts/``; ``sweep.json`` records the arguments) and :func:`subprocess_runner`
  starts its ``galgen fit`` as a child process.
- :func:`write_state` keeps ``<out>/sweep.json``: the sweep's settings (and launcher) and each
  run's state, duration, exit status and SLURM job.
- :func:`sweep_lock`: one ``galgen sweep`` at a time per folder (``<out>/.sweep.lock``, a
  :class:`~galgen_lightning.faults.lock.FolderLock`: released when its process ends, however it ends).
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from galgen_lightning.errors import GalgenError
from galgen_lightning.files import atomic_write
from galgen_lightning.rundir import RunDir
from galgen_lightning.sweep.plan import RunPlan

STATE, LOCK, ATTEMPTS, LOG = "sweep.json", ".sweep.lock", ".attempts", "sweep.log"


def set_aside(folder: Path, out: Path) -> Path | None:
    """Move a run directory that cannot be resumed (no checkpoint) to ``<out>/.attempts/``.

    Raises:
        GalgenError: another process holds the run's lock (a ``galgen fit`` still writes there).
    """
    from galgen_lightning.faults.lock import LOCK as RUN_LOCK
    from galgen_lightning.faults.lock import FolderLock

    if not folder.exists() or not any(folder.iterdir()):
        return None
    lock = FolderLock(folder, RUN_LOCK)
    if lock.held_elsewhere():
        raise GalgenError(f"sweep: {folder} is in use by another galgen process (pid {lock.holder()}); it is not moved")
    dest = out / ATTEMPTS / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(folder), str(dest))
    return dest


def start(folder: Path, out: Path, action: str, args: list[str], record: dict) -> None:
    """Make ``folder`` ready for its ``galgen fit``: set aside an attempt without a checkpoint
    when the run trains from the start, and record how it is launched (``<run>/sweep.json``)."""
    if action == "train":
        moved = set_aside(folder, out)
        if moved:
            print(f"[sweep] {folder.name} had an attempt without a checkpoint: moved to {moved}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    RunDir(folder).write_launch({"args": args, **record})


def _ignore_preemption_signal() -> None:  # in the child, before exec: SIG_IGN survives exec
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def subprocess_runner(args: list[str], env: dict[str, str], log: Path | None, ignore_usr2: bool = False) -> subprocess.Popen:
    """Start ``python -m galgen_lightning.cli <args>`` (a child process: DDP relaunches it cleanly),
    its output appended to ``log`` when given. ``ignore_usr2``: the child ignores SIGUSR2 (the
    SLURM task's preemption signal is for submitit, which forwards SIGUSR1 to the run)."""
    cmd = [sys.executable, "-m", "galgen_lightning.cli", *args]
    pre = _ignore_preemption_signal if ignore_usr2 else None
    if log is None:
        return subprocess.Popen(cmd, env=env, preexec_fn=pre)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(f"\n$ {shlex.join(cmd)}\n")
        handle.flush()
        return subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, preexec_fn=pre)


def last_line(path: Path) -> str:
    """The last non-empty line of a text file (a run's log), or ``""``."""
    try:
        with path.open("rb") as f:
            f.seek(max(f.seek(0, 2) - 8192, 0))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def duration(seconds: float | None) -> str:
    """``1h02m``, ``3m07s`` or ``42s`` (``?`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def read_state(out: Path) -> dict:
    """``<out>/sweep.json``, or ``{}``."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((out / STATE).read_text())
        return data if isinstance(data, dict) else {}
    return {}


def write_state(out: Path, plans: list[RunPlan], meta: dict) -> None:
    """``<out>/sweep.json``: the sweep's settings and each run's state and duration."""
    old = {r["run"]: r for r in read_state(out).get("runs", []) if isinstance(r, dict) and "run" in r}
    runs = []
    for p in plans:
        rec = dict(old.get(p.folder.name, {}))
        rec.update(
            {
                "run": p.folder.name,
                "n": p.n,
                "seed": p.seed,
                "data_seed": p.data_seed,
                "state": RunDir(p.folder).status().get("state", p.state or "not started"),
            }
        )
        if p.duration is not None and p.returncode == 0:
            rec["duration_s"] = round(p.duration, 1)
        if p.returncode is not None:
            rec["returncode"] = p.returncode
        if p.job_id:
            rec["job_id"] = p.job_id
        runs.append(rec)
    state = {**meta, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": runs}
    atomic_write(out / STATE, (json.dumps(state, indent=1) + "\n").encode())


def previous_durations(out: Path) -> dict[str, float]:
    """Run durations recorded by earlier invocations (for the time-left estimate)."""
    records = read_state(out).get("runs", [])
    found = {}
    for r in records if isinstance(records, list) else []:
        try:
            found[str(r["run"])] = float(r["duration_s"])
        except (TypeError, KeyError, ValueError):  # a damaged record: no estimate from it
            continue
    return found


@contextlib.contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """One sweep at a time per output folder (``<out>/.sweep.lock``; a lock of a killed process is free)."""
    from galgen_lightning.faults.lock import FolderLock

    busy = lambda pid: GalgenError(f"sweep: another galgen sweep (pid {pid}) is using {out} (lock {out / LOCK})")  # noqa: E731
    with FolderLock(out, LOCK, f"the sweep folder {out}").held(busy):
        yield


def is_locked(out: Path) -> bool:
    """Whether a ``galgen sweep`` holds ``<out>``'s lock now (it is training there)."""
    from galgen_lightning.faults.lock import FolderLock

    return FolderLock(out, LOCK).held_elsewhere()


def signalled(code: int | None) -> bool:
    """Whether an exit status says a signal stopped the run (``Popen`` gives ``-signum``, a shell ``128 + signum``)."""
    return code is not None and (code < 0 or code > 128)


def shell_code(code: int) -> int:
    """An exit status as a shell gives it: ``128 + signum`` for a run a signal stopped."""
    return 128 - code if code < 0 else code


def wait_code(handle: Any) -> int:
    """The exit status of a runner's handle (a ``Popen``, or an int for an in-process run)."""
    return handle if isinstance(handle, int) else handle.wait()


def poll_code(handle: Any) -> int | None:
    return handle if isinstance(handle, int) else handle.poll()
