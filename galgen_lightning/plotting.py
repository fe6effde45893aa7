"""Figures: matplotlib without a window, and every figure saved the same way.

:func:`pyplot` is ``matplotlib.pyplot`` on the Agg backend (galgen draws into files, on
machines without a display); :func:`save_figure` writes a figure as a PNG of :data:`DPI` and a
vector PDF beside it, then closes it. The tests' figures (``eval/<test>/``) and the report's
(``<report>/figures/``) are saved by it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DPI = 150
"""Resolution of the PNG figures (the PDF beside each is vector)."""


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no window; files only)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, pdf: bool = True, dpi: int = DPI) -> Path:
    """Write ``fig`` to ``path`` (PNG, cropped to its content) and, with ``pdf``, the same figure
    as a vector PDF beside it; the figure is closed in any case.

    Returns:
        The PNG's path.
    """
    path = Path(path)
    try:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        if pdf:
            fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return path
