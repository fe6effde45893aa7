"""Realism: whether samples look like real galaxies, judged against the held-out galaxies.

A sample is *outside* when its nearest image in the subset its model never saw is less similar
than the 1st percentile of held-out galaxies' nearest-training similarity (structure), or its
pixel spread lies outside the held-out galaxies' 1st-99th percentiles (brightness).
:func:`realism_chance` gives what real galaxies score on the same test, and
:func:`heldout_resamples` the held-out galaxies redrawn for the bootstrap (the thresholds are a
sample too). :mod:`galgen_lightning.evaluation.statistics` puts them into the two-models evidence.
"""

from __future__ import annotations

import math

import numpy as np

from galgen_lightning.evaluation.paired import PairedArrays

REALISM_QUANTILE = 0.01
"""Tail of the held-out real galaxies' distributions outside which a sample counts as unlike
any real galaxy (each side for brightness, the low side for structure)."""


def outside_masks(
    other: np.ndarray,
    spread: np.ndarray,
    valid: np.ndarray,
    low: np.ndarray | float | None,
    band: tuple[np.ndarray | float, np.ndarray | float] | None,
) -> dict[str, np.ndarray]:
    """The one rule of realism, for any thresholds (one set, or one per bootstrap replicate or
    left-out galaxy, broadcast against the arrays): outside in structure when ``other`` (the
    nearest similarity to the subset the model never saw) is below ``low``; in brightness when
    ``spread`` (the pixel standard deviation) lies outside ``band``.

    Returns:
        ``{"structure", "brightness", "any"}`` bool arrays, a part missing when its threshold is None.
    """
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore"):
        if low is not None:
            out["structure"] = valid & (other < low)
        if band is not None:
            out["brightness"] = valid & ((spread < band[0]) | (spread > band[1]))
    if out:
        out["any"] = np.logical_or.reduce(list(out.values()))
    return out


def outside_real(p: PairedArrays) -> dict[str, np.ndarray]:
    """Per sample ``(2, n)`` bool (NaN-safe): structure and brightness outside the real range,
    against thresholds from all the held-out galaxies (:func:`outside_masks`).

    Returns:
        ``{"structure": ..., "brightness": ..., "any": ...}``; a key is missing when its
        reference was not recorded (old runs without ``heldout_pixel_std``).
    """
    h = p.heldout[np.isfinite(p.heldout)]
    hs = p.heldout_std[np.isfinite(p.heldout_std)]
    low = np.quantile(h, REALISM_QUANTILE) if h.size else None
    measured = hs.size and np.isfinite(p.pixel_std).any()
    band = tuple(np.quantile(hs, [REALISM_QUANTILE, 1 - REALISM_QUANTILE])) if measured else None
    return outside_masks(p.other, p.pixel_std, p.valid, low, band)


def leave_out_quantiles(values: np.ndarray, groups: np.ndarray, q: list[float]) -> np.ndarray:
    """``(len(groups), len(q))``: the quantiles of ``values`` (as :func:`numpy.nanquantile`,
    linear) with each row of ``groups`` (indices into ``values``) left out, from one sort:
    ``O(n log n)``, not a sort per row. NaN where fewer than one value is left."""
    order = np.argsort(values, kind="stable")  # NaNs last
    ordered = values[order]
    rank = np.empty_like(order)
    rank[order] = np.arange(values.size)
    removed = np.sort(rank[groups], axis=1)  # (m, g) positions in the sorted order
    kept = int(np.isfinite(values).sum()) - np.isfinite(values[groups]).sum(axis=1)  # (m,)
    pos = (kept[:, None] - 1) * np.asarray(q, dtype=np.float64)[None, :]  # (m, Q)
    low = np.floor(np.maximum(pos, 0)).astype(np.int64)
    high = np.minimum(low + 1, np.maximum(kept[:, None] - 1, 0))

    def kth(k: np.ndarray) -> np.ndarray:  # the k-th smallest left, per row: skip the removed positions
        k = k.copy()
        for c in range(removed.shape[1]):
            k += k >= removed[:, c : c + 1]
        return ordered[np.minimum(k, values.size - 1)]

    out = kth(low) + (pos - low) * (kth(high) - kth(low))
    return np.where(kept[:, None] >= 1, out, np.nan)


def realism_chance(p: PairedArrays) -> dict[str, float]:
    """The realism shares of *real* galaxies: each held-out galaxy judged against thresholds from
    the others (leave one out), as a sample is against all of them. This is what the shares are
    by chance at this ``n_val`` (about 0.01 for structure and 0.02 for brightness with many
    held-out galaxies; far more with a few, whose extremes set the thresholds).

    Returns:
        ``realism_chance_<structure|brightness|any>`` for the parts recorded; NaN with fewer
        than 2 held-out galaxies.
    """
    h, hs = p.heldout, p.heldout_std
    pairs = bool(hs.size) and h.size == 2 * hs.size  # val vs A, then val vs B, of the same images
    m = hs.size if pairs else h.size
    keys = (["structure"] if h.size else []) + (["brightness"] if pairs else [])
    if m < 2 or not keys:
        return {f"realism_chance_{key}": math.nan for key in ([*keys, "any"] if keys else [])}
    # each galaxy as a "sample": its similarities to A and to B (rows of ``mine``), its spread
    mine = np.stack([np.arange(m), hs.size + np.arange(m)], axis=1) if pairs else np.arange(m)[:, None]
    low = leave_out_quantiles(h, mine, [REALISM_QUANTILE]) if h.size else None
    band = None
    if pairs:
        lo, hi = leave_out_quantiles(hs, np.arange(m)[:, None], [REALISM_QUANTILE, 1 - REALISM_QUANTILE]).T
        band = (lo[:, None], hi[:, None])
    other = h[mine] if h.size else np.zeros(mine.shape)
    spread = np.repeat(hs[:, None], mine.shape[1], axis=1) if pairs else np.zeros(mine.shape)
    flags = outside_masks(other, spread, np.ones(mine.shape, bool), low, band)
    return {f"realism_chance_{key}": float(v.mean()) for key, v in flags.items()}


def row_quantiles(x: np.ndarray, q: list[float]) -> np.ndarray:
    """``(len(q), rows)`` quantiles of each row of ``x``, NaNs left out (NaN for a row of NaNs)."""
    return np.quantile(x, q, axis=1) if np.isfinite(x).all() else np.nanquantile(x, q, axis=1)


def heldout_resamples(p: PairedArrays, b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``b`` resamples of the held-out galaxies, drawn with replacement: ``(b, len(heldout))``
    nearest-training similarities and ``(b, len(heldout_std))`` pixel spreads. An image's two
    similarities (to A, to B) and its spread stay together when all three were recorded."""
    h, hs = p.heldout, p.heldout_std
    if hs.size and h.size == 2 * hs.size:  # val vs A, then val vs B, of the same images
        pick = rng.integers(0, hs.size, (b, hs.size))
        return np.concatenate([h[pick], h[hs.size + pick]], axis=1), hs[pick]
    picks = [v[rng.integers(0, v.size, (b, v.size))] if v.size else np.zeros((b, 0)) for v in (h, hs)]
    return picks[0], picks[1]
