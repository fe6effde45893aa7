"""The two-models test's nearest-neighbour search: each sample against a training subset.

Times :func:`galgen_lightning.metrics.nearest_similarity` (the best match only) and
:func:`galgen_lightning.metrics.top_similarities` (the ``k`` best, which the re-split test
needs; what ``TwoModelsTest`` runs, twice per model) over the 8 flips/rotations, on random
images, and prints comparisons per second (samples x training images / s) and peak memory: a
Markdown line, then one JSON line per function.

Sizes: ``small`` (CPU) 256 samples against 2,000 training images at 64 px; ``full`` (GPU) 1,000
samples against 100,000 images at 64 px (the paper's largest N).

Examples:
    python benchmarks/bench_search.py                              # CPU, small
    python benchmarks/bench_search.py --device cuda --size full    # a GPU, full
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from _timing import peak_memory_mb, reset_peak_memory, sync

from galgen_lightning.metrics import nearest_similarity, top_similarities

SIZES = {"small": dict(queries=256, reference=2000, side=64), "full": dict(queries=1000, reference=100_000, side=64)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--k", type=int, default=16, help="images kept per sample by top_similarities")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (the best is reported) after one warm-up")
    args = parser.parse_args()
    device = torch.device(args.device)
    size = SIZES[args.size]
    g = torch.Generator().manual_seed(0)
    queries = torch.rand(size["queries"], 1, size["side"], size["side"], generator=g).to(device)
    reference = torch.rand(size["reference"], 1, size["side"], size["side"], generator=g).to(device)
    runs = {
        "nearest_similarity": lambda: nearest_similarity(queries, reference, transforms=True),
        f"top_similarities_k{args.k}": lambda: top_similarities(queries, reference, args.k, transforms=True),
    }
    for name, run in runs.items():
        run()
        reset_peak_memory(device)
        best = float("inf")
        for _ in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            best = min(best, time.perf_counter() - start)
        pairs = size["queries"] * size["reference"]
        row = {
            "function": name,
            "device": str(device),
            "size": args.size,
            **size,
            "transforms": 8,
            "seconds": round(best, 4),
            "comparisons_per_s": round(pairs * 8 / best),
            "samples_per_s": round(size["queries"] / best, 1),
            "peak_memory_mb": round(peak_memory_mb(device), 1),
            "torch": torch.__version__,
            "machine": platform.machine(),
        }
        print(f"| {name} | {best:.3f} s | {row['samples_per_s']:,} samples/s | {row['peak_memory_mb']:,} MiB |")
        print(json.dumps(row))


if __name__ == "__main__":
    main()
