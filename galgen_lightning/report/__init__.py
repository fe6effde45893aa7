"""``galgen report``: one self-contained HTML report from a run directory or a whole sweep.

    galgen report runs/sweep                 # every run below runs/sweep -> runs/sweep/report/
    galgen report runs/diffusion-n10-seed0-20261128-101500 --out /tmp/report

The report reads only what the runs wrote (``status.json``, ``config.yaml``, ``manifest.json``,
``metrics.jsonl``, ``eval/<test>/epoch_XXXX.npz`` and the two-models galleries); it never trains
or samples. It writes ``<out>/index.html`` (every figure embedded, nothing fetched), the figures
in ``<out>/figures/`` as PNG (150 dpi) with a PDF of each beside it (linked from the page), the
tables as CSV, one row per run with the judge's numbers in ``sweep_table.csv``/``.json``, and
every number in ``<out>/summary.json``; for a sweep it also logs the sweep table and its charts
against N to W&B (:func:`galgen_lightning.wandb_utils.log_sweep`):

- per family (and image size), over N: the two-models histograms (A vs B on top, nearest
  training image below, as the paper's Figure 7), the memorization rate, own-minus-other gap and
  A-vs-B agreement against N with bootstrap confidence intervals, and an estimate of the
  transition size N*;
- the galleries of the most and the least memorized samples beside their nearest training
  images (:mod:`~galgen_lightning.report.galleries`);
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

The package: :mod:`~galgen_lightning.report.runs` counts parameters (runs are read through
:mod:`galgen_lightning.rundir`), :mod:`~galgen_lightning.report.stats` computes intervals and N*,
:mod:`~galgen_lightning.report.figures` draws, :mod:`~galgen_lightning.report.galleries` collects
the galleries, :mod:`~galgen_lightning.report.table` makes the sweep table,
:mod:`~galgen_lightning.report.page` renders the HTML (a Jinja2 template, every value escaped),
and this module puts them together.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from galgen_lightning.errors import GalgenError, first_line
from galgen_lightning.evaluation import verdict as rules
from galgen_lightning.evaluation.verdict import judge_run
from galgen_lightning.report.figures import (
    MORPHOLOGY_VARIABLES,
    FigureWriter,
    fig_denoising,
    fig_discriminator,
    fig_inversion,
    fig_morphology,
    fig_summary,
    fig_two_models,
    one_per_n,
    slug,
)
from galgen_lightning.report.galleries import gallery_figures
from galgen_lightning.report.page import html_figure, html_table, render
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
from galgen_lightning.report.table import inversion_table, morphology_rows, table_order, table_row, write_table
from galgen_lightning.rundir import Run, find_runs, is_run_dir, jsonable, load_run
from galgen_lightning.tables import csv_text

SECTIONS = {
    "two_models": ("Two-models test: cosine similarities over N (Figure 7)", ""),
    "galleries": (
        "Two-models galleries: the most and the least memorized samples",
        "Per N, the samples of the last evaluation that lean most and least towards their own training subset "
        "(own-minus-other nearest similarity), each beside its nearest training image of its own and of the other "
        "subset, captioned with the similarities.",
    ),
    "denoising": ("Denoising test: PSNR curves (Figures 5, 6)", ""),
    "inversion": ("Inversion test (Glow): Table 1 and scatter plots (Figure 10)", ""),
    "discriminator": ("Discriminator test (GAN): per epoch and per N (Figures 14, 16)", ""),
    "morphology": ("Morphology distributions (Figures 7, 8, 15)", ""),
}
"""The report's test sections, in page order: key -> (title, introduction)."""


def _block(figure: dict | None = None, table: dict | None = None, heading: str = "", text: str = "", file: str = "") -> dict:
    return {"figure": figure, "table": table, "heading": heading, "text": text, "file": file}


def _verdict_class(label: str) -> str:
    for start, css in (("memorizes", "memorizes"), ("in transition", "partly"), ("generalizes", "generalizes"), ("poor", "poor")):
        if label.startswith(start):
            return css
    return ""


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
    if len(runs) == 1 and not runs[0].has_results:
        raise GalgenError(f"report: run {runs[0].path} has no results (no metrics.jsonl, or it is empty)")
    if not any(r.has_results for r in runs):
        raise GalgenError(f"report: none of the {len(runs)} runs in {root} has results (metrics.jsonl)")
    out_dir = Path(out) if out else root / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = FigureWriter(out_dir)
    seeds_rng = np.random.default_rng([seed, 1])  # N*'s draws over seeds; each run's bootstrap has its own
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
    summary_rows, summary_classes = [], []
    sections: dict[str, list[dict]] = {k: [] for k in SECTIONS}
    n_star_lines: list[dict] = []
    check_blocks: list[dict] = []
    run_rows, run_classes = [], []
    sweep_table: list[tuple[Run, dict]] = []

    for group, members in groups.items():
        rows = []
        for run in members:
            # a fresh generator per run: its intervals do not depend on the other runs in the folder
            # (and, with --seed 0, are those of its verdict.json)
            verdict = judge_run(run, n_boot, confidence, np.random.default_rng(seed))
            if run.has_results:
                sweep_table.append((run, table_row(run, verdict)))
            rec = run.record("two_models", verdict.epoch) or {}  # the record of the epoch judged
            v: dict[str, Any] = {k: rec.get(k) for k in ("a_vs_b_median", "valid_a", "valid_b", "epoch")}
            for key in ("diverged", "step_limit"):
                v.update({f"{key}_{w}": rec.get(f"{key}_{w}") for w in "ab"})
            v.update(verdict.numbers)
            v.update({f"{k}_ci": ci for k, ci in verdict.intervals.items()})
            valid = sum(int(v.get(f"valid_{w}") or 0) for w in "ab")
            n_samples = int(run.callback_args("TwoModelsTest", "two_models").get("n_samples") or 0)
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
                    fmt_ci(v.get("repeat_share"), v.get("repeat_share_ci")),
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
        no_rate = []  # complete runs without a rate (no valid sample): named, not averaged in as NaN
        for r in rows:
            if r["complete"] and r["n"]:
                rate = r.get("memorization_rate")
                if rate is not None and math.isfinite(rate):
                    per_n.setdefault(r["n"], []).append(r)
                else:
                    no_rate.append(r)
        points = []
        for n, rs in sorted(per_n.items()):
            rate = float(np.mean([r["memorization_rate"] for r in rs]))
            reps = [r["_replicates"] for r in rs]
            rep = combine_seeds(reps, seeds_rng) if n_boot and all(x is not None and np.size(x) for x in reps) else None
            points.append((n, rate, rep))
            if len(rs) > 1:
                for r in rs:
                    r["seeds_at_n"] = len(rs)
                    r["seed_mean_rate"] = rate
                    r["seed_mean_rate_ci"] = (
                        tuple(np.nanquantile(rep, [(1 - confidence) / 2, (1 + confidence) / 2])) if rep is not None else None
                    )
        n_star = estimate_n_star(points, MEMORIZED_RATE, confidence)
        incomplete = [r for r in rows if not r["complete"]]
        if incomplete:
            n_star["statement"] += (
                f" ({len(incomplete)} incomplete run(s) left out: "
                + ", ".join(f"N={r['n']} {r['state']}" for r in incomplete)
                + ")"
            )
        if no_rate:
            n_star["statement"] += (
                f" ({len(no_rate)} run(s) without a memorization rate left out: "
                + ", ".join(f"N={r['n']} seed {r['seed']}" for r in no_rate)
                + ")"
            )
        n_star_lines.append({"group": group, "statement": n_star["statement"]})
        shown = {str(run.path) for run in one_per_n(members)}  # the runs the figures show: one per N
        ordered = sorted([r for r in rows if r["n"] and r["path"] in shown], key=lambda r: r["n"])
        checks = transition_checks(ordered)
        notes = diagnose(ordered)
        items = [
            {
                "cls": "pass" if ok else "fail" if ok is not None else "",
                "mark": "yes" if ok else "NO" if ok is not None else "n/a",
                "text": text,
                "detail": detail,
            }
            for text, ok, detail in checks
        ]
        fig = fig_summary(rows, group, n_star, writer)
        check_blocks.append({"group": group, "items": items, "notes": notes, "figure": html_figure(fig) if fig else None})

        for variant in (False, True) if plain else (False,):
            fig = fig_two_models(members, group, writer, variant)
            if fig:
                sections["two_models"].append(_block(html_figure(fig)))
        sections["galleries"].extend(_block(html_figure(fig)) for fig in gallery_figures(members, group, writer))
        fig = fig_denoising(members, group, writer)
        if fig:
            sections["denoising"].append(_block(html_figure(fig)))
        cols, trows = inversion_table(members)
        if trows:
            name = f"inversion_table_{slug(group)}.csv"
            (out_dir / name).write_text(csv_text(cols, trows))
            text = "Table 1 per level and N; W1(z, N(0,1)) is the finite-sample floor the others compare to"
            rows_css = ["incomplete" if r[1] != "complete" else "" for r in trows]
            sections["inversion"].append(_block(table=html_table(cols, trows, rows_css), heading=group, text=text, file=name))
            fig = fig_inversion(members, group, writer)
            if fig:
                sections["inversion"].append(_block(html_figure(fig)))
        for fig in fig_discriminator(members, group, writer):
            sections["discriminator"].append(_block(html_figure(fig)))
        fig = fig_morphology(members, group, writer)
        if fig:
            sections["morphology"].append(_block(html_figure(fig)))
            mrows = [row for run in one_per_n(members) for row in morphology_rows(run)]
            if mrows:
                text = (
                    "1-Wasserstein distance between the two groups' distributions (in the variable's units) and the two-sample "
                    "Kolmogorov-Smirnov p-value; real_a vs val is the baseline of two real sets."
                )
                sections["morphology"].append(
                    _block(table=html_table(["run", "comparison", *MORPHOLOGY_VARIABLES], mrows), text=text)
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
        "share repeating another sample [CI]",
        "own-other gap (p)",
        "evidence",
    ]
    (out_dir / "summary.csv").write_text(csv_text(s_cols, summary_rows))
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
    (out_dir / "runs.csv").write_text(csv_text(r_cols, run_rows))
    incomplete = sum(1 for c in run_classes if c)

    context = {
        "root": str(root),
        "n_runs": len(runs),
        "n_groups": len(groups),
        "n_incomplete": incomplete,
        "created": summary["created"],
        "n_boot": n_boot,
        "level": f"{confidence:.0%}",
        "rules": {
            "memorizes_rate": rules.MEMORIZES_RATE,
            "poor_share": f"{rules.POOR_SHARE:.0%}",
            "generalizes_factor": f"{rules.GENERALIZES_RATE_FACTOR:g}",
            "agreement_kappa": rules.AGREEMENT_KAPPA,
            "alpha": rules.ALPHA,
            "discriminator_tolerance": rules.DISCRIMINATOR_TOLERANCE,
            "min_heldout": rules.MIN_HELDOUT,
        },
        "summary_table": html_table(
            s_cols, summary_rows, summary_classes, spans={4: [_verdict_class(r[4]) for r in summary_rows]}
        ),
        "n_star": n_star_lines,
        "checks": check_blocks,
        "sections": [
            {
                "title": title,
                "intro": intro if sections[key] else "",
                "blocks": sections[key],
                "gallery": key == "galleries",
                "empty": "No run wrote galleries." if key == "galleries" else "No run wrote this test's results.",
            }
            for key, (title, intro) in SECTIONS.items()
        ],
        "runs_table": html_table(r_cols, run_rows, run_classes),
    }
    doc = render(context)
    write_table(out_dir, [row for _, row in sorted(sweep_table, key=lambda item: table_order(item[0]))])
    index = out_dir / "index.html"
    index.write_text(doc)
    (out_dir / "summary.json").write_text(json.dumps(jsonable(summary), indent=1) + "\n")
    return index


def report(
    path: str,
    out: str | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    plain: bool = False,
    wandb: bool = True,
) -> None:
    """Write an HTML report (figures embedded, plus PNG, PDF, CSV and JSON files) of a run or a sweep.

    Args:
        path: a run directory, or a folder holding run directories (a sweep); searched 4 levels deep.
        out: output folder (default: ``<path>/report``).
        bootstrap: bootstrap replicates for the confidence intervals (0: none).
        seed: seed of the bootstrap.
        confidence: level of the confidence intervals.
        plain: also draw the two-models grid with the plain cosine, as the paper's Figure 7 (the
            default figures remove each image's mean first, see docs/concepts.md).
        wandb: for a sweep (a folder of runs), also log its table and charts against N to one W&B
            run of job type ``sweep`` in the sweep's group (online or offline as for ``galgen fit``;
            ``WANDB_MODE=disabled`` or ``--wandb false``: not at all).
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
    if wandb and not is_run_dir(Path(path)):
        from galgen_lightning.report.table import read_table
        from galgen_lightning.wandb_utils import log_sweep

        n_star = {f"n_star/{slug(group)}": g["n_star"].get("n_star") for group, g in summary["groups"].items()}
        try:
            run_id = log_sweep(
                Path(path), read_table(index.parent), index.parent, {k: v for k, v in n_star.items() if v is not None}
            )
        except Exception as e:  # noqa: BLE001 (the report is written; W&B must not turn it into a failure)
            run_id = None
            why = first_line(e)
            print(
                f"galgen: warning: the sweep table was not logged to W&B ({why}); the report has it (sweep_table.csv)",
                file=sys.stderr,
            )
        if run_id:
            print(f"W&B: sweep table and charts in run {run_id} (group {Path(path).resolve().name}, job type sweep)")


def main(argv: list[str]) -> None:
    """``galgen report ...`` (dispatched by :func:`galgen_lightning.cli.main`)."""
    from jsonargparse import auto_cli

    from galgen_lightning.errors import one_line_argument_parser

    os.environ.setdefault("MPLBACKEND", "Agg")
    auto_cli(report, args=argv, prog="galgen report", as_positional=True, parser_class=one_line_argument_parser())
