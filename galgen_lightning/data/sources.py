"""Where galaxy images come from: a source gives ``(count, H, W)`` float32 images in [0, 1].

A source is a small class with three methods, chosen in the config as
``data.source: {class_path: ..., init_args: ...}``:

- ``available()``: how many images the source can give (an upper bound before de-duplication);
- ``load(count, image_size)``: the first ``count`` images, resized to ``image_size``;
- ``describe()``: a dict naming the source and its parameters (written to the run manifest).

``load`` must be deterministic: the same arguments give the same images in the same order.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from galgen_lightning.errors import GalgenError


def default_cache_dir() -> Path:
    """``$GALGEN_CACHE_DIR`` or ``~/.cache/galgen``."""
    return Path(os.environ.get("GALGEN_CACHE_DIR", Path.home() / ".cache" / "galgen")).expanduser()


def resize(images: np.ndarray, image_size: int, name: str) -> np.ndarray:
    """Area-average square images ``(n, h, w)`` down to ``image_size`` (never up).

    Args:
        images: float32 ``(n, h, w)``.
        image_size: target side.
        name: what to call the images in an error message (file or source name).
    """
    h, w = images.shape[-2:]
    if min(h, w) < image_size:
        raise GalgenError(f"{name}: images are {h}x{w}, smaller than data.image_size={image_size}")
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    images = images[:, top : top + side, left : left + side]
    if side == image_size:
        return np.ascontiguousarray(images, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    return F.interpolate(t, size=(image_size, image_size), mode="area")[:, 0].numpy()


class GalaxySource:
    """Base class of image sources (see the module docstring)."""

    def available(self) -> int:
        """Upper bound on the number of images :meth:`load` can return."""
        raise NotImplementedError

    def load(self, count: int, image_size: int) -> np.ndarray:
        """The first ``count`` images, ``(count, image_size, image_size)`` float32 in [0, 1]."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Name and parameters, for the manifest and the cache key."""
        raise NotImplementedError


class SyntheticGalaxies(GalaxySource):
    """The built-in default: realistic synthetic galaxies rendered with GalSim (no download).

    Bulge + disk Sersic profiles with clumps, companions and background sources, PSF, sky and
    shot noise in g, r, z, combined with astropy's ``make_lupton_rgb`` to one grayscale
    channel, as the paper does with Legacy Survey cutouts. Image ``i`` depends only on
    ``(i, seed, image_size, q, stretch)``. Rendered in parallel and cached on disk in chunks,
    so a second run (or a larger N) reuses what exists.

    Args:
        size: how many galaxies the set has (the most that can be used: ``2 n + n_val`` must fit).
        seed: the set's seed (not the split's).
        q: Lupton asinh softening ``Q``.
        stretch: Lupton linear stretch (the paper: 0.2).
        cache_dir: where rendered chunks are kept (default: ``$GALGEN_CACHE_DIR`` or
            ``~/.cache/galgen``).
        workers: processes used for rendering (default: all cores).
        chunk: images per cached file.
    """

    def __init__(
        self,
        size: int = 25000,
        seed: int = 0,
        q: float = 8.0,
        stretch: float = 0.2,
        cache_dir: str | None = None,
        workers: int | None = None,
        chunk: int = 256,
    ) -> None:
        if size < 1:
            raise GalgenError(f"data.source.size must be positive, got {size}")
        self.size = size
        self.seed = seed
        self.q = q
        self.stretch = stretch
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.workers = workers
        self.chunk = chunk

    def available(self) -> int:
        return self.size

    def describe(self) -> dict:
        from galgen_lightning.data.synthetic import SYNTHETIC_VERSION

        return {
            "source": "synthetic",
            "version": SYNTHETIC_VERSION,
            "size": self.size,
            "seed": self.seed,
            "q": self.q,
            "stretch": self.stretch,
        }

    def folder(self, image_size: int) -> Path:
        """The cache folder of this set at ``image_size`` (keyed by every rendering parameter)."""
        d = self.describe()
        key = f"v{d['version']}-seed{self.seed}-{image_size}px-q{self.q:g}-stretch{self.stretch:g}-chunk{self.chunk}"
        return self.cache_dir / "synthetic" / key

    def load(self, count: int, image_size: int) -> np.ndarray:
        from galgen_lightning.data.synthetic import render_many

        count = min(count, self.size)
        folder = self.folder(image_size)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise GalgenError(f"cannot create the data cache {folder}: {e.strerror}; set data.source.init_args.cache_dir or GALGEN_CACHE_DIR") from None
        parts = []
        n_chunks = -(-count // self.chunk)
        for k in range(n_chunks):
            path = folder / f"chunk_{k:05d}.npy"
            start = k * self.chunk
            stop = start + self.chunk  # chunks are always full, so the cache does not depend on `size`
            if path.exists():
                arr = _read_chunk(path, (stop - start, image_size, image_size))
            else:
                print(f"galgen: rendering synthetic galaxies {start}-{stop - 1} at {image_size}px into {folder}", flush=True)
                arr = render_many(range(start, stop), seed=self.seed, image_size=image_size, q=self.q, stretch=self.stretch, workers=self.workers)
                _write_atomic(path, arr)
            parts.append(arr)
        return np.concatenate(parts)[:count]


class ArrayFile(GalaxySource):
    """Images from a ``.npy`` file of shape ``(N, H, W)`` or ``(N, 1, H, W)``, values in [0, 1].

    (Readers for FITS cutouts, other array layouts and image folders plug in the same way.)

    Args:
        path: the ``.npy`` file.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path).expanduser()

    def _array(self) -> np.ndarray:
        if not self.path.exists():
            raise GalgenError(f"data.source.path: {self.path} does not exist")
        try:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise GalgenError(f"data.source.path: {self.path} is not a readable .npy array ({e})") from None
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 3:
            raise GalgenError(f"data.source.path: {self.path} has shape {arr.shape}; expected (N, H, W) or (N, 1, H, W)")
        return arr

    def available(self) -> int:
        return len(self._array())

    def describe(self) -> dict:
        stat = self.path.stat() if self.path.exists() else None
        return {"source": "array", "path": str(self.path), "bytes": stat.st_size if stat else None}

    def load(self, count: int, image_size: int) -> np.ndarray:
        arr = np.array(self._array()[:count], dtype=np.float32)
        if not np.isfinite(arr).all():
            raise GalgenError(f"data.source.path: {self.path} holds NaN or infinite pixels")
        if arr.min() < 0 or arr.max() > 1:
            raise GalgenError(f"data.source.path: {self.path} has values in [{arr.min():g}, {arr.max():g}]; expected [0, 1]")
        return resize(arr, image_size, str(self.path))


def _read_chunk(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise GalgenError(f"data cache {path} is unreadable ({type(e).__name__}); delete it to re-render") from None
    if arr.shape != shape or arr.dtype != np.float32:
        raise GalgenError(f"data cache {path} holds {arr.dtype} {arr.shape}, expected float32 {shape}; delete it to re-render")
    return arr


def _write_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    try:
        np.save(tmp, arr)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise GalgenError(f"cannot write the data cache {path}: {e.strerror}") from None


def content_hash(image: np.ndarray) -> str:
    """SHA-1 of an image's float32 bytes: equal hashes mean equal pixels."""
    return hashlib.sha1(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest()


