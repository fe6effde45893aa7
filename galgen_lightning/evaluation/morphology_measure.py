"""Morphology of galaxy images with statmorph: C, A, S, Gini and M20, with failures counted.

The paper checks that generated galaxies look like real ones through the distributions of
five non-parametric morphology statistics (its Figures 7, 8 and 15), measured with statmorph
(Rodriguez-Gomez et al. 2019) on each image:

* ``concentration`` C = 5 log10(r80 / r20) (Bershady et al. 2000; Conselice 2003),
* ``asymmetry`` A: residual of the image minus itself rotated by 180 degrees, sky term removed,
* ``smoothness`` S (clumpiness): residual of the image minus a smoothed copy,
* ``gini`` G: inequality of the pixel fluxes of the galaxy (Lotz et al. 2004),
* ``m20`` M20: second moment of the brightest 20% of the flux, relative to the total.

How one image is measured (:func:`measure_image`; ``docs/morphology.md`` says why):

1. The background level is the sigma-clipped mean of the image's outer frame (``border``
   pixels wide) with detected sources masked, and the noise ``sigma`` their sigma-clipped
   standard deviation. The level is subtracted.
2. Sources are detected with photutils (``detect_sources``) at ``threshold`` x ``sigma`` on a
   Gaussian-smoothed copy and deblended (``deblend_sources``); segments with a total S/N
   below ``min_snr`` are noise and dropped. The main source is the segment under the central
   pixel, or the segment nearest to it; other segments are masked.
3. statmorph's ``SourceMorphology`` measures the main source with a constant weight map
   ``sigma`` (the images are Lupton-stretched, not counts, so a Poisson ``gain`` means nothing).

Every image ends in exactly one state, none silently dropped:

* **failed** (no usable measurement), with a reason from :data:`FAILURES`: ``invalid_sample``
  (the model marked the sample invalid), ``nonfinite`` (NaN/inf pixels), ``blank`` (a constant
  image), ``segmentation_error`` (the background estimate or photutils raised), ``no_source``
  (photutils found no significant segment), ``statmorph_error`` (statmorph raised),
  ``catastrophic`` (statmorph flag 4, e.g. a non-positive flux) and ``bad_values`` (one of the
  five statistics came back as -99 or non-finite);
* **flagged**: measured, but statmorph's flag is above ``max_flag`` (default 1: flag 2 "bad"
  is flagged, flag 1 "suspect" is kept);
* **used**: measured and not flagged. Only used images enter the distributions.

Files the :class:`~galgen_lightning.evaluation.MorphologyTest` callback writes
-----------------------------------------------------------------------------

``<run>/eval/morphology/epoch_XXXX.npz`` (from :func:`morphology_statistics`), one entry per
image of each group ``<group>`` in :data:`GROUPS` (``real_a``, ``real_b``, ``val``,
``sample_a``, ``sample_b``); ``n`` is the number of images of that group:

* ``variables`` (5,) str, ``groups`` (5,) str, ``failures`` (8,) str: the vocabularies;
* ``max_flag`` () int: the largest statmorph flag counted as used;
* ``<group>/<variable>`` (n,) float64 for each variable in :data:`VARIABLES`: the statmorph
  value, NaN where the image failed (flagged images keep their values);
* ``<group>/flag`` (n,) int: statmorph's flag (0 good, 1 suspect, 2 bad, 4 catastrophic),
  -1 where statmorph did not run;
* ``<group>/reason`` (n,) str: the failure reason, ``""`` for a measured image;
* ``<group>/used`` (n,) bool: measured and ``flag <= max_flag``;
* ``<group>/message`` (n,) str: statmorph's warnings (why a fit is flagged) or the exception;
* ``<group>/index`` (n,) int: index of the image in its subset (real groups, which may be a
  random subset of ``n_real`` images) or its sample number (sample groups);
* ``<group>/sky`` and ``<group>/sky_sigma`` (n,) float64: the subtracted background level
  and the noise sigma used for detection and as the weight map.

``<run>/metrics.jsonl`` rows with ``"test": "morphology"`` (and the loggers, under
``morphology/<key>``), from :func:`morphology_statistics`:

* ``<group>/n``, ``<group>/measured``, ``<group>/failed``, ``<group>/flagged``,
  ``<group>/suspect`` (flag 1), ``<group>/used`` and ``<group>/failed_<reason>`` for every
  reason in :data:`FAILURES` (always present, 0 when none);
* ``<group>/<variable>_median`` over used images;
* for each comparison ``<x>_vs_<y>`` in :data:`COMPARISONS` (``sample_a_vs_real_a``,
  ``sample_b_vs_real_b``, ``sample_a_vs_sample_b``, ``real_a_vs_val`` (the baseline: two real
  sets), ``sample_a_vs_val``, ``sample_b_vs_val``, ``real_a_vs_real_b``):
  ``<x>_vs_<y>/<variable>_w1`` (1-Wasserstein distance, in the variable's units),
  ``<x>_vs_<y>/<variable>_ks`` (two-sample Kolmogorov-Smirnov statistic) and
  ``<x>_vs_<y>/<variable>_ks_p`` (its p-value); NaN (``null`` in the file) when a side has
  fewer than 2 used values.

statmorph and photutils are imported inside the functions (the GPU machines may lack them).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from galgen_lightning.parallel import WorkerPool, default_workers, single_threaded_children

VARIABLES: tuple[str, ...] = ("concentration", "asymmetry", "smoothness", "gini", "m20")
"""The five statistics, by their statmorph attribute names."""

LABELS: dict[str, str] = {"concentration": "C", "asymmetry": "A", "smoothness": "S", "gini": "Gini", "m20": "M$_{20}$"}

GROUPS: tuple[str, ...] = ("real_a", "real_b", "val", "sample_a", "sample_b")
"""Image groups of the test: training subsets A and B, validation, samples of A and of B."""

COMPARISONS: tuple[tuple[str, str], ...] = (
    ("sample_a", "real_a"),
    ("sample_b", "real_b"),
    ("sample_a", "sample_b"),
    ("real_a", "val"),
    ("sample_a", "val"),
    ("sample_b", "val"),
    ("real_a", "real_b"),
)
"""Pairs of groups whose distributions are compared; ``real_a`` vs ``val`` is the baseline."""

FAILURES: tuple[str, ...] = (
    "invalid_sample",
    "nonfinite",
    "blank",
    "segmentation_error",
    "no_source",
    "statmorph_error",
    "catastrophic",
    "bad_values",
)
"""Why an image has no measurement (see the module docstring)."""

_MESSAGE_CHARS = 200


@dataclass(frozen=True)
class MorphologyOptions:
    """How images are segmented and measured (defaults scale with the image size).

    Args:
        threshold: detection threshold in units of the background noise sigma.
        smoothing: sigma in pixels of the Gaussian applied before detection (below 0.3 px
            none is applied).
        n_pixels: fewest connected pixels of a segment (default: ``max(3, 5 (size / 64)^2)``).
        deblend: split blended sources with photutils' ``deblend_sources``.
        min_snr: segments whose total signal-to-noise ratio (sum over the segment divided by
            ``sigma`` times the square root of its area) is below this are noise and dropped.
        border: width in pixels of the outer frame used for the background (default ``size // 8``,
            at least 2).
        skybox_size: statmorph's ``skybox_size`` (default ``size // 4``, at least 8; statmorph
            halves it until an empty box is found). Too small a box on the clipped sky of a
            Lupton image often has a near-zero spread and fails statmorph's
            "background-subtracted" check.
        upsample: measure on images enlarged this many times (bilinear); 1 measures as given.
        max_flag: largest statmorph flag whose measurement is used (0 good, 1 suspect, 2 bad).
    """

    threshold: float = 2.0
    smoothing: float = 1.0
    n_pixels: int | None = None
    deblend: bool = True
    min_snr: float = 20.0
    border: int | None = None
    skybox_size: int | None = None
    upsample: int = 1
    max_flag: int = 1

    def __post_init__(self) -> None:
        if self.smoothing < 0 or self.min_snr < 0:
            raise ValueError(f"smoothing and min_snr must not be negative, got {self.smoothing} and {self.min_snr}")
        if self.threshold <= 0:
            raise ValueError(f"threshold must be positive, got {self.threshold}")
        if self.upsample < 1:
            raise ValueError(f"upsample must be at least 1, got {self.upsample}")
        if self.max_flag < 0:
            raise ValueError(f"max_flag must be at least 0, got {self.max_flag}")
        for name in ("n_pixels", "border", "skybox_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")

    def resolved(self, size: int) -> dict[str, Any]:
        """The options with defaults filled in for a (possibly upsampled) ``size`` x ``size`` image."""
        return {
            "n_pixels": max(3, round(5 * (size / 64) ** 2)) if self.n_pixels is None else int(self.n_pixels),
            "border": max(2, size // 8) if self.border is None else int(self.border),
            "skybox_size": max(8, size // 4) if self.skybox_size is None else int(self.skybox_size),
        }


@dataclass
class Measurement:
    """The morphology of one image.

    Attributes:
        values: statistic name -> value (NaN where the image failed or statmorph gave -99).
        flag: statmorph's flag (0 good, 1 suspect, 2 bad, 4 catastrophic), -1 if it did not run.
        reason: failure reason from :data:`FAILURES`, ``""`` when measured.
        message: statmorph's warnings or the exception text (at most 200 characters).
        sky: subtracted background level (NaN when not estimated).
        sky_sigma: background noise sigma (NaN when not estimated).
    """

    values: dict[str, float]
    flag: int = -1
    reason: str = ""
    message: str = ""
    sky: float = float("nan")
    sky_sigma: float = float("nan")

    @property
    def measured(self) -> bool:
        """statmorph returned all five statistics."""
        return self.reason == ""


def _failed(reason: str, message: str = "", **extra: Any) -> Measurement:
    return Measurement({v: float("nan") for v in VARIABLES}, reason=reason, message=message[:_MESSAGE_CHARS], **extra)


def missing_dependencies() -> list[str]:
    """The packages of the measurement (statmorph, photutils) that are not installed."""
    from importlib.util import find_spec

    return [name for name in ("statmorph", "photutils") if find_spec(name) is None]


# ----------------------------------------------------------------------------- one image
def as_images(images: Any) -> np.ndarray:
    """Images ``(n, h, w)`` or ``(n, 1, h, w)`` (NumPy or a CPU tensor) as float64 ``(n, h, w)``."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected images (n, h, w) or (n, 1, h, w), got shape {x.shape}")
    return x


def frame_mask(shape: tuple[int, int], border: int) -> np.ndarray:
    """Boolean mask, True on the outer frame of width ``border`` (all pixels if it covers them)."""
    mask = np.ones(shape, dtype=bool)
    if 2 * border < min(shape):
        mask[border:-border, border:-border] = False
    return mask


def estimate_background(image: np.ndarray, border: int, n_pixels: int = 5, threshold: float = 2.0) -> tuple[float, float]:
    """Background level and noise of a stamp, from its outer frame with sources masked.

    A first sigma-clipped estimate over the frame finds sources (at least ``n_pixels``
    connected pixels above ``threshold`` sigma); these, dilated by two pixels, are masked and
    the frame is measured again. The frame is used rather than the whole stamp because a large
    galaxy's wings cover much of a stamp. The level is the clipped *mean*: the Lupton stretch
    clips the sky noise at zero, so the median of the sky sits below its mean, and subtracting
    the median would leave a positive sky that grows every aperture flux.

    Args:
        image: ``(h, w)`` finite image.
        border: width of the frame in pixels.
        n_pixels: fewest connected pixels of a source to mask (single noise peaks are not).
        threshold: first-pass detection threshold in sigma.

    Returns:
        ``(level, sigma)``: sigma-clipped mean and standard deviation of the masked frame.
    """
    from astropy.stats import sigma_clipped_stats
    from scipy.ndimage import binary_dilation, label

    frame = frame_mask(image.shape, border)
    mean, median, std = sigma_clipped_stats(image[frame], sigma=3.0, cenfunc="mean")
    if std > 0:
        labels, _ = label(image > median + threshold * std, structure=np.ones((3, 3)))
        area = np.bincount(labels.ravel())
        area[0] = 0
        sources = binary_dilation(area[labels] >= n_pixels, iterations=2)
        keep = frame & ~sources
        if keep.sum() >= max(16, frame.sum() // 4):
            mean, median, std = sigma_clipped_stats(image[keep], sigma=3.0, cenfunc="mean")
    return float(mean), float(std)


def main_label(segmap: np.ndarray) -> int:
    """Label of the segment under the central pixel, else of the segment nearest to the centre.

    Args:
        segmap: ``(h, w)`` integer segmentation map, 0 for the background.

    Returns:
        The label (0 when the map has no segment).
    """
    h, w = segmap.shape
    ys, xs = np.nonzero(segmap)
    if ys.size == 0:
        return 0
    # distance of every source pixel to the geometric centre (a segment covering the central
    # pixel, or one of the four middle pixels of an even stamp, is the nearest)
    d2 = (ys - (h - 1) / 2) ** 2 + (xs - (w - 1) / 2) ** 2
    return int(segmap[ys[d2.argmin()], xs[d2.argmin()]])


def segment(
    image: np.ndarray, sigma: float, threshold: float, smoothing: float, n_pixels: int, deblend: bool, min_snr: float = 0.0
) -> np.ndarray | None:
    """Segmentation map of a background-subtracted image, or None when nothing is detected.

    Args:
        image: ``(h, w)`` background-subtracted image.
        sigma: background noise.
        threshold: detection threshold in units of ``sigma``.
        smoothing: Gaussian sigma in pixels applied before detection (none below 0.3).
        n_pixels: fewest connected pixels of a segment.
        deblend: split blended sources (photutils ``deblend_sources``).
        min_snr: drop segments whose summed signal over ``sigma * sqrt(area)`` is below this.
    """
    from photutils.segmentation import deblend_sources, detect_sources
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(image, smoothing) if smoothing >= 0.3 else image
    segm = detect_sources(smooth, threshold * sigma, n_pixels)
    if segm is None:
        return None
    if deblend:
        try:
            segm = deblend_sources(smooth, segm, n_pixels, progress_bar=False)
        except Exception:  # deblending is a refinement: keep the plain segmentation
            pass
    segmap = np.array(segm.data)
    return drop_faint_segments(image, segmap, sigma, min_snr) if min_snr > 0 else segmap


def drop_faint_segments(image: np.ndarray, segmap: np.ndarray, sigma: float, min_snr: float) -> np.ndarray | None:
    """Set segments with total S/N below ``min_snr`` to background; None if none is left.

    The S/N of a segment is its summed (background-subtracted) signal divided by
    ``sigma * sqrt(area)``: a few noise pixels that crossed the detection threshold score a
    few, a galaxy hundreds.
    """
    labels = segmap.ravel()
    area = np.bincount(labels)
    signal = np.bincount(labels, weights=image.ravel(), minlength=len(area))
    snr = signal / (max(sigma, 1e-12) * np.sqrt(np.maximum(area, 1)))
    faint = snr < min_snr
    faint[0] = False
    out = np.where(faint[segmap], 0, segmap)
    return out if out.any() else None


def _upsample(image: np.ndarray, factor: int) -> np.ndarray:
    from scipy.ndimage import zoom

    return zoom(image, factor, order=1) if factor > 1 else image


def _warning_text(caught: list) -> str:
    seen: list[str] = []
    for w in caught:
        text = str(w.message).strip()
        if text and text not in seen:
            seen.append(text)
    return "; ".join(seen)[:_MESSAGE_CHARS]


def measure_image(image: np.ndarray, options: MorphologyOptions | None = None) -> Measurement:
    """Morphology of the main source of one image; never raises for a bad image.

    Args:
        image: ``(h, w)`` image (e.g. in [0, 1] after the Lupton stretch).
        options: segmentation and statmorph options (default :class:`MorphologyOptions`).

    Returns:
        A :class:`Measurement`: the five statistics and statmorph's flag, or a failure reason.
    """
    import statmorph

    options = options or MorphologyOptions()
    image = np.asarray(image, dtype=np.float64)
    if not np.isfinite(image).all():
        return _failed("nonfinite")
    if np.ptp(image) == 0:
        return _failed("blank")
    image = _upsample(image, options.upsample)
    opts = options.resolved(min(image.shape))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sky, sigma = estimate_background(image, opts["border"], opts["n_pixels"])
            if not sigma > 0:
                # a noiseless frame (e.g. a sample with an exactly flat sky): one 8-bit grey level
                sigma = 1.0 / 255
            extra = {"sky": sky, "sky_sigma": sigma}
            data = image - sky
            segmap = segment(data, sigma, options.threshold, options.smoothing, opts["n_pixels"], options.deblend, options.min_snr)
        except Exception as e:  # astropy or photutils on an image they cannot handle
            return _failed("segmentation_error", f"{type(e).__name__}: {e}")
        label = main_label(segmap) if segmap is not None else 0
        if label == 0:
            return _failed("no_source", **extra)
        others = (segmap > 0) & (segmap != label)
        caught.clear()  # keep statmorph's warnings only
        try:
            morph = statmorph.SourceMorphology(
                data,
                segmap,
                label,
                mask=others if others.any() else None,
                weightmap=np.full_like(data, sigma),
                skybox_size=opts["skybox_size"],
            )
        except Exception as e:  # statmorph's own asserts and numerical errors
            return _failed("statmorph_error", f"{type(e).__name__}: {e}", **extra)
    message = _warning_text(caught)
    flag = int(morph.flag)
    values = {}
    for name in VARIABLES:
        value = float(morph[name])
        values[name] = value if np.isfinite(value) and value != -99.0 else float("nan")
    if flag >= 4:
        return Measurement({v: float("nan") for v in VARIABLES}, flag, "catastrophic", message, **extra)
    if not all(np.isfinite(v) for v in values.values()):
        return Measurement(values, flag, "bad_values", message, **extra)
    return Measurement(values, flag, "", message, **extra)


# ----------------------------------------------------------------------------- many images
def _measure_chunk(images: Sequence[np.ndarray], options: MorphologyOptions) -> list[Measurement]:
    return [measure_image(image, options) for image in images]


PRELOAD = ["galgen_lightning.evaluation.morphology_measure", "statmorph", "photutils.segmentation", "astropy.stats", "scipy.ndimage", "scipy.stats"]


def _measure_parallel(x: Sequence[np.ndarray], options: MorphologyOptions, pool: WorkerPool, bar: Any) -> list[Measurement]:
    """Measure ``x`` over the pool's processes, in order; chunks a broken pool lost are redone here."""
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    n_chunks = min(len(x), pool.workers * 4)
    bounds = np.linspace(0, len(x), n_chunks + 1).astype(int)
    chunks = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    done: dict[int, list[Measurement]] = {}
    try:
        with single_threaded_children():  # for workers started now (the forkserver's environment wins)
            executor = pool.executor()
            futures = {executor.submit(_measure_chunk, x[a:b], options): k for k, (a, b) in enumerate(chunks)}
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            bar.update(len(done[futures[future]]))
    except BrokenProcessPool:
        pool.discard()
        missing = sum(b - a for k, (a, b) in enumerate(chunks) if k not in done)
        warnings.warn(f"morphology: a worker process died; measuring the {missing} remaining images in this process", RuntimeWarning, stacklevel=3)
    for k, (a, b) in enumerate(chunks):
        if k not in done:
            done[k] = _measure_chunk(x[a:b], options)
            bar.update(b - a)
    return [m for k in range(len(chunks)) for m in done[k]]


def _prepare(images: Any, valid: Sequence[bool] | np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    x = as_images(images)
    mask = np.ones(len(x), dtype=bool) if valid is None else np.asarray(valid, dtype=bool).reshape(-1)
    if mask.shape != (len(x),):
        raise ValueError(f"valid must have one entry per image ({len(x)}), got {mask.shape}")
    return x, mask


def measure_groups(
    groups: dict[str, tuple[Any, Sequence[bool] | np.ndarray | None]],
    options: MorphologyOptions | None = None,
    workers: int | None = 1,
    progress: bool | None = None,
    desc: str = "morphology",
    pool: WorkerPool | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Measure several groups of images in one process pool, keeping every image's outcome.

    With ``workers > 1`` the images are measured in a process pool: ``pool`` if given (kept
    open), else one created for the call. On Linux the workers are forked from a
    ``forkserver`` (a clean process that imports statmorph once per run), elsewhere spawned;
    either way each worker imports the parent's ``__main__`` module once, so scripts need the
    ``if __name__ == "__main__":`` guard. Thread-count variables are set to 1 for the workers.
    If a worker dies, the images it held are measured in this process (with a warning) rather
    than lost. Results do not depend on the number of workers.

    Args:
        groups: name -> ``(images, valid)``: images ``(n, h, w)`` or ``(n, 1, h, w)`` (NumPy or
            a CPU tensor) and ``(n,)`` bools or None; an image with ``valid`` False is
            counted as ``invalid_sample`` without being measured.
        options: segmentation and statmorph options.
        workers: processes (None: the CPUs this process may use); 1 measures in-process.
        progress: show a tqdm bar (None: only for more than 100 images in all).
        desc: the bar's label.
        pool: a :class:`WorkerPool` to use (and leave open) instead of a new one; its size
            replaces ``workers``.

    Returns:
        name -> table of ``(n,)`` arrays: one per variable, ``flag``, ``reason``, ``message``,
        ``used``, ``sky`` and ``sky_sigma`` (see the module docstring).

    Raises:
        ValueError: for badly shaped images or ``valid`` masks, or ``workers`` below 1.
    """
    from tqdm.auto import tqdm

    options = options or MorphologyOptions()
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    prepared = {name: _prepare(images, valid) for name, (images, valid) in groups.items()}
    todo = [image for x, mask in prepared.values() for image in x[mask]]
    show = len(todo) > 100 if progress is None else progress
    with tqdm(total=len(todo), desc=desc, disable=not show, leave=False, dynamic_ncols=True) as bar:
        if (pool is None and workers == 1) or len(todo) < 2:
            results = []
            for image in todo:
                results.append(measure_image(image, options))
                bar.update()
        elif pool is not None:
            results = _measure_parallel(todo, options, pool, bar)
        else:
            with WorkerPool(workers, PRELOAD) as own:
                results = _measure_parallel(todo, options, own, bar)
    out: dict[str, dict[str, np.ndarray]] = {}
    start = 0
    for name, (x, mask) in prepared.items():
        measurements = [_failed("invalid_sample") for _ in range(len(x))]
        for i in np.flatnonzero(mask):
            measurements[i] = results[start]
            start += 1
        out[name] = table(measurements, options.max_flag)
    return out


def measure_images(
    images: Any,
    options: MorphologyOptions | None = None,
    valid: Sequence[bool] | np.ndarray | None = None,
    workers: int | None = 1,
    progress: bool | None = None,
    desc: str = "morphology",
    pool: WorkerPool | None = None,
) -> dict[str, np.ndarray]:
    """Measure one group of images (see :func:`measure_groups`, which this calls).

    Args:
        images: ``(n, h, w)`` or ``(n, 1, h, w)`` images (NumPy or a CPU tensor).
        options: segmentation and statmorph options.
        valid: ``(n,)`` bools; False marks an image as ``invalid_sample`` without measuring it.
        workers: processes (None: the CPUs this process may use); 1 measures in-process.
        progress: show a tqdm bar (None: only for more than 100 images).
        desc: the bar's label.
        pool: a :class:`WorkerPool` to use (and leave open) instead of a new one.

    Returns:
        A table of ``(n,)`` arrays: one per variable, ``flag``, ``reason``, ``message``,
        ``used``, ``sky`` and ``sky_sigma`` (see the module docstring).
    """
    return measure_groups({desc: (images, valid)}, options, workers, progress, desc, pool)[desc]


def table(measurements: Sequence[Measurement], max_flag: int = 1) -> dict[str, np.ndarray]:
    """Stack measurements into ``(n,)`` arrays (the per-group part of the ``.npz`` file)."""
    out: dict[str, np.ndarray] = {v: np.array([m.values[v] for m in measurements], dtype=np.float64) for v in VARIABLES}
    out["flag"] = np.array([m.flag for m in measurements], dtype=np.int64)
    out["reason"] = np.array([m.reason for m in measurements], dtype=str)
    out["message"] = np.array([m.message for m in measurements], dtype=str)
    out["used"] = np.array([m.measured and 0 <= m.flag <= max_flag for m in measurements], dtype=bool)
    out["sky"] = np.array([m.sky for m in measurements], dtype=np.float64)
    out["sky_sigma"] = np.array([m.sky_sigma for m in measurements], dtype=np.float64)
    return out


# ----------------------------------------------------------------------------- statistics
def counts(group: dict[str, np.ndarray], max_flag: int = 1) -> dict[str, float]:
    """How many images of one group were measured, failed (per reason), flagged, suspect, used."""
    reason = group["reason"]
    measured = reason == ""
    out = {"n": float(len(reason)), "measured": float(measured.sum()), "failed": float((~measured).sum())}
    out["flagged"] = float((measured & (group["flag"] > max_flag)).sum())
    out["suspect"] = float((measured & (group["flag"] == 1)).sum())
    out["used"] = float((measured & (group["flag"] >= 0) & (group["flag"] <= max_flag)).sum())
    for name in FAILURES:
        out[f"failed_{name}"] = float((reason == name).sum())
    return out


def used_values(group: dict[str, np.ndarray], variable: str) -> np.ndarray:
    """The finite values of ``variable`` over the group's used images."""
    values = group[variable][group["used"]]
    return values[np.isfinite(values)]


def compare(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """1-Wasserstein distance and two-sample KS statistic and p-value of two samples.

    Args:
        x: values of one group (non-finite values are dropped).
        y: values of the other.

    Returns:
        ``{"w1", "ks", "ks_p"}``; NaN when either side has fewer than 2 values.
    """
    from scipy.stats import ks_2samp, wasserstein_distance

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) < 2 or len(y) < 2:
        return {"w1": float("nan"), "ks": float("nan"), "ks_p": float("nan")}
    ks = ks_2samp(x, y)
    return {"w1": float(wasserstein_distance(x, y)), "ks": float(ks.statistic), "ks_p": float(ks.pvalue)}


def morphology_statistics(
    groups: dict[str, dict[str, np.ndarray]],
    comparisons: Sequence[tuple[str, str]] = COMPARISONS,
    max_flag: int = 1,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Counts, medians and distribution distances from per-group tables (a pure function).

    Args:
        groups: group name -> table from :func:`measure_images` (optionally with an ``index``
            array). Comparisons naming an absent group are skipped.
        comparisons: ``(x, y)`` pairs of group names to compare.
        max_flag: the largest statmorph flag counted as used (as in the tables).

    Returns:
        ``(scalars, arrays)``: the ``metrics.jsonl`` keys and the ``.npz`` keys of the module
        docstring.
    """
    scalars: dict[str, float] = {}
    arrays: dict[str, np.ndarray] = {
        "variables": np.array(VARIABLES),
        "groups": np.array(list(groups)),
        "failures": np.array(FAILURES),
        "max_flag": np.array(max_flag),
    }
    for name, group in groups.items():
        for key, value in counts(group, max_flag).items():
            scalars[f"{name}/{key}"] = value
        for variable in VARIABLES:
            values = used_values(group, variable)
            scalars[f"{name}/{variable}_median"] = float(np.median(values)) if values.size else float("nan")
        for key, value in group.items():
            arrays[f"{name}/{key}"] = value
    for x, y in comparisons:
        if x not in groups or y not in groups:
            continue
        for variable in VARIABLES:
            for key, value in compare(used_values(groups[x], variable), used_values(groups[y], variable)).items():
                scalars[f"{x}_vs_{y}/{variable}_{key}"] = value
    return scalars, arrays


# ----------------------------------------------------------------------------- figure
_STYLE = {
    "real": dict(color="0.6", histtype="stepfilled", alpha=0.5, label="real A + B (training)"),
    "val": dict(color="k", histtype="step", linestyle="--", lw=1.2, label="validation"),
    "sample_a": dict(color="tab:red", histtype="step", lw=1.5, label="samples A"),
    "sample_b": dict(color="tab:blue", histtype="step", lw=1.5, label="samples B"),
}


def _arrays_group(arrays: dict[str, np.ndarray], name: str, variable: str) -> np.ndarray:
    values, used = arrays.get(f"{name}/{variable}"), arrays.get(f"{name}/used")
    if values is None or used is None:
        return np.empty(0)
    values = values[used]
    return values[np.isfinite(values)]


def morphology_figure(arrays: dict[str, np.ndarray], scalars: dict[str, float] | None = None, title: str = "morphology", bins: int = 30):
    """One panel per variable: histograms of real vs samples A vs samples B, plus a count table.

    Args:
        arrays: the ``.npz`` contents (:func:`morphology_statistics`).
        scalars: the scalars, for the distances in the panel titles (optional).
        title: figure title.
        bins: histogram bins per panel (shared by all groups of a panel).

    Returns:
        A matplotlib figure (the caller saves and closes it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalars = scalars or {}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, variable in zip(axes.flat, VARIABLES):
        data = {
            "real": np.concatenate([_arrays_group(arrays, "real_a", variable), _arrays_group(arrays, "real_b", variable)]),
            "val": _arrays_group(arrays, "val", variable),
            "sample_a": _arrays_group(arrays, "sample_a", variable),
            "sample_b": _arrays_group(arrays, "sample_b", variable),
        }
        pooled = np.concatenate(list(data.values()))
        if pooled.size == 0:
            ax.text(0.5, 0.5, "no measurement", ha="center", va="center", transform=ax.transAxes)
        else:
            low, high = np.percentile(pooled, [0.5, 99.5])
            if high <= low:
                low, high = low - 0.5, high + 0.5
            edges = np.linspace(low, high, bins + 1)
            for key, values in data.items():
                if values.size:
                    ax.hist(np.clip(values, low, high), bins=edges, density=True, **{**_STYLE[key], "label": f"{_STYLE[key]['label']} ({values.size})"})
        parts = []
        for (x, y), short in ((("sample_a", "sample_b"), "A-B"), (("sample_a", "real_a"), "A-realA"), (("real_a", "val"), "realA-val")):
            w1 = scalars.get(f"{x}_vs_{y}/{variable}_w1")
            if w1 is not None and np.isfinite(w1):
                parts.append(f"{short} {w1:.3g}")
        ax.set_title(f"{LABELS[variable]}" + (f"  W1: {', '.join(parts)}" if parts else ""), fontsize=9)
        ax.set_xlabel(variable)
        ax.legend(fontsize=6)
    table_ax = axes.flat[len(VARIABLES)]
    table_ax.axis("off")
    rows = []
    for name in GROUPS:
        reason = arrays.get(f"{name}/reason")
        if reason is None:
            continue
        group = {"reason": reason, "flag": arrays[f"{name}/flag"]}
        c = counts(group, int(arrays.get("max_flag", 1)))
        reasons = ", ".join(f"{r} {int(c[f'failed_{r}'])}" for r in FAILURES if c[f"failed_{r}"])
        rows.append(f"{name:9s} n {int(c['n']):4d}  used {int(c['used']):4d}  flagged {int(c['flagged']):3d}  failed {int(c['failed']):3d}" + (f"\n{'':9s} ({reasons})" if reasons else ""))
    table_ax.text(0.0, 1.0, "\n".join(rows) or "no groups", va="top", ha="left", family="monospace", fontsize=7, transform=table_ax.transAxes)
    table_ax.set_title("images per group", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
