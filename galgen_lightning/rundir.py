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

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

CONFIG, MANIFEST, STATUS, METRICS, VERDICT, EVAL = "config.yaml", "manifest.json", "status.json", "metrics.jsonl", "verdict.json", "eval"
LAUNCH, WANDB = "sweep.json", "wandb.json"



def _jsonable(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_atomic(path: Path, text: str) -> None:
    """All or nothing (temporary file, fsync, rename); a failed write is one line naming ``path``."""
    from galgen_lightning.faults import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


class RunDir:
    """One run directory (see the module docstring for its layout).

    Args:
        path: the folder (created on the first write).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # --- writing --------------------------------------------------------------------------
    def write_config(self, text: str) -> None:
        """``config.yaml`` (the resolved configuration as YAML)."""
        _write_atomic(self.path / CONFIG, text)

    def write_manifest(self, manifest: dict) -> None:
        """``manifest.json`` (the data split)."""
        _write_atomic(self.path / MANIFEST, json.dumps(manifest) + "\n")

    def write_status(self, status: dict) -> None:
        """``status.json``, replaced atomically so a reader never sees half of it."""
        _write_atomic(self.path / STATUS, json.dumps(status, indent=2) + "\n")

    def append_metrics(self, record: dict) -> None:
        """One line of ``metrics.jsonl`` (NaN and infinities become null), appended whole or not
        at all: a failed write (a full disk) is cut back off and is one line naming the file; a
        torn last line left by a killed process is ended first, so it never swallows this record."""
        import os

        from galgen_lightning.faults import write_error

        path = self.path / METRICS
        line = (json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n").encode()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise write_error(path, e) from None
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            try:
                done = 0
                while done < len(line):  # a short write (the disk filled up) fails on the next one
                    done += os.write(fd, line[done:])
            except OSError as e:
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass
                raise write_error(path, e) from None
        finally:
            os.close(fd)

    def eval_path(self, test: str, epoch: int, suffix: str, tag: str = "") -> Path:
        """``eval/<test>/epoch_XXXX<tag><suffix>``, its folder created."""
        folder = self.path / EVAL / test
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"epoch_{epoch:04d}{tag}{suffix}"

    def save_arrays(self, test: str, epoch: int, arrays: dict[str, Any], tag: str = "") -> Path:
        """``eval/<test>/epoch_XXXX<tag>.npz`` (compressed)."""
        import io

        from galgen_lightning.faults import atomic_write_bytes

        path = self.eval_path(test, epoch, ".npz", tag)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
        atomic_write_bytes(path, buffer.getbuffer())  # all or nothing
        return path

    def write_launch(self, record: dict) -> None:
        """``sweep.json``: how a launcher (``galgen sweep``) started this run (its arguments, the
        sweep's fingerprint), so a resumed sweep can tell whether the run is still its own."""
        _write_atomic(self.path / LAUNCH, json.dumps(record, indent=1) + "\n")

    def launch(self) -> dict:
        return _read_json(self.path / LAUNCH)

    def write_wandb_identity(self, identity: dict) -> None:
        """``wandb.json``: the W&B run id (and project, group) this run logs to."""
        _write_atomic(self.path / WANDB, json.dumps(identity, indent=1) + "\n")

    def wandb_identity(self) -> dict:
        """``wandb.json``, or ``{}`` when the run has none."""
        return _read_json(self.path / WANDB)

    def write_verdict(self, verdict: dict) -> Path:
        """``verdict.json`` (the judge's JSON)."""
        _write_atomic(self.path / VERDICT, json.dumps(verdict, indent=1) + "\n")
        return self.path / VERDICT

    # --- reading --------------------------------------------------------------------------
    def status(self) -> dict:
        """``status.json``, or ``{}`` when there is none (or it is unreadable)."""
        return _read_json(self.path / STATUS)

    def manifest(self) -> dict:
        return _read_json(self.path / MANIFEST)

    def config(self) -> dict:
        return _read_yaml(self.path / CONFIG)

    def verdict(self) -> dict:
        return _read_json(self.path / VERDICT)

    def records(self, test: str | None = None) -> list[dict]:
        """The records of ``metrics.jsonl`` (of one ``test`` if given); a truncated line is skipped."""
        path = self.path / METRICS
        if not path.is_file():
            return []
        return [r for r in read_metrics(path) if test is None or r.get("test") == test]

    def has_results(self) -> bool:
        return (self.path / METRICS).is_file()

    @staticmethod
    def is_run_dir(path: str | Path) -> bool:
        """A run directory holds a ``status.json`` or a ``metrics.jsonl``."""
        path = Path(path)
        return (path / STATUS).is_file() or (path / METRICS).is_file()

    def load(self) -> Run:
        """Everything a reader needs, read once."""
        return load_run(self.path)


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (a truncated last line, from a killed run, is skipped)."""
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def is_run_dir(path: Path) -> bool:
    """A run directory holds a ``status.json`` or a ``metrics.jsonl``."""
    return RunDir.is_run_dir(path)


SKIP_DIRS = {"wandb", "checkpoints", "eval", "csv", "report", "logs", "lightning_logs", "__pycache__"}


def find_runs(path: Path, max_depth: int = 4) -> list[Path]:
    """``path`` itself when it is a run directory, else every run directory below it.

    A run's own sub-folders (``validate-*`` runs, ``eval``, ``wandb``, ...) and hidden folders
    (a sweep's discarded attempts) are not searched.
    """
    if is_run_dir(path):
        return [path]
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir())
        except OSError:
            return
        for child in children:
            if child.name.startswith(".") or child.name in SKIP_DIRS:
                continue
            if is_run_dir(child):
                found.append(child)
            elif depth < max_depth:
                walk(child, depth + 1)

    walk(path, 1)
    return found


@dataclass
class Run:
    """What one run directory holds, read once."""

    path: Path
    status: dict
    config: dict
    manifest: dict
    records: list[dict]
    family: str
    n: int | None
    seed: int | None
    image_size: int | None
    channels: int = 1
    parameters: dict[str, int] = field(default_factory=dict)
    parameters_note: str = ""
    validations: list[tuple[Path, list[dict]]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state(self) -> str:
        return str(self.status.get("state") or self.status.get("status") or "unknown")

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    @property
    def group(self) -> str:
        """Runs of one family and image size form one curve over N."""
        return f"{self.family} ({self.image_size} px)" if self.image_size else self.family

    def source(self, test: str) -> tuple[Path, list[dict]]:
        """Where ``test``'s results are: the run itself, or else its newest ``galgen validate``
        folder (``<run>/validate-<time>/``) that has them (e.g. a test added after training)."""
        if any(r.get("test") == test for r in self.records):
            return self.path, self.records
        for folder, records in reversed(self.validations):
            if any(r.get("test") == test for r in records):
                return folder, records
        return self.path, self.records

    def last(self, test: str) -> dict | None:
        """The last ``metrics.jsonl`` record of ``test``."""
        rows = [r for r in self.source(test)[1] if r.get("test") == test]
        return rows[-1] if rows else None

    def history(self, test: str) -> list[dict]:
        """Every record of ``test``, the last one per epoch (a resumed run may repeat epochs)."""
        by_epoch: dict[int, dict] = {}
        for r in self.source(test)[1]:
            if r.get("test") == test and r.get("epoch") is not None:
                by_epoch[int(r["epoch"])] = r
        return [by_epoch[e] for e in sorted(by_epoch)]

    def eval_files(self, test: str) -> dict[int, Path]:
        """``{epoch: eval/<test>/epoch_XXXX.npz}`` (of :meth:`source`)."""
        folder = self.source(test)[0] / "eval" / test
        out = {}
        for p in folder.glob("epoch_*.npz") if folder.is_dir() else []:
            m = re.fullmatch(r"epoch_(\d+)\.npz", p.name)
            if m:
                out[int(m.group(1))] = p
        return dict(sorted(out.items()))

    def arrays(self, test: str, epoch: int | None = None) -> dict[str, np.ndarray] | None:
        """The ``.npz`` of ``test`` at ``epoch`` (default: the epoch of its last record, else the last file)."""
        files = self.eval_files(test)
        if not files:
            return None
        if epoch is None:
            last = self.last(test)
            epoch = int(last["epoch"]) if last and last.get("epoch") is not None and int(last["epoch"]) in files else max(files)
        path = files.get(epoch)
        if path is None:
            return None
        out = {}
        try:
            with np.load(path, allow_pickle=False) as z:
                for key in z.files:
                    try:
                        out[key] = z[key]
                    except ValueError:  # an object array: not for the report
                        continue
        except (OSError, ValueError):
            return None
        return out

    def callback_args(self, name: str) -> dict:
        """``init_args`` of the callback whose class name is ``name`` in the run's config."""
        callbacks = (self.config.get("trainer") or {}).get("callbacks") or []
        for cb in callbacks if isinstance(callbacks, list) else []:
            if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith(name):
                return cb.get("init_args") or {}
        return {}

    @property
    def pixels(self) -> int | None:
        """Training pixels of one model: N images x channels x height x width."""
        if self.n is None or self.image_size is None:
            return None
        return self.n * self.channels * self.image_size**2


def _family(config: dict, folder: Path) -> str:
    class_path = str((config.get("model") or {}).get("class_path", ""))
    if class_path:
        return class_path.rsplit(".", 1)[-1].replace("Pair", "").lower()
    return folder.name.split("-", 1)[0] or "unknown"


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def load_run(path: Path) -> Run:
    """Read one run directory (no model is built; see :func:`count_parameters`)."""
    rd = RunDir(path)
    status, config, manifest, records = rd.status(), rd.config(), rd.manifest(), rd.records()
    data = config.get("data") or {}
    n = _int(manifest.get("n", data.get("n")))
    if n is None:
        m = re.search(r"(?:^|-)n(\d+)(?:-|$)", path.name)
        n = int(m.group(1)) if m else None
    seed = _int(manifest.get("seed", data.get("seed")))
    image_size = _int(manifest.get("image_size", data.get("image_size")))
    init = (config.get("model") or {}).get("init_args") or {}
    channels = _int(init.get("channels")) or 1
    run = Run(path, status, config, manifest, records, _family(config, path), n, seed, image_size, channels)
    for folder in sorted(p for p in path.glob("validate-*") if RunDir(p).has_results()):
        run.validations.append((folder, RunDir(folder).records()))
    given = manifest.get("parameters") or status.get("parameters")
    if isinstance(given, dict):
        run.parameters = {str(k): int(v) for k, v in given.items() if _int(v) is not None}
        run.parameters_note = "from the run directory"
    return run


def _versions() -> dict:
    from galgen_lightning.wandb_utils import software_versions

    return software_versions()


class RunDirectory(L.Callback):
    """Writes ``config.yaml``, ``manifest.json`` and ``status.json`` into the run directory (rank zero).

    Args:
        config_text: the resolved configuration as YAML (the CLI fills it in).
        command: the command line to record (default: ``sys.argv``).
    """

    def __init__(self, config_text: str | None = None, command: list[str] | None = None) -> None:
        self.config_text = config_text
        self.command = command
        self.started = time.time()

    def _write_status(self, trainer: L.Trainer, state: str, any_rank: bool = False, **extra) -> None:
        if not (trainer.is_global_zero or any_rank):
            return
        status = {
            "state": state,
            "stage": str(trainer.state.fn),
            "command": self.command or sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "versions": _versions(),
            **extra,
        }
        RunDir(Path(trainer.default_root_dir)).write_status(status)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.started = time.time()
        self._write_status(trainer, "running")
        if not trainer.is_global_zero:
            return
        folder = RunDir(Path(trainer.default_root_dir))
        if self.config_text is not None:
            folder.write_config(self.config_text)
        dm = getattr(trainer, "datamodule", None)
        manifest = dm.manifest() if dm is not None and hasattr(dm, "manifest") else {}
        if manifest:
            folder.write_manifest(manifest)
        from galgen_lightning import wandb_utils

        if wandb_utils.wandb_loggers(trainer.loggers):
            family = type(pl_module).__name__.replace("Pair", "").lower()
            seed = os.environ.get("PL_GLOBAL_SEED")
            wandb_utils.start(trainer, wandb_utils.run_config(family, manifest, int(seed) if seed else None, _versions()))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # progress for whoever watches the run (galgen sweep, a user): epochs and steps done
        self._write_status(trainer, "running", epochs_done=trainer.current_epoch + 1, max_epochs=trainer.max_epochs)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_status(trainer, "complete")
        self._write_verdict(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._write_status(trainer, "complete")
            self._write_verdict(trainer)

    def _write_verdict(self, trainer: L.Trainer) -> None:
        """``verdict.json`` from the one judge, and the same label and numbers in the W&B run summary."""
        folder = RunDir(Path(trainer.default_root_dir))
        if not trainer.is_global_zero or not folder.has_results():
            return
        from galgen_lightning import wandb_utils
        from galgen_lightning.evaluation.verdict import judge_run

        verdict = judge_run(folder.load())
        if verdict.epoch is None:  # no two-models result: nothing to judge
            return
        folder.write_verdict(verdict.to_json())
        summary = {"verdict": verdict.label, "verdict_evidence": verdict.text()}
        for key in ("memorization_rate", "memorization_rate_heldout", "agreement_kappa", "realism_outside_any", "gap_median"):
            value = verdict.numbers.get(key)
            if value is not None:
                summary[f"verdict/{key}"] = value
                if key in verdict.intervals:
                    summary[f"verdict/{key}_low"], summary[f"verdict/{key}_high"] = verdict.intervals[key]
        wandb_utils.write_summary(trainer.loggers, summary)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from galgen_lightning.faults import run_state
        from galgen_lightning.faults.ddp import records_for_the_lost

        state, extra = run_state(exception, trainer)  # interrupted (a signal), diverged, or failed (a lost DDP rank named)
        try:  # when DDP rank 0 is the one lost, the lowest surviving rank records it
            self._write_status(trainer, state, any_rank=records_for_the_lost(trainer, extra.get("lost_ranks") or []), **extra)
        except Exception as e:  # noqa: BLE001 (a full disk must not hide the error that ended the run)
            print(f"galgen: warning: could not record state {state} in {Path(trainer.default_root_dir) / STATUS}: {e}", file=sys.stderr)
