"""The random scene of one synthetic galaxy stamp: what is in it, independent of the pixel grid.

:func:`scene` draws, from one ``np.random.Generator``, the central galaxy (its kind, parts,
colours, size and orientation), companions, background galaxies and stars, the PSFs and the
noise model. :mod:`galgen_lightning.data.synthetic` renders a scene into pixels; the module
docstring there describes the population. GalSim is imported inside the functions only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

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


def scene(rng: np.random.Generator) -> tuple[list[Component], list[Any], dict[str, np.ndarray]]:
    """Everything random about one stamp, independent of the pixel grid."""
    main_mag = _power_law_magnitude(rng, 14.0, 17.7, 0.6)
    centre = (float(rng.normal(0.0, 0.3)), float(rng.normal(0.0, 0.3)))
    components = _galaxy(rng, main_mag, _random_kind(rng), centre, detail=True)
    components += _companions(rng, main_mag)
    components += _background(rng)
    return components, _psfs(rng), _noise_model(rng)
