"""The report's HTML page: one Jinja2 template, every value escaped (``autoescape``).

:func:`render` takes the plain data :mod:`galgen_lightning.report` collects (strings, numbers,
tables as :func:`html_table` builds them, figures as :func:`html_figure` builds them) and returns the
page. Nothing here computes a number; nothing outside writes HTML.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from galgen_lightning.report.figures import Figure

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>galgen report</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}\
figcaption{font-size:.85em;color:#444;max-width:1100px}
.memorizes{color:#b00020;font-weight:600}.poor{color:#6a1b9a;font-weight:600}.partly{color:#c25e00;font-weight:600}.generalizes{color:#1b7f2a;font-weight:600}
.incomplete{background:#fff3cd}\
.badge{display:inline-block;padding:0 .4em;border-radius:.3em;background:#f0ad4e;color:#000;font-size:.8em}
.pass{color:#1b7f2a}.fail{color:#b00020}.note{background:#f7f7f7;border-left:4px solid #999;padding:.4em .8em}
.gallery{display:flex;flex-wrap:wrap;gap:1em}.gallery figure{flex:1 1 480px}
</style></head><body>
{%- macro show_table(t) -%}
<table><thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead><tbody>
{%- for row in t.rows %}<tr{% if row.cls %} class="{{ row.cls }}"{% endif %}>
{%- for cell in row.cells %}<td{% if cell.num %} class="num"{% endif %}>\
{% if cell.span %}<span class="{{ cell.span }}">{{ cell.text }}</span>\
{% else %}{{ cell.text }}{% endif %}</td>{% endfor %}</tr>
{%- endfor %}</tbody></table>
{%- endmacro -%}
{%- macro show_figure(f) -%}
<figure><img alt="{{ f.alt }}" data-file="{{ f.file }}" src="data:image/png;base64,{{ f.data }}">\
<figcaption>{{ f.caption }} (<code>{{ f.file }}</code>
{%- if f.pdf %}, <a class="pdf" href="{{ f.pdf }}">PDF</a>{% endif %})</figcaption></figure>
{%- endmacro %}
<h1>galgen report: {{ root }}</h1>
<p>{{ n_runs }} run(s) in {{ n_groups }} family group(s); {{ n_incomplete }} not complete
{%- if n_incomplete %} <span class="badge">incomplete runs are highlighted and left out of N*</span>{% endif %}.
Made {{ created }}; bootstrap {{ n_boot }} replicates, {{ level }} intervals.</p>
<h2>Summary: memorization or generalization</h2>
<p>Verdict per run from the one judge (galgen_lightning/evaluation/verdict.py, docs/verdict.md), with {{ level }} bootstrap
intervals over noise indices. <b>memorizes</b>: the memorization rate under the two-models null (share of samples nearer their
own training image than the calibrated threshold, see below) has its lower bound above {{ rules.memorizes_rate }};
<b>poor samples</b>: more than {{ rules.poor_share }} of samples are unlike any real galaxy, or (with no copies) repeat
another sample of their model more closely than real galaxies come to one another, a collapse (lower bounds; the
collapse call needs at least {{ rules.min_heldout }} held-out galaxies);
<b>generalizes</b>: the rate is at chance (upper bound below {{ rules.generalizes_factor }}x chance, and no copies beyond
chance by the re-split test), the samples look real
and vary as real galaxies do, and positive evidence
holds: shared-noise agreement kappa above {{ rules.agreement_kappa }} (lower bound, permutation p &lt; {{ rules.alpha }}) for
noise-to-image families, the discriminator curves within +-{{ rules.discriminator_tolerance }} of each other for GANs;
<b>in transition</b>: more copies than chance but not most; <b>inconclusive</b>: none of these shown. The memorization rate's
threshold is the 99th percentile of the samples' own nearest similarity to the subset their model never saw.
Every number is also in <code>summary.csv</code>, <code>summary.json</code> and, one row per run, \
<code>sweep_table.csv</code>.</p>
{{ show_table(summary_table) }}
<h3>Transition size N*</h3><ul>{% for line in n_star %}<li><b>{{ line.group }}</b>: {{ line.statement }}</li>{% endfor %}</ul>
<h3>Does the sweep show the transition?</h3>
{%- for block in checks %}
<h3>{{ block.group }}</h3><ul>
{%- for item in block["items"] %}<li{% if item.cls %} class="{{ item.cls }}"{% endif %}>\
{{ item.mark }}: {{ item.text }} ({{ item.detail }})</li>{% endfor %}</ul>
{%- for note in block.notes %}<p class="note">{{ note }}</p>{% endfor %}
{%- if block.figure %}{{ show_figure(block.figure) }}{% endif %}
{%- endfor %}
{%- for section in sections %}
<h2>{{ section.title }}</h2>
{%- if section.intro %}<p>{{ section.intro }}</p>{% endif %}
{%- if not section.blocks %}<p>{{ section.empty }}</p>{% endif %}
{%- if section.gallery %}<div class="gallery">{% endif %}
{%- for block in section.blocks %}
{%- if block.heading %}<h3>{{ block.heading }}</h3>{% endif %}
{%- if block.text %}<p>{{ block.text }}{% if block.file %} (<code>{{ block.file }}</code>){% endif %}</p>{% endif %}
{%- if block.table %}{{ show_table(block.table) }}{% endif %}
{%- if block.figure %}{{ show_figure(block.figure) }}{% endif %}
{%- endfor %}
{%- if section.gallery %}</div>{% endif %}
{%- endfor %}
<h2>Runs: training pixels per model parameter</h2>
<p>Pixels of one model's training subset (N x channels x height x width) per trainable parameter of one model (for a GAN, of its
generator). Below about one pixel per parameter a model can store its training set.</p>
{{ show_table(runs_table) }}
</body></html>
"""

_NUMBER = re.compile(r"[-+0-9.,e\[\] ]+|n/a")


def html_table(
    columns: list[str], rows: list[list[str]], row_classes: list[str] | None = None, spans: dict[int, list[str]] | None = None
) -> dict:
    """A table for the template: cells as text (numbers right-aligned), rows with a CSS class,
    and ``spans[j][i]``: a CSS class for the text of column ``j`` in row ``i`` (the verdicts)."""
    spans = spans or {}
    out_rows = []
    for i, row in enumerate(rows):
        cells = [
            {"text": str(cell), "num": bool(_NUMBER.fullmatch(str(cell))), "span": spans[j][i] if j in spans else ""}
            for j, cell in enumerate(row)
        ]
        out_rows.append({"cls": row_classes[i] if row_classes else "", "cells": cells})
    return {"columns": columns, "rows": out_rows}


def html_figure(fig: Figure, folder: str = "figures") -> dict:
    """A figure for the template: the PNG embedded, its file and PDF relative to the page."""
    return {
        "data": base64.b64encode(fig.path.read_bytes()).decode("ascii"),
        "file": f"{folder}/{fig.path.name}",
        "pdf": f"{folder}/{fig.pdf.name}" if fig.pdf is not None and fig.pdf.is_file() else None,
        "caption": fig.caption,
        "alt": fig.caption[:120],
    }


def render(context: dict[str, Any]) -> str:
    """The page from the report's data (see :data:`TEMPLATE` for the names it reads)."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(TEMPLATE).render(**context)
