"""The report's figures (matplotlib, Agg), one function per figure, each over the N of one family group."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galgen_lightning.evaluation.morphology_image import VARIABLES as MORPHOLOGY_VARIABLES
from galgen_lightning.evaluation.morphology_stats import usable
from galgen_lightning.plotting import pyplot, save_figure
from galgen_lightning.report.stats import MEMORIZED_RATE, finite, fmt
from galgen_lightning.rundir import Run


@dataclass
class Figure:
    """A figure of the report: its PNG file, the PDF beside it (if any) and its caption."""

    path: Path
    caption: str
    pdf: Path | None = None


class FigureWriter:
    """Saves matplotlib figures under ``<out>/figures`` as PNG and PDF, with their captions
    (:func:`~galgen_lightning.plotting.save_figure`)."""

    def __init__(self, out: Path) -> None:
        self.folder = out / "figures"
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in [*self.folder.glob("*.png"), *self.folder.glob("*.pdf")]:  # an earlier report's figures
            old.unlink()

    def save(self, fig, name: str, caption: str) -> Figure:
        """Lay the figure out, write ``<name>.png`` and ``<name>.pdf``, close it, and return it with its caption."""
        fig.tight_layout()
        path = save_figure(fig, self.folder / f"{slug(name)}.png")
        return Figure(path, caption, path.with_suffix(".pdf"))


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def one_per_n(runs: list[Run]) -> list[Run]:
    """One run per N (the lowest seed; complete runs first) for the figures."""
    chosen: dict[int, Run] = {}
    for run in sorted(runs, key=lambda r: (not r.complete, r.seed if r.seed is not None else 0)):
        if run.n is not None and run.n not in chosen:
            chosen[run.n] = run
    return [chosen[n] for n in sorted(chosen)]


def run_title(run: Run) -> str:
    t = f"N={run.n:,}" if run.n is not None else run.name
    return t if run.complete else f"{t} [{run.state.upper()}]"


def fig_two_models(runs: list[Run], group: str, writer: FigureWriter, plain: bool = False) -> Figure | None:
    """Figure 7: A-vs-B histograms on top, nearest-training-image histograms below, one column per N."""
    cols = [(r, r.arrays("two_models")) for r in one_per_n(runs)]  # at each run's results_epoch, as the judge
    cols = [(r, a) for r, a in cols if a is not None and "a_vs_b" in a]
    prefix = "plain_" if plain else ""
    if plain:
        cols = [(r, a) for r, a in cols if "plain_a_vs_b" in a]
    if not cols:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(2, len(cols), figsize=(3.3 * len(cols), 6.0), squeeze=False)
    keys = ("a_vs_b", "own_a", "own_b", "other_a", "other_b", "heldout")
    lowest = min((float(v.min()) for _, a in cols for k in keys for v in [finite(a.get(prefix + k, []))] if v.size), default=0.0)
    bins = np.linspace(max(-1.0, min(0.5, math.floor(lowest * 10) / 10)), 1.0, 49)
    for j, (run, a) in enumerate(cols):
        ab = finite(a[f"{prefix}a_vs_b"])
        ax = axes[0, j]
        ax.hist(np.clip(ab, bins[0], 1), bins=bins, color="tab:purple", alpha=0.85, label="A_i vs B_i")
        med = f"median {np.median(ab):.3f}" if ab.size else "no valid pairs"
        ax.set_title(f"{run_title(run)}\nA vs B, same noise ({med})", fontsize=9)
        ax.set_xlabel("cosine similarity of A_i and B_i", fontsize=8)
        if j == 0:
            ax.set_ylabel("samples (count)", fontsize=8)
            ax.legend(fontsize=6, loc="upper left")
        ax = axes[1, j]
        own = finite(np.concatenate([a.get(f"{prefix}own_a", []), a.get(f"{prefix}own_b", [])]))
        other = finite(np.concatenate([a.get(f"{prefix}other_a", []), a.get(f"{prefix}other_b", [])]))
        held = finite(a.get(f"{prefix}heldout", []))
        for values, label, color in (
            (own, "sample vs own subset", "tab:red"),
            (other, "sample vs other subset", "tab:blue"),
            (held, "held-out real vs training", "tab:gray"),
        ):
            if values.size:
                ax.hist(np.clip(values, bins[0], 1), bins=bins, density=True, alpha=0.5, color=color, label=label)
        rec = run.record("two_models", run.results_epoch("two_models")) or {}  # the epoch of these arrays
        thr = rec.get(f"{'plain/' if plain else ''}memorization_threshold")
        if thr is not None:
            ax.axvline(thr, color="k", ls="--", lw=1, label="threshold (quantile of sample vs other subset)")
        rate = rec.get(f"{'plain/' if plain else ''}memorization_rate")
        ax.set_title(f"nearest training image (memorized {fmt(rate, 2)})", fontsize=9)
        ax.set_xlabel("cosine similarity to nearest image\n" + ("(plain)" if plain else "(mean removed)"), fontsize=8)
        if j == 0:
            ax.set_ylabel("density (per unit cosine)", fontsize=8)
            ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(f"{group}: two-models test over N ({'plain cosine, as in the paper' if plain else 'mean-removed cosine'})")
    caption = (
        f"{group}: top, cosine similarity of A's and B's samples from the same noise; bottom, each sample's similarity to its "
        "nearest training image of its own subset (red) and of the other subset (blue), with held-out real galaxies' nearest "
        "training similarity (gray) and the calibrated threshold (dashed). As the paper's Figure 7"
        + (" (plain cosine)." if plain else ", with each image's mean removed.")
    )
    return writer.save(fig, f"two_models{'_plain' if plain else ''}_{group}", caption)


def _seed_means(rows: list[dict], key: str) -> list[dict]:
    """One point per N: the mean of ``key`` over its seeds; for the memorization rate, the report's
    seed mean and its combined interval (``seed_mean_rate``, ``seed_mean_rate_ci``)."""
    out = []
    for n in sorted({r["n"] for r in rows}):
        at = [r for r in rows if r["n"] == n]
        if len(at) == 1:
            out.append(at[0])
        elif key == "memorization_rate" and at[0].get("seed_mean_rate") is not None:
            out.append({"n": n, key: at[0]["seed_mean_rate"], f"{key}_ci": at[0].get("seed_mean_rate_ci")})
        else:
            out.append({"n": n, key: float(np.mean([r[key] for r in at]))})
    return out


def fig_summary(rows: list[dict], group: str, n_star: dict, writer: FigureWriter) -> Figure | None:
    """Memorization rate, own-other gap and A-vs-B agreement against N, with bootstrap intervals."""
    rows = [r for r in rows if r.get("memorization_rate") is not None and r["n"]]
    if len({r["n"] for r in rows}) < 2:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, key, title, ylabel in zip(
        axes,
        ("memorization_rate", "gap_median", "a_vs_b_median"),
        ("memorization rate (calibrated)", "own - other nearest similarity (median)", "A vs B similarity (median)"),
        ("share of samples (fraction)", "difference of cosine similarities", "cosine similarity"),
    ):
        plotted = False
        for complete, marker in ((True, "o"), (False, "x")):
            sel = [r for r in rows if r["complete"] == complete and r.get(key) is not None and np.isfinite(r[key])]
            if not sel:
                continue
            plotted = True
            seeds = complete and len({r["n"] for r in sel}) < len(sel)  # several seeds at some N
            if seeds:  # each seed a marker; the line joins the means over seeds (what N* is read from)
                ax.plot([r["n"] for r in sel], [r[key] for r in sel], marker, color="tab:red", alpha=0.35, label="each seed")
                sel = _seed_means(sel, key)
            x = np.array([r["n"] for r in sel], float)
            y = np.array([r[key] for r in sel], float)
            lo = np.array([(r.get(f"{key}_ci") or (v, v))[0] for r, v in zip(sel, y)], float)
            hi = np.array([(r.get(f"{key}_ci") or (v, v))[1] for r, v in zip(sel, y)], float)
            lo, hi = np.where(np.isfinite(lo), lo, y), np.where(np.isfinite(hi), hi, y)
            ax.errorbar(
                x,
                y,
                yerr=[np.maximum(y - lo, 0), np.maximum(hi - y, 0)],
                fmt=marker + ("-" if complete else ""),
                capsize=3,
                color="tab:red" if complete else "tab:gray",
                label=("mean over seeds" if seeds else "complete runs") if complete else "incomplete runs",
            )
        if key == "memorization_rate":
            ax.axhline(MEMORIZED_RATE, color="k", ls=":", lw=1)
            ax.set_ylim(-0.03, 1.03)
        if key == "gap_median":
            ax.axhline(0, color="k", ls=":", lw=1)
        if n_star.get("n_star"):
            ax.axvline(n_star["n_star"], color="tab:green", ls="--", lw=1, label=f"N* ~ {n_star['n_star']:,.0f}")
            if n_star.get("ci"):
                ax.axvspan(*n_star["ci"], color="tab:green", alpha=0.1)
        ax.set_xlabel("N (images per model)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        if not plotted:  # e.g. every sample diverged: no finite value to draw
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes, color="gray")
            continue
        ax.set_xscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{group}: memorization to generalization over N (bars: bootstrap intervals)")
    return writer.save(
        fig,
        f"summary_{group}",
        f"{group}: the calibrated memorization rate (dotted: 0.5), the own-minus-other gap and the A-vs-B "
        "agreement against N, with bootstrap confidence intervals; N* shaded when the sweep brackets it.",
    )


def fig_denoising(runs: list[Run], group: str, writer: FigureWriter) -> Figure | None:
    """Figures 5 and 6 as curves: PSNR out against PSNR in, per image (rows) and N (columns)."""
    cols = [(r, r.arrays("denoising")) for r in one_per_n(runs)]
    cols = [(r, a) for r, a in cols if a is not None and "psnr_in_val" in a]
    if not cols:
        return None
    plt = pyplot()
    images = [("train_a", "training image of A"), ("train_b", "training image of B"), ("val", "held-out image")]
    fig, axes = plt.subplots(
        len(images), len(cols), figsize=(3.0 * len(cols), 2.7 * len(images)), squeeze=False, sharex=True, sharey=True
    )
    for j, (run, a) in enumerate(cols):
        for i, (name, label) in enumerate(images):
            ax = axes[i, j]
            if f"psnr_in_{name}" not in a:
                ax.set_axis_off()
                continue
            x = a[f"psnr_in_{name}"]
            ax.plot(x, x, ":", color="gray", lw=1)
            for w, color in (("a", "tab:red"), ("b", "tab:blue")):
                if f"psnr_out_{w}_{name}" in a:
                    ax.plot(x, a[f"psnr_out_{w}_{name}"], "o-", ms=3, color=color, label=f"model {w.upper()}")
            if i == 0:
                ax.set_title(run_title(run), fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{label}\nPSNR out (dB)", fontsize=8)
            if i == len(images) - 1:
                ax.set_xlabel("PSNR in (dB)", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{group}: denoising test (dotted: identity)")
    return writer.save(
        fig,
        f"denoising_{group}",
        f"{group}: PSNR of the denoised image against the PSNR of the noisy input, for a training image of "
        "A, one of B and a held-out image (rows), models A (red) and B (blue), over N (columns): the "
        "paper's Figures 5 and 6. A memorizing denoiser restores its own training image far better than the "
        "others.",
    )


def fig_inversion(runs: list[Run], group: str, writer: FigureWriter, max_points: int = 3000) -> Figure | None:
    """Figure 10 over N: z_A and z_B against z per level (x = A^-1(z)), and z_B's density against N(0, 1)."""
    cols = [(r, r.arrays("inversion")) for r in one_per_n(runs)]
    cols = [(r, a) for r, a in cols if a is not None and "from_a/z_0" in a]
    if not cols:
        return None
    levels = max(len([k for k in a if re.fullmatch(r"from_a/z_\d+", k)]) for _, a in cols)
    plt = pyplot()
    fig, axes = plt.subplots(2 * len(cols), levels, figsize=(2.6 * levels, 5.0 * len(cols)), squeeze=False)
    grid = np.linspace(-4.5, 4.5, 200)
    pdf = np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi)
    for i, (run, a) in enumerate(cols):
        for k in range(levels):
            top, bottom = axes[2 * i, k], axes[2 * i + 1, k]
            if f"from_a/z_{k}" not in a:
                top.set_axis_off()
                bottom.set_axis_off()
                continue
            z, za, zb = (a[f"from_a/{key}_{k}"][:max_points] for key in ("z", "za", "zb"))
            top.scatter(z, zb, s=1, alpha=0.3, color="tab:orange", label="z_B", rasterized=True)
            top.scatter(z, za, s=1, alpha=0.3, color="tab:blue", label="z_A", rasterized=True)
            top.plot([-4.5, 4.5], [-4.5, 4.5], "k", lw=0.5)
            top.set(xlim=(-4.5, 4.5), ylim=(-4.5, 4.5))
            top.set_title(f"{run_title(run)}, level {k}", fontsize=8)
            values = finite(a[f"from_a/zb_{k}"])
            values = values[np.abs(values) < 50]
            if values.size:
                bottom.hist(values, bins=60, range=(-4.5, 4.5), density=True, color="tab:orange", alpha=0.6, label="z_B = B(x)")
            bottom.plot(grid, pdf, "k", lw=1, label="N(0, 1)")
            top.set_xlabel("z (input latent, std. normal units)", fontsize=8)
            bottom.set_xlabel("z_B (std. normal units)", fontsize=8)
            if k == 0:
                top.set_ylabel("encoded latent (std. normal units)", fontsize=8)
                top.legend(markerscale=8, fontsize=7, loc="upper left")
                bottom.set_ylabel("density of z_B", fontsize=8)
                bottom.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{group}: inversion test, x = A^-1(z), z ~ N(0, I)")
    return writer.save(
        fig,
        f"inversion_{group}",
        f"{group}: for x = A^-1(z), the latents z_A = A(x) (blue, should lie on the diagonal) and z_B = B(x) "
        "(orange) against z per level, and the density of z_B against N(0, 1), over N (pairs of rows): the "
        "paper's Figure 10 for every N.",
    )


def _pick_epochs(epochs: list[int], k: int = 4) -> list[int]:
    if len(epochs) <= k:
        return epochs
    picks = np.unique(np.round(np.geomspace(1, len(epochs), k)).astype(int) - 1)
    return [epochs[i] for i in picks]


def fig_discriminator(runs: list[Run], group: str, writer: FigureWriter) -> list[Figure]:
    """Figure 14 (per epoch, one row per N) and Figure 16 (last epoch, one panel per N), plus the convergence curves."""
    figures = []
    per_run = [(r, r.eval_files("discriminator")) for r in one_per_n(runs)]
    per_run = [(r, f) for r, f in per_run if f]
    if not per_run:
        return figures
    from galgen_lightning.evaluation.discriminator import curves_panel

    plt = pyplot()
    k = max(len(_pick_epochs(list(f))) for _, f in per_run)
    fig, axes = plt.subplots(len(per_run), k, figsize=(3.6 * k, 3.0 * len(per_run)), squeeze=False)
    for i, (run, files) in enumerate(per_run):
        epochs = _pick_epochs(list(files))
        for j in range(k):
            ax = axes[i, j]
            if j >= len(epochs):
                ax.set_axis_off()
                continue
            losses = run.arrays("discriminator", epochs[j]) or {}
            curves_panel(ax, losses, f"{run_title(run)}, epoch {epochs[j]}")
        axes[i, 0].legend(fontsize=6, loc="upper left")
    fig.suptitle(f"{group}: discriminator test over training (solid: D_A, dashed: D_B; red: G_A, blue: G_B; dotted: 2)")
    figures.append(
        writer.save(
            fig,
            f"discriminator_epochs_{group}",
            f"{group}: the four hinge-loss distributions of the discriminator test at several epochs "
            "(columns), per N (rows): the paper's Figure 14. A converged, consistent pair shows four "
            "coinciding distributions with mean 2.",
        )
    )

    fig, axes = plt.subplots(1, len(per_run) + 1, figsize=(3.6 * (len(per_run) + 1), 3.2), squeeze=False)
    for j, (run, files) in enumerate(per_run):
        last = max(files)
        curves_panel(axes[0, j], run.arrays("discriminator", last) or {}, f"{run_title(run)}, epoch {last}")
        axes[0, j].legend(fontsize=6, loc="upper left")
    ax = axes[0, -1]
    for run, _ in per_run:
        hist = run.history("discriminator")
        xs = [h["epoch"] for h in hist if h.get("score") is not None]
        ys = [h["score"] for h in hist if h.get("score") is not None]
        if xs:
            ax.plot(xs, ys, "o-", ms=3, label=run_title(run))
    ax.set(xlabel="epoch", ylabel="max(max W1, max |mean - 2|)", title="convergence score (0 = perfect)")
    ax.legend(fontsize=7)
    fig.suptitle(f"{group}: discriminator test at the last epoch, per N")
    figures.append(
        writer.save(
            fig,
            f"discriminator_n_{group}",
            f"{group}: the discriminator test at each run's last epoch, one panel per N (the paper's Figure 16), "
            "and the convergence score over epochs.",
        )
    )
    return figures


def read_morphology(run: Run) -> dict[str, dict[str, np.ndarray]] | None:
    """``{group: {variable: values}}`` of the last ``eval/morphology`` file, or None.

    Only measured, unflagged images count (``<group>/used`` where the file has it); failed
    fits (NaN, or statmorph's -99) are left out. ``{group: {"_n": (total,)}}`` keeps how many
    images each group had, for the legends.
    """
    arrays = run.arrays("morphology")
    if not arrays:
        return None
    variables = [str(v) for v in arrays["variables"]] if "variables" in arrays else list(MORPHOLOGY_VARIABLES)
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        group, _, variable = key.partition("/")
        if variable not in variables:
            continue
        out.setdefault(group, {})[variable] = usable(value, arrays.get(f"{group}/used"))
        out[group]["_n"] = np.zeros(np.size(value))
    return out or None


def fig_morphology(runs: list[Run], group: str, writer: FigureWriter) -> Figure | None:
    """Figures 7, 8 and 15: the morphology distributions of real images and of A's and B's samples, per N."""
    rows = [(r, read_morphology(r)) for r in one_per_n(runs)]
    rows = [(r, m) for r, m in rows if m]
    if not rows:
        return None
    variables = [v for v in MORPHOLOGY_VARIABLES if any(v in g for _, m in rows for g in m.values())]
    variables += sorted({v for _, m in rows for g in m.values() for v in g if v != "_n"} - set(variables))
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), len(variables), figsize=(2.8 * len(variables), 2.4 * len(rows)), squeeze=False)
    styles = {
        "real": dict(color="0.6", histtype="stepfilled", alpha=0.5),
        "val": dict(color="k", histtype="step", ls=":"),
        "sample_a": dict(color="tab:red", histtype="step", lw=1.3),
        "sample_b": dict(color="tab:blue", histtype="step", lw=1.3),
    }
    for i, (run, m) in enumerate(rows):
        for j, var in enumerate(variables):
            ax = axes[i, j]

            def get(group: str, key: str, m: dict = m) -> np.ndarray:
                return m.get(group, {}).get(key, np.zeros(0))

            series = {
                "real": np.concatenate([get("real_a", var), get("real_b", var)]),
                "val": get("val", var),
                "sample_a": get("sample_a", var),
                "sample_b": get("sample_b", var),
            }
            totals = {
                "real": get("real_a", "_n").size + get("real_b", "_n").size,
                "val": get("val", "_n").size,
                "sample_a": get("sample_a", "_n").size,
                "sample_b": get("sample_b", "_n").size,
            }
            pooled = np.concatenate([s for s in series.values() if s.size] or [np.zeros(1)])
            lo, hi = np.percentile(pooled, [1, 99]) if pooled.size > 1 else (0.0, 1.0)
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            bins = np.linspace(lo, hi, 31)
            for name, values in series.items():
                if values.size:
                    label = {"real": "training A+B", "val": "held-out", "sample_a": "samples A", "sample_b": "samples B"}[name]
                    ax.hist(
                        np.clip(values, lo, hi),
                        bins=bins,
                        density=True,
                        label=f"{label} ({values.size}/{totals[name]})",
                        **styles[name],
                    )
            if i == 0:
                ax.set_title(var, fontsize=10)
            if i == len(rows) - 1:
                ax.set_xlabel(f"{var} (dimensionless)", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{run_title(run)}\ndensity", fontsize=9)
                ax.legend(fontsize=6)
    fig.suptitle(f"{group}: morphology (statmorph), real images and samples, per N")
    return writer.save(
        fig,
        f"morphology_{group}",
        f"{group}: distributions of the statmorph morphology coefficients (concentration, asymmetry, "
        "smoothness, Gini, M20) of the training images, held-out images and A's and B's samples, per N "
        "(rows): the paper's Figures 7, 8 and 15. Failed and flagged fits are left out (used/total images "
        "in the legends). Matching distributions do not rule out memorization.",
    )
