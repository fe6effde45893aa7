"""Galaxy cutouts in FITS files (e.g. Legacy Survey DR9 g, r, z), preprocessed as in the paper.

A cutout's bands go through astropy's ``make_lupton_rgb`` and the grayscale of the synthetic set
(the renderer's own function, so both sources map colours identically), then are area-averaged
to ``image_size``; conversion is cached by :class:`~galgen_lightning.data.sources.reader.CachedReader`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galgen_lightning.data.sources.base import MAX_ZERO_FRACTION, resize
from galgen_lightning.data.sources.reader import (
    BANDS,
    FATAL,
    NAN,
    SHAPES,
    SMALL,
    UNREADABLE,
    ZEROS,
    CachedReader,
    Reject,
    Result,
    check_positive,
    files_fingerprint,
    list_files,
)
from galgen_lightning.errors import GalgenError, first_line

FITS_PATTERN = "**/*.fit*"  # .fits, .fit, .fits.gz, .fits.fz, in subfolders too
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz", ".fz")


@dataclass(frozen=True)
class FitsRecipe:
    """How a FITS cutout becomes one grayscale image (picklable, sent to the workers).

    Attributes:
        bands: the band of each plane or HDU in the file (``None``: from the header keywords
            ``BANDS`` / ``BAND0``, ``BAND1``, ... / ``FILTER``, else ``"grz"``).
        rgb: the bands of the red, green and blue channels of ``make_lupton_rgb``.
        crop: side of the centred square cut before the colour mapping (``None``: the largest).
        q: Lupton asinh softening ``Q``.
        stretch: Lupton linear stretch.
        image_size: side of the result.
        max_zero_fraction: reject a cutout with more zero pixels than this in any used band.
    """

    bands: str | None
    rgb: str
    crop: int | None
    q: float
    stretch: float
    image_size: int
    max_zero_fraction: float = MAX_ZERO_FRACTION


def _header_bands(header: Any, planes: int) -> str | None:
    """Band letters from a header: ``BANDS`` ("grz"), or ``BAND0``, ``BAND1``, ..., or ``FILTER`` (one plane)."""
    text = header.get("BANDS")
    if isinstance(text, str) and len(text.strip()) == planes:
        return text.strip()
    letters = [header.get(f"BAND{i}") for i in range(planes)]
    if all(isinstance(b, str) and len(b.strip()) == 1 for b in letters):
        return "".join(b.strip() for b in letters)
    if planes == 1:
        for key in ("BAND", "FILTER"):
            value = header.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()[0]
    return None


def read_fits_planes(path: str) -> tuple[list[np.ndarray], str | None]:
    """The 2-D image planes of one FITS file, and their band letters if the headers name them.

    A file holds either one ``(bands, H, W)`` cube or one 2-D image per HDU (empty primary
    HDUs and tables are skipped; leading axes of length 1 are dropped).

    Raises:
        Reject: unreadable or truncated file, no image, or a layout that is neither.
    """
    from astropy.io import fits

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(path, memmap=False) as hdul:
                found = []
                for hdu in hdul:
                    if getattr(hdu, "is_image", False) and hdu.data is not None and hdu.data.size:
                        data = np.asarray(hdu.data)
                        while data.ndim > 2 and data.shape[0] == 1:
                            data = data[0]
                        found.append((data, hdu.header))
        except Exception as e:  # astropy raises many types (OSError, ValueError, TypeError, ...) on broken files
            failure: str | None = first_line(e, 160, with_type=True)
        else:
            failure = None
    truncated = [str(w.message).splitlines()[0][:160] for w in caught if "truncated" in str(w.message).lower()]
    if truncated:
        raise Reject(UNREADABLE, f"truncated FITS file ({truncated[0]})")
    if failure:
        raise Reject(UNREADABLE, f"unreadable FITS file ({failure})")
    if not found:
        raise Reject(BANDS, "holds no image data")
    if len(found) == 1 and found[0][0].ndim == 3:
        cube, header = found[0]
        return list(cube), _header_bands(header, len(cube))
    if all(data.ndim == 2 for data, _ in found):
        letters = [_header_bands(header, 1) for _, header in found]
        named = "".join(b for b in letters if b) if all(letters) else None
        return [data for data, _ in found], named
    shapes = ", ".join(str(data.shape) for data, _ in found)
    raise Reject(BANDS, f"holds images of shapes {shapes}; expected one (bands, H, W) cube or one 2-D image per HDU")


def fits_to_gray(planes: Sequence[np.ndarray], file_bands: str | None, recipe: FitsRecipe, name: str) -> np.ndarray:
    """Check, crop and colour-map the band planes of one cutout into one grayscale image.

    NaN/infinite pixels anywhere in the used bands, or more than ``max_zero_fraction`` zero
    pixels in one of them, reject the cutout (the paper's source pipeline does the same on the
    full cutout). The centred ``crop`` goes through ``make_lupton_rgb`` (in the file's single
    precision when it has it, else in double) and the grayscale conversion of the synthetic
    set, then is area-averaged to ``image_size``.

    Raises:
        Reject: the rejection, with its reason.
    """
    # the renderer's own Lupton grayscale (one owner); giving it a public name would change the
    # renderer's bytes, so its digest and every synthetic cache key: it waits for the renderer's split
    from galgen_lightning.data.synthetic import lupton_gray

    bands = recipe.bands or file_bands or ("grz" if len(planes) == 3 else None)
    if bands is None:
        raise Reject(
            BANDS, f"has {len(planes)} bands and its header does not name them; expected 3 (g, r, z) or set data.source.bands"
        )
    if len(bands) != len(planes):
        raise Reject(BANDS, f"has {len(planes)} band{'s' * (len(planes) != 1)}; expected {len(bands)} ({bands!r})")
    missing = [b for b in recipe.rgb if b not in bands]
    if missing:
        raise Reject(BANDS, f"has bands {bands!r}, without {''.join(missing)!r} that data.source.rgb={recipe.rgb!r} needs")
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        raise Reject(SHAPES, f"band shapes differ: {', '.join(str(p.shape) for p in planes)}")
    used = [np.asarray(planes[bands.index(b)]) for b in recipe.rgb]  # R, G, B, whole cutouts
    bad = sum(p.size - int(np.count_nonzero(np.isfinite(p))) for p in used)
    if bad:
        raise Reject(NAN, f"{bad} NaN or infinite pixels")
    zeros = [np.count_nonzero(p == 0) / p.size for p in used]
    worst = int(np.argmax(zeros))
    if zeros[worst] > recipe.max_zero_fraction:
        raise Reject(ZEROS, f"{zeros[worst]:.0%} of its {recipe.rgb[worst]} pixels are zero")
    h, w = used[0].shape
    side = recipe.crop or min(h, w)
    if side > min(h, w):
        raise Reject(SMALL, f"is {h}x{w}, smaller than data.source.crop={recipe.crop}")
    if side < recipe.image_size:
        raise Reject(FATAL, f"cutout is {h}x{w}, smaller than data.image_size={recipe.image_size}")
    top, left = (h - side) // 2, (w - side) // 2
    cut = np.stack([p[top : top + side, left : left + side] for p in used])
    # single-precision data (what FITS cutouts hold) stays single: astropy maps it twice as fast
    cut = cut.astype(np.float32 if cut.dtype.kind == "f" and cut.dtype.itemsize == 4 else np.float64)
    gray = lupton_gray(cut[::-1], recipe.q, recipe.stretch)  # lupton_gray takes (B, G, R)
    return resize(gray[None], recipe.image_size, name)[0]


def convert_fits(recipe: FitsRecipe, galaxies: list[tuple[str | None, ...]]) -> list[Result]:
    """Convert cutouts: each galaxy is one file path, or one path per band of ``recipe.bands``
    (``None`` for a missing band file). Never raises for a bad file: it becomes a rejection."""
    out: list[Result] = []
    for paths in galaxies:
        try:
            if len(paths) == 1:
                planes, file_bands = read_fits_planes(paths[0])
            else:
                planes, file_bands = _read_band_files(paths, recipe.bands or "grz")
            out.append((fits_to_gray(planes, file_bands, recipe, str(paths[0])), "", ""))
        except Reject as r:
            out.append((None, r.reason, r.detail))
    return out


def _read_band_files(paths: Sequence[str | None], bands: str) -> tuple[list[np.ndarray], str]:
    planes = []
    for band, path in zip(bands, paths):
        if path is None:
            raise Reject(BANDS, f"has no {band}-band file")
        found, _ = read_fits_planes(path)
        if len(found) != 1:
            raise Reject(BANDS, f"{Path(path).name} holds {len(found)} images; expected one {band}-band image")
        planes.append(found[0])
    return planes, bands


def _fits_stem(name: str) -> str:
    lower = name.lower()
    for suffix in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


class FitsCutouts(CachedReader):
    """Galaxy cutouts in FITS files (e.g. Legacy Survey DR9 g, r, z), preprocessed as in the paper.

    One file per galaxy, its bands as one ``(bands, H, W)`` cube or as one 2-D image per HDU, or
    (``band_files=True``) one file per band named ``<galaxy>_<band>.fits``. Each cutout is
    centre-cropped, combined with astropy's ``make_lupton_rgb`` into an RGB image, reduced to one
    grayscale channel (the mean of the 8-bit channels / 255, as the synthetic set) and
    area-averaged to ``image_size``. Cutouts with NaN pixels or more than 30% zero pixels in a
    band are rejected and counted; unreadable or malformed files are skipped and reported (or
    fatal with ``strict``). Converted once, in parallel, into a resumable cache.

    Args:
        directory: the folder of FITS files (searched with ``pattern``).
        pattern: glob of the files, relative to ``directory`` (default: every ``.fits``,
            ``.fit``, ``.fits.gz`` or ``.fits.fz`` file, in subfolders too).
        bands: the band of each plane (cube) or HDU, in file order, e.g. ``"grz"``; with
            ``band_files``, the bands to read. Default: from the header keywords ``BANDS`` or
            ``BAND0``, ``BAND1``, ... (written by the Legacy Survey cutout service), else ``"grz"``.
        rgb: the bands of the red, green and blue channels of ``make_lupton_rgb`` (the paper:
            z, r, g).
        crop: side in pixels of the centred square kept before the colour mapping (default:
            the largest centred square).
        q: Lupton asinh softening ``Q``.
        stretch: Lupton linear stretch (the paper: 0.2).
        band_files: one file per band, ``<galaxy>_<band>.fits`` (the layout of the paper's
            download script) instead of one file per galaxy.
        **kwargs: the cache's options (:class:`CachedReader`: ``cache_dir``, ``workers``,
            ``chunk`` cutouts per cached file, ``strict``).
    """

    kind = "fits"
    unit = "cutout"
    option = "data.source.directory"
    noun = "FITS cutouts"

    def __init__(
        self,
        directory: str,
        pattern: str = FITS_PATTERN,
        bands: str | None = None,
        rgb: str = "zrg",
        crop: int | None = None,
        q: float = 8.0,
        stretch: float = 0.2,
        band_files: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_positive(q, "data.source.q")
        check_positive(stretch, "data.source.stretch")
        check_positive(crop, "data.source.crop")
        if len(rgb) != 3:
            raise GalgenError(f"data.source.rgb must name 3 bands (red, green, blue), got {rgb!r}")
        if bands is not None and (not bands or len(set(bands)) != len(bands)):
            raise GalgenError(f"data.source.bands must name each band once, got {bands!r}")
        if band_files and bands is not None and any(b not in bands for b in rgb):
            raise GalgenError(f"data.source.bands={bands!r} lacks a band of data.source.rgb={rgb!r}")
        self.directory = self.location = Path(directory).expanduser()
        self.pattern = pattern
        self.bands = bands
        self.rgb = rgb
        self.crop = crop
        self.q = q
        self.stretch = stretch
        self.band_files = band_files

    def _params(self) -> dict:
        return {
            "directory": str(self.directory.resolve()),
            "pattern": self.pattern,
            "bands": self.bands,
            "rgb": self.rgb,
            "crop": self.crop,
            "q": self.q,
            "stretch": self.stretch,
            "band_files": self.band_files,
            "max_zero_fraction": MAX_ZERO_FRACTION,
        }

    def _scan(self) -> tuple[list[str], list[Any], dict]:
        files = list_files(self.directory, self.pattern, FITS_SUFFIXES, self.option)
        fingerprint = {"files": len(files), "sha1": files_fingerprint(files, self.directory)}
        if not self.band_files:
            return [p.relative_to(self.directory).as_posix() for p in files], [(str(p),) for p in files], fingerprint
        bands = self.bands or "grz"
        groups: dict[str, dict[str, str]] = {}
        for p in files:
            rel = p.relative_to(self.directory).as_posix()
            stem = _fits_stem(rel)
            for b in bands:
                if stem.endswith(f"_{b}"):
                    groups.setdefault(stem[:-2], {})[b] = str(p)
        if not groups:
            raise GalgenError(
                f"data.source.band_files: no file in {self.directory} is named <galaxy>_<band>.fits for a band of {bands!r}"
            )
        names = sorted(groups)
        return [f"{n}_[{bands}]" for n in names], [tuple(groups[n].get(b) for b in bands) for n in names], fingerprint

    def _check_image_size(self, image_size: int) -> None:
        if self.crop is not None and self.crop < image_size:
            raise GalgenError(f"data.source.crop={self.crop} is smaller than data.image_size={image_size}")

    def _converter(self, image_size: int) -> Callable[[list[Any]], list[Result]]:
        recipe = FitsRecipe(self.bands, self.rgb, self.crop, self.q, self.stretch, image_size)
        return functools.partial(convert_fits, recipe)
