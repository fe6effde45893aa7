"""The report's statistics: bootstrap intervals, the verdict per run, N* and the transition checks."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from galgen_lightning.report.runs import Run

# --- the verdict's rules (documented in docs/report.md; not tuned per sweep) -------------------
MEMORIZED_RATE = 0.5
"""A pair *memorizes* when more than this share of samples is closer to a training image of its
own subset than the calibration quantile of held-out real galaxies (most samples are copies)."""
SIGNIFICANCE = 0.01
"""One-sided p-value under which samples count as significantly closer to their own subset."""
PARTIAL_RATE = 0.1
"""Above this memorization rate (ten times the 1% expected by chance with the default 99th
percentile) a pair is at least *partly* memorizing, even when the gap is not significant."""
MIN_VALID = 8
"""Fewer valid samples (A and B together) than this: no verdict."""
FAINT_RATIO = 0.2
"""A model whose valid samples have a median pixel standard deviation below this share of the
other model's is reported as producing faint (faded) samples: a diagnosis, not a criterion."""


def sample_brightness(arrays: dict[str, np.ndarray] | None) -> dict[str, float]:
    """Median per-sample pixel standard deviation of each model's valid samples (``std_a``, ``std_b``)."""
    out: dict[str, float] = {}
    for w in "ab":
        x = None if arrays is None else arrays.get(f"samples_{w}")
        if x is None or not np.size(x):
            continue
        ok = arrays.get(f"ok_{w}")
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        if ok is not None and np.shape(ok) == (len(x),):
            x = x[np.asarray(ok, bool)]
        x = x[np.all(np.isfinite(x), axis=1)]
        if len(x):
            out[f"std_{w}"] = float(np.median(x.std(axis=1)))
    return out


def faint_model(numbers: dict) -> tuple[str, float, float] | None:
    """``(model, its median pixel std, the other's)`` when one model's samples are much fainter."""
    a, b = numbers.get("sample_std_a"), numbers.get("sample_std_b")
    if a is None or b is None:
        return None
    if a < FAINT_RATIO * b:
        return ("A", a, b)
    if b < FAINT_RATIO * a:
        return ("B", b, a)
    return None


def finite(x: Any) -> np.ndarray:
    """The finite values of ``x``, flattened, as float64."""
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def _ci(values: np.ndarray, confidence: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return (math.nan, math.nan)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(v, [tail, 100 - tail])
    return (float(lo), float(hi))


def bootstrap_two_models(
    arrays: dict[str, np.ndarray], quantile: float, n_boot: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of the two-models statistics from the callback's per-sample arrays.

    Samples are resampled with their own and other similarities together (the gap is paired);
    the held-out reference is resampled too (by validation image: the callback stores the
    held-out set's similarities to A and then to B), so the threshold varies as it should.

    Returns:
        ``{"memorization_rate": (n_boot,), "gap_median": ..., "a_vs_b_median": ...}``; NaN
        replicates where there is nothing to resample.
    """
    own = np.concatenate([np.asarray(arrays.get(f"own_{w}", []), float).ravel() for w in "ab"])
    other = np.concatenate([np.asarray(arrays.get(f"other_{w}", []), float).ravel() for w in "ab"])
    heldout = np.asarray(arrays.get("heldout", []), float).ravel()
    a_vs_b = np.asarray(arrays.get("a_vs_b", []), float).ravel()
    out = {k: np.full(n_boot, np.nan) for k in ("memorization_rate", "gap_median", "a_vs_b_median")}
    if own.size and heldout.size:
        idx = rng.integers(0, own.size, size=(n_boot, own.size))
        if heldout.size % 2 == 0:  # [val vs A, val vs B]: resample validation images
            half = heldout.size // 2
            j = rng.integers(0, half, size=(n_boot, half))
            ref = np.concatenate([heldout[:half][j], heldout[half:][j]], axis=1)
        else:
            ref = heldout[rng.integers(0, heldout.size, size=(n_boot, heldout.size))]
        threshold = np.quantile(ref, quantile, axis=1)
        out["memorization_rate"] = np.mean(own[idx] > threshold[:, None], axis=1)
        if other.size == own.size:
            out["gap_median"] = np.median(own[idx] - other[idx], axis=1)
    if a_vs_b.size:
        out["a_vs_b_median"] = np.median(a_vs_b[rng.integers(0, a_vs_b.size, size=(n_boot, a_vs_b.size))], axis=1)
    return out


@dataclass
class Verdict:
    """What a run shows, and on what evidence."""

    label: str
    evidence: str
    numbers: dict[str, Any]


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table: 3 decimals, integers with thousands separators, n/a for None/NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    return f"{float(x):.{digits}f}"


def fmt_ci(value: Any, ci: tuple[float, float] | None) -> str:
    """``value [low, high]``, or the value alone without an interval."""
    if ci is None or not all(math.isfinite(c) for c in ci):
        return fmt(value)
    return f"{fmt(value)} [{fmt(ci[0])}, {fmt(ci[1])}]"


def fmt_p(x: Any) -> str:
    """A p-value with two significant digits."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return f"{float(x):.2g}"


def judge(run: Run, n_boot: int, confidence: float, rng: np.random.Generator) -> Verdict:
    """Memorizes / partly memorizes / generalizes, from the calibrated two-models numbers."""
    rec = run.last("two_models")
    numbers: dict[str, Any] = {"state": run.state}
    if rec is None:
        label = "no result" if run.complete else f"no result yet ({run.state})"
        return Verdict(label, "the two-models test has not written a result", numbers)
    quantile = float(run.callback_args("TwoModelsTest").get("quantile", 0.99))
    for key in (
        "memorization_rate",
        "gap_median",
        "gap_p_value",
        "a_vs_b_median",
        "memorization_threshold",
        "nearest_own_median",
        "nearest_other_median",
        "heldout_median",
        "valid_a",
        "valid_b",
    ):
        numbers[key] = rec.get(key)
    for key in ("memorization_rate", "gap_median", "diverged", "step_limit"):
        for w in "ab":
            numbers[f"{key}_{w}"] = rec.get(f"{key}_{w}")
    numbers["epoch"] = rec.get("epoch")
    numbers["quantile"] = quantile
    arrays = run.arrays("two_models", rec.get("epoch"))
    numbers.update({f"sample_{k}": v for k, v in sample_brightness(arrays).items()})
    reps = bootstrap_two_models(arrays, quantile, n_boot, rng) if arrays and n_boot > 0 else {}
    numbers["replicates"] = reps
    for key in ("memorization_rate", "gap_median", "a_vs_b_median"):
        numbers[f"{key}_ci"] = _ci(reps[key], confidence) if key in reps else None
    rate, gap, p, ab = (rec.get(k) for k in ("memorization_rate", "gap_median", "gap_p_value", "a_vs_b_median"))
    valid = sum(int(rec.get(f"valid_{w}") or 0) for w in "ab")
    chance = 1 - quantile
    parts = [
        f"memorization rate {fmt_ci(rate, numbers['memorization_rate_ci'])} (chance {chance:.2g})",
        f"own-other gap {fmt_ci(gap, numbers['gap_median_ci'])}, p={fmt_p(p)}",
        f"A vs B {fmt_ci(ab, numbers['a_vs_b_median_ci'])}",
        f"{valid} valid samples",
    ]
    significant = p is not None and gap is not None and float(p) < SIGNIFICANCE and float(gap) > 0
    if rate is None or valid < MIN_VALID:
        label = "inconclusive"
        parts.insert(0, f"only {valid} valid samples" if valid < MIN_VALID else "no memorization rate")
    elif rate > MEMORIZED_RATE:
        label = "memorizes"
        parts.insert(0, f"most samples ({rate:.0%}) are closer to an own training image than held-out galaxies ever are")
    elif significant or rate > PARTIAL_RATE:
        label = "partly memorizes"
        why = []
        if significant:
            why.append("samples are significantly closer to their own subset than to the other")
        if rate > PARTIAL_RATE:
            why.append(f"{rate:.0%} of samples pass the calibrated threshold")
        parts.insert(0, "; ".join(why) + f", but not most (rate <= {MEMORIZED_RATE})")
    else:
        label = "generalizes"
        parts.insert(0, "samples are no closer to their own subset than to the other, and few pass the calibrated threshold")
    faint = faint_model(numbers)
    if faint:
        other = "B" if faint[0] == "A" else "A"
        parts.append(f"model {faint[0]}'s samples are faint (median pixel std {faint[1]:.3g} against {faint[2]:.3g} for {other})")
        if label in ("generalizes", "partly memorizes"):
            label += f" (caveat: model {faint[0]}'s samples faint)"
    parts += family_evidence(run)
    if not run.complete:
        label += f" (incomplete: {run.state})"
        parts.insert(0, f"run not complete (status {run.state}, epoch {run.status.get('epoch', '?')})")
    return Verdict(label, "; ".join(parts), numbers)


def family_evidence(run: Run) -> list[str]:
    """Extra evidence of the family's own test (inversion for flows, discriminator for GANs)."""
    out = []
    inv = run.last("inversion")
    if inv:
        levels = sorted({int(m.group(1)) for k in inv for m in [re.match(r"from_a/level(\d+)/w1_z_zb$", k)] if m})
        ratios = []
        for k in levels:
            w, floor = inv.get(f"from_a/level{k}/w1_z_zb"), inv.get(f"from_a/level{k}/w1_z_normal")
            if w is not None and floor:
                ratios.append(w / floor)
        if ratios:
            out.append(
                f"inversion: W1(z, z_B) is {min(ratios):.1f}-{max(ratios):.1f}x the finite-sample floor W1(z, N) over {len(ratios)} levels"
            )
    disc = run.last("discriminator")
    if disc:
        s = f"discriminator test: max W1 between the four curves {fmt(disc.get('max_w1'))}, max |mean - 2| {fmt(disc.get('max_mean_dev'))}"
        over = [disc.get(f"overfit_{w}") for w in "ab"]
        if all(v is not None for v in over):
            s += f", held-out minus training loss {fmt(over[0])} (D_A) / {fmt(over[1])} (D_B)"
        out.append(s)
    return out


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

    def crossing(r: np.ndarray) -> float | None:
        for i in range(len(r) - 1):
            if r[i] > level >= r[i + 1]:
                t = (r[i] - level) / (r[i] - r[i + 1])
                return float(np.exp(np.log(ns[i]) + t * (np.log(ns[i + 1]) - np.log(ns[i]))))
        return None

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
        statement = f"N* ~ {n_star:,.0f}: the memorization rate falls through {level} between N={ns[rates > level][-1]:,.0f} and N={ns[rates <= level][0]:,.0f}"
        if ci:
            statement += f" (bootstrap {confidence:.0%} interval {ci[0]:,.0f} to {ci[1]:,.0f}, bracketed in {result['share_bracketed']:.0%} of replicates)"
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


def transition_checks(rows: list[dict]) -> list[tuple[str, bool | None, str]]:
    """The issue's three signs of the transition over N, each with its numbers."""
    rows = [r for r in rows if r["complete"] and r.get("memorization_rate") is not None]
    if len(rows) < 2:
        return [("at least two complete runs over N", False, f"{len(rows)} complete run(s) with results")]
    first, last = rows[0], rows[-1]
    checks = []
    r0 = first["memorization_rate"]
    checks.append(
        (
            f"most samples memorized at the smallest N (rate > {MEMORIZED_RATE})",
            r0 > MEMORIZED_RATE,
            f"N={first['n']:,}: {fmt_ci(r0, first.get('memorization_rate_ci'))}",
        )
    )
    falls = last["memorization_rate"] < r0
    sep = (
        first.get("memorization_rate_ci")
        and last.get("memorization_rate_ci")
        and last["memorization_rate_ci"][1] < first["memorization_rate_ci"][0]
    )
    checks.append(
        (
            "the memorization rate falls as N grows",
            falls,
            f"{fmt(r0)} at N={first['n']:,} -> {fmt(last['memorization_rate'])} at N={last['n']:,}"
            + (" (intervals separate)" if sep else ""),
        )
    )
    a0, a1 = first.get("a_vs_b_median"), last.get("a_vs_b_median")
    rises = a0 is not None and a1 is not None and a1 > a0
    checks.append(
        (
            "the median A-vs-B similarity rises",
            rises if a0 is not None and a1 is not None else None,
            f"{fmt(a0)} at N={first['n']:,} -> {fmt(a1)} at N={last['n']:,}",
        )
    )
    return checks


def diagnose(rows: list[dict]) -> list[str]:
    """Plain reasons when the expected transition does not show (never a re-tuned threshold).

    For the smallest N whose rate is not above 0.5: do the two models disagree, did one model's
    samples fade or diverge, and otherwise, do the samples lean towards their own subset without
    being copies (under-trained for memorization) or not at all. Faint samples are reported at
    every N.
    """
    notes: list[str] = []
    done = [r for r in rows if r["complete"] and r.get("memorization_rate") is not None]
    if not done:
        return notes
    first = done[0]
    at = f"At N={first['n']:,}"
    if first["memorization_rate"] <= MEMORIZED_RATE:
        specific = False
        ra, rb = first.get("memorization_rate_a"), first.get("memorization_rate_b")
        if ra is not None and rb is not None and abs(ra - rb) > MEMORIZED_RATE:
            specific = True
            hi, lo = ("A", "B") if ra > rb else ("B", "A")
            valid = {w.upper(): int(first.get(f"valid_{w}") or 0) for w in "ab"}
            notes.append(
                f"{at} the two models disagree: model {hi} memorizes ({max(ra, rb):.0%} of its {valid[hi]} valid samples pass "
                f"the threshold), model {lo} does not ({min(ra, rb):.0%} of {valid[lo]}); the pooled rate averages the two."
            )
        bad = []
        for w in "ab":
            diverged, limit = int(first.get(f"diverged_{w}") or 0), int(first.get(f"step_limit_{w}") or 0)
            if diverged or limit:
                bad.append(f"model {w.upper()}: {diverged} diverged, {limit} at the step limit")
        if bad and (first.get("invalid_share") or 0) > 0.25:
            specific = True
            notes.append(f"{at} {first['invalid_share']:.0%} of the samples are invalid and left out ({'; '.join(bad)}).")
        specific = specific or faint_model(first) is not None
        leans = (
            first.get("gap_p_value") is not None and first["gap_p_value"] < SIGNIFICANCE and (first.get("gap_median") or 0) > 0
        )
        if leans and not specific:
            notes.append(
                f"{at} the samples lean towards their own training subset (gap {fmt(first.get('gap_median'))}, "
                f"p={fmt_p(first.get('gap_p_value'))}) but only {first['memorization_rate']:.0%} are closer to a training image than "
                "held-out galaxies are: the models are biased towards their training images without copying them. This is "
                "under-training for memorization (too few steps or too little capacity for the image size), not generalization; "
                "train longer, use a larger model or a smaller N."
            )
        elif not leans and not specific:
            notes.append(
                f"{at} the samples are neither copies nor significantly closer to their own subset: this budget shows no "
                "memorization at all (or the models did not learn); check the sample grids in the run's eval/two_models/."
            )
        near, thr = first.get("nearest_own_median"), first.get("memorization_threshold")
        if near is not None and thr is not None:
            notes.append(
                f"{at} the median sample's similarity to its nearest own training image is {fmt(near)}, against a threshold of "
                f"{fmt(thr)} (the held-out quantile)."
            )
    for row in done:
        faint = faint_model(row)
        if faint:
            notes.append(
                f"At N={row['n']:,} model {faint[0]}'s valid samples are faint: median pixel standard deviation {faint[1]:.3g} against "
                f"{faint[2]:.3g} for the other model ({faint[2] / max(faint[1], 1e-12):.0f}x). Their brightness most likely drifted towards zero during sampling: a "
                "bias-free denoiser is scale-equivariant (f(a y) = a f(y)), so nothing pins the image amplitude, and a trajectory can "
                "shrink towards zero while keeping a galaxy-like shape (the mean-removed cosine ignores amplitude). Such samples pass "
                "the sampler's checks and are counted as valid, but they are not copies of training images, which lowers the "
                "memorization rate; look at the sample grid in the run's eval/two_models/."
            )
    return notes


def fmt_g(x: Any) -> str:
    """Four significant digits, n/a for None."""
    return "n/a" if x is None else f"{float(x):.4g}"
