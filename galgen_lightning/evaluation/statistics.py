"""The two-models test's statistics: pure functions over per-sample arrays, with intervals.

For the same seed, model A and model B each draw samples from the same noise, sample ``i`` of
A and sample ``i`` of B from noise ``i``. Everything here respects that pairing: intervals
resample *noise indices* (the pair ``A_i``, ``B_i`` together), and the paired tests use one
value per index.

The statistics (each a positive, calibrated reading with an interval):

- **Memorization rate under the two-models null.** Subsets A and B are drawn from one
  distribution and model A never saw B. For a model that learned the distribution, a sample's
  nearest image in its own subset and in the other subset are exchangeable; whatever sample
  quality does to similarity (faint, smooth samples sit close to everything) acts on both alike.
  So the threshold is the ``quantile`` (default 99th percentile) of the samples' own
  *other-subset* nearest similarities, and the rate is the share of samples whose *own-subset*
  nearest exceeds it: about ``1 - quantile`` for a generalizing pair, near 1 when samples are
  copies. The held-out-real calibration (held-out galaxies' nearest-training similarity) is kept
  as a second reading (``memorization_rate_heldout``).
- **Own-minus-other gap**, one value per noise index (the mean of A's and B's gaps where both
  are valid), with a one-sided Wilcoxon signed-rank p-value.
- **Shared-noise agreement.** ``paired``: mean similarity of ``A_i`` with ``B_i``;
  ``unpaired``: mean similarity of ``A_i`` with ``B_j``, ``i != j`` (what two samples of the
  pair share without the noise). ``kappa = (paired - unpaired) / (1 - unpaired)``: 0 when the
  shared noise carries nothing from A to B, 1 when A and B return the same image for the same
  noise (a chance-corrected agreement, as Cohen's kappa). Its p-value is a permutation test:
  the mean paired similarity against the same mean over random re-pairings.
- **Realism** against held-out real galaxies: a sample is *outside* when its nearest image in
  the subset its model never saw is farther than 99% of held-out real galaxies' nearest
  training image (structure), or its pixel spread lies outside the central 98% of held-out
  galaxies' (brightness: blank and faded samples). About 2-3% of real galaxies are outside by
  construction; pure noise, blank or faded samples are nearly all outside.
- **Variety** (``repeat_share``): the share of samples nearer another sample of their model than
  99% of held-out galaxies come to one another (:mod:`galgen_lightning.evaluation.variety`):
  about 1% for samples as varied as real galaxies, nearly all for a collapse onto a few images.

Pure functions of arrays (no trainer, no model): the callback, the judge and the report call these.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import scipy.stats
from scipy.stats import DegenerateDataWarning

from galgen_lightning.evaluation.paired import PairedArrays, paired_arrays
from galgen_lightning.evaluation.realism import (
    REALISM_QUANTILE,
    heldout_resamples,
    outside_masks,
    outside_real,
    realism_chance,
    row_quantiles,
)
from galgen_lightning.evaluation.variety import repeat_bootstrap, repeat_numbers
from galgen_lightning.models.base import MODELS


# --- point statistics -------------------------------------------------------------------------
def null_rate(own: np.ndarray, other: np.ndarray, quantile: float) -> tuple[float, float]:
    """Memorization rate under the two-models null, and its threshold.

    Args:
        own: own-subset nearest similarities (any shape; NaN = invalid).
        other: other-subset nearest similarities of the same samples.
        quantile: quantile of ``other`` used as the threshold.

    Returns:
        ``(share of valid own > threshold, threshold)``; NaN when there is no valid sample.
    """
    own = np.asarray(own, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    o = other[np.isfinite(other)]
    v = own[np.isfinite(own)]
    if not o.size or not v.size:
        return math.nan, math.nan
    threshold = float(np.quantile(o, quantile))
    return float(np.mean(v > threshold)), threshold


def swap_test(
    own: np.ndarray, other: np.ndarray, quantile: float, permutations: int = 1000, rng: np.random.Generator | None = None
) -> dict[str, float]:
    """Exact calibration of the memorization rate by swapping own and other per sample.

    Under the null (the model's samples do not depend on its own subset), a sample's own-subset
    and other-subset nearest similarities are exchangeable: swapping them at random leaves their
    joint distribution unchanged. The rate recomputed after random swaps is its null
    distribution, whatever the number of samples (a 99th percentile of ~100 values is noisy;
    this accounts for it).

    Returns:
        ``memorization_null_mean`` (the rate expected by chance for these samples),
        ``memorization_excess`` (rate minus it) and ``memorization_p_value`` (one-sided,
        ``(1 + #{null >= rate}) / (1 + permutations)``).
    """
    rng = rng or np.random.default_rng(0)
    o, t = np.asarray(own, dtype=np.float64).ravel(), np.asarray(other, dtype=np.float64).ravel()
    ok = np.isfinite(o) & np.isfinite(t)
    o, t = o[ok], t[ok]
    if o.size < 2:
        return {"memorization_null_mean": math.nan, "memorization_excess": math.nan, "memorization_p_value": math.nan}
    rate = float(np.mean(o > np.quantile(t, quantile)))
    swap = rng.random((permutations, o.size)) < 0.5
    o2, t2 = np.where(swap, t, o), np.where(swap, o, t)
    null = np.mean(o2 > np.quantile(t2, quantile, axis=1)[:, None], axis=1)
    return {
        "memorization_null_mean": float(null.mean()),
        "memorization_excess": rate - float(null.mean()),
        "memorization_p_value": float((1 + np.sum(null >= rate - 1e-12)) / (1 + permutations)),
    }


def resplit_test(
    p: PairedArrays, quantile: float, permutations: int = 2000, rng: np.random.Generator | None = None, chunk: int = 100
) -> dict[str, float]:
    """Calibration of the memorization rate by splitting the training images into A and B again.

    Subsets A and B are one random split of a pool of images. If neither model's samples
    depend on which half it trained on (the null: no copying), every split of the pool into two
    subsets of the same sizes is as likely to be the one behind the samples, so the rate
    recomputed for random re-splits (each sample's own and other nearest similarity taken over
    the images its model's subset would then hold) is the rate's null distribution. Unlike
    swapping own and other per sample (:func:`swap_test`), this keeps what all samples share:
    the same two subsets, so a subset that happens to sit nearer the samples of one model (say,
    smoother samples than the other model's) does not pass for copying.

    Each sample's most similar images of both subsets (:attr:`PairedArrays.top`) stand for the
    whole pool: an image outside both lists is less similar than every listed image of its
    subset, so a re-split side left without a listed image takes the larger of the two lists'
    last values (a bound; rare unless the lists are short, never when they hold whole subsets).

    Returns:
        ``memorization_null_mean``, ``memorization_excess``, ``memorization_p_value`` (one-sided,
        ``(1 + #{null >= rate}) / (1 + permutations)``) and ``memorization_resplits``; NaN
        values without the lists or with fewer than two valid samples.
    """
    missing = {"memorization_null_mean": math.nan, "memorization_excess": math.nan, "memorization_p_value": math.nan}
    if p.top is None or p.top_index is None or p.top_floor is None or p.sizes is None:
        return missing
    rng = rng or np.random.default_rng(0)
    valid = p.valid & np.all(np.isfinite(p.top), axis=2)
    if valid.sum() < 2:
        return missing
    sims = p.top[valid]  # (V, m): model A's valid samples, then B's
    pool = p.top_index[valid]
    is_a = np.repeat([True, False], valid.sum(axis=1))
    floor = p.top_floor[valid][None, :]  # the bound of an unlisted image
    rate, _ = null_rate(np.where(valid, p.own, np.nan), np.where(valid, p.other, np.nan), quantile)
    size_a, size_b = p.sizes
    null = []
    for start in range(0, permutations, chunk):
        count = min(chunk, permutations - start)
        in_a = np.argsort(rng.random((count, size_a + size_b)), axis=1) < size_a  # (P, pool): exactly size_a in A
        own_side = in_a[:, pool] == is_a[None, :, None]  # (P, V, m): the image is in the sample's model's subset
        own = np.where(own_side, sims, -np.inf).max(axis=2)
        other = np.where(own_side, -np.inf, sims).max(axis=2)
        own, other = np.where(np.isinf(own), floor, own), np.where(np.isinf(other), floor, other)
        threshold = np.quantile(other, quantile, axis=1)
        null.append(np.mean(own > threshold[:, None], axis=1))
    null_rates = np.concatenate(null)
    return {
        "memorization_null_mean": float(null_rates.mean()),
        "memorization_excess": rate - float(null_rates.mean()),
        "memorization_p_value": float((1 + np.sum(null_rates >= rate - 1e-12)) / (1 + permutations)),
        "memorization_resplits": float(permutations),
    }


def heldout_rate(own: np.ndarray, heldout: np.ndarray, quantile: float) -> tuple[float, float]:
    """The second reading: share of samples above the ``quantile`` of held-out real galaxies' nearest similarity."""
    v = np.asarray(own, dtype=np.float64)
    v = v[np.isfinite(v)]
    h = np.asarray(heldout, dtype=np.float64)
    h = h[np.isfinite(h)]
    if not v.size or not h.size:
        return math.nan, math.nan
    threshold = float(np.quantile(h, quantile))
    return float(np.mean(v > threshold)), threshold


def index_gaps(own: np.ndarray, other: np.ndarray) -> np.ndarray:
    """One own-minus-other gap per noise index: the mean over the models valid at that index."""
    gap = np.asarray(own, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    counts = np.isfinite(gap).sum(axis=0)
    total = np.nansum(gap, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per = total / counts
    return per[counts > 0]


def gap_test(own: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Median per-index gap and the one-sided Wilcoxon signed-rank p-value for "own is closer"."""
    from scipy.stats import wilcoxon

    d = index_gaps(own, other)
    if d.size == 0:
        return {"gap_median": math.nan, "gap_mean": math.nan, "gap_p_value": math.nan, "gap_indices": 0.0}
    p = 1.0 if np.all(d == 0) else float(wilcoxon(d, alternative="greater").pvalue)
    return {"gap_median": float(np.median(d)), "gap_mean": float(np.mean(d)), "gap_p_value": p, "gap_indices": float(d.size)}


def similarity_matrix(units: dict[str, np.ndarray]) -> np.ndarray:
    """``S[i, j] = cos(A_i, B_j)`` over the indices where both samples are valid."""
    both = np.all(np.isfinite(units["a"]), axis=1) & np.all(np.isfinite(units["b"]), axis=1)
    return units["a"][both] @ units["b"][both].T


def agreement(matrix: np.ndarray, permutations: int = 2000, rng: np.random.Generator | None = None) -> dict[str, float]:
    """Shared-noise agreement from ``S[i, j] = cos(A_i, B_j)`` (see the module docstring).

    Returns:
        ``agreement_paired``, ``agreement_unpaired``, ``agreement_kappa`` and
        ``agreement_p_value`` (permutation test, one-sided, ``(1 + #{T_perm >= T}) / (1 + P)``);
        NaN with fewer than 3 valid pairs.
    """
    s = np.asarray(matrix, dtype=np.float64)
    m = len(s)
    out = {
        "agreement_paired": math.nan,
        "agreement_unpaired": math.nan,
        "agreement_kappa": math.nan,
        "agreement_p_value": math.nan,
    }
    out["agreement_pairs"] = float(m)
    if m < 3:
        return out
    paired = float(np.mean(np.diag(s)))
    unpaired = float((s.sum() - np.trace(s)) / (m * m - m))
    out["agreement_paired"], out["agreement_unpaired"] = paired, unpaired
    out["agreement_kappa"] = kappa(paired, unpaired)
    rng = rng or np.random.default_rng(0)
    perms = np.argsort(rng.random((permutations, m)), axis=1)
    null = s[np.arange(m)[None, :], perms].mean(axis=1)
    out["agreement_p_value"] = float((1 + np.sum(null >= paired - 1e-12)) / (1 + permutations))
    return out


def kappa(paired: float, unpaired: float) -> float:
    """Chance-corrected agreement ``(paired - unpaired) / (1 - unpaired)``."""
    return float((paired - unpaired) / max(1.0 - unpaired, 1e-12))


def resampled_agreement(matrix: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paired and unpaired means of ``S[i, j] = cos(A_i, B_j)`` for resamples given as counts.

    ``counts[b, i]`` is how often index ``i`` was drawn in resample ``b``. The paired mean weighs
    ``S[i, i]`` by the counts; the unpaired mean averages ``S[i, j]`` over the drawn pairs of
    *different original* indices (``c^T S c - sum_i c_i^2 S_ii`` over ``(sum c)^2 - sum c_i^2``),
    so a noise index drawn twice is never compared with itself.
    """
    c = np.asarray(counts, dtype=np.float64)
    d = np.diag(matrix)
    paired = (c @ d) / c.sum(axis=1)
    cross = np.einsum("bi,ij,bj->b", c, matrix, c) - (c * c) @ d
    unpaired = cross / (c.sum(axis=1) ** 2 - (c * c).sum(axis=1))
    return paired, unpaired


# --- everything at once, with bootstrap intervals over noise indices ----------------------------
def bootstrap(
    statistic: Callable[[np.ndarray], dict[str, np.ndarray]],
    n: int,
    n_boot: int,
    confidence: float,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, float]]]:
    """Percentile bootstrap over the indices ``0 .. n-1``, by :func:`scipy.stats.bootstrap`.

    The indices are what is resampled (noise indices, latent indices, seeds), so several
    statistics computed from one resample share it: their replicates stay jointly drawn.

    Args:
        statistic: takes resampled indices ``(B, n)`` and returns named ``(B,)`` replicates.
        n: how many indices (at least 2, else there is no interval).
        n_boot: replicates (0: no interval).
        confidence: of the percentile intervals.
        rng: random generator of the resampling.

    Returns:
        ``(replicates, intervals)`` by name. A resample can leave a statistic undefined (a
        rate over a resample in which no sample is valid): its interval is then over the
        replicates that have a value, and NaN when none has.
    """
    if n_boot <= 0 or n < 2:
        return {}, {}
    names: list[str] = []

    def stacked(indices: np.ndarray, axis: int = -1) -> np.ndarray:
        values = statistic(np.asarray(indices))
        names[:] = list(values)
        return np.stack([np.asarray(v, dtype=np.float64) for v in values.values()])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateDataWarning)  # an undefined replicate: handled below
        res = scipy.stats.bootstrap(
            (np.arange(n),),
            stacked,
            n_resamples=n_boot,
            vectorized=True,
            confidence_level=confidence,
            method="percentile",
            rng=rng,
        )
    replicates = dict(zip(names, res.bootstrap_distribution, strict=True))
    tail = (1 - confidence) / 2
    intervals: dict[str, tuple[float, float]] = {}
    for name, low, high in zip(names, res.confidence_interval.low, res.confidence_interval.high, strict=True):
        if not (math.isfinite(low) and math.isfinite(high)):
            defined = replicates[name][np.isfinite(replicates[name])]
            low, high = np.quantile(defined, [tail, 1 - tail]) if defined.size else (math.nan, math.nan)
        intervals[name] = (float(low), float(high))
    return replicates, intervals


def two_models_evidence(
    arrays: dict[str, np.ndarray],
    quantile: float = 0.99,
    n_boot: int = 1000,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
    permutations: int = 2000,
) -> tuple[dict[str, float], dict[str, tuple[float, float]], dict[str, np.ndarray]]:
    """Every statistic of the test, its bootstrap interval, and the bootstrap replicates.

    The bootstrap resamples noise indices with replacement (``A_i`` and ``B_i`` together) and
    recomputes each statistic, thresholds included. With ``n_boot = 0`` no interval is given.

    Args:
        arrays: the callback's per-sample arrays (see :func:`paired_arrays`).
        quantile: the calibration quantile (both readings of the memorization rate).
        n_boot: bootstrap replicates.
        confidence: of the percentile intervals.
        rng: random generator (bootstrap and permutations).
        permutations: random re-pairings of the agreement test.

    Returns:
        ``(numbers, intervals, replicates)``.
    """
    rng = rng or np.random.default_rng(0)
    p = paired_arrays(arrays)
    own, other = np.where(p.valid, p.own, np.nan), np.where(p.valid, p.other, np.nan)
    numbers: dict[str, float] = {"quantile": quantile, "chance": 1 - quantile}
    numbers["valid_a"], numbers["valid_b"] = (float(p.valid[r].sum()) for r in range(2))
    numbers["memorization_rate"], numbers["memorization_threshold"] = null_rate(own, other, quantile)
    for r, m in enumerate(MODELS):
        numbers[f"memorization_rate_{m}"] = null_rate(own[r], other, quantile)[0]
    # one stream per randomized part: an interval does not move when another part draws more or less
    calibration_rng, agreement_rng, bootstrap_rng, agreement_bootstrap_rng, heldout_rng, variety_rng = rng.spawn(6)
    calibration = resplit_test(p, quantile, permutations, calibration_rng) if p.top is not None else {}
    if "memorization_resplits" not in calibration:  # a result written before the lists were kept
        calibration = swap_test(own, other, quantile, permutations, calibration_rng)
    numbers.update(calibration)
    numbers["memorization_rate_heldout"], numbers["memorization_threshold_heldout"] = heldout_rate(own, p.heldout, quantile)
    numbers.update(gap_test(own, other))
    for r, m in enumerate(MODELS):  # each model's own median gap (its valid samples)
        numbers[f"gap_median_{m}"] = gap_test(own[r : r + 1], other[r : r + 1])["gap_median"]
    numbers["nearest_own_median"] = float(np.nanmedian(own)) if np.isfinite(own).any() else math.nan
    numbers["nearest_other_median"] = float(np.nanmedian(other)) if np.isfinite(other).any() else math.nan
    numbers["heldout_median"] = float(np.median(p.heldout)) if p.heldout.size else math.nan
    outside = outside_real(p)
    n_valid = max(int(p.valid.sum()), 1)
    for key, mask in outside.items():
        numbers[f"realism_outside_{key}"] = float(mask.sum() / n_valid) if p.valid.any() else math.nan
    if outside:
        numbers.update(realism_chance(p))
    if p.heldout_std.size and np.isfinite(p.pixel_std).any():
        numbers["pixel_std_ratio"] = float(np.nanmedian(p.pixel_std) / max(np.median(p.heldout_std), 1e-12))
    sibling = p.sibling if p.sibling is not None else np.full_like(own, np.nan)
    has_sibling = p.valid & np.isfinite(sibling)
    numbers.update(repeat_numbers(sibling, has_sibling, p.heldout_sibling))
    matrix = similarity_matrix(p.units) if p.units else np.zeros((0, 0))
    numbers.update(agreement(matrix, permutations, agreement_rng) if p.units else {})

    std = np.where(p.valid, p.pixel_std, np.nan)

    def per_sample(idx: np.ndarray) -> dict[str, np.ndarray]:
        with warnings.catch_warnings():  # a resample of unusable samples only: NaN (the interval shows it)
            warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning)
            return resampled(idx)

    def resampled(idx: np.ndarray) -> dict[str, np.ndarray]:
        reps: dict[str, np.ndarray] = {}
        o, t = own[:, idx], other[:, idx]  # (2, B, n)
        threshold = np.nanquantile(np.moveaxis(t, 1, 0).reshape(len(idx), -1), quantile, axis=1)
        valid = np.isfinite(o)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps["memorization_rate"] = np.sum(valid & (o > threshold[None, :, None]), axis=(0, 2)) / valid.sum(axis=(0, 2))
            for r, m in enumerate(MODELS):
                reps[f"memorization_rate_{m}"] = np.sum(valid[r] & (o[r] > threshold[:, None]), axis=1) / valid[r].sum(axis=1)
            gap = o - t
            counts = np.isfinite(gap).sum(axis=0)
            per = np.nansum(gap, axis=0) / np.where(counts > 0, counts, np.nan)
            reps["gap_median"] = np.nanmedian(per, axis=1)
            reps |= heldout_readings(o, t, std[:, idx], valid)
        return reps

    def heldout_readings(o: np.ndarray, t: np.ndarray, spread: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
        """The readings against held-out galaxies, whose thresholds come from a resample of the
        held-out set drawn with the samples' resample: the interval holds both sources of chance."""
        reps: dict[str, np.ndarray] = {}
        hv, hs = heldout_resamples(p, o.shape[1], heldout_rng)
        count = valid.sum(axis=(0, 2))
        low = None
        if hv.shape[1]:
            ht, low = row_quantiles(hv, [quantile, REALISM_QUANTILE])[:, None, :, None]
            if np.isfinite(numbers["memorization_rate_heldout"]):
                reps["memorization_rate_heldout"] = np.sum(valid & (o > ht), axis=(0, 2)) / count
        band = (
            tuple(row_quantiles(hs, [REALISM_QUANTILE, 1 - REALISM_QUANTILE])[:, None, :, None])
            if "brightness" in outside
            else None
        )
        masks = outside_masks(t, spread, valid, low if "structure" in outside else None, band)
        return reps | {f"realism_outside_{key}": mask.sum(axis=(0, 2)) / count for key, mask in masks.items()}

    def paired_agreement(idx: np.ndarray) -> dict[str, np.ndarray]:
        counts = np.stack([np.bincount(row, minlength=len(matrix)) for row in idx]).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):  # a resample of one index has no unpaired mean
            paired, unpaired = resampled_agreement(matrix, counts)
        kappas = (paired - unpaired) / np.maximum(1 - unpaired, 1e-12)
        return {"agreement_paired": paired, "agreement_unpaired": unpaired, "agreement_kappa": kappas}

    reps, intervals = bootstrap(per_sample, p.n, n_boot, confidence, bootstrap_rng)
    if len(matrix) >= 3:
        more = bootstrap(paired_agreement, len(matrix), n_boot, confidence, agreement_bootstrap_rng)
        reps, intervals = reps | more[0], intervals | more[1]
    if math.isfinite(numbers.get("repeat_share", math.nan)):  # groups of siblings, not noise indices
        nodes = np.where(p.sibling_index >= 0, p.sibling_index + p.n * np.arange(2)[:, None], -1)
        s = np.where(has_sibling, sibling, np.nan).ravel()
        grouped = repeat_bootstrap(s, nodes.ravel(), p.heldout_sibling, p.heldout_sibling_index, n_boot, confidence, variety_rng)
        if grouped is not None:
            reps["repeat_share"], intervals["repeat_share"] = grouped
    return numbers, intervals, reps
