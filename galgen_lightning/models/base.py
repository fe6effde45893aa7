"""The shallow base every model family builds on: two models, A and B, and one contract.

A family subclasses :class:`PairModule`, builds ``self.model_a`` and ``self.model_b`` (same
architecture, independent initialisations) and implements :meth:`PairModule.generate`.
Training batches are dicts ``{"a": images of subset A, "b": images of subset B}``; model A only
ever sees ``batch["a"]``. Everything else (the shared-noise sampling, the evaluation callbacks,
the CLI) then works for the new family unchanged. See ``docs/extending.md``.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import lightning as L
import torch
from torch import Tensor, nn

from galgen_lightning.errors import GalgenError, require
from galgen_lightning.faults import UpdateGuard
from galgen_lightning.rundir.runs import family_of

MODELS = ("a", "b")

VAL_SEED = 12345
"""Seed of the fixed noise of the validation images (the diffusion pair's noise, Glow's
dequantisation, the GAN's latents): the same every epoch, so validation losses compare."""

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}
_FULL_PRECISIONS = {"32", "64", "32-true", "64-true", "transformer-engine", "transformer-engine-float16"}


def count_parameters(module: torch.nn.Module) -> int:
    """Trainable parameters of ``module`` (frozen copies such as an EMA generator are not counted)."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


def precision_dtype(precision: str | int | None) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision setting, ``None`` for full precision.

    ``"bf16-mixed"``/``"bf16-true"``/``"bf16"`` give ``torch.bfloat16``, ``"16-mixed"``/``"16-true"``/
    ``16`` give ``torch.float16``; ``"32-true"``, ``"64-true"`` (and their short forms) and ``None``
    (no trainer) give ``None``: no autocast, float32. Transformer Engine's settings also give
    ``None`` (its fp8 applies to its own layers only).

    Raises:
        ValueError: for a setting Lightning does not know.
    """
    if precision is None:
        return None
    text = str(precision)
    if text in _FULL_PRECISIONS:
        return None
    head, _, tail = text.partition("-")
    if head in _AUTOCAST_DTYPES and tail in ("", "mixed", "true"):
        return _AUTOCAST_DTYPES[head]
    raise ValueError(f"unknown trainer precision {precision!r}")


def autocast_for(precision: str | int | None, device_type: str) -> contextlib.AbstractContextManager:
    """The autocast context that runs a network at the trainer's ``precision`` on ``device_type``.

    A null context for full precision (see :func:`precision_dtype`), else
    ``torch.autocast(device_type, dtype)``.
    """
    dtype = precision_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


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
        counts: the diagnostics a family gave per sample, ``{"a": {"diverged": (n,) float64}, ...}``:
            what :meth:`head` recounts ``info`` from.
    """

    a: Tensor
    b: Tensor
    ok_a: Tensor
    ok_b: Tensor
    info: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    def head(self, n: int) -> PairSamples:
        """The first ``n`` samples (the same as drawing ``n``: sample ``i`` depends only on the seed
        and ``i``), with ``info`` recounted from :attr:`counts`; a diagnostic given only per batch
        cannot be split and is left out."""
        if n >= len(self.a):
            return self
        counts = {w: {k: v[:n] for k, v in per.items()} for w, per in self.counts.items()}
        info = {w: {k: float(v.sum()) for k, v in per.items()} for w, per in counts.items()}
        return PairSamples(self.a[:n], self.b[:n], self.ok_a[:n], self.ok_b[:n], info, counts)

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

    What every family shares lives here: the fixed validation noise seed (:attr:`val_seed`),
    each validation image's global index (:meth:`validation_indices`), the sampling batch
    (:attr:`sample_batch_size`), the precision of sampling (:meth:`sampling_autocast`, from the
    trainer's ``precision``), and the GPU-path options (:attr:`channels_last`,
    :attr:`fused_adam`, :attr:`compile_networks`; see ``docs/gpu.md``).

    Args:
        image_size: side of the square training images: the data's (the CLI links it from
            ``data.image_size``, its one owner), so a pair has no side of its own to disagree with.
        channels: image channels (galgen's galaxies are one grayscale channel).
        sample_batch_size: samples per generation batch of :meth:`sample` and of the evaluation
            callbacks (it bounds memory only: samples do not depend on it).
        channels_last: the channels-last memory format for the networks and the batches
            (faster convolutions on GPUs). A family converts its networks at the end of its
            ``__init__`` and its batches with :meth:`to_memory_format`.
        fused_adam: ``true``: Adam's fused kernel (``torch.optim.Adam(fused=True)``: CUDA, and CPU
            since torch 2.4; a device without one is a one-line error); ``false``: the default
            (foreach) Adam; ``null``: fused on CUDA, foreach elsewhere.
        compile: ``torch.compile`` the networks for training (the state dict is unchanged).
        max_bad_steps: stop training after this many consecutive skipped updates of one model (a
            non-finite loss or gradient skips that model's update; :attr:`guard`).
        max_loss_ratio: stop when a model's loss exceeds this multiple of the median of its last
            100 losses (``null``: off; the diffusion family turns it on).
        check_grads: also skip an update whose gradients are non-finite (one fused norm per step).
    """

    model_a: nn.Module
    model_b: nn.Module
    val_seed: int = VAL_SEED
    """Seed of the fixed validation noise (:data:`VAL_SEED`)."""
    learns: bool = True
    """Whether the pair learns from its subsets. The reference families (``models/reference.py``)
    answer by construction: ``galgen validate`` takes them without a checkpoint."""
    optimizer_steps_per_batch: int = 1
    """How far Lightning's ``global_step`` (what ``trainer.max_steps`` counts) moves per training
    batch: one optimizer step, or one per optimizer under manual optimization (the GAN: 4)."""

    def __init__(
        self,
        image_size: int,
        channels: int = 1,
        sample_batch_size: int = 64,
        channels_last: bool = False,
        fused_adam: bool | None = None,
        compile: bool = False,
        max_bad_steps: int = 20,
        max_loss_ratio: float | None = None,
        check_grads: bool = True,
    ) -> None:
        super().__init__()
        require(image_size >= 1, "model.image_size", "at least 1", image_size)
        require(channels >= 1, "model.channels", "at least 1", channels)
        require(sample_batch_size >= 1, "model.sample_batch_size", "at least 1", sample_batch_size)
        self.image_size = image_size
        self.channels = channels
        self.sample_batch_size = int(sample_batch_size)
        self.channels_last = bool(channels_last)
        self.fused_adam = fused_adam
        self.compile_networks = bool(compile)
        self.check_grads = bool(check_grads)
        self.guard = UpdateGuard(self.family_name, max_bad_steps, max_loss_ratio)
        """The skipped-update bookkeeping (:class:`~galgen_lightning.faults.UpdateGuard`): one
        implementation for every family."""
        self._val_index = ValidationIndex()
        self.checkpoint_position: dict[str, int] | None = None
        """Where the training of the checkpoint loaded into this module stood (``epoch``,
        ``global_step``); None when none was loaded. ``validate`` records it: its own loop starts at 0."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(c, h, w)``."""
        return (self.channels, self.image_size, self.image_size)

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters of one model of the pair (``model``); a family with parts adds
        them (the GAN: ``generator``, ``discriminator``). The report's pixels-per-parameter uses these."""
        return {"model": count_parameters(getattr(self, "model_a", self))}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Keep the checkpoint's ``epoch`` and ``global_step`` (:attr:`checkpoint_position`)."""
        self.checkpoint_position = {key: int(checkpoint.get(key, 0)) for key in ("epoch", "global_step")}

    # --- divergence guard: one implementation for every family ---------------------------------
    @property
    def family_name(self) -> str:
        """How messages name the family (``"diffusion model A: ..."``), as runs and reports do."""
        return family_of(type(self).__name__)

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
        self.guard.drop_bad_gradients(self, check_grads=self.check_grads)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Count skipped updates (once per batch), stop on divergence."""
        self.guard.end_step(self)

    def on_train_epoch_end(self) -> None:
        self.guard.record(self)

    # --- what every family shares: validation indices, precision, the GPU path ------------------
    def on_validation_epoch_start(self) -> None:
        """Read the validation loader's order for :meth:`validation_indices`."""
        self._val_index.reset(self._trainer)

    def validation_indices(self, batch_idx: int, size: int, device: torch.device) -> Tensor:
        """``(size,)`` int64 global indices of the images of validation batch ``batch_idx``.

        The same image gets the same index whatever the batch size or a short last batch (see
        :class:`ValidationIndex`): give its fixed noise a function of this index and
        :attr:`val_seed` only.
        """
        return self._val_index(batch_idx, size, device)

    def sampling_autocast(self, device: torch.device | None = None) -> contextlib.AbstractContextManager:
        """Autocast context for running a network while sampling: the trainer's precision
        (:func:`autocast_for`), float32 when no trainer is attached."""
        trainer = self._trainer
        precision = getattr(trainer, "precision", None) if trainer is not None else None
        return autocast_for(precision, (device or self.device).type)

    @property
    def noise_dtype(self) -> torch.dtype:
        """dtype of the sampling noise: float64 when the networks are (``trainer.precision: 64-true``,
        which no autocast casts for), else float32 (autocast casts it for the reduced precisions)."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def to_memory_format(self, x: Tensor) -> Tensor:
        """``x`` in channels-last memory format when :attr:`channels_last` is on (4-d only)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def make_adam(self, params: Iterable, **kwargs) -> torch.optim.Adam:
        """``torch.optim.Adam(params, **kwargs)``, fused as :attr:`fused_adam` says."""
        fused = self.device.type == "cuda" if self.fused_adam is None else bool(self.fused_adam)
        params = list(params)
        try:
            opt = torch.optim.Adam(params, fused=fused, **kwargs)
            if fused:  # torch checks devices and dtypes at the first step: check now, in one line
                try:
                    from torch.optim.optimizer import _device_dtype_check_for_fused
                except ImportError:  # a torch without the helper: it checks at the first step
                    return opt
                for p in params:
                    for tensor in p["params"] if isinstance(p, dict) else [p]:
                        _device_dtype_check_for_fused(tensor)
        except RuntimeError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise GalgenError(
                f"model.fused_adam: no fused Adam on {self.device.type} ({first}); set model.fused_adam: false"
            ) from None
        return opt

    def model(self, which: str) -> nn.Module:
        """Model ``"a"`` or ``"b"``."""
        if which not in MODELS:
            raise ValueError(f"which must be 'a' or 'b', got {which!r}")
        return self.model_a if which == "a" else self.model_b

    @abstractmethod
    def generate(self, which: str, indices: Tensor, seed: int) -> tuple[Tensor, Tensor, dict[str, float | Tensor]]:
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
            (e.g. ``"diverged"``) to how many samples of this batch it applies to: a number, or
            better a ``(B,)`` tensor of each sample's amount (then :meth:`PairSamples.head` can
            recount it for fewer samples).
        """
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self, n: int, seed: int, batch_size: int | None = None, progress: Callable[[int], None] | None = None
    ) -> PairSamples:
        """Draw ``n`` samples from A and from B with the same noise.

        Sample ``i`` gets the same noise in A and B, and the same whatever ``batch_size``.
        The models are put in eval mode for the call and restored afterwards.

        Args:
            n: number of samples per model.
            seed: sampling seed (fixes all noise).
            batch_size: samples per forward batch (default: :attr:`sample_batch_size`).
            progress: called with each generated batch's size (A's batches, then B's), e.g. a
                progress bar's ``update``.

        Returns:
            :class:`PairSamples` on the CPU.
        """
        batch_size = batch_size or self.sample_batch_size
        out: dict[str, list[Tensor]] = {"a": [], "b": []}
        oks: dict[str, list[Tensor]] = {"a": [], "b": []}
        info: dict[str, dict[str, float]] = {"a": {}, "b": {}}
        per_sample: dict[str, dict[str, list[Tensor]]] = {"a": {}, "b": {}}
        was_training = self.training
        self.eval()
        try:
            for which in MODELS:
                for start in range(0, n, batch_size):
                    idx = torch.arange(start, min(n, start + batch_size), device=self.device)
                    x, ok, counters = self.generate(which, idx, seed)
                    if progress is not None:
                        progress(len(idx))
                    out[which].append(x.float().cpu())
                    oks[which].append(ok.bool().cpu() & torch.isfinite(x).flatten(1).all(dim=1).cpu())
                    for key, value in counters.items():
                        value = torch.as_tensor(value, dtype=torch.float64).cpu()
                        if value.dim() == 1 and len(value) == len(idx):
                            per_sample[which].setdefault(key, []).append(value)
                        info[which][key] = info[which].get(key, 0.0) + float(value.sum())
        finally:
            self.train(was_training)
        return PairSamples(
            a=torch.cat(out["a"]),
            b=torch.cat(out["b"]),
            ok_a=torch.cat(oks["a"]),
            ok_b=torch.cat(oks["b"]),
            info=info,
            counts={w: {k: torch.cat(v) for k, v in per.items() if len(v) == len(oks[w])} for w, per in per_sample.items()},
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
