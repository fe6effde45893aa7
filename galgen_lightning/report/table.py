"""The report's tables: the sweep table (one row per run, the judge's label and numbers with their
intervals), the inversion test's Table 1 and the morphology test's distances.

``galgen report`` writes it as ``<out>/sweep_table.csv`` and ``sweep_table.json`` (numbers, not
formatted text: for plotting, or another program) and, for a sweep, logs it to W&B
(:func:`galgen_lightning.wandb_utils.log_sweep`) with charts of the memorization rate, the
own-minus-other gap and the A-vs-B agreement against N.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from galgen_lightning.evaluation.morphology_image import VARIABLES as MORPHOLOGY_VARIABLES
from galgen_lightning.report.figures import run_title
from galgen_lightning.report.stats import fmt_p
from galgen_lightning.rundir import Run
from galgen_lightning.tables import fmt_g

INTERVALS = ("memorization_rate", "gap_median", "agreement_kappa", "realism_outside_any", "repeat_share")
"""The statistics whose bootstrap interval the table carries (``<key>_low``, ``<key>_high``)."""

COLUMNS = (
    "family",
    "group",
    "run",
    "state",
    "n",
    "seed",
    "epoch",
    "label",
    "memorization_rate",
    "memorization_rate_low",
    "memorization_rate_high",
    "memorization_p_value",
    "gap_median",
    "gap_median_low",
    "gap_median_high",
    "gap_p_value",
    "agreement_kappa",
    "agreement_kappa_low",
    "agreement_kappa_high",
    "a_vs_b_median",
    "realism_outside_any",
    "realism_outside_any_low",
    "realism_outside_any_high",
    "realism_chance_any",
    "repeat_share",
    "repeat_share_low",
    "repeat_share_high",
    "repeat_chance",
)
"""Columns of the sweep table: the run (family, its group of one image size, folder, state, N,
seed, the evaluated epoch), the judge's label, the memorization rate under the two-models null,
the own-minus-other gap (median per noise index, Wilcoxon p), the shared-noise agreement kappa
of A and B, the A-vs-B similarity (median), the share of samples unlike any real galaxy and the
share repeating another sample of their model (variety), each with the held-out real galaxies'
share by the same test."""

CHARTS = {
    "memorization_rate": "memorization rate (two-models null) against N",
    "gap_median": "own-minus-other nearest similarity (median) against N",
    "agreement_kappa": "A-vs-B shared-noise agreement (kappa) against N",
}
"""The sweep's W&B charts: statistic -> title (with ``<key>_low``/``<key>_high`` as series)."""


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def table_row(run: Run, verdict: Any) -> dict[str, Any]:
    """The table's row of one run from its :class:`~galgen_lightning.evaluation.verdict.Verdict`."""
    numbers, intervals = verdict.numbers, verdict.intervals
    record = run.record("two_models", verdict.epoch) or {}  # the epoch judged
    row: dict[str, Any] = {
        "family": run.family,
        "group": run.group,
        "run": run.name,
        "state": run.state,
        "n": run.n,
        "seed": run.seed,
        "epoch": verdict.epoch,
        "label": verdict.label,
    }
    for key in COLUMNS[8:]:
        if key.endswith(("_low", "_high")):
            continue
        value = numbers.get(key, record.get(key))
        row[key] = _number(value)
        if key in INTERVALS:
            low, high = intervals.get(key, (None, None))
            row[f"{key}_low"], row[f"{key}_high"] = _number(low), _number(high)
    return {key: row.get(key) for key in COLUMNS}


def table_order(run: Any) -> tuple:
    """The order of the sweep table's rows: family group, N, seed, run name."""
    return (run.group, run.n or 0, run.seed or 0, run.name)


def sweep_rows(root: Path, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> list[dict[str, Any]]:
    """The table of every run below ``root`` (read through :mod:`galgen_lightning.rundir`, judged
    by :func:`~galgen_lightning.evaluation.verdict.judge_run`), in :func:`table_order`: the table
    ``galgen report`` writes, with its defaults, for a caller that has no report at hand."""
    import numpy as np

    from galgen_lightning.evaluation.verdict import judge_run
    from galgen_lightning.rundir import find_runs, load_run

    runs = sorted((load_run(p) for p in find_runs(Path(root))), key=table_order)
    # a generator per run, as galgen report: a run's intervals do not depend on the other runs
    return [table_row(run, judge_run(run, n_boot, confidence, np.random.default_rng(seed))) for run in runs if run.has_results]


def write_table(folder: Path, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """``<folder>/sweep_table.csv`` and ``sweep_table.json`` (empty cells / null where a number is missing)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS))
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in row.items()} for row in rows])
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = folder / "sweep_table.csv", folder / "sweep_table.json"
    csv_path.write_text(buffer.getvalue())
    json_path.write_text(json.dumps({"columns": list(COLUMNS), "rows": rows}, indent=1) + "\n")
    return csv_path, json_path


def read_table(folder: Path) -> list[dict[str, Any]]:
    """The rows of ``<folder>/sweep_table.json``, or ``[]``."""
    try:
        data = json.loads((folder / "sweep_table.json").read_text())
    except (OSError, ValueError):
        return []
    return data.get("rows", []) if isinstance(data, dict) else []


def chart_series(rows: list[dict[str, Any]], key: str) -> list[tuple[str, list[float], list[float]]]:
    """``[(name, N values, statistic values)]`` for a chart of ``key`` against N: per family group
    and seed (complete runs with a value only), the statistic and its interval bounds as the
    series ``<group> seed <s>``, ``... low``, ``... high``."""
    out = []
    lines: dict[tuple[str, Any], list[dict]] = {}
    for row in rows:
        if row.get("state") == "complete" and row.get("n") and row.get(key) is not None:
            lines.setdefault((row["group"], row.get("seed")), []).append(row)
    for (group, seed), members in sorted(lines.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        members.sort(key=lambda r: r["n"])
        name = f"{group} seed {seed}"
        xs = [float(r["n"]) for r in members]
        out.append((name, xs, [r[key] for r in members]))
        for bound in ("low", "high"):
            values = [r.get(f"{key}_{bound}") for r in members]
            if all(v is not None for v in values):
                out.append((f"{name} {bound}", xs, values))
    return out


def inversion_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Table 1, per N, direction and level: the 1-Wasserstein distances of the inversion test
    (:func:`galgen_lightning.evaluation.inversion.table_rows` of each run's last record)."""
    if not any(run.last("inversion") for run in runs):
        return [], []
    from galgen_lightning.evaluation.inversion import table_rows

    columns, rows = [], []
    for run in sorted(runs, key=lambda r: (r.n or 0, r.seed or 0)):
        rec = run.last("inversion")
        if not rec:
            continue
        columns, table = table_rows(rec)
        rows += [[f"{run.n:,}" if run.n is not None else run.name, run.state, *row] for row in table]
    return ["N", "state", *columns], rows


def morphology_rows(run: Run) -> list[list[str]]:
    """Per comparison of the morphology test's last record: W1 and KS p-value per variable."""
    rec = run.last("morphology") or {}
    comparisons = sorted({m.group(1) for k in rec for m in [re.match(r"(\w+_vs_\w+)/\w+_w1$", k)] if m})
    rows = []
    for comp in comparisons:
        cells = [f"{fmt_g(rec.get(f'{comp}/{v}_w1'))} (p={fmt_p(rec.get(f'{comp}/{v}_ks_p'))})" for v in MORPHOLOGY_VARIABLES]
        rows.append([run_title(run), comp.replace("_vs_", " vs "), *cells])
    return rows
