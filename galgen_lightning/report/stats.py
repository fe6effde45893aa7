"""The report's statistics: formatting, N* over N (seeds combined) and the transition checks.

The label of each run comes from the one judge, :mod:`galgen_lightning.evaluation.verdict`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from galgen_lightning.evaluation.verdict import MEMORIZES_RATE, fmt_ci

MEMORIZED_RATE = MEMORIZES_RATE
"""The level N* is read at: the memorization rate falls through one half."""


def finite(x: Any) -> np.ndarray:
    """The finite values of ``x``, flattened, as float64."""
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def combine_seeds(
    replicates: list[np.ndarray], rng: np.random.Generator, clip: tuple[float, float] | None = (0.0, 1.0)
) -> np.ndarray:
    """Replicates of the mean over seeds, with the seed-to-seed spread in them.

    With one seed they are that seed's bootstrap replicates. With ``k`` seeds they are draws of
    the random-effects t-interval: ``mean + SE * t(k - 1)``, the mean of the seeds' estimates
    (each the mean of its replicates), ``SE`` the larger of the seeds' spread (``sd / sqrt(k)``,
    which holds the noise within a seed too) and the noise within seeds alone (so that seeds
    agreeing by chance do not make an interval narrower than one seed's). Their percentiles are
    the t-interval. Drawing the seeds with replacement (a two-level bootstrap) covered the mean
    in 0.86 of worlds with three seeds and a seed-to-seed spread of 0.08, and 0.80 with two; this
    covers 0.97 and 1.00 (docs/verdict.md, "Combining seeds").

    Args:
        replicates: one ``(B,)`` array of bootstrap replicates per seed.
        rng: random generator.
        clip: the statistic's range (a rate: 0 to 1), None for none.
    """
    reps = np.stack([np.asarray(r, dtype=np.float64) for r in replicates])  # (k, B)
    k, b = reps.shape
    if k == 1:
        return reps[0]
    with warnings.catch_warnings():  # a seed with no defined replicate: left out
        warnings.simplefilter("ignore", RuntimeWarning)
        estimates = np.nanmean(reps, axis=1)
        within = np.nanvar(reps, axis=1)
    keep = np.isfinite(estimates)
    if keep.sum() < 2:
        return reps[keep][0] if keep.any() else np.full(b, np.nan)
    estimates, within, k = estimates[keep], within[keep], int(keep.sum())
    se = math.sqrt(max(estimates.var(ddof=1), float(np.mean(within))) / k)
    out = estimates.mean() + se * rng.standard_t(k - 1, size=b)
    return np.clip(out, *clip) if clip is not None else out


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table: 3 decimals, integers with thousands separators, n/a for None/NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    return f"{float(x):.{digits}f}"


def fmt_p(x: Any) -> str:
    """A p-value with two significant digits."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return f"{float(x):.2g}"


def estimate_n_star(
    points: list[tuple[int, float, np.ndarray | None]], level: float = MEMORIZED_RATE, confidence: float = 0.95
) -> dict:
    """The N where the memorization rate falls through ``level``, by log-linear interpolation.

    Args:
        points: ``(N, rate, bootstrap replicates of the rate or None)``, one per N.
        level: the crossing level (0.5: most samples memorized below N*).
        confidence: of the bootstrap interval.

    Returns:
        ``{"n_star", "ci", "bracketed", "statement", "share_bracketed"}``.
    """
    pts = sorted((n, r, reps) for n, r, reps in points if r is not None and math.isfinite(r) and n)
    if not pts:
        return {
            "n_star": None,
            "ci": None,
            "bracketed": False,
            "statement": "no complete run with a memorization rate",
            "share_bracketed": 0.0,
        }
    ns = np.array([p[0] for p in pts], float)
    rates = np.array([p[1] for p in pts], float)

    def first_fall(r: np.ndarray) -> int | None:
        """The first ``i`` with ``r[i] > level >= r[i + 1]``."""
        return next((i for i in range(len(r) - 1) if r[i] > level >= r[i + 1]), None)

    def crossing(r: np.ndarray) -> float | None:
        i = first_fall(r)
        if i is None:
            return None
        t = (r[i] - level) / (r[i] - r[i + 1])
        return float(np.exp(np.log(ns[i]) + t * (np.log(ns[i + 1]) - np.log(ns[i]))))

    n_star = crossing(rates)
    result: dict[str, Any] = {"n_star": n_star, "ci": None, "bracketed": n_star is not None, "share_bracketed": 0.0}
    if all(p[2] is not None for p in pts) and len(pts) > 1:
        reps = np.stack([np.asarray(p[2], float) for p in pts], axis=1)
        found = np.array([c for row in reps if np.all(np.isfinite(row)) for c in [crossing(row)] if c is not None])
        result["share_bracketed"] = float(len(found) / len(reps)) if len(reps) else 0.0
        if found.size:
            tail = (1 - confidence) / 2 * 100
            result["ci"] = tuple(float(v) for v in np.percentile(found, [tail, 100 - tail]))
    if n_star is not None:
        ci = result["ci"]
        statement = (
            f"N* ~ {n_star:,.0f}: the memorization rate falls through {level} "
            f"between N={ns[first_fall(rates)]:,.0f} and N={ns[first_fall(rates) + 1]:,.0f}"
        )
        if ci:
            statement += (
                f" (bootstrap {confidence:.0%} interval {ci[0]:,.0f} to {ci[1]:,.0f}, "
                f"bracketed in {result['share_bracketed']:.0%} of replicates)"
            )
        if np.any(np.diff(rates) > 0):
            statement += "; note: the rate is not monotonic in N"
    elif rates[0] <= level:
        statement = (
            f"not bracketed: the memorization rate is {rates[0]:.2f} <= {level} already at the smallest N ({ns[0]:,.0f}), "
            f"so N* < {ns[0]:,.0f} or this training budget does not reach memorization (see the own-other gap)"
        )
    else:
        statement = (
            f"not bracketed: the memorization rate stays above {level} up to the largest N ({ns[-1]:,.0f}), so N* > {ns[-1]:,.0f}"
        )
    result["statement"] = statement
    return result


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def transition_checks(rows: list[dict]) -> list[tuple[str, bool | None, str]]:
    """The signs of the transition over N, each with its numbers (rows sorted by N, one per N)."""
    rows = [r for r in rows if r["complete"] and _finite(r.get("memorization_rate"))]
    if len(rows) < 2:
        return [("at least two complete runs over N", False, f"{len(rows)} complete run(s) with results")]
    first, last = rows[0], rows[-1]
    at = lambda r: f"N={r['n']:,}"  # noqa: E731
    checks = [
        (
            "the smallest N memorizes (the judge's label)",
            first["label"] == "memorizes",
            f"{at(first)}: {first['label']}, rate {fmt_ci(first['memorization_rate'], first.get('memorization_rate_ci'))}",
        )
    ]
    sep = (
        first.get("memorization_rate_ci")
        and last.get("memorization_rate_ci")
        and last["memorization_rate_ci"][1] < first["memorization_rate_ci"][0]
    )
    checks.append(
        (
            "the memorization rate falls as N grows, intervals apart",
            bool(sep),
            f"{fmt(first['memorization_rate'])} at {at(first)} -> {fmt(last['memorization_rate'])} at {at(last)}",
        )
    )
    k0, k1 = first.get("agreement_kappa"), last.get("agreement_kappa")
    checks.append(
        (
            "A and B agree more on shared noise at the largest N (kappa)",
            None if not (_finite(k0) and _finite(k1)) else bool(k1 > k0),
            f"{fmt(k0)} at {at(first)} -> {fmt_ci(k1, last.get('agreement_kappa_ci'))} at {at(last)}",
        )
    )
    checks.append(
        ("the largest N generalizes (the judge's label)", last["label"] == "generalizes", f"{at(last)}: {last['label']}")
    )
    return checks


def diagnose(rows: list[dict]) -> list[str]:
    """Plain reasons when the expected transition does not show (never a re-tuned threshold).

    For the smallest N that does not memorize and the largest N that does not generalize: the
    judge's reasons, whether the two models disagree, and how many samples were invalid.
    """
    notes: list[str] = []
    done = [r for r in rows if r["complete"] and r.get("memorization_rate") is not None]
    if not done:
        return notes
    ends = [(done[0], "memorizes")] + ([(done[-1], "generalizes")] if len(done) > 1 else [])
    for row, expected in ends:
        if row["label"] == expected:
            continue
        at = f"At N={row['n']:,}"
        notes.append(f"{at} the judge says {row['label']}, not {expected}: {row['evidence']}.")
        ra, rb = row.get("memorization_rate_a"), row.get("memorization_rate_b")
        if ra is not None and rb is not None and abs(ra - rb) > MEMORIZED_RATE:
            hi, lo = ("A", "B") if ra > rb else ("B", "A")
            notes.append(
                f"{at} the two models disagree: model {hi} copies ({max(ra, rb):.0%}), model {lo} does not ({min(ra, rb):.0%})."
            )
        bad = [
            f"model {w.upper()}: {int(row.get(f'diverged_{w}') or 0)} diverged, "
            f"{int(row.get(f'step_limit_{w}') or 0)} at the step limit"
            for w in "ab"
        ]
        if (row.get("invalid_share") or 0) > 0.25:
            notes.append(f"{at} {row['invalid_share']:.0%} of the samples are invalid and left out ({'; '.join(bad)}).")
    return notes
