"""``galgen sweep --status OUT``: each run's state, from its run directory and the scheduler.

    queued (Priority)                  SLURM: the task waits; local: the sweep has not reached it
    running epoch 3 of 10              from status.json (and the task's job, for SLURM)
    complete
    failed: <the last line of its log> (<run>/sweep.log, else the error in status.json)
    interrupted (SIGUSR1) ...          with its checkpoint; SLURM: requeued, waiting to resume
    diverged: <why>

Works for both launchers: the runs and the launcher are listed in ``<out>/sweep.json``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from galgen_lightning.errors import GalgenError
from galgen_lightning.rundir import RunDir
from galgen_lightning.sweep import runs


def _epochs(folder: Path, status: dict) -> str:
    done = status.get("epochs_done")
    epoch = int(done) + 1 if done is not None else int(status.get("epoch") or 0) + 1
    total = status.get("max_epochs") or (RunDir(folder).config().get("trainer") or {}).get("max_epochs")
    return f"epoch {epoch} of {total}" if total else f"epoch {epoch}"


def run_state(
    folder: Path, job: str | None, queue: dict[str, tuple[str, str]] | None, launcher: str, active: bool
) -> tuple[str, str]:
    """``(kind, text)`` of one run: kind is queued, running, complete, failed, interrupted,
    diverged, stopped or not started.

    Args:
        folder: the run directory.
        job: its SLURM job (``<array>_<i>``), if any.
        queue: ``squeue``'s ``{job: (state, reason)}`` (None: not known).
        launcher: ``local`` or ``slurm``.
        active: a local sweep holds the folder's lock now.
    """
    from galgen_lightning.sweep.slurm import ACTIVE

    status = RunDir(folder).status()
    state = str(status.get("state") or "")
    listed = (queue or {}).get(job or "")
    queued = listed if listed and listed[0] in ACTIVE else None
    gone = launcher == "slurm" and bool(job) and queue is not None and queued is None
    ended = f" ({listed[0]})" if listed and not queued else ""
    if state == "complete":
        return "complete", "complete"
    if state == "running":
        from galgen_lightning.faults.lock import LOCK, FolderLock

        lock = FolderLock(folder, LOCK)
        if lock.held_elsewhere():  # its galgen fit is alive (e.g. one that outlived its sweep)
            return "running", f"running {_epochs(folder, status)} (pid {lock.holder()})"
        if queued and queued[0] == "PENDING":  # SLURM requeued the task (a node failure): it resumes
            return (
                "interrupted",
                f"stopped at {_epochs(folder, status)}; requeued, waiting ({queued[1]}): resumes from its checkpoint",
            )
        if (launcher == "local" and not active) or gone:
            return (
                "stopped",
                f"stopped at {_epochs(folder, status)}: no process is running it (killed?); rerun the sweep to resume",
            )
        return "running", f"running {_epochs(folder, status)}"
    if state == "interrupted":
        text = f"interrupted ({status.get('signal', 'a signal')}) at {_epochs(folder, status)}"
        if queued and queued[0] == "PENDING":
            return "interrupted", f"{text}; requeued, waiting ({queued[1]}): resumes from its checkpoint"
        if queued:
            return "interrupted", f"{text}; its job is {queued[0].lower()}: being requeued"
        return "interrupted", f"{text}; rerun the sweep to resume from its checkpoint"
    if state == "failed":
        line = runs.last_line(folder / runs.LOG) or str(status.get("error", ""))
        return "failed", f"failed: {line}" if line else "failed"
    if state == "diverged":
        return "diverged", f"diverged: {status.get('error', '')}"
    if queued:
        what = (
            "queued" if queued[0] == "PENDING" else "starting" if queued[0] in ("RUNNING", "CONFIGURING") else queued[0].lower()
        )
        return ("queued" if what == "queued" else "running"), f"{what} ({queued[1]})" if queued[1] not in ("", "None") else what
    if gone:
        return "failed", f"not started, and its job {job} has ended{ended}: see {folder.parent / '.slurm' / str(job)}"
    if launcher == "local" and active:
        return "queued", "queued (the local sweep has not reached it)"
    return "not started", "not started"


def sweep_status(out: str) -> int:
    """Print each run's state of the sweep in ``out`` and a summary; returns 0."""
    from galgen_lightning.sweep import slurm

    folder = Path(out)
    state = runs.read_state(folder)
    if not state.get("runs"):
        raise GalgenError(f"sweep --status: {folder / runs.STATE} not found or empty (not a galgen sweep folder)")
    listed = state["runs"]
    if not (isinstance(listed, list) and all(isinstance(r, dict) and isinstance(r.get("run"), str) for r in listed)):
        raise GalgenError(f"sweep --status: {folder / runs.STATE} is damaged ('runs' must list objects with a 'run' name)")
    if not isinstance(state.get("slurm") or {}, dict):
        raise GalgenError(f"sweep --status: {folder / runs.STATE} is damaged ('slurm' must be an object)")
    launcher = str(state.get("launcher") or "local")
    info = state.get("slurm") or {}
    jobs = [str(r.get("job_id") or "") for r in state["runs"]]
    queue = slurm.queue_states([*jobs, str(info.get("report") or "")]) if launcher == "slurm" else {}
    active = launcher == "local" and runs.is_locked(folder)
    where = f"SLURM array {info.get('array')}" if launcher == "slurm" else "local" + (", running now" if active else "")
    print(f"[sweep] {folder}: {state.get('family')}, profile {state.get('profile')}, {len(state['runs'])} runs ({where})")
    if launcher == "slurm" and queue is None:
        print("[sweep] squeue could not be asked: states from the run directories only")
    kinds: Counter[str] = Counter()
    width = max(len(str(r["run"])) for r in state["runs"])
    for rec, job in zip(state["runs"], jobs):
        kind, text = run_state(folder / str(rec["run"]), job or None, queue, launcher, active)
        kinds[kind] += 1
        print(f"  {rec['run']:<{width}s}  {('job ' + job) if job else '':>12s}  {text}")
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    index = folder / "report" / "index.html"
    if launcher == "slurm" and info.get("report"):
        rid = str(info["report"])
        if queue and rid in queue and queue[rid][0] in slurm.ACTIVE:
            report = f"job {rid} {queue[rid][0].lower()} ({queue[rid][1]})"
        else:
            ended = queue[rid][0] if queue and rid in queue else slurm.finished_states([rid]).get(rid)
            report = f"{index}" if index.is_file() else f"job {rid} ended{f' ({ended})' if ended else ''} without {index}"
    else:
        report = str(index) if index.is_file() else "not written yet"
    print(f"[sweep] {summary}; report: {report}")
    return 0
