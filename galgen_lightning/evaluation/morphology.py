"""The morphology test: do samples of A and B have the morphology of real galaxies?

Each evaluation measures concentration, asymmetry, smoothness, Gini and M20 with statmorph
(see :mod:`galgen_lightning.evaluation.morphology_image`) on five groups of images: the training subsets A and
B (``real_a``, ``real_b``; at most ``n_real`` images each, a fixed random choice), the held-out
validation set (``val``) and ``n_samples`` samples of model A and of model B (``sample_a``,
``sample_b``; same seed every epoch). Per variable it compares the distributions with the
1-Wasserstein distance and a two-sample KS test: samples A vs real A, samples B vs real B,
samples A vs samples B, and real A vs validation (the baseline: how far apart two sets of
real galaxies are), plus samples vs validation and real A vs real B.

Every image is accounted for: the counts of measured, failed (with reasons) and flagged
images of each group are logged, and the per-image values, flags and reasons are saved in
``<run>/eval/morphology/epoch_XXXX.npz`` (keys in :mod:`galgen_lightning.evaluation.morphology_stats`). The
real groups do not change during a run, so they are measured once and reused. The figure
``epoch_XXXX.png`` (and ``.pdf``) has one histogram panel per variable (the paper's Figures 7, 8
and 15). Besides ``seconds``, ``sampling_seconds`` and ``morphology_seconds`` (the measurement)
are logged. See ``docs/morphology.md``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import lightning as L
import numpy as np

from galgen_lightning.errors import GalgenError, install_hint, require
from galgen_lightning.evaluation.base import SamplingTest
from galgen_lightning.evaluation.morphology_image import VARIABLES, MorphologyOptions, missing_dependencies
from galgen_lightning.evaluation.morphology_measure import PRELOAD, measure_groups
from galgen_lightning.evaluation.morphology_stats import COMPARISONS, morphology_figure, morphology_statistics
from galgen_lightning.evaluation.progress import bars_enabled
from galgen_lightning.parallel import WorkerPool, default_workers

REAL_GROUPS = {"real_a": "a", "real_b": "b", "val": "val"}


def choose_subset(n: int, k: int | None, seed: int) -> np.ndarray:
    """Sorted indices of ``k`` of ``n`` images, a fixed random choice (all when ``k`` is None or ``>= n``)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, n, k]).choice(n, size=k, replace=False))


class MorphologyTest(SamplingTest):
    """Per-epoch morphology test with statmorph: real vs samples of A vs samples of B.

    Measuring takes about 0.5 s per 64x64 image and CPU core, so the real groups are measured
    once per run (cached) and each evaluation measures ``2 * n_samples`` samples over
    ``workers`` processes, started at the first evaluation and kept for the run.

    Args:
        n_samples: samples per model.
        n_real: most images measured per real group (A, B, validation); None measures all.
        workers: processes measuring in parallel (default: the CPUs this process may use).
        threshold: detection threshold in background sigmas.
        smoothing: Gaussian sigma in pixels before detection.
        min_snr: smallest total S/N of a segment (fainter ones are noise).
        deblend: deblend the segmentation (photutils ``deblend_sources``).
        skybox_size: statmorph's sky box size (default: a quarter of the image, at least 8).
        upsample: measure on images enlarged this many times (1: as they are).
        max_flag: largest statmorph flag whose measurement is used (0 good, 1 suspect, 2 bad).
        progress: show a progress bar of the measurement (default: when the trainer shows its own).
        bins: histogram bins per figure panel.
        **kwargs: :class:`SamplingTest`'s ``every_n_epochs``, ``seed`` (of the noise and of the
            choice of real images) and ``batch_size``.
    """

    name = "morphology"

    def __init__(
        self,
        n_samples: int = 256,
        n_real: int | None = 256,
        workers: int | None = None,
        threshold: float = 2.0,
        smoothing: float = 1.0,
        min_snr: float = 20.0,
        deblend: bool = True,
        skybox_size: int | None = None,
        upsample: int = 1,
        max_flag: int = 1,
        progress: bool | None = None,
        bins: int = 30,
        **kwargs: Any,
    ) -> None:
        super().__init__(n_samples=n_samples, **kwargs)
        require(n_real is None or n_real >= 1, "MorphologyTest.n_real", "positive (or null)", n_real)
        require(workers is None or workers >= 1, "MorphologyTest.workers", "positive (or null: all cores)", workers)
        require(bins >= 1, "MorphologyTest.bins", "positive", bins)
        self.n_real = n_real
        self.workers = workers
        self.options = MorphologyOptions(
            threshold=threshold,
            smoothing=smoothing,
            min_snr=min_snr,
            deblend=deblend,
            skybox_size=skybox_size,
            upsample=upsample,
            max_flag=max_flag,
        )
        self.progress = progress
        self.bins = bins
        self._real_cache: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self._pool: WorkerPool | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Fail at the start of the run, not at the first evaluation, when statmorph is missing."""
        super().setup(trainer, pl_module, stage)
        missing = missing_dependencies()
        if missing:
            raise GalgenError(
                f"MorphologyTest needs {' and '.join(missing)}, which this environment lacks: "
                f"{install_hint('statmorph')}, or turn the test off (morphology: null)"
            )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Stop the worker processes at the end of the run."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def measure(self, groups: dict, progress: bool | None = None) -> dict[str, dict[str, np.ndarray]]:
        """Measure ``{name: (images, valid)}`` with this callback's options.

        With more than one worker, the processes are started at the first evaluation and kept
        until the end of the run (each one imports the training script once).

        Args:
            groups: name -> ``(images, valid)``.
            progress: show a progress bar (default: this callback's ``progress``, else above 100 images).
        """
        workers = default_workers() if self.workers is None else self.workers
        if workers > 1 and self._pool is None:
            self._pool = WorkerPool(workers, PRELOAD)
        progress = self.progress if progress is None else progress
        return measure_groups(
            groups, self.options, workers=workers, progress=progress, desc=f"{self.name}: statmorph", pool=self._pool
        )

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        samples = self.draw(trainer, pl_module)
        todo = {f"sample_{w}": (samples[w], samples.ok(w).numpy()) for w in ("a", "b")}
        real: dict[str, tuple[tuple[str, str], np.ndarray]] = {}
        for name, subset in REAL_GROUPS.items():
            # the real groups never change during a run: measure each once, keyed by content
            x = np.asarray(dm.subset_images(subset), dtype=np.float32)
            index = choose_subset(len(x), self.n_real, self.seed)
            chosen = np.ascontiguousarray(x[index])
            key = (name, hashlib.sha1(chosen.tobytes()).hexdigest())
            real[name] = (key, index)
            if key not in self._real_cache:
                todo[name] = (chosen, None)
        with self.timed("morphology"):
            measured = self.measure(todo, self.progress if self.progress is not None else bars_enabled(trainer))
        groups: dict[str, dict[str, np.ndarray]] = {}
        for name, (key, index) in real.items():
            if key not in self._real_cache:
                self._real_cache[key] = {**measured[name], "index": index}
            groups[name] = self._real_cache[key]
        for which in ("a", "b"):
            groups[f"sample_{which}"] = {**measured[f"sample_{which}"], "index": np.arange(len(samples[which]))}
        scalars, arrays = morphology_statistics(groups, COMPARISONS, self.options.max_flag)
        self.save_arrays(trainer, arrays)  # arrays first: a logged record always has its arrays
        self.log_scalars(trainer, scalars)
        self.log_histograms(
            trainer,
            {f"{g}/{v}": arrays[f"{g}/{v}"][arrays[f"{g}/used"]] for g in groups for v in VARIABLES},
        )
        title = "morphology of real and generated galaxies (statmorph; used images per group in the legends)"
        self.save_figure(trainer, morphology_figure(arrays, scalars, title, self.bins), "histograms")
