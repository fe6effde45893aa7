"""Coverage of the held-out readings' intervals (not a speed benchmark: a calibration check).

Worlds with no copies and samples drawn like the real galaxies: every nearest similarity from one
normal law, every image's pixel spread from one log-normal law, so the true held-out reading is
0.01, realism's structure share 0.01 and its "any" share 1 - 0.99 x 0.98. Each world redraws the
held-out set; the script prints, per ``n_val``, how often the 95% intervals of
:func:`galgen_lightning.evaluation.statistics.two_models_evidence` cover the truth, their mean
width and point value, and the real galaxies' own share (``realism_chance_any``).
docs/verdict.md ("Known limits") quotes its output at 200 worlds.

Example:
    python benchmarks/calibration_heldout.py --worlds 200       # about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from galgen_lightning.evaluation.statistics import two_models_evidence

TRUTH = {"memorization_rate_heldout": 0.01, "realism_outside_structure": 0.01, "realism_outside_any": 1 - 0.99 * 0.98}


def world(rng: np.random.Generator, n: int, n_val: int) -> dict[str, np.ndarray]:
    """One world's per-sample arrays in the callback's format."""

    def images(k: int) -> np.ndarray:
        spread = rng.lognormal(-2.0, 0.3, k)
        return (rng.standard_normal((k, 64)) * spread[:, None]).reshape(k, 1, 8, 8)

    arrays = {"heldout": rng.normal(0.85, 0.03, 2 * n_val)}
    arrays["heldout_pixel_std"] = images(n_val).reshape(n_val, -1).std(axis=1, ddof=1)
    for m in "ab":
        arrays |= {f"own_{m}": rng.normal(0.85, 0.03, n), f"other_{m}": rng.normal(0.85, 0.03, n)}
        arrays |= {f"sample_index_{m}": np.arange(n), f"samples_{m}": images(n)}
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=200)
    parser.add_argument("--samples", type=int, default=256, help="samples per model")
    parser.add_argument("--n_val", type=int, nargs="+", default=[16, 64, 500])
    parser.add_argument("--n_boot", type=int, default=500)
    args = parser.parse_args()
    for n_val in args.n_val:
        start = time.time()
        hits, widths, points, chance = dict.fromkeys(TRUTH, 0), {k: [] for k in TRUTH}, {k: [] for k in TRUTH}, []
        for w in range(args.worlds):
            arrays = world(np.random.default_rng(1000 + w), args.samples, n_val)
            numbers, intervals, _ = two_models_evidence(arrays, n_boot=args.n_boot, rng=np.random.default_rng(w), permutations=20)
            for key, value in TRUTH.items():
                low, high = intervals[key]
                hits[key] += low <= value <= high
                widths[key].append(high - low)
                points[key].append(numbers[key])
            chance.append(numbers["realism_chance_any"])
        parts = [
            f"{key}: covers {hits[key] / args.worlds:.2f}, mean {np.mean(points[key]):.3f} (true {value:.3f}), "
            f"width {np.mean(widths[key]):.3f}"
            for key, value in TRUTH.items()
        ]
        print(f"n_val {n_val} ({time.time() - start:.0f} s): " + "; ".join(parts) + f"; realism_chance_any {np.mean(chance):.3f}")


if __name__ == "__main__":
    main()
