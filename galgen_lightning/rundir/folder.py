"""The run directory's files and :class:`RunDir`, the one writer and reader of them (see the package)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from galgen_lightning.files import atomic_write, write_error

if TYPE_CHECKING:
    from galgen_lightning.rundir.runs import Run

CONFIG, MANIFEST, STATUS, METRICS, VERDICT, EVAL = (
    "config.yaml",
    "manifest.json",
    "status.json",
    "metrics.jsonl",
    "verdict.json",
    "eval",
)
LAUNCH, WANDB = "sweep.json", "wandb.json"
CHECKPOINTS, LAST_CHECKPOINT = "checkpoints", "last.ckpt"
"""The checkpoint folder of a run and the checkpoint a run resumes from (``checkpoints/last.ckpt``)."""


def jsonable(x: Any) -> Any:
    """``x`` as JSON holds it: numpy and torch numbers as numbers and their arrays as lists, NaN
    and infinities as None (null), paths as text; dictionaries and sequences throughout."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist") and callable(x.tolist):  # numpy and torch scalars and arrays
        return jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


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
        atomic_write(self.path / CONFIG, text.encode())

    def write_manifest(self, manifest: dict) -> None:
        """``manifest.json`` (the data split)."""
        atomic_write(self.path / MANIFEST, (json.dumps(manifest) + "\n").encode())

    def write_status(self, status: dict) -> None:
        """``status.json``, replaced atomically so a reader never sees half of it."""
        atomic_write(self.path / STATUS, (json.dumps(status, indent=2) + "\n").encode())

    def append_metrics(self, record: dict) -> None:
        """One line of ``metrics.jsonl`` (NaN and infinities become null), appended whole or not
        at all: a failed write (a full disk) is cut back off and is one line naming the file; a
        torn last line left by a killed process is ended first, so it never swallows this record."""

        path = self.path / METRICS
        line = (json.dumps(jsonable(record)) + "\n").encode()
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

    def eval_path(self, test: str, epoch: int, suffix: str, tag: str = "", create: bool = True) -> Path:
        """``eval/<test>/epoch_XXXX<tag><suffix>``, its folder created unless ``create`` is false (a reader)."""
        folder = self.path / EVAL / test
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        return folder / f"epoch_{epoch:04d}{tag}{suffix}"

    def save_arrays(self, test: str, epoch: int, arrays: dict[str, Any], tag: str = "") -> Path:
        """``eval/<test>/epoch_XXXX<tag>.npz`` (compressed)."""
        import io

        path = self.eval_path(test, epoch, ".npz", tag)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
        atomic_write(path, buffer.getbuffer())  # all or nothing
        return path

    def write_launch(self, record: dict) -> None:
        """``sweep.json``: how a launcher (``galgen sweep``) started this run (its arguments, the
        sweep's fingerprint), so a resumed sweep can tell whether the run is still its own."""
        atomic_write(self.path / LAUNCH, (json.dumps(record, indent=1) + "\n").encode())

    def launch(self) -> dict:
        return _read_json(self.path / LAUNCH)

    def write_wandb_identity(self, identity: dict) -> None:
        """``wandb.json``: the W&B run id (and project, group) this run logs to."""
        atomic_write(self.path / WANDB, (json.dumps(identity, indent=1) + "\n").encode())

    def wandb_identity(self) -> dict:
        """``wandb.json``, or ``{}`` when the run has none."""
        return _read_json(self.path / WANDB)

    def write_verdict(self, verdict: dict) -> Path:
        """``verdict.json`` (the judge's JSON)."""
        atomic_write(self.path / VERDICT, (json.dumps(verdict, indent=1) + "\n").encode())
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

    def holds_work(self) -> bool:
        """Whether anything of value is here: a checkpoint, a metrics record or an evaluation file
        (a run that failed before all of them holds only its config, manifest and status)."""
        return (
            self.has_results()
            or any((self.path / CHECKPOINTS).glob("*.ckpt"))
            or any(p.is_file() for p in (self.path / EVAL).rglob("*"))
        )

    @staticmethod
    def is_run_dir(path: str | Path) -> bool:
        """A run directory holds a ``status.json`` or a ``metrics.jsonl``."""
        path = Path(path)
        return (path / STATUS).is_file() or (path / METRICS).is_file()

    def load(self) -> Run:
        """Everything a reader needs, read once."""
        from galgen_lightning.rundir.runs import load_run

        return load_run(self.path)


def read_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an ``.npz`` file of a run directory; None, with a one-line warning, when it is
    damaged (a copy cut short, a full disk). Object arrays are left out (they would need pickle)."""
    import sys
    import zipfile
    import zlib

    out = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                try:
                    out[key] = z[key]
                except ValueError:  # an object array: not for readers
                    continue
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        print(f"galgen: warning: {path} is unreadable ({type(e).__name__}: {e}); left out", file=sys.stderr, flush=True)
        return None
    return out


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (a truncated last line, from a killed run, is skipped)."""
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):  # a stray value (null, a number) is no record
                records.append(record)
    return records
