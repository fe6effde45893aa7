"""Morphology throughput: synthetic galaxies measured per second with 1 and 2 worker processes.

It renders ``--count`` synthetic galaxies (``galgen_lightning.data.synthetic.render_many``, not
timed), then measures them with :func:`galgen_lightning.evaluation.morphology_measure.measure_groups` and prints
one JSON object. With one worker: in this process. With more: ``cold`` on a new
:class:`~galgen_lightning.evaluation.morphology_measure.WorkerPool` (its workers start and import this script,
which imports torch and Lightning through ``galgen_lightning.data``, as the ``galgen`` script
does), then ``warm`` on the same pool (what the callback pays from its second evaluation on).
The forkserver itself is started before timing (once per process). The used / flagged /
failed counts and the values must not depend on the worker count.

Examples:
    OMP_NUM_THREADS=1 python benchmarks/bench_morphology.py
    OMP_NUM_THREADS=1 python benchmarks/bench_morphology.py --image-size 32 --count 64 --workers 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from galgen_lightning.data.synthetic import render_many
from galgen_lightning.evaluation import morphology_measure as M


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--count", type=int, default=32, help="galaxies measured per worker count")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0, help="synthetic set seed")
    parser.add_argument("--no-deblend", action="store_true", help="skip photutils deblending")
    args = parser.parse_args(argv)

    images = render_many(range(args.count), seed=args.seed, image_size=args.image_size)
    options = M.MorphologyOptions(deblend=not args.no_deblend)
    M.measure_image(images[0], options)  # import statmorph and photutils before timing
    start = time.perf_counter()
    if max(args.workers) > 1:  # start the forkserver (once per process, as in a training run)
        M.measure_images(images[:2], options, workers=2, progress=False)
    first_pool = time.perf_counter() - start
    result: dict = {
        "image_size": args.image_size,
        "count": args.count,
        "deblend": options.deblend,
        "cpus": M.default_workers(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "forkserver_start_seconds": round(first_pool, 2),
        "runs": [],
    }
    reference = None

    def timed(workers: int, pool: M.WorkerPool | None, kind: str) -> None:
        nonlocal reference
        start = time.perf_counter()
        table = M.measure_groups({"x": (images, None)}, options, workers=workers, progress=False, pool=pool)["x"]
        seconds = time.perf_counter() - start
        counts = M.counts(table)
        values = np.stack([table[v] for v in M.VARIABLES])
        reference = values if reference is None else reference
        result["runs"].append(
            {
                "workers": workers,
                "pool": kind,
                "seconds": round(seconds, 2),
                "images_per_second": round(args.count / seconds, 2),
                "used": int(counts["used"]),
                "flagged": int(counts["flagged"]),
                "failed": int(counts["failed"]),
                "same_values_as_first_run": bool(np.array_equal(values, reference, equal_nan=True)),
            }
        )

    for workers in args.workers:
        if workers == 1:
            timed(1, None, "none")
            continue
        with M.WorkerPool(workers) as pool:
            timed(workers, pool, "cold")
            timed(workers, pool, "warm")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
