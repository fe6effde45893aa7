"""The SLURM launcher: the runs of a plan as one job array (submitit), then a dependent report job.

Each array task runs the same ``galgen fit`` command line as the local launcher, into the same
run directory, and decides what to do when it *starts* (:func:`galgen_lightning.sweep.plan.decide`):
a complete run is skipped, a run with ``checkpoints/last.ckpt`` resumes from it, any other
trains from the start. ``galgen fit`` is a child process of the task (:class:`FitTask`).

Preemption and time limits use submitit's checkpointing. SLURM tells the task
``signal_delay`` seconds before its time limit (submitit's ``--signal=USR2@<delay>``); the task's
:meth:`FitTask.checkpoint` forwards SIGUSR1 to ``galgen fit``, which saves ``last.ckpt`` at the
next step boundary and exits as ``interrupted`` (:mod:`galgen_lightning.faults`), and submitit
requeues the task with ``scontrol requeue``. A run stopped by SIGTERM or SIGUSR1 sent to the job
(``scancel --signal=TERM|USR1 <job>``, or a preemption) exits the same way and its task requeues
itself through the same path. Requeued, the task finds ``last.ckpt`` and resumes. (Lightning's own
SIGUSR1 auto-requeue is not used: galgen's signal handling owns SIGUSR1 so that every run,
local or not, stops at a step boundary with a checkpoint.)
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission

from galgen_lightning.errors import GalgenError
from galgen_lightning.rundir import LAUNCH, RunDir
from galgen_lightning.sweep import runs
from galgen_lightning.sweep.plan import RunPlan, decide

LOGS = ".slurm"


@dataclass
class SlurmOptions:
    """How ``galgen sweep --launcher slurm`` submits its runs (``--slurm.<name>``).

    Attributes:
        partition: the partition (default: the cluster's default).
        account: the account to charge.
        qos: the quality of service.
        time: minutes per task; a task near its limit checkpoints and is requeued, so a run may
            take several.
        gpus: GPUs per run; above 1, one task per GPU and Lightning's DDP over them (its SLURM
            environment); 0 for a CPU run.
        cpus: CPUs per task (default: the cluster's).
        mem: memory per task's node, e.g. ``32G`` (default: the cluster's).
        parallelism: at most this many runs of the array at once.
        signal_delay: seconds before the time limit at which a task checkpoints and requeues itself.
        requeues: how many times a task may be requeued at its time limit (preemptions do not count).
        sbatch: extra ``#SBATCH`` options, e.g. ``["--constraint=h100", "--exclusive"]``.
        setup: shell lines run before each task, e.g. ``["module load cuda/12.4"]``.
        job_name: the jobs' name (default: ``galgen-<family>-<profile>``; the report job adds ``-report``).
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: int = 1440
    gpus: int = 0
    cpus: int | None = None
    mem: str | None = None
    parallelism: int = 256
    signal_delay: int = 120
    requeues: int = 10
    sbatch: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    job_name: str | None = None

    def check(self) -> None:
        """A bad value is one line naming the option."""
        for name, low in (("time", 1), ("gpus", 0), ("cpus", 1), ("parallelism", 1), ("signal_delay", 0), ("requeues", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise GalgenError(f"sweep: --slurm.{name} must be at least {low}, got {value}")
        if self.mem is not None and not re.fullmatch(r"\d+(\.\d+)?[KMGT]?B?", str(self.mem), re.IGNORECASE):
            raise GalgenError(f"sweep: --slurm.mem must be a size such as 32G or 4000M, got {self.mem!r}")
        if self.signal_delay >= self.time * 60:
            raise GalgenError(f"sweep: --slurm.signal_delay {self.signal_delay} s is not below --slurm.time {self.time} min")
        self.extra()

    @property
    def stop_timeout(self) -> float:
        """Seconds a task's ``galgen fit`` gets, after the warning signal, to save its checkpoint
        and stop: ``signal_delay`` less 15 s kept for the requeue itself, and at least 30."""
        return max(self.signal_delay - 15.0, 30.0)

    def extra(self) -> dict[str, Any]:
        """``sbatch`` as submitit's ``additional_parameters``: ``--key=value`` -> ``{key: value}``,
        ``--flag`` -> ``{flag: True}``."""
        out: dict[str, Any] = {}
        for line in self.sbatch:
            text = str(line).strip()
            text = text[len("#SBATCH") :].strip() if text.upper().startswith("#SBATCH") else text
            match = re.fullmatch(r"--([A-Za-z][A-Za-z0-9_-]*)(?:=(.+))?", text)
            if not match:
                raise GalgenError(f"sweep: --slurm.sbatch entry {line!r} is not of the form --option=value or --flag")
            out[match.group(1).replace("_", "-")] = match.group(2) if match.group(2) is not None else True
        return out

    def parameters(self, job_name: str, gpus: bool = True) -> dict[str, Any]:
        """submitit ``SlurmExecutor.update_parameters`` keywords (``gpus``: the runs' GPUs; False for the report job)."""
        params: dict[str, Any] = {
            "job_name": job_name,
            "time": self.time,
            "signal_delay_s": self.signal_delay,
            "array_parallelism": self.parallelism,
            "stderr_to_stdout": True,
            "additional_parameters": {"requeue": True, "chdir": os.getcwd(), **self.extra()},
        }
        if gpus and self.gpus:
            params.update(gpus_per_node=self.gpus, ntasks_per_node=self.gpus)
        for name, key in (
            ("partition", "partition"),
            ("account", "account"),
            ("qos", "qos"),
            ("cpus", "cpus_per_task"),
            ("mem", "mem"),
        ):
            if getattr(self, name) is not None:
                params[key] = getattr(self, name)
        if self.setup:
            params["setup"] = list(self.setup)
        return params


def task_environment(environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """The environment of ``galgen fit`` in a task: the submitting shell's (SLURM passes it on),
    with the thread counts set to the task's CPUs (``SLURM_CPUS_PER_TASK``, i.e. ``--slurm.cpus``).
    A thread count inherited from the login node would oversubscribe the task's cores."""
    env = dict(environ)
    cpus = env.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = cpus
    return env


class FitTask(Checkpointable):
    """One array task: ``galgen fit`` of one run, resumed from its checkpoint after a requeue.

    Args:
        folder: the run directory.
        out: the sweep folder (for ``.attempts/``).
        args: the run's ``galgen fit`` arguments without ``--ckpt_path`` (:func:`decide` adds it).
        pool_size: the sweep's ``data.pool_size``.
        record: what ``<run>/sweep.json`` records besides the arguments (the fingerprint).
        stop_timeout: seconds :meth:`checkpoint` waits for ``galgen fit`` to save and stop.
    """

    def __init__(
        self, folder: str, out: str, args: list[str], pool_size: int | None, record: dict, stop_timeout: float = 90.0
    ) -> None:
        self.params = {
            "folder": folder,
            "out": out,
            "args": list(args),
            "pool_size": pool_size,
            "record": dict(record),
            "stop_timeout": stop_timeout,
        }
        self.child: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {"params": self.params, "child": None}

    def __call__(self) -> str:
        import submitit

        env = submitit.JobEnvironment()
        folder, out = Path(self.params["folder"]), Path(self.params["out"])
        action, args, state, warning = decide(folder, self.params["args"], self.params["pool_size"])
        if warning:
            print(f"[sweep] warning: {folder.name} {warning}", flush=True)
        if action == "skip":
            if state == "diverged":
                raise GalgenError(f"{folder.name} diverged: {warning}")
            print(f"[sweep] {folder.name}: {state}, nothing to do", flush=True)
            return state
        rank = env.global_rank
        attempt = {"job_id": env.job_id, "restart": int(os.environ.get("SLURM_RESTART_COUNT") or 0)}
        if rank == 0:
            runs.start(folder, out, action, args, {**self.params["record"], "launcher": "slurm", **attempt})
        elif not wait_for_launch(folder, attempt):  # rank 0 prepares the folder (it may set an attempt aside)
            print(f"[sweep] warning: {folder.name}: rank 0 has not recorded this attempt in {LAUNCH} after 60 s", flush=True)
        for signum in (signal.SIGUSR1, signal.SIGINT):  # galgen fit gets them from SLURM too: it stops itself
            signal.signal(signum, _note)
        print(
            f"[sweep] {'resuming' if action == 'resume' else 'training'} {folder.name} (job {env.job_id}, rank {rank})",
            flush=True,
        )
        log = folder / (runs.LOG if rank == 0 else f"sweep.rank{rank}.log")
        self.child = runs.subprocess_runner(args, task_environment(os.environ), log, ignore_usr2=True)
        code = self._wait()
        state = str(RunDir(folder).status().get("state", "?"))
        if code == 0 and state == "complete":
            print(f"[sweep] {folder.name} complete", flush=True)
            return "complete"
        if code > 128 or state == "interrupted":
            print(f"[sweep] {folder.name} interrupted (exit {code}): requeueing to resume from its checkpoint", flush=True)
            if rank == 0:
                request_requeue()
            return "interrupted"
        raise GalgenError(f"galgen fit of {folder.name} exited with status {code} (state {state}): {runs.last_line(log)}")

    def _wait(self) -> int:
        assert self.child is not None
        while True:  # polling, not wait(): checkpoint() may poll the child from a signal handler
            code = self.child.poll()
            if code is not None:
                return code
            time.sleep(0.5)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """submitit calls this on the preemption signal: ``galgen fit`` saves ``last.ckpt`` and
        stops (SIGUSR1), then the same task is resubmitted; it resumes from that checkpoint."""
        child = self.child
        if child is not None and child.poll() is None:
            print(
                f"[sweep] checkpointing {Path(self.params['folder']).name}: SIGUSR1 to galgen fit (pid {child.pid})", flush=True
            )
            child.send_signal(signal.SIGUSR1)
            deadline = time.time() + self.params["stop_timeout"]
            while child.poll() is None and time.time() < deadline:
                time.sleep(0.5)
        return DelayedSubmission(FitTask(**self.params))


def wait_for_launch(folder: Path, attempt: dict, timeout: float = 60.0, poll: float = 1.0) -> bool:
    """Wait until rank 0 has recorded ``attempt`` (job id and SLURM restart count) in the run's
    ``sweep.json``: after a requeue the file of the attempt before is already there, and a rank
    that went by it could start while rank 0 still sets that attempt's folder aside. Whether it came."""
    deadline = time.monotonic() + timeout
    while True:
        record = RunDir(folder).launch()
        if all(record.get(key) == value for key, value in attempt.items()):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def _note(signum: int, frame: Any) -> None:
    print(f"[sweep] {signal.Signals(signum).name} received: galgen fit saves its checkpoint and stops", flush=True)


def request_requeue() -> None:
    """Requeue this task through submitit's own preemption path (its handler calls
    :meth:`FitTask.checkpoint`, dumps the resubmission, runs ``scontrol requeue`` and exits)."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    os.kill(os.getpid(), getattr(signal, "SIG" + SlurmJobEnvironment.USR_SIG))
    time.sleep(5)  # the handler runs at once; it exits the process


ACTIVE = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
}
"""Job states in which a job is still queued or running (squeue also lists recently ended jobs by id)."""


def _ask(command: list[str]) -> subprocess.CompletedProcess | None:
    """Run a SLURM query command (30 s at most); ``None`` when it cannot run or does not answer."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


def queue_states(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """``{job id: (state, reason)}`` of the given jobs (``<array>_<i>`` for array tasks) that
    ``squeue`` lists, ended ones included; ``None`` when ``squeue`` cannot be asked."""
    ids = sorted({str(j).split("_")[0] for j in job_ids if j})
    if not ids:
        return {}
    proc = _ask(["squeue", "--noheader", "--array", "--states=all", f"--jobs={','.join(ids)}", "--format=%i|%T|%r"])
    if proc is None:
        return None
    if proc.returncode != 0:
        return {} if "Invalid job id" in proc.stderr else None
    states = {}
    for line in proc.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def finished_states(job_ids: list[str]) -> dict[str, str]:
    """``{job id: state}`` from ``sacct`` for jobs that left the queue (``{}`` without accounting)."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return {}
    proc = _ask(["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={','.join(ids)}", "--format=JobID,State"])
    if proc is None or proc.returncode != 0:
        return {}
    return {p[0]: p[1].split()[0] for p in (line.split("|") for line in proc.stdout.splitlines()) if len(p) == 2 and p[1]}


def check_idle(out: Path) -> None:
    """Refuse a second submission while the jobs of the last one to ``out`` are still queued or running."""
    slurm = runs.read_state(out).get("slurm") or {}
    slurm = slurm if isinstance(slurm, dict) else {}  # a damaged sweep.json: nothing known to wait for
    ids = [slurm.get("array"), slurm.get("report")]
    queue = queue_states([i for i in ids if i]) or {}
    alive = sorted({j.split("_")[0] for j, (state, _) in queue.items() if state in ACTIVE})
    if alive:
        raise GalgenError(
            f"sweep: the SLURM jobs {', '.join(alive)} of the last submission to {out} are still queued or running "
            f"(galgen sweep --status {out}); wait for them, or scancel them to submit again"
        )


@contextlib.contextmanager
def _sbatch_errors(what: str) -> Iterator[None]:
    """sbatch's refusal as one line (submitit prints sbatch's stderr itself: kept out of the way)."""
    from submitit.core.utils import FailedJobError

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    except (OSError, subprocess.CalledProcessError, FailedJobError) as e:
        why = ([line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__])[-1]
        raise GalgenError(f"sweep: sbatch refused {what}: {why[:400]}") from None


def submit(plans: list[RunPlan], out: Path, meta: dict, options: SlurmOptions, family: str, profile: str, report: bool) -> dict:
    """Submit the runs that need it as one job array, and ``galgen report OUT`` as a job that
    starts when every task has ended (``afterany``). Returns ``{"array", "report", "logs"}``."""
    import submitit

    options.check()
    todo = [p for p in plans if p.action != "skip"]
    logs = out / LOGS
    name = options.job_name or f"galgen-{family}-{profile}"
    record = {"fingerprint": meta.get("fingerprint")}
    executor = submitit.SlurmExecutor(folder=logs / "%j", max_num_timeout=options.requeues)
    executor.update_parameters(**options.parameters(name))
    tasks = [FitTask(str(p.folder), str(out), p.base_args, p.pool_size, record, options.stop_timeout) for p in todo]
    with _sbatch_errors("the array"):
        with executor.batch():
            jobs = [executor.submit(task) for task in tasks]
    for plan, job in zip(todo, jobs):
        plan.job_id = str(job.job_id)
    array = str(jobs[0].job_id).split("_")[0]
    report_id = None
    if report:
        reporter = submitit.SlurmExecutor(folder=logs / "%j")
        reporter.update_parameters(**options.parameters(f"{name}-report", gpus=False), dependency=f"afterany:{array}")
        command = [sys.executable, "-m", "galgen_lightning.cli", "report", str(out.resolve())]
        with _sbatch_errors("the report job"):
            report_id = str(reporter.submit(submitit.helpers.CommandFunction(command, cwd=os.getcwd())).job_id)
    return {"array": array, "report": report_id, "logs": str(logs), "tasks": len(todo)}
