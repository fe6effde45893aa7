"""Where galaxy images come from: a source gives ``(count, H, W)`` float32 images in [0, 1].

A source is a small class with three methods, chosen in the config as
``data.source: {class_path: ..., init_args: ...}``:

- ``available()``: how many images the source can give (an upper bound before de-duplication);
- ``load(count, image_size)``: the first ``count`` images, resized to ``image_size``;
- ``describe()``: a dict naming the source and its parameters (written to the run manifest).

``load`` must be deterministic: the same arguments give the same images in the same order.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from galgen_lightning.errors import GalgenError


def default_cache_dir() -> Path:
    """``$GALGEN_CACHE_DIR`` or ``~/.cache/galgen``."""
    return Path(os.environ.get("GALGEN_CACHE_DIR", Path.home() / ".cache" / "galgen")).expanduser()


def resize(images: np.ndarray, image_size: int, name: str) -> np.ndarray:
    """Centre-crop images ``(n, h, w)`` to a square and area-average it down to ``image_size`` (never up).

    The averaging windows are those of ``torch.nn.functional.interpolate(mode="area")``
    (adaptive average pooling), computed with numpy so that worker processes need no torch.

    Args:
        images: ``(n, h, w)`` array (any real dtype).
        image_size: target side.
        name: what to call the images in an error message (file or source name).

    Returns:
        ``(n, image_size, image_size)`` float32.
    """
    h, w = images.shape[-2:]
    if min(h, w) < image_size:
        raise GalgenError(f"{name}: images are {h}x{w}, smaller than data.image_size={image_size}")
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    images = images[:, top : top + side, left : left + side]
    if side == image_size:
        return np.array(images, dtype=np.float32)  # a copy: never a view of the caller's (cached) array
    return _area_pool(_area_pool(np.asarray(images, dtype=np.float64), image_size, axis=1), image_size, axis=2).astype(np.float32)


def _area_pool(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Adaptive average pooling of ``x`` along ``axis`` to ``size`` bins (torch's window bounds)."""
    n = x.shape[axis]
    i = np.arange(size)
    start, stop = (i * n) // size, -(-((i + 1) * n) // size)
    sums = np.cumsum(x, axis=axis)
    sums = np.concatenate([np.zeros_like(np.take(sums, [0], axis=axis)), sums], axis=axis)
    shape = [1] * x.ndim
    shape[axis] = size
    return (np.take(sums, stop, axis=axis) - np.take(sums, start, axis=axis)) / (stop - start).reshape(shape)


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
        from galgen_lightning.data.synthetic import SYNTHETIC_VERSION, renderer_digest

        return {
            "source": "synthetic",
            "version": SYNTHETIC_VERSION,
            "renderer": renderer_digest(),
            "galsim": _installed_version("galsim"),
            "astropy": _installed_version("astropy"),
            "size": self.size,
            "seed": self.seed,
            "q": self.q,
            "stretch": self.stretch,
        }

    def folder(self, image_size: int) -> Path:
        """The cache folder of this set at ``image_size`` (keyed by every rendering parameter)."""
        d = self.describe()
        key = f"v{d['version']}-{d['renderer']}-seed{self.seed}-{image_size}px-q{self.q:g}-stretch{self.stretch:g}-chunk{self.chunk}"
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
            arr = _read_chunk(path, (stop - start, image_size, image_size)) if path.exists() else None
            if arr is None:
                print(f"galgen: rendering synthetic galaxies {start}-{stop - 1} at {image_size}px into {folder}", flush=True)
                arr = render_many(range(start, stop), seed=self.seed, image_size=image_size, q=self.q, stretch=self.stretch, workers=self.workers)
                _write_atomic(path, arr)
            parts.append(arr)
        return np.concatenate(parts)[:count]


def _installed_version(package: str) -> str | None:
    """The installed version of ``package`` (without importing it), None when it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _read_chunk(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """A cached chunk, or None (with a one-line warning) when it is unreadable or not what this
    chunk must hold: the cache is derived, deterministic data, so the caller renders it again."""
    try:
        arr = np.load(path, allow_pickle=False)
        problem = "" if arr.shape == shape and arr.dtype == np.float32 else f"holds {arr.dtype} {arr.shape}, expected float32 {shape}"
        if not problem and not np.isfinite(arr).all():
            problem = "holds non-finite pixels"
    except (OSError, ValueError, EOFError) as e:
        problem = f"is unreadable ({type(e).__name__})"
    if not problem:
        return arr
    print(f"galgen: warning: data cache {path} {problem}; rendering it again", file=sys.stderr, flush=True)
    return None


def _write_atomic(path: Path, arr: np.ndarray) -> None:
    write_atomic(path, lambda f: np.save(f, arr))


_WHY = {
    errno.EROFS: "it is on a read-only file system",
    errno.EACCES: "permission denied (read-only?)",
    errno.EPERM: "permission denied (read-only?)",
    errno.ENOSPC: "no space left on the disk",
    getattr(errno, "EDQUOT", errno.ENOSPC): "no space left on the disk (quota)",
}


def cache_error(where: Path, error: OSError, action: str = "write") -> GalgenError:
    """A one-line :class:`GalgenError` for a data cache that cannot be written (read-only, full, ...)."""
    why = _WHY.get(error.errno or 0) or error.strerror or type(error).__name__
    return GalgenError(
        f"cannot {action} the data cache {where}: {why}; "
        "free space or point data.source.init_args.cache_dir (or GALGEN_CACHE_DIR) to a writable directory"
    )


def make_cache_dir(folder: Path) -> None:
    """``mkdir -p folder``, or a :class:`GalgenError` naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cache_error(folder, e, "create") from None


def write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a cache file all or nothing: ``write`` fills a temporary file that then replaces ``path``.

    An interruption (Ctrl-C, a full disk) leaves the previous ``path``, if any, untouched and no
    temporary file behind. The temporary name (``.<name>.tmp<pid>``) matches no cache glob.

    Raises:
        GalgenError: naming the cache directory when it cannot be written.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise cache_error(path.parent, e) from None
    finally:
        if tmp.exists():
            tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON with :func:`write_atomic`."""
    text = json.dumps(data, indent=1, sort_keys=True).encode()
    write_atomic(path, lambda f: f.write(text))


def __getattr__(name: str) -> Any:
    """``ArrayFile`` lives in :mod:`galgen_lightning.data.readers` now; keep the old import path."""
    if name == "ArrayFile":
        from galgen_lightning.data.readers import ArrayFile

        return ArrayFile
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def content_hash(image: np.ndarray) -> str:
    """SHA-1 of an image's float32 bytes: equal hashes mean equal pixels."""
    return hashlib.sha1(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest()
