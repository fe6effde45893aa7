"""The built-in default dataset: realistic synthetic galaxy cutouts rendered with GalSim.

They stand in for the paper's data (Legacy Survey DR9 g, r, z cutouts at 0.262"/pixel around
SDSS galaxies, combined with astropy's ``make_lupton_rgb`` and reduced to one 64x64 grayscale
channel), which cannot be downloaded at run time.

Each stamp is one scene in nanomaggies in the three bands g, r, z:

* the central galaxy: an elliptical (one Sersic profile with a rounded index, sometimes with
  a faint disk: an S0), a disk galaxy (Sersic bulge + inclined exponential disk, the bulge
  redder than the disk) or a clumpy irregular; disks may carry a bar, logarithmic spiral arms,
  blue star-forming knots and, seen edge-on, a dust lane; a share of galaxies have tidal tails;
  random magnitude, size, ellipticity, position angle and a small centre offset;
* companions (neighbours, some close enough to overlap), background galaxies and stars;
* a PSF per galaxy and band (Moffat or Kolmogorov, varying seeing and a little ellipticity);
* sky background and source shot noise (Poisson) with a depth that varies per galaxy and band,
  plus a small residual of the sky subtraction.

Companions, background sources, stars and the noise are more frequent (and the noise higher)
than in typical DR9 cutouts: the set has to be diverse enough that held-out images are clearly
less similar to their nearest training image than a memorized copy is (see ``docs/data.md``).

The profiles, shears, PSFs, pixel response and noise are GalSim's. For speed each profile is
drawn once in Fourier space (centred; its position enters as a phase) and the three bands are
made by weighting these with the band fluxes, multiplying by the band's PSF and pixel transform
and inverting the FFT (what ``drawImage(method="fft")`` does per band, without evaluating the
profiles three times). The bands go through ``make_lupton_rgb(z, r, g, stretch=stretch, Q=q)``
and the mean of the three 8-bit channels / 255 is the grayscale image.

The field of view is always 64 x 0.262" = 16.8"; a smaller ``image_size`` draws the same scene
with coarser pixels (pixel values stay in nanomaggies per 0.262" pixel, i.e. the area average),
so a 16x16 stamp is the 64x64 galaxy at lower resolution (with its own noise realisation).

Image ``index`` of set ``seed`` is a pure function of ``(index, seed, image_size, q, stretch)``:
the scene comes from ``np.random.default_rng([seed, index])`` and the noise from a
``galsim.BaseDeviate`` seeded by that generator; no global random state is used. GalSim is
imported inside the functions only (the GPU machines need not have it).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from galgen_lightning.data.synthetic_scene import MAX_RENDER_SCALE, NATIVE_SCALE, NATIVE_SIZE, Component, scene
from galgen_lightning.parallel import default_workers, map_ordered

SYNTHETIC_VERSION: int = 2
"""Bump whenever the rendering changes: it keys the on-disk cache of rendered sets."""


def renderer_digest() -> str:
    """The first 10 hex digits of the SHA-1 of the renderer's source: this module and
    :mod:`~galgen_lightning.data.synthetic_scene`.

    It keys the on-disk cache together with :data:`SYNTHETIC_VERSION`, so that a cache rendered
    by other code (an edit without a version bump, even a reformatting) is never read as this
    set. Reading the files needs neither GalSim nor astropy.
    """
    digest = hashlib.sha1()
    for path in (Path(__file__), Path(__file__).with_name("synthetic_scene.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


# ----------------------------------------------------------------------------- rendering
def _shift_factors(positions: np.ndarray, kx: np.ndarray, ky: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The shift theorem, factored: the transform of a unit delta at ``positions[i]`` (arcsec)
    is ``np.outer(fy[i], fx[i])`` on rows ``ky`` and columns ``kx``."""
    return np.exp(-1j * np.outer(positions[:, 0], kx)), np.exp(-1j * np.outer(positions[:, 1], ky))


def _deposit_transform(positions: np.ndarray, weights: np.ndarray, fine: float, n: int) -> np.ndarray:
    """The same for many copies (arms, knots, tails), on the (n, n) FFT grid of pixel ``fine``.

    The deltas are deposited on the grid with cloud-in-cell weights, Fourier transformed, and
    the cloud-in-cell smoothing is divided out. Rows run over ky = -n/2 .. n/2 - 1, columns
    over kx = 0 .. n/2. (A matrix product of the factored phases would be exact, but it calls
    a multithreaded BLAS that is slow on such small matrices when the cores are busy.)
    """
    u = positions / fine  # grid units; the origin is pixel 0 of the periodic grid
    i0 = np.floor(u).astype(np.int64)
    t = u - i0
    cells, amounts = [], []
    for dx, wx in ((0, 1.0 - t[:, 0]), (1, t[:, 0])):
        for dy, wy in ((0, 1.0 - t[:, 1]), (1, t[:, 1])):
            cells.append(((i0[:, 1] + dy) % n) * n + (i0[:, 0] + dx) % n)
            amounts.append(weights * wx * wy)
    grid = np.bincount(np.concatenate(cells), np.concatenate(amounts), minlength=n * n).reshape(n, n)
    return np.fft.fftshift(np.fft.rfft2(grid), axes=0) / _cloud_in_cell_transform(n)


@functools.lru_cache(maxsize=8)
def _cloud_in_cell_transform(n: int) -> np.ndarray:
    """Fourier transform of the cloud-in-cell kernel on an (n, n) grid, rows ky = -n/2 .. n/2 - 1."""
    return np.outer(np.sinc(np.arange(-n // 2, n // 2) / n) ** 2, np.sinc(np.arange(n // 2 + 1) / n) ** 2)


def _render_bands(components: list[Component], psfs: list[Any], image_size: int) -> np.ndarray:
    """Noise-free (3, image_size, image_size) fluxes per pixel (nanomaggies) in g, r, z.

    Each profile's Fourier transform is drawn once with GalSim (centred; positions enter as
    phases); per band the transforms are weighted by the band fluxes, multiplied by the PSF and
    pixel transforms and inverted. The FFT box is 1.5 stamps wide, so only light from more than
    a stamp width away from the centre could wrap into the stamp. Coarse stamps are drawn on a
    finer grid (pixels of at most ``MAX_RENDER_SCALE``) and binned, which keeps the aliasing of
    undersampled PSFs.
    """
    import galsim

    scale = NATIVE_SCALE * NATIVE_SIZE / image_size
    over = max(1, math.ceil(scale / MAX_RENDER_SCALE - 1e-9))
    fine, n_fine = scale / over, image_size * over
    half = (3 * n_fine + 3) // 4  # the FFT box: 2 * half >= 1.5 stamps
    dk = math.pi / (half * fine)
    # a real image needs only the half plane kx >= 0; rows run over ky = -half .. half - 1
    kx, ky = dk * np.arange(half + 1), dk * np.arange(-half, half)
    kimage = galsim.ImageCD(galsim.BoundsI(0, half, -half, half - 1), scale=dk)

    def transform(profile: Any, phases: np.ndarray) -> np.ndarray:
        profile._drawKImage(kimage)  # drawKImage(image=kimage, recenter=False), without the checks
        return kimage.array * phases

    # put the scene's origin at the stamp's geometric centre (between pixels for even sizes)
    shift = (n_fine - 1) / 2.0 * fine - n_fine // 2 * fine
    fx, fy = _shift_factors(np.array([[shift, shift]]), kx, ky)
    kernels = np.stack([transform(galsim.Convolve(psf, galsim.Pixel(fine)), np.outer(fy[0], fx[0])) for psf in psfs])
    scene = np.zeros_like(kernels)
    fx, fy = _shift_factors(np.stack([c[1][0] for c in components]), kx, ky)  # for single copies
    for i, (profile, positions, weights, fluxes) in enumerate(components):
        if len(positions) == 1:
            phases = np.outer(fy[i], fx[i])
        else:
            phases = _deposit_transform(positions, weights, fine, 2 * half)
        scene += fluxes[:, None, None] * transform(profile, phases)
    spectrum = np.fft.ifftshift(scene * kernels, axes=-2)  # ky = 0 first, as the FFT wants
    images = np.fft.fftshift(np.fft.irfft2(spectrum, s=(2 * half, 2 * half)), axes=(-2, -1))
    lo = half - n_fine // 2
    images = images[:, lo : lo + n_fine, lo : lo + n_fine]
    images = images.reshape(3, image_size, over, image_size, over).sum(axis=(2, 4))
    return np.maximum(images, 0.0)  # dust lanes are negative light: never below zero in total


def _observe(fluxes: np.ndarray, noise: dict[str, np.ndarray], image_size: int) -> np.ndarray:
    """Add sky and shot noise and the sky-subtraction residual.

    Returns nanomaggies per 0.262" pixel (the area average for coarser pixels).
    """
    import galsim

    area = (NATIVE_SIZE / image_size) ** 2  # native pixels per pixel
    deviate = galsim.BaseDeviate(int(noise["seed"][0]))
    out = np.empty_like(fluxes)
    ramp = (np.arange(image_size) + 0.5) / image_size - 0.5
    for b in range(3):
        image = galsim.ImageD(np.ascontiguousarray(fluxes[b]))
        image.addNoise(galsim.CCDNoise(deviate, sky_level=float(noise["sky"][b] * area), gain=float(noise["gain"][b])))
        offset, slope_x, slope_y = noise["residual"][b]
        out[b] = image.array / area + offset + slope_x * ramp[None, :] + slope_y * ramp[:, None]
    return out


def lupton_gray(bands: np.ndarray, q: float, stretch: float) -> np.ndarray:
    """(g, r, z) -> ``make_lupton_rgb(z, r, g)`` -> mean of the 8-bit channels / 255, float32."""
    from astropy.visualization import make_lupton_rgb

    with np.errstate(divide="ignore", invalid="ignore"):  # astropy divides by a zero intensity
        rgb = make_lupton_rgb(bands[2], bands[1], bands[0], stretch=stretch, Q=q)
    return (rgb.astype(np.float32).mean(axis=-1) / 255.0).astype(np.float32)


def render_galaxy(index: int, seed: int = 0, image_size: int = 64, q: float = 8.0, stretch: float = 0.2) -> np.ndarray:
    """One grayscale galaxy stamp, a pure function of its arguments.

    Args:
        index: the galaxy's number in the set (non-negative).
        seed: the set's seed (non-negative); ``(seed, index)`` seeds all randomness.
        image_size: pixels on a side; the field of view is always 16.8" (64 x 0.262"), so a
            smaller size is the same galaxy at a lower resolution.
        q: Lupton asinh softening ``Q`` of ``make_lupton_rgb``.
        stretch: Lupton linear stretch of ``make_lupton_rgb`` (the paper: 0.2).

    Returns:
        ``(image_size, image_size)`` float32 array with values in [0, 1].

    Raises:
        ValueError: on a negative index or seed, or an image size below 2.
    """
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got index={index}, seed={seed}")
    if image_size < 2:
        raise ValueError(f"image_size must be at least 2, got {image_size}")
    components, psfs, noise = scene(np.random.default_rng([int(seed), int(index)]))
    bands = _observe(_render_bands(components, psfs, image_size), noise, image_size)
    return lupton_gray(bands, q, stretch)


def _render_chunk(args: tuple[list[int], int, int, float, float]) -> np.ndarray:
    """Render ``(indices, seed, image_size, q, stretch)`` in turn (one pool task)."""
    indices, seed, image_size, q, stretch = args
    out = np.empty((len(indices), image_size, image_size), dtype=np.float32)
    for row, index in enumerate(indices):
        out[row] = render_galaxy(index, seed, image_size, q, stretch)
    return out


def render_many(
    indices: Sequence[int],
    seed: int = 0,
    image_size: int = 64,
    q: float = 8.0,
    stretch: float = 0.2,
    workers: int | None = None,
) -> np.ndarray:
    """Many stamps, in parallel over processes; identical to calling :func:`render_galaxy` in turn.

    A process pool is created for the call and closed before it returns. On Linux its workers
    are forked (they start at once, without importing anything again; they use only numpy,
    GalSim and astropy, never torch, and rendering starts no OpenMP or BLAS threads); elsewhere
    they are spawned, which needs the usual ``if __name__ == "__main__":`` guard in scripts.
    Thread-count variables are set to 1 for the workers, so no library in them oversubscribes
    the cores.

    Args:
        indices: galaxy numbers to draw.
        seed: the set's seed.
        image_size: pixels on a side (see :func:`render_galaxy`).
        q: Lupton asinh softening ``Q``.
        stretch: Lupton linear stretch.
        workers: processes (default: the CPUs this process may use); 1 renders in-process.

    Returns:
        ``(len(indices), image_size, image_size)`` float32 array with values in [0, 1].

    Raises:
        ValueError: when ``workers`` is below 1.
    """
    indices = [int(i) for i in indices]
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    n_chunks = min(len(indices), 4 * workers)
    if workers == 1 or n_chunks < 2:
        return _render_chunk((indices, seed, image_size, q, stretch))
    bounds = np.linspace(0, len(indices), n_chunks + 1).astype(int)
    tasks = [(indices[a:b], seed, image_size, q, stretch) for a, b in zip(bounds[:-1], bounds[1:])]
    parts = map_ordered(_render_chunk, tasks, min(workers, n_chunks))
    return np.concatenate(parts)
