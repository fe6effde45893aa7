"""Progress bars and timed parts of an evaluation (sampling, the nearest-neighbour search, morphology).

An evaluation runs inside Lightning's ``on_validation_epoch_end``, where Lightning's own bar
stands still; these bars (``tqdm`` on stderr, cleared when done) show the parts that take
minutes. They follow the trainer: ``enable_progress_bar=False`` (no progress bar callback)
shows none.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def counting_batches(pl_module: Any, update: Callable[[int], None]) -> Iterator[None]:
    """Call ``update(len(indices))`` after each ``pl_module.generate`` batch while inside the block.

    :meth:`~galgen_lightning.models.base.PairModule.sample` generates A's and B's samples batch
    by batch through ``generate(which, indices, seed)``; counting those calls gives a per-batch
    progress without changing what is generated. The instance's own ``generate`` is restored on
    leaving.
    """
    had = "generate" in pl_module.__dict__
    previous = pl_module.__dict__.get("generate")
    original = pl_module.generate

    def generate(which: str, indices, seed: int):
        out = original(which, indices, seed)
        update(len(indices))
        return out

    pl_module.__dict__["generate"] = generate
    try:
        yield
    finally:
        if had:
            pl_module.__dict__["generate"] = previous
        else:
            pl_module.__dict__.pop("generate", None)
