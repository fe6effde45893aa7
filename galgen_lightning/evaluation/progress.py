"""Progress bars and timed parts of an evaluation (sampling, the nearest-neighbour search, morphology).

An evaluation runs inside Lightning's ``on_validation_epoch_end``, where Lightning's own bar
stands still; these bars (``tqdm`` on stderr, cleared when done) show the parts that take
minutes. They follow the trainer: ``enable_progress_bar=False`` (no progress bar callback)
shows none.
"""

from __future__ import annotations

import sys
from typing import Any


def bars_enabled(trainer: Any) -> bool:
    """Whether the trainer shows progress bars (it has a progress bar callback)."""
    return trainer is not None and getattr(trainer, "progress_bar_callback", None) is not None


def progress_bar(total: int, desc: str, unit: str, enabled: bool):
    """A ``tqdm`` bar on stderr, cleared when closed; a silent one when ``enabled`` is False.

    Args:
        total: steps of the bar.
        desc: its label, e.g. ``"two_models: sampling"``.
        unit: what a step is (``"sample"``, ``"search"``, ``"image"``).
        enabled: show it.
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True, file=sys.stderr)
