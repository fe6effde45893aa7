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

from galgen_lightning.parallel import default_workers, map_ordered

SYNTHETIC_VERSION: int = 2
"""Bump whenever the rendering changes: it keys the on-disk cache of rendered sets."""


def renderer_digest() -> str:
    """The first 10 hex digits of the SHA-1 of this module's source.

    It keys the on-disk cache together with :data:`SYNTHETIC_VERSION`, so that a cache rendered
    by other code (an edit without a version bump) is never read as this set. Reading the file
    needs neither GalSim nor astropy.
    """
    return hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:10]

NATIVE_SCALE = 0.262  # arcsec per pixel of a Legacy Survey DR9 cutout
NATIVE_SIZE = 64  # pixels on a side at the native scale: the field of view is 16.8"
ZEROPOINT = 22.5  # nanomaggies: flux = 10 ** ((22.5 - mag) / 2.5)
MAX_RENDER_SCALE = 0.55  # arcsec; coarser stamps are drawn on a finer grid and binned
_BULGE_INDICES = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0)  # rounded Sersic indices: cached lookup tables
_ELLIPTICAL_INDICES = (3.0, 3.5, 4.0, 5.0)
_MOFFAT_BETAS = (2.5, 3.5)  # half-integer betas have a closed-form Fourier transform: fast
# A scene component: copies of one GalSim profile (unit flux, centred on the origin) at
# ``positions`` (J, 2) arcsec with relative ``weights`` (J,) summing to one, carrying ``fluxes``
# (nanomaggies in g, r, z) in all. A bulge or a background galaxy is one copy (J = 1); spiral
# arms and star-forming knots are many copies of one small Gaussian.
Component = tuple[Any, np.ndarray, np.ndarray, np.ndarray]


# A part of one galaxy before it is placed: (profile, share of the galaxy's flux (negative for
# dust), (g - r, r - z) colour, (J, 2) positions relative to the galaxy's centre, (J,) weights).
Part = tuple[Any, float, tuple[float, float], np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------- scene drawing
def _component(profile: Any, positions: Any, fluxes: np.ndarray, weights: np.ndarray | None = None) -> Component:
    positions = np.atleast_2d(np.asarray(positions, dtype=np.float64))
    weights = np.ones(len(positions)) if weights is None else np.asarray(weights, dtype=np.float64)
    return profile, positions, weights / weights.sum(), np.asarray(fluxes, dtype=np.float64)


def _band_fluxes(r_mag: float, g_r: float, r_z: float) -> np.ndarray:
    """Fluxes in nanomaggies in (g, r, z) from an r magnitude and two colours."""
    r = 10.0 ** ((ZEROPOINT - r_mag) / 2.5)
    return np.array([r * 10.0 ** (-0.4 * g_r), r, r * 10.0 ** (0.4 * r_z)])


def _power_law_magnitude(rng: np.random.Generator, bright: float, faint: float, slope: float, size: int | None = None) -> Any:
    """Magnitude(s) in [bright, faint] with number counts rising as 10 ** (slope * m)."""
    lo, hi = 10.0 ** (slope * bright), 10.0 ** (slope * faint)
    return np.log10(lo + rng.random(size) * (hi - lo)) / slope


def _axis_ratio_from_inclination(rng: np.random.Generator, thickness: float = 0.15, size: int | None = None) -> Any:
    """Apparent axis ratio(s) of a disk of relative ``thickness`` seen at an isotropic inclination."""
    cos_i = rng.random(size)
    return np.sqrt(cos_i**2 * (1.0 - thickness**2) + thickness**2)


def _projection(q: float, angle: float) -> Any:
    """The GalSim shear that squeezes a round profile to axis ratio ``q`` (area kept), major
    axis at ``angle`` radians: ``galsim.Shear(q=q, beta=angle * galsim.radians)``, built cheaply."""
    import galsim

    q = max(q, 0.05)
    return galsim._Shear((1.0 - q) / (1.0 + q) * complex(math.cos(2.0 * angle), math.sin(2.0 * angle)))


def _disk_half_light_radius(rng: np.random.Generator, r_mag: float) -> float:
    """Half-light radius (arcsec): larger for brighter galaxies, with 0.25 dex scatter."""
    log_r = math.log10(3.0) - 0.16 * (r_mag - 16.5) + rng.normal(0.0, 0.25)
    return float(np.clip(10.0**log_r, 0.5, 7.0))


def _spiral_arms(rng: np.random.Generator, h: float, bar: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Face-on logarithmic spiral arms of a disk of half-light radius ``h`` (arcsec).

    Barred galaxies (``bar`` = (half-length, angle)) have two arms starting at the bar's ends.
    Returns points spaced one arm width apart along the arms, their weights (fading with the
    disk's exponential light, with lognormal clumpiness) and the arm width.
    """
    n_arms = 2 if bar else int(rng.choice([2, 2, 2, 3, 4]))
    pitch = math.radians(rng.uniform(10.0, 30.0))
    r_in, r_out = h * rng.uniform(0.25, 0.6), h * rng.uniform(1.6, 2.8)
    width = h * rng.uniform(0.07, 0.15)
    phase0 = rng.uniform(0.0, 2.0 * math.pi)
    if bar:
        r_in, phase0 = bar
    points, weights = [], []
    for arm in range(n_arms):
        phase = phase0 + 2.0 * math.pi * arm / n_arms + rng.normal(0.0, 0.25)
        r_end = r_in + (r_out - r_in) * rng.uniform(0.6, 1.0)
        count = max(8, int((r_end - r_in) / math.sin(pitch) / width))
        r = np.linspace(r_in, r_end, count)  # equal steps in r are equal steps along the arm
        theta = phase + np.log(r / r_in) / math.tan(pitch)
        xy = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1) + rng.normal(0.0, 0.3 * width, (count, 2))
        points.append(xy)
        weights.append(np.exp(-1.68 * r / h) * rng.lognormal(0.0, 0.5, count))
    return np.concatenate(points), np.concatenate(weights), width


def _knot_positions(rng: np.random.Generator, h: float, count: int, anchors: np.ndarray | None) -> np.ndarray:
    """Face-on positions of star-forming knots: near ``anchors`` (arm points) when given, else
    following the exponential disk's light (radius from a Gamma(2) law)."""
    if anchors is not None:
        return anchors[rng.integers(len(anchors), size=count)] + rng.normal(0.0, 0.08 * h, (count, 2))
    r, theta = rng.gamma(2.0, h / 1.68, count), rng.uniform(0.0, 2.0 * math.pi, count)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def _tidal_tails(rng: np.random.Generator, h: float) -> tuple[np.ndarray, np.ndarray, float]:
    """One or two curved tails of debris (an interaction or a merger remnant), on the sky.

    Returns points along the tails (about half a width apart), their weights and the width.
    """
    width = h * rng.uniform(0.12, 0.3)
    start = rng.uniform(0.0, 2.0 * math.pi)
    points, weights = [], []
    for tail in range(int(rng.integers(1, 3))):
        length = h * rng.uniform(1.5, 4.0)
        bend = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.2) / h  # radians per arcsec
        r = np.linspace(0.5 * h, length, max(6, int(2 * length / width)))
        theta = start + tail * math.pi + rng.normal(0.0, 0.3) + bend * (r - 0.5 * h)
        points.append(np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1))
        weights.append(np.exp(-r / (1.5 * h)) * rng.lognormal(0.0, 0.3, len(r)))
    return np.concatenate(points), np.concatenate(weights), width


def _bulge_colour(rng: np.random.Generator) -> tuple[float, float]:
    """(g - r, r - z) of an old, red stellar population."""
    return rng.normal(0.78, 0.06), rng.normal(0.45, 0.05)


def _disk_colour(rng: np.random.Generator) -> tuple[float, float]:
    return rng.normal(0.45, 0.10), rng.normal(0.28, 0.08)


def _knot_colour(rng: np.random.Generator) -> tuple[float, float]:
    """(g - r, r - z) of young star-forming regions: blue."""
    return rng.uniform(0.0, 0.3), rng.uniform(-0.15, 0.15)


def _elliptical(rng: np.random.Generator, h: float, pa: float) -> list[Part]:
    """Parts of an early-type galaxy: a Sersic spheroid, for a share (S0s) with a faint disk."""
    import galsim

    n = float(rng.choice(_ELLIPTICAL_INDICES))
    b_over_t = 1.0 if rng.random() < 0.6 else rng.uniform(0.6, 0.9)
    spheroid = galsim.Sersic(n, half_light_radius=h * rng.uniform(0.5, 0.9))._shear(_projection(rng.uniform(0.5, 1.0), pa))
    parts = [(spheroid, b_over_t, _bulge_colour(rng), np.zeros((1, 2)), np.ones(1))]
    if b_over_t < 1.0:
        disk = galsim.Exponential(half_light_radius=h)._shear(_projection(_axis_ratio_from_inclination(rng, 0.2), pa))
        parts.append((disk, 1.0 - b_over_t, _disk_colour(rng), np.zeros((1, 2)), np.ones(1)))
    return parts


def _disk_galaxy(rng: np.random.Generator, h: float, pa: float, irregular: bool, detail: bool) -> list[Part]:
    """Parts of a late-type galaxy: exponential disk, Sersic bulge, and when ``detail`` allows,
    a bar, spiral arms, star-forming knots and a dust lane (irregulars: lopsided, almost no
    bulge, many knots)."""
    import galsim

    b_over_t = rng.uniform(0.0, 0.1) if irregular else 0.7 * rng.beta(1.5, 3.5)
    plane = _projection(_axis_ratio_from_inclination(rng, 0.3 if irregular else 0.15), pa)
    to_sky = plane.getMatrix().T  # face-on (J, 2) positions @ to_sky -> positions on the sky
    disk_colour = _disk_colour(rng)
    parts = []
    arm_share = knot_share = bar_share = 0.0
    anchors = bar = None
    if detail and not irregular and rng.random() < 0.35:
        bar = (h * rng.uniform(0.4, 0.9), rng.uniform(0.0, math.pi))  # half-length, face-on angle
        bar_share = rng.uniform(0.05, 0.15)
        shape = galsim.Gaussian(sigma=bar[0] / 2.0)._shear(_projection(rng.uniform(0.2, 0.35), bar[1]))
        parts.append((shape._shear(plane), (1.0 - b_over_t) * bar_share, _bulge_colour(rng), np.zeros((1, 2)), np.ones(1)))
    if detail and not irregular and rng.random() < 0.75:
        anchors, weights, width = _spiral_arms(rng, h, bar)
        arm_share = rng.uniform(0.25, 0.6)
        arm_colour = (disk_colour[0] - 0.12, disk_colour[1] - 0.06)
        arm = galsim.Gaussian(sigma=width)._shear(plane)
        parts.append((arm, (1.0 - b_over_t) * arm_share, arm_colour, anchors @ to_sky, weights))
    if detail and (irregular or rng.random() < 0.6):
        count = int(rng.integers(8, 31)) if irregular else int(rng.integers(3, 21))
        knot_share = rng.uniform(0.2, 0.5) if irregular else rng.uniform(0.05, 0.25)
        on_arms = anchors if anchors is not None and rng.random() < 0.7 else None
        xy = _knot_positions(rng, h, count, on_arms) @ to_sky
        knot = galsim.Gaussian(sigma=rng.uniform(0.1, 0.6 if irregular else 0.35))
        parts.append((knot, (1.0 - b_over_t) * knot_share, _knot_colour(rng), xy, rng.lognormal(0.0, 0.7, count)))
    structure = arm_share + knot_share + bar_share
    if structure > 0.8:  # keep at least a fifth of the disk's light smooth
        parts = [(p, f * 0.8 / structure, c, x, w) for p, f, c, x, w in parts]
        structure = 0.8
    centre = rng.normal(0.0, 0.25 * h, (1, 2)) if irregular else np.zeros((1, 2))  # lopsided irregulars
    disk = galsim.Exponential(half_light_radius=h)._shear(plane)
    parts.append((disk, (1.0 - b_over_t) * (1.0 - structure), disk_colour, centre, np.ones(1)))
    if detail and plane.q < 0.45 and rng.random() < 0.6:  # a dust lane: absorption, strongest in g
        lane = galsim.Exponential(half_light_radius=h * rng.uniform(0.7, 1.0))._shear(_projection(rng.uniform(0.04, 0.08), pa))
        offset = h * plane.q * rng.uniform(-0.3, 0.3) * np.array([[-math.sin(pa), math.cos(pa)]])
        parts.append(
            (lane, -rng.uniform(0.04, 0.1) * (1.0 - b_over_t), (disk_colour[0] - 0.4, disk_colour[1] - 0.3), offset, np.ones(1))
        )
    if b_over_t > 0.0:
        q_bulge = max(plane.q, rng.uniform(0.6, 1.0))
        bulge = galsim.Sersic(float(rng.choice(_BULGE_INDICES)), half_light_radius=h * rng.uniform(0.12, 0.45))
        parts.append((bulge._shear(_projection(q_bulge, pa)), b_over_t, _bulge_colour(rng), np.zeros((1, 2)), np.ones(1)))
    return parts


def _galaxy(rng: np.random.Generator, r_mag: float, kind: str, centre: tuple[float, float], detail: bool) -> list[Component]:
    """The components of one galaxy of total r magnitude ``r_mag`` at ``centre`` (arcsec).

    Args:
        kind: ``"elliptical"``, ``"disk"`` or ``"irregular"``.
        detail: allow bars, arms, knots, dust lanes and tidal tails (the central galaxy and
            close companions).
    """
    import galsim

    h = _disk_half_light_radius(rng, r_mag)
    pa = rng.uniform(0.0, math.pi)
    if kind == "elliptical":
        parts = _elliptical(rng, h, pa)
    else:
        parts = _disk_galaxy(rng, h, pa, kind == "irregular", detail)
    if detail and rng.random() < 0.35:
        xy, weights, width = _tidal_tails(rng, h)
        share = rng.uniform(0.05, 0.2)
        parts = [(p, f * (1.0 - share), c, x, w) for p, f, c, x, w in parts]
        parts.append((galsim.Gaussian(sigma=width), share, _disk_colour(rng), xy, weights))
    fluxes = _band_fluxes(r_mag, 0.0, 0.0)[1]
    return [
        _component(profile, np.asarray(centre) + xy, share * fluxes * _band_fluxes(ZEROPOINT, *colour), weights)
        for profile, share, colour, xy, weights in parts
        if share != 0.0
    ]


def _random_kind(rng: np.random.Generator) -> str:
    u = rng.random()
    return "elliptical" if u < 0.2 else ("disk" if u < 0.75 else "irregular")


def _companions(rng: np.random.Generator, main_mag: float) -> list[Component]:
    """Zero to three neighbouring galaxies, some close enough to overlap (mergers)."""
    out: list[Component] = []
    if rng.random() > 0.7:
        return out
    for _ in range(int(rng.choice([1, 1, 1, 1, 1, 1, 2, 2, 2, 3]))):
        close = rng.random() < 0.35
        radius = rng.uniform(1.5, 4.0) if close else rng.uniform(4.0, 10.5)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        mag = min(main_mag + rng.uniform(0.0, 3.0), 22.0)
        out += _galaxy(rng, mag, _random_kind(rng), (radius * math.cos(angle), radius * math.sin(angle)), detail=close)
    return out


def _background(rng: np.random.Generator) -> list[Component]:
    """Faint, small background galaxies and a few foreground stars scattered over the stamp."""
    import galsim

    half = 0.6 * NATIVE_SIZE * NATIVE_SCALE
    n = int(rng.poisson(10.0))
    mags = _power_law_magnitude(rng, 18.5, 24.5, 0.3, n)
    hlrs = np.clip(0.9 * 10.0 ** (-0.12 * (mags - 20.0) + rng.normal(0.0, 0.2, n)), 0.15, 3.0)
    shapes = zip(_axis_ratio_from_inclination(rng, 0.25, n), rng.uniform(0.0, math.pi, n))
    colours = rng.uniform((0.2, 0.2), (1.5, 1.1), (n, 2))
    out = [
        _component(galsim.Exponential(half_light_radius=hlr)._shear(_projection(*shape)), xy, _band_fluxes(mag, *colour))
        for mag, hlr, shape, colour, xy in zip(mags, hlrs, shapes, colours, rng.uniform(-half, half, (n, 2)))
    ]
    n = int(rng.poisson(0.3))
    mags = _power_law_magnitude(rng, 13.5, 22.5, 0.2, n)
    colours = rng.uniform((0.3, 0.0), (1.4, 1.2), (n, 2))
    out += [
        _component(galsim.DeltaFunction(), xy, _band_fluxes(mag, *colour))
        for mag, colour, xy in zip(mags, colours, rng.uniform(-half, half, (n, 2)))
    ]
    return out


def _psfs(rng: np.random.Generator) -> list[Any]:
    """One PSF per band (g, r, z): the seeing varies per galaxy, is worse in g and better in z."""
    import galsim

    fwhm_r = float(np.clip(10.0 ** rng.normal(math.log10(1.25), 0.08), 0.8, 2.2))
    use_moffat = rng.random() < 0.6
    beta = float(rng.choice(_MOFFAT_BETAS))
    g1, g2 = rng.normal(0.0, 0.02, 2)
    psfs = []
    for factor in (1.07, 1.0, 0.92):
        fwhm = fwhm_r * factor * (1.0 + rng.normal(0.0, 0.04))
        psf = galsim.Moffat(beta=beta, fwhm=fwhm) if use_moffat else galsim.Kolmogorov(fwhm=fwhm)
        psfs.append(psf._shear(galsim._Shear(complex(g1 + rng.normal(0.0, 0.005), g2 + rng.normal(0.0, 0.005)))))
    return psfs


def _noise_model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per band (g, r, z): sky level and gain (so that sky + shot noise have the drawn depth),
    the residual of the sky subtraction as a plane (offset, x slope, y slope) in nanomaggies,
    and the seed of the GalSim noise generator."""
    sigma_r = 10.0 ** rng.normal(math.log10(0.014), 0.25)  # nanomaggies per 0.262" pixel
    sigma = sigma_r * np.array([rng.uniform(0.55, 0.8), 1.0, rng.uniform(1.8, 3.0)])
    sky_mag = np.array([22.0, 21.0, 19.8]) + rng.normal(0.0, 0.3, 3)  # mag / arcsec^2
    sky = 10.0 ** ((ZEROPOINT - sky_mag) / 2.5) * NATIVE_SCALE**2  # nanomaggies per pixel
    residual = sigma[:, None] * rng.normal(0.0, 0.25, (3, 3))
    return {"sky": sky, "gain": sky / sigma**2, "residual": residual, "seed": rng.integers(1, 2**31 - 1, size=1)}


def _scene(rng: np.random.Generator) -> tuple[list[Component], list[Any], dict[str, np.ndarray]]:
    """Everything random about one stamp, independent of the pixel grid."""
    main_mag = _power_law_magnitude(rng, 14.0, 17.7, 0.6)
    centre = (float(rng.normal(0.0, 0.3)), float(rng.normal(0.0, 0.3)))
    components = _galaxy(rng, main_mag, _random_kind(rng), centre, detail=True)
    components += _companions(rng, main_mag)
    components += _background(rng)
    return components, _psfs(rng), _noise_model(rng)


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


def _lupton_gray(bands: np.ndarray, q: float, stretch: float) -> np.ndarray:
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
    components, psfs, noise = _scene(np.random.default_rng([int(seed), int(index)]))
    bands = _observe(_render_bands(components, psfs, image_size), noise, image_size)
    return _lupton_gray(bands, q, stretch)


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
