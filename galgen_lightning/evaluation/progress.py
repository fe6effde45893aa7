"""How a run shows its progress: bars on a terminal, one line per epoch in a log.

On a terminal, Lightning's bar shows training, and an evaluation's slow parts (sampling, the
nearest-neighbour search, morphology) get ``tqdm`` bars of their own on stderr, cleared when
done: an evaluation runs inside ``on_validation_epoch_end``, where Lightning's bar stands still.
Where stderr is not a terminal (a log file, CI, a SLURM job's output), a bar would write
thousands of carriage-return updates; there the CLI puts :class:`LineProgress` in its place: one
line per training epoch (batches, wall time, the bar's metrics) and per validation run, and no
evaluation bars. Both follow the trainer: ``enable_progress_bar=False`` shows nothing.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from lightning.pytorch.callbacks import ProgressBar


class LineProgress(ProgressBar):
    """Lightning's progress display for logs: a line per training epoch and per validation run.

    ``epoch 3/10: 300 batches in 25 s; train/loss_a_epoch 0.836, ...``, on stderr, from rank zero.
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._started = time.perf_counter()
        self._batches = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _line(self, text: str, trainer: Any, pl_module: Any) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        line = f"{text} in {time.perf_counter() - self._started:.0f} s" + (f"; {shown}" if shown else "")
        print(line, file=sys.stderr, flush=True)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._started, self._batches = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._batches += 1

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self._line(f"epoch {trainer.current_epoch + 1}{total}: {self._batches} batches", trainer, pl_module)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.state.fn != "fit":
            self._started = time.perf_counter()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.state.fn != "fit":  # in fit, the epoch's line includes validation and the tests
            self._line(f"validation: {int(self.total_val_batches)} batches", trainer, pl_module)


def use_line_progress(enable_progress_bar: bool | None, callback_paths: list[str], stream: Any = None) -> bool:
    """Whether the CLI should show :class:`LineProgress`: the bar is on (``None`` counts as on), no
    progress bar callback is configured, and ``stream`` (stderr) is not a terminal."""
    stream = sys.stderr if stream is None else stream
    if enable_progress_bar is False or any("ProgressBar" in path or "LineProgress" in path for path in callback_paths):
        return False
    isatty = getattr(stream, "isatty", None)
    return not (isatty is not None and isatty())


def bars_enabled(trainer: Any) -> bool:
    """Whether an evaluation shows ``tqdm`` bars: the trainer shows a bar (not :class:`LineProgress`)."""
    callback = getattr(trainer, "progress_bar_callback", None) if trainer is not None else None
    return callback is not None and not isinstance(callback, LineProgress)


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
