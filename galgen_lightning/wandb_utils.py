"""Every W&B decision of galgen in one place.

- :func:`choose_mode`: online or offline. ``WANDB_MODE`` always wins; otherwise galgen goes online
  when credentials exist (``WANDB_API_KEY``, ``WANDB_BASE_URL`` or any machine in netrc, so a
  self-hosted server counts) and offline when none do.
- :func:`configure` (before the W&B run starts): the run's identity. ``group`` is the sweep's
  folder (a run launched by ``galgen sweep``) or the run's own name, ``tags`` the family and
  ``n=<N>``, ``job_type`` the subcommand, and the W&B run id is the one kept in the run directory
  (``wandb.json``), so a resume (``--ckpt_path``, a requeue, ``galgen sweep`` resuming)
  continues the same W&B run (``resume="allow"``). Start-up waits ``GALGEN_WANDB_INIT_TIMEOUT``
  seconds (default 15) at most.
- :func:`start` (at setup, rank zero): starts the W&B run; when the server cannot be reached in
  time, one warning line and the run goes on offline (``galgen sync <run>``
  uploads it later). Then the run config (family, N, seeds, image size, split SHA-1, source,
  versions, git commit) and ``define_metric``: every evaluation metric is charted against
  ``epoch``.
- :func:`epoch_metrics` and :func:`write_summary`: what the evaluation callbacks and the verdict
  send to W&B.
- :func:`log_sweep` (``galgen report`` of a sweep): one W&B run of ``job_type`` ``sweep`` in the
  sweep's group, with the sweep table (every run's label and numbers with intervals) and charts
  of the memorization rate, the own-minus-other gap and the A-vs-B agreement against N.
"""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path
from typing import Any

from galgen_lightning.errors import first_line


def eval_prefixes(trainer) -> list[str]:
    """The metric prefixes charted per epoch (``<prefix>/*`` against ``epoch``): the name of
    each test the run has on, the built-in ones and a user's own alike."""
    from galgen_lightning.evaluation.base import EvalCallback

    return sorted({cb.name for cb in trainer.callbacks if isinstance(cb, EvalCallback)})


def init_timeout() -> float:
    """Seconds W&B may take to start a run before galgen goes offline."""
    try:
        return max(1.0, float(os.environ.get("GALGEN_WANDB_INIT_TIMEOUT", "15")))
    except ValueError:
        return 15.0


def logged_in() -> bool:
    """Whether W&B credentials exist: ``WANDB_API_KEY``, ``WANDB_BASE_URL`` (a self-hosted
    server), or any machine in the netrc file (``NETRC``, default ``~/.netrc``)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_BASE_URL"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc")).expanduser()
    try:
        return bool(netrc.netrc(str(path)).hosts)
    except (OSError, netrc.NetrcParseError):
        return False


WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")
"""The values W&B accepts for ``WANDB_MODE``."""


def choose_mode() -> str:
    """Set ``WANDB_MODE`` to ``offline`` unless it is set or credentials exist; return the mode.

    Raises:
        GalgenError: ``WANDB_MODE`` set to a value W&B does not know (it would fail later with a
            traceback, after the run directory was made).
    """
    mode = os.environ.get("WANDB_MODE")
    if mode is not None and mode not in WANDB_MODES:
        from galgen_lightning.errors import GalgenError

        raise GalgenError(f"WANDB_MODE={mode!r} is not one of {', '.join(WANDB_MODES)}")
    if "WANDB_MODE" not in os.environ and not logged_in():
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    return os.environ.get("WANDB_MODE", "online")


def software_versions() -> dict:
    """galgen, torch, lightning, CUDA and Python versions and the git commit of galgen's checkout
    (``None`` outside one; ``git_dirty`` when it has uncommitted changes), recorded in
    ``status.json`` (``versions``) and in the W&B run config."""
    global _VERSIONS
    if _VERSIONS is None:
        import platform
        import subprocess
        from importlib.metadata import PackageNotFoundError, version

        import lightning
        import torch

        def _version(name: str) -> str | None:
            try:
                return version(name)
            except PackageNotFoundError:
                return None

        out = {
            "galgen": _version("galgen"),
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "git_commit": None,
        }
        here = Path(__file__).resolve().parent
        try:
            commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
            if commit.returncode == 0 and (here.parent / ".git").exists():
                out["git_commit"] = commit.stdout.strip()
                dirty = subprocess.run(
                    ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                )
                out["git_dirty"] = bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            pass
        _VERSIONS = out
    return dict(_VERSIONS)


_VERSIONS: dict | None = None


def wandb_loggers(loggers) -> list:
    from lightning.pytorch.loggers import WandbLogger

    return [logger for logger in loggers if isinstance(logger, WandbLogger)]


def configure(loggers, folder: Path, cfg, subcommand: str) -> None:
    """Give each ``WandbLogger`` the run's identity before its W&B run starts (rank zero or not).

    Args:
        loggers: the Trainer's loggers.
        folder: the run directory of this command (``<run>`` for fit, ``<run>/validate-<time>``).
        cfg: the parsed configuration of the subcommand.
        subcommand: ``fit`` or ``validate``.
    """
    from galgen_lightning.rundir import RunDir

    chosen = wandb_loggers(loggers)
    if not chosen or os.environ.get("WANDB_MODE") == "disabled":
        return
    ckpt = getattr(cfg, "ckpt_path", None)
    run_folder = folder if subcommand == "fit" else folder.parent
    sweep = bool(RunDir(run_folder).launch())
    group = run_folder.parent.name if sweep else run_folder.name
    from galgen_lightning.rundir import family_of

    family = family_of(getattr(cfg.model, "class_path", "") or "")
    n = getattr(cfg.data, "n", None)
    tags = [t for t in (family, f"n={n}" if n is not None else None) if t]
    identity = RunDir(folder).wandb_identity()
    run_id = identity.get("id")
    if run_id is None and subcommand == "fit" and ckpt and Path(ckpt).is_file():  # resuming into a new folder
        run_id = RunDir(Path(ckpt).resolve().parent.parent).wandb_identity().get("id")
    if run_id is None:
        run_id = _new_id()
    for logger in chosen:
        init = logger._wandb_init  # Lightning's arguments of wandb.init, read when the run starts
        if init.get("id") is None:
            init["id"] = run_id
        init["resume"] = "allow"
        for key, value in (("group", group), ("job_type", subcommand), ("settings", None)):
            if init.get(key) is None:
                init[key] = value if key != "settings" else _settings()
        init["tags"] = list(dict.fromkeys([*(init.get("tags") or []), *tags]))
        logger._id = init["id"]
    if _is_rank_zero():
        RunDir(folder).write_wandb_identity(
            {"id": chosen[0]._wandb_init["id"], "project": chosen[0]._wandb_init.get("project"), "group": group}
        )


def _settings():
    import wandb

    return wandb.Settings(init_timeout=init_timeout())


def _is_rank_zero() -> bool:
    from galgen_lightning.faults import is_rank_zero_launch

    return is_rank_zero_launch()


def connect(loggers) -> None:
    """Start the W&B run of each ``WandbLogger`` now (rank zero), offline if the server does not
    answer in time. The CLI calls it before ``fit``/``validate``: Lightning starts the run in its
    own setup, before any callback could catch a failure."""
    if not _is_rank_zero():
        return
    for logger in wandb_loggers(loggers):
        try:
            logger.experiment  # noqa: B018 (starts the run)
        except Exception as e:  # noqa: BLE001 (wandb raises CommError, UsageError, timeouts)
            _go_offline(e, logger.save_dir or ".")
            logger._experiment = None
            logger._wandb_init["mode"] = "offline"
            logger.experiment  # noqa: B018


def start(trainer, config: dict) -> None:
    """Start the W&B run of each ``WandbLogger`` (rank zero) as :func:`connect` does, then give
    it its config and the per-epoch charts."""
    if not trainer.is_global_zero:
        return
    connect(trainer.loggers)
    for logger in wandb_loggers(trainer.loggers):
        experiment = logger.experiment
        if not hasattr(experiment, "define_metric"):
            continue
        experiment.config.update(config, allow_val_change=True)
        experiment.define_metric("epoch")
        for prefix in eval_prefixes(trainer):
            experiment.define_metric(f"{prefix}/*", step_metric="epoch")


def run_config(cfg_family: str, manifest: dict, seed_everything: Any, versions: dict) -> dict:
    """What the W&B config says about the run: family, N, seeds, image size, split, source, versions."""
    source = manifest.get("source")
    return {
        "family": cfg_family,
        "n": manifest.get("n"),
        "n_val": manifest.get("n_val"),
        "data_seed": manifest.get("seed"),
        "seed_everything": seed_everything,
        "image_size": manifest.get("image_size"),
        "split_sha1": manifest.get("split_sha1"),
        "source": source if isinstance(source, (str, int, float, bool)) or source is None else str(source),
        "versions": versions,
    }


def epoch_metrics(loggers, metrics: dict[str, float], epoch: int, step: int) -> None:
    """Log evaluation metrics with ``epoch`` (their W&B x axis); each key is tied to ``epoch`` the
    first time it is seen (a glob of :func:`start` covers it too)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            experiment = logger.experiment
            if hasattr(experiment, "define_metric"):
                seen = logger.__dict__.setdefault("_galgen_epoch_keys", set())
                for key in metrics:
                    if key not in seen:
                        experiment.define_metric(key, step_metric="epoch")
                        seen.add(key)
            logger.log_metrics({**metrics, "epoch": epoch}, step=step)
        else:
            logger.log_metrics(metrics, step=step)


def write_summary(loggers, summary: dict) -> None:
    """The judge's label and numbers in the W&B run summary."""
    for logger in wandb_loggers(loggers):
        logger.experiment.summary.update(summary)


def _start_run(**init: Any):
    """``wandb.init`` within :func:`init_timeout`; offline (one warning line) when the server does not answer."""
    import wandb

    try:
        return wandb.init(**init, settings=_settings())
    except Exception as e:  # noqa: BLE001 (wandb raises CommError, UsageError, timeouts)
        _go_offline(e, init["dir"])
        return wandb.init(**{**init, "mode": "offline"}, settings=_settings())


def _go_offline(error: BaseException, folder: Any) -> None:
    """After a W&B run failed to start: one warning line (how to upload later), and W&B's state
    cleared so that the same run can start again offline."""
    import wandb

    print(
        f"galgen: warning: W&B did not start ({first_line(error)}); logging offline: upload later with 'galgen sync {folder}'",
        file=sys.stderr,
    )
    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()  # the service still holds the failed run's id


def log_sweep(sweep: Path, rows: list[dict] | None = None, folder: Path | None = None, summary: dict | None = None) -> str | None:
    """Log a sweep to one W&B run: the sweep table and its charts against N.

    The run has ``job_type`` ``sweep``, the sweep folder's name as ``group`` (the group of the
    sweep's training runs too), and the project most of the runs logged to (their ``wandb.json``;
    default ``galgen``). Its id is kept in ``<folder>/wandb.json``, so a later report of the same
    sweep logs into the same W&B run. Logged: ``sweep/table`` (a ``wandb.Table`` with the columns of
    :data:`galgen_lightning.report.table.COLUMNS`), one line chart per statistic of
    :data:`~galgen_lightning.report.table.CHARTS` (``sweep/<statistic>``: per family group and
    seed, the statistic and its interval bounds as series ``low``/``high``), and ``summary``
    in the run summary. Online or offline as :func:`choose_mode` decides; nothing when
    ``WANDB_MODE=disabled``.

    Args:
        sweep: the sweep folder.
        rows: the sweep table (default: every run below ``sweep``, read through the run
            directories and judged as ``galgen report`` does: :func:`~galgen_lightning.report.table.sweep_rows`).
        folder: where the W&B files and ``wandb.json`` go (default ``<sweep>/report``).
        summary: extra numbers for the run summary (e.g. N* per family group).

    Returns:
        The W&B run id, or ``None`` when W&B is disabled.
    """
    from collections import Counter

    from galgen_lightning.report.table import CHARTS, COLUMNS, chart_series, sweep_rows
    from galgen_lightning.rundir import RunDir, find_runs

    if choose_mode() == "disabled":
        return None
    sweep = Path(sweep)
    folder = Path(folder) if folder is not None else sweep / "report"
    folder.mkdir(parents=True, exist_ok=True)
    if rows is None:
        rows = sweep_rows(sweep)
    projects = Counter(RunDir(p).wandb_identity().get("project") for p in find_runs(sweep))
    projects.pop(None, None)
    identity = RunDir(folder).wandb_identity()
    project = identity.get("project") or (projects.most_common(1)[0][0] if projects else "galgen")
    run_id = identity.get("id") or _new_id()
    group = sweep.resolve().name
    import wandb

    run = _start_run(
        project=project,
        id=run_id,
        resume="allow",
        group=group,
        job_type="sweep",
        name=f"{group}-sweep",
        tags=sorted({str(r["family"]) for r in rows if r.get("family")}),
        dir=str(folder),
        config={"sweep": str(sweep), "runs": len(rows)},
    )
    RunDir(folder).write_wandb_identity({"id": run.id, "project": project, "group": group})
    try:
        data = [[row.get(c) for c in COLUMNS] for row in rows]
        payload: dict[str, Any] = {"sweep/table": wandb.Table(columns=list(COLUMNS), data=data)}
        for key, title in CHARTS.items():
            series = chart_series(rows, key)
            if series:
                names, xs, ys = zip(*series)
                payload[f"sweep/{key}"] = wandb.plot.line_series(
                    xs=list(xs), ys=list(ys), keys=list(names), title=title, xname="N (images per model)"
                )
        run.log(payload)
        run.summary.update({"runs": len(rows), **(summary or {})})
    finally:
        run.finish()
    return run_id


def _new_id() -> str:
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
