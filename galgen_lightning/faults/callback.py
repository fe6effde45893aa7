"""The Lightning callback of every galgen run: signals at step boundaries, atomic checkpoints, DDP ranks.

:class:`FaultTolerance` (the CLI adds it to every run) stops a signalled ``fit`` at the next step
boundary with a checkpoint of that point, makes checkpoint writes atomic
(:class:`~galgen_lightning.faults.writes.AtomicCheckpointIO`) and, under DDP, keeps each rank's
heartbeat (:mod:`galgen_lightning.faults.ddp`) so that a rank that dies or hangs can be named.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from galgen_lightning.faults import ddp
from galgen_lightning.faults.signals import agree_max, arm, clear_pending, pending_signal
from galgen_lightning.faults.state import Interrupted
from galgen_lightning.faults.writes import AtomicCheckpointIO
from galgen_lightning.rundir.folder import CHECKPOINTS, LAST_CHECKPOINT


def checkpoint_dir(trainer: L.Trainer) -> Path:
    """The checkpoint callback's folder, else ``<run>/checkpoints``."""
    callback = getattr(trainer, "checkpoint_callback", None)
    folder = getattr(callback, "dirpath", None)
    return Path(folder) if folder else Path(trainer.default_root_dir) / CHECKPOINTS


class FaultTolerance(L.Callback):
    """Stops a signalled ``fit`` at the next step boundary with a checkpoint of that point, and
    makes checkpoint writes atomic (the CLI adds it to every run).

    The checkpoint is ``last.ckpt`` in the checkpoint folder: ``--ckpt_path <run>/checkpoints/last.ckpt``
    (and ``galgen sweep``) resumes from that step.
    """

    def __init__(self) -> None:
        self.heartbeat: ddp.Heartbeat | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if (
            not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
            and type(trainer.strategy.checkpoint_io) is TorchCheckpointIO
        ):
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if trainer.world_size > 1:  # DDP: a heartbeat per rank, so that a rank that dies or hangs is named
            self.heartbeat = ddp.Heartbeat(trainer.default_root_dir, trainer.global_rank)
            self.heartbeat.start()
            if trainer.global_rank == 0:
                ddp.on_child_lost(lambda lost: _record(trainer, pl_module, lost))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        arm(True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat()
        self._stop_if_signalled(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._stop_if_signalled(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_signalled(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        arm(False)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        arm(False)

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        signum = agree_max(trainer, pending_signal() or 0)
        if not signum:
            return
        path = checkpoint_dir(trainer) / LAST_CHECKPOINT
        from lightning.pytorch.callbacks import ModelCheckpoint

        for callback in trainer.checkpoint_callbacks:  # so that, resumed, it replaces this last.ckpt (not last-v1.ckpt)
            if isinstance(callback, ModelCheckpoint) and callback.dirpath and Path(callback.dirpath) == path.parent:
                callback.last_model_path = str(path)
        trainer.save_checkpoint(path)
        clear_pending()
        raise Interrupted(signum, step=trainer.global_step, checkpoint=str(path))


def _record(trainer: L.Trainer, pl_module: L.LightningModule, lost: ddp.RankLost) -> None:
    """Record a lost rank in the run directory (from the launcher's watcher, before it stops every rank)."""
    from galgen_lightning.rundir import RunDirectory

    for callback in trainer.callbacks:
        if isinstance(callback, RunDirectory):
            callback.on_exception(trainer, pl_module, lost)
