"""`galgen sweep`: the plan over N, skipping finished runs, resuming interrupted ones (a fake runner),
and one real tiny sweep through `galgen fit` that is interrupted and resumed from its checkpoint."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml
from support import CONFIGS, read_jsonl, run_cli

import galgen_lightning.sweep.runs as sweep_module
from galgen_lightning.errors import GalgenError
from galgen_lightning.sweep import sweep, sweep_lock
from galgen_lightning.sweep.slurm import SlurmOptions


def _option(args: list[str], name: str) -> str | None:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return values[-1] if values else None


@pytest.fixture
def fake_runner(monkeypatch):
    """Replaces `galgen fit` by a function that writes a complete run directory and records the call."""
    calls: list[list[str]] = []

    def run(args, env, log):
        calls.append([*args, f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')}", f"log={log}"])
        folder = Path(_option(args, "trainer.default_root_dir"))
        folder.mkdir(parents=True, exist_ok=True)
        record = {
            "epoch": 0,
            "test": "two_models",
            "memorization_rate": 0.0,
            "a_vs_b_median": 0.5,
            "gap_median": 0.0,
            "gap_p_value": 0.5,
        }
        (folder / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        (folder / "status.json").write_text(json.dumps({"state": "complete"}))
        return 0

    monkeypatch.setattr(sweep_module, "subprocess_runner", run)
    return calls


@pytest.fixture
def profile(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    data = {"class_path": "galgen_lightning.data.SyntheticGalaxies", "init_args": {"size": 100}}
    sweep = {"base": [str(CONFIGS / "diffusion.yaml")], "ns": [2, 4, 8, 1000]}  # a profile galgen fit can parse
    path.write_text(yaml.safe_dump({"sweep": sweep, "data": {"source": data, "n_val": 16}}))
    return path


def _run(folder: Path, state: str, checkpoint: bool = False) -> None:
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"state": state}))
    if checkpoint:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")


def test_sweep_skips_finished_resumes_interrupted_and_caps_n(tmp_path, profile, fake_runner, capsys):
    out = tmp_path / "sweep"
    _run(out / "diffusion-tiny-n2-seed0", "complete")
    _run(out / "diffusion-tiny-n4-seed0", "failed", checkpoint=True)  # interrupted after a checkpoint
    _run(out / "diffusion-tiny-n8-seed0", "running")  # killed before its first checkpoint
    assert sweep(family="diffusion", profile=str(profile), out=str(out), report=False) == 0
    text = capsys.readouterr().out
    assert "dropped N = 1,000: above the cap" in text and "N <= 42" in text  # 0.5 * (100 - 16)
    assert [_option(c, "data.n") for c in fake_runner] == ["4", "8"]  # N=2 was complete
    assert _option(fake_runner[0], "ckpt_path") == str(out / "diffusion-tiny-n4-seed0" / "checkpoints" / "last.ckpt")
    assert _option(fake_runner[1], "ckpt_path") is None
    assert [p.name.rsplit("-", 2)[0] for p in (out / ".attempts").iterdir()] == ["diffusion-tiny-n8-seed0"]
    assert "[sweep 2/3] resuming diffusion-tiny-n4-seed0" in text and "[sweep 3/3] training diffusion-tiny-n8-seed0" in text
    assert "time left ~" in text  # after the first run finished
    state = json.loads((out / "sweep.json").read_text())
    assert [r["state"] for r in state["runs"]] == ["complete"] * 3

    fake_runner.clear()  # a second invocation has nothing left to do
    assert sweep(family="diffusion", profile=str(profile), out=str(out), report=True) == 0
    assert fake_runner == []
    assert (out / "report" / "index.html").exists()


def test_sweep_over_seeds_shares_one_pool(tmp_path, profile, fake_runner, capsys):
    """One run per (seed, N), seed by seed; seed S sets data.seed and seed_everything; one pool for every run."""
    out = tmp_path / "sweep"
    assert sweep(family="diffusion", profile=str(profile), ns=[2, 4], seeds="0,2", out=str(out), report=False) == 0
    folders = [Path(_option(c, "trainer.default_root_dir")).name for c in fake_runner]
    assert folders == ["diffusion-tiny-n2-seed0", "diffusion-tiny-n4-seed0", "diffusion-tiny-n2-seed2", "diffusion-tiny-n4-seed2"]
    assert [(_option(c, "data.seed"), _option(c, "seed_everything")) for c in fake_runner] == [("0", "0")] * 2 + [("2", "2")] * 2
    # 2 * max(N) + n_val = 24, plus the DataModule's margin for duplicates: ceil(24 * 1.25) + 64
    assert {_option(c, "data.pool_size") for c in fake_runner} == {"94"}
    text = capsys.readouterr().out
    assert (
        "seeds 0, 2; every run reads the first 94 source images" in text
        and "[sweep 3/4] training diffusion-tiny-n2-seed2 (N=2, seed 2)" in text
    )
    state = json.loads((out / "sweep.json").read_text())
    assert state["seeds"] == [0, 2] and state["pool_size"] == 94 and state["data_seed"] is None
    assert [(r["n"], r["seed"], r["data_seed"], r["state"]) for r in state["runs"]] == [
        (2, 0, 0, "complete"),
        (4, 0, 0, "complete"),
        (2, 2, 2, "complete"),
        (4, 2, 2, "complete"),
    ]
    assert json.loads((out / "diffusion-tiny-n4-seed2" / "sweep.json").read_text())["args"] == fake_runner[3][:-2]

    fake_runner.clear()  # a third seed later: only its runs train
    assert sweep(family="diffusion", profile=str(profile), ns=[2, 4], seeds=[0, 1, 2], out=str(out), report=False) == 0
    assert [_option(c, "seed_everything") for c in fake_runner] == ["1", "1"]


def test_sweep_data_seed_pins_the_split(tmp_path, profile, fake_runner):
    out = tmp_path / "sweep"
    assert sweep(family="diffusion", profile=str(profile), ns=[4], seeds=[0, 1, 7], data_seed=7, out=str(out), report=False) == 0
    folders = [Path(_option(c, "trainer.default_root_dir")).name for c in fake_runner]
    assert folders == ["diffusion-tiny-n4-seed0-data7", "diffusion-tiny-n4-seed1-data7", "diffusion-tiny-n4-seed7"]
    assert [_option(c, "data.seed") for c in fake_runner] == ["7"] * 3
    assert [_option(c, "seed_everything") for c in fake_runner] == ["0", "1", "7"]


def test_sweep_keeps_the_pool_of_a_run_it_resumes(tmp_path, profile, fake_runner, capsys):
    """A run started with another pool resumes on its own data (and says so); a complete one is flagged."""
    out = tmp_path / "sweep"
    _run(out / "diffusion-tiny-n2-seed0", "complete")
    (out / "diffusion-tiny-n2-seed0" / "manifest.json").write_text(json.dumps({"seed": 0, "pool_size": None}))
    _run(out / "diffusion-tiny-n4-seed0", "failed", checkpoint=True)
    (out / "diffusion-tiny-n4-seed0" / "sweep.json").write_text(
        json.dumps({"args": ["fit", "--data.n=4", "--data.pool_size=60"]})
    )
    assert sweep(family="diffusion", profile=str(profile), ns=[2, 4, 8], out=str(out), report=False) == 0
    assert [(_option(c, "data.n"), _option(c, "data.pool_size")) for c in fake_runner] == [("4", "60"), ("8", "100")]
    assert _option(fake_runner[0], "ckpt_path").endswith("diffusion-tiny-n4-seed0/checkpoints/last.ckpt")
    text = capsys.readouterr().out
    assert "diffusion-tiny-n2-seed0 was trained on an N-dependent pool, not this sweep's 100" in text  # min(104, 100 images)
    assert "diffusion-tiny-n4-seed0 resumes on its own data.pool_size 60, not this sweep's 100" in text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seeds": "0,x"}, r"--seeds must be integers separated by commas \(e.g. 0,1,2\), got '0,x'"),
        ({"seeds": [-1]}, r"every seed must be in \[0, 2\*\*32\), got -1"),
        ({"seeds": [1], "seed": 3}, "give --seed or --seeds, not both"),
        ({"ns": "2,x"}, r"--ns must be integers separated by commas \(e.g. 10,100\), got '2,x'"),
        ({"ns": ""}, "--ns is empty"),
        ({"ns": "[]"}, "--ns is empty"),
        ({"ns": "0,10"}, r"every N must be positive, got \[0, 10\]"),
        ({"per_gpu": True, "gpus": "0;1"}, r"--gpus must be integers separated by commas \(e.g. 0,2\), got '0;1'"),
        ({"fit_args": "--data.seed=3"}, "--data.seed in --fit_args would override the sweep's own; use --seeds or --data_seed"),
        ({"fit_args": "--data.pool_size 500"}, "use --pool_size"),
        ({"pool_size": 30}, r"--pool_size 30 is below 2 \* max\(N\) \+ n_val = 32"),
        ({"pool_size": 101}, "--pool_size 101 is above the 100 images of the source"),
    ],
)
def test_sweep_seed_and_pool_errors(tmp_path, profile, fake_runner, kwargs, message):
    with pytest.raises(GalgenError, match=message):
        sweep(family="diffusion", profile=str(profile), out=str(tmp_path / "s"), report=False, **kwargs)
    assert fake_runner == [] and not (tmp_path / "s").exists()  # a refused sweep writes nothing, not even its profile copy


def test_sweep_one_run_per_gpu(tmp_path, profile, fake_runner, capsys):
    out = tmp_path / "sweep"
    assert sweep(family="diffusion", profile=str(profile), out=str(out), per_gpu=True, gpus=[0, 3], report=False) == 0
    assert sorted(_option(c, "data.n") for c in fake_runner) == ["2", "4", "8"]
    assert all(_option(c, "trainer.devices") == "1" for c in fake_runner)
    gpus = [c[-2] for c in fake_runner]
    assert set(gpus) <= {"CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=3"} and len(set(gpus)) == 2
    assert all(c[-1].endswith("sweep.log") for c in fake_runner)
    assert "one run per GPU on GPUs [0, 3]" in capsys.readouterr().out


def test_sweep_refuses_a_second_sweep_on_the_same_folder(tmp_path, profile, fake_runner):
    out = tmp_path / "sweep"
    from galgen_lightning.sweep.runs import is_locked

    assert not is_locked(out)
    with sweep_lock(out), pytest.raises(GalgenError, match=f"another galgen sweep \\(pid {os.getpid()}\\) is using {out}"):
        assert is_locked(out)
        sweep(family="diffusion", profile=str(profile), out=str(out), report=False)
    assert fake_runner == [] and not is_locked(out)


@pytest.mark.cli  # whole galgen sweep commands: make test, not make test-fast
def test_sweep_cli_errors_and_dry_run(tmp_path, profile, capsys):
    assert run_cli(["sweep", "--family", "vae", "--out", str(tmp_path / "s")]) == 2
    assert "--family must be one of" in capsys.readouterr().err
    assert (
        run_cli(
            [
                "sweep",
                "--family",
                "glow",
                "--profile",
                "small",
                "--configs_dir",
                str(CONFIGS),
                "--out",
                str(tmp_path / "s"),
                "--dry_run",
                "true",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "glow-small-n1-seed0" in text and "configs/glow.yaml" in text
    args = ["sweep", "--profile", str(profile), "--out", str(tmp_path / "s2"), "--dry_run", "true"]
    assert run_cli([*args, "--seeds", "3,4", "--data_seed", "0"]) == 0
    text = capsys.readouterr().out
    assert "diffusion-tiny-n8-seed4-data0" in text and "--data.seed=0 --seed_everything=4 --data.pool_size=100" in text
    assert run_cli([*args, "--seeds", "1,a"]) == 2
    err = capsys.readouterr().err
    assert "--seeds must be integers" in err and len(err.strip().splitlines()) == 1
    for ns in ("4", "2,8", "[2, 8]"):  # one N, or N separated by commas, as well as a list
        assert run_cli([*args, "--ns", ns]) == 0
        planned = [line for line in capsys.readouterr().out.splitlines() if "diffusion-tiny-n" in line]
        assert {int(n) for n in ns.strip("[]").split(",")} == {int(line.split("-n")[1].split("-")[0]) for line in planned}
    assert run_cli(["sweep", "--profile", str(profile), "--out", str(tmp_path / "s3"), "--plan", "true", "--gpus", "0,3"]) == 0
    assert "runs on GPUs [0, 3]" in capsys.readouterr().out
    assert run_cli(["sweep", "--profile", str(profile), "--ns", "[500]", "--out", str(tmp_path / "s")]) == 2
    assert "no N left under the cap" in capsys.readouterr().err


@pytest.mark.slow
def test_real_tiny_sweep_resumes_from_checkpoint(tmp_path, capsys, monkeypatch):
    """Real `galgen fit` runs: train N=4 (in-process), mark it interrupted, and the sweep resumes it with
    --ckpt_path in a child process (the sweep's own runner)."""
    profile = tmp_path / "tiny.yaml"
    overlay = {
        "sweep": {"base": [str(CONFIGS / "diffusion.yaml")], "ns": [4]},
        "model": {"init_args": {"blocks": 2, "width": 4, "max_steps": 10, "sample_batch_size": 16}},
        "data": {
            "source": {"class_path": "galgen_lightning.data.SyntheticGalaxies", "init_args": {"size": 300}},
            "image_size": 16,
            "n_val": 16,
            "batch_size": 4,
            "samples_per_epoch": 8,
            "num_workers": 0,
        },
        "trainer": {
            "accelerator": "cpu",
            "precision": "32-true",
            "max_epochs": 1,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": ".", "name": "csv"}}],
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": None, "save_last": True}}
            ],
        },
        "two_models": {"init_args": {"n_samples": 8}},  # merged into the paper config's test
        "denoising": None,
        "morphology": None,
    }
    profile.write_text(yaml.safe_dump(overlay))
    out = tmp_path / "sweep"
    run = out / "diffusion-tiny-n4-seed0"
    with monkeypatch.context() as m:  # the first run in-process, to save a child's start-up
        m.setattr(sweep_module, "subprocess_runner", lambda args, env, log: run_cli(args))
        assert sweep(family="diffusion", profile=str(profile), out=str(out), report=False) == 0
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    assert (run / "checkpoints" / "last.ckpt").exists()
    manifest = json.loads((run / "manifest.json").read_text())  # what the report groups seeds by
    assert (manifest["seed"], manifest["pool_size"], manifest["images_read"]) == (0, 94, 94)  # ceil(24 * 1.25) + 64
    assert yaml.safe_load((run / "config.yaml").read_text())["seed_everything"] == 0
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "failed", "error": "KeyboardInterrupt"}))
    assert sweep(family="diffusion", profile=str(profile), out=str(out), report=False) == 0
    assert "resuming diffusion-tiny-n4-seed0" in capsys.readouterr().out
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "complete" and any(a.startswith("--ckpt_path=") for a in status["command"])
    assert [r["test"] for r in read_jsonl(run / "metrics.jsonl")].count("two_models") >= 1


def test_plan_projects_each_run_and_the_total_from_a_benchmark_file(tmp_path, fake_runner, capsys):
    """--plan: steps x batch / measured rate per run, evaluation on top, runs dealt onto --gpus K; nothing trains."""
    path = tmp_path / "plan.yaml"
    tests = {"two_models": {"init_args": {"every_n_epochs": 2, "n_samples": 8}}, "denoising": None, "morphology": None}
    data = {"source": {"class_path": "galgen_lightning.data.SyntheticGalaxies", "init_args": {"size": 100}}, "n_val": 16}
    data |= {"batch_size": 4, "samples_per_epoch": 40}
    model = {"class_path": "galgen_lightning.models.diffusion.DiffusionPair", "init_args": {"max_steps": 50}}
    config = {"sweep": {"ns": [2, 4, 8]}, "model": model, "data": data, "trainer": {"max_epochs": 3}, **tests}
    path.write_text(yaml.safe_dump(config))
    bench = tmp_path / "results.jsonl"
    lines = [
        {
            "benchmark": "diffusion",
            "device": "X",
            "batch_size": 4,
            "train_img_per_s_per_model": 5.0,
            "sampler_evaluations_per_s": 100.0,
        },
        {"benchmark": "fit_loop", "family": "diffusion", "device": "X", "batch_size": 4, "fit_device_img_per_s_per_model": 4.0},
    ]
    bench.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    _run(tmp_path / "s" / "diffusion-plan-n2-seed0", "complete")
    assert sweep(family="diffusion", profile=str(path), out=str(tmp_path / "s"), plan=True, throughput=str(bench), gpus=2) == 0
    text = capsys.readouterr().out
    assert not fake_runner
    assert "throughput: 4 training img/s per model of the pair, sampler 100 evaluations/s; measured" in text
    assert "galgen fit loop (bench_fit.py)" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("  diffusion-plan-")]
    assert [r[2] for r in rows] == ["skip", "train", "train"] and all(r[3:6] == ["3", "30", "4"] for r in rows)
    # 30 steps x 4 images / 4 img/s = 30 s of training per run; evaluation: validation 3 x 2 x 16 forward passes
    # (1/24 s each) and the two-models test at epochs 2 and 3: 2 x 2 x 8 x (50 / 100 s + 2/24 s)
    assert rows[1][6:8] == ["30", "s"] and rows[1][8:10] == ["23", "s"]
    assert "2 runs to train, 0.0 GPU-hours; wall time 53 s on 2 GPUs" in text


def test_plan_without_a_file_uses_labelled_reference_figures(tmp_path, profile, fake_runner, capsys):
    assert sweep(family="glow", profile=str(profile), out=str(tmp_path / "s"), plan=True) == 0
    text = capsys.readouterr().out
    assert "built-in H200 reference (design notes: Glow" in text and "not measured" in text and not fake_runner
    empty = tmp_path / "none.json"
    empty.write_text('{"benchmark": "gan", "per_model_img_per_s": 3}')
    with pytest.raises(GalgenError, match="no glow training throughput in"):
        sweep(family="glow", profile=str(profile), out=str(tmp_path / "s"), plan=True, throughput=str(empty))


def test_sweep_leaves_a_diverged_run_and_stops_at_an_interrupted_one(tmp_path, profile, monkeypatch, capsys):
    """A diverged run is not resumed (it would diverge again); a run stopped by a signal (state
    interrupted, exit 128 + signal) is not a failure: the sweep stops, and the same command resumes."""
    out = tmp_path / "sweep"
    folder = out / "diffusion-tiny-n2-seed0"
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(
        json.dumps({"state": "diverged", "error": "diffusion model a: 20 updates in a row skipped"})
    )
    calls: list[list[str]] = []

    def interrupted(args, env, log):
        calls.append(args)
        run = Path(_option(args, "trainer.default_root_dir"))
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
        (run / "status.json").write_text(json.dumps({"state": "interrupted", "signal": "SIGTERM"}))
        return 143

    monkeypatch.setattr(sweep_module, "subprocess_runner", interrupted)
    assert sweep(family="diffusion", profile=str(profile), ns=[2, 4, 8], out=str(out), report=False) == 143
    text = capsys.readouterr().out
    assert "diverged (diffusion model a: 20 updates in a row skipped): not resumed" in text
    assert [_option(c, "data.n") for c in calls] == ["4"]  # N=2 left alone, N=8 not started after the signal
    assert "interrupted (exit 143); rerun the same command to resume it" in text and "FAILED" not in text


def test_a_diverged_run_is_not_counted_complete_and_the_exit_status_says_so(tmp_path, profile, fake_runner, capsys):
    out = tmp_path / "sweep"
    _run(out / "diffusion-tiny-n2-seed0", "diverged")
    assert sweep(family="diffusion", profile=str(profile), ns=[2, 4], out=str(out), report=False) == 1
    text = capsys.readouterr().out
    assert "1/2 runs complete" in text and "not complete: diffusion-tiny-n2-seed0 (diverged)" in text


def test_a_run_killed_by_a_signal_stops_the_sweep_whatever_the_exit_status_form(tmp_path, profile, monkeypatch, capsys):
    """``Popen`` gives a run killed before it could record anything ``-signum`` (a shell, 128 + signum)."""
    out = tmp_path / "sweep"
    calls: list[list[str]] = []

    def killed(args, env, log):
        calls.append(args)
        return -9

    monkeypatch.setattr(sweep_module, "subprocess_runner", killed)
    assert sweep(family="diffusion", profile=str(profile), ns=[2, 4], out=str(out), report=False) == 137
    text = capsys.readouterr().out
    assert len(calls) == 1 and "interrupted (exit -9)" in text and "runs complete" not in text


def test_a_run_still_running_elsewhere_is_left_alone(tmp_path, profile, fake_runner, capsys):
    """An earlier sweep's ``galgen fit`` that outlived its sweep holds the run's lock: the next sweep
    neither moves its folder nor trains it again."""
    from galgen_lightning.faults.lock import LOCK, FolderLock

    out = tmp_path / "sweep"
    folder = out / "diffusion-tiny-n2-seed0"
    _run(folder, "running")
    (folder / "metrics.jsonl").write_text("")
    holder = FolderLock(folder, LOCK).acquire()
    try:
        assert sweep(family="diffusion", profile=str(profile), ns=[2, 4], out=str(out), report=False) == 1
        with pytest.raises(GalgenError, match="in use by another galgen process"):
            sweep_module.set_aside(folder, out)
    finally:
        holder.release()
    text = capsys.readouterr().out
    assert f"is in use by another galgen process (pid {os.getpid()}): left alone" in text
    assert [_option(c, "data.n") for c in fake_runner] == ["4"] and (folder / "metrics.jsonl").exists()
    assert not (out / ".attempts").exists()


def test_sigterm_to_the_sweep_stops_its_run_the_orderly_way(tmp_path, profile, monkeypatch, capsys):
    """``kill <sweep>`` forwards SIGTERM to the run in flight (which saves its checkpoint) and
    stops the sweep with 128 + 15, instead of leaving its ``galgen fit`` training, orphaned."""
    import signal
    import subprocess
    import sys
    import threading

    out = tmp_path / "sweep"
    started: list[subprocess.Popen] = []
    before = signal.getsignal(signal.SIGTERM)

    def slow(args, env, log):
        code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); time.sleep(60)"
        started.append(subprocess.Popen([sys.executable, "-c", code]))
        threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM)).start()  # the user's kill, while the run trains
        return started[-1]

    monkeypatch.setattr(sweep_module, "subprocess_runner", slow)
    assert sweep(family="diffusion", profile=str(profile), ns=[2, 4], out=str(out), report=False) == 143
    assert len(started) == 1 and started[0].poll() == 143  # the run got SIGTERM and has ended
    assert signal.getsignal(signal.SIGTERM) is before and "stopped" in capsys.readouterr().out  # handler given back


def test_a_slurm_task_uses_as_many_threads_as_its_cpus():
    """The submitting shell's thread count (here 2) would oversubscribe a 1-CPU task."""
    from galgen_lightning.sweep.slurm import task_environment

    env = task_environment({"OMP_NUM_THREADS": "2", "SLURM_CPUS_PER_TASK": "1", "OTHER": "kept"})
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env["OTHER"]) == ("1", "1", "kept")
    assert task_environment({"OMP_NUM_THREADS": "2"})["OMP_NUM_THREADS"] == "2"  # not in a task: unchanged


def test_a_sweep_runs_from_any_folder_with_the_bundled_configs(tmp_path, monkeypatch, capsys):
    """Like --config and galgen demo: no ./configs here, so the checkout's (or a wheel's) are used."""
    monkeypatch.chdir(tmp_path)
    assert sweep(family="glow", profile="small", out=str(tmp_path / "s"), dry_run=True) == 0
    text = capsys.readouterr().out
    assert "glow, profile small" in text and "--config=" in text and str(CONFIGS / "glow.yaml") in text


def test_editing_a_profile_never_changes_the_config_of_runs_already_started(tmp_path, profile):
    """The profile's copy (without its sweep: section) is named by its content: a later call, even
    a --dry_run or one refused by the lock, writes a new copy and leaves the old one as it was."""
    out = tmp_path / "s"
    assert sweep(family="diffusion", profile=str(profile), ns=[2], out=str(out), dry_run=True) == 0
    (first,) = (out / "configs").glob("*.yaml")
    before = first.read_text()
    data = yaml.safe_load(profile.read_text())
    data["trainer"] = {"max_epochs": 99}
    profile.write_text(yaml.safe_dump(data))
    assert sweep(family="diffusion", profile=str(profile), ns=[2], out=str(out), dry_run=True) == 0
    assert first.read_text() == before and len(list((out / "configs").glob("*.yaml"))) == 2


def test_a_profile_keeps_its_relative_config_files_and_a_single_base(tmp_path, capsys):
    (tmp_path / "trainer.yaml").write_text(yaml.safe_dump({"max_epochs": 7}))
    path = tmp_path / "rel.yaml"
    sweep_section = {"base": str(CONFIGS / "diffusion.yaml"), "ns": [2]}  # a string, not a list
    data = {"class_path": "galgen_lightning.data.SyntheticGalaxies", "init_args": {"size": 100}}
    path.write_text(yaml.safe_dump({"sweep": sweep_section, "trainer": "trainer.yaml", "data": {"source": data, "n_val": 16}}))
    assert sweep(family="diffusion", profile=str(path), out=str(tmp_path / "s"), plan=True) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  diffusion-rel-")]
    assert rows and rows[0][3] == "7"  # the epochs of trainer.yaml


@pytest.mark.parametrize("option", ["--data.n=5", "--trainer.default_root_dir=/tmp/elsewhere", "--ckpt_path=x.ckpt"])
def test_fit_args_cannot_override_what_the_sweep_sets_per_run(tmp_path, profile, option):
    with pytest.raises(GalgenError, match="in --fit_args would override the sweep's own"):
        sweep(family="diffusion", profile=str(profile), out=str(tmp_path / "s"), dry_run=True, fit_args=option)


def test_plan_counts_an_unlimited_max_epochs_and_the_gans_optimizer_steps(tmp_path, capsys):
    """max_epochs -1 means no epoch limit (max_steps decides); a GAN batch is 4 optimizer steps."""
    path = tmp_path / "p.yaml"
    data = {"source": {"class_path": "galgen_lightning.data.SyntheticGalaxies", "init_args": {"size": 100}}, "n_val": 16}
    data |= {"batch_size": 4, "samples_per_epoch": 40, "image_size": 16}
    for family, model, steps, epochs in (
        ("diffusion", "galgen_lightning.models.diffusion.DiffusionPair", 25, "3"),  # 25 batches of 10 per epoch
        ("gan", "galgen_lightning.models.gan.GANPair", 100, "3"),  # 100 optimizer steps = 25 batches
    ):
        config = {"sweep": {"ns": [2]}, "model": {"class_path": model}, "data": data}
        config |= {"trainer": {"max_epochs": -1, "max_steps": steps}}
        path.write_text(yaml.safe_dump(config))
        assert sweep(family=family, profile=str(path), out=str(tmp_path / family), plan=True) == 0
        rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(f"  {family}-p-")]
        assert rows[0][3] == epochs and not rows[0][6].startswith("-"), rows


def test_a_throughput_file_with_null_or_zero_rates_is_one_line(tmp_path, profile):
    bench = tmp_path / "b.jsonl"
    bench.write_text(
        '{"benchmark": "glow", "images_per_s_per_model": null}\n{"benchmark": "glow", "images_per_s_per_model": 0}\n'
    )
    with pytest.raises(GalgenError, match="no glow training throughput in"):
        sweep(family="glow", profile=str(profile), out=str(tmp_path / "s"), plan=True, throughput=str(bench))


@pytest.mark.parametrize(
    "content",
    ['{"runs": [{"run": "a"}, "oops"]}', '{"runs": "abc"}', '{"runs": [{"n": 1}]}', '{"runs": [{"run": null}]}',
     '{"runs": [{"run": "a"}], "slurm": "x"}'],
)  # fmt: skip
def test_status_of_a_damaged_sweep_json_is_one_line(tmp_path, content):
    (tmp_path / "sweep.json").write_text(content)
    with pytest.raises(GalgenError, match="is damaged"):
        sweep(status=str(tmp_path))


def test_status_says_running_while_another_process_holds_the_run(tmp_path, capsys):
    from galgen_lightning.faults.lock import LOCK, FolderLock

    folder = tmp_path / "diffusion-tiny-n2-seed0"
    _run(folder, "running")
    (tmp_path / "sweep.json").write_text(json.dumps({"launcher": "local", "runs": [{"run": folder.name}]}))
    holder = FolderLock(folder, LOCK).acquire()
    try:
        assert sweep(status=str(tmp_path)) == 0
    finally:
        holder.release()
    assert f"(pid {os.getpid()})" in capsys.readouterr().out


def test_a_resumed_run_shows_the_epoch_it_resumed_at(tmp_path, capsys):
    """Lightning restores the loop after setup: the status written when training starts says where
    it resumed, not epoch 1."""
    from types import SimpleNamespace

    from galgen_lightning.rundir import RunDirectory

    folder = tmp_path / "diffusion-tiny-n2-seed0"
    folder.mkdir()
    trainer = SimpleNamespace(
        is_global_zero=True, state=SimpleNamespace(fn="fit"), current_epoch=5, global_step=500, max_epochs=10,
        default_root_dir=str(folder),
    )  # fmt: skip
    RunDirectory(command=["galgen", "fit"]).on_train_start(trainer, None)
    (tmp_path / "sweep.json").write_text(json.dumps({"launcher": "local", "runs": [{"run": folder.name}]}))
    assert sweep(status=str(tmp_path)) == 0
    assert "epoch 6 of 10" in capsys.readouterr().out


@pytest.mark.parametrize("stops", [True, False])
def test_a_slurm_task_waits_for_galgen_fit_to_save_at_most_its_stop_timeout(tmp_path, stops):
    """At the time limit's warning a task sends SIGUSR1 to galgen fit and waits for it to stop, at
    most ``stop_timeout`` (from --slurm.signal_delay), then hands submitit the same task to requeue."""
    import subprocess

    from galgen_lightning.sweep.slurm import FitTask

    assert [SlurmOptions(signal_delay=d).stop_timeout for d in (0, 45, 120, 600)] == [30.0, 30.0, 105.0, 585.0]
    task = FitTask(str(tmp_path / "run"), str(tmp_path), ["fit", "--data.n=4"], 100, {"fingerprint": "f"}, stop_timeout=2.0)
    handler = "sys.exit(0)" if stops else "None"  # galgen fit saves and exits; or one that hangs
    code = f"import signal, sys, time; signal.signal(signal.SIGUSR1, lambda *a: {handler}); print('up', flush=True)"
    code += "; time.sleep(60)"
    task.child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert task.child.stdout.readline().strip() == "up"  # its handler is set
        start = time.monotonic()
        again = task.checkpoint()
        waited = time.monotonic() - start
        assert (task.child.poll() is not None) == stops
        assert waited < 1.5 if stops else 2.0 <= waited < 4.0
        assert isinstance(again.function, FitTask) and again.function.params == task.params
    finally:
        task.child.kill()
        task.child.wait()


def test_a_slurm_rank_waits_for_rank_zeros_record_of_this_attempt_not_the_last_ones(tmp_path):
    """After a requeue sweep.json still holds the attempt before: ranks above 0 wait for the new one."""
    import threading

    from galgen_lightning.rundir import RunDir
    from galgen_lightning.sweep.slurm import wait_for_launch

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_launch({"args": ["fit"], "job_id": "7_0", "restart": 0})  # the attempt before the requeue
    assert wait_for_launch(run.path, {"job_id": "7_0", "restart": 0}, timeout=0.1, poll=0.01)
    assert not wait_for_launch(run.path, {"job_id": "7_0", "restart": 1}, timeout=0.3, poll=0.01)
    writer = threading.Timer(0.3, run.write_launch, args=({"args": ["fit"], "job_id": "7_0", "restart": 1},))
    writer.start()
    start = time.monotonic()
    assert wait_for_launch(run.path, {"job_id": "7_0", "restart": 1}, timeout=10, poll=0.01)
    assert 0.25 < time.monotonic() - start < 5
    writer.join()
