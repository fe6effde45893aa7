"""Calibration of the repeat share (variety), not a speed benchmark.

Worlds whose answer is known, judged by the statistics galgen uses
(:func:`galgen_lightning.evaluation.statistics.two_models_evidence` on arrays in the callback's
format, siblings by :func:`galgen_lightning.evaluation.variety.nearest_sibling`):

- ``varied``: samples drawn like the held-out galaxies (the true repeat share is 0.01);
- ``smooth``: the same galaxies blurred (Gaussian, 1 pixel): varied, but smoother than real;
- ``collapse-K``: every sample one of K galaxies plus faint noise (2% of the pixel spread).

Galaxies are the built-in synthetic set (16 px, rendered once into the cache), or with
``--gaussian`` white-noise images. Per world kind and ``n_val`` the script prints the mean share
and its 95% interval's coverage of 0.01 (varied), the real galaxies' share by the same test
(``repeat_chance``), and how often the judge's two uses of it fire: *collapse* (``lo > max(0.5,
repeat_chance)`` with at least ``MIN_HELDOUT`` held-out galaxies) and *not shown varied*
(``hi >= 0.5``). docs/verdict.md quotes its output.

Example:
    python benchmarks/calibration_variety.py --worlds 100     # 5-10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from galgen_lightning.evaluation.statistics import two_models_evidence
from galgen_lightning.evaluation.variety import MIN_HELDOUT, nearest_sibling


def pool(gaussian: bool, size: int = 2000) -> np.ndarray:
    """The images worlds are drawn from: ``(size, 1, 16, 16)``."""
    if gaussian:
        return np.random.default_rng(0).standard_normal((size, 1, 16, 16))
    from galgen_lightning.data.sources import SyntheticGalaxies

    src = SyntheticGalaxies(size=size, seed=0)
    return np.asarray(src.load(size, 16), dtype=np.float64).reshape(size, 1, 16, 16)


def blurred(x: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, (0, 0, 1.0, 1.0))


def world(rng: np.random.Generator, images: np.ndarray, kind: str, n: int, n_val: int) -> dict[str, np.ndarray]:
    """One world's per-sample arrays in the callback's format (no copies: own and other alike)."""
    order = rng.permutation(len(images))
    heldout = images[order[:n_val]]
    arrays: dict[str, np.ndarray] = {"heldout": rng.normal(0.85, 0.03, 2 * n_val)}
    arrays["heldout_pixel_std"] = heldout.reshape(n_val, -1).std(axis=1, ddof=1)
    block = min(n, n_val)
    arrays["heldout_sibling"], arrays["heldout_sibling_index"] = nearest_sibling(torch.from_numpy(heldout), block)
    for r, m in enumerate("ab"):
        x = images[order[n_val + r * n : n_val + (r + 1) * n]]
        if kind == "smooth":
            x = blurred(x)
        elif kind.startswith("collapse"):
            modes = images[order[n_val + 2 * n : n_val + 2 * n + int(kind.split("-")[1])]]  # shared by A and B
            x = modes[rng.integers(0, len(modes), n)]
            x = x + 0.02 * x.std() * rng.standard_normal(x.shape)
        arrays |= {f"own_{m}": rng.normal(0.85, 0.03, n), f"other_{m}": rng.normal(0.85, 0.03, n)}
        arrays |= {f"sample_index_{m}": np.arange(n), f"samples_{m}": x}
        arrays[f"sibling_{m}"], arrays[f"sibling_index_{m}"] = nearest_sibling(torch.from_numpy(x), block)
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=100)
    parser.add_argument("--samples", type=int, default=256, help="samples per model")
    parser.add_argument("--n_val", type=int, nargs="+", default=[16, 64, 128, 500])
    parser.add_argument("--kinds", nargs="+", default=["varied", "smooth", "collapse-4", "collapse-32"])
    parser.add_argument("--n_boot", type=int, default=500)
    parser.add_argument("--gaussian", action="store_true", help="white-noise images instead of synthetic galaxies")
    args = parser.parse_args()
    images = pool(args.gaussian)
    for kind in args.kinds:
        for n_val in args.n_val:
            start = time.time()
            shares, chances, covers, collapse, unshown = [], [], 0, 0, 0
            for w in range(args.worlds):
                arrays = world(np.random.default_rng(1000 + w), images, kind, args.samples, n_val)
                rng = np.random.default_rng(w)
                numbers, intervals, _ = two_models_evidence(arrays, n_boot=args.n_boot, rng=rng, permutations=20)
                low, high = intervals["repeat_share"]
                shares.append(numbers["repeat_share"])
                chances.append(numbers["repeat_chance"])
                covers += low <= 0.01 <= high
                collapse += n_val >= MIN_HELDOUT and low > max(0.5, numbers["repeat_chance"])
                unshown += high >= 0.5
            coverage = f", covers 0.01 {covers / args.worlds:.2f}" if kind == "varied" else ""
            print(
                f"{kind:12s} n_val {n_val:4d} ({time.time() - start:.0f} s): share {np.mean(shares):.3f}{coverage}, "
                f"repeat_chance {np.nanmean(chances):.3f}, collapse {collapse / args.worlds:.2f}, "
                f"not shown varied {unshown / args.worlds:.2f}"
            )


if __name__ == "__main__":
    main()
