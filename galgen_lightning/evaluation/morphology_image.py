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

Measuring many images in a process pool: :mod:`galgen_lightning.evaluation.morphology_measure`;
the statistics, the ``.npz`` and ``metrics.jsonl`` keys and the figure:
:mod:`galgen_lightning.evaluation.morphology_stats`. statmorph and photutils are imported inside
the functions (the GPU machines may lack them).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

VARIABLES: tuple[str, ...] = ("concentration", "asymmetry", "smoothness", "gini", "m20")
"""The five statistics, by their statmorph attribute names."""

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


def failed_measurement(reason: str, message: str = "", **extra: Any) -> Measurement:
    """A measurement that failed for ``reason`` (a name in :data:`FAILURES`): every value NaN."""
    return Measurement({v: float("nan") for v in VARIABLES}, reason=reason, message=message[:_MESSAGE_CHARS], **extra)


def missing_dependencies() -> list[str]:
    """The packages of the measurement (statmorph, photutils) that are not installed."""
    from importlib.util import find_spec

    return [name for name in ("statmorph", "photutils") if find_spec(name) is None]


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
        return failed_measurement("nonfinite")
    if np.ptp(image) == 0:
        return failed_measurement("blank")
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
            segmap = segment(
                data, sigma, options.threshold, options.smoothing, opts["n_pixels"], options.deblend, options.min_snr
            )
        except Exception as e:  # astropy or photutils on an image they cannot handle
            return failed_measurement("segmentation_error", f"{type(e).__name__}: {e}")
        label = main_label(segmap) if segmap is not None else 0
        if label == 0:
            return failed_measurement("no_source", **extra)
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
            return failed_measurement("statmorph_error", f"{type(e).__name__}: {e}", **extra)
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
