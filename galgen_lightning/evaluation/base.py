"""What every evaluation callback shares: when to run, and where results go.

Every number a callback logs goes to the Lightning loggers (W&B scalars, histograms, images)
*and* to the run directory (``metrics.jsonl``, ``eval/<test>/epoch_XXXX.npz``, and each figure
as ``.png`` at :data:`galgen_lightning.plotting.DPI` dpi with a ``.pdf`` of the same stem beside it), so results
survive without W&B. The run directory is ``trainer.default_root_dir``, which the CLI sets per
run. Every evaluation's wall time is logged as ``<test>/seconds``, and its slow parts
(:meth:`EvalCallback.timed`) as ``<test>/<part>_seconds``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from galgen_lightning.errors import GalgenError, require
from galgen_lightning.evaluation.progress import bars_enabled, progress_bar
from galgen_lightning.plotting import save_figure
from galgen_lightning.rundir import RunDir

_SAMPLES_KEY = "_galgen_eval_samples"


def _has_path(obj: Any, path: str) -> bool:
    """Whether ``obj`` has the attribute ``path`` (dotted), and not as a placeholder of its base
    class (``PairModule.generate`` is an ``abstractmethod`` a family must override)."""
    for part in path.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return not getattr(obj, "__isabstractmethod__", False)


def run_dir(trainer: L.Trainer) -> Path:
    """The run directory (``trainer.default_root_dir``)."""
    return Path(trainer.default_root_dir)


def to_uint8(images: torch.Tensor | np.ndarray, low: float = 0.0, high: float | None = None) -> np.ndarray:
    """Stretch images to uint8 for display (W&B casts floats without rescaling: [0, 1] is black).

    Args:
        images: ``(..., h, w)`` floats.
        low: value shown as black.
        high: value shown as white (default: the 99.5th percentile, at least ``low`` + 1e-6).
    """
    x = np.asarray(images, dtype=np.float32)
    x = np.nan_to_num(x, nan=low, posinf=low, neginf=low)
    if high is None:
        high = float(np.percentile(x, 99.5)) if x.size else 1.0
    high = max(high, low + 1e-6)
    return (np.clip((x - low) / (high - low), 0, 1) * 255 + 0.5).astype(np.uint8)


class EvalCallback(L.Callback):
    """Base of the per-epoch evaluation callbacks: runs on rank zero at the end of validation.

    It runs every ``every_n_epochs`` epochs, at the last epoch, in ``fast_dev_run``, and on every
    ``galgen validate``. Subclasses implement :meth:`evaluate`.

    Args:
        every_n_epochs: run every this many epochs.
    """

    name = "eval"
    requires: tuple[str, ...] = ()
    """What the family must have for this test (attribute paths on the pair, e.g. ``"denoise"`` or
    ``"model_a.reverse"``); checked at setup, so a test that does not fit is a one-line error."""
    fits: str = ""
    """The families the test is for, named in that error."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.check_family(pl_module)

    @classmethod
    def check_family(cls, pl_module: L.LightningModule | type) -> None:
        """Raise a one-line :class:`GalgenError` when the family (a pair, or its class) lacks what this test needs."""
        missing = [path for path in cls.requires if not _has_path(pl_module, path)]
        if missing:
            raise GalgenError(
                f"{cls.__name__} needs a family with {', '.join(missing)}"
                + (f" ({cls.fits})" if cls.fits else "")
                + f"; {(pl_module if isinstance(pl_module, type) else type(pl_module)).__name__} has none: "
                f"turn the test off ({cls.name}: null) or take it out of trainer.callbacks"
            )

    _started: float | None = None
    _parts: dict[str, float] | None = None

    def __init__(self, every_n_epochs: int = 1) -> None:
        require(every_n_epochs >= 1, f"{type(self).__name__}.every_n_epochs", "positive", every_n_epochs)
        self.every_n_epochs = every_n_epochs

    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != "fit" or trainer.fast_dev_run:
            return True
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs
        return epoch % self.every_n_epochs == 0 or last

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self._due(trainer):
            self.run_timed(trainer, pl_module)

    def run_timed(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """:meth:`evaluate`, with its wall time and its parts' times counted for :meth:`log_scalars`."""
        self._started, self._parts = time.perf_counter(), {}
        try:
            self.evaluate(trainer, pl_module)
        finally:
            self._started, self._parts = None, None

    @contextlib.contextmanager
    def timed(self, part: str) -> Iterator[None]:
        """Count the block's wall time as ``<part>_seconds`` of this evaluation (added up when a
        part runs more than once); outside :meth:`run_timed` nothing is counted."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._parts is not None:
                self._parts[part] = self._parts.get(part, 0.0) + time.perf_counter() - start

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise NotImplementedError

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.__dict__.pop(_SAMPLES_KEY, None)  # new weights: forget the last evaluation's samples

    @staticmethod
    def samples(
        pl_module: L.LightningModule,
        n: int,
        seed: int,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ):
        """``pl_module.sample(n, seed)``, shared by the tests of one evaluation.

        Sampling a diffusion pair is the costly part of an evaluation; the tests that ask for
        samples with the same seed at the same evaluation get the same ones (sample ``i``
        depends only on the seed and ``i``, so a shorter request takes the first ``n``).

        Args:
            pl_module: the pair.
            n: samples per model.
            seed: sampling seed.
            batch_size: samples per generation batch.
            progress: called with the batch's size after each generated batch (A's, then B's).
        """
        cached = pl_module.__dict__.get(_SAMPLES_KEY)
        if cached is not None and cached[0] == seed and len(cached[1].a) >= n:
            return cached[1].head(n)
        samples = pl_module.sample(n, seed, batch_size=batch_size, progress=progress)
        pl_module.__dict__[_SAMPLES_KEY] = (seed, samples)
        return samples

    def draw_samples(self, trainer: L.Trainer, pl_module: L.LightningModule, n: int, seed: int, batch_size: int | None = None):
        """:meth:`samples` with a progress bar per generated batch, timed as ``sampling_seconds``
        (about 0 when an earlier test of the same evaluation drew them)."""
        with (
            self.timed("sampling"),
            progress_bar(2 * n, f"{self.name}: sampling A and B", "sample", bars_enabled(trainer)) as bar,
        ):
            return self.samples(pl_module, n, seed, batch_size=batch_size, progress=bar.update)

    def bar(self, trainer: L.Trainer, total: int, what: str, unit: str):
        """A progress bar ``<test>: <what>`` on stderr, shown when the trainer shows its own."""
        return progress_bar(total, f"{self.name}: {what}", unit, bars_enabled(trainer))

    # --- where results go ------------------------------------------------------------------
    def out_path(self, trainer: L.Trainer, suffix: str, tag: str = "") -> Path:
        """``<run>/eval/<name>/epoch_XXXX<tag><suffix>``, folders created."""
        return RunDir(run_dir(trainer)).eval_path(self.name, trainer.current_epoch, suffix, tag)

    def log_scalars(self, trainer: L.Trainer, values: dict[str, float]) -> None:
        """Log ``<name>/<key>`` to every logger (with ``epoch``, the x axis of W&B's charts) and
        append a line to ``<run>/metrics.jsonl``.

        Inside :meth:`evaluate` it adds ``seconds``: the evaluation's wall time up to its numbers
        (sampling, the search, the statistics; the figures that follow are not counted), and
        ``<part>_seconds`` for each part timed so far (:meth:`timed`: ``sampling``, ``search``,
        ``morphology``).
        """
        from galgen_lightning import wandb_utils

        started = getattr(self, "_started", None)
        if started is not None and "seconds" not in values:
            values = {**values, "seconds": time.perf_counter() - started}
        parts = {f"{part}_seconds": seconds for part, seconds in (self._parts or {}).items()}
        values = {**values, **{k: v for k, v in parts.items() if k not in values}}
        metrics = {f"{self.name}/{k}": float(v) for k, v in values.items()}
        wandb_utils.epoch_metrics(trainer.loggers, metrics, trainer.current_epoch, trainer.global_step)
        record = {"epoch": trainer.current_epoch, "step": trainer.global_step, "test": self.name}
        record.update(values)  # RunDir.append_metrics makes it JSON (NaN: null)
        RunDir(run_dir(trainer)).append_metrics(record)

    def save_arrays(self, trainer: L.Trainer, arrays: dict[str, Any], tag: str = "") -> Path:
        """``<run>/eval/<name>/epoch_XXXX<tag>.npz``."""
        return RunDir(run_dir(trainer)).save_arrays(self.name, trainer.current_epoch, arrays, tag)

    def log_histograms(self, trainer: L.Trainer, arrays: dict[str, np.ndarray]) -> None:
        """W&B histograms (other loggers get the arrays through the ``.npz`` files)."""
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                data = {
                    f"{self.name}/{k}": wandb.Histogram(np.asarray(v)[np.isfinite(v)]) for k, v in arrays.items() if np.size(v)
                }
                logger.experiment.log({**data, "epoch": trainer.current_epoch, "trainer/global_step": trainer.global_step})

    def save_figure(self, trainer: L.Trainer, fig, key: str, tag: str = "", log: bool = True) -> Path:
        """Save a matplotlib figure as ``<run>/eval/<name>/epoch_XXXX<tag>.png`` (at
        :data:`galgen_lightning.plotting.DPI` dpi) and ``.pdf`` beside it, and log the PNG to W&B as ``<name>/<key>``.

        Args:
            trainer: the trainer (run directory, epoch, loggers).
            fig: the figure; closed here.
            key: W&B key under the test's name.
            tag: file name tag after ``epoch_XXXX``.
            log: log the PNG to W&B (False when the caller logs its own images under ``key``).

        Returns:
            The PNG's path.
        """
        path = save_figure(fig, self.out_path(trainer, ".png", tag))
        if log:
            self.log_images(trainer, key, [str(path)])
        return path

    def save_image(self, trainer: L.Trainer, image: np.ndarray, key: str, tag: str = "") -> Path:
        """Save a uint8 grayscale mosaic as PNG in the run directory and log it to W&B."""
        import matplotlib.image

        path = self.out_path(trainer, ".png", tag)
        matplotlib.image.imsave(path, image, cmap="gray", vmin=0, vmax=255)
        self.log_images(trainer, key, [image])
        return path

    def log_images(self, trainer: L.Trainer, key: str, images: list, captions: list[str] | None = None) -> None:
        """Log ``images`` (paths or uint8 arrays) to W&B as ``<name>/<key>``, with ``epoch`` (the
        x axis of the test's charts) and optional captions; other loggers get the files."""
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not loggers:
            return
        import wandb

        captions = captions if captions is not None else [None] * len(images)
        if len(captions) != len(images):
            raise ValueError(f"log_images: {len(images)} images but {len(captions)} captions")
        data = [wandb.Image(image, caption=caption) for image, caption in zip(images, captions)]
        for logger in loggers:
            logger.experiment.log(
                {f"{self.name}/{key}": data, "epoch": trainer.current_epoch, "trainer/global_step": trainer.global_step}
            )


class SamplingTest(EvalCallback):
    """Base of the tests that draw from the pair: how many, from which noise, in which batches.

    Args:
        every_n_epochs: run every this many epochs (and at the last one).
        n_samples: samples per model.
        seed: sampling seed (the same noise every epoch, so epochs compare).
        batch_size: samples per generation batch (default: the pair's ``sample_batch_size``).
    """

    def __init__(self, every_n_epochs: int = 1, n_samples: int = 64, seed: int = 0, batch_size: int | None = None) -> None:
        super().__init__(every_n_epochs)
        require(n_samples >= 1, f"{type(self).__name__}.n_samples", "positive", n_samples)
        require(batch_size is None or batch_size >= 1, f"{type(self).__name__}.batch_size", "positive (or null)", batch_size)
        self.n_samples = n_samples
        self.seed = seed
        self.batch_size = batch_size

    def generation_batch(self, pl_module: L.LightningModule) -> int:
        """Samples per generation batch: ``batch_size``, else the pair's ``sample_batch_size``."""
        return self.batch_size or pl_module.sample_batch_size

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule):
        """This test's ``n_samples`` samples of A and B from its ``seed`` (:meth:`draw_samples`)."""
        return self.draw_samples(trainer, pl_module, self.n_samples, self.seed, batch_size=self.generation_batch(pl_module))


def mosaic(rows: list[torch.Tensor], pad: int = 2) -> np.ndarray:
    """Stack rows of images ``(k, 1, h, w)`` into one uint8 picture, each image stretched alike."""
    k = max(len(r) for r in rows)
    h, w = rows[0].shape[-2:]
    canvas = np.full((len(rows) * (h + pad) + pad, k * (w + pad) + pad), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            canvas[pad + i * (h + pad) : pad + i * (h + pad) + h, pad + j * (w + pad) : pad + j * (w + pad) + w] = to_uint8(
                img[0], low=0.0, high=1.0
            )
    return canvas


def averaging_after_tests(callbacks: list) -> list:
    """Reorder callbacks so weight averaging (EMA/SWA) comes after the evaluation callbacks.

    Lightning's ``WeightAveraging`` swaps the averaged weights in at the start of validation
    and back out in its ``on_validation_epoch_end``; the tests also run in
    ``on_validation_epoch_end``, in list order. Placed after them, the averaging callback lets
    every test see the averaged weights, whatever order the config lists them in.
    """
    from lightning.pytorch.callbacks import WeightAveraging

    averaging = [c for c in callbacks if isinstance(c, WeightAveraging)]
    tests = [i for i, c in enumerate(callbacks) if isinstance(c, EvalCallback)]
    if not averaging or not tests:
        return list(callbacks)
    rest = [c for c in callbacks if not isinstance(c, WeightAveraging)]
    cut = max(i for i, c in enumerate(rest) if isinstance(c, EvalCallback)) + 1
    return rest[:cut] + averaging + rest[cut:]
