"""``galgen report``: one self-contained HTML report from a run directory or a whole sweep.

    galgen report runs/sweep                 # every run below runs/sweep -> runs/sweep/report/
    galgen report runs/diffusion-n10-seed0-20261128-101500 --out /tmp/report

The report reads only what the runs wrote (``status.json``, ``config.yaml``, ``manifest.json``,
``metrics.jsonl`` and ``eval/<test>/epoch_XXXX.npz``); it never trains or samples. It writes
``<out>/index.html`` (every figure embedded, nothing fetched), the figures as PNG files in
``<out>/figures/``, the tables as CSV and every number in ``<out>/summary.json``:

- per family (and image size), over N: the two-models histograms (A vs B on top, nearest
  training image below, as the paper's Figure 7), the memorization rate, own-minus-other gap and
  A-vs-B agreement against N with bootstrap confidence intervals, and an estimate of the
  transition size N*;
- the denoising PSNR curves (diffusion), the inversion table per level and N with its scatter
  plots (Glow, Table 1 / Figure 10), the discriminator-test panels per epoch and per N (GAN,
  Figures 14 and 16), the morphology distributions (when the morphology test ran);
- per run: its state (a run that is not ``complete`` is marked so everywhere), the ratio of
  training pixels to model parameters, and a verdict, memorizes / partly memorizes /
  generalizes, with the evidence.

The verdict uses the calibrated numbers of the two-models test as the callback logged them
(``memorization_rate``, ``gap_median``/``gap_p_value``, ``a_vs_b_median``); the bootstrap only
adds confidence intervals (resampling the per-sample arrays of the ``.npz`` file) and never
moves a threshold.

The package: :mod:`~galgen_lightning.report.runs` reads run directories,
:mod:`~galgen_lightning.report.stats` computes the verdicts, intervals and N*,
:mod:`~galgen_lightning.report.figures` draws, and this module writes the page.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from galgen_lightning.errors import GalgenError
from galgen_lightning.evaluation import verdict as rules
from galgen_lightning.evaluation.verdict import judge_run
from galgen_lightning.report.figures import (
    MORPHOLOGY_VARIABLES,
    Figure,
    FigureWriter,
    fig_denoising,
    fig_discriminator,
    fig_inversion,
    fig_morphology,
    fig_summary,
    fig_two_models,
    inversion_table,
    morphology_rows,
    one_per_n,
    slug,
)
from galgen_lightning.report.runs import count_parameters, ratio_parameters
from galgen_lightning.report.stats import (
    MEMORIZED_RATE,
    combine_seeds,
    diagnose,
    estimate_n_star,
    fmt,
    fmt_ci,
    fmt_p,
    transition_checks,
)
from galgen_lightning.rundir import Run, find_runs, load_run

# --- the HTML ----------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.85em;color:#444;max-width:1100px}
.memorizes{color:#b00020;font-weight:600}.poor{color:#6a1b9a;font-weight:600}.partly{color:#c25e00;font-weight:600}.generalizes{color:#1b7f2a;font-weight:600}
.incomplete{background:#fff3cd}.badge{display:inline-block;padding:0 .4em;border-radius:.3em;background:#f0ad4e;color:#000;font-size:.8em}
.pass{color:#1b7f2a}.fail{color:#b00020}.note{background:#f7f7f7;border-left:4px solid #999;padding:.4em .8em}
"""


def _img_tag(fig: Figure) -> str:
    data = base64.b64encode(fig.path.read_bytes()).decode("ascii")
    rel = html.escape(f"figures/{fig.path.name}")
    return (
        f'<figure><img alt="{html.escape(fig.caption[:120])}" data-file="{rel}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(fig.caption)} (<code>{rel}</code>)</figcaption></figure>"
    )


def _table(columns: list[str], rows: list[list[str]], row_classes: list[str] | None = None, raw: set[int] | None = None) -> str:
    raw = raw or set()
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = []
        for j, cell in enumerate(row):
            text = str(cell) if j in raw else html.escape(str(cell))
            num = ' class="num"' if re.fullmatch(r"[-+0-9.,e\[\] ]+|n/a", str(cell)) else ""
            cells.append(f"<td{num}>{text}</td>")
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _write_csv(path: Path, columns: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    w.writerows(rows)
    path.write_text(buf.getvalue())


def _verdict_class(label: str) -> str:
    for start, css in (("memorizes", "memorizes"), ("in transition", "partly"), ("generalizes", "generalizes"), ("poor", "poor")):
        if label.startswith(start):
            return css
    return ""


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items() if k != "replicates"}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


def build_report(
    path: str | Path,
    out: str | Path | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    plain: bool = False,
) -> Path:
    """Write the report of a run or sweep directory; return the path of ``index.html``.

    Arguments as :func:`report`.

    Raises:
        GalgenError: when ``path`` does not exist, holds no run, or (a single run) has no results.
    """
    root = Path(path)
    if not root.exists():
        raise GalgenError(f"report: {root} does not exist")
    if not root.is_dir():
        raise GalgenError(f"report: {root} is not a directory")
    if bootstrap < 0:
        raise GalgenError(f"report: --bootstrap must be >= 0, got {bootstrap}")
    if not 0 < confidence < 1:
        raise GalgenError(f"report: --confidence must be in (0, 1), got {confidence}")
    paths = find_runs(root)
    if not paths:
        raise GalgenError(f"report: no run directory (status.json or metrics.jsonl) in {root}")
    runs = [load_run(p) for p in paths]
    if len(runs) == 1 and not runs[0].records:
        raise GalgenError(f"report: run {runs[0].path} has no results (no metrics.jsonl, or it is empty)")
    if not any(r.records for r in runs):
        raise GalgenError(f"report: none of the {len(runs)} runs in {root} has results (metrics.jsonl)")
    out_dir = Path(out) if out else root / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = FigureWriter(out_dir)
    rng = np.random.default_rng(seed)
    n_boot = max(bootstrap, 0)

    groups: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: (r.family, r.image_size or 0, r.n or 0, r.seed or 0, r.name)):
        groups.setdefault(run.group, []).append(run)
        count_parameters(run)

    summary: dict[str, Any] = {
        "root": str(root),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "bootstrap": n_boot,
        "confidence": confidence,
        "groups": {},
    }
    body: list[str] = []
    summary_rows, summary_classes = [], []
    sections: dict[str, list[str]] = {k: [] for k in ("two_models", "denoising", "inversion", "discriminator", "morphology")}
    n_star_lines, check_blocks = [], []
    run_rows, run_classes = [], []

    for group, members in groups.items():
        rows = []
        for run in members:
            verdict = judge_run(run, n_boot, confidence, rng)
            rec = run.last("two_models") or {}
            v: dict[str, Any] = {k: rec.get(k) for k in ("a_vs_b_median", "valid_a", "valid_b", "epoch")}
            for key in ("diverged", "step_limit"):
                v.update({f"{key}_{w}": rec.get(f"{key}_{w}") for w in "ab"})
            v.update(verdict.numbers)
            v.update({f"{k}_ci": ci for k, ci in verdict.intervals.items()})
            valid = sum(int(v.get(f"valid_{w}") or 0) for w in "ab")
            n_samples = int(run.callback_args("TwoModelsTest").get("n_samples") or 0)
            row = {
                "run": run.name,
                "path": str(run.path),
                "family": run.family,
                "group": group,
                "n": run.n,
                "seed": run.seed,
                "state": run.state,
                "complete": run.complete,
                "verdict": verdict.display,
                "label": verdict.label,
                "evidence": "; ".join(verdict.reasons),
                "parameters": run.parameters,
                "parameters_note": run.parameters_note,
                "pixels": run.pixels,
                "pixels_per_parameter": (run.pixels / ratio_parameters(run)) if run.pixels and ratio_parameters(run) else None,
                "invalid_share": (1 - valid / (2 * n_samples)) if n_samples and v.get("valid_a") is not None else None,
                **v,
            }
            row["_replicates"] = verdict.replicates.get("memorization_rate") if n_boot else None
            rows.append(row)
            summary_rows.append(
                [
                    group,
                    fmt(run.n) if run.n is not None else "?",
                    str(run.seed),
                    run.state,
                    verdict.display,
                    fmt_ci(v.get("memorization_rate"), v.get("memorization_rate_ci")),
                    fmt_ci(v.get("memorization_rate_heldout"), v.get("memorization_rate_heldout_ci")),
                    fmt_ci(v.get("agreement_kappa"), v.get("agreement_kappa_ci")) + f" (p={fmt_p(v.get('agreement_p_value'))})",
                    fmt_ci(v.get("realism_outside_any"), v.get("realism_outside_any_ci")),
                    fmt(v.get("gap_median")) + f" (p={fmt_p(v.get('gap_p_value'))})",
                    "; ".join(verdict.reasons),
                ]
            )
            summary_classes.append("incomplete" if not run.complete else "")
            params = ratio_parameters(run)
            run_rows.append(
                [
                    run.name,
                    group,
                    fmt(run.n) if run.n is not None else "?",
                    run.state,
                    str(run.status.get("epoch", "?")),
                    fmt(run.pixels) if run.pixels else "n/a",
                    fmt(params) if params else "n/a",
                    f"{row['pixels_per_parameter']:.3g}" if row["pixels_per_parameter"] else "n/a",
                    ", ".join(f"{k} {v:,}" for k, v in run.parameters.items()) or run.parameters_note,
                    str(run.path),
                ]
            )
            run_classes.append("incomplete" if not run.complete else "")

        # N* from the complete runs, averaged over seeds at each N; the replicates combine the
        # bootstrap within each seed and the spread between seeds
        per_n: dict[int, list[dict]] = {}
        for r in rows:
            if r["complete"] and r.get("memorization_rate") is not None and r["n"]:
                per_n.setdefault(r["n"], []).append(r)
        points = []
        for n, rs in sorted(per_n.items()):
            rate = float(np.mean([r["memorization_rate"] for r in rs]))
            reps = [r["_replicates"] for r in rs]
            rep = combine_seeds(reps, rng) if n_boot and all(x is not None and np.size(x) for x in reps) else None
            points.append((n, rate, rep))
            if len(rs) > 1:
                for r in rs:
                    r["seeds_at_n"] = len(rs)
                    r["seed_mean_rate"] = rate
                    r["seed_mean_rate_ci"] = tuple(np.nanquantile(rep, [(1 - confidence) / 2, (1 + confidence) / 2])) if rep is not None else None
        n_star = estimate_n_star(points, MEMORIZED_RATE, confidence)
        incomplete = [r for r in rows if not r["complete"]]
        statement = n_star["statement"]
        if incomplete:
            statement += (
                f" ({len(incomplete)} incomplete run(s) left out: "
                + ", ".join(f"N={r['n']} {r['state']}" for r in incomplete)
                + ")"
            )
        n_star_lines.append(f"<li><b>{html.escape(group)}</b>: {html.escape(statement)}</li>")
        ordered = sorted([r for r in rows if r["n"]], key=lambda r: (r["n"], r["seed"] or 0))
        ordered = list({r["n"]: r for r in reversed(ordered)}.values())[::-1]  # one run per N (the lowest seed) for the checks
        checks = transition_checks(ordered)
        notes = diagnose(ordered)
        items = "".join(
            f'<li class="{"pass" if ok else "fail" if ok is not None else ""}">{"yes" if ok else "NO" if ok is not None else "n/a"}: '
            f"{html.escape(text)} ({html.escape(detail)})</li>"
            for text, ok, detail in checks
        )
        note_html = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
        check_blocks.append(f"<h3>{html.escape(group)}</h3><ul>{items}</ul>{note_html}")
        fig = fig_summary(rows, group, n_star, writer)
        if fig:
            check_blocks.append(_img_tag(fig))

        for variant in (False, True) if plain else (False,):
            fig = fig_two_models(members, group, writer, variant)
            if fig:
                sections["two_models"].append(_img_tag(fig))
        fig = fig_denoising(members, group, writer)
        if fig:
            sections["denoising"].append(_img_tag(fig))
        cols, trows = inversion_table(members)
        if trows:
            name = f"inversion_table_{slug(group)}.csv"
            _write_csv(out_dir / name, cols, trows)
            sections["inversion"].append(
                f"<h3>{html.escape(group)}</h3><p>Table 1 per level and N (<code>{name}</code>). "
                "W1(z, N(0,1)) is the finite-sample floor the others compare to.</p>"
                + _table(cols, trows, ["incomplete" if r[1] != "complete" else "" for r in trows])
            )
            fig = fig_inversion(members, group, writer)
            if fig:
                sections["inversion"].append(_img_tag(fig))
        for fig in fig_discriminator(members, group, writer):
            sections["discriminator"].append(_img_tag(fig))
        fig = fig_morphology(members, group, writer)
        if fig:
            sections["morphology"].append(_img_tag(fig))
            mrows = [row for run in one_per_n(members) for row in morphology_rows(run)]
            if mrows:
                sections["morphology"].append(
                    "<p>1-Wasserstein distance between the two groups' distributions (in the variable's units) and the two-sample "
                    "Kolmogorov-Smirnov p-value; <i>real_a vs val</i> is the baseline of two real sets.</p>"
                    + _table(["run", "comparison", *MORPHOLOGY_VARIABLES], mrows)
                )

        summary["groups"][group] = {
            "n_star": n_star,
            "checks": [{"check": t, "ok": ok, "detail": d} for t, ok, d in checks],
            "notes": notes,
            "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
        }

    s_cols = [
        "family",
        "N",
        "seed",
        "state",
        "verdict",
        "memorization rate, two-models null [CI]",
        "held-out-real reading [CI]",
        "shared-noise agreement kappa [CI]",
        "share unlike real galaxies [CI]",
        "own-other gap (p)",
        "evidence",
    ]
    _write_csv(out_dir / "summary.csv", s_cols, summary_rows)
    verdict_cells = [[*r[:4], f'<span class="{_verdict_class(r[4])}">{html.escape(r[4])}</span>', *r[5:]] for r in summary_rows]
    r_cols = [
        "run",
        "family",
        "N",
        "state",
        "epoch",
        "training pixels (one model)",
        "parameters (one model)",
        "pixels / parameter",
        "parameters",
        "directory",
    ]
    _write_csv(out_dir / "runs.csv", r_cols, run_rows)
    incomplete = sum(1 for c in run_classes if c)

    body.append(f"<h1>galgen report: {html.escape(str(root))}</h1>")
    body.append(
        f"<p>{len(runs)} run(s) in {len(groups)} family group(s); {incomplete} not complete"
        + (' <span class="badge">incomplete runs are highlighted and left out of N*</span>' if incomplete else "")
        + f". Made {summary['created']}; bootstrap {n_boot} replicates, {confidence:.0%} intervals.</p>"
    )
    body.append("<h2>Summary: memorization or generalization</h2>")
    body.append(
        "<p>Verdict per run from the one judge (galgen_lightning/evaluation/verdict.py, docs/verdict.md), with "
        f"{confidence:.0%} bootstrap intervals over noise indices. <b>memorizes</b>: the memorization rate under the "
        f"two-models null (share of samples nearer their own subset than the {rules.MEMORIZES_RATE:.0%}... see below) has its "
        f"lower bound above {rules.MEMORIZES_RATE}; <b>poor samples</b>: more than {rules.POOR_SHARE:.0%} of samples are unlike "
        "any real galaxy (lower bound); <b>generalizes</b>: the rate is at chance (upper bound below "
        f"{rules.GENERALIZES_RATE_FACTOR:g}x chance), the samples look real, and positive evidence holds: shared-noise "
        f"agreement kappa above {rules.AGREEMENT_KAPPA} (lower bound, permutation p &lt; {rules.ALPHA}) for noise-to-image "
        f"families, the discriminator curves within +-{rules.DISCRIMINATOR_TOLERANCE} of each other for GANs; "
        "<b>in transition</b>: more copies than chance but not most; <b>inconclusive</b>: none of these shown. "
        "The memorization rate's threshold is the 99th percentile of the samples' own nearest similarity to the subset "
        "their model never saw.</p>"
    )
    body.append(_table(s_cols, verdict_cells, summary_classes, raw={4}))
    body.append("<h3>Transition size N*</h3><ul>" + "".join(n_star_lines) + "</ul>")
    body.append("<h3>Does the sweep show the transition?</h3>" + "".join(check_blocks))
    titles = {
        "two_models": "Two-models test: cosine similarities over N (Figure 7)",
        "denoising": "Denoising test: PSNR curves (Figures 5, 6)",
        "inversion": "Inversion test (Glow): Table 1 and scatter plots (Figure 10)",
        "discriminator": "Discriminator test (GAN): per epoch and per N (Figures 14, 16)",
        "morphology": "Morphology distributions (Figures 7, 8, 15)",
    }
    for key, title in titles.items():
        body.append(f"<h2>{title}</h2>")
        body.append("".join(sections[key]) if sections[key] else "<p>No run wrote this test's results.</p>")
    body.append("<h2>Runs: training pixels per model parameter</h2>")
    body.append(
        "<p>Pixels of one model's training subset (N x channels x height x width) per trainable parameter of one model "
        "(for a GAN, of its generator). Below about one pixel per parameter a model can store its training set.</p>"
    )
    body.append(_table(r_cols, run_rows, run_classes))
    doc = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>galgen report</title>'
        f"<style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
    index = out_dir / "index.html"
    index.write_text(doc)
    (out_dir / "summary.json").write_text(json.dumps(_jsonable(summary), indent=1) + "\n")
    return index


def report(
    path: str, out: str | None = None, bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95, plain: bool = False
) -> None:
    """Write an HTML report (figures embedded, plus PNG, CSV and JSON files) of a run or a sweep.

    Args:
        path: a run directory, or a folder holding run directories (a sweep); searched 4 levels deep.
        out: output folder (default: ``<path>/report``).
        bootstrap: bootstrap replicates for the confidence intervals (0: none).
        seed: seed of the bootstrap.
        confidence: level of the confidence intervals.
        plain: also draw the two-models grid with the plain cosine, as the paper's Figure 7 (the
            default figures remove each image's mean first, see docs/concepts.md).
    """
    index = build_report(path, out, bootstrap, seed, confidence, plain)
    summary = json.loads((index.parent / "summary.json").read_text())
    for group, g in summary["groups"].items():
        print(f"{group}:")
        for r in g["runs"]:
            n = f"N={r['n']}" if r["n"] is not None else r["run"]
            print(f"  {n:>10s}  {r['state']:>9s}  {r['verdict']}")
        print(f"  {g['n_star']['statement']}")
    print(f"report: {index}")


def main(argv: list[str]) -> None:
    """``galgen report ...`` (dispatched by :func:`galgen_lightning.cli.main`)."""
    from jsonargparse import auto_cli

    from galgen_lightning.errors import one_line_argument_parser


    os.environ.setdefault("MPLBACKEND", "Agg")
    auto_cli(report, args=argv, prog="galgen report", as_positional=True, parser_class=one_line_argument_parser())
