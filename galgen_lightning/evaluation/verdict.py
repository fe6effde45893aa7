"""The one judge: what a run shows, with the evidence it rests on and intervals.

Every consumer (the report, ``make demo``, the sweep's summary, the run's ``verdict.json`` and
its W&B summary) calls :func:`judge` or :func:`judge_run`; none decides a label by itself.

Labels, decided in this order (``lo``/``hi``: the bootstrap interval over noise indices):

1. **inconclusive** when the two-models test has not run, or either model has fewer than
   :data:`MIN_VALID` valid samples.
2. **memorizes** when the memorization rate under the two-models null is above
   :data:`MEMORIZES_RATE` with confidence (``lo > 0.5``): most samples are nearer an image of
   their own subset than samples ever are to the subset their model never saw.
3. **poor samples** when most samples are unlike any real galaxy with confidence
   (``lo > POOR_SHARE`` of the realism share, and above the share of held-out real galaxies by
   the same test, ``realism_chance_any``): noise, blank or faded samples; or when most samples
   repeat one another with confidence (``lo > POOR_SHARE`` of the repeat share of
   :mod:`~galgen_lightning.evaluation.variety`, and above the held-out galaxies' share by the
   same test, ``repeat_chance``) while the rate shows no copies (``hi < GENERALIZES_RATE_FACTOR
   x chance``, and none beyond chance by rule 5's test), judged against at least
   :data:`~galgen_lightning.evaluation.variety.MIN_HELDOUT` held-out galaxies: a collapse onto
   a few images, which two models can share. Nothing is called generalization on such samples.
4. **generalizes** when *all* of: the rate is at chance level with confidence
   (``hi < GENERALIZES_RATE_FACTOR x chance``, and rule 5's test finds no copies beyond chance),
   the samples look real (realism ``hi < POOR_SHARE``) and vary as real galaxies do (repeat
   share ``hi < POOR_SHARE``; results written before galgen measured it are not held to it),
   and positive evidence of one learned distribution:

   - diffusion, Glow (and any family whose models map noise to images): shared-noise agreement,
     ``kappa`` significant (permutation ``p < ALPHA``) and ``kappa lo > AGREEMENT_KAPPA``;
   - GAN: the discriminator test's four curves and the held-out curves agree, every paired
     difference of their means within ``+-DISCRIMINATOR_TOLERANCE`` with confidence.
5. **in transition** when the rate is above chance with confidence (``lo`` above the rate
   expected by chance for these samples, and the re-split test of
   :func:`~galgen_lightning.evaluation.statistics.resplit_test` gives ``p < ALPHA``; results
   written before galgen kept the lists it needs use the swap test,
   :func:`~galgen_lightning.evaluation.statistics.swap_test`) but not most samples: some
   samples are copies.
6. **inconclusive** otherwise, naming the missing piece (e.g. no copies but no agreement either:
   an under-trained pair).

The thresholds below are the only ones; docs/verdict.md gives the reasoning behind each.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from galgen_lightning.evaluation.discriminator import CURVES, VAL_CURVES
from galgen_lightning.evaluation.statistics import bootstrap, two_models_evidence
from galgen_lightning.evaluation.variety import MIN_HELDOUT, REPEAT_QUANTILE
from galgen_lightning.rundir import Run, jsonable, load_run

LABELS = ("memorizes", "in transition", "generalizes", "poor samples", "inconclusive")

MIN_VALID = 8
"""Fewer valid samples than this in either model: no verdict (an interval of 8 values is already wide)."""
MEMORIZES_RATE = 0.5
"""*memorizes* needs most samples to be copies: the rate's lower bound above one half."""
GENERALIZES_RATE_FACTOR = 10.0
"""*generalizes* needs the rate's upper bound below this multiple of chance (10 x 1% = 10% with the
99th percentile): a few copies can hide in a finite sample, a tenth of them cannot."""
AGREEMENT_KAPPA = 0.5
"""*generalizes* (noise-to-image families) needs the shared noise to carry more than half of the
similarity A and B can gain over chance: ``kappa``'s lower bound above 0.5, i.e. A_i is closer
to B_i than to an image halfway between B_i and an unrelated sample of B."""
ALPHA = 0.01
"""Significance level of the permutation test of the agreement."""
POOR_SHARE = 0.5
"""*poor samples* when more than half the samples lie outside the range of real galaxies (each
real galaxy is outside with probability about 2-3% by construction with many held-out galaxies;
:func:`~galgen_lightning.evaluation.realism.realism_chance` measures it for the run's), or
repeat one another (about 1% of real galaxies do,
:func:`~galgen_lightning.evaluation.variety.repeat_chance`)."""
DISCRIMINATOR_TOLERANCE = 0.1
"""GAN: two hinge-loss curves agree when the interval of their paired mean difference lies within
+-0.1, 5% of the loss 2 of a discriminator that cannot tell."""
EVIDENCE = {"gan": "discriminator"}
"""Family -> the positive evidence of generalization it needs (default: ``"agreement"``)."""
DISCRIMINATOR_CURVES = CURVES + VAL_CURVES


@dataclass
class Verdict:
    """A label, the sentences of evidence behind it, and the numbers with their intervals.

    Attributes:
        label: one of :data:`LABELS`.
        reasons: why this label (the decisive statistics first).
        numbers: every statistic the judge read.
        intervals: ``{statistic: (low, high)}`` bootstrap intervals.
        family: the model family.
        evidence: the positive evidence the family needs (``agreement`` or ``discriminator``).
        complete: the run finished (a verdict on an unfinished run is about its last evaluation).
        state: the run's state.
        epoch: the evaluation's epoch.
        bootstrapped: the intervals are bootstrap intervals (false with ``n_boot = 0``: the bounds
            are the point values, and a label then rests on no confidence).
    """

    label: str
    reasons: list[str]
    numbers: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    family: str = ""
    evidence: str = "agreement"
    complete: bool = True
    state: str = "complete"
    epoch: int | None = None
    bootstrapped: bool = True
    replicates: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """Bootstrap replicates per statistic (for combining runs, e.g. N* over seeds); not in JSON."""

    @property
    def display(self) -> str:
        """The label, marked when it rests on no interval or the run did not finish."""
        marks = [] if self.bootstrapped or self.label == "inconclusive" else ["point values, no intervals"]
        marks += [] if self.complete else [f"run {self.state}"]
        return f"{self.label} ({', '.join(marks)})" if marks else self.label

    def text(self) -> str:
        """One paragraph: the label, then its evidence."""
        return f"{self.display}: " + "; ".join(self.reasons)

    def ci(self, key: str) -> tuple[float, float] | None:
        """The interval of ``key``, or None."""
        return self.intervals.get(key)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (NaN as None)."""

        out = asdict(self)
        out.pop("replicates")
        return jsonable(out)


def fmt_ci(value: float | None, ci: tuple[float, float] | None, digits: int = 3, ci_digits: int | None = None) -> str:
    """``value [low, high]``: the interval only when it is finite, ``n/a`` for no value.

    Args:
        value: the number.
        ci: its interval, or None.
        digits: decimals of the value (and of the interval, unless ``ci_digits``).
        ci_digits: decimals of the interval.
    """
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    s = f"{float(value):.{digits}f}"
    if ci and all(math.isfinite(c) for c in ci):
        d = digits if ci_digits is None else ci_digits
        s += f" [{ci[0]:.{d}f}, {ci[1]:.{d}f}]"
    return s


def _reach(interval: tuple[float, float]) -> float:
    """``max(|lo|, |hi|)``, infinite when either end is not a number."""
    ends = [abs(v) for v in interval]
    return max(ends) if all(math.isfinite(v) for v in ends) else math.inf


def discriminator_evidence(
    losses: dict[str, np.ndarray], n_boot: int = 1000, confidence: float = 0.95, rng: np.random.Generator | None = None
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Agreement of the discriminator test's curves, paired by latent index.

    For every pair of curves present (the four of :mod:`~galgen_lightning.evaluation.discriminator`
    and the held-out ones), the mean of the per-latent difference with a bootstrap interval
    (latent indices resampled). Returns ``diff_<c1>__<c2>`` numbers and intervals,
    ``<curve>_mean`` and ``<curve>_nonfinite`` (its losses that are not finite), and
    ``max_abs_diff_bound``: the largest ``max(|lo|, |hi|)`` over the pairs. The bound is
    infinite when a curve holds a non-finite loss or a pair has no finite interval: a
    discriminator that overflowed is no evidence of agreement.
    """
    rng = rng or np.random.default_rng(0)
    curves = [c for c in DISCRIMINATOR_CURVES if c in losses]
    numbers: dict[str, float] = {}
    intervals: dict[str, tuple[float, float]] = {}
    if len(curves) < 2:
        return numbers, intervals
    n = min(len(losses[c]) for c in curves)
    x = {c: np.asarray(losses[c], dtype=np.float64)[:n] for c in curves}
    d = {f"diff_{c1}__{c2}": np.where(np.isfinite(x[c1] - x[c2]), x[c1] - x[c2], np.nan) for c1, c2 in combinations(curves, 2)}
    with warnings.catch_warnings():  # a pair with no finite difference (in a resample) is NaN: no warning
        warnings.simplefilter("ignore", RuntimeWarning)
        numbers.update({key: float(np.nanmean(v)) for key, v in d.items()})
        _, intervals = bootstrap(
            lambda idx: {key: np.nanmean(v[idx], axis=1) for key, v in d.items()}, n, n_boot, confidence, rng
        )
    intervals = {key: intervals.get(key, (numbers[key], numbers[key])) for key in d}
    for c in curves:
        numbers[f"{c}_mean"] = float(np.nanmean(x[c])) if np.isfinite(x[c]).any() else float("nan")
        numbers[f"{c}_nonfinite"] = float((~np.isfinite(x[c])).sum())
    broken = any(numbers[f"{c}_nonfinite"] for c in curves)
    bound = math.inf if broken else max([0.0, *(_reach(interval) for interval in intervals.values())])
    numbers["max_abs_diff_bound"] = float(bound)
    return numbers, intervals


def judge(
    two_models: dict[str, np.ndarray] | None,
    family: str = "",
    quantile: float = 0.99,
    discriminator: dict[str, np.ndarray] | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
) -> Verdict:
    """The label of one evaluation of a pair (see the module docstring for the rules).

    Args:
        two_models: the two-models test's per-sample arrays (``eval/two_models/epoch_*.npz``).
        family: the model family (``diffusion``, ``glow``, ``gan``, ...): it names the
            positive evidence of generalization (:data:`EVIDENCE`).
        quantile: the calibration quantile the test used.
        discriminator: the discriminator test's per-sample losses (GAN), if it ran.
        n_boot: bootstrap replicates (0: point estimates stand in for the interval bounds).
        confidence: of the intervals.
        rng: random generator (bootstrap, permutations).
    """
    rng = rng or np.random.default_rng(0)
    kind = EVIDENCE.get(family, "agreement")
    if not two_models:
        return Verdict("inconclusive", ["the two-models test has not written a result"], family=family, evidence=kind)
    numbers, intervals, replicates = two_models_evidence(two_models, quantile, n_boot, confidence, rng)

    def bounds(key: str) -> tuple[float, float]:
        value = numbers.get(key, math.nan)
        return intervals.get(key, (value, value))

    verdict = Verdict("inconclusive", [], numbers, intervals, family=family, evidence=kind, replicates=replicates)
    verdict.bootstrapped = n_boot > 0
    chance = 1 - quantile
    rate = numbers["memorization_rate"]
    r_lo, r_hi = bounds("memorization_rate")
    calibration = "re-splitting the training images" if "memorization_resplits" in numbers else "the swap test"
    rate_text = (
        f"memorization rate {fmt_ci(rate, intervals.get('memorization_rate'))} under the two-models null "
        f"(chance {chance:.2g}, {numbers.get('memorization_null_mean', math.nan):.3f} for these samples by {calibration}, "
        f"p={numbers.get('memorization_p_value', math.nan):.2g}; held-out-real reading "
        f"{fmt_ci(numbers.get('memorization_rate_heldout'), intervals.get('memorization_rate_heldout'))})"
    )
    gap_text = (
        f"own-minus-other gap {numbers.get('gap_median', math.nan):+.3f} per noise index "
        f"(Wilcoxon p={numbers.get('gap_p_value', math.nan):.2g})"
    )
    real_key = "realism_outside_any"
    real = numbers.get(real_key)
    real_lo, real_hi = bounds(real_key) if real is not None else (math.nan, math.nan)
    real_text = (
        f"{fmt_ci(real, intervals.get(real_key))} of samples unlike any real galaxy "
        f"(structure {numbers.get('realism_outside_structure', math.nan):.2f}, "
        f"brightness {numbers.get('realism_outside_brightness', math.nan):.2f}; "
        f"pixel-spread ratio to real {numbers.get('pixel_std_ratio', math.nan):.2f}; "
        f"held-out real galaxies {numbers.get('realism_chance_any', math.nan):.2f} by the same test)"
        if real is not None
        else "realism not measured"
    )

    repeat = numbers.get("repeat_share")
    rep_lo, rep_hi = bounds("repeat_share") if repeat is not None else (math.nan, math.nan)
    repeat_text = (
        f"{fmt_ci(repeat, intervals.get('repeat_share'))} of samples nearer another sample of their model than "
        f"{REPEAT_QUANTILE:.0%} of held-out galaxies come to one another (held-out real galaxies "
        f"{numbers.get('repeat_chance', math.nan):.2f} by the same test)"
        if repeat is not None
        else "variety not measured"
    )

    valid = min(numbers.get("valid_a", 0), numbers.get("valid_b", 0))
    if valid < MIN_VALID:
        verdict.reasons = [f"only {valid:.0f} valid samples in one model (at least {MIN_VALID} needed)", rate_text]
        return verdict
    if r_lo > MEMORIZES_RATE:
        verdict.label = "memorizes"
        verdict.reasons = [f"most samples are copies of their own subset: {rate_text}", gap_text, real_text]
        verdict.reasons.append(_agreement_text(numbers, intervals) if kind == "agreement" else "")
        verdict.reasons = [r for r in verdict.reasons if r]
        return verdict
    # above what real galaxies score (few held-out galaxies set extreme thresholds: a high share by chance)
    real_chance = numbers.get("realism_chance_any", math.nan)
    if real is not None and math.isfinite(real_lo) and math.isfinite(real_chance) and real_lo > max(POOR_SHARE, real_chance):
        verdict.label = "poor samples"
        verdict.reasons = [f"most samples do not look like real galaxies: {real_text}", rate_text]
        return verdict
    at_chance = r_hi < GENERALIZES_RATE_FACTOR * chance
    # "above chance": above what the rate is by chance for these samples (the null mean; 1 - quantile
    # only in the limit of many samples) with confidence, and significant by the calibration test
    null_mean = numbers.get("memorization_null_mean", math.nan)
    floor = max(chance, null_mean) if math.isfinite(null_mean) else chance
    copies_beyond_chance = r_lo > floor and numbers.get("memorization_p_value", 1.0) < ALPHA
    # repeats that are not copies: a collapse onto a few images (copies of a small subset repeat too)
    rep_chance = numbers.get("repeat_chance", math.nan)
    enough = numbers.get("repeat_heldout", 0) >= MIN_HELDOUT  # fewer: the threshold is nearly their largest value
    no_copies = at_chance and not copies_beyond_chance
    if no_copies and enough and math.isfinite(rep_lo) and math.isfinite(rep_chance) and rep_lo > max(POOR_SHARE, rep_chance):
        verdict.label = "poor samples"
        verdict.reasons = [f"most samples repeat one another (a collapse onto a few images): {repeat_text}", rate_text, real_text]
        return verdict

    positive, positive_text = _positive_evidence(kind, numbers, intervals, discriminator, n_boot, confidence, rng, verdict)
    realistic = real is not None and math.isfinite(real_hi) and real_hi < POOR_SHARE
    varied = repeat is None or (math.isfinite(rep_hi) and rep_hi < POOR_SHARE)  # None: a result from before
    if no_copies and realistic and varied and positive:
        verdict.label = "generalizes"
        verdict.reasons = [positive_text, f"no more copies than chance: {rate_text}", real_text, repeat_text, gap_text]
        return verdict
    if copies_beyond_chance:
        verdict.label = "in transition"
        verdict.reasons = [f"some samples are copies, but not most: {rate_text}", gap_text, positive_text, real_text, repeat_text]
        return verdict
    missing = []
    if not at_chance:
        missing.append(f"the rate's interval reaches {r_hi:.3f}, above {GENERALIZES_RATE_FACTOR:g}x chance")
    if not realistic:
        missing.append("the samples are not shown to look real" + (f" ({real_text})" if real is not None else ""))
    if not varied:
        missing.append(f"the samples are not shown to vary as real galaxies do ({repeat_text})")
    if not positive:
        missing.append(f"no positive evidence of one learned distribution ({positive_text})")
    verdict.reasons = ["neither copies nor generalization shown: " + "; ".join(missing), rate_text, gap_text]
    return verdict


def _agreement_text(numbers: dict[str, float], intervals: dict[str, tuple[float, float]]) -> str:
    if not math.isfinite(numbers.get("agreement_kappa", math.nan)):
        return "shared-noise agreement not measured (no samples stored)"
    return (
        f"shared-noise agreement kappa {fmt_ci(numbers['agreement_kappa'], intervals.get('agreement_kappa'))} "
        f"(A_i vs B_i {numbers['agreement_paired']:.3f} against A_i vs B_j {numbers['agreement_unpaired']:.3f}, "
        f"permutation p={numbers['agreement_p_value']:.2g})"
    )


def _positive_evidence(
    kind: str,
    numbers: dict[str, float],
    intervals: dict[str, tuple[float, float]],
    discriminator: dict[str, np.ndarray] | None,
    n_boot: int,
    confidence: float,
    rng: np.random.Generator,
    verdict: Verdict,
) -> tuple[bool, str]:
    """Whether the family's positive evidence of generalization holds, and the sentence saying so."""
    if kind == "discriminator":
        if not discriminator:
            return False, "the discriminator test has not run"
        d_numbers, d_intervals = discriminator_evidence(discriminator, n_boot, confidence, rng)
        verdict.numbers.update({f"discriminator_{k}": v for k, v in d_numbers.items()})
        verdict.intervals.update({f"discriminator_{k}": v for k, v in d_intervals.items()})
        if not d_numbers:
            return False, "the discriminator test has too few curves"
        nonfinite = {k[: -len("_nonfinite")]: int(v) for k, v in d_numbers.items() if k.endswith("_nonfinite") and v}
        if nonfinite:
            bad = ", ".join(f"{c} {k} of {len(discriminator[c])}" for c, k in nonfinite.items())
            return False, f"discriminator curves are no evidence: non-finite losses ({bad})"
        worst = max(d_intervals, key=lambda k: _reach(d_intervals[k]))
        ok = d_numbers["max_abs_diff_bound"] < DISCRIMINATOR_TOLERANCE
        means = ", ".join(f"{k[:-5]} {v:.3f}" for k, v in d_numbers.items() if k.endswith("_mean"))
        return ok, (
            f"discriminator curves {'agree' if ok else 'do not agree'}: every paired mean difference within "
            f"+-{d_numbers['max_abs_diff_bound']:.3f} (tolerance {DISCRIMINATOR_TOLERANCE}; widest {worst[5:]} "
            f"{fmt_ci(d_numbers[worst], d_intervals[worst])}); means {means}"
        )
    k = numbers.get("agreement_kappa", math.nan)
    if not math.isfinite(k):
        return False, "shared-noise agreement not measured"
    lo = intervals.get("agreement_kappa", (k, k))[0]
    ok = numbers["agreement_p_value"] < ALPHA and lo > AGREEMENT_KAPPA
    return ok, ("A and B agree on shared noise: " if ok else "A and B do not agree enough on shared noise: ") + _agreement_text(
        numbers, intervals
    )


def judge_run(run: Any, n_boot: int = 1000, confidence: float = 0.95, rng: np.random.Generator | None = None) -> Verdict:
    """The verdict of a run directory (a path or a loaded :class:`~galgen_lightning.rundir.Run`).

    Reads the last two-models evaluation (and, for a GAN, the discriminator test of the same
    epoch) from the run directory.
    """
    if not isinstance(run, Run):
        run = load_run(Path(run))
    rec = run.last("two_models")
    quantile = float(run.callback_args("TwoModelsTest", "two_models").get("quantile", 0.99))
    logged = run.last_epoch("two_models")
    files = run.eval_files("two_models") if rec is not None else {}
    epoch = run.results_epoch("two_models") if rec is not None else None  # the epoch whose arrays are read
    arrays = run.arrays("two_models", epoch) if files else None
    disc = None
    if EVIDENCE.get(run.family) == "discriminator":
        disc_files = run.eval_files("discriminator")
        if disc_files:
            disc = run.arrays("discriminator", epoch if epoch in disc_files else max(disc_files))
    verdict = judge(arrays, run.family, quantile, disc, n_boot, confidence, rng)
    if files and epoch != logged and logged is not None:
        verdict.reasons.append(f"the arrays of epoch {logged} are missing: epoch {epoch} judged")
    verdict.complete, verdict.state, verdict.epoch = run.complete, run.state, epoch
    return verdict
