"""Morphology of many images: groups measured in a process pool, every image's outcome kept.

:func:`measure_groups` measures several groups of images (each image with
:func:`~galgen_lightning.evaluation.morphology_image.measure_image`, in order, over a
:class:`~galgen_lightning.parallel.WorkerPool` when more than one process is asked for) and
stacks the outcomes into per-group tables (:func:`table`): one ``(n,)`` array per variable, plus
``flag``, ``reason``, ``message``, ``used``, ``sky`` and ``sky_sigma``.

The test is spread over three modules: one image (:mod:`~galgen_lightning.evaluation.morphology_image`),
many images (this one) and the statistics, file keys and figure
(:mod:`~galgen_lightning.evaluation.morphology_stats`). Their public names are importable from
here too, as before the split.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from galgen_lightning.evaluation.morphology_image import (
    FAILURES,
    VARIABLES,
    Measurement,
    MorphologyOptions,
    as_images,
    drop_faint_segments,
    estimate_background,
    failed_measurement,
    frame_mask,
    main_label,
    measure_image,
    missing_dependencies,
    segment,
)
from galgen_lightning.evaluation.morphology_stats import (
    COMPARISONS,
    GROUPS,
    LABELS,
    compare,
    counts,
    is_used,
    morphology_figure,
    morphology_statistics,
    used_values,
)
from galgen_lightning.parallel import WorkerPool, default_workers, single_threaded_children

__all__ = [
    "COMPARISONS",
    "FAILURES",
    "GROUPS",
    "LABELS",
    "PRELOAD",
    "VARIABLES",
    "Measurement",
    "MorphologyOptions",
    "WorkerPool",
    "as_images",
    "compare",
    "counts",
    "default_workers",
    "drop_faint_segments",
    "estimate_background",
    "frame_mask",
    "main_label",
    "measure_groups",
    "measure_image",
    "measure_images",
    "missing_dependencies",
    "morphology_figure",
    "morphology_statistics",
    "segment",
    "table",
    "used_values",
]


def _measure_chunk(images: Sequence[np.ndarray], options: MorphologyOptions) -> list[Measurement]:
    return [measure_image(image, options) for image in images]


PRELOAD = [
    "galgen_lightning.evaluation.morphology_measure",
    "statmorph",
    "photutils.segmentation",
    "astropy.stats",
    "scipy.ndimage",
    "scipy.stats",
]


def _measure_parallel(x: Sequence[np.ndarray], options: MorphologyOptions, pool: WorkerPool, bar: Any) -> list[Measurement]:
    """Measure ``x`` over the pool's processes, in order; chunks a broken pool lost are redone here."""
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    n_chunks = min(len(x), pool.workers * 4)
    bounds = np.linspace(0, len(x), n_chunks + 1).astype(int)
    chunks = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    done: dict[int, list[Measurement]] = {}
    try:
        with single_threaded_children():  # for workers started now (the forkserver's environment wins)
            executor = pool.executor()
            futures = {executor.submit(_measure_chunk, x[a:b], options): k for k, (a, b) in enumerate(chunks)}
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            bar.update(len(done[futures[future]]))
    except BrokenProcessPool:
        pool.discard()
        missing = sum(b - a for k, (a, b) in enumerate(chunks) if k not in done)
        warnings.warn(
            f"morphology: a worker process died; measuring the {missing} remaining images in this process",
            RuntimeWarning,
            stacklevel=3,
        )
    for k, (a, b) in enumerate(chunks):
        if k not in done:
            done[k] = _measure_chunk(x[a:b], options)
            bar.update(b - a)
    return [m for k in range(len(chunks)) for m in done[k]]


def _prepare(images: Any, valid: Sequence[bool] | np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    x = as_images(images)
    mask = np.ones(len(x), dtype=bool) if valid is None else np.asarray(valid, dtype=bool).reshape(-1)
    if mask.shape != (len(x),):
        raise ValueError(f"valid must have one entry per image ({len(x)}), got {mask.shape}")
    return x, mask


def measure_groups(
    groups: dict[str, tuple[Any, Sequence[bool] | np.ndarray | None]],
    options: MorphologyOptions | None = None,
    workers: int | None = 1,
    progress: bool | None = None,
    desc: str = "morphology",
    pool: WorkerPool | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Measure several groups of images in one process pool, keeping every image's outcome.

    With ``workers > 1`` the images are measured in a process pool: ``pool`` if given (kept
    open), else one created for the call. On Linux the workers are forked from a
    ``forkserver`` (a clean process that imports statmorph once per run), elsewhere spawned;
    either way each worker imports the parent's ``__main__`` module once, so scripts need the
    ``if __name__ == "__main__":`` guard. Thread-count variables are set to 1 for the workers.
    If a worker dies, the images it held are measured in this process (with a warning) rather
    than lost. Results do not depend on the number of workers.

    Args:
        groups: name -> ``(images, valid)``: images ``(n, h, w)`` or ``(n, 1, h, w)`` (NumPy or
            a CPU tensor) and ``(n,)`` bools or None; an image with ``valid`` False is
            counted as ``invalid_sample`` without being measured.
        options: segmentation and statmorph options.
        workers: processes (None: the CPUs this process may use); 1 measures in-process.
        progress: show a tqdm bar (None: only for more than 100 images in all).
        desc: the bar's label.
        pool: a :class:`WorkerPool` to use (and leave open) instead of a new one; its size
            replaces ``workers``.

    Returns:
        name -> table of ``(n,)`` arrays: one per variable, ``flag``, ``reason``, ``message``,
        ``used``, ``sky`` and ``sky_sigma`` (see the module docstring).

    Raises:
        ValueError: for badly shaped images or ``valid`` masks, or ``workers`` below 1.
    """
    from galgen_lightning.evaluation.progress import progress_bar

    options = options or MorphologyOptions()
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    prepared = {name: _prepare(images, valid) for name, (images, valid) in groups.items()}
    todo = [image for x, mask in prepared.values() for image in x[mask]]
    show = len(todo) > 100 if progress is None else progress
    with progress_bar(len(todo), desc, "image", show) as bar:
        if (pool is None and workers == 1) or len(todo) < 2:
            results = []
            for image in todo:
                results.append(measure_image(image, options))
                bar.update()
        elif pool is not None:
            results = _measure_parallel(todo, options, pool, bar)
        else:
            with WorkerPool(workers, PRELOAD) as own:
                results = _measure_parallel(todo, options, own, bar)
    out: dict[str, dict[str, np.ndarray]] = {}
    start = 0
    for name, (x, mask) in prepared.items():
        measurements = [failed_measurement("invalid_sample") for _ in range(len(x))]
        for i in np.flatnonzero(mask):
            measurements[i] = results[start]
            start += 1
        out[name] = table(measurements, options.max_flag)
    return out


def measure_images(
    images: Any,
    options: MorphologyOptions | None = None,
    valid: Sequence[bool] | np.ndarray | None = None,
    workers: int | None = 1,
    progress: bool | None = None,
    desc: str = "morphology",
    pool: WorkerPool | None = None,
) -> dict[str, np.ndarray]:
    """Measure one group of images (see :func:`measure_groups`, which this calls).

    Args:
        images: ``(n, h, w)`` or ``(n, 1, h, w)`` images (NumPy or a CPU tensor).
        options: segmentation and statmorph options.
        valid: ``(n,)`` bools; False marks an image as ``invalid_sample`` without measuring it.
        workers: processes (None: the CPUs this process may use); 1 measures in-process.
        progress: show a tqdm bar (None: only for more than 100 images).
        desc: the bar's label.
        pool: a :class:`WorkerPool` to use (and leave open) instead of a new one.

    Returns:
        A table of ``(n,)`` arrays: one per variable, ``flag``, ``reason``, ``message``,
        ``used``, ``sky`` and ``sky_sigma`` (see the module docstring).
    """
    return measure_groups({desc: (images, valid)}, options, workers, progress, desc, pool)[desc]


def table(measurements: Sequence[Measurement], max_flag: int = 1) -> dict[str, np.ndarray]:
    """Stack measurements into ``(n,)`` arrays (the per-group part of the ``.npz`` file)."""
    out: dict[str, np.ndarray] = {v: np.array([m.values[v] for m in measurements], dtype=np.float64) for v in VARIABLES}
    out["flag"] = np.array([m.flag for m in measurements], dtype=np.int64)
    out["reason"] = np.array([m.reason for m in measurements], dtype=str)
    out["message"] = np.array([m.message for m in measurements], dtype=str)
    out["used"] = is_used(np.array([m.measured for m in measurements], dtype=bool), out["flag"], max_flag)
    out["sky"] = np.array([m.sky for m in measurements], dtype=np.float64)
    out["sky_sigma"] = np.array([m.sky_sigma for m in measurements], dtype=np.float64)
    return out
