"""Reference statistics of the built-in synthetic galaxies: how diverse is the set?

For each of ``--n-heldout`` held-out images, the highest mean-removed cosine similarity
(Pearson correlation of pixels) to any of N training images, also over the 8 flips/rotations of
each training image (``galgen_lightning.metrics.nearest_similarity``), summarised by its median
and 99th percentile for each N in ``--sizes``. A memorizing model's samples sit at ~0.99+; a
generalizing model's should sit where held-out real images do, so the set must leave room
between the two. Also: the share of near-duplicates the data pipeline would remove
(``galgen_lightning.data.dedup.duplicate_mask``: correlation > 0.95 with an earlier image at full
resolution, over shifts of up to 3 px and the 8 flips/rotations) and the rendering speed. Prints one JSON document.

Training images are indices ``0 .. max(sizes) - 1`` of the set, held-out images are indices
``1_000_000 ..`` (the same in every run).

Examples:
    python benchmarks/synthetic_reference.py --image-size 64 --sizes 1000 10000
    python benchmarks/synthetic_reference.py --image-size 16 32 --sizes 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from galgen_lightning.data.split import duplicate_mask
from galgen_lightning.data.synthetic import SYNTHETIC_VERSION, render_galaxy, render_many
from galgen_lightning.metrics import nearest_similarity

HELDOUT_START = 1_000_000


def single_core_ms(sizes: list[int], seed: int, count: int) -> dict[str, float]:
    """CPU milliseconds per image rendered in this process (one core), per image size.

    The sizes are interleaved image by image, so a change in the machine's load hits them alike.
    """
    for size in sizes:  # warm-up: imports and GalSim's Sersic tables
        for i in range(5):
            render_galaxy(HELDOUT_START + i, seed, size)
    spent = dict.fromkeys(sizes, 0.0)
    for i in range(count):
        for size in sizes:
            start = time.process_time()
            render_galaxy(2_000_000 + i, seed, size)
            spent[size] += time.process_time() - start
    return {f"{size}px": round(1e3 * spent[size] / count, 2) for size in sizes}


def nearest_summary(heldout: np.ndarray, train: np.ndarray) -> dict[str, float]:
    """Median and 99th percentile of the held-out images' nearest-training similarity."""
    sims, _ = nearest_similarity(
        torch.from_numpy(heldout)[:, None], torch.from_numpy(train)[:, None], mean_removed=True, transforms=True
    )
    s = sims.double().numpy()
    return {
        "median": round(float(np.median(s)), 4),
        "p99": round(float(np.quantile(s, 0.99)), 4),
        "mean": round(float(s.mean()), 4),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="training-set sizes N")
    parser.add_argument("--n-train", type=int, default=None, help="training images rendered (default: the largest N)")
    parser.add_argument("--n-heldout", type=int, default=500, help="held-out query images")
    parser.add_argument("--image-size", type=int, nargs="+", default=[64], help="stamp sizes in pixels")
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: all CPUs)")
    parser.add_argument("--seed", type=int, default=0, help="the set's seed")
    parser.add_argument("--speed-count", type=int, default=200, help="images timed on one core, per size")
    parser.add_argument("--speed-only", action="store_true", help="only time the rendering (no statistics)")
    parser.add_argument(
        "--dedupe-count", type=int, default=10000, help="images checked for near-duplicates (capped by --n-train)"
    )
    args = parser.parse_args(argv)

    n_train = args.n_train or max(args.sizes)
    report: dict = {
        "command": " ".join(["python", "benchmarks/synthetic_reference.py", *(argv if argv is not None else sys.argv[1:])]),
        "synthetic_version": SYNTHETIC_VERSION,
        "seed": args.seed,
        "n_heldout": args.n_heldout,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "results": {},
    }
    report["render_ms_per_image_one_core_cpu"] = single_core_ms(args.image_size, args.seed, args.speed_count)
    for size in [] if args.speed_only else args.image_size:
        t0 = time.perf_counter()
        train = render_many(range(n_train), seed=args.seed, image_size=size, workers=args.workers)
        heldout = render_many(
            range(HELDOUT_START, HELDOUT_START + args.n_heldout), seed=args.seed, image_size=size, workers=args.workers
        )
        wall = time.perf_counter() - t0
        entry: dict = {
            "render_images_per_s": round((n_train + args.n_heldout) / wall, 1),  # pool start-up included
            "render_workers": args.workers,
            "pixel_mean": round(float(train.mean()), 4),
            "nearest_training": {},
        }
        for n in sorted(args.sizes):
            if n <= n_train:
                entry["nearest_training"][str(n)] = nearest_summary(heldout, train[:n])
        count = min(args.dedupe_count, n_train)
        drop = duplicate_mask(train[:count], threshold=0.95)
        entry["near_duplicates"] = {"checked": count, "removed": int(drop.sum()), "fraction": round(float(drop.mean()), 4)}
        report["results"][f"{size}px"] = entry
        print(f"{size}px done: {json.dumps(entry)}", file=sys.stderr, flush=True)
    report["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
