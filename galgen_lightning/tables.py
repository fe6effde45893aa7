"""Plain tables as text: CSV (the ``csv`` module) and Markdown, for the evaluation's files and the report."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any


def csv_text(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A header row and the rows as CSV text (quoted where a cell needs it)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def markdown_text(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A header row and the rows as a Markdown table."""
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fmt_g(x: Any) -> str:
    """A number with four significant digits for a table cell; ``n/a`` for None, NaN or infinity."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return f"{float(x):.4g}"
