"""Faults injected for real: signals, divergence, full disks, corrupt caches, collisions, hostile files.

Each test asserts the exit status, the state in ``status.json``, the one-line message and that
what was written before is still there (docs/reliability.md lists them).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from support import CONFIGS, TESTS_OFF, quiet_trainer, read_jsonl, run_cli

FAMILY = [f"--config={CONFIGS / 'diffusion.yaml'}", f"--config={CONFIGS / 'quick' / 'diffusion.yaml'}"]
TINY = [
    "--data.n=8",
    "--data.n_val=8",
    "--data.batch_size=8",
    "--data.samples_per_epoch=64",  # 8 steps per epoch
    "--model.init_args.blocks=2",
    "--model.init_args.width=8",
    "--trainer.max_epochs=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.logger=false",
]
STEPS_PER_EPOCH = 8


def _config(tmp_path: Path, *extra: str) -> str:
    """A config whose callbacks are a checkpoint per epoch plus ``extra`` (YAML items): no tests."""
    path = tmp_path / "callbacks.yaml"
    path.write_text(
        TESTS_OFF + "trainer:\n  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n      init_args:\n"
        "        save_last: true\n        every_n_epochs: 1\n" + "".join(extra)
    )
    return f"--config={path}"


def _err_lines(capsys) -> list[str]:
    lines = capsys.readouterr().err.strip().splitlines()  # galgen's errors and messages, not its notes
    return [line for line in lines if line.startswith("galgen:") and not line.startswith("galgen: note: no test is on")]


def _status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def _ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


class SendSignal(L.Callback):
    """Sends ``signum`` to this very process after training step ``at_step`` (a real signal)."""

    def __init__(self, signum: int = 15, at_step: int = 3) -> None:
        self.signum, self.at_step = signum, at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)


class Slow(L.Callback):
    """Marks that training runs (a file) and slows each step, so a test can signal it mid-epoch."""

    def __init__(self, marker: str = "", seconds: float = 0.3) -> None:
        self.marker, self.seconds = marker, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= 2:
            Path(self.marker).write_text(str(trainer.global_step))
        time.sleep(self.seconds)


class PoisonA(L.Callback):
    """From step ``from_step`` on, model A's weights hold a NaN: every loss of A is non-finite."""

    def __init__(self, from_step: int = 8) -> None:
        self.from_step = from_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.from_step:
            with torch.no_grad():
                next(pl_module.model_a.parameters()).view(-1)[0] = float("nan")


# --- 1. signals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_signal_stops_at_the_step_boundary_with_a_checkpoint_and_resumes(tmp_path, tiny_source_args, capsys, sig):
    run = tmp_path / "run"
    cb = f"    - class_path: test_faults.SendSignal\n      init_args:\n        signum: {int(sig)}\n        at_step: 3\n"
    args = ["fit", *FAMILY, *tiny_source_args, *TINY, _config(tmp_path, cb), f"--trainer.default_root_dir={run}"]
    callers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}  # SIG_IGN in a background job
    assert run_cli(args) == 128 + int(sig)
    status = _status(run)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert status["state"] == "interrupted" and status["signal"] == sig.name and status["checkpoint"] == str(ckpt)
    assert _ckpt_step(ckpt) == status["global_step"] and status["global_step"] in (3, 4)  # at most one step later
    err = _err_lines(capsys)
    assert err[-1].startswith(f"galgen: interrupted by {sig.name} at global step") and f"--ckpt_path {ckpt}" in err[-1]
    assert {s: signal.getsignal(s) for s in callers} == callers  # in-process: the caller's handlers are back
    if sig != signal.SIGTERM:
        return
    # resume: continues from that step and completes the 2 epochs
    resume = [
        "fit",
        *FAMILY,
        *tiny_source_args,
        *TINY,
        _config(tmp_path),
        f"--trainer.default_root_dir={run}",
        f"--ckpt_path={ckpt}",
    ]
    assert run_cli(resume) == 0
    assert _status(run)["state"] == "complete"
    assert _ckpt_step(ckpt) in (2 * STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH + 1)


class SendTwice(SendSignal):
    """Two Ctrl-C in a row (an impatient user): the second stops at once."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)


def test_a_second_ctrl_c_stops_at_once_with_130(tmp_path, tiny_source_args, capsys):
    run = tmp_path / "run"
    cb = "    - class_path: test_faults.SendTwice\n      init_args:\n        at_step: 3\n"
    args = ["fit", *FAMILY, *tiny_source_args, *TINY, _config(tmp_path, cb), f"--trainer.default_root_dir={run}"]
    assert run_cli(args) == 130
    status = _status(run)
    assert status["state"] == "interrupted" and status["signal"] == "SIGINT" and "stopped at once" in status["error"]
    assert _err_lines(capsys)[-1] == "galgen: stopped at once by a second SIGINT: no checkpoint of this point"


def test_a_forked_worker_leaves_ctrl_c_to_the_main_process():
    """A data-loader or pool worker that inherited galgen's handler survives the terminal's Ctrl-C
    (sent to the whole group): the main process stops the run and shuts its workers down."""
    from galgen_lightning.faults.signals import install_signal_handlers, restore_signal_handlers

    previous = install_signal_handlers()
    try:
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
            finally:
                os._exit(7)
        _, status = os.waitpid(pid, 0)
    finally:
        restore_signal_handlers(previous)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7


@pytest.mark.slow
def test_sigterm_to_a_child_galgen_fit(tmp_path, tiny_source_args):
    """A scheduler's SIGTERM from outside: exit status 143, state interrupted, a checkpoint of that step."""
    run, marker = tmp_path / "run", tmp_path / "training"
    cb = f"    - class_path: test_faults.Slow\n      init_args:\n        marker: {marker}\n        seconds: 0.3\n"
    cmd = [sys.executable, "-m", "galgen_lightning.cli", "fit", *FAMILY, *tiny_source_args, *TINY, _config(tmp_path, cb)]
    cmd += [f"--trainer.default_root_dir={run}", "--trainer.max_epochs=20"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    status = _status(run)
    assert status["state"] == "interrupted" and status["signal"] == "SIGTERM"
    assert _ckpt_step(run / "checkpoints" / "last.ckpt") == status["global_step"] >= 2
    assert err.strip().splitlines()[-1].startswith("galgen: interrupted by SIGTERM at global step")


# --- 2. divergence -------------------------------------------------------------------------------
def test_diffusion_stops_diverged_after_k_skipped_steps_and_keeps_the_last_good_checkpoint(tmp_path, tiny_source_args, capsys):
    run = tmp_path / "run"
    cb = "    - class_path: test_faults.PoisonA\n      init_args:\n        from_step: 8\n"
    args = ["fit", *FAMILY, *tiny_source_args, *TINY, _config(tmp_path, cb), "--model.init_args.max_bad_steps=3"]
    assert run_cli([*args, f"--trainer.default_root_dir={run}"]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and err[0].startswith("galgen: error: diffusion model A: 3 updates in a row skipped")
    assert "global step 11" in err[0] and str(run / "checkpoints" / "last.ckpt") in err[0]
    status = _status(run)
    assert status["state"] == "diverged" and "diffusion model A" in status["error"]
    good = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert good["global_step"] == STEPS_PER_EPOCH and all(torch.isfinite(v).all() for v in good["state_dict"].values())
    training = [r for r in read_jsonl(run / "metrics.jsonl") if r["test"] == "training"]
    assert training[-1]["skipped_a"] == 3 and training[-1]["skipped_b"] == 0


def test_gan_skips_a_nonfinite_update_of_one_model_only():
    from galgen_lightning.models.gan import GANPair

    torch.manual_seed(0)
    pair = GANPair(
        image_size=16,
        latent_dim=16,
        fmap_max=16,
        fmap_inverse_coef=7,
        attn_sizes=[],
        small_width=8,
        decoder_upsamples=1,
        gp_weight=0.0,
    )
    before_a = {k: v.clone() for k, v in pair.model_a.D.state_dict().items()}
    before_b = {k: v.clone() for k, v in pair.model_b.D.state_dict().items()}
    next(pair.model_a.D.parameters()).register_hook(lambda g: g * float("nan"))
    batches = [{"a": torch.rand(4, 1, 16, 16), "b": torch.rand(4, 1, 16, 16)} for _ in range(2)]
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(pair, torch.utils.data.DataLoader(batches, batch_size=None))
    assert all(torch.equal(v, before_a[k]) for k, v in pair.model_a.D.state_dict().items())
    assert not all(torch.equal(v, before_b[k]) for k, v in pair.model_b.D.state_dict().items())
    assert pair.skipped == {"a": 2, "b": 0} and float(trainer.callback_metrics["train/skipped_a"]) == 2.0


def test_loss_spike_above_the_running_median_stops_with_the_model_and_step():
    from types import SimpleNamespace

    from galgen_lightning.faults import Diverged, UpdateGuard

    guard = UpdateGuard("diffusion", max_bad_steps=5, max_loss_ratio=100.0, min_history=5)
    module = SimpleNamespace(global_step=0, log=lambda *a, **k: None, _trainer=None)
    for step in range(6):
        module.global_step = step
        guard.observe("a", 1.0 + 0.01 * step)
        guard.observe("b", 1.0)
        guard.stepped = True
        guard.end_step(module)
    module.global_step = 6
    guard.observe("a", 1e6)
    guard.observe("b", 1.0)
    assert guard.bad_now == {"a": "loss spike", "b": ""}
    guard.stepped = True
    with pytest.raises(
        Diverged, match=r"diffusion model A diverged at global step 6: loss 1e\+06 is above 100 x its running median"
    ):
        guard.end_step(module)


# --- 3. writes that cannot half-happen -----------------------------------------------------------
class _FileSizeLimit:
    """``ulimit -f`` for this process (SIGXFSZ ignored, so a write past it fails with EFBIG)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __enter__(self):
        self.old = resource.getrlimit(resource.RLIMIT_FSIZE)
        self.handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.old[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.old)
        signal.signal(signal.SIGXFSZ, self.handler)


def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(tmp_path, tiny_source_args, capsys):
    run = tmp_path / "run"
    base = ["fit", *FAMILY, *tiny_source_args, *TINY, _config(tmp_path), f"--trainer.default_root_dir={run}"]
    assert run_cli([*base, "--trainer.max_epochs=1"]) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    capsys.readouterr()
    with _FileSizeLimit(len(before) // 2):
        code = run_cli([*base, "--trainer.max_epochs=2", f"--ckpt_path={ckpt}"])
    assert code == 2
    err = _err_lines(capsys)
    assert err[-1].startswith("galgen: error: cannot write") and "file too large" in err[-1] and "checkpoints" in err[-1]
    assert ckpt.read_bytes() == before and _ckpt_step(ckpt) == STEPS_PER_EPOCH
    assert not [p for p in ckpt.parent.iterdir() if ".tmp" in p.name]
    assert _status(run)["state"] == "failed"
    # space freed: the same command resumes and completes
    assert run_cli([*base, "--trainer.max_epochs=2", f"--ckpt_path={ckpt}"]) == 0 and _ckpt_step(ckpt) == 2 * STEPS_PER_EPOCH


def test_full_disk_during_a_metrics_record_cuts_it_off_and_a_torn_line_is_ended(tmp_path):
    from galgen_lightning.errors import GalgenError
    from galgen_lightning.rundir import METRICS, RunDir

    rd = RunDir(tmp_path)
    rd.append_metrics({"test": "two_models", "epoch": 0, "x": 1.0})
    before = (tmp_path / METRICS).read_bytes()
    with _FileSizeLimit(len(before) + 10), pytest.raises(GalgenError, match=f"cannot write {tmp_path / METRICS}: file too large"):
        rd.append_metrics({"test": "two_models", "epoch": 1, "x": 2.0, "padding": "y" * 100})
    assert (tmp_path / METRICS).read_bytes() == before
    with (tmp_path / METRICS).open("a") as f:
        f.write('{"test": "two_models", "ep')  # a killed process's torn line
    rd.append_metrics({"test": "two_models", "epoch": 2, "x": 3.0})
    assert [r["epoch"] for r in rd.records()] == [0, 2]


def test_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    """galgen_lightning.files, the one owner of all-or-nothing files: an interrupted writer and a
    full disk both leave the previous file whole, and a failed write is one line with its hint."""
    from galgen_lightning.errors import GalgenError
    from galgen_lightning.files import atomic_write, make_dir

    path = tmp_path / "record.json"
    path.write_bytes(b"old")

    def interrupted(f):
        f.write(b"half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    with _FileSizeLimit(64), pytest.raises(GalgenError, match="^cannot write the record: file too large .*; free some space$"):
        atomic_write(path, b"x" * 10_000, name="the record", hint="free some space")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]
    atomic_write(tmp_path / "new" / "deeper.bin", memoryview(b"new"))  # the folder is made
    assert (tmp_path / "new" / "deeper.bin").read_bytes() == b"new"
    with pytest.raises(GalgenError, match=f"^cannot create the run directory {path}/run: a file is in the way"):
        make_dir(path / "run")


def test_full_disk_during_a_cache_chunk_is_one_line_and_keeps_the_old_chunk(tmp_path):
    from galgen_lightning.data.cache import write_atomic
    from galgen_lightning.errors import GalgenError

    path = tmp_path / "chunk_00000.npy"
    np.save(path, np.zeros(10, np.float32))
    before = path.read_bytes()
    with _FileSizeLimit(4096), pytest.raises(GalgenError, match=f"cannot write the data cache {tmp_path}: "):
        write_atomic(path, lambda f: np.save(f, np.ones(100_000, np.float32)))
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["chunk_00000.npy"]


@pytest.mark.parametrize(
    "option", ["--trainer.default_root_dir={blocker}/run", "--data.source.init_args.cache_dir={blocker}/cache"]
)
def test_uncreatable_run_or_cache_directory_is_one_line(tmp_path, tiny_source_args, capsys, option):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    args = ["fit", *FAMILY, *tiny_source_args, *TINY, _config(tmp_path), option.format(blocker=blocker)]
    if "cache_dir" in option:
        args.append(f"--trainer.default_root_dir={tmp_path / 'run'}")
    assert run_cli(args) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and err[0].startswith("galgen: error: cannot create") and str(blocker) in err[0], err
    assert blocker.read_text() == "in the way"


# --- 4. derived data heals itself ----------------------------------------------------------------
def test_truncated_synthetic_chunk_is_rendered_again(tmp_path, capsys):
    from galgen_lightning.data import SyntheticGalaxies

    source = SyntheticGalaxies(size=8, cache_dir=str(tmp_path), workers=1, chunk=4)
    first = source.load(8, 16)
    chunk = source.folder(16) / "chunk_00001.npy"
    chunk.write_bytes(chunk.read_bytes()[:100])
    capsys.readouterr()
    again = source.load(8, 16)
    assert np.array_equal(first, again)
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert err == [f"galgen: warning: data cache {chunk} is unreadable (ValueError); rendering it again"]
    assert np.array_equal(np.load(chunk), first[4:])


def test_corrupt_reader_chunk_meta_and_summary_are_rebuilt_from_the_untouched_input(tmp_path, capsys):
    from galgen_lightning.data import ArrayFile

    data = tmp_path / "images.npy"
    np.save(data, np.random.default_rng(0).random((12, 20, 20)).astype(np.float32))
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    source = ArrayFile(str(data), cache_dir=str(tmp_path / "cache"), chunk=4)
    first = source.load(12, 16)
    root = source._root()
    chunk = next(root.glob("16px-chunk4/chunk_00001.npz"))
    chunk.write_bytes(b"\x00" * 50)  # bit rot
    (root / "meta.json").write_text("{not json")
    (root / "summary.json").write_text('{"usable": "many"}')
    capsys.readouterr()
    source = ArrayFile(str(data), cache_dir=str(tmp_path / "cache"), chunk=4)
    assert source.available() == 12
    assert np.array_equal(source.load(12, 16), first)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("galgen: warning")]
    assert len(warnings) == 3 and any(str(chunk) in w and "converting it again" in w for w in warnings)
    assert json.loads((root / "meta.json").read_text())["count"] == 12
    assert hashlib.sha256(data.read_bytes()).hexdigest() == digest


# --- 5. runs that cannot collide -----------------------------------------------------------------
def test_a_second_fit_into_a_locked_run_directory_is_refused_and_a_stale_lock_taken_over(tmp_path, tiny_source_args, capsys):
    from galgen_lightning.faults import RunLock

    run = tmp_path / "run"
    held = RunLock(run).acquire()  # another galgen fit holds it (flock: another open file)
    try:
        code = run_cli(["fit", *FAMILY, *tiny_source_args, *TINY, _config(tmp_path), f"--trainer.default_root_dir={run}"])
    finally:
        held.release()
    assert code == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and f"{run} is in use by another galgen process (pid {os.getpid()}" in err[0]
    assert not (run / "status.json").exists()
    # the refused run wrote nothing, and the holder that made the folder left it empty: no folder
    assert not run.exists()
    # a lock file left by a process that is gone: taken over
    run.mkdir()
    (run / ".lock").write_text("999999999\n")
    lock = RunLock(run).acquire()
    assert (run / ".lock").read_text() == f"{os.getpid()}\n"
    lock.release()


# --- 6. hostile inputs ---------------------------------------------------------------------------
class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('GALGEN_PWNED', '/nonexistent/pwned')}",))


def _claim_new_run_dir(base: str, barrier, out) -> None:
    from galgen_lightning.faults import RunLock

    barrier.wait()  # all at once: the same second, the same name
    lock = RunLock.new(Path(base), "diffusion-n4-seed0-20261130-120000")
    out.put((lock.folder.name, lock.path.is_file()))
    barrier.wait()  # hold it until every process has its own
    lock.release()


def test_commands_started_in_the_same_second_get_a_run_directory_each(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    k = 6
    barrier, out = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_claim_new_run_dir, args=(str(tmp_path / "runs"), barrier, out)) for _ in range(k)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in range(k)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    name = "diffusion-n4-seed0-20261130-120000"
    assert sorted(n for n, _ in got) == sorted([name] + [f"{name}-{j}" for j in range(2, k + 1)])
    assert all(locked for _, locked in got)
    assert not any((tmp_path / "runs").iterdir())  # released before writing anything: no folder left


def test_hostile_foreign_and_broken_checkpoints_are_one_line(tmp_path, tiny_source_args, capsys, monkeypatch):
    pwned = tmp_path / "pwned"
    monkeypatch.setenv("GALGEN_PWNED", str(pwned))
    hostile, foreign, junk = tmp_path / "hostile.ckpt", tmp_path / "foreign.ckpt", tmp_path / "junk.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode()}, hostile)
    torch.save(
        {"state_dict": {"G.weight": torch.zeros(3)}, "pytorch-lightning_version": L.__version__, "hyper_parameters": {}}, foreign
    )
    junk.write_bytes(os.urandom(2000))
    weights = tmp_path / "weights.pt"  # a bare weights file, or a checkpoint stripped of Lightning's keys
    torch.save({"state_dict": {"model_a.x": torch.zeros(2)}, "hyper_parameters": {}}, weights)
    base = ["validate", *FAMILY, *tiny_source_args, *TINY, _config(tmp_path), f"--trainer.default_root_dir={tmp_path / 'v'}"]
    expected = {
        hostile: "not a readable galgen checkpoint: it holds objects other than tensors",
        foreign: "does not fit DiffusionPair with these options:",
        junk: "not a readable galgen checkpoint",
        weights: "not a Lightning checkpoint (no 'pytorch-lightning_version')",
    }
    for ckpt, text in expected.items():
        assert run_cli([*base, f"--ckpt_path={ckpt}"]) == 2
        err = _err_lines(capsys)
        assert len(err) == 1 and err[0].startswith(f"galgen: error: --ckpt_path {ckpt}") and text in err[0], err
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")  # a file that is no pickle at all is not called one holding code
    assert run_cli(["sample", f"--ckpt_path={text}", f"--out={tmp_path / 's.npz'}"]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "not a torch file (Unsupported operand" in err[0] and "objects other than" not in err[0], err
    for ckpt in (hostile, junk):  # galgen sample reads checkpoints through the same owner, with the same line
        assert run_cli(["sample", f"--ckpt_path={ckpt}", f"--out={tmp_path / 's.npz'}"]) == 2
        err = _err_lines(capsys)
        assert len(err) == 1 and err[0].startswith(f"galgen: error: --ckpt_path {ckpt}: ") and expected[ckpt] in err[0], err
    assert not pwned.exists() and not (tmp_path / "s.npz").exists()
    run = tmp_path / "fresh"  # fit resuming from it: refused before the run directory is made
    assert run_cli(["fit", *FAMILY, *tiny_source_args, *TINY, f"--trainer.default_root_dir={run}", f"--ckpt_path={weights}"]) == 2
    assert "not a Lightning checkpoint" in _err_lines(capsys)[0] and not run.exists()


def test_report_escapes_a_run_named_like_markup(tmp_path):
    from galgen_lightning.report import main as report_main
    from galgen_lightning.rundir import RunDir

    name = "<img src=x onerror=alert(1)>"
    rd = RunDir(tmp_path / "runs" / name)
    rd.write_status({"state": "complete"})
    rd.write_config("model:\n  class_path: galgen_lightning.models.diffusion.DiffusionPair\ndata:\n  n: 8\n  image_size: 16\n")
    rd.append_metrics({"test": "two_models", "epoch": 0, "step": 1, "ssim_median": 0.5})
    out = tmp_path / "report"
    report_main([str(tmp_path / "runs"), "--out", str(out)])
    html = next(out.glob("*.html")).read_text()
    assert name not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
