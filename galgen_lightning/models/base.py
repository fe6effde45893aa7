"""The shallow base every model family builds on: two models, A and B, and one contract.

A family subclasses :class:`PairModule`, builds ``self.model_a`` and ``self.model_b`` (same
architecture, independent initialisations) and implements :meth:`PairModule.generate`.
Training batches are dicts ``{"a": images of subset A, "b": images of subset B}``; model A only
ever sees ``batch["a"]``. Everything else (the shared-noise sampling, the evaluation callbacks,
the CLI) then works for the new family unchanged. See ``docs/extending.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning as L
import torch
from torch import Tensor, nn

from galgen_lightning.faults import UpdateGuard

MODELS = ("a", "b")


@dataclass
class PairSamples:
    """Samples of model A and model B from the same noise, with validity masks.

    Attributes:
        a: ``(n, c, h, w)`` samples of model A, on the CPU, float32.
        b: the same for model B, sample ``i`` from the same noise as ``a[i]``.
        ok_a: ``(n,)`` bool: sample ``i`` of A is usable (finite, converged). Invalid samples are
            reported and kept out of the statistics, never averaged in.
        ok_b: the same for B.
        info: per-model diagnostics, e.g. ``{"a": {"diverged": 0, "step_limit": 3}, ...}``.
    """

    a: Tensor
    b: Tensor
    ok_a: Tensor
    ok_b: Tensor
    info: dict[str, dict[str, float]] = field(default_factory=dict)

    def __getitem__(self, which: str) -> Tensor:
        return {"a": self.a, "b": self.b}[which]

    def ok(self, which: str) -> Tensor:
        """Validity mask of model ``which`` (``"a"`` or ``"b"``)."""
        return {"a": self.ok_a, "b": self.ok_b}[which]

    @property
    def both_ok(self) -> Tensor:
        """Samples usable in both models (for the A-vs-B comparison)."""
        return self.ok_a & self.ok_b


class PairModule(L.LightningModule):
    """Base LightningModule holding model A and model B of one family.

    Subclasses set ``self.model_a`` / ``self.model_b`` in ``__init__`` and implement
    :meth:`generate`. Two models of the same architecture must get *different* initial weights
    (each is seeded from the run's seed, offset by model); the shared part is the noise at
    sampling time.

    Args:
        image_size: side of the square training images (linked from ``data.image_size`` by the CLI).
        channels: image channels (galgen's galaxies are one grayscale channel).
    """

    model_a: nn.Module
    model_b: nn.Module

    def __init__(self, image_size: int = 64, channels: int = 1) -> None:
        super().__init__()
        self.image_size = image_size
        self.channels = channels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(c, h, w)``."""
        return (self.channels, self.image_size, self.image_size)

    # --- divergence guard: one implementation for every family ---------------------------------
    family_name = "pair"
    """How messages name the family (``"diffusion model A: ..."``)."""

    @property
    def guard(self) -> UpdateGuard:
        """The skipped-update bookkeeping (:class:`~galgen_lightning.faults.UpdateGuard`), built
        from the hyperparameters ``max_bad_steps`` and ``max_loss_ratio`` of the family."""
        guard = self.__dict__.get("_update_guard")
        if guard is None:
            hp = getattr(self, "hparams", {})
            guard = UpdateGuard(self.family_name, int(hp.get("max_bad_steps", 20)), hp.get("max_loss_ratio"))
            self.__dict__["_update_guard"] = guard
        return guard

    @property
    def skipped(self) -> dict[str, int]:
        """Skipped updates of each model so far (this process)."""
        return self.guard.skipped

    @property
    def streak(self) -> dict[str, int]:
        """Consecutive skipped updates of each model."""
        return self.guard.streak

    def on_before_optimizer_step(self, optimizer) -> None:
        """Drop the gradients of a model whose loss was non-finite (or spiked), or whose gradients are."""
        self.guard.drop_bad_gradients(self, check_grads=bool(getattr(self, "hparams", {}).get("check_grads", True)))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Count skipped updates (once per batch), stop on divergence."""
        self.guard.end_step(self)

    def on_train_epoch_end(self) -> None:
        self.guard.record(self)

    def model(self, which: str) -> nn.Module:
        """Model ``"a"`` or ``"b"``."""
        if which not in MODELS:
            raise ValueError(f"which must be 'a' or 'b', got {which!r}")
        return self.model_a if which == "a" else self.model_b

    def generate(self, which: str, indices: Tensor, seed: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Generate the samples with global indices ``indices`` from model ``which``.

        The noise for sample ``i`` must be a function of ``(seed, i)`` only, e.g. from
        :func:`galgen_lightning.noise.counter_normal`, so that model A and model B receive the
        same noise and the result does not depend on the batch size.

        Args:
            which: ``"a"`` or ``"b"``.
            indices: ``(B,)`` int64 global sample indices, on ``self.device``.
            seed: sampling seed.

        Returns:
            ``(images (B, c, h, w), ok (B,) bool, counters)`` where ``counters`` maps a name
            (e.g. ``"diverged"``) to how many samples of this batch it applies to.
        """
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, seed: int, batch_size: int | None = None) -> PairSamples:
        """Draw ``n`` samples from A and from B with the same noise.

        Sample ``i`` gets the same noise in A and B, and the same whatever ``batch_size``.
        The models are put in eval mode for the call and restored afterwards.

        Args:
            n: number of samples per model.
            seed: sampling seed (fixes all noise).
            batch_size: samples per forward batch (default: all at once).

        Returns:
            :class:`PairSamples` on the CPU.
        """
        batch_size = batch_size or n
        out: dict[str, list[Tensor]] = {"a": [], "b": []}
        oks: dict[str, list[Tensor]] = {"a": [], "b": []}
        info: dict[str, dict[str, float]] = {"a": {}, "b": {}}
        was_training = self.training
        self.eval()
        try:
            for which in MODELS:
                for start in range(0, n, batch_size):
                    idx = torch.arange(start, min(n, start + batch_size), device=self.device)
                    x, ok, counters = self.generate(which, idx, seed)
                    out[which].append(x.float().cpu())
                    oks[which].append(ok.bool().cpu() & torch.isfinite(x).flatten(1).all(dim=1).cpu())
                    for key, value in counters.items():
                        info[which][key] = info[which].get(key, 0.0) + float(value)
        finally:
            self.train(was_training)
        return PairSamples(
            a=torch.cat(out["a"]),
            b=torch.cat(out["b"]),
            ok_a=torch.cat(oks["a"]),
            ok_b=torch.cat(oks["b"]),
            info=info,
        )



def golden_uniform(indices: Tensor) -> Tensor:
    """``frac((i + 1) / phi)`` for integer indices ``i`` (a Weyl sequence, 24-bit resolution).

    A pure function of the index, in (0, 1), whose first ``n`` values are spread evenly over
    the interval for any ``n``: per-image noise levels that stratify a validation set of any
    size without knowing the size. Exact integer arithmetic for indices below ``2**31``.
    """
    k = ((indices.to(torch.int64) + 1) * 2654435769) & 0xFFFFFFFF  # round(2**32 / phi)
    return ((k >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)


class ValidationIndex:
    """Global index of every validation image, whatever the batch size.

    :meth:`reset` (at ``on_validation_epoch_start``) reads the order in which the validation
    loader's batch sampler visits its dataset (under DDP, this rank's share of it); batch
    ``batch_idx`` then holds exactly those dataset indices, so a short last batch or another
    batch size changes nothing. A loader without a batch sampler (one that yields ready-made
    batches) falls back to a running count of the images seen this epoch.
    """

    def __init__(self) -> None:
        self.batches: list[list[int]] | None = None
        self.seen = 0

    def reset(self, trainer) -> None:
        self.seen = 0
        self.batches = None
        loaders = getattr(trainer, "val_dataloaders", None) if trainer is not None else None
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if len(loaders) == 1 else None
        batch_sampler = getattr(loaders, "batch_sampler", None)
        if batch_sampler is not None:
            try:
                self.batches = [list(b) for b in batch_sampler]
            except TypeError:  # a sampler that cannot be iterated twice
                self.batches = None

    def __call__(self, batch_idx: int, size: int, device: torch.device) -> Tensor:
        """``(size,)`` int64 global indices of the images of validation batch ``batch_idx``."""
        if self.batches is not None and batch_idx < len(self.batches) and len(self.batches[batch_idx]) == size:
            idx = torch.tensor(self.batches[batch_idx], dtype=torch.int64, device=device)
        else:
            idx = torch.arange(self.seen, self.seen + size, device=device)
        self.seen += size
        return idx
