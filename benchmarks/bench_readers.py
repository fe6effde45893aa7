"""How fast FITS cutouts are converted: cutouts per second with 1, 2, ... worker processes.

Writes ``--count`` cutouts like the paper's (one ``(3, 512, 512)`` float32 g, r, z cube per
file, 3 MB, with a galaxy, noise and the header keywords of the Legacy Survey cutout service)
into a scratch folder, then converts them with :class:`galgen_lightning.data.FitsCutouts`
(crop 256, make_lupton_rgb, 64x64 grayscale) once per worker count, each time into an empty
cache, and prints one JSON document: throughput per worker count, and the time of one cutout's
steps (read, Lupton mapping, resize) in this process. The scratch folder is deleted at the end.

Examples:
    python benchmarks/bench_readers.py --workers 1 2
    python benchmarks/bench_readers.py --count 512 --workers 1 2 4 8 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def write_cutouts(folder: Path, count: int, side: int, seed: int = 0) -> float:
    """``count`` DR9-like cubes (float32, nanomaggies-like values); returns the bytes written."""
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    total = 0
    for i in range(count):
        r0 = rng.uniform(3, 25)
        blob = np.exp(-np.hypot(xx - side / 2 - rng.normal(0, 3), yy - side / 2 - rng.normal(0, 3)) / r0)
        cube = np.stack([f * blob + rng.normal(0, 0.01, (side, side)).astype(np.float32) for f in rng.uniform(0.2, 3, 3)])
        hdu = fits.PrimaryHDU(cube.astype(np.float32))
        hdu.header["BANDS"] = "grz"
        for b, name in enumerate("grz"):
            hdu.header[f"BAND{b}"] = name
        path = folder / f"cutout_{i:06d}.fits"
        hdu.writeto(path)
        total += path.stat().st_size
    return total


def step_times(path: Path, crop: int, image_size: int, repeat: int = 20) -> dict[str, float]:
    """Milliseconds per cutout of each step, in this process (median of ``repeat``)."""
    from galgen_lightning.data.sources.fits import FitsRecipe, fits_to_gray, read_fits_planes
    from galgen_lightning.data.synthetic import lupton_gray

    recipe = FitsRecipe(None, "zrg", crop, 8.0, 0.2, image_size)
    times: dict[str, list[float]] = {"read_ms": [], "lupton_ms": [], "whole_ms": []}
    for _ in range(repeat):
        t0 = time.perf_counter()
        planes, bands = read_fits_planes(str(path))
        t1 = time.perf_counter()
        a = (planes[0].shape[0] - crop) // 2
        lupton_gray(np.stack([p[a : a + crop, a : a + crop] for p in planes]).astype(np.float64), 8.0, 0.2)
        t2 = time.perf_counter()
        fits_to_gray(planes, bands, recipe, str(path))
        t3 = time.perf_counter()
        times["read_ms"].append(t1 - t0)
        times["lupton_ms"].append(t2 - t1)
        times["whole_ms"].append(t1 - t0 + t3 - t2)
    return {k: round(1e3 * float(np.median(v)), 2) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=192, help="cutouts to write and convert")
    parser.add_argument("--side", type=int, default=512, help="cutout side (DR9 paper data: 512)")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--scratch", default=None, help="folder for the cutouts and caches (default: a temporary one)")
    args = parser.parse_args()

    from galgen_lightning.data import FitsCutouts

    if args.scratch:
        Path(args.scratch).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="galgen-bench-", dir=args.scratch))
    try:
        cutouts = scratch / "cutouts"
        cutouts.mkdir()
        t = time.perf_counter()
        nbytes = write_cutouts(cutouts, args.count, args.side)
        written = time.perf_counter() - t
        steps = step_times(next(cutouts.iterdir()), args.crop, args.image_size)
        runs = []
        for workers in args.workers:
            src = FitsCutouts(str(cutouts), crop=args.crop, workers=workers, cache_dir=str(scratch / f"cache-{workers}"))
            t = time.perf_counter()
            images = src.load(args.count, args.image_size)
            seconds = time.perf_counter() - t
            runs.append({"workers": workers, "seconds": round(seconds, 2), "cutouts_per_s": round(len(images) / seconds, 1)})
            print(
                f"workers={workers}: {len(images)} cutouts in {seconds:.2f} s = {len(images) / seconds:.1f} cutouts/s", flush=True
            )
        result = {
            "benchmark": "fits_conversion",
            "count": args.count,
            "cutout": f"3x{args.side}x{args.side} float32 ({nbytes / args.count / 1e6:.1f} MB)",
            "crop": args.crop,
            "image_size": args.image_size,
            "write_s": round(written, 1),
            "one_cutout_in_process": steps,
            "runs": runs,
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(),
        }
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
