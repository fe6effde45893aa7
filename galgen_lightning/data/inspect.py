"""``galgen data convert`` and ``galgen data inspect``: a source's images before training on them.

``convert`` runs the source's conversion (or rendering) into its cache, the very cache
``galgen fit`` then reads when given the same source options and ``data.image_size``.

``inspect`` loads a source (converting what is missing), prints its counts (inputs, usable,
rejected per reason, near-duplicates), pixel statistics and, with ``--nearest``, the held-out
nearest-training statistic of docs/data.md, and writes to ``--out``:

- ``images.png``: a grid of random usable images;
- ``rejected.png``: rejected inputs, each titled with its reason (readers that keep the
  reasons: FITS cutouts, arrays, image folders);
- ``summary.json``: every number printed.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from galgen_lightning.data.sources.base import GalaxySource
from galgen_lightning.errors import GalgenError
from galgen_lightning.files import make_dir, write_error


def _cache_folder(source: GalaxySource, image_size: int) -> Path | None:
    """Where the source keeps its converted images at ``image_size`` (None: no cache)."""
    from galgen_lightning.data.sources.reader import CachedReader
    from galgen_lightning.data.sources.synthetic import SyntheticGalaxies

    if isinstance(source, CachedReader):
        return source.chunks(image_size, open_root=False).folder
    if isinstance(source, SyntheticGalaxies):
        return source.folder(image_size)
    return None


def _rejections(info: dict) -> tuple[int | None, dict[str, int]]:
    """``(inputs, rejected per reason)`` from a source's ``describe()``."""
    from galgen_lightning.data.sources.reader import REASONS

    report = info.get("report") or {}
    if "by_reason" in report:  # the readers
        return info.get("inputs"), {REASONS.get(k, k): int(v) for k, v in report["by_reason"].items()}
    if "detected" in report:  # the Hubble Deep Field: sources detected, and dropped per reason
        from galgen_lightning.data.sources.hxdf import DROPPED

        return int(report["detected"]), {DROPPED.get(k, k): int(v) for k, v in report.items() if k != "detected" and v}
    return info.get("inputs"), {}


def _rejected_text(by_reason: dict[str, int]) -> str:
    total = sum(by_reason.values())
    if not total:
        return "none rejected"
    return f"{total:,} rejected ({', '.join(f'{n:,} {r}' for r, n in by_reason.items() if n)})"


def _check_size(image_size: int) -> None:
    if image_size < 4:
        raise GalgenError(f"--image_size must be at least 4, got {image_size}")


def _load(source: GalaxySource, image_size: int, count: int | None) -> tuple[np.ndarray, int]:
    available = source.available()
    if count is not None and count < 1:
        raise GalgenError(f"--count must be positive, got {count}")
    want = available if count is None else min(count, available)
    images = source.load(want, image_size)
    return images, source.available()  # after the conversion: what the source now knows it holds


# ============================================================================ convert
def convert(source: GalaxySource, image_size: int = 64, count: int | None = None) -> dict:
    """Convert a source into its cache ahead of training (the cache galgen fit reads).

    Give the same source options and image size as the fit (e.g. those of
    configs/data/fits.yaml: ``--source.crop 256``), else fit converts into another cache.

    Args:
        source: where the images come from, as data.source of galgen fit: a class path and its
            options, e.g. ``--source galgen_lightning.data.FitsCutouts --source.directory DIR``.
        image_size: side of the converted images (the fit's data.image_size).
        count: convert until this many usable images exist (default: every input).

    Returns:
        The counts.
    """
    _check_size(image_size)
    started = time.perf_counter()
    images, available = _load(source, image_size, count)
    elapsed = time.perf_counter() - started
    info = source.describe()
    inputs, by_reason = _rejections(info)
    folder = _cache_folder(source, image_size)
    report = info.get("report") or {}
    complete = report.get("complete", True)
    read = report.get("converted", inputs)
    head = f"{read:,} of {inputs:,} inputs read, " if inputs is not None and read is not None else ""
    print(
        f"galgen: data convert: {source.label(info)}: {head}{len(images):,} usable images at {image_size}px, "
        f"{_rejected_text(by_reason)}, in {elapsed:.1f} s{'' if complete else ' (not every input converted: --count)'}"
        f"{f'; cache {folder}' if folder else ''}",
        flush=True,
    )
    return {
        "inputs": inputs,
        "usable": len(images),
        "rejected": by_reason,
        "seconds": round(elapsed, 2),
        "cache": str(folder) if folder else None,
    }


# ============================================================================ inspect
def _pixel_stats(images: np.ndarray) -> dict[str, float]:
    x = images.astype(np.float64, copy=False)
    q = np.quantile(x, [0.01, 0.5, 0.99])
    per_image = x.reshape(len(x), -1)
    return {
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "max": float(x.max()),
        "p01": float(q[0]),
        "median": float(q[1]),
        "p99": float(q[2]),
        "zero_fraction": float((x == 0).mean()),
        "one_fraction": float((x >= 1).mean()),
        "image_mean_std": float(per_image.mean(axis=1).std()),
        "flat_images": int((per_image.std(axis=1) < 1e-6).sum()),
    }


def _rejected_inputs(source: GalaxySource, image_size: int) -> list[tuple[str, Any, str, str]]:
    """``(name, input, reason, detail)`` of every rejected input converted so far (readers only)."""
    from galgen_lightning.data.sources.reader import REASONS, CachedReader

    if not isinstance(source, CachedReader):
        return []
    names, inputs, _ = source._listing()
    cache = source.chunks(image_size, open_root=False)
    out = []
    for k, (start, _stop) in enumerate(cache.bounds):
        chunk = cache.read(k)
        if chunk is None:  # not converted yet, or damaged (removed, with a warning): the next load converts it
            break
        for i, (reason, detail) in enumerate(zip(chunk.reasons.tolist(), chunk.details.tolist())):
            if reason:
                out.append((names[start + i], inputs[start + i], REASONS.get(reason, reason), detail))
    return out


def _stretch(image: np.ndarray) -> np.ndarray:
    """An asinh view of raw pixels for display (NaN kept, to be drawn in red)."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return image
    low, high = np.percentile(finite, [1, 99.5])
    scale = max(high - low, 1e-12)
    return np.arcsinh(10 * (image - low) / scale) / np.arcsinh(10)


def _preview(source: GalaxySource, item: Any) -> np.ndarray | None:
    """A 2-D view of a rejected input, or None when it cannot be read at all."""
    from galgen_lightning.data.sources.arrays import ArrayFile, array_layout, rows_to_gray
    from galgen_lightning.data.sources.fits import FitsCutouts, read_fits_planes
    from galgen_lightning.data.sources.images import ImageFolder
    from galgen_lightning.data.sources.reader import Reject

    try:
        if isinstance(source, FitsCutouts):
            planes = []
            for path in item:
                if path is not None:
                    planes.extend(read_fits_planes(path)[0])
            shapes = {p.shape for p in planes}
            if not planes or len(shapes) != 1:
                return planes[0].astype(np.float64) if planes else None
            return _stretch(np.mean([np.asarray(p, dtype=np.float64) for p in planes], axis=0))
        if isinstance(source, ImageFolder):
            from PIL import Image

            with Image.open(item) as im:
                return np.asarray(im.convert("L"), dtype=np.float64) / 255.0
        if isinstance(source, ArrayFile):
            with source._open() as arr:
                row = np.asarray(arr[int(item) : int(item) + 1])
            return rows_to_gray(row, array_layout(row.shape) or "nhw")[0]
    except (Reject, OSError, ValueError, SyntaxError, GalgenError):
        return None
    return None


def _grid(panels: list[tuple[np.ndarray | None, str]], path: Path, title: str, columns: int, unit_range: bool = False) -> None:
    """Panels with their titles in a grid; ``unit_range`` draws every image on the same [0, 1] scale."""
    from galgen_lightning.plotting import pyplot, save_figure

    plt = pyplot()

    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.1 * rows + 0.4), squeeze=False)
    cmap = plt.colormaps["gray"].with_extremes(bad="red")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image, text) in zip(axes.ravel(), panels):
        if image is not None:
            limits = {"vmin": 0.0, "vmax": 1.0} if unit_range else {}
            ax.imshow(np.ma.masked_invalid(image), cmap=cmap, interpolation="nearest", **limits)
        else:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", color="red", transform=ax.transAxes)
        ax.set_title(text, fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        save_figure(fig, path, pdf=False, dpi=110)
    except OSError as e:
        raise write_error(f"--out {path.parent}: {path.name}", e) from None


def _wrap(text: str, width: int = 28, lines: int = 3) -> str:
    words, out, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            out.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    out.append(line)
    return "\n".join(out[:lines]) + (" ..." if len(out) > lines else "")


def _nearest(val: np.ndarray, train: np.ndarray) -> dict[str, float]:
    import torch

    from galgen_lightning.metrics import nearest_similarity

    sims, _ = nearest_similarity(
        torch.from_numpy(np.ascontiguousarray(val))[:, None],
        torch.from_numpy(np.ascontiguousarray(train))[:, None],
        mean_removed=True,
        transforms=True,
    )
    s = sims.double().numpy()
    return {
        "median": float(np.median(s)),
        "p99": float(np.quantile(s, 0.99)),
        "mean": float(s.mean()),
        "heldout": len(val),
        "train": len(train),
    }


def inspect(
    source: GalaxySource,
    image_size: int = 64,
    count: int | None = None,
    out: str = "data-inspect",
    grid: int = 8,
    seed: int = 0,
    n: int | None = None,
    n_val: int = 500,
    nearest: bool = False,
    dedup_threshold: float = 0.95,
) -> dict:
    """Counts, pixel statistics and image grids of a source, before training on it.

    Args:
        source: where the images come from, as data.source of galgen fit: a class path and its
            options, e.g. ``--source galgen_lightning.data.ImageFolder --source.directory DIR``.
        image_size: side of the images (converted and cached as galgen fit would).
        count: look at the first this many usable images (default: all; a large FITS folder is
            converted whole).
        out: folder for images.png, rejected.png and summary.json.
        grid: columns (and rows) of the grid of random images.
        seed: which random images the grid shows.
        n: also split as galgen fit does at this N (with n_val): the duplicates it removes.
        n_val: held-out images of that split.
        nearest: the held-out nearest-training statistic at n (docs/data.md): for each held-out
            image, the highest mean-removed correlation with any of the n images of subset A,
            also under flips and rotations.
        dedup_threshold: correlation above which an image repeats an earlier one (as
            data.dedup_threshold).

    Returns:
        The summary (also written to ``<out>/summary.json``).
    """
    from galgen_lightning.data.split import duplicate_mask

    _check_size(image_size)
    if grid < 1:
        raise GalgenError(f"--grid must be positive, got {grid}")
    if nearest and n is None:
        raise GalgenError("--nearest needs --n: the statistic compares held-out images with the n training images of subset A")
    outdir = Path(out).expanduser()
    make_dir(outdir, "--out")

    started = time.perf_counter()
    images, available = _load(source, image_size, count)
    info = source.describe()
    inputs, by_reason = _rejections(info)
    label = source.label(info)
    summary: dict[str, Any] = {
        "source": info,
        "image_size": image_size,
        "available": available,
        "inputs": inputs,
        "usable": len(images),
    }
    summary["rejected"] = by_reason
    head = f"{inputs:,} inputs, " if inputs is not None else ""
    print(
        f"galgen: data inspect: {label}: {head}{len(images):,} usable images at {image_size}px, {_rejected_text(by_reason)}",
        flush=True,
    )

    drop = duplicate_mask(images, dedup_threshold)
    summary["duplicates"] = {"images": len(images), "removed": int(drop.sum()), "threshold": dedup_threshold}
    line = (
        f"galgen: duplicates: {int(drop.sum()):,} of {len(images):,} ({drop.mean():.1%}) repeat an earlier image "
        f"(correlation > {dedup_threshold:g})"
    )
    dm = None
    split_error: GalgenError | None = None
    if n is not None:
        from galgen_lightning.data.datamodule import GalaxyPairDataModule

        try:
            dm = GalaxyPairDataModule(
                source=source, image_size=image_size, n=n, n_val=n_val, seed=seed, dedup_threshold=dedup_threshold
            )
            dm.setup()
        except GalgenError as e:  # too few distinct images for this n: said at the end, after the grids are written
            dm, split_error = None, e
            summary["split"] = {"n": n, "n_val": n_val, "seed": seed, "error": str(e)}
            line += f"; no split at n={n}, n_val={n_val} (see below)"
        else:
            split = dm.split
            assert split is not None
            summary["split"] = {
                "n": n,
                "n_val": n_val,
                "seed": seed,
                "pool": split.n_pool,
                "duplicates_removed": split.n_duplicates,
            }
            line += f"; at n={n}, n_val={n_val}: {split.n_duplicates:,} removed from a pool of {split.n_pool:,}"
    print(line, flush=True)

    stats = _pixel_stats(images)
    summary["pixels"] = stats
    print(
        f"galgen: pixels: mean {stats['mean']:.4f}, std {stats['std']:.4f}, min {stats['min']:.4f}, 1% {stats['p01']:.4f}, "
        f"median {stats['median']:.4f}, 99% {stats['p99']:.4f}, max {stats['max']:.4f}; {stats['zero_fraction']:.2%} at 0, "
        f"{stats['one_fraction']:.2%} at 1; per-image mean varies by {stats['image_mean_std']:.4f}; "
        f"{stats['flat_images']} flat images",
        flush=True,
    )

    if nearest and dm is not None:
        near = _nearest(dm.subset_images("val")[:, 0].numpy(), dm.subset_images("a")[:, 0].numpy())
        summary["nearest"] = near
        print(
            f"galgen: nearest training image (n={n}, {near['heldout']} held-out images): median {near['median']:.4f}, "
            f"99th percentile {near['p99']:.4f}, mean {near['mean']:.4f} (a memorizing model's samples sit at 0.99 and above)",
            flush=True,
        )

    written = []
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), size=min(grid * grid, len(images)), replace=False))
    panels = [(images[i], f"#{i}" + (" (dup)" if drop[i] else "")) for i in pick]
    _grid(
        panels,
        outdir / "images.png",
        f"{label}: {len(pick)} random of {len(images):,} usable images at {image_size}px (0 black, 1 white)",
        grid,
        unit_range=True,
    )
    written.append(outdir / "images.png")

    rejected = _rejected_inputs(source, image_size)
    summary["rejected_shown"] = []
    stale = outdir / "rejected.png"
    if rejected:
        show = [rejected[i] for i in np.sort(rng.choice(len(rejected), size=min(grid * grid, len(rejected), 25), replace=False))]
        rpanels = [
            (_preview(source, item), _wrap(f"{Path(name).name}: {detail or reason}", lines=4))
            for name, item, reason, detail in show
        ]
        _grid(rpanels, stale, f"{label}: {len(show)} of {len(rejected):,} rejected inputs", min(grid, 5))
        summary["rejected_shown"] = [{"name": name, "reason": reason, "detail": detail} for name, _, reason, detail in show]
        written.append(stale)
    elif stale.exists():
        stale.unlink()  # from an earlier inspection: it would not describe this one

    summary["seconds"] = round(time.perf_counter() - started, 2)
    try:
        (outdir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    except OSError as e:
        raise write_error(f"--out {outdir}: summary.json", e) from None
    written.append(outdir / "summary.json")
    note = (
        ""
        if rejected
        else (" (no rejected input to show)" if not by_reason else " (this source keeps no image of its rejected inputs)")
    )
    print(f"galgen: wrote {', '.join(str(p) for p in written)}{note}", flush=True)
    if split_error is not None:
        raise GalgenError(f"galgen data inspect --n {n}: {split_error}")
    return summary
