"""Statistics and figure of the morphology test: counts, medians and distances per group.

Measurements come from :mod:`galgen_lightning.evaluation.morphology_image` (one image) and
:mod:`galgen_lightning.evaluation.morphology_measure` (many, in a process pool); this module
turns the per-group tables into the numbers and the figure the
:class:`~galgen_lightning.evaluation.MorphologyTest` callback writes.

Files the :class:`~galgen_lightning.evaluation.MorphologyTest` callback writes
-----------------------------------------------------------------------------

``<run>/eval/morphology/epoch_XXXX.npz`` (from :func:`morphology_statistics`), one entry per
image of each group ``<group>`` in :data:`GROUPS` (``real_a``, ``real_b``, ``val``,
``sample_a``, ``sample_b``); ``n`` is the number of images of that group:

* ``variables`` (5,) str, ``groups`` (5,) str, ``failures`` (8,) str: the vocabularies;
* ``max_flag`` () int: the largest statmorph flag counted as used;
* ``<group>/<variable>`` (n,) float64 for each variable in :data:`VARIABLES`: the statmorph
  value, NaN where the image failed (flagged images keep their values);
* ``<group>/flag`` (n,) int: statmorph's flag (0 good, 1 suspect, 2 bad, 4 catastrophic),
  -1 where statmorph did not run;
* ``<group>/reason`` (n,) str: the failure reason, ``""`` for a measured image;
* ``<group>/used`` (n,) bool: measured and ``flag <= max_flag``;
* ``<group>/message`` (n,) str: statmorph's warnings (why a fit is flagged) or the exception;
* ``<group>/index`` (n,) int: index of the image in its subset (real groups, which may be a
  random subset of ``n_real`` images) or its sample number (sample groups);
* ``<group>/sky`` and ``<group>/sky_sigma`` (n,) float64: the subtracted background level
  and the noise sigma used for detection and as the weight map.

``<run>/metrics.jsonl`` rows with ``"test": "morphology"`` (and the loggers, under
``morphology/<key>``), from :func:`morphology_statistics`:

* ``<group>/n``, ``<group>/measured``, ``<group>/failed``, ``<group>/flagged``,
  ``<group>/suspect`` (flag 1), ``<group>/used`` and ``<group>/failed_<reason>`` for every
  reason in :data:`FAILURES` (always present, 0 when none);
* ``<group>/<variable>_median`` over used images;
* for each comparison ``<x>_vs_<y>`` in :data:`COMPARISONS` (``sample_a_vs_real_a``,
  ``sample_b_vs_real_b``, ``sample_a_vs_sample_b``, ``real_a_vs_val`` (the baseline: two real
  sets), ``sample_a_vs_val``, ``sample_b_vs_val``, ``real_a_vs_real_b``):
  ``<x>_vs_<y>/<variable>_w1`` (1-Wasserstein distance, in the variable's units),
  ``<x>_vs_<y>/<variable>_ks`` (two-sample Kolmogorov-Smirnov statistic) and
  ``<x>_vs_<y>/<variable>_ks_p`` (its p-value); NaN (``null`` in the file) when a side has
  fewer than 2 used values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from galgen_lightning.evaluation.morphology_image import FAILURES, VARIABLES

LABELS: dict[str, str] = {"concentration": "C", "asymmetry": "A", "smoothness": "S", "gini": "Gini", "m20": "M$_{20}$"}

GROUPS: tuple[str, ...] = ("real_a", "real_b", "val", "sample_a", "sample_b")
"""Image groups of the test: training subsets A and B, validation, samples of A and of B."""

COMPARISONS: tuple[tuple[str, str], ...] = (
    ("sample_a", "real_a"),
    ("sample_b", "real_b"),
    ("sample_a", "sample_b"),
    ("real_a", "val"),
    ("sample_a", "val"),
    ("sample_b", "val"),
    ("real_a", "real_b"),
)
"""Pairs of groups whose distributions are compared; ``real_a`` vs ``val`` is the baseline."""


def is_used(measured: np.ndarray, flag: np.ndarray, max_flag: int = 1) -> np.ndarray:
    """Which images count in the distributions: measured by statmorph with a flag of at most
    ``max_flag`` (0 a good fit, 1 suspect)."""
    flag = np.asarray(flag)
    return np.asarray(measured, dtype=bool) & (flag >= 0) & (flag <= max_flag)


def usable(values: np.ndarray, used: np.ndarray | None = None) -> np.ndarray:
    """The values that count: of the used images (``used``, see :func:`is_used`; all when a file
    predates it), finite, and never statmorph's failure value -99 (measurements store it as NaN;
    older files may hold it)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    keep = np.isfinite(v) & (v > -99)
    if used is not None and np.shape(used) == v.shape:
        keep &= np.asarray(used, dtype=bool)
    return v[keep]


def counts(group: dict[str, np.ndarray], max_flag: int = 1) -> dict[str, float]:
    """How many images of one group were measured, failed (per reason), flagged, suspect, used."""
    reason = group["reason"]
    measured = reason == ""
    out = {"n": float(len(reason)), "measured": float(measured.sum()), "failed": float((~measured).sum())}
    out["flagged"] = float((measured & (group["flag"] > max_flag)).sum())
    out["suspect"] = float((measured & (group["flag"] == 1)).sum())
    out["used"] = float(is_used(measured, group["flag"], max_flag).sum())
    for name in FAILURES:
        out[f"failed_{name}"] = float((reason == name).sum())
    return out


def used_values(group: dict[str, np.ndarray], variable: str) -> np.ndarray:
    """The finite values of ``variable`` over the group's used images."""
    return usable(group[variable], group["used"])


def compare(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """1-Wasserstein distance and two-sample KS statistic and p-value of two samples.

    Args:
        x: values of one group (non-finite values are dropped).
        y: values of the other.

    Returns:
        ``{"w1", "ks", "ks_p"}``; NaN when either side has fewer than 2 values.
    """
    from scipy.stats import ks_2samp, wasserstein_distance

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) < 2 or len(y) < 2:
        return {"w1": float("nan"), "ks": float("nan"), "ks_p": float("nan")}
    ks = ks_2samp(x, y)
    return {"w1": float(wasserstein_distance(x, y)), "ks": float(ks.statistic), "ks_p": float(ks.pvalue)}


def morphology_statistics(
    groups: dict[str, dict[str, np.ndarray]],
    comparisons: Sequence[tuple[str, str]] = COMPARISONS,
    max_flag: int = 1,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Counts, medians and distribution distances from per-group tables (a pure function).

    Args:
        groups: group name -> table from :func:`measure_images` (optionally with an ``index``
            array). Comparisons naming an absent group are skipped.
        comparisons: ``(x, y)`` pairs of group names to compare.
        max_flag: the largest statmorph flag counted as used (as in the tables).

    Returns:
        ``(scalars, arrays)``: the ``metrics.jsonl`` keys and the ``.npz`` keys of the module
        docstring.
    """
    scalars: dict[str, float] = {}
    arrays: dict[str, np.ndarray] = {
        "variables": np.array(VARIABLES),
        "groups": np.array(list(groups)),
        "failures": np.array(FAILURES),
        "max_flag": np.array(max_flag),
    }
    for name, group in groups.items():
        for key, value in counts(group, max_flag).items():
            scalars[f"{name}/{key}"] = value
        for variable in VARIABLES:
            values = used_values(group, variable)
            scalars[f"{name}/{variable}_median"] = float(np.median(values)) if values.size else float("nan")
        for key, value in group.items():
            arrays[f"{name}/{key}"] = value
    for x, y in comparisons:
        if x not in groups or y not in groups:
            continue
        for variable in VARIABLES:
            for key, value in compare(used_values(groups[x], variable), used_values(groups[y], variable)).items():
                scalars[f"{x}_vs_{y}/{variable}_{key}"] = value
    return scalars, arrays


# ----------------------------------------------------------------------------- figure
_STYLE = {
    "real": dict(color="0.6", histtype="stepfilled", alpha=0.5, label="real training images A + B"),
    "val": dict(color="k", histtype="step", linestyle="--", lw=1.2, label="real held-out images"),
    "sample_a": dict(color="tab:red", histtype="step", lw=1.5, label="samples of model A"),
    "sample_b": dict(color="tab:blue", histtype="step", lw=1.5, label="samples of model B"),
}

AXIS_LABELS: dict[str, str] = {
    "concentration": "concentration C = 5 log$_{10}$(r$_{80}$/r$_{20}$) (dimensionless)",
    "asymmetry": "asymmetry A (dimensionless)",
    "smoothness": "smoothness S (dimensionless)",
    "gini": "Gini coefficient G (dimensionless)",
    "m20": "M$_{20}$ = log$_{10}$(M$_{20\\%}$/M$_{tot}$) (dimensionless)",
}
"""x-axis label of each variable's panel (all five are ratios: no unit)."""


def _arrays_group(arrays: dict[str, np.ndarray], name: str, variable: str) -> np.ndarray:
    values, used = arrays.get(f"{name}/{variable}"), arrays.get(f"{name}/used")
    if values is None or used is None:
        return np.empty(0)
    return usable(values, used)


def morphology_figure(
    arrays: dict[str, np.ndarray],
    scalars: dict[str, float] | None = None,
    title: str = "morphology of real and generated galaxies (statmorph)",
    bins: int = 30,
):
    """One panel per variable: histograms of real vs samples A vs samples B, plus a count table.

    Args:
        arrays: the ``.npz`` contents (:func:`morphology_statistics`).
        scalars: the scalars, for the 1-Wasserstein distances in the legends (optional).
        title: figure title (what is shown, not the run's state).
        bins: histogram bins per panel (shared by all groups of a panel).

    Returns:
        A matplotlib figure (the caller saves and closes it).
    """
    from galgen_lightning.plotting import pyplot

    plt = pyplot()

    scalars = scalars or {}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, variable in zip(axes.flat, VARIABLES):
        data = {
            "real": np.concatenate([_arrays_group(arrays, "real_a", variable), _arrays_group(arrays, "real_b", variable)]),
            "val": _arrays_group(arrays, "val", variable),
            "sample_a": _arrays_group(arrays, "sample_a", variable),
            "sample_b": _arrays_group(arrays, "sample_b", variable),
        }
        pooled = np.concatenate(list(data.values()))
        if pooled.size == 0:
            ax.text(0.5, 0.5, "no measurement", ha="center", va="center", transform=ax.transAxes)
        else:
            low, high = np.percentile(pooled, [0.5, 99.5])
            if high <= low:
                low, high = low - 0.5, high + 0.5
            edges = np.linspace(low, high, bins + 1)
            for key, values in data.items():
                if values.size:
                    ax.hist(
                        np.clip(values, low, high),
                        bins=edges,
                        density=True,
                        **{**_STYLE[key], "label": f"{_STYLE[key]['label']} ({values.size})"},
                    )
        parts = []
        for (x, y), short in (
            (("sample_a", "sample_b"), "A-B"),
            (("sample_a", "real_a"), "A-realA"),
            (("real_a", "val"), "realA-val"),
        ):
            w1 = scalars.get(f"{x}_vs_{y}/{variable}_w1")
            if w1 is not None and np.isfinite(w1):
                parts.append(f"{short} {w1:.3g}")
        if parts:  # the distances as a legend line without a marker
            ax.plot([], [], " ", label=f"W1: {', '.join(parts)}")
        ax.set_title(LABELS[variable], fontsize=9)
        ax.set_xlabel(AXIS_LABELS[variable], fontsize=8)
        ax.set_ylabel("probability density", fontsize=8)
        ax.legend(fontsize=6)
    table_ax = axes.flat[len(VARIABLES)]
    table_ax.axis("off")
    rows = []
    for name in GROUPS:
        reason = arrays.get(f"{name}/reason")
        if reason is None:
            continue
        group = {"reason": reason, "flag": arrays[f"{name}/flag"]}
        c = counts(group, int(arrays.get("max_flag", 1)))
        reasons = ", ".join(f"{r} {int(c[f'failed_{r}'])}" for r in FAILURES if c[f"failed_{r}"])
        rows.append(
            f"{name:9s} n {int(c['n']):4d}  used {int(c['used']):4d}  "
            f"flagged {int(c['flagged']):3d}  failed {int(c['failed']):3d}" + (f"\n{'':9s} ({reasons})" if reasons else "")
        )
    table_ax.text(
        0.0,
        1.0,
        "\n".join(rows) or "no groups",
        va="top",
        ha="left",
        family="monospace",
        fontsize=7,
        transform=table_ax.transAxes,
    )
    table_ax.set_title("images per group", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
