"""`galgen sweep --launcher slurm` on a real one-node SLURM cluster (Debian's slurm-wlm and munge),
started by a module fixture in a temporary folder and stopped by process id: a job array of tiny
pairs and its report job, a task signalled mid-epoch that is requeued and resumes with the same
split, and `galgen sweep --status` along the way."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from support import CONFIGS, run_cli

from galgen_lightning.sweep import sweep
from galgen_lightning.sweep.slurm import SlurmOptions

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

FAMILY = "glow"  # tiny Glow pairs: every sample valid, so the report has numbers to draw
NEEDED = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/bin", "/sbin"):
        if os.access(f"{folder}/{name}", os.X_OK):
            return f"{folder}/{name}"
    return None


def _install() -> str | None:
    """Install slurm-wlm and munge as `make slurm` does, when missing; the reason when that is impossible."""
    if all(_binary(n) for n in NEEDED):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "slurm-wlm and munge are not installed, and apt-get cannot run as root here (make slurm installs them)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"apt-get could not install slurm-wlm and munge: {e}"
        if proc.returncode:
            return f"apt-get could not install slurm-wlm and munge: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    missing = [n for n in NEEDED if not _binary(n)]
    return f"{', '.join(missing)} still missing after apt-get install slurm-wlm munge" if missing else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLURM_CONF = """\
ClusterName=galgentest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long (+1 s) before it may start again (default 120 s)
AuthInfo=socket={root}/munge/munge.sock,cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class Cluster:
    root: Path
    env: dict
    startup_s: float

    def run(self, *cmd: str) -> str:
        return subprocess.run(
            [_binary(cmd[0]) or cmd[0], *cmd[1:]], env=self.env, capture_output=True, text=True, timeout=60
        ).stdout

    def jobs(self) -> list[str]:
        """Jobs still pending, running or completing."""
        return self.run("squeue", "--noheader", "--array", "--format=%i").split()


def _wait(what: str, condition, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        out.append(child)
        todo.extend(children.get(child, []))
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """munged, slurmctld and slurmd on localhost (2 CPUs), their state in a temporary folder."""
    reason = _install()
    if reason:
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("slurmd runs jobs as root here: the test cluster needs root")
    started = time.monotonic()
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir()
    (root / "munge").chmod(0o755)
    key = root / "munge" / "munge.key"
    subprocess.run([_binary("mungekey"), "--create", f"--keyfile={key}", "--bits=1024"], check=True, capture_output=True)
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}

    def daemon(*cmd: str) -> None:
        with (root / "log" / f"{Path(cmd[0]).name}.out").open("w") as log:
            procs.append(subprocess.Popen(list(cmd), env=env, stdout=log, stderr=subprocess.STDOUT))

    try:
        m = root / "munge"
        daemon(
            _binary("munged"),
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={m / 'munge.sock'}",
            f"--pid-file={m / 'munged.pid'}",
            f"--log-file={m / 'munged.log'}",
            f"--seed-file={m / 'munged.seed'}",
        )
        _wait("munged's socket", lambda: (m / "munge.sock").exists(), 20, 0.1)
        (root / "slurm.conf").write_text(SLURM_CONF.format(root=root, ctld_port=_free_port(), d_port=_free_port()))
        daemon(_binary("slurmctld"), "-D")
        daemon(_binary("slurmd"), "-D", "-N", "localhost")
        cluster = Cluster(root, env, 0.0)
        try:
            _wait("the node to be idle", lambda: cluster.run("sinfo", "--noheader", "--format=%T").strip() == "idle", 60, 0.2)
        except AssertionError:
            logs = {p.name: p.read_text()[-1500:] for p in (root / "log").iterdir()}
            raise AssertionError(f"the test cluster did not come up: {logs}") from None
        cluster.startup_s = time.monotonic() - started
        print(f"\n[slurm] one-node cluster up in {cluster.startup_s:.1f} s (munged, slurmctld, slurmd; {root})")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", env["SLURM_CONF"])
            yield cluster
    finally:
        if len(procs) == 3 and all(p.poll() is None for p in procs):
            jobs = Cluster(root, env, 0).jobs()
            if jobs:
                subprocess.run([_binary("scancel"), *sorted({j.split("_")[0] for j in jobs})], env=env, timeout=60)
                try:
                    _wait("cancelled jobs to end", lambda: not Cluster(root, env, 0).jobs(), 30)
                except AssertionError:
                    pass
        leftovers = [pid for proc in procs for pid in _descendants(proc.pid)]  # job steps and their tasks
        for proc in reversed(procs):  # slurmd, slurmctld, munged: by process id
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in leftovers:  # a step slurmd started outlives it: stop it by its process id too
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _profile(tmp_path: Path, ns: list[int], epochs: int, samples_per_epoch: int) -> Path:
    """A tiny Glow profile: 16 px, 2 levels of 2 steps of flow, hidden 8; the two-models test at the end."""
    path = tmp_path / "tiny.yaml"
    overlay = {
        "sweep": {"base": [str(CONFIGS / f"{FAMILY}.yaml")], "ns": ns},
        "model": {"init_args": {"n_flow": 2, "n_block": 2, "hidden": 8, "sample_batch_size": 16}},
        "data": {
            "source": {"class_path": "galgen_lightning.data.SyntheticGalaxies", "init_args": {"size": 300}},
            "image_size": 16,
            "n_val": 16,
            "batch_size": 4,
            "samples_per_epoch": samples_per_epoch,
            "num_workers": 0,
        },
        "trainer": {
            "accelerator": "cpu",
            "precision": "32-true",
            "max_epochs": epochs,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": None, "save_last": True}}
            ],
        },
        "two_models": {"init_args": {"n_samples": 8, "every_n_epochs": epochs}},  # the paper config's test, smaller
        "inversion": None,
        "morphology": None,
    }
    path.write_text(yaml.safe_dump(overlay))
    return path


OPTIONS = SlurmOptions(time=10, cpus=1, signal_delay=60, job_name="galgen-test")


def _status(out: Path, capsys) -> str:
    capsys.readouterr()
    assert run_cli(["sweep", "--status", str(out)]) == 0
    return capsys.readouterr().out


def test_job_array_of_three_pairs_then_the_report(cluster, tmp_path, capsys):
    """Three tiny runs as one array on 2 CPUs (one waits: queued), `--status` on the way, the report job after."""
    out = tmp_path / "sweep"
    started = time.monotonic()
    assert (
        sweep(family=FAMILY, profile=str(_profile(tmp_path, [2, 4, 8], 1, 16)), out=str(out), launcher="slurm", slurm=OPTIONS)
        == 0
    )
    text = capsys.readouterr().out
    state = json.loads((out / "sweep.json").read_text())
    assert state["launcher"] == "slurm" and state["slurm"]["tasks"] == 3
    array, report_job = state["slurm"]["array"], state["slurm"]["report"]
    assert [r["job_id"] for r in state["runs"]] == [f"{array}_{i}" for i in range(3)]
    assert f"submitted 3 runs as SLURM array {array}; report job {report_job}" in text
    script = cluster.run("scontrol", "show", "job", report_job)
    assert f"Dependency=afterany:{array}" in script.replace("(unfulfilled)", "")
    seen: set[str] = set()

    def finished() -> bool:
        text = _status(out, capsys)
        for line in text.splitlines():
            for kind in ("queued", "running epoch", "starting", "complete"):
                if line.startswith("  ") and kind in line:
                    seen.add(kind)
        return not cluster.jobs()

    _wait("the array and the report job", finished, 600, 2)
    wall = time.monotonic() - started
    with capsys.disabled():
        print(f"\n[slurm] tiny sweep (3 pairs + report) in {wall:.1f} s, start-up of the cluster {cluster.startup_s:.1f} s")
    assert {"queued", "complete"} <= seen and ({"running epoch", "starting"} & seen), seen
    for rec in state["runs"]:
        assert json.loads((out / rec["run"] / "status.json").read_text())["state"] == "complete"
    assert (out / "report" / "index.html").is_file()
    final = _status(out, capsys)
    assert "3 complete" in final and f"report: {out / 'report' / 'index.html'}" in final
    # a second submission finds nothing to train and writes the report itself
    assert (
        sweep(family=FAMILY, profile=str(_profile(tmp_path, [2, 4, 8], 1, 16)), out=str(out), launcher="slurm", slurm=OPTIONS)
        == 0
    )
    assert "nothing to submit" in capsys.readouterr().out


def test_signalled_tasks_are_requeued_and_resume_with_the_same_split(cluster, tmp_path, capsys):
    """Mid-epoch, one task gets SIGTERM (a preemption) and one SIGUSR2 (submitit's time-limit signal,
    forwarded to galgen fit as SIGUSR1): both save last.ckpt, are requeued and finish from it."""
    out = tmp_path / "sweep"
    profile = _profile(tmp_path, [2, 4], 4, 1200)
    assert sweep(family=FAMILY, profile=str(profile), out=str(out), launcher="slurm", slurm=OPTIONS, report=False) == 0
    state = json.loads((out / "sweep.json").read_text())
    runs = [(out / r["run"], r["job_id"]) for r in state["runs"]]

    def status(folder: Path) -> dict:
        return json.loads((folder / "status.json").read_text()) if (folder / "status.json").is_file() else {}

    splits = {}
    for (folder, job), sig in zip(runs, ("TERM", "USR2")):
        _wait(
            f"{folder.name} past its first epoch",
            lambda f=folder: status(f).get("state") == "running" and status(f).get("epochs_done", 0) >= 1,
            300,
            0.3,
        )
        splits[folder.name] = json.loads((folder / "manifest.json").read_text())["split_sha1"]
        cluster.run("scancel", f"--signal={sig}", job)
        _wait(f"{folder.name} interrupted", lambda f=folder: status(f).get("state") == "interrupted", 120, 0.2)
        line = next(x for x in _status(out, capsys).splitlines() if folder.name in x)
        assert "interrupted (SIG" in line and ("requeued" in line or "being requeued" in line), line
    _wait("both runs complete", lambda: all(status(f).get("state") == "complete" for f, _ in runs), 600, 2)
    for folder, _job in runs:
        command = status(folder)["command"]
        assert f"--ckpt_path={folder / 'checkpoints' / 'last.ckpt'}" in command, command
        assert json.loads((folder / "manifest.json").read_text())["split_sha1"] == splits[folder.name]
    term, usr2 = ((f / "sweep.log").read_text() for f, _ in runs)  # galgen fit's own line: the checkpoint of that step
    assert "interrupted by SIGTERM at global step" in term and "interrupted by SIGUSR1 at global step" in usr2
    _wait("the requeued tasks to leave the queue", lambda: not cluster.jobs(), 60)
    assert "2 complete" in _status(out, capsys)


def test_submission_errors_are_one_line(cluster, tmp_path, capsys):
    profile = str(_profile(tmp_path, [2], 1, 16))
    base = ["sweep", "--family", FAMILY, "--profile", profile, "--out", str(tmp_path / "s"), "--launcher", "slurm"]
    assert run_cli([*base, "--slurm.mem", "lots"]) == 2
    assert "--slurm.mem must be a size such as 32G" in capsys.readouterr().err
    assert run_cli([*base, "--slurm.sbatch", "[-p gpu]"]) == 2
    assert "--slurm.sbatch entry '-p gpu' is not of the form --option=value" in capsys.readouterr().err
    assert run_cli([*base, "--slurm.partition", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "sbatch refused the array" in err and "partition" in err.lower() and len(err.strip().splitlines()) == 1
