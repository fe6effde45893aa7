"""The run directory: config, data manifest, status; written so an unfinished run never looks complete.

``status.json`` says ``running`` from the start (updated after every training epoch with the
epochs done and the global step), ``complete`` only after ``fit`` (or ``validate``) returns, and
``failed`` (with the error) if it raised or was interrupted.
"""

from __future__ import annotations

import sys
import time

import lightning as L

from galgen_lightning.callbacks.common import run_dir
from galgen_lightning.rundir import RunDir


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
        RunDir(run_dir(trainer)).write_status(status)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.started = time.time()
        self._write_status(trainer, "running")
        if not trainer.is_global_zero:
            return
        folder = RunDir(run_dir(trainer))
        if self.config_text is not None:
            folder.write_config(self.config_text)
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "manifest"):
            folder.write_manifest(dm.manifest())

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
        folder = RunDir(run_dir(trainer))
        if not trainer.is_global_zero or not folder.has_results():
            return
        from lightning.pytorch.loggers import WandbLogger

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
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update(summary)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._write_status(trainer, "failed", error=f"{type(exception).__name__}: {exception}")
