"""The run directory: config, data manifest, status; written so an unfinished run never looks complete.

``status.json`` says ``running`` from the start (updated after every training epoch with the
epochs done and the global step), ``complete`` only after ``fit`` (or ``validate``) returns, and
``failed`` (with the error) if it raised or was interrupted.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import lightning as L

from galgen_lightning.callbacks.common import run_dir


def read_status(folder: str | Path) -> dict:
    """The ``status.json`` of a run directory, or ``{}`` if there is none (or it is unreadable)."""
    try:
        return json.loads((Path(folder) / "status.json").read_text())
    except (OSError, ValueError):
        return {}


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

    def _write_status(self, trainer: L.Trainer, state: str, **extra) -> None:
        if not trainer.is_global_zero:
            return
        folder = run_dir(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        status = {
            "state": state,
            "stage": str(trainer.state.fn),
            "command": self.command or sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            **extra,
        }
        tmp = folder / "status.json.tmp"
        tmp.write_text(json.dumps(status, indent=2) + "\n")
        tmp.replace(folder / "status.json")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.started = time.time()
        self._write_status(trainer, "running")
        if not trainer.is_global_zero:
            return
        folder = run_dir(trainer)
        if self.config_text is not None:
            (folder / "config.yaml").write_text(self.config_text)
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "manifest"):
            (folder / "manifest.json").write_text(json.dumps(dm.manifest()) + "\n")

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
        if not trainer.is_global_zero or not (run_dir(trainer) / "metrics.jsonl").is_file():
            return
        from lightning.pytorch.loggers import WandbLogger

        from galgen_lightning.evaluation.verdict import judge_run, write_verdict

        verdict = judge_run(run_dir(trainer))
        if verdict.epoch is None:  # no two-models result: nothing to judge
            return
        write_verdict(run_dir(trainer), verdict)
        summary = {"verdict": verdict.label, "verdict_evidence": verdict.text()}
        for key in ("memorization_rate", "memorization_rate_heldout", "agreement_kappa", "realism_outside_any", "gap_median"):
            value = verdict.numbers.get(key)
            if value is not None:
                summary[f"verdict/{key}"] = value
                if key in verdict.intervals:
                    summary[f"verdict/{key}_low"], summary[f"verdict/{key}_high"] = verdict.intervals[key]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update(summary)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._write_status(trainer, "failed", error=f"{type(exception).__name__}: {exception}")
