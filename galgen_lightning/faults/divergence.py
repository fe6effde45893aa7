"""Divergence: the skipped-update guard every family shares.

A non-finite loss or gradient, or a loss far above its running median, skips that model's update
(:class:`UpdateGuard`); ``max_bad_steps`` skipped updates of one model in a row, or one loss
spike, stop training with :class:`~galgen_lightning.faults.state.Diverged` (state ``diverged``).
Under DDP the ranks agree (:func:`agree_on_all_ranks`), so replicas never drift.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque

import lightning as L
import torch

from galgen_lightning.errors import GalgenError
from galgen_lightning.faults.state import Diverged

log = logging.getLogger(__name__)


def agree_on_all_ranks(flags: torch.Tensor, values: torch.Tensor | None = None) -> tuple[list[bool], list[float]]:
    """Per-model "ok" flags ANDed, and loss values maxed, over all processes (one host sync).

    A model whose update is bad on any rank skips it on every rank, so DDP replicas never drift.
    """
    flags = flags.float()
    values = (
        torch.zeros_like(flags) if values is None else torch.nan_to_num(values.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    )
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
    both = torch.cat([flags, values]).tolist()
    n = len(flags)
    return [bool(v) for v in both[:n]], both[n:]


class UpdateGuard:
    """Skipped-update bookkeeping of one pair (models ``"a"`` and ``"b"``), shared by every family.

    Per optimizer step: :meth:`mark` a model whose update must be skipped (its gradients are
    then dropped, so the optimizer leaves its weights alone), :meth:`observe` each finite loss
    (a loss above ``max_loss_ratio`` times the median of the last ``window`` ones is a spike:
    skipped, and training stops); :meth:`end_step` counts, logs and raises :class:`Diverged`
    after ``max_bad_steps`` skipped updates of one model in a row.

    Args:
        family: the family's name, for messages.
        max_bad_steps: consecutive skipped updates of one model that stop training.
        max_loss_ratio: a loss above this multiple of its running median stops training (None: off).
        window: losses in the running median.
        min_history: losses needed before the spike test applies.
    """

    def __init__(
        self, family: str, max_bad_steps: int = 20, max_loss_ratio: float | None = None, window: int = 100, min_history: int = 20
    ) -> None:
        if max_bad_steps < 1:
            raise GalgenError(f"model.max_bad_steps must be positive, got {max_bad_steps}")
        if max_loss_ratio is not None and not max_loss_ratio > 1:
            raise GalgenError(f"model.max_loss_ratio must be above 1 (or null), got {max_loss_ratio}")
        self.family = family
        self.max_bad_steps = max_bad_steps
        self.max_loss_ratio = max_loss_ratio
        self.min_history = min_history
        self.models = ("a", "b")
        self.skipped = {w: 0 for w in self.models}
        self.streak = {w: 0 for w in self.models}
        self.bad_now = {w: "" for w in self.models}
        self.spike = {w: "" for w in self.models}
        self.history = {w: deque(maxlen=window) for w in self.models}
        self.stepped = False
        self._recorded = {w: 0 for w in self.models}

    def mark(self, which: str, reason: str) -> None:
        self.bad_now[which] = self.bad_now[which] or reason

    def observe(self, which: str, loss: float) -> None:
        """A finite loss of ``which`` this step: a spike above the running median is marked."""
        if not math.isfinite(loss):
            self.mark(which, "loss")
            return
        hist = self.history[which]
        if self.max_loss_ratio is not None and len(hist) >= self.min_history:
            median = statistics.median(hist)
            if median > 0 and loss > self.max_loss_ratio * median:
                self.spike[which] = (
                    f"loss {loss:.3g} is above {self.max_loss_ratio:g} x its running median {median:.3g} (model.max_loss_ratio)"
                )
                self.mark(which, "loss spike")
                return
        hist.append(loss)

    def guard_losses(
        self,
        module: torch.nn.Module,
        losses: dict[str, torch.Tensor],
        finite: dict[str, torch.Tensor] | None = None,
        what: str = "loss",
    ) -> torch.Tensor:
        """The total loss to back-propagate: each model's loss, or a zero over its parameters when
        its loss (or ``finite[which]``) is not finite or spikes (backward still reaches every
        parameter, so DDP's gradient reduction stays in step; the zero gradients are then dropped)."""
        ok = torch.stack([torch.isfinite(losses[w]).all() & (finite[w] if finite else True) for w in self.models])
        flags, values = agree_on_all_ranks(ok, torch.stack([losses[w].detach().float() for w in self.models]))
        total = None
        for which, good, value in zip(self.models, flags, values):
            if good:
                self.observe(which, value)
            else:
                self.mark(which, what)
            if self.bad_now[which]:
                loss = torch.stack([p.sum() for p in module.model(which).parameters()]).sum() * 0.0
            else:
                loss = losses[which]
            total = loss if total is None else total + loss
        return total

    def drop_bad_gradients(self, module: torch.nn.Module, check_grads: bool = True) -> None:
        """Before an optimizer step: mark models whose gradients are non-finite, drop the
        gradients of every marked model (Adam leaves parameters without a gradient untouched)."""
        check = [w for w in self.models if not self.bad_now[w]] if check_grads else []
        grads = {w: [p.grad for p in module.model(w).parameters() if p.grad is not None] for w in check}
        check = [w for w in check if grads[w]]
        if check:
            ok = torch.stack([torch.isfinite(torch.stack(torch._foreach_norm(grads[w]))).all() for w in check])
            flags, _ = agree_on_all_ranks(ok)
            for which, good in zip(check, flags):
                if not good:
                    self.mark(which, "gradient")
        for which in self.models:
            if self.bad_now[which]:
                for p in module.model(which).parameters():
                    p.grad = None
        self.stepped = True

    def end_step(self, module: L.LightningModule) -> None:
        """Once per training batch: count skipped updates, log them, stop on divergence."""
        if not self.stepped:
            return
        self.stepped = False
        step = module.global_step
        for which in self.models:
            reason = self.bad_now[which]
            if reason:
                self.skipped[which] += 1
                self.streak[which] += 1
                if self.streak[which] == 1:
                    log.warning(
                        "%s model %s: non-finite %s at global step %d; update skipped", self.family, which.upper(), reason, step
                    )
            else:
                self.streak[which] = 0
            module.log(f"train/skipped_{which}", float(self.skipped[which]), on_step=True, on_epoch=False)
        reasons, spikes = dict(self.bad_now), dict(self.spike)
        self.bad_now = {w: "" for w in self.models}
        self.spike = {w: "" for w in self.models}
        for which in self.models:
            if spikes[which]:
                self.record(module)
                raise Diverged(
                    f"{self.family} model {which.upper()} diverged at global step {step}: {spikes[which]}; "
                    f"training stopped, {last_checkpoint(module)}; try a lower model.lr"
                )
            if self.streak[which] >= self.max_bad_steps:
                self.record(module)
                raise Diverged(
                    f"{self.family} model {which.upper()}: {self.streak[which]} updates in a row skipped for a non-finite "
                    f"{reasons[which]} (model.max_bad_steps={self.max_bad_steps}, global step {step}); "
                    f"training stopped, {last_checkpoint(module)}; try a lower model.lr"
                )

    def record(self, module: L.LightningModule) -> None:
        """A ``training`` record of the skipped updates in ``metrics.jsonl`` (when they changed)."""
        trainer = getattr(module, "_trainer", None)
        if trainer is None or not trainer.is_global_zero or self.skipped == self._recorded:
            return
        from galgen_lightning.rundir import RunDir, RunDirectory

        if not any(isinstance(cb, RunDirectory) for cb in trainer.callbacks):
            return  # a plain Trainer (a notebook, a unit test): no galgen run directory to write into

        RunDir(trainer.default_root_dir).append_metrics(
            {
                "test": "training",
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                **{f"skipped_{w}": self.skipped[w] for w in self.models},
            }
        )
        self._recorded = dict(self.skipped)


def last_checkpoint(module: L.LightningModule) -> str:
    """Where the last checkpoint is (skipped updates never change the weights, so it is good)."""
    trainer = getattr(module, "_trainer", None)
    callback = getattr(trainer, "checkpoint_callback", None) if trainer is not None else None
    if callback is None:
        return "and no checkpoint was saved (no checkpoint callback)"
    path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    return f"the last good checkpoint is {path}" if path else "and no checkpoint was saved yet"
