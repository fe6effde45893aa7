"""DDP faults injected for real: 2 gloo processes on the CPU, one of them killed or stopped mid-epoch.

Each case runs a child ``galgen fit --trainer.strategy ddp --trainer.devices 2`` and asserts that
the surviving rank exits non-zero within a bounded time (not Lightning's 30-minute collective
timeout), that ``status.json`` says ``failed`` naming the rank that was lost, and that the
checkpoints written before are intact (docs/reliability.md lists them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from support import CONFIGS, TESTS_OFF

FAMILY = [f"--config={CONFIGS / 'diffusion.yaml'}", f"--config={CONFIGS / 'quick' / 'diffusion.yaml'}"]
TINY = [
    "--data.n=8",
    "--data.n_val=8",
    "--data.batch_size=8",
    "--data.samples_per_epoch=64",  # 4 steps per epoch on each of the 2 ranks
    "--model.init_args.blocks=2",
    "--model.init_args.width=8",
    "--trainer.max_epochs=50",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.logger=false",
    "--trainer.strategy=ddp",
    "--trainer.devices=2",
    "--trainer.accelerator=cpu",
]
KILL_AT = 6  # a global step in the middle of the second epoch


class Progress(L.Callback):
    """Each rank writes ``<folder>/rank<k>`` = ``"<pid> <global step>"`` after every step from 2
    on and slows down, so that a test can find the ranks and kill one mid-epoch; rank 0 can also
    be kept busy in Python (as in a long evaluation) at ``busy_at``."""

    def __init__(self, folder: str = "", seconds: float = 0.3, busy_at: int = -1) -> None:
        self.folder, self.seconds, self.busy_at = folder, seconds, busy_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step >= 2:
            Path(self.folder, f"rank{trainer.global_rank}").write_text(f"{os.getpid()} {step}")
        if trainer.global_rank == 0 and step == self.busy_at:
            Path(self.folder, "busy").write_text(str(os.getpid()))
            time.sleep(120)
        time.sleep(self.seconds)


def _gone(pid: int) -> bool:
    from galgen_lightning.faults.ddp import _process_gone

    return _process_gone(pid)


def _wait_for(predicate, seconds: float, proc: subprocess.Popen, err: Path) -> None:
    deadline = time.time() + seconds
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"galgen fit ended early ({proc.returncode}): {err.read_text()[-3000:]}")
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for the ranks: {err.read_text()[-3000:]}")
        time.sleep(0.2)


def _rank(folder: Path, rank: int) -> tuple[int, int]:
    try:
        pid, step = (folder / f"rank{rank}").read_text().split()
        return int(pid), int(step)
    except (OSError, ValueError):
        return -1, -1


@pytest.mark.slow
@pytest.mark.parametrize(
    "victim, how, timeout",
    [
        pytest.param(1, signal.SIGKILL, None, id="rank1-killed"),
        pytest.param(0, signal.SIGKILL, None, id="rank0-killed"),
        pytest.param(1, signal.SIGSTOP, 45, id="rank1-hangs-timeout"),
        pytest.param(1, "busy", None, id="rank1-killed-while-rank0-evaluates"),
    ],
)
def test_a_lost_rank_stops_the_others_in_bounded_time_and_is_named(tmp_path, tiny_source_args, victim, how, timeout):
    run, marks = tmp_path / "run", tmp_path / "marks"
    marks.mkdir()
    busy_at = KILL_AT if how == "busy" else -1
    config = tmp_path / "callbacks.yaml"
    config.write_text(
        TESTS_OFF + "trainer:\n  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n      init_args:\n"
        "        save_last: true\n        every_n_epochs: 1\n"
        f"    - class_path: test_ddp_faults.Progress\n      init_args:\n"
        f"        folder: {marks}\n        seconds: 0.3\n        busy_at: {busy_at}\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "galgen_lightning.cli",
        "fit",
        *FAMILY,
        *tiny_source_args,
        *TINY,
        f"--config={config}",
        f"--trainer.default_root_dir={run}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    env.pop("GALGEN_DDP_TIMEOUT", None)
    if timeout:
        env["GALGEN_DDP_TIMEOUT"] = str(timeout)
    err = tmp_path / "stderr.txt"
    with err.open("w") as stderr:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path)
    pids: dict[int, int] = {}
    try:
        if how == "busy":
            _wait_for(lambda: (marks / "busy").exists() and _rank(marks, 1)[0] > 0, 300, proc, err)
        else:
            _wait_for(lambda: min(_rank(marks, 0)[1], _rank(marks, 1)[1]) >= KILL_AT, 300, proc, err)
        pids = {r: _rank(marks, r)[0] for r in (0, 1)}
        assert pids[0] == proc.pid  # rank 0 is the launcher
        survivor = 1 - victim
        os.kill(pids[victim], signal.SIGSTOP if how == signal.SIGSTOP else signal.SIGKILL)
        killed = time.time()
        bound = (timeout or 0) + 60  # the collective's timeout + slack; a dead peer is found at once
        if survivor == 0:
            code = proc.wait(timeout=bound)
        else:
            proc.wait(timeout=10)
            deadline = killed + bound
            while not _gone(pids[1]) and time.time() < deadline:
                time.sleep(0.2)
            assert _gone(pids[1]), "the surviving rank 1 still runs"
            code = None
        took = time.time() - killed
    finally:
        for pid in pids.values():
            if pid > 0 and not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.read_text()
    assert took < bound, f"the survivor took {took:.0f} s to stop"
    # rank 0's next collective fails (one line, exit 2), unless Lightning's watcher of the child
    # ranks (every 5 s) sees the dead child first: it kills rank 0 (SIGKILL) once galgen's watcher
    # has recorded the state; a child killed while rank 0 is busy outside a collective: always that
    watched = code == -signal.SIGKILL
    if code is not None:
        assert code in (
            (-signal.SIGKILL,) if how == "busy" else (2, -signal.SIGKILL) if victim == 1 and how == signal.SIGKILL else (2,)
        ), text[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and status["lost_ranks"] == [victim], status
    assert status["error"].startswith(f"DDP rank {victim} lost at global step"), status["error"]
    why = "stopped responding: no heartbeat" if how == signal.SIGSTOP else f"its process (pid {pids[victim]}) ended"
    assert why in status["error"] and "--ckpt_path" in status["error"]
    if how == "busy":  # rank 0 sleeps: the state is the watcher's
        assert "ended by SIGKILL" in status["error"] and "the launcher stopped every rank" in status["error"]
    if how == signal.SIGSTOP:
        assert "Timed out" in status["error"] and "GALGEN_DDP_TIMEOUT=45 s" in status["error"]
    if survivor_line := [line for line in text.splitlines() if line.startswith("galgen: error: DDP rank")]:
        assert survivor_line[-1].startswith(f"galgen: error: DDP rank {victim} lost at global step")
        assert watched or survivor_line[-1] == f"galgen: error: {status['error']}"
    else:
        assert watched  # killed by Lightning's watcher before it could print
    # the checkpoints written before the fault are intact
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert (run / "checkpoints" / "epoch=0-step=4.ckpt") in ckpts and (run / "checkpoints" / "last.ckpt") in ckpts
    for path in ckpts:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert 4 <= state["global_step"] <= status["global_step"] and all(
            torch.isfinite(v).all() for v in state["state_dict"].values()
        )
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]


def test_a_bad_ddp_timeout_is_one_line(monkeypatch):
    from galgen_lightning.errors import GalgenError
    from galgen_lightning.faults.ddp import DEFAULT_TIMEOUT, timeout_seconds

    monkeypatch.delenv("GALGEN_DDP_TIMEOUT", raising=False)
    assert timeout_seconds() == DEFAULT_TIMEOUT
    monkeypatch.setenv("GALGEN_DDP_TIMEOUT", "45")
    assert timeout_seconds() == 45.0
    for bad in ("abc", "0", "-3", "nan", "inf"):
        monkeypatch.setenv("GALGEN_DDP_TIMEOUT", bad)
        with pytest.raises(GalgenError, match=f"GALGEN_DDP_TIMEOUT={bad}: expected a positive number of seconds"):
            timeout_seconds()


def test_the_timeout_reaches_the_ddp_strategy(monkeypatch):
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy

    from galgen_lightning.faults.ddp import WatchedLauncher, configure_ddp

    monkeypatch.setenv("GALGEN_DDP_TIMEOUT", "42")
    trainer = L.Trainer(strategy="ddp", devices=2, accelerator="cpu", logger=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy, DDPStrategy)
    configure_ddp(trainer)
    assert trainer.strategy._timeout == timedelta(seconds=42) and isinstance(trainer.strategy.launcher, WatchedLauncher)
    monkeypatch.delenv("GALGEN_DDP_TIMEOUT")
    explicit = L.Trainer(strategy=DDPStrategy(timeout=timedelta(seconds=7)), devices=2, accelerator="cpu", logger=False)
    configure_ddp(explicit)
    assert explicit.strategy._timeout == timedelta(seconds=7)  # a strategy given its own timeout keeps it


def test_the_lost_rank_is_named_from_the_heartbeats(tmp_path):
    """The survivor's reading of ``<run>/.ranks``: a process that ended, a silent rank, or none."""
    import socket
    from types import SimpleNamespace

    from galgen_lightning.faults import run_state
    from galgen_lightning.faults.ddp import Heartbeat, heartbeat_path, rank_lost, records_for_the_lost

    trainer = SimpleNamespace(
        world_size=3, global_rank=0, global_step=5, default_root_dir=str(tmp_path), checkpoint_callback=None
    )

    def failed_collective() -> RuntimeError:  # a new one each time: the finding is kept on the exception
        return RuntimeError(
            "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:42915: "
            "Connection reset by peer. This is typically caused by ..."
        )

    gloo = failed_collective()
    Heartbeat(tmp_path, 0).start()
    Heartbeat(tmp_path, 2).start()  # this process: alive, heartbeat fresh
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    heartbeat_path(tmp_path, 1).write_text(json.dumps({"rank": 1, "pid": ended.pid, "host": socket.gethostname()}))
    lost = rank_lost(gloo, trainer)
    assert lost is not None and lost.ranks == [1]
    assert str(lost) == (
        f"DDP rank 1 lost at global step 5 (rank 1: its process (pid {ended.pid}) ended); rank 0 stopped: "
        "Read error [127.0.0.1]:42915: Connection reset by peer (GALGEN_DDP_TIMEOUT=600 s); no checkpoint was saved yet"
    )
    assert run_state(gloo, trainer) == ("failed", {"error": str(lost), "lost_ranks": [1]})
    # a rank alive but silent for more than half the timeout (stopped, hung, its host gone)
    heartbeat_path(tmp_path, 1).write_text(json.dumps({"rank": 1, "pid": os.getpid(), "host": "elsewhere"}))
    old = time.time() - 400
    os.utime(heartbeat_path(tmp_path, 1), (old, old))
    lost = rank_lost(RuntimeError("Timed out waiting 600000ms for recv operation to complete"), trainer)
    assert (
        lost is not None
        and lost.ranks == [1]
        and f"rank 1: pid {os.getpid()} on elsewhere stopped responding: no heartbeat for 400 s" in str(lost)
    )
    # nobody gone or silent, another error, or one process only: the error stands as it is
    os.utime(heartbeat_path(tmp_path, 1))
    gloo = failed_collective()
    assert rank_lost(gloo, trainer) is None and run_state(gloo, trainer)[1]["error"].startswith("RuntimeError: [")
    assert rank_lost(ValueError("bad value"), trainer) is None
    assert rank_lost(failed_collective(), SimpleNamespace(**{**vars(trainer), "world_size": 1})) is None
    # who records the state: rank 0, or the lowest survivor when rank 0 is lost
    assert records_for_the_lost(trainer, [1]) and not records_for_the_lost(SimpleNamespace(global_rank=1, world_size=3), [2])
    assert records_for_the_lost(SimpleNamespace(global_rank=1, world_size=3), [0])
    assert not records_for_the_lost(SimpleNamespace(global_rank=2, world_size=3), [0])


def test_the_launchers_watcher_names_global_ranks_on_every_node(tmp_path):
    """On node 1 of a 2-node job with 4 processes per node, the child in slot 2 is global rank 6."""
    from types import SimpleNamespace

    from galgen_lightning.faults import ddp

    procs = [
        SimpleNamespace(returncode=None, pid=11),
        SimpleNamespace(returncode=-9, pid=22),
        SimpleNamespace(returncode=None, pid=33),
    ]
    watcher = ddp._watcher()(main_pid=os.getpid(), child_processes=procs, folder=tmp_path, trainer=None, first=4)
    seen = []
    ddp._RECORDERS.append(lambda lost: seen.append(lost))
    try:
        watcher._record()
    finally:
        ddp._RECORDERS.pop()
    assert (tmp_path / ddp.FOLDER / "rank6.exit").is_file() and not (tmp_path / ddp.FOLDER / "rank2.exit").exists()
    assert "DDP rank 6 lost" in str(seen[0])
