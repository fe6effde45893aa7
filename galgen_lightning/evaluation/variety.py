"""Variety: whether a model's samples differ from one another as much as real galaxies do.

The two-models test compares A with B, so it cannot see a collapse both models share: two
models that return the same few images for the same noise agree perfectly and copy neither
subset, which reads as generalization. Variety looks inside each model instead.

A sample's *nearest sibling* is its highest similarity (mean-removed cosine) to another sample
of the same model; a held-out galaxy's is its highest similarity to another held-out galaxy.
The highest of more candidates is higher, so both are taken within blocks of the same size
``block = min(valid samples of A, of B, held-out galaxies)`` (runs of consecutive *valid*
samples, in noise-index order; held-out galaxies in the split's random order). A sample
*repeats* when its nearest sibling is more similar than the 99th percentile
(:data:`REPEAT_QUANTILE`) of the held-out galaxies' nearest siblings: closer to another sample
than 99% of real galaxies come to one another.

For samples drawn like the real galaxies, a block of samples and a block of held-out galaxies
are exchangeable, so about 1% of samples repeat (:func:`repeat_chance` measures what real
galaxies score, each against the others); a collapse onto a few images makes nearly every
sample repeat. Smooth samples sit a little closer to one another than real galaxies (the
demo's diffusion pairs: about 3-12%), far from the collapse's share.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from galgen_lightning.evaluation.realism import leave_out_quantiles
from galgen_lightning.metrics import unit_vectors
from galgen_lightning.models.base import MODELS

REPEAT_QUANTILE = 0.99
"""Quantile of the held-out galaxies' nearest-sibling similarity above which a sample repeats."""
MIN_HELDOUT = round(1 / (1 - REPEAT_QUANTILE))
"""Held-out galaxies (with a sibling) that a *collapse* call needs: ``1 / (1 - REPEAT_QUANTILE)``, 100.
With fewer, the 99th percentile is nearly their largest value, whose spread from one held-out
set to the next the bootstrap cannot see (a resample never exceeds its largest value): with 16
held-out galaxies, samples drawn like them had a share above one half in 2 of 30 worlds
(``benchmarks/calibration_variety.py``). Below it the share still keeps *generalizes* from a
pair that is not shown to vary (the safe direction)."""


def nearest_sibling(images: Tensor, block: int, mean_removed: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """For each image, its highest cosine similarity to another image of its block, and which.

    Blocks are consecutive runs of ``block`` images; the last images, when fewer than ``block``
    are left, are compared within the last ``block`` images, so every image has ``block - 1``
    candidates.

    Args:
        images: ``(n, ...)`` images.
        block: images per block (at least 2).
        mean_removed: centre each image first (:func:`~galgen_lightning.metrics.unit_vectors`).

    Returns:
        ``(n,)`` float64 similarities and ``(n,)`` int64 positions of the nearest sibling; NaN
        and -1 everywhere when ``block < 2`` or there are fewer than ``block`` images.
    """
    n = len(images)
    out, index = np.full(n, np.nan), np.full(n, -1, dtype=np.int64)
    if block < 2 or n < block:
        return out, index
    u = unit_vectors(images.detach().cpu(), mean_removed, dtype=torch.float64)
    for start in range(0, n, block):
        first = min(start, n - block)  # the last run: the last `block` images
        sim = u[first : first + block] @ u[first : first + block].T
        sim.fill_diagonal_(-math.inf)
        best = sim.max(dim=1)
        stop = min(start + block, n)
        out[start:stop] = best.values.numpy()[start - first : block]
        index[start:stop] = first + best.indices.numpy()[start - first : block]
    return out, index


def sibling_arrays(samples, heldout: Tensor, mean_removed: bool = True) -> dict[str, np.ndarray]:
    """The nearest siblings of each model's valid samples and of the held-out galaxies.

    Args:
        samples: :class:`~galgen_lightning.models.base.PairSamples`.
        heldout: the held-out images.
        mean_removed: centre each image before the cosine.

    Returns:
        ``sibling_<m>`` (one value per valid sample of model ``m``, in the order of
        ``sample_index_<m>``) and ``sibling_index_<m>`` (the noise index of that nearest
        sibling, -1 for none); ``heldout_sibling`` and ``heldout_sibling_index`` (one per
        held-out galaxy, the position of its nearest sibling); ``sibling_block`` (the block
        size; 0 when there is no comparison).
    """
    valid = {m: samples[m][samples.ok(m)] for m in MODELS}
    block = min(len(heldout), *(len(x) for x in valid.values()))
    block = block if block >= 2 else 0
    out: dict[str, np.ndarray] = {}
    for m, x in valid.items():
        noise_index = torch.nonzero(samples.ok(m)).flatten().numpy()
        out[f"sibling_{m}"], position = nearest_sibling(x, block, mean_removed)
        out[f"sibling_index_{m}"] = np.where(position >= 0, noise_index[np.maximum(position, 0)], -1)
    out["heldout_sibling"], out["heldout_sibling_index"] = nearest_sibling(heldout, block, mean_removed)
    out["sibling_block"] = np.array([block], dtype=np.int64)
    return out


def sibling_groups(index: np.ndarray) -> np.ndarray:
    """Group labels: each image in one group with its nearest sibling (the connected components
    of the graph ``i -> index[i]``; -1: no sibling, a group alone). Nearest siblings often come in
    mutual pairs whose two values are one and the same, so the groups, not the images, are the
    independent units a bootstrap draws."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = index.size
    has = index >= 0
    graph = coo_matrix((np.ones(int(has.sum())), (np.flatnonzero(has), index[has])), shape=(n, n))
    return connected_components(graph, directed=True, connection="weak")[1]


def repeats(sibling: np.ndarray, valid: np.ndarray, threshold: np.ndarray | float) -> np.ndarray:
    """The one rule of variety: a valid sample repeats when its nearest sibling is above
    ``threshold`` (one value, or one per bootstrap replicate, broadcast against the arrays)."""
    with np.errstate(invalid="ignore"):
        return valid & (sibling > threshold)


def repeat_threshold(heldout_sibling: np.ndarray) -> float:
    """The :data:`REPEAT_QUANTILE` of the held-out galaxies' nearest siblings (NaN without two)."""
    h = heldout_sibling[np.isfinite(heldout_sibling)]
    return float(np.quantile(h, REPEAT_QUANTILE)) if h.size >= 2 else math.nan


def repeat_chance(heldout_sibling: np.ndarray) -> float:
    """The share of *real* galaxies that repeat by the same test: each held-out galaxy against
    the threshold of the others (leave one out). About 1% with many held-out galaxies, more with
    a few (the threshold is then nearly their largest value). NaN with fewer than 3."""
    h = heldout_sibling[np.isfinite(heldout_sibling)]
    if h.size < 3:
        return math.nan
    low = leave_out_quantiles(h, np.arange(h.size)[:, None], [REPEAT_QUANTILE])[:, 0]
    return float(np.mean(repeats(h, np.ones(h.size, bool), low)))


def repeat_numbers(sibling: np.ndarray, valid: np.ndarray, heldout_sibling: np.ndarray) -> dict[str, float]:
    """The point values: ``repeat_share`` (valid samples of both models that repeat),
    ``repeat_share_<m>`` per model, ``repeat_threshold``, ``repeat_chance`` (real galaxies by
    the same test) and ``repeat_heldout`` (the held-out galaxies with a sibling); nothing when
    the siblings were not recorded (results written before galgen measured them), and a NaN
    share when they were but fewer than 2 held-out galaxies have one (the judge then withholds
    *generalizes*: variety is not shown).

    Args:
        sibling: ``(2, n)`` nearest siblings by noise index (NaN: none).
        valid: ``(2, n)`` the sample is valid and has a sibling.
        heldout_sibling: the held-out galaxies' nearest siblings.
    """
    if not heldout_sibling.size:  # not recorded: a result from before galgen measured variety
        return {}
    threshold = repeat_threshold(heldout_sibling)
    counted = float(np.isfinite(heldout_sibling).sum())
    if not (math.isfinite(threshold) and valid.any()):  # recorded, but too few images to compare
        return {"repeat_share": math.nan, "repeat_heldout": counted}
    above = repeats(sibling, valid, threshold)
    out = {"repeat_share": float(above.sum() / valid.sum()), "repeat_threshold": threshold}
    for r, m in enumerate(MODELS):
        out[f"repeat_share_{m}"] = float(above[r].sum() / valid[r].sum()) if valid[r].any() else math.nan
    out["repeat_chance"] = repeat_chance(heldout_sibling)
    out["repeat_heldout"] = counted
    return out


def repeat_bootstrap(
    sibling: np.ndarray,
    index: np.ndarray,
    heldout_sibling: np.ndarray,
    heldout_index: np.ndarray,
    n_boot: int,
    confidence: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, tuple[float, float]] | None:
    """Bootstrap replicates and percentile interval of the repeat share, drawing *groups* of
    siblings (:func:`sibling_groups`) with replacement, of the samples and of the held-out
    galaxies (whose 99th percentile is recomputed in each replicate).

    Resampling images one by one treats a mutual pair, two samples that repeat together, as two
    independent draws: the interval covered the share's value in 0.84 of worlds at its 95% level
    (``benchmarks/calibration_variety.py``, n_val 500); drawing groups, in 0.96.

    Args:
        sibling: nearest siblings of the valid samples (any order; NaN entries are left out).
        index: for each, the position in ``sibling`` of its nearest sibling (-1: none).
        heldout_sibling: the held-out galaxies' nearest siblings.
        heldout_index: for each, the position of its nearest sibling (-1: none).
        n_boot: replicates (0: none).
        confidence: of the interval.
        rng: random generator.

    Returns:
        ``(replicates, (low, high))``, or None without replicates, samples or held-out galaxies.
    """
    from scipy.sparse import csr_matrix

    ok, h_ok = np.isfinite(sibling), np.isfinite(heldout_sibling)
    if n_boot <= 0 or ok.sum() < 2 or h_ok.sum() < 2:
        return None
    values, groups = sibling[ok], sibling_groups(_kept(index, ok))
    held, held_groups = heldout_sibling[h_ok], sibling_groups(_kept(heldout_index, h_ok))
    g, h = int(groups.max()) + 1, int(held_groups.max()) + 1
    draws = rng.multinomial(g, np.full(g, 1 / g), size=n_boot).astype(np.float64)  # (B, groups)
    held_draws = rng.multinomial(h, np.full(h, 1 / h), size=n_boot).astype(np.float64)
    # each replicate's threshold: the smallest held-out value whose cumulative weight (its group's
    # draws) reaches REPEAT_QUANTILE of the total, the weighted form of the quantile
    order = np.argsort(held)
    cumulative = np.cumsum(held_draws[:, held_groups[order]], axis=1)
    first = np.argmax(cumulative >= REPEAT_QUANTILE * cumulative[:, -1:], axis=1)
    threshold = held[order][first]
    members = csr_matrix((np.ones(values.size), (np.arange(values.size), groups)), shape=(values.size, g))
    repeated = repeats(values[:, None], np.ones((values.size, 1), bool), threshold[None, :]).astype(np.float64)
    above = np.asarray((members.T @ repeated).T)  # (B, groups): repeats per group
    size = np.bincount(groups, minlength=g)
    share = (draws * above).sum(axis=1) / (draws @ size)
    tail = (1 - confidence) / 2
    low, high = np.quantile(share, [tail, 1 - tail])
    return share, (float(low), float(high))


def _kept(index: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``index`` (positions among all entries) restricted to the ``ok`` entries and renumbered
    among them; a sibling that is not kept becomes -1."""
    position = np.full(index.size, -1, dtype=np.int64)
    position[ok] = np.arange(int(ok.sum()))
    kept = index[ok]
    return np.where(kept >= 0, position[np.maximum(kept, 0)], -1)
