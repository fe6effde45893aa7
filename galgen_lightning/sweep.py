"""``galgen sweep``: train pairs of one family over N, skip what is finished, resume what is not.

    galgen sweep                                   # diffusion; paper profile on a GPU, small on a CPU
    galgen sweep --family glow --profile small --ns '[1, 10, 100]'
    galgen sweep --family diffusion --profile paper --per_gpu true     # one run per GPU
    galgen sweep --family diffusion --profile small --seeds 0,1,2      # three pairs per N

A *profile* is a ``galgen fit`` config: ``paper`` is ``configs/<family>.yaml`` (64 px, the
paper's models, a GPU), ``small`` is ``configs/sweep/<family>-small.yaml`` (small images and
models for a CPU), and any other YAML path works too. A profile may carry a ``sweep:`` section,
which the sweep removes before handing the rest to ``galgen fit``::

    sweep:
      base: [../diffusion.yaml]   # configs applied first, relative to the profile file
      ns: [1, 10, 100, 1000]      # the N of this profile (default 10 ... 100,000)
      max_fraction: 0.5           # N <= max_fraction * (images in the source - n_val)

Each N and seed (``--seeds``, default one) trains one pair with ``galgen fit`` in its own run
directory ``<out>/<family>-<profile>-n<N>-seed<S>``: seed ``S`` is the split's seed
(``data.seed``) and the initialisation's (``seed_everything``), unless ``--data_seed K`` pins the
split (then the folder is ``...-seed<S>-data<K>`` when ``K != S``). Every run of a sweep reads
the same first ``--data.pool_size`` images of the source, so for one data seed all N share the
held-out set and the smaller N's A and B are part of the larger N's. Rerunning the same command skips runs whose
``status.json`` says ``complete``, resumes interrupted ones from ``checkpoints/last.ckpt``
(``--ckpt_path``), and starts the rest; an attempt that died before its first checkpoint is
moved to ``<out>/.attempts/``. Runs go one after the other (each ``galgen fit`` a child
process, so DDP over several GPUs works), or one per GPU with ``--per_gpu true``. At the end
``galgen report`` is written to ``<out>/report/``.

For many machines use W&B sweeps (``configs/sweep/wandb-<family>.yaml``) or SLURM with
Lightning's multi-node DDP: ``docs/sweep.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from galgen_lightning.errors import GalgenError
from galgen_lightning.rundir import RunDir

DEFAULT_NS = (10, 100, 1000, 10000, 100000)
FAMILIES = ("diffusion", "glow", "gan")
PROFILES = ("auto", "small", "paper")


# --- configs -----------------------------------------------------------------------------------
def _load_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise GalgenError(f"sweep: cannot read {path}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GalgenError(f"sweep: {path} is not a YAML mapping")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """Merge ``over`` into a copy of ``base`` like repeated ``--config`` files: mappings merge,
    everything else (lists included) is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Profile:
    """A resolved sweep profile.

    Attributes:
        name: ``small``, ``paper`` or the stem of a custom file.
        path: the profile file.
        configs: the ``--config`` files of every run, in order.
        ns: the N of the profile (before the cap).
        max_fraction: cap on N as a share of the usable images.
        merged: the configs merged (used for the cap; the real parse is ``galgen fit``'s).
    """

    name: str
    path: Path
    configs: list[Path]
    ns: list[int]
    max_fraction: float
    merged: dict = field(default_factory=dict)


def detect_gpus() -> int:
    """How many CUDA GPUs this process can see (0 without torch or CUDA)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 (no usable torch: no GPU)
        return 0


def resolve_profile(family: str, profile: str, configs_dir: Path, out: Path, gpus: int | None = None) -> Profile:
    """Find the profile's file and split it into ``galgen fit`` configs and sweep settings.

    Args:
        family: ``diffusion``, ``glow`` or ``gan``.
        profile: ``auto`` (``paper`` where a CUDA GPU is visible, else ``small``), ``small``,
            ``paper``, another name looked up as ``configs/sweep/<family>-<name>.yaml``, or a
            path to a YAML file.
        configs_dir: galgen's ``configs`` folder.
        out: the sweep folder (a profile with a ``sweep:`` section is written there without it).
        gpus: GPUs visible (default: detected), for ``auto``.
    """
    if family not in FAMILIES:
        raise GalgenError(f"sweep: --family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if profile == "auto":
        gpus = detect_gpus() if gpus is None else gpus
        profile = "paper" if gpus else "small"
        why = f"{gpus} CUDA GPU(s) found" if gpus else "no CUDA GPU found; --profile paper for the paper-size runs"
        print(f"[sweep] profile: {profile} ({why})", flush=True)
    if profile == "paper":
        path = configs_dir / f"{family}.yaml"
    elif profile.endswith((".yaml", ".yml")) or os.sep in profile:
        path = Path(profile)
        profile = path.stem
    else:
        path = configs_dir / "sweep" / f"{family}-{profile}.yaml"
    if not path.is_file():
        raise GalgenError(f"sweep: profile file {path} not found (run from the galgen repository or pass --configs_dir)")
    data = _load_yaml(path)
    settings = data.pop("sweep", None) or {}
    if not isinstance(settings, dict):
        raise GalgenError(f"sweep: the 'sweep' section of {path} must be a mapping")
    unknown = set(settings) - {"base", "ns", "max_fraction"}
    if unknown:
        raise GalgenError(f"sweep: unknown keys {sorted(unknown)} in the 'sweep' section of {path} (base, ns, max_fraction)")
    base = [(path.parent / b).resolve() for b in settings.get("base") or []]
    for b in base:
        if not b.is_file():
            raise GalgenError(f"sweep: base config {b} of {path} not found")
    fit_config = path
    if "sweep" in _load_yaml(path):  # hand galgen fit the profile without its sweep section
        import yaml

        folder = out / "configs"
        folder.mkdir(parents=True, exist_ok=True)
        fit_config = folder / f"{family}-{profile}.yaml"
        header = f"# {path} without its 'sweep' section (written by galgen sweep; edit the original)\n"
        fit_config.write_text(header + yaml.safe_dump(data, sort_keys=False))
    merged: dict = {}
    for c in [*base, path]:
        merged = deep_merge(merged, {k: v for k, v in _load_yaml(c).items() if k != "sweep"})
    ns = [int(n) for n in settings.get("ns") or DEFAULT_NS]
    return Profile(profile, path, [*base, fit_config], ns, float(settings.get("max_fraction", 0.5)), merged)


def usable_images(merged: dict) -> tuple[int | None, int, str]:
    """``(images in the source, n_val, note)`` from the merged configs (None when unknown)."""
    data = merged.get("data") or {}
    n_val = int(data.get("n_val", 500))
    source = data.get("source")
    if source is None:
        return 25000, n_val, "the default synthetic set"
    if isinstance(source, dict) and source.get("class_path"):
        init = source.get("init_args") or {}
        class_path = str(source["class_path"])
        if class_path.endswith("SyntheticGalaxies"):  # no import needed
            return int(init.get("size", 25000)), n_val, f"synthetic set of {int(init.get('size', 25000)):,}"
        try:
            import importlib

            module, name = class_path.rsplit(".", 1) if "." in class_path else ("galgen_lightning.data", class_path)
            src = getattr(importlib.import_module(module), name)(**init)
            return int(src.available()), n_val, f"{name} with {int(src.available()):,} images"
        except GalgenError:
            raise
        except Exception as e:  # noqa: BLE001 (the cap is then left to galgen fit)
            return None, n_val, f"cannot size {class_path} ({type(e).__name__}: {e})"
    return None, n_val, "unknown source"


def plan_ns(ns: list[int], max_n: int | None) -> tuple[list[int], list[int]]:
    """``(kept, dropped)``: the distinct positive N up to ``max_n``, in increasing order."""
    ns = sorted({int(n) for n in ns})
    if any(n < 1 for n in ns):
        raise GalgenError(f"sweep: every N must be positive, got {ns}")
    if max_n is None:
        return ns, []
    return [n for n in ns if n <= max_n], [n for n in ns if n > max_n]


# --- runs --------------------------------------------------------------------------------------
@dataclass
class RunPlan:
    """One (N, seed) of the sweep.

    Attributes:
        n: images per model.
        folder: the run directory.
        action: ``skip`` (complete), ``resume`` (from ``checkpoints/last.ckpt``) or ``train``.
        args: the ``galgen`` arguments (``fit ...``).
        seed: the initialisation seed (``seed_everything``).
        data_seed: the split's seed (``data.seed``).
        warning: why this existing run is not like the others (another pool), or empty.
    """

    n: int
    folder: Path
    action: str
    args: list[str]
    state: str = ""
    duration: float | None = None
    returncode: int | None = None
    seed: int = 0
    data_seed: int = 0
    warning: str = ""


def run_name(family: str, profile: str, n: int, seed: int, data_seed: int | None = None) -> str:
    """The deterministic run directory name, ``<family>-<profile>-n<N>-seed<S>``, with
    ``-data<K>`` appended when the split's seed ``K`` is not ``S``."""
    name = f"{family}-{profile}-n{n}-seed{seed}"
    return name if data_seed is None or data_seed == seed else f"{name}-data{data_seed}"


def parse_seeds(seeds: list[int] | str | int) -> list[int]:
    """The distinct seeds of ``--seeds``, in the order given: a list, or ``"0,1,2"``."""
    if isinstance(seeds, int):
        seeds = [seeds]
    if isinstance(seeds, str):
        parts = [p.strip() for p in seeds.strip().strip("[]").split(",") if p.strip()]
        try:
            seeds = [int(p) for p in parts]
        except ValueError:
            raise GalgenError(f"sweep: --seeds must be integers separated by commas (0,1,2), got {seeds!r}") from None
    out: list[int] = []
    for seed in seeds:
        if not 0 <= int(seed) < 2**32:
            raise GalgenError(f"sweep: every seed must be in [0, 2**32), got {seed}")
        if int(seed) not in out:
            out.append(int(seed))
    if not out:
        raise GalgenError("sweep: --seeds is empty")
    return out


def sweep_pool_size(ns: list[int], n_val: int, size: int | None) -> int:
    """The ``data.pool_size`` of every run: what the largest N needs (``2 max(N) + n_val``) plus
    the DataModule's margin for duplicates, at most the source's ``size``."""
    from galgen_lightning.data.datamodule import pool_with_margin

    pool = pool_with_margin(2 * max(ns) + n_val)
    return pool if size is None else min(pool, size)


def _option(args: list[str], name: str) -> str | None:
    """The last value of ``--name=value`` or ``--name value`` in ``args`` (None when absent)."""
    value = None
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(args):
            value = args[i + 1]
    return value


def recorded_pool_size(folder: Path) -> tuple[bool, int | None]:
    """``(known, pool_size)`` of an existing run: from its ``manifest.json``, else the arguments
    the sweep recorded in its ``sweep.json`` (``known`` is False when neither says)."""
    manifest = RunDir(folder).manifest()
    if "pool_size" in manifest:
        value = manifest["pool_size"]
        return True, None if value is None else int(value)
    args = RunDir(folder).launch().get("args")
    if isinstance(args, list):
        value = _option([str(a) for a in args], "data.pool_size")
        return True, None if value is None else int(value)
    return False, None


def fingerprint(configs: list[Path], extra: list[str]) -> str:
    """SHA-1 of the config files' contents and the extra arguments (to notice a changed profile)."""
    h = hashlib.sha1()
    for c in configs:
        h.update(Path(c).read_bytes())
    h.update("\0".join(extra).encode())
    return h.hexdigest()


def plan_runs(
    family: str,
    profile: Profile,
    ns: list[int],
    seeds: list[int] | int,
    out: Path,
    fit_args: list[str],
    pool_size: int | None = None,
    data_seed: int | None = None,
) -> list[RunPlan]:
    """Decide, per seed and N, whether to skip, resume or train, and build each ``galgen fit`` command.

    Runs are ordered seed by seed (every N of the first seed, then the next), so the first
    seed's curve over N is complete first. Seed ``s`` sets ``seed_everything`` and, unless
    ``data_seed`` pins the split, ``data.seed``. ``pool_size`` goes to every run as
    ``data.pool_size``; an interrupted run that was started with another pool resumes with its
    own (the data of a resumed run must not change), with a warning, as does a complete one.
    """
    plans = []
    for seed in [seeds] if isinstance(seeds, int) else seeds:
        split_seed = seed if data_seed is None else data_seed
        for n in ns:
            folder = out / run_name(family, profile.name, n, seed, data_seed)
            args = [
                "fit",
                *(f"--config={c}" for c in profile.configs),
                f"--data.n={n}",
                f"--data.seed={split_seed}",
                f"--seed_everything={seed}",
            ]
            if pool_size is not None:
                args.append(f"--data.pool_size={pool_size}")
            args += [f"--trainer.default_root_dir={folder}", *fit_args]
            status = RunDir(folder).status()
            state = str(status.get("state") or status.get("status") or "")
            last = folder / "checkpoints" / "last.ckpt"
            if state == "complete":
                action = "skip"
            elif state == "diverged":  # resuming would diverge again: left for the user to change and rerun
                action = "skip"
            elif last.is_file():
                action = "resume"
                args.append(f"--ckpt_path={last}")
            else:
                action = "train"
            warning = f"diverged ({status.get('error', 'see its status.json')}): not resumed; delete the folder to retrain" if state == "diverged" else ""
            known, old_pool = recorded_pool_size(folder) if action != "train" else (False, None)
            if known and old_pool != pool_size:
                old = "an N-dependent pool" if old_pool is None else f"data.pool_size {old_pool}"
                if action == "resume":
                    args = [a for a in args if not a.startswith("--data.pool_size=")]
                    if old_pool is not None:
                        args.insert(args.index(f"--trainer.default_root_dir={folder}"), f"--data.pool_size={old_pool}")
                    warning = f"resumes on its own {old}, not this sweep's {pool_size}"
                else:
                    warning = f"was trained on {old}, not this sweep's {pool_size}"
                warning += ": its held-out set and subsets are not nested with the other runs'; delete it to retrain"
            plans.append(RunPlan(n, folder, action, args, state, seed=seed, data_seed=split_seed, warning=warning))
    return plans


def set_aside(folder: Path, out: Path) -> Path | None:
    """Move a run directory that cannot be resumed (no checkpoint) to ``<out>/.attempts/``."""
    if not folder.exists() or not any(folder.iterdir()):
        return None
    dest = out / ".attempts" / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(folder), str(dest))
    return dest


@contextlib.contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """One sweep at a time per output folder (``<out>/.sweep.lock``)."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    handle = (out / ".sweep.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        handle.close()
        raise GalgenError(f"sweep: another galgen sweep is using {out} (lock {out / '.sweep.lock'})") from e
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


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
        return f"time left ~{_duration(left)} ({_duration(per)} per run)"

    def line(self, plan: RunPlan, index: int, running_since: list[float]) -> str:
        what = "resuming" if plan.action == "resume" else "training"
        return (
            f"[sweep {index}/{self.total}] {what} {plan.folder.name} (N={plan.n:,}, seed {plan.seed}) | {self.finished} done this time, "
            f"{self.skipped} already complete | elapsed {_duration(time.time() - self.start)} | {self.left(running_since)}"
        )

    def done(self, plan: RunPlan) -> None:
        self.finished += 1
        if plan.returncode == 0 and plan.duration is not None:
            self.durations.append(plan.duration)


Runner = Callable[[list[str], dict[str, str], Path | None], "subprocess.Popen | int"]


def subprocess_runner(args: list[str], env: dict[str, str], log: Path | None) -> subprocess.Popen:
    """Start ``python -m galgen_lightning.cli <args>`` (a child process: DDP relaunches it cleanly)."""
    cmd = [sys.executable, "-m", "galgen_lightning.cli", *args]
    if log is None:
        return subprocess.Popen(cmd, env=env)
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = log.open("a")
    handle.write(f"\n$ {shlex.join(cmd)}\n")
    handle.flush()
    return subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT)


def _wait(handle: Any) -> int:
    return handle if isinstance(handle, int) else handle.wait()


def _poll(handle: Any) -> int | None:
    return handle if isinstance(handle, int) else handle.poll()


def write_state(out: Path, plans: list[RunPlan], meta: dict) -> None:
    """``<out>/sweep.json``: the sweep's settings and each run's state and duration."""
    old = {}
    with contextlib.suppress(OSError, ValueError):
        old = {r["run"]: r for r in json.loads((out / "sweep.json").read_text()).get("runs", [])}
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
        runs.append(rec)
    tmp = out / "sweep.json.tmp"
    tmp.write_text(json.dumps({**meta, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": runs}, indent=1) + "\n")
    tmp.replace(out / "sweep.json")


def previous_durations(out: Path) -> dict[str, float]:
    """Run durations recorded by earlier invocations (for the time-left estimate)."""
    try:
        runs = json.loads((out / "sweep.json").read_text()).get("runs", [])
    except (OSError, ValueError):
        return {}
    return {r["run"]: float(r["duration_s"]) for r in runs if r.get("duration_s")}


def execute(
    plans: list[RunPlan],
    out: Path,
    meta: dict,
    runner: Runner | None = None,
    gpus: list[int] | None = None,
    poll_s: float = 2.0,
) -> list[RunPlan]:
    """Train the runs that need it: one after the other, or one per GPU in ``gpus``.

    Returns the plans that failed. A Ctrl+C stops the sweep after the runs in flight have shut
    down (Lightning saves nothing new; the next invocation resumes from the last checkpoint).
    """
    runner = runner or subprocess_runner
    progress = Progress(plans, previous_durations(out), slots=len(gpus) if gpus else 1)
    base_env = dict(os.environ)
    pending = [(i + 1, p) for i, p in enumerate(plans) if p.action != "skip"]
    for p in plans:
        if p.action == "skip":
            print(f"[sweep] skip {p.folder.name}: complete", flush=True)
    failed: list[RunPlan] = []
    running: dict[int | None, tuple[RunPlan, Any, float]] = {}
    free = list(gpus) if gpus else [None]
    try:
        while pending or running:
            while pending and free:
                index, plan = pending.pop(0)
                if plan.action == "train":
                    moved = set_aside(plan.folder, out)
                    if moved:
                        print(f"[sweep] {plan.folder.name} had an attempt without a checkpoint: moved to {moved}", flush=True)
                plan.folder.mkdir(parents=True, exist_ok=True)
                RunDir(plan.folder).write_launch({"args": plan.args, "fingerprint": meta.get("fingerprint")})
                gpu = free.pop(0)
                env = dict(base_env)
                args = list(plan.args)
                log = None
                if gpu is not None:
                    env["CUDA_VISIBLE_DEVICES"] = str(gpu)
                    args.append("--trainer.devices=1")
                    log = plan.folder / "sweep.log"
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
                code = _wait(handle) if gpu is None else _poll(handle)
                if code is None:
                    continue
                plan.returncode, plan.duration = code, time.time() - started
                del running[gpu]
                free.append(gpu)
                progress.done(plan)
                state = RunDir(plan.folder).status().get("state", "?")
                if code == 0 and state == "complete":
                    print(f"[sweep] {plan.folder.name} complete in {_duration(plan.duration)}", flush=True)
                elif state == "interrupted" or code > 128:
                    # a signal (scheduler, Ctrl+C): the run saved last.ckpt; the same command resumes it
                    print(f"[sweep] {plan.folder.name} interrupted (exit {code}); rerun the same command to resume it", flush=True)
                    pending.clear()
                else:
                    failed.append(plan)
                    print(f"[sweep] {plan.folder.name} FAILED (exit {code}, status {state}); see {plan.folder}", flush=True)
                write_state(out, plans, meta)
    except KeyboardInterrupt:
        print("\n[sweep] interrupted: waiting for the runs in flight to stop ...", flush=True)
        for _plan, handle, _ in running.values():
            with contextlib.suppress(Exception):
                _wait(handle)
        write_state(out, plans, meta)
        raise
    return failed


def sweep(
    family: str = "diffusion",
    profile: str = "auto",
    ns: list[int] | None = None,
    max_fraction: float | None = None,
    max_n: int | None = None,
    seed: int = 0,
    seeds: list[int] | str | None = None,
    data_seed: int | None = None,
    pool_size: int | None = None,
    out: str = "runs/sweep",
    configs_dir: str = "configs",
    per_gpu: bool = False,
    gpus: list[int] | int | None = None,
    fit_args: str = "",
    report: bool = True,
    dry_run: bool = False,
    plan: bool = False,
    throughput: str | None = None,
) -> int:
    """Train pairs of one family over N (skipping finished runs, resuming interrupted ones), then the report.

    Args:
        family: model family: diffusion, glow or gan.
        profile: auto (paper where a CUDA GPU is visible, else small), small, paper, or a YAML file.
        ns: the N to train (default: the profile's, else 10, 100, 1000, 10000, 100000).
        max_fraction: cap N at this share of the source's images minus n_val (default: the profile's, else 0.5).
        max_n: cap N at this value instead (when the cap cannot be read from the configs).
        seed: split and initialisation seed of every run (``data.seed`` and ``seed_everything``);
            the same as ``--seeds S``.
        seeds: several seeds, one run per N and seed, e.g. ``--seeds 0,1,2`` (default: ``seed``).
            Seed S sets ``seed_everything`` (initialisation, batch order, training noise) and,
            unless ``data_seed`` is given, ``data.seed`` (which images are A, B and held out).
        data_seed: pin ``data.seed`` of every run to this value, so the seeds vary only the
            initialisation and training randomness, not the split.
        pool_size: source images every run reads (``data.pool_size``; default: what the largest
            N needs, 2 max(N) + n_val, plus a margin for duplicates, at most the source's size).
            One pool for all N: for one data seed, all N share the held-out set and the subsets
            are nested. Raise it when the largest N fails for lack of distinct images.
        out: folder of the sweep's run directories, state (sweep.json) and report.
        configs_dir: galgen's configs folder.
        per_gpu: run one pair per GPU at a time (child processes with CUDA_VISIBLE_DEVICES).
        gpus: GPU indices for per_gpu, e.g. ``'[0, 2]'``, or a number K: the first K GPUs
            (default: every visible GPU). With ``plan``, K is the number of GPUs to plan for.
        fit_args: extra ``galgen fit`` arguments for every run, one string, e.g.
            ``--fit_args="--trainer.max_epochs=3"`` (part of the fingerprint of the runs).
        report: write ``galgen report`` of ``out`` at the end.
        dry_run: print the plan and stop.
        plan: print each run's projected time and the total (``galgen_lightning.sweep_cost``:
            steps, batch, evaluation cost, throughput) for this machine's GPUs (one, or every
            visible one with ``per_gpu``) or for ``gpus`` GPUs, and stop.
        throughput: a benchmark result file (``benchmarks/bench_fit.py``, ``bench_diffusion.py``,
            ``bench_glow.py``, ``bench_gan.py`` output or ``gpu_checks.sh``'s results.jsonl)
            for ``plan``; default: the design notes' H200 reference figures, labelled as such.

    Returns:
        0 when every run is complete, 1 when some failed.
    """
    out_dir = Path(out)
    configs = Path(configs_dir)
    gpu_count = detect_gpus() if (profile == "auto" or per_gpu) else None
    prof = resolve_profile(family, profile, configs, out_dir, gpu_count)
    fraction = prof.max_fraction if max_fraction is None else max_fraction
    if not 0 < fraction <= 0.5:
        raise GalgenError(f"sweep: --max_fraction must be in (0, 0.5], got {fraction}")
    if max_n is None:
        size, n_val, note = usable_images(prof.merged)
        cap = int(fraction * (size - n_val)) if size is not None else None
        cap_note = f"N <= {cap:,} ({fraction:g} x ({note} - n_val {n_val}))" if cap is not None else f"no cap ({note})"
    else:
        try:
            size, n_val, _ = usable_images(prof.merged)
        except GalgenError:  # the cap is --max_n's; the source's size only bounds the pool
            size, n_val = None, int((prof.merged.get("data") or {}).get("n_val", 500))
        cap, cap_note = max_n, f"N <= {max_n:,} (--max_n)"
    kept, dropped = plan_ns(list(ns) if ns else prof.ns, cap)
    extra = shlex.split(fit_args)
    with contextlib.suppress(TypeError, ValueError):  # --fit_args="--data.n_val=..." (else galgen fit reports it)
        n_val = int(_option(extra, "data.n_val"))  # type: ignore[arg-type]
    overridden = (("data.seed", "--seeds or --data_seed"), ("seed_everything", "--seeds"), ("data.pool_size", "--pool_size"))
    for name, instead in overridden:
        if _option(extra, name) is not None:
            raise GalgenError(f"sweep: --{name} in --fit_args would override the sweep's own; use {instead}")
    if seeds is not None and seed != 0:
        raise GalgenError("sweep: give --seed or --seeds, not both")
    seed_list = parse_seeds(seeds if seeds is not None else seed)
    if data_seed is not None and not 0 <= data_seed < 2**32:
        raise GalgenError(f"sweep: --data_seed must be in [0, 2**32), got {data_seed}")
    print(f"[sweep] {family}, profile {prof.name} ({prof.path}): N = {', '.join(f'{n:,}' for n in kept)}; {cap_note}", flush=True)
    if dropped:
        print(f"[sweep] dropped N = {', '.join(f'{n:,}' for n in dropped)}: above the cap", flush=True)
    if not kept:
        raise GalgenError(f"sweep: no N left under the cap ({cap_note})")
    if pool_size is None:
        pool_size = sweep_pool_size(kept, n_val, size)
    elif pool_size < 2 * max(kept) + n_val:
        raise GalgenError(f"sweep: --pool_size {pool_size} is below 2 * max(N) + n_val = {2 * max(kept) + n_val}")
    elif size is not None and pool_size > size:
        raise GalgenError(f"sweep: --pool_size {pool_size} is above the {size:,} images of the source")
    pinned = f" (split pinned: data.seed {data_seed})" if data_seed is not None else ""
    seed_note = f"seeds {', '.join(map(str, seed_list))}{pinned}"
    print(f"[sweep] {seed_note}; every run reads the first {pool_size:,} source images (data.pool_size)", flush=True)
    plans = plan_runs(family, prof, kept, seed_list, out_dir, extra, pool_size, data_seed)
    fp = fingerprint(prof.configs, extra)
    for p in plans:
        old = RunDir(p.folder).launch().get("fingerprint")
        if p.action != "train" and old and old != fp:
            print(
                f"[sweep] warning: {p.folder.name} was started with other configs or arguments; delete it to retrain with the current ones",
                flush=True,
            )
        if p.warning:
            print(f"[sweep] warning: {p.folder.name} {p.warning}", flush=True)
    counts = {a: sum(p.action == a for p in plans) for a in ("skip", "resume", "train")}
    print(
        f"[sweep] {len(plans)} runs: {counts['skip']} complete (skipped), {counts['resume']} to resume, {counts['train']} to train",
        flush=True,
    )
    if plan:
        from galgen_lightning.sweep_cost import builtin_throughput, plan_cost, read_throughput, run_profile

        if isinstance(gpus, list):
            slots, where = len(gpus), f"GPUs {gpus}"
        elif isinstance(gpus, int):
            slots, where = gpus, f"{gpus} GPU{'s' if gpus != 1 else ''} (--gpus)"
        else:
            local = detect_gpus() if per_gpu else 1
            slots, where = max(local, 1), f"this machine ({'one run per GPU, ' if per_gpu else ''}{max(local, 1)} at a time)"
        if slots < 1:
            raise GalgenError(f"sweep: --gpus must be at least 1, got {gpus}")
        if throughput:
            rate = read_throughput(throughput, family)
        else:
            first = run_profile(prof.merged, extra, kept[0])
            model = (prof.merged.get("model") or {}).get("init_args") or {}
            fast = "bf16" in str((prof.merged.get("trainer") or {}).get("precision", "")) and bool(model.get("channels_last"))
            rate = builtin_throughput(family, first.batch, fast)
        plan_cost(family, prof.merged, extra, plans, rate, slots, where)
        return 0
    if dry_run:
        for p in plans:
            print(f"  {p.action:>6s}  galgen {shlex.join(p.args)}")
        return 0
    devices = None
    if per_gpu:
        devices = list(range(gpus)) if isinstance(gpus, int) else list(gpus) if gpus else list(range(gpu_count or 0))
        if not devices:
            raise GalgenError("sweep: --per_gpu needs CUDA GPUs and none is visible")
        print(f"[sweep] one run per GPU on GPUs {devices}", flush=True)
    meta = {
        "family": family,
        "profile": prof.name,
        "profile_file": str(prof.path),
        "configs": [str(c) for c in prof.configs],
        "ns": kept,
        "seeds": seed_list,
        "data_seed": data_seed,
        "pool_size": pool_size,
        "fit_args": extra,
        "fingerprint": fp,
    }
    started = time.time()
    with sweep_lock(out_dir):
        write_state(out_dir, plans, meta)
        try:
            failed = execute(plans, out_dir, meta, gpus=devices)
        except KeyboardInterrupt:
            print("[sweep] stopped. Run the same command again to resume (finished runs are skipped).", flush=True)
            return 130
    stopped = [p for p in plans if p.returncode is not None and p.returncode > 128]
    if stopped:  # a signal stopped a run: no report of a half sweep; the exit status says so
        print(f"[sweep] stopped by a signal at {stopped[0].folder.name}; run the same command again to resume", flush=True)
        return stopped[0].returncode
    print(
        f"[sweep] finished in {_duration(time.time() - started)}: {len(plans) - len(failed)}/{len(plans)} runs complete",
        flush=True,
    )
    if report:
        from galgen_lightning.report import report as write_report

        try:
            write_report(str(out_dir), str(out_dir / "report"))
        except GalgenError as e:
            print(f"[sweep] no report: {e}", flush=True)
    if failed:
        print(
            "[sweep] failed: " + ", ".join(p.folder.name for p in failed) + " (rerun the same command to retry them)", flush=True
        )
        return 1
    return 0


def main(argv: list[str]) -> None:
    """``galgen sweep ...`` (dispatched by :func:`galgen_lightning.cli.main`)."""
    from jsonargparse import auto_cli

    from galgen_lightning.errors import one_line_argument_parser


    code = auto_cli(sweep, args=argv, prog="galgen sweep", parser_class=one_line_argument_parser())
    if code:
        sys.exit(code)
