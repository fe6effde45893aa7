"""``galgen sweep``: the options, the plan, and the launcher (local or SLURM)."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from galgen_lightning.errors import GalgenError
from galgen_lightning.rundir import RunDir
from galgen_lightning.sweep import runs
from galgen_lightning.sweep.plan import (
    Profile,
    RunPlan,
    detect_gpus,
    fingerprint,
    option,
    parse_ints,
    parse_seeds,
    plan_ns,
    plan_runs,
    resolve_profile,
    sweep_pool_size,
    usable_images,
)
from galgen_lightning.sweep.slurm import SlurmOptions

LAUNCHERS = ("local", "slurm")


def _cap(prof: Profile, fraction: float, max_n: int | None) -> tuple[int | None, int | None, int, str]:
    """``(cap on N, images in the source, n_val, note)``."""
    if max_n is None:
        size, n_val, note = usable_images(prof.fit)
        cap = int(fraction * (size - n_val)) if size is not None else None
        return (
            cap,
            size,
            n_val,
            f"N <= {cap:,} ({fraction:g} x ({note} - n_val {n_val}))" if cap is not None else f"no cap ({note})",
        )
    try:
        size, n_val, _ = usable_images(prof.fit)
    except GalgenError:  # the cap is --max_n's; the source's size only bounds the pool
        size, n_val = None, int(prof.fit["data"]["n_val"])
    return max_n, size, n_val, f"N <= {max_n:,} (--max_n)"


def _plan_cost(
    family: str,
    prof: Profile,
    plans: list[RunPlan],
    kept: list[int],
    gpus: list[int] | int | None,
    per_gpu: bool,
    throughput: str | None,
) -> None:
    from galgen_lightning.sweep.cost import builtin_throughput, plan_cost, read_throughput, run_profile

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
        model = (prof.fit.get("model") or {}).get("init_args") or {}
        fast = "bf16" in str((prof.fit.get("trainer") or {}).get("precision", "")) and bool(model.get("channels_last"))
        rate = builtin_throughput(family, run_profile(prof.fit, kept[0]).batch, fast)
    plan_cost(family, prof.fit, plans, rate, slots, where)


def _report(out_dir: Path) -> None:
    from galgen_lightning.report import report as write_report

    try:
        write_report(str(out_dir), str(out_dir / "report"))
    except GalgenError as e:
        print(f"[sweep] no report: {e}", flush=True)


def _run_local(plans: list[RunPlan], out_dir: Path, meta: dict, devices: list[int] | None, report: bool) -> int:
    from galgen_lightning.sweep.local import Stopped, execute

    started = time.time()
    with runs.sweep_lock(out_dir):
        runs.write_state(out_dir, plans, meta)
        try:
            failed = execute(plans, out_dir, meta, gpus=devices)
        except KeyboardInterrupt as e:
            print("[sweep] stopped. Run the same command again to resume (finished runs are skipped).", flush=True)
            return 128 + e.signum if isinstance(e, Stopped) else 130
    stopped = [p for p in plans if runs.signalled(p.returncode)]
    if stopped:  # a signal stopped a run: no report of a half sweep; the exit status says so
        print(f"[sweep] stopped by a signal at {stopped[0].folder.name}; run the same command again to resume", flush=True)
        return runs.shell_code(stopped[0].returncode)
    states = {p.folder.name: RunDir(p.folder).status().get("state", p.state or "not started") for p in plans}
    complete = sum(state == "complete" for state in states.values())
    print(f"[sweep] finished in {runs.duration(time.time() - started)}: {complete}/{len(plans)} runs complete", flush=True)
    if report:
        _report(out_dir)
    if failed:
        print(
            "[sweep] failed: " + ", ".join(p.folder.name for p in failed) + " (rerun the same command to retry them)", flush=True
        )
    failed_names = {p.folder.name for p in failed}
    others = {name: state for name, state in states.items() if state != "complete" and name not in failed_names}
    if others:
        print("[sweep] not complete: " + ", ".join(f"{name} ({state})" for name, state in others.items()), flush=True)
    if failed or others:
        return 1
    return 0


def _run_slurm(plans: list[RunPlan], out_dir: Path, meta: dict, options: SlurmOptions, report: bool) -> int:
    from galgen_lightning.sweep import slurm

    options.check()
    with runs.sweep_lock(out_dir):
        slurm.check_idle(out_dir)
        if all(p.action == "skip" for p in plans):
            print("[sweep] every run is complete or left alone: nothing to submit", flush=True)
            runs.write_state(out_dir, plans, meta)
            if report:
                _report(out_dir)
            return 0
        info = slurm.submit(plans, out_dir, meta, options, meta["family"], meta["profile"], report)
        runs.write_state(out_dir, plans, {**meta, "launcher": "slurm", "slurm": info})
    report_note = f"; report job {info['report']} starts when they have all ended (afterany)" if info["report"] else ""
    print(f"[sweep] submitted {info['tasks']} runs as SLURM array {info['array']}{report_note}", flush=True)
    print(f"[sweep] logs in {info['logs']} and <run>/sweep.log; progress: galgen sweep --status {out_dir}", flush=True)
    return 0


def sweep(
    family: str = "diffusion",
    profile: str = "auto",
    ns: list[int] | str | None = None,
    max_fraction: float | None = None,
    max_n: int | None = None,
    seed: int = 0,
    seeds: list[int] | str | None = None,
    data_seed: int | None = None,
    pool_size: int | None = None,
    out: str = "runs/sweep",
    configs_dir: str | None = None,
    launcher: str = "local",
    slurm: SlurmOptions = SlurmOptions(),
    per_gpu: bool = False,
    gpus: list[int] | int | str | None = None,
    fit_args: str = "",
    report: bool = True,
    dry_run: bool = False,
    plan: bool = False,
    throughput: str | None = None,
    status: str | None = None,
) -> int:
    """Train pairs of one family over N (skipping finished runs, resuming interrupted ones), then the report.

    Args:
        family: model family: one with a config ``<configs_dir>/<family>.yaml`` (diffusion, glow, gan).
        profile: auto (paper where a CUDA GPU is visible, else small), small, paper, or a YAML file.
        ns: the N to train, e.g. ``--ns 10,100,1000`` (default: the profile's, else 10, 100, 1000, 10000, 100000).
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
        configs_dir: galgen's configs folder (default: ``./configs`` when it holds galgen's
            configs, else the bundled ones: a sweep runs from any folder).
        launcher: ``local`` (this machine: one run after the other, or one per GPU with
            ``per_gpu``) or ``slurm`` (one job-array task per run through submitit, options
            ``--slurm.*``, then a report job; docs/slurm.md).
        slurm: the SLURM launcher's options: partition, account, qos, time (minutes per task),
            gpus (per run), cpus and mem (per task), parallelism (array tasks at once),
            signal_delay, requeues, sbatch (extra ``#SBATCH`` options), setup (shell lines), job_name.
        per_gpu: run one pair per GPU at a time (child processes with CUDA_VISIBLE_DEVICES).
        gpus: GPU indices for per_gpu, e.g. ``0,2`` or ``'[0, 2]'``, or a number K: the first K GPUs
            (default: every visible GPU). With ``plan``, K is the number of GPUs to plan for.
        fit_args: extra ``galgen fit`` arguments for every run, one string, e.g.
            ``--fit_args="--trainer.max_epochs=3"`` (part of the fingerprint of the runs).
        report: write ``galgen report`` of ``out`` at the end (SLURM: a job after the array).
        dry_run: print the plan and stop.
        plan: print each run's projected time and the total (``galgen_lightning.sweep.cost``:
            steps, batch, evaluation cost, throughput) for this machine's GPUs (one, or every
            visible one with ``per_gpu``) or for ``gpus`` GPUs, and stop.
        throughput: a benchmark result file (``benchmarks/bench_fit.py``, ``bench_diffusion.py``,
            ``bench_glow.py``, ``bench_gan.py`` output or ``gpu_checks.sh``'s results.jsonl)
            for ``plan``; default: the design notes' H200 reference figures, labelled as such.
        status: print the state of each run of the sweep in this folder (queued, running epoch
            k of K, complete, failed with the last line of its log, interrupted) and stop.

    Returns:
        0 when every run is complete (or, for SLURM, submitted), 1 when some failed.
    """
    if status is not None:
        from galgen_lightning.sweep.status import sweep_status

        return sweep_status(status)
    if launcher not in LAUNCHERS:
        raise GalgenError(f"sweep: --launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if isinstance(gpus, str):  # --gpus 0,2: indices
        gpus = parse_ints(gpus, "--gpus", "0,2")
    if launcher == "slurm":
        slurm.check()
        if per_gpu:
            raise GalgenError("sweep: --per_gpu is for the local launcher; with --launcher slurm use --slurm.gpus")
    out_dir = Path(out)
    extra = shlex.split(fit_args)
    overridden = (
        ("data.seed", "--seeds or --data_seed"),
        ("seed_everything", "--seeds"),
        ("data.pool_size", "--pool_size"),
        ("data.n", "--ns"),
        ("trainer.default_root_dir", "--out"),
        ("ckpt_path", "the resume rule (a rerun resumes from each run's last.ckpt)"),
    )
    for name, instead in overridden:
        if option(extra, name) is not None:
            raise GalgenError(f"sweep: --{name} in --fit_args would override the sweep's own; use {instead}")
    if seeds is not None and seed != 0:
        raise GalgenError("sweep: give --seed or --seeds, not both")
    seed_list = parse_seeds(seeds if seeds is not None else seed)
    if data_seed is not None and not 0 <= data_seed < 2**32:
        raise GalgenError(f"sweep: --data_seed must be in [0, 2**32), got {data_seed}")
    gpu_count = detect_gpus() if (profile == "auto" or per_gpu) else None
    if configs_dir is None:
        from galgen_lightning.config_files import default_configs

        configs_dir = str(default_configs())
    prof = resolve_profile(family, profile, Path(configs_dir), out_dir, gpu_count, extra)
    fraction = prof.max_fraction if max_fraction is None else max_fraction
    if not 0 < fraction <= 0.5:
        raise GalgenError(f"sweep: --max_fraction must be in (0, 0.5], got {fraction}")
    cap, size, n_val, cap_note = _cap(prof, fraction, max_n)
    kept, dropped = plan_ns(parse_ints(ns, "--ns") if ns is not None else prof.ns, cap)
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
    print(
        f"[sweep] seeds {', '.join(map(str, seed_list))}{pinned}; "
        f"every run reads the first {pool_size:,} source images (data.pool_size)",
        flush=True,
    )
    plans = plan_runs(family, prof, kept, seed_list, out_dir, extra, pool_size, data_seed)
    fp = fingerprint(prof, extra)
    for p in plans:
        old = RunDir(p.folder).launch().get("fingerprint")
        if p.action != "train" and old and old != fp:
            print(
                f"[sweep] warning: {p.folder.name} was started with other configs or arguments; "
                "delete it to retrain with the current ones",
                flush=True,
            )
        if p.warning:
            print(f"[sweep] warning: {p.folder.name} {p.warning}", flush=True)
    counts = {a: sum(p.action == a for p in plans) for a in ("skip", "resume", "train")}
    print(
        f"[sweep] {len(plans)} runs: {counts['skip']} complete (skipped), "
        f"{counts['resume']} to resume, {counts['train']} to train",
        flush=True,
    )
    if plan:
        _plan_cost(family, prof, plans, kept, gpus, per_gpu, throughput)
        return 0
    prof.write_copy()
    if dry_run:
        for p in plans:
            print(f"  {p.action:>6s}  galgen {shlex.join(p.args)}")
        return 0
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
        "launcher": launcher,
    }
    if launcher == "slurm":
        return _run_slurm(plans, out_dir, meta, slurm, report)
    devices = None
    if per_gpu:
        devices = list(range(gpus)) if isinstance(gpus, int) else list(gpus) if gpus else list(range(gpu_count or 0))
        if not devices:
            raise GalgenError("sweep: --per_gpu needs CUDA GPUs and none is visible")
        print(f"[sweep] one run per GPU on GPUs {devices}", flush=True)
    return _run_local(plans, out_dir, meta, devices, report)


def main(argv: list[str]) -> None:
    """``galgen sweep ...`` (dispatched by :func:`galgen_lightning.cli.main`)."""
    from jsonargparse import auto_cli

    from galgen_lightning.errors import one_line_argument_parser

    code = auto_cli(sweep, args=argv, prog="galgen sweep", parser_class=one_line_argument_parser())
    if code:
        sys.exit(code)
