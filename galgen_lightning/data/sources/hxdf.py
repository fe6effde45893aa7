"""Real galaxies that need no download: stamps cut from the Hubble eXtreme Deep Field.

scikit-image ships a colour JPEG of the Hubble XDF (``skimage.data.hubble_deep_field()``,
872 x 1000 pixels, in its own data folder: no network). :class:`HubbleDeepField` finds the
galaxies in it with a photutils segmentation and cuts a centred square stamp around each one
large enough. About fifty galaxies whose stamps share no pixel (more when they may overlap):
too few to train a large N, but real pixels, for the smallest-N experiments, for tests of the
real-data path and as a real reference beside the synthetic set.

The recipe, deterministic: grayscale = the mean of the 8-bit RGB channels / 255 (the grayscale
of the Lupton images elsewhere in galgen); background level and noise = sigma-clipped median
and standard deviation of the whole image; sources = connected regions of at least
``min_area`` pixels above ``nsigma`` noise levels (``photutils.segmentation.detect_sources``);
centre = the flux-weighted centroid of the region. Sources are taken from the largest down;
a source whose stamp would leave the image, or would share more than ``max_overlap`` of its
pixels with the stamp of a larger taken source, is dropped, and so is a stamp with more than
30% zero pixels. ``load`` returns the stamps from the largest source down.

With the default ``max_overlap = 0`` no pixel of the XDF image is in two stamps, so subsets A,
B and held-out share no sky: disjoint by content, not only by hash (the split's near-duplicate
search looks at shifts of a few pixels only, and two stamps 20 pixels apart share most of
their pixels).
"""

from __future__ import annotations

import functools

import numpy as np

from galgen_lightning.data.sources.base import MAX_ZERO_FRACTION, GalaxySource, resize
from galgen_lightning.errors import GalgenError, install_hint

HXDF_VERSION: int = 2
"""Bump whenever the stamp recipe changes (it is written to the manifest)."""

DROPPED = {
    "edge": "too close to the edge",
    "overlap": "shares sky with a larger source's stamp",
    "zeros": f"more than {MAX_ZERO_FRACTION:.0%} zero pixels",
}
"""Why a detected source gives no stamp, by the key of ``describe()["report"]``."""


def hubble_deep_field_gray() -> np.ndarray:
    """The XDF image that scikit-image ships, as float64 grayscale in [0, 1] (mean of R, G, B / 255)."""
    try:
        from skimage import data
    except ImportError:
        raise GalgenError(f"data.source: HubbleDeepField needs scikit-image ({install_hint('skimage')})") from None
    try:
        rgb = data.hubble_deep_field()
    except Exception as e:  # a scikit-image without its data files would try to download
        raise GalgenError(
            f"data.source: scikit-image could not open its Hubble Deep Field image ({type(e).__name__}: {e})"
        ) from None
    return rgb.astype(np.float64).mean(axis=-1) / 255.0


@functools.lru_cache(maxsize=4)
def find_stamps(stamp: int, min_area: int, nsigma: float, max_overlap: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Cut the galaxy stamps (see the module docstring).

    Returns:
        ``(stamps, centres, counts)``: ``(K, stamp, stamp)`` float32 in [0, 1], the ``(K, 2)``
        integer (row, column) centres in the XDF image, and how many sources were detected and
        dropped for each reason.
    """
    from astropy.stats import sigma_clipped_stats
    from photutils.segmentation import detect_sources
    from scipy import ndimage

    gray = hubble_deep_field_gray()
    _, median, std = sigma_clipped_stats(gray, sigma=3.0, maxiters=10)
    signal = gray - median
    segments = detect_sources(signal, nsigma * std, min_area)
    counts = {"detected": 0, **dict.fromkeys(DROPPED, 0)}
    if segments is None:
        return np.zeros((0, stamp, stamp), np.float32), np.zeros((0, 2), np.int64), counts
    labels = np.asarray(segments.data)
    n = int(labels.max())
    counts["detected"] = n
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    centroids = np.array(ndimage.center_of_mass(np.clip(signal, 0.0, None), labels, np.arange(1, n + 1)))
    order = sorted(range(n), key=lambda i: (-areas[i], centroids[i][0], centroids[i][1]))
    half = stamp // 2
    stamps, centres = [], []
    for i in order:
        row, col = (int(round(v)) for v in centroids[i])
        top, left = row - half, col - half
        if top < 0 or left < 0 or top + stamp > gray.shape[0] or left + stamp > gray.shape[1]:
            counts["edge"] += 1
            continue
        if centres and shared_share(np.array(centres), (row, col), stamp).max() > max_overlap:
            counts["overlap"] += 1
            continue
        cut = gray[top : top + stamp, left : left + stamp]
        if (cut == 0).mean() > MAX_ZERO_FRACTION:
            counts["zeros"] += 1
            continue
        stamps.append(cut.astype(np.float32))
        centres.append((row, col))
    out = np.stack(stamps) if stamps else np.zeros((0, stamp, stamp), np.float32)
    out.flags.writeable = False  # shared by every caller of the cache
    return out, np.array(centres, dtype=np.int64).reshape(-1, 2), counts


def shared_share(centres: np.ndarray, centre: tuple[int, int], stamp: int) -> np.ndarray:
    """Share of the pixels of the ``stamp``-sided square around ``centre`` inside the square around each of ``centres``."""
    gap = np.abs(centres - np.asarray(centre))
    return np.prod(np.clip(stamp - gap, 0, None), axis=1) / stamp**2


class HubbleDeepField(GalaxySource):
    """Real galaxies without a download: centred stamps cut from the Hubble XDF image of scikit-image.

    About fifty galaxies (``available()`` says how many): for the smallest-N experiments,
    tests of the real-data path and as a real reference beside the synthetic set. ``load``
    area-averages the stamps to ``image_size`` (never up).

    Args:
        stamp: side of the stamps in XDF pixels (``data.image_size`` may not exceed it).
        min_area: smallest source, in pixels above the detection threshold.
        nsigma: detection threshold in background noise levels.
        max_overlap: drop a source whose stamp would share more than this share of its pixels
            with a larger source's stamp (0: stamps never share a pixel, so A, B and held-out
            share no sky; raising it gives more, overlapping, stamps).
    """

    def __init__(self, stamp: int = 64, min_area: int = 100, nsigma: float = 3.0, max_overlap: float = 0.0) -> None:
        for name, value in (("stamp", stamp), ("min_area", min_area), ("nsigma", nsigma)):
            if value <= 0:
                raise GalgenError(f"data.source.{name} must be positive, got {value}")
        if not 0 <= max_overlap <= 1:
            raise GalgenError(f"data.source.max_overlap must be in [0, 1], got {max_overlap}")
        self.stamp = stamp
        self.min_area = min_area
        self.nsigma = nsigma
        self.max_overlap = max_overlap

    def _stamps(self) -> tuple[np.ndarray, np.ndarray, dict]:
        return find_stamps(self.stamp, self.min_area, float(self.nsigma), float(self.max_overlap))

    def available(self) -> int:
        return len(self._stamps()[0])

    def centres(self) -> np.ndarray:
        """``(K, 2)`` (row, column) centres of the stamps in the XDF image, in ``load`` order."""
        return self._stamps()[1].copy()

    def load(self, count: int, image_size: int) -> np.ndarray:
        if image_size > self.stamp:
            raise GalgenError(
                f"data.image_size={image_size} is larger than the Hubble Deep Field stamps (data.source.stamp={self.stamp})"
            )
        stamps = self._stamps()[0]
        if len(stamps) == 0:
            raise GalgenError(f"data.source: no galaxy of at least {self.min_area} pixels found in the Hubble Deep Field")
        return resize(stamps[:count], image_size, "the Hubble Deep Field stamps")

    def describe(self) -> dict:
        stamps, _, counts = self._stamps()
        return {
            "source": "hxdf",
            "version": HXDF_VERSION,
            "stamp": self.stamp,
            "min_area": self.min_area,
            "nsigma": self.nsigma,
            "max_overlap": self.max_overlap,
            "galaxies": len(stamps),
            "report": dict(counts),
        }
