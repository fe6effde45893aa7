"""Near-duplicate detection (``galgen_lightning.data.dedup.duplicate_mask``): what it catches,
what it wrongly drops, how long it takes.

Test sets:

* **Copies.** The first ``--distinct`` built-in synthetic galaxies, followed (in random order)
  by ``--copies`` copies of each kind, each of a different galaxy of that set: exact; with
  Gaussian noise of standard deviation 1% of the image's pixel range (max - min); shifted by
  1, 2 and 3 px with ``np.roll`` and as a crop (the pixels shifted out are lost, the strip
  shifted in is taken from another galaxy of the set: new sky, sometimes a source), one axis
  by exactly ``s`` px and the other by a random amount in ``-s .. s``; each of the 7
  non-identity flips/right-angle rotations; and all at once (a random flip/rotation, a crop
  shift of 1-3 px and 1% noise). A copy is caught when it is dropped.
* **Distinct galaxies falsely dropped**: of the first ``--distinct`` galaxies in the same run
  (their mask does not depend on the copies after them).
* **Blob set** (the reviewer's): 2,100 distinct 64x64 images (a Gaussian blob of peak 1,
  width 2-6 px, centred within 8 px of the middle, plus Gaussian noise of standard deviation
  0.05), 600 exact copies and 300 copies with 1% noise of random distinct ones, shuffled.
  Ideal: 2,100 kept, one per distinct image. Also shown for the former rule (correlation above
  0.95 at 16x16 with an earlier image).
* **Speed**: ``duplicate_mask`` on the first ``--n`` galaxies at ``--image-size``, in a fresh
  process: wall time and peak resident memory (total, and above the loaded images).

Prints a Markdown table, then one JSON line per row.

Examples:
    python benchmarks/bench_dedup.py                  # 25,000 galaxies at 64 px (renders once, cached)
    python benchmarks/bench_dedup.py --quick          # a smaller run, about a minute
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

from galgen_lightning.data.dedup import dihedral_views, duplicate_mask
from galgen_lightning.data.sources.synthetic import SyntheticGalaxies
from galgen_lightning.metrics import DIHEDRAL_NAMES


def _noisy(x: np.ndarray, rng: np.random.Generator, level: float = 0.01) -> np.ndarray:
    """``x`` plus Gaussian noise of standard deviation ``level`` times its pixel range."""
    return (x + level * float(x.max() - x.min()) * rng.standard_normal(x.shape)).astype(np.float32)


def _offset(s: int, rng: np.random.Generator) -> tuple[int, int]:
    """A shift with one axis at exactly +-``s`` and the other anywhere in ``-s .. s``."""
    a, b = int(rng.choice([-s, s])), int(rng.integers(-s, s + 1))
    return (a, b) if rng.random() < 0.5 else (b, a)


def _crop_shift(x: np.ndarray, dy: int, dx: int, other: np.ndarray) -> np.ndarray:
    """``x``'s scene seen from ``(dy, dx)`` px away: what leaves the frame is lost, the strip
    that enters is ``other``'s (new content)."""
    y = np.roll(x, (dy, dx), axis=(0, 1))
    if dy > 0:
        y[:dy] = other[:dy]
    elif dy < 0:
        y[dy:] = other[dy:]
    if dx > 0:
        y[:, :dx] = other[:, :dx]
    elif dx < 0:
        y[:, dx:] = other[:, dx:]
    return y


def _view(x: np.ndarray, t: int) -> np.ndarray:
    return dihedral_views(torch.from_numpy(np.ascontiguousarray(x))[None])[0, t].numpy()


def copy_kinds() -> list[str]:
    kinds = ["exact", "noise 1%"]
    kinds += [f"np.roll {s} px" for s in (1, 2, 3)] + [f"crop shift {s} px" for s in (1, 2, 3)]
    kinds += list(DIHEDRAL_NAMES[1:]) + ["flip/rotation + crop shift 1-3 px + noise 1%"]
    return kinds


def make_copy(kind: str, x: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "exact":
        return x.copy()
    if kind == "noise 1%":
        return _noisy(x, rng)
    if kind.startswith("np.roll"):
        return np.roll(x, _offset(int(kind.split()[1]), rng), axis=(0, 1))
    if kind.startswith("crop shift"):
        return _crop_shift(x, *_offset(int(kind.split()[2]), rng), other)
    if kind in DIHEDRAL_NAMES:
        return _view(x, DIHEDRAL_NAMES.index(kind))
    y = _view(x, int(rng.integers(1, 8)))
    return _noisy(_crop_shift(y, *_offset(int(rng.integers(1, 4)), rng), other), rng)


def legacy_mask(images: np.ndarray, threshold: float = 0.95, side: int = 16) -> np.ndarray:
    """The former rule, for comparison: correlation above ``threshold`` with an earlier image,
    both area-downsampled to ``side`` x ``side`` (exact copies included)."""
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    v = F.interpolate(t, size=(side, side), mode="area").flatten(1) if t.shape[-1] > side else t.flatten(1)
    v = v - v.mean(dim=1, keepdim=True)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    drop = np.zeros(len(v), dtype=bool)
    for start in range(0, len(v), 2048):
        sims = v[start : start + 2048] @ v[: start + 2048].T
        later = torch.arange(sims.shape[1])[None, :] >= torch.arange(start, start + len(sims))[:, None]
        sims[later] = -1.0
        drop[start : start + len(sims)] = (sims.max(dim=1).values > threshold).numpy()
    return drop


def copies_rows(galaxies: np.ndarray, copies: int, seed: int) -> list[dict]:
    """Catch rates per kind of copy and false drops among the distinct galaxies."""
    rng = np.random.default_rng(seed)
    n = len(galaxies)
    kinds = copy_kinds()
    sources = rng.choice(n, size=len(kinds) * copies, replace=len(kinds) * copies > n)
    made, labels = [], []
    for i, src in enumerate(sources):
        kind = kinds[i // copies]
        other = galaxies[(src + 1 + rng.integers(n - 1)) % n]
        made.append(make_copy(kind, galaxies[src], other, rng))
        labels.append(kind)
    order = rng.permutation(len(made))
    extra = np.stack(made)[order]
    labels = np.array(labels)[order]
    t0 = time.perf_counter()
    drop = duplicate_mask(np.concatenate([galaxies, extra]))
    wall = time.perf_counter() - t0
    rows = []
    for kind in kinds:
        caught = drop[n:][labels == kind]
        rows.append({"test": f"caught: {kind}", "count": int(caught.sum()), "of": int(len(caught))})
    fp = drop[:n]
    rows.append(
        {"test": "distinct synthetic galaxies falsely dropped", "count": int(fp.sum()), "of": n, "wall_s": round(wall, 1)}
    )
    old = legacy_mask(galaxies)
    rows.append({"test": "  (former rule: 16x16 correlation > 0.95)", "count": int(old.sum()), "of": n})
    return rows


def blob_set(image_size: int, n_distinct: int, n_exact: int, n_noisy: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The reviewer's set, shuffled: images and the distinct image each one shows."""
    rng = np.random.default_rng(seed)
    s = image_size
    scale = s / 64
    y, x = np.mgrid[:s, :s].astype(np.float32)
    cy, cx = (rng.uniform(s / 2 - 8 * scale, s / 2 + 8 * scale, (2, n_distinct))).astype(np.float32)
    width = rng.uniform(2 * scale, 6 * scale, n_distinct).astype(np.float32)
    blobs = np.exp(-((y - cy[:, None, None]) ** 2 + (x - cx[:, None, None]) ** 2) / (2 * width[:, None, None] ** 2))
    distinct = (blobs + 0.05 * rng.standard_normal((n_distinct, s, s))).astype(np.float32)
    src = rng.integers(n_distinct, size=n_exact + n_noisy)
    copies = distinct[src].copy()
    for i in range(n_exact, n_exact + n_noisy):
        copies[i] = _noisy(copies[i], rng)
    images = np.concatenate([distinct, copies])
    group = np.concatenate([np.arange(n_distinct), src])
    order = rng.permutation(len(images))
    return images[order], group[order]


def blob_rows(image_size: int, scale: float, seed: int) -> list[dict]:
    n_distinct, n_exact, n_noisy = round(2100 * scale), round(600 * scale), round(300 * scale)
    images, group = blob_set(image_size, n_distinct, n_exact, n_noisy, seed)
    rows = []
    for name, mask in (("", duplicate_mask), ("  (former rule) ", legacy_mask)):
        t0 = time.perf_counter()
        drop = mask(images)
        wall = time.perf_counter() - t0
        kept = np.bincount(group[~drop], minlength=n_distinct)
        rows.append(
            {
                "test": f"{name}blob set: images kept (ideal {n_distinct})",
                "count": int((~drop).sum()),
                "of": len(images),
                "wall_s": round(wall, 1),
            }
        )
        rows.append(
            {"test": f"{name}blob set: distinct images lost (no copy kept)", "count": int((kept == 0).sum()), "of": n_distinct}
        )
        rows.append(
            {
                "test": f"{name}blob set: copies missed (two or more kept)",
                "count": int(np.clip(kept - 1, 0, None).sum()),
                "of": n_exact + n_noisy,
            }
        )
    return rows


def _rss_mib() -> float:
    """This process's resident memory now (Linux), or its peak so far elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed_child(n: int, image_size: int, queue: multiprocessing.Queue) -> None:
    images = SyntheticGalaxies(size=max(n, 1)).load(n, image_size)
    before = peak = _rss_mib()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, _rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    drop = duplicate_mask(images)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    peak = max(peak, _rss_mib())
    queue.put({"wall_s": wall, "peak_rss_mib": peak, "above_loaded_mib": peak - before, "dropped": int(drop.sum())})


def speed_row(n: int, image_size: int) -> dict:
    """``duplicate_mask`` on ``n`` galaxies in a fresh (spawned) process: time and memory."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_timed_child, args=(n, image_size, queue))
    child.start()
    result = queue.get()
    child.join()
    return {
        "test": f"speed: {n:,} galaxies of {image_size}x{image_size} (count: dropped)",
        "count": int(result["dropped"]),
        "of": n,
        "wall_s": round(result["wall_s"], 1),
        "peak_rss_mib": round(result["peak_rss_mib"]),
        "above_loaded_mib": round(result["above_loaded_mib"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=25000, help="galaxies for the speed run")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--distinct", type=int, default=10000, help="distinct galaxies (false drops; copies are made of them)")
    parser.add_argument("--copies", type=int, default=200, help="copies of each kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2,000 galaxies, 20 copies per kind, a third of the blob set")
    args = parser.parse_args()
    if args.quick:
        args.n, args.distinct, args.copies = min(args.n, 2000), min(args.distinct, 2000), min(args.copies, 20)
    blob_scale = 1 / 3 if args.quick else 1.0

    galaxies = SyntheticGalaxies(size=max(args.n, args.distinct)).load(max(args.n, args.distinct), args.image_size)
    rows = copies_rows(galaxies[: args.distinct], args.copies, args.seed)
    rows += blob_rows(args.image_size, blob_scale, args.seed)
    rows.append(speed_row(args.n, args.image_size))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"duplicate_mask defaults, {args.image_size}x{args.image_size} px; torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs ({platform.machine()}), 1-minute load average at the end {load:.1f}"
    )
    print()
    print("| test | count | of | rate |")
    print("|---|---|---|---|")
    for r in rows:
        extra = ""
        if "peak_rss_mib" in r:
            extra = (
                f": {r['wall_s']} s, peak memory {r['peak_rss_mib']:,} MiB "
                f"({r['above_loaded_mib']:,} MiB above the loaded images)"
            )
        print(f"| {r['test']}{extra} | {r['count']:,} | {r['of']:,} | {100 * r['count'] / max(r['of'], 1):.1f}% |")
    print()
    for r in rows:
        print(json.dumps({"image_size": args.image_size, **r}))


if __name__ == "__main__":
    main()
