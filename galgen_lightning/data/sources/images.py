"""Galaxy images in PNG, JPEG or TIFF files, one galaxy per file."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from galgen_lightning.data.sources.base import resize
from galgen_lightning.data.sources.reader import (
    FATAL,
    NAN,
    UNREADABLE,
    CachedReader,
    Reject,
    Result,
    files_fingerprint,
    list_files,
)
from galgen_lightning.errors import first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def read_image(path: str) -> np.ndarray:
    """One PNG/JPEG/TIFF image as a 2-D float array in [0, 1].

    8-bit images are divided by 255 and 16-bit ones by 65535; colour images become the mean of
    their channels (as the Lupton grayscale of FITS cutouts); float images must lie in [0, 1].

    Raises:
        Reject: unreadable or truncated file, NaN pixels, or values outside [0, 1].
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("L", "I;16", "I;16L", "I;16B", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                scale = 255.0 if mode == "L" else (1.0 if mode == "F" else 65535.0)
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float64).mean(axis=-1)
                scale = 255.0
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
        raise Reject(UNREADABLE, f"unreadable image ({first_line(e, 160, with_type=True)})") from None
    if not np.isfinite(arr).all():
        raise Reject(NAN, f"{int((~np.isfinite(arr)).sum())} NaN or infinite pixels")
    arr = arr / scale
    if arr.min() < 0 or arr.max() > 1:
        raise Reject(FATAL, f"{mode} image with values in [{arr.min():g}, {arr.max():g}]; expected [0, 1]")
    return arr


def convert_images(image_size: int, paths: list[str]) -> list[Result]:
    """Convert image files (see :func:`read_image`), centre-cropped and area-averaged to ``image_size``."""
    out: list[Result] = []
    for path in paths:
        try:
            arr = read_image(path)
            if min(arr.shape) < image_size:
                raise Reject(FATAL, f"image is {arr.shape[0]}x{arr.shape[1]}, smaller than data.image_size={image_size}")
            out.append((resize(arr[None], image_size, path)[0], "", ""))
        except Reject as r:
            out.append((None, r.reason, r.detail))
    return out


class ImageFolder(CachedReader):
    """Galaxy images in PNG, JPEG or TIFF files (grayscale or colour), one galaxy per file.

    Colour images become the mean of their channels; 8-bit values are divided by 255 and
    16-bit ones by 65535. Each image is centre-cropped to a square and area-averaged to
    ``image_size``. Unreadable or truncated files are skipped and reported (fatal with
    ``strict``). Converted once, in parallel, into a resumable cache.

    Args:
        directory: the folder of images (searched with ``pattern``).
        pattern: glob of the files, relative to ``directory`` (default: every ``.png``,
            ``.jpg``, ``.jpeg``, ``.tif`` or ``.tiff`` file, in subfolders too).
        **kwargs: the cache's options (:class:`CachedReader`: ``cache_dir``, ``workers``,
            ``chunk`` images per cached file, ``strict``).
    """

    kind = "images"
    unit = "image"
    option = "data.source.directory"
    noun = "images"

    def __init__(self, directory: str, pattern: str = "**/*", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.directory = self.location = Path(directory).expanduser()
        self.pattern = pattern

    def _params(self) -> dict:
        return {"directory": str(self.directory.resolve()), "pattern": self.pattern}

    def _scan(self) -> tuple[list[str], list[Any], dict]:
        files = list_files(self.directory, self.pattern, IMAGE_SUFFIXES, self.option)
        fingerprint = {"files": len(files), "sha1": files_fingerprint(files, self.directory)}
        return [p.relative_to(self.directory).as_posix() for p in files], [str(p) for p in files], fingerprint

    def _converter(self, image_size: int) -> Callable[[list[Any]], list[Result]]:
        return functools.partial(convert_images, image_size)
