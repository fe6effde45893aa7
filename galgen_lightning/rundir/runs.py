"""Finding run directories and reading one into a :class:`Run` (through :class:`RunDir`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from galgen_lightning.rundir.folder import CHECKPOINTS, EVAL, RunDir, read_arrays


def is_run_dir(path: Path) -> bool:
    """A run directory holds a ``status.json`` or a ``metrics.jsonl``."""
    return RunDir.is_run_dir(path)


SKIP_DIRS = {"wandb", CHECKPOINTS, EVAL, "csv", "report", "logs", "lightning_logs", "__pycache__"}


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

    def last_epoch(self, test: str) -> int | None:
        """The epoch of the last record of ``test`` (None when there is none, or it names none)."""
        return _int((self.last(test) or {}).get("epoch"))

    def results_epoch(self, test: str) -> int | None:
        """The epoch whose results every reader uses (the judge, the report's rows, figures and
        galleries): the last record's when its arrays were saved, else the newest saved arrays'
        (a run stopped between the two), else the last record's."""
        logged = self.last_epoch(test)
        files = self.eval_files(test)
        return logged if logged in files or not files else max(files)

    def record(self, test: str, epoch: int | None) -> dict | None:
        """The last record of ``test`` at ``epoch`` (``None``: the last record)."""
        if epoch is None:
            return self.last(test)
        rows = [r for r in self.source(test)[1] if r.get("test") == test and _int(r.get("epoch")) == epoch]
        return rows[-1] if rows else None

    def history(self, test: str) -> list[dict]:
        """Every record of ``test``, the last one per epoch (a resumed run may repeat epochs)."""
        by_epoch: dict[int, dict] = {}
        for r in self.source(test)[1]:
            if r.get("test") == test and _int(r.get("epoch")) is not None:
                by_epoch[_int(r["epoch"])] = r
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
        """The ``.npz`` of ``test`` at ``epoch`` (default: :meth:`results_epoch`)."""
        files = self.eval_files(test)
        if not files:
            return None
        path = files.get(self.results_epoch(test) if epoch is None else epoch)
        return read_arrays(path) if path is not None else None

    def callback_args(self, name: str, test: str | None = None) -> dict:
        """``init_args`` of the callback whose class name is ``name`` in the run's config: in
        ``trainer.callbacks`` or under a top-level key (the tests' keys, ``two_models:`` ...).
        With ``test``, the config of the folder its results come from (:meth:`source`: a
        ``galgen validate`` folder may have run it with other options)."""
        folder = self.source(test)[0] if test else self.path
        config = self.config if folder == self.path else RunDir(folder).config()
        callbacks = (config.get("trainer") or {}).get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else []
        for cb in [*callbacks, *config.values()]:
            if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith(name):
                return cb.get("init_args") or {}
        return {}

    @property
    def has_results(self) -> bool:
        """Whether the run or one of its ``galgen validate`` folders recorded results."""
        return bool(self.records) or any(records for _, records in self.validations)

    @property
    def pixels(self) -> int | None:
        """Training pixels of one model: N images x channels x height x width."""
        if self.n is None or self.image_size is None:
            return None
        return self.n * self.channels * self.image_size**2


def family_of(class_path: str) -> str:
    """A pair class's family as run folders, reports, W&B and messages name it: the class name
    without ``Pair``, in lower case (``galgen_lightning.models.diffusion.DiffusionPair``: ``diffusion``)."""
    return str(class_path).rsplit(".", 1)[-1].replace("Pair", "").lower()


def _family(config: dict, folder: Path) -> str:
    class_path = str((config.get("model") or {}).get("class_path", ""))
    return family_of(class_path) if class_path else folder.name.split("-", 1)[0] or "unknown"


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
    # the run's seed is its seed_everything (initialisation, sampling); data.seed, the split's, is
    # the same unless a sweep pinned the split (--data_seed): then only seed_everything tells seeds apart
    seed_everything = config.get("seed_everything")
    seed = _int(seed_everything) if not isinstance(seed_everything, bool) else None
    seed = seed if seed is not None else _int(manifest.get("seed", data.get("seed")))
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
