"""The galleries of the two-models test, collected into the report.

The two-models callback draws, at each evaluation, the k samples its pair memorized most (by the
own-minus-other nearest similarity) and the k it memorized least, each beside its nearest
training image of its own subset and of the other subset, captioned with the similarities:
``<run>/eval/two_models/epoch_XXXX_gallery_most.png`` and ``..._gallery_least.png``, a ``.pdf`` of
the same stem beside each, and the shown indices (``gallery_most_idx``/``gallery_least_idx``) in
the evaluation's ``.npz`` (the gallery's own ``.npz`` of the same stem when it has one). The
report shows the galleries of the evaluation its verdict reads (the run's last two-models
record; a ``galgen validate`` folder's when the results are there) for one run per N, and copies
the PNG and PDF into ``<out>/figures/``.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from galgen_lightning.report.figures import Figure, FigureWriter, one_per_n, run_title, slug
from galgen_lightning.rundir import EVAL, Run, RunDir
from galgen_lightning.rundir.folder import read_arrays

TEST = "two_models"
KINDS = {"most": "most memorized", "least": "least memorized"}
"""Gallery tag (``_gallery_<kind>``) -> what it shows."""


def _shown(run: Run, png: Path, kind: str, epoch: int) -> int | None:
    """How many samples the gallery shows (the length of ``gallery_<kind>_idx``), when recorded."""
    key = f"gallery_{kind}_idx"
    for path in (png.with_suffix(".npz"), None):
        arrays = run.arrays(TEST, epoch) if path is None else read_arrays(path)
        if arrays and key in arrays:
            return int(np.size(arrays[key]))
    return None


def gallery_figures(runs: list[Run], group: str, writer: FigureWriter) -> list[Figure]:
    """The galleries (most, then least memorized) of one run per N of ``group``, copied into the report."""
    out = []
    for run in one_per_n(runs):
        epoch = run.results_epoch(TEST)  # the epoch the judge reads
        if epoch is None:
            continue
        folder = RunDir(run.source(TEST)[0])
        for kind, what in KINDS.items():
            png = folder.eval_path(TEST, epoch, ".png", f"_gallery_{kind}", create=False)
            if not png.is_file():
                continue
            # N, seed and the path's digest: two runs whose names slug alike (non-ASCII, punctuation) never share a file
            digest = hashlib.sha1(str(run.path.resolve()).encode()).hexdigest()[:8]
            name = f"gallery_{kind}_{slug(group)}_n{run.n}_s{run.seed}_{slug(run.name)}_{digest}"
            target = writer.folder / f"{name}.png"
            shutil.copyfile(png, target)
            pdf = None
            if png.with_suffix(".pdf").is_file():
                pdf = target.with_suffix(".pdf")
                shutil.copyfile(png.with_suffix(".pdf"), pdf)
            k = _shown(run, png, kind, epoch)
            count = f"the {k} samples" if k is not None else "the samples"
            caption = (
                f"{group}, {run_title(run)}, epoch {epoch}: {count} {what} by the own-minus-other nearest similarity, "
                "each beside its nearest training image of its own subset and of the other subset, with the similarities "
                f"(from {run.name}/{EVAL}/{TEST}/{png.name})."
            )
            out.append(Figure(target, caption, pdf))
    return out
