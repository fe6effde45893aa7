"""The local launcher: the runs of a plan one after the other on this machine, or one per GPU.

Each run is a child ``galgen fit`` process (:func:`galgen_lightning.sweep.runs.subprocess_runner`),
so DDP over every GPU of the machine works; with ``gpus`` one run per GPU at a time
(``CUDA_VISIBLE_DEVICES=<i>``, ``--trainer.devices=1``, its output in ``<run>/sweep.log``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from galgen_lightning.rundir import RunDir
from galgen_lightning.sweep import runs
from galgen_lightning.sweep.plan import RunPlan

Runner = Callable[[list[str], dict[str, str], Path | None], Any]


class Progress:
    """Which run of how many is training, and the time left from the runs done so far."""

    def __init__(self, plans: list[RunPlan], history: dict[str, float], slots: int = 1) -> None:
        self.total = len(plans)
        self.todo = [p for p in plans if p.action != "skip"]
        self.skipped = self.total - len(self.todo)
        self.durations = list(history.values())
        self.start = time.time()
        self.finished = 0
        self.slots = max(1, slots)

    def per_run(self) -> float | None:
        return sum(self.durations) / len(self.durations) if self.durations else None

    def left(self, running_since: list[float]) -> str:
        per = self.per_run()
        if per is None:
            return "time left: unknown until the first run finishes"
        remaining = len(self.todo) - self.finished
        now = time.time()
        in_flight = sum(max(per - (now - t), 0.0) for t in running_since)
        waiting = max(remaining - len(running_since), 0) * per
        left = (in_flight + waiting) / self.slots if self.slots > 1 else in_flight + waiting
        return f"time left ~{runs.duration(left)} ({runs.duration(per)} per run)"

    def line(self, plan: RunPlan, index: int, running_since: list[float]) -> str:
        what = "resuming" if plan.action == "resume" else "training"
        return (
            f"[sweep {index}/{self.total}] {what} {plan.folder.name} (N={plan.n:,}, seed {plan.seed}) | "
            f"{self.finished} done this time, "
            f"{self.skipped} already complete | elapsed {runs.duration(time.time() - self.start)} | "
            f"{self.left(running_since)}"
        )

    def done(self, plan: RunPlan) -> None:
        self.finished += 1
        if plan.returncode == 0 and plan.duration is not None:
            self.durations.append(plan.duration)


class Stopped(KeyboardInterrupt):
    """A signal (SIGTERM, SIGHUP: ``kill``, a closed terminal) stopped the sweep; its runs in flight got SIGTERM."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def forwarding(running: dict[Any, tuple[RunPlan, Any, float]]) -> Any:
    """While the sweep runs, SIGTERM and SIGHUP stop its runs in flight the orderly way (SIGTERM:
    each saves ``last.ckpt``) and raise :class:`Stopped`, instead of killing the sweep alone and
    leaving its ``galgen fit`` training on, orphaned."""

    def forward(signum: int, _frame: Any) -> None:
        for _plan, handle, _ in running.values():
            with contextlib.suppress(Exception):  # an int (in-process run) or a process already gone
                handle.send_signal(signal.SIGTERM)
        raise Stopped(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def execute(
    plans: list[RunPlan],
    out: Path,
    meta: dict,
    runner: Runner | None = None,
    gpus: list[int] | None = None,
    poll_s: float = 2.0,
) -> list[RunPlan]:
    """Train the runs that need it: one after the other, or one per GPU in ``gpus``.

    Returns the plans that failed. A run stopped by a signal (state ``interrupted``, exit status
    above 128 or a negative ``Popen`` one) stops the sweep; a Ctrl+C, SIGTERM or SIGHUP stops it
    after the runs in flight have shut down (the next invocation resumes from their last
    checkpoint): ``KeyboardInterrupt``, :class:`Stopped` for the two signals.
    """
    runner = runner or runs.subprocess_runner
    progress = Progress(plans, runs.previous_durations(out), slots=len(gpus) if gpus else 1)
    base_env = dict(os.environ)
    pending = [(i + 1, p) for i, p in enumerate(plans) if p.action != "skip"]
    for p in plans:
        if p.action == "skip":
            print(f"[sweep] skip {p.folder.name}: {p.state or 'complete'}", flush=True)
    failed: list[RunPlan] = []
    running: dict[int | None, tuple[RunPlan, Any, float]] = {}
    free = list(gpus) if gpus else [None]
    with forwarding(running):
        try:
            while pending or running:
                while pending and free:
                    index, plan = pending.pop(0)
                    runs.start(
                        plan.folder, out, plan.action, plan.args, {"fingerprint": meta.get("fingerprint"), "launcher": "local"}
                    )
                    gpu = free.pop(0)
                    env = dict(base_env)
                    args = list(plan.args)
                    log = None
                    if gpu is not None:
                        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
                        args.append("--trainer.devices=1")
                        log = plan.folder / runs.LOG
                    print(
                        progress.line(plan, index, [t for _, _, t in running.values()])
                        + (f" | GPU {gpu}, log {log}" if gpu is not None else ""),
                        flush=True,
                    )
                    running[gpu] = (plan, runner(args, env, log), time.time())
                    if gpu is None:
                        break  # sequential: wait for it below
                time.sleep(0 if not running else (poll_s if gpus else 0))
                for gpu, (plan, handle, started) in list(running.items()):
                    code = runs.wait_code(handle) if gpu is None else runs.poll_code(handle)
                    if code is None:
                        continue
                    plan.returncode, plan.duration = code, time.time() - started
                    del running[gpu]
                    free.append(gpu)
                    progress.done(plan)
                    state = RunDir(plan.folder).status().get("state", "?")
                    if code == 0 and state == "complete":
                        print(f"[sweep] {plan.folder.name} complete in {runs.duration(plan.duration)}", flush=True)
                    elif state == "interrupted" or runs.signalled(code):
                        # a signal (scheduler, Ctrl+C): the run saved last.ckpt; the same command resumes it
                        name = plan.folder.name
                        print(f"[sweep] {name} interrupted (exit {code}); rerun the same command to resume it", flush=True)
                        pending.clear()
                    else:
                        failed.append(plan)
                        print(f"[sweep] {plan.folder.name} FAILED (exit {code}, status {state}); see {plan.folder}", flush=True)
                    runs.write_state(out, plans, meta)
        except KeyboardInterrupt:
            print("\n[sweep] interrupted: waiting for the runs in flight to stop ...", flush=True)
            for _plan, handle, _ in running.values():
                with contextlib.suppress(Exception):
                    runs.wait_code(handle)
            runs.write_state(out, plans, meta)
            raise
    return failed
