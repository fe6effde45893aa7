"""The Lightning callback through which ``fit``/``validate`` write the run directory."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import lightning as L

from galgen_lightning.rundir.folder import STATUS, RunDir
from galgen_lightning.rundir.runs import family_of


def _versions() -> dict:
    from galgen_lightning.wandb_utils import software_versions

    return software_versions()


def same_subsets(reference: Path | None, manifest: dict) -> None:
    """Refuse data options that give other training subsets than the run in ``reference`` was
    trained on (its ``manifest.json``): one line naming the options that differ.

    A resumed fit would mix two training sets in one run; a validate would measure copies
    against images the model never saw. Nothing to check without both manifests.
    """
    if reference is None or not manifest:
        return
    before = RunDir(reference).manifest()
    subsets = lambda m: [((m.get("subsets") or {}).get(s) or {}).get("sha1") for s in ("a", "b")]  # noqa: E731
    if None in subsets(before) or subsets(before) == subsets(manifest):  # no manifest, or one without hashes
        return
    keys = ("source", "image_size", "n", "seed", "pool_size", "dedup_threshold")
    differ = [f"{k} {before.get(k)!r} -> {manifest.get(k)!r}" for k in keys if before.get(k) != manifest.get(k)]
    from galgen_lightning.errors import GalgenError

    raise GalgenError(
        f"these data options give other training subsets A and B than the run in {reference} was trained on "
        f"({'; '.join(differ) or 'the images differ'}): use its options, e.g. --config {Path(reference) / 'config.yaml'}"
    )


class RunDirectory(L.Callback):
    """Writes ``config.yaml``, ``manifest.json`` and ``status.json`` into the run directory (rank zero).

    Args:
        config_text: the resolved configuration as YAML (the CLI fills it in).
        command: the command line to record (default: ``sys.argv``).
    """

    def __init__(self, config_text: str | None = None, command: list[str] | None = None) -> None:
        self.config_text = config_text
        self.command = command
        self.reference: Path | None = None
        """The run directory whose training subsets this command must use (``validate``: the
        checkpoint's run; a resumed ``fit``: its own), checked at setup (the CLI sets it)."""
        self.started = time.time()
        self.set_up = False  # this process reached setup: the run directory is this run's

    def _write_status(self, trainer: L.Trainer, state: str, any_rank: bool = False, **extra) -> None:
        if not (trainer.is_global_zero or any_rank):
            return
        position = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        loaded = getattr(getattr(trainer, "lightning_module", None), "checkpoint_position", None)
        if trainer.state.fn == "validate":  # its own loop is at 0: where the checkpoint's training stood
            position["checkpoint"] = {"path": str(trainer.ckpt_path), **loaded} if loaded else None  # None: untrained
        status = {
            "state": state,
            "stage": str(trainer.state.fn),
            "command": self.command or sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **position,
            "versions": _versions(),
            **extra,
        }
        RunDir(Path(trainer.default_root_dir)).write_status(status)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = getattr(trainer, "datamodule", None)
        manifest = dm.manifest() if dm is not None and hasattr(dm, "manifest") else {}
        same_subsets(self.reference, manifest)  # before anything is written: a refused command changes nothing
        self.started = time.time()
        self.set_up = True
        self._write_status(trainer, "running")
        if not trainer.is_global_zero:
            return
        folder = RunDir(Path(trainer.default_root_dir))
        if self.config_text is not None:
            folder.write_config(self.config_text)
        if manifest:
            folder.write_manifest(manifest)
        from galgen_lightning import wandb_utils

        if wandb_utils.wandb_loggers(trainer.loggers):
            family = family_of(type(pl_module).__name__)
            seed = os.environ.get("PL_GLOBAL_SEED")
            wandb_utils.start(trainer, wandb_utils.run_config(family, manifest, int(seed) if seed else None, _versions()))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after a resume Lightning restores the loop here (after setup): watchers see where it resumed
        self._write_status(trainer, "running", epochs_done=trainer.current_epoch, max_epochs=trainer.max_epochs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # progress for whoever watches the run (galgen sweep, a user): epochs and steps done
        self._write_status(trainer, "running", epochs_done=trainer.current_epoch + 1, max_epochs=trainer.max_epochs)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_status(trainer, "complete")
        self._write_verdict(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":  # the checkpoint is loaded now: its epoch and step
            self._write_status(trainer, "running")

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

        if not self.set_up:
            # stopped before this run wrote anything (the data's setup, a W&B start, a signal while
            # rendering): no status, so a new folder goes away and an old run keeps its own state
            return
        state, extra = run_state(exception, trainer)  # interrupted (a signal), diverged, or failed (a lost DDP rank named)
        try:  # when DDP rank 0 is the one lost, the lowest surviving rank records it
            self._write_status(trainer, state, any_rank=records_for_the_lost(trainer, extra.get("lost_ranks") or []), **extra)
        except Exception as e:  # noqa: BLE001 (a full disk must not hide the error that ended the run)
            print(
                f"galgen: warning: could not record state {state} in {Path(trainer.default_root_dir) / STATUS}: {e}",
                file=sys.stderr,
            )
