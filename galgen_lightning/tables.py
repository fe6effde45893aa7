"""Plain tables as text: CSV (the ``csv`` module) and Markdown, for the evaluation's files and the report."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence


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
