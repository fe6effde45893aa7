"""The built-in default source: synthetic galaxies rendered by :mod:`galgen_lightning.data.synthetic`.

The renderer (GalSim, imported by the workers only) draws each galaxy; this source keeps what it
rendered in the one data cache (:mod:`galgen_lightning.data.cache`), in ``.npy`` chunks of a
folder named by every rendering parameter and the renderer's own digest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from galgen_lightning.data.cache import Chunk, ChunkCache, default_cache_dir
from galgen_lightning.data.sources.base import GalaxySource
from galgen_lightning.errors import GalgenError


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
        for name, value in (("size", size), ("stretch", stretch), ("workers", workers), ("chunk", chunk)):
            if value is not None and not value > 0:
                raise GalgenError(f"data.source.{name} must be positive, got {value}")
        for name, value in (("seed", seed), ("q", q)):
            if not value >= 0:
                raise GalgenError(f"data.source.{name} must not be negative, got {value}")
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
        key = (
            f"v{d['version']}-{d['renderer']}-seed{self.seed}-{image_size}px"
            f"-q{self.q:g}-stretch{self.stretch:g}-chunk{self.chunk}"
        )
        return self.cache_dir / "synthetic" / key

    def load(self, count: int, image_size: int) -> np.ndarray:
        count = min(count, self.size)
        folder = self.folder(image_size)
        n_chunks = -(-self.size // self.chunk)
        # chunks are always full (the last one too), so the cache does not depend on `size`
        bounds = [(k * self.chunk, (k + 1) * self.chunk) for k in range(n_chunks)]
        cache = ChunkCache(folder, bounds, image_size, suffix=".npy", redo="rendering it again")

        def render(run: list[int]) -> Iterator[tuple[int, Chunk]]:
            from galgen_lightning.data.synthetic import render_many

            for k in run:
                start, stop = bounds[k]
                print(f"galgen: rendering synthetic galaxies {start}-{stop - 1} at {image_size}px into {folder}", flush=True)
                yield (
                    k,
                    Chunk.of(
                        render_many(
                            range(start, stop),
                            seed=self.seed,
                            image_size=image_size,
                            q=self.q,
                            stretch=self.stretch,
                            workers=self.workers,
                        )
                    ),
                )

        return cache.fill(count, render).images[:count]


def _installed_version(package: str) -> str | None:
    """The installed version of ``package`` (without importing it), None when it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
