"""The run directory: the only code that writes or reads one.

A run directory is the interface between ``galgen fit``/``validate`` (which write it), and
``galgen report``, ``galgen sweep``, ``make demo`` and the judge (which read it)::

    <run>/config.yaml        the resolved configuration (written at setup)
    <run>/manifest.json      the data split: source, seeds, indices and content hashes
    <run>/status.json        running | complete | failed | interrupted (+ signal) | diverged
                             (+ epoch, step, error), atomically replaced
    <run>/metrics.jsonl      one JSON record per evaluation (``test``, ``epoch``, ``step``, numbers),
                             append-only; a truncated last line (a killed run) is skipped
    <run>/eval/<test>/epoch_XXXX[tag].npz|.png   per-sample arrays and figures of each test
    <run>/verdict.json       the one judge's label and evidence, at the end of fit/validate
    <run>/sweep.json         how ``galgen sweep`` launched the run (arguments, fingerprint)
    <run>/wandb.json         the W&B run id, project and group (a resume continues that W&B run)
    <run>/wandb/             W&B's own files (offline runs: ``galgen sync <run>`` uploads them)
    <run>/checkpoints/       Lightning's checkpoints
    <run>/validate-<time>/   a later ``galgen validate`` of this run (a run directory itself)

:class:`RunDir` writes and reads these files; :class:`Run` is what a reader gets back, read once;
:class:`RunDirectory` is the Lightning callback through which ``fit``/``validate`` write it
(``status.json`` says ``running`` from the start, ``complete`` only after ``fit`` or ``validate``
returns, ``interrupted`` with the signal after SIGTERM/SIGINT/SIGUSR1, ``diverged`` when training
diverged, ``failed`` with the error if it raised; see :mod:`galgen_lightning.faults`).
"""

from galgen_lightning.rundir.callback import RunDirectory
from galgen_lightning.rundir.folder import (
    CHECKPOINTS,
    CONFIG,
    EVAL,
    LAST_CHECKPOINT,
    LAUNCH,
    MANIFEST,
    METRICS,
    STATUS,
    VERDICT,
    WANDB,
    RunDir,
    jsonable,
    read_metrics,
)
from galgen_lightning.rundir.runs import SKIP_DIRS, Run, family_of, find_runs, is_run_dir, load_run

__all__ = [
    "CHECKPOINTS",
    "LAST_CHECKPOINT",
    "CONFIG",
    "EVAL",
    "LAUNCH",
    "MANIFEST",
    "METRICS",
    "SKIP_DIRS",
    "STATUS",
    "VERDICT",
    "WANDB",
    "Run",
    "RunDir",
    "RunDirectory",
    "family_of",
    "jsonable",
    "find_runs",
    "is_run_dir",
    "load_run",
    "read_metrics",
]
