"""W&B: online or offline decided right, an unreachable server costs seconds, and an offline run's
own files (read back with the wandb package's protobuf records) hold the per-epoch charts, the
run's identity, and the same id after a resume."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support import QUICK_DIFFUSION, TINY_DIFFUSION, read_jsonl, run_cli

from galgen_lightning import wandb_utils
from galgen_lightning.evaluation import TESTS


@pytest.fixture(autouse=True)
def _fresh_wandb():
    """Each test starts from a fresh W&B service: an earlier in-process run (disabled mode, another
    test module) must not decide where this one writes."""
    import wandb

    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()
    yield
    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()


FAMILY = QUICK_DIFFUSION
TINY = [*TINY_DIFFUSION, "--data.samples_per_epoch=16", "--trainer.max_epochs=1"]


def wandb_records(run: Path) -> list:
    """Every record of the run's offline ``.wandb`` files (W&B's block log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        data, block = path.read_bytes(), 32768
        assert data[:4] == b":W&B"
        pos, buffer, records = 7, b"", []
        while pos + 7 <= len(data):
            left = block - pos % block
            if left < 7:  # a block's tail too short for a header is padding
                pos += left
                continue
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            pos += 7
            if kind == 0:
                break
            chunk, pos = data[pos : pos + length], pos + length
            buffer = chunk if kind in (1, 2) else buffer + chunk
            if kind in (1, 4):  # full, or the last piece
                record = pb.Record()
                record.ParseFromString(buffer)
                records.append(record)
        out.append((path, records))
    return out


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_mode_choice(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert not wandb_utils.logged_in()
    assert wandb_utils.choose_mode() == "offline"
    monkeypatch.delenv("WANDB_MODE")
    netrc.write_text("machine wandb.example.org\n  login user\n  password secret\n")  # a self-hosted server
    netrc.chmod(0o600)
    assert wandb_utils.logged_in() and wandb_utils.choose_mode() == "online"
    netrc.unlink()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert wandb_utils.logged_in()
    monkeypatch.delenv("WANDB_BASE_URL")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_utils.logged_in()
    monkeypatch.setenv("WANDB_MODE", "disabled")  # WANDB_MODE always wins
    assert wandb_utils.choose_mode() == "disabled"


UNREACHABLE = """
import sys, time
from types import SimpleNamespace
from lightning.pytorch.loggers import WandbLogger
from galgen_lightning import wandb_utils
logger = WandbLogger(project="galgen", save_dir=sys.argv[1], id="unreach1")
logger._wandb_init["settings"] = wandb_utils._settings()
trainer = SimpleNamespace(is_global_zero=True, loggers=[logger], callbacks=[])
started = time.monotonic()
wandb_utils.start(trainer, {"family": "diffusion"})
print("mode", logger.experiment.settings.mode, "id", logger.experiment.id, "seconds", round(time.monotonic() - started, 1))
logger.experiment.finish()
"""


def test_unreachable_server_goes_offline_in_seconds(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env.update(WANDB_API_KEY="x" * 40, WANDB_BASE_URL="http://127.0.0.1:1", GALGEN_WANDB_INIT_TIMEOUT="3", WANDB_SILENT="true")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", UNREACHABLE, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mode offline id unreach1" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("galgen: warning: W&B did not start")]
    assert len(warnings) == 1 and f"galgen sync {tmp_path}" in warnings[0]
    assert elapsed < 45, elapsed  # 3 s of init timeout, plus the start of Python and W&B's service
    assert list(tmp_path.glob("wandb/offline-run-*"))


def test_galgen_fit_with_an_unreachable_server_logs_offline_and_completes(tmp_path, tiny_source_args):
    """Through the real CLI: Lightning starts the W&B run in its own setup, so the fallback must
    come before it (a traceback and a failed run otherwise)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env.update(WANDB_API_KEY="x" * 40, WANDB_BASE_URL="http://127.0.0.1:1", GALGEN_WANDB_INIT_TIMEOUT="3", WANDB_SILENT="true")
    run = tmp_path / "run"
    args = ["fit", *FAMILY, *tiny_source_args, *TINY, f"--trainer.default_root_dir={run}"]
    done = subprocess.run(
        [sys.executable, "-m", "galgen_lightning.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("galgen: warning: W&B did not start")]
    assert len(warnings) == 1 and "Traceback" not in done.stderr
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    assert list(run.glob("wandb/offline-run-*"))


def _fit_offline(args: list[str]) -> int:
    """``galgen fit`` with W&B offline in a fresh interpreter: W&B keeps process-wide state that an
    earlier in-process run of the suite (in disabled mode) could leave behind."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    done = subprocess.run(
        [sys.executable, "-m", "galgen_lightning.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.returncode


def test_offline_run_files_hold_epoch_charts_identity_and_resume(tmp_path, tiny_source_args, monkeypatch):
    run = tmp_path / "sweepname" / "run"
    (run).mkdir(parents=True)
    (run / "sweep.json").write_text(json.dumps({"args": []}))  # as galgen sweep launches it: group = the sweep
    assert _fit_offline(["fit", *FAMILY, *tiny_source_args, *TINY, f"--trainer.default_root_dir={run}"]) == 0
    identity = json.loads((run / "wandb.json").read_text())
    status = json.loads((run / "status.json").read_text())
    assert {"galgen", "torch", "lightning", "cuda", "git_commit"} <= set(status["versions"])
    ((path, records),) = wandb_records(run)
    kinds = {}
    for r in records:
        kinds.setdefault(r.WhichOneof("record_type"), []).append(r)
    header = kinds["run"][0].run
    assert header.run_id == identity["id"] and path.name == f"run-{identity['id']}.wandb"
    assert header.run_group == "sweepname" and header.job_type == "fit"
    assert {"diffusion", "n=8"} <= set(header.tags)
    config = {_key(i): json.loads(i.value_json) for r in kinds["config"] for i in r.config.update}
    assert config["family"] == "diffusion" and config["n"] == 8 and config["data_seed"] == 0 and config["seed_everything"] == 0
    assert config["image_size"] == 16 and len(config["split_sha1"]) == 40 and config["source"]
    assert config["versions"]["torch"] and "git_commit" in config["versions"]
    steps = {(r.metric.name or r.metric.glob_name): r.metric.step_metric for r in kinds["metric"]}
    run_config = yaml.safe_load((run / "config.yaml").read_text())
    tests = {t.name for t in TESTS if run_config.get(t.name)}  # the tests this run had on
    assert "two_models" in tests and {k[:-2] for k in steps if k.endswith("/*")} == tests
    assert all(steps[f"{t}/*"] == "epoch" for t in tests)
    assert steps["two_models/memorization_rate"] == "epoch" and steps["two_models/seconds"] == "epoch"
    rows = [{_key(i): i.value_json for i in r.history.item} for r in kinds["history"]]
    rate_rows = [row for row in rows if "two_models/memorization_rate" in row]
    eval_keys = {k for row in rows for k in row if k.startswith(tuple(tests))}
    assert "two_models/a_vs_b_above_0p95" in eval_keys
    assert not [k for k in eval_keys if "." in k or " " in k]  # W&B reads a dot as nesting
    assert rate_rows and all(row["epoch"] == "0" for row in rate_rows)
    seconds = [r["seconds"] for r in read_jsonl(run / "metrics.jsonl")]
    assert all(s is not None and s > 0 for s in seconds)

    # a resume continues the same W&B run
    ckpt = run / "checkpoints" / "last.ckpt"
    args = [
        "fit",
        *FAMILY,
        *tiny_source_args,
        *TINY,
        "--trainer.max_epochs=2",
        f"--ckpt_path={ckpt}",
        f"--trainer.default_root_dir={run}",
    ]
    assert _fit_offline(args) == 0
    runs = wandb_records(run)
    assert len(runs) == 2
    ids = {r.run.run_id for _, records in runs for r in records if r.WhichOneof("record_type") == "run"}
    assert ids == {identity["id"]}
    assert json.loads((run / "wandb.json").read_text())["id"] == identity["id"]


@pytest.mark.parametrize("value", ["diffusion.yaml", "quick/gan.yaml", "configs/quick/diffusion.yaml"])
def test_bundled_config_by_name(value, tmp_path, monkeypatch):
    from galgen_lightning.config_files import resolve_config

    monkeypatch.chdir(tmp_path)
    path = Path(resolve_config(value))
    assert path.is_file() and path.name == Path(value).name
    assert resolve_config("no/such/file.yaml") == "no/such/file.yaml"


LOG_SWEEP = """
import sys
from pathlib import Path
from galgen_lightning.wandb_utils import log_sweep
print("run", log_sweep(Path(sys.argv[1])))
print("run", log_sweep(Path(sys.argv[1])))  # a second report of the sweep
"""


def test_sweep_table_and_charts_in_one_offline_wandb_run(tmp_path):
    """``log_sweep`` (what ``galgen report`` of a sweep calls) in a fresh interpreter with W&B
    offline: one run of job type ``sweep`` in the sweep's group holds the table (one row per run,
    the judge's labels) and a chart per statistic against N with its interval bounds; a second
    report of the sweep logs into the same W&B run."""
    from test_report import small_sweep

    from galgen_lightning.report.table import CHARTS, COLUMNS

    sweep = small_sweep(tmp_path / "sweep-diffusion")
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_BASE_URL")}
    env.update(WANDB_MODE="offline", NETRC=str(tmp_path / "no-netrc"))
    done = subprocess.run([sys.executable, "-c", LOG_SWEEP, str(sweep)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    identity = json.loads((sweep / "report" / "wandb.json").read_text())
    assert identity["group"] == "sweep-diffusion" and done.stdout.split() == ["run", identity["id"]] * 2
    runs = wandb_records(sweep / "report")
    assert len(runs) == 2
    for path, records in runs:
        kinds: dict[str, list] = {}
        for r in records:
            kinds.setdefault(r.WhichOneof("record_type"), []).append(r)
        header = kinds["run"][0].run
        assert header.run_id == identity["id"] and header.job_type == "sweep" and header.run_group == "sweep-diffusion"
        history = {_key(i): json.loads(i.value_json) for r in kinds["history"] for i in r.history.item}
        files = path.parent / "files"
        table = json.loads((files / history["sweep/table/path"]).read_text())
        assert table["columns"] == list(COLUMNS)
        rows = [dict(zip(table["columns"], row)) for row in table["data"]]
        assert [(r["n"], r["label"]) for r in rows] == [(10, "memorizes"), (100, "memorizes"), (1000, "generalizes")]
        assert all(r["memorization_rate_low"] <= r["memorization_rate"] <= r["memorization_rate_high"] for r in rows)
        assert all(r["agreement_kappa"] is not None and r["realism_outside_any"] is not None for r in rows)
        for key in CHARTS:
            chart = json.loads((files / history[f"sweep/{key}_table/path"]).read_text())
            series = {}
            for n, name, value in chart["data"]:
                series.setdefault(name, []).append((n, value))
            line = "diffusion (16 px) seed 0"
            assert set(series) == {line, f"{line} low", f"{line} high"}, series
            assert [n for n, _ in series[line]] == [10, 100, 1000]
            assert [v for _, v in series[line]] == pytest.approx([r[key] for r in rows])


def test_an_unknown_wandb_mode_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "bogus")
    assert run_cli(["fit", *QUICK_DIFFUSION, f"--trainer.default_root_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["galgen: error: WANDB_MODE='bogus' is not one of online, offline, disabled, dryrun, run, shared"]
    assert not (tmp_path / "r").exists()
