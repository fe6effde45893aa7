"""Real galaxy images: FITS cutouts, arrays (``.npy``, ``.npz``, HDF5) and PNG/JPEG folders.

Every reader here converts its input once into galgen's preprocessed array, on disk, in chunks:

- the cache folder is keyed by :data:`READER_VERSION`, every conversion parameter and a
  fingerprint of the input (file names, sizes and modification times), so changing any of them
  converts again into a new folder and never reuses a stale one; a folder whose ``meta.json``
  disagrees with what it should hold is reported, not reused;
- each chunk (``chunk`` inputs) is written atomically as soon as it is done, so an interrupted
  conversion resumes where it stopped, and a failure (a full disk, Ctrl-C) loses nothing
  already written;
- FITS cutouts and image files are converted in parallel processes, with a progress bar;
- conversion stops once ``load`` has the images it was asked for: a 10-image experiment on a
  306,000-cutout directory converts a few hundred cutouts, not all of them.

Inputs that cannot be used are rejected and counted per reason (NaN pixels, more than 30% zero
pixels, unreadable or truncated files, the wrong bands, mismatched band shapes); the count and
the first few names are printed once, and recorded in :meth:`CachedReader.describe` (so in the
run's manifest). ``strict=True`` makes a broken file fatal instead. User mistakes raise
:class:`~galgen_lightning.errors.GalgenError` with one line naming the file or option.

``available()`` is the exact number of usable images once every input has been converted (the
count is kept in the cache); before that it is the number of inputs, an upper bound.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galgen_lightning.data.sources import GalaxySource, default_cache_dir, make_cache_dir, resize, write_atomic, write_json_atomic
from galgen_lightning.errors import GalgenError

READER_VERSION: int = 1
"""Bump whenever a conversion changes: it keys the on-disk cache of converted images."""

MAX_ZERO_FRACTION = 0.3  # the paper's source pipeline drops cutouts with more zero pixels in a band
FITS_PATTERN = "**/*.fit*"  # .fits, .fit, .fits.gz, .fits.fz, in subfolders too
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz", ".fz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SHOW = 5  # rejected names shown in the one-line summary

# Why an input was rejected; the first two are data quality (always skipped), the rest broken
# inputs (skipped unless ``strict``). FATAL is a configuration error: conversion stops.
NAN, ZEROS, UNREADABLE, BANDS, SHAPES, SMALL, FATAL = "nan", "zeros", "unreadable", "bands", "shapes", "small", "fatal"
REASONS = {
    NAN: "NaN or infinite pixels",
    ZEROS: f"more than {MAX_ZERO_FRACTION:.0%} zero pixels",
    UNREADABLE: "unreadable or truncated",
    BANDS: "wrong bands",
    SHAPES: "mismatched band shapes",
    SMALL: "smaller than the crop",
}
BROKEN = frozenset({UNREADABLE, BANDS, SHAPES, SMALL})

Result = tuple["np.ndarray | None", str, str]
"""What converting one input gives: ``(image or None, reason or "", detail or "")``."""


class Reject(Exception):
    """Raised inside a conversion to reject one input (becomes a :data:`Result`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160]}" if text else type(error).__name__


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _files_fingerprint(paths: Sequence[Path], root: Path) -> str:
    """SHA-1 over each file's path relative to ``root``, size and modification time."""
    h = hashlib.sha1()
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _list_files(directory: Path, pattern: str, suffixes: Sequence[str], option: str) -> list[Path]:
    """Files under ``directory`` matching ``pattern`` with one of ``suffixes``, sorted by relative path."""
    if not directory.exists():
        raise GalgenError(f"{option}: {directory} does not exist")
    if not directory.is_dir():
        raise GalgenError(f"{option}: {directory} is not a directory")
    try:
        found = [p for p in directory.glob(pattern) if p.is_file() and p.name.lower().endswith(tuple(suffixes))]
    except OSError as e:
        raise GalgenError(f"{option}: cannot list {directory}: {e.strerror}") from None
    if not found:
        raise GalgenError(f"{option}: no {'/'.join(s.lstrip('.') for s in suffixes[:3])} files matching {pattern!r} in {directory}")
    return sorted(found, key=lambda p: p.relative_to(directory).as_posix())


def _positive(value: float | int | None, option: str) -> None:
    if value is not None and value <= 0:
        raise GalgenError(f"{option} must be positive, got {value}")


@dataclass
class Chunk:
    """Converted images of a run of inputs: the usable images and, per input, why it was rejected."""

    images: np.ndarray  # (usable, S, S) float32
    reasons: np.ndarray  # (inputs,) str, "" for a usable input
    details: np.ndarray  # (inputs,) str

    @classmethod
    def pack(cls, results: Sequence[Result], image_size: int) -> Chunk:
        good = [img for img, reason, _ in results if not reason]
        images = np.stack(good).astype(np.float32) if good else np.zeros((0, image_size, image_size), np.float32)
        return cls(images, np.array([r for _, r, _ in results], dtype=str), np.array([d for _, _, d in results], dtype=str))

    def save(self, path: Path) -> None:
        write_atomic(path, lambda f: np.savez(f, images=self.images, reasons=self.reasons, details=self.details))

    @classmethod
    def read(cls, path: Path, inputs: int, image_size: int) -> Chunk | None:
        """Read and check a cached chunk; a broken or foreign one is never used: None, with a
        one-line warning, and the caller converts it again from the inputs (which it never modifies)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                chunk = cls(z["images"], z["reasons"], z["details"])
            shape = (int((chunk.reasons == "").sum()), image_size, image_size)
            problem = ""
            if chunk.images.dtype != np.float32 or chunk.images.shape != shape or len(chunk.reasons) != inputs or len(chunk.details) != inputs:
                problem = f"holds {chunk.images.dtype} {chunk.images.shape} for {len(chunk.reasons)} inputs, expected float32 {shape} for {inputs}"
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            problem = f"is unreadable ({type(e).__name__})"
        if not problem:
            return chunk
        print(f"galgen: warning: data cache {path} {problem}; converting it again from the inputs", file=sys.stderr, flush=True)
        try:
            path.unlink()
        except OSError:
            pass
        return None


class CachedReader(GalaxySource):
    """Base of the readers: chunked, resumable, parallel conversion into a keyed cache.

    A subclass lists its inputs (:meth:`_scan`), names its conversion parameters
    (:meth:`_params`) and gives a function that converts a list of inputs (:meth:`_converter`).

    Args:
        cache_dir: where converted images are kept (default: ``$GALGEN_CACHE_DIR`` or
            ``~/.cache/galgen``).
        workers: processes used for converting (default: all cores; 1 converts in-process).
        chunk: inputs per cached file (the unit of resuming).
        strict: stop at the first unreadable or malformed input instead of skipping it.
    """

    kind = "reader"
    unit = "file"
    option = "data.source"
    noun = ""  # what the inputs are, for messages: "<noun> in <location>"
    parallel = True

    def __init__(self, cache_dir: str | None = None, workers: int | None = None, chunk: int = 256, strict: bool = False) -> None:
        _positive(workers, "data.source.workers")
        _positive(chunk, "data.source.chunk")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.workers = workers
        self.chunk = chunk
        self.strict = strict
        self._scanned: tuple[list[str], list[Any], dict] | None = None
        self._report: dict | None = None
        self._printed: tuple | None = None
        self.location: Path | None = None  # the directory or file read (subclasses set it)

    # ------------------------------------------------------------------ hooks for subclasses
    def _scan(self) -> tuple[list[str], list[Any], dict]:
        """``(names, inputs, fingerprint)``: a name per input for reports, the (picklable)
        inputs handed to the converter, and what identifies the input data for the cache key."""
        raise NotImplementedError

    def _params(self) -> dict:
        """The conversion parameters (they key the cache and appear in :meth:`describe`)."""
        raise NotImplementedError

    def _converter(self, image_size: int) -> Callable[[list[Any]], list[Result]]:
        """A function converting a list of inputs; picklable when :attr:`parallel`."""
        raise NotImplementedError

    def _check_image_size(self, image_size: int) -> None:
        """Raise a :class:`GalgenError` when ``image_size`` cannot work with these options."""

    def _display(self, name: str) -> str:
        """How to name an input in a message."""
        return str(self.location / name) if self.location is not None else name

    # ------------------------------------------------------------------ the contract
    def _listing(self) -> tuple[list[str], list[Any], dict]:
        if self._scanned is None:
            self._scanned = self._scan()
        return self._scanned

    def _meta(self) -> dict:
        """What the cache folder holds: it keys the folder and is written to its ``meta.json``."""
        names, _, fingerprint = self._listing()
        meta = {"format": READER_VERSION, "reader": self.kind, "params": self._params(), "input": fingerprint, "count": len(names)}
        return json.loads(json.dumps(meta, default=str))

    def _root(self) -> Path:
        """The cache folder of this input and these parameters (all image sizes)."""
        base = self.cache_dir or default_cache_dir()
        return base / self.kind / f"v{READER_VERSION}-{_digest(self._meta())[:16]}"

    def _open_root(self) -> Path:
        """Create the cache folder and its ``meta.json``, or check that an existing one matches."""
        root = self._root()
        meta_path = root / "meta.json"
        expected = self._meta()
        problem = ""
        if meta_path.exists():
            try:
                found = json.loads(meta_path.read_text())
            except (OSError, ValueError) as e:
                found, problem = None, f"is unreadable ({type(e).__name__})"
            if found is not None and found != expected:
                # the folder's name is a digest of what meta.json must hold: a difference is damage
                diff = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k)) if isinstance(found, dict) else ["all"]
                problem = f"differs from what its folder is named for (in {', '.join(diff)})"
            if problem:
                print(f"galgen: warning: data cache {meta_path} {problem}; writing it again", file=sys.stderr, flush=True)
                write_json_atomic(meta_path, expected)
        else:
            make_cache_dir(root)
            write_json_atomic(meta_path, expected)
        return root

    def _summary(self) -> dict | None:
        """The counts of a complete conversion (any image size), if one has finished."""
        path = self._root() / "summary.json"
        try:
            summary = json.loads(path.read_text()) if path.exists() else None
        except (OSError, ValueError):
            summary = False
        if summary is None:
            return None
        if not isinstance(summary, dict) or not isinstance(summary.get("usable"), int) or summary["usable"] < 0:
            # derived data: ignore it with a warning; the next complete conversion writes it again
            print(f"galgen: warning: data cache {path} is unreadable or damaged; counting again", file=sys.stderr, flush=True)
            try:
                path.unlink()
            except OSError:
                pass
            return None
        return summary

    def available(self) -> int:
        """Usable images after rejection once everything was converted, else the number of inputs."""
        names, _, _ = self._listing()
        summary = self._summary()
        return int(summary["usable"]) if summary else len(names)

    def load(self, count: int, image_size: int) -> np.ndarray:
        """The first ``count`` usable images (fewer if the inputs run out), converting what is missing."""
        names, inputs, _ = self._listing()
        self._check_image_size(image_size)
        folder = self._open_root() / f"{image_size}px-chunk{self.chunk}"
        make_cache_dir(folder)
        bounds = [(a, min(a + self.chunk, len(inputs))) for a in range(0, len(inputs), self.chunk)]
        images: list[np.ndarray] = []
        reasons: list[str] = []
        details: list[str] = []
        have, k, converted = 0, 0, 0
        while k < len(bounds) and have < count:
            path = folder / f"chunk_{k:05d}.npz"
            cached = Chunk.read(path, bounds[k][1] - bounds[k][0], image_size) if path.exists() else None
            if cached is not None:
                found = [(k, cached)]
            else:
                run = self._missing_run(folder, k, bounds, count - have, len(reasons), have)
                converted += sum(bounds[j][1] - bounds[j][0] for j in run)
                found = self._convert(run, bounds, inputs, names, image_size, folder)
            for j, chunk in found:
                self._check(chunk, names, bounds[j][0])
                images.append(chunk.images)
                reasons.extend(chunk.reasons.tolist())
                details.extend(chunk.details.tolist())
                have += len(chunk.images)
                k = j + 1
        complete = k >= len(bounds)
        self._record(names, reasons, details, have, complete, converted)
        if have == 0:
            raise GalgenError(f"{self.option}: none of the {self._unit_text(len(names))} in {self._location()} is usable: {self._rejected_text()}")
        return np.concatenate(images)[:count]

    def describe(self) -> dict:
        """Source name, parameters, the input's size and, once loaded, what was rejected."""
        names, _, _ = self._listing()
        out = {"source": self.kind, "version": READER_VERSION, **self._params(), "inputs": len(names)}
        if self._report is not None:
            out["report"] = self._report
        return out

    # ------------------------------------------------------------------ conversion
    def _missing_run(self, folder: Path, k: int, bounds: list[tuple[int, int]], wanted: int, seen: int, usable: int) -> list[int]:
        """The chunks to convert next: enough for ``wanted`` more images at the usable rate seen so far."""
        rate = max(usable / seen, 0.05) if seen else 1.0
        n = max(1, math.ceil(wanted / rate / self.chunk))
        run = []
        for j in range(k, len(bounds)):
            if len(run) == n or (folder / f"chunk_{j:05d}.npz").exists():
                break
            run.append(j)
        return run

    def _piece_size(self, workers: int) -> int:
        """Inputs per task handed to a worker (small, so the workers share a chunk evenly)."""
        return max(1, min(16, math.ceil(self.chunk / workers)))

    def _worker_count(self) -> int:
        from galgen_lightning.parallel import default_workers

        return 1 if not self.parallel else (self.workers or default_workers())

    def _convert(
        self, run: list[int], bounds: list[tuple[int, int]], inputs: list[Any], names: list[str], image_size: int, folder: Path
    ) -> Iterator[tuple[int, Chunk]]:
        """Convert chunks ``run`` (in parallel pieces), write each when complete, yield them in order."""
        from tqdm.auto import tqdm

        workers = self._worker_count()
        total = sum(bounds[j][1] - bounds[j][0] for j in run)
        step = self._piece_size(workers)
        pieces = [(j, list(range(a, min(a + step, bounds[j][1])))) for j in run for a in range(bounds[j][0], bounds[j][1], step)]
        left = Counter(j for j, _ in pieces)
        convert = self._converter(image_size)
        print(
            f"galgen: converting {self._unit_text(total)} {bounds[run[0]][0]:,}-{bounds[run[-1]][1] - 1:,} of {len(inputs):,} "
            f"from {self._where()} at {image_size}px into {folder} ({workers} worker{'s' * (workers > 1)})",
            flush=True,
        )
        pending: dict[int, list[Result]] = {}
        with _results(convert, [[inputs[i] for i in idx] for _, idx in pieces], workers) as results:
            with tqdm(total=total, unit=self.unit, desc=f"galgen: {self.kind}", disable=None, leave=False, file=sys.stderr) as bar:
                for (j, idx), res in zip(pieces, results):
                    pending.setdefault(j, []).extend(res)
                    bar.update(len(idx))
                    left[j] -= 1
                    if left[j]:
                        continue
                    chunk = Chunk.pack(pending.pop(j), image_size)
                    self._check(chunk, names, bounds[j][0])  # before writing: a fatal chunk is never cached
                    chunk.save(folder / f"chunk_{j:05d}.npz")
                    yield j, chunk

    def _check(self, chunk: Chunk, names: list[str], start: int) -> None:
        """Stop on a configuration error, and on a broken input when ``strict``."""
        for i, (reason, detail) in enumerate(zip(chunk.reasons.tolist(), chunk.details.tolist())):
            if reason == FATAL:
                raise GalgenError(f"{self._display(names[start + i])}: {detail}")
            if self.strict and reason in BROKEN:
                raise GalgenError(f"{self._display(names[start + i])}: {detail} (data.source.strict is true; set it to false to skip such inputs)")

    # ------------------------------------------------------------------ reporting
    def _location(self) -> str:
        """The input's path, for messages."""
        return str(self.location) if self.location is not None else self.option

    def _where(self) -> str:
        """What and where the input is, for messages."""
        return f"{self.noun} in {self._location()}" if self.noun else self._location()

    def _unit_text(self, n: int) -> str:
        return f"{n:,} {self.unit}{'s' * (n != 1)}"

    def _record(self, names: list[str], reasons: list[str], details: list[str], usable: int, complete: bool, converted: int) -> None:
        """Keep the rejection counts (for :meth:`describe`), the summary of a complete conversion,
        and print one line when something was converted or the counts are new to this process."""
        rejected = [(names[i], r, d) for i, (r, d) in enumerate(zip(reasons, details)) if r]
        by_reason = Counter(r for _, r, _ in rejected)
        self._report = {
            "converted": len(reasons),
            "complete": complete,
            "usable": usable,
            "rejected": len(rejected),
            "by_reason": dict(sorted(by_reason.items())),
            "first_rejected": [f"{n} ({d})" for n, _, d in rejected[:20]],
        }
        if complete and self._summary() is None:
            write_json_atomic(self._root() / "summary.json", {"inputs": len(names), **self._report})
        key = (len(reasons), usable)
        if converted or (rejected and self._printed != key):
            print(f"galgen: {self._where()}: {len(reasons):,} of {self._unit_text(len(names))} read, {usable:,} usable, {self._rejected_text()}", flush=True)
        self._printed = key

    def _rejected_text(self) -> str:
        report = self._report or {}
        if not report.get("rejected"):
            return "none rejected"
        parts = ", ".join(f"{n} {REASONS.get(r, r)}" for r, n in report["by_reason"].items())
        first = "; ".join(report["first_rejected"][:SHOW])
        more = ", ..." if report["rejected"] > SHOW else ""
        return f"{report['rejected']} rejected ({parts}): {first}{more}"


def _results(convert: Callable[[list[Any]], list[Result]], tasks: list[list[Any]], workers: int) -> Any:
    """Results of ``convert`` over ``tasks`` in order, through :func:`galgen_lightning.parallel.imap`."""
    from galgen_lightning.parallel import imap

    return imap(convert, tasks, workers)


# =============================================================================== FITS cutouts
@dataclass(frozen=True)
class FitsRecipe:
    """How a FITS cutout becomes one grayscale image (picklable, sent to the workers).

    Attributes:
        bands: the band of each plane or HDU in the file (``None``: from the header keywords
            ``BANDS`` / ``BAND0``, ``BAND1``, ... / ``FILTER``, else ``"grz"``).
        rgb: the bands of the red, green and blue channels of ``make_lupton_rgb``.
        crop: side of the centred square cut before the colour mapping (``None``: the largest).
        q: Lupton asinh softening ``Q``.
        stretch: Lupton linear stretch.
        image_size: side of the result.
        max_zero_fraction: reject a cutout with more zero pixels than this in any used band.
    """

    bands: str | None
    rgb: str
    crop: int | None
    q: float
    stretch: float
    image_size: int
    max_zero_fraction: float = MAX_ZERO_FRACTION


def _header_bands(header: Any, planes: int) -> str | None:
    """Band letters from a header: ``BANDS`` ("grz"), or ``BAND0``, ``BAND1``, ..., or ``FILTER`` (one plane)."""
    text = header.get("BANDS")
    if isinstance(text, str) and len(text.strip()) == planes:
        return text.strip()
    letters = [header.get(f"BAND{i}") for i in range(planes)]
    if all(isinstance(b, str) and len(b.strip()) == 1 for b in letters):
        return "".join(b.strip() for b in letters)
    if planes == 1:
        for key in ("BAND", "FILTER"):
            value = header.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()[0]
    return None


def read_fits_planes(path: str) -> tuple[list[np.ndarray], str | None]:
    """The 2-D image planes of one FITS file, and their band letters if the headers name them.

    A file holds either one ``(bands, H, W)`` cube or one 2-D image per HDU (empty primary
    HDUs and tables are skipped; leading axes of length 1 are dropped).

    Raises:
        Reject: unreadable or truncated file, no image, or a layout that is neither.
    """
    from astropy.io import fits

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(path, memmap=False) as hdul:
                found = []
                for hdu in hdul:
                    if getattr(hdu, "is_image", False) and hdu.data is not None and hdu.data.size:
                        data = np.asarray(hdu.data)
                        while data.ndim > 2 and data.shape[0] == 1:
                            data = data[0]
                        found.append((data, hdu.header))
        except Exception as e:  # astropy raises many types (OSError, ValueError, TypeError, ...) on broken files
            failure: str | None = _first_line(e)
        else:
            failure = None
    truncated = [str(w.message).splitlines()[0][:160] for w in caught if "truncated" in str(w.message).lower()]
    if truncated:
        raise Reject(UNREADABLE, f"truncated FITS file ({truncated[0]})")
    if failure:
        raise Reject(UNREADABLE, f"unreadable FITS file ({failure})")
    if not found:
        raise Reject(BANDS, "holds no image data")
    if len(found) == 1 and found[0][0].ndim == 3:
        cube, header = found[0]
        return list(cube), _header_bands(header, len(cube))
    if all(data.ndim == 2 for data, _ in found):
        letters = [_header_bands(header, 1) for _, header in found]
        named = "".join(b for b in letters if b) if all(letters) else None
        return [data for data, _ in found], named
    shapes = ", ".join(str(data.shape) for data, _ in found)
    raise Reject(BANDS, f"holds images of shapes {shapes}; expected one (bands, H, W) cube or one 2-D image per HDU")


def fits_to_gray(planes: Sequence[np.ndarray], file_bands: str | None, recipe: FitsRecipe, name: str) -> np.ndarray:
    """Check, crop and colour-map the band planes of one cutout into one grayscale image.

    NaN/infinite pixels anywhere in the used bands, or more than ``max_zero_fraction`` zero
    pixels in one of them, reject the cutout (the paper's source pipeline does the same on the
    full cutout). The centred ``crop`` goes through ``make_lupton_rgb`` (in the file's single
    precision when it has it, else in double) and the grayscale conversion of the synthetic
    set, then is area-averaged to ``image_size``.

    Raises:
        Reject: the rejection, with its reason.
    """
    from galgen_lightning.data.synthetic import _lupton_gray

    bands = recipe.bands or file_bands or ("grz" if len(planes) == 3 else None)
    if bands is None:
        raise Reject(BANDS, f"has {len(planes)} bands and its header does not name them; expected 3 (g, r, z) or set data.source.bands")
    if len(bands) != len(planes):
        raise Reject(BANDS, f"has {len(planes)} band{'s' * (len(planes) != 1)}; expected {len(bands)} ({bands!r})")
    missing = [b for b in recipe.rgb if b not in bands]
    if missing:
        raise Reject(BANDS, f"has bands {bands!r}, without {''.join(missing)!r} that data.source.rgb={recipe.rgb!r} needs")
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        raise Reject(SHAPES, f"band shapes differ: {', '.join(str(p.shape) for p in planes)}")
    used = [np.asarray(planes[bands.index(b)]) for b in recipe.rgb]  # R, G, B, whole cutouts
    bad = sum(p.size - int(np.count_nonzero(np.isfinite(p))) for p in used)
    if bad:
        raise Reject(NAN, f"{bad} NaN or infinite pixels")
    zeros = [np.count_nonzero(p == 0) / p.size for p in used]
    worst = int(np.argmax(zeros))
    if zeros[worst] > recipe.max_zero_fraction:
        raise Reject(ZEROS, f"{zeros[worst]:.0%} of its {recipe.rgb[worst]} pixels are zero")
    h, w = used[0].shape
    side = recipe.crop or min(h, w)
    if side > min(h, w):
        raise Reject(SMALL, f"is {h}x{w}, smaller than data.source.crop={recipe.crop}")
    if side < recipe.image_size:
        raise Reject(FATAL, f"cutout is {h}x{w}, smaller than data.image_size={recipe.image_size}")
    top, left = (h - side) // 2, (w - side) // 2
    cut = np.stack([p[top : top + side, left : left + side] for p in used])
    # single-precision data (what FITS cutouts hold) stays single: astropy maps it twice as fast
    cut = cut.astype(np.float32 if cut.dtype.kind == "f" and cut.dtype.itemsize == 4 else np.float64)
    gray = _lupton_gray(cut[::-1], recipe.q, recipe.stretch)  # _lupton_gray takes (B, G, R)
    return resize(gray[None], recipe.image_size, name)[0]


def convert_fits(recipe: FitsRecipe, galaxies: list[tuple[str | None, ...]]) -> list[Result]:
    """Convert cutouts: each galaxy is one file path, or one path per band of ``recipe.bands``
    (``None`` for a missing band file). Never raises for a bad file: it becomes a rejection."""
    out: list[Result] = []
    for paths in galaxies:
        try:
            if len(paths) == 1:
                planes, file_bands = read_fits_planes(paths[0])
            else:
                planes, file_bands = _read_band_files(paths, recipe.bands or "grz")
            out.append((fits_to_gray(planes, file_bands, recipe, str(paths[0])), "", ""))
        except Reject as r:
            out.append((None, r.reason, r.detail))
    return out


def _read_band_files(paths: Sequence[str | None], bands: str) -> tuple[list[np.ndarray], str]:
    planes = []
    for band, path in zip(bands, paths):
        if path is None:
            raise Reject(BANDS, f"has no {band}-band file")
        found, _ = read_fits_planes(path)
        if len(found) != 1:
            raise Reject(BANDS, f"{Path(path).name} holds {len(found)} images; expected one {band}-band image")
        planes.append(found[0])
    return planes, bands


def _fits_stem(name: str) -> str:
    lower = name.lower()
    for suffix in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


class FitsCutouts(CachedReader):
    """Galaxy cutouts in FITS files (e.g. Legacy Survey DR9 g, r, z), preprocessed as in the paper.

    One file per galaxy, its bands as one ``(bands, H, W)`` cube or as one 2-D image per HDU, or
    (``band_files=True``) one file per band named ``<galaxy>_<band>.fits``. Each cutout is
    centre-cropped, combined with astropy's ``make_lupton_rgb`` into an RGB image, reduced to one
    grayscale channel (the mean of the 8-bit channels / 255, as the synthetic set) and
    area-averaged to ``image_size``. Cutouts with NaN pixels or more than 30% zero pixels in a
    band are rejected and counted; unreadable or malformed files are skipped and reported (or
    fatal with ``strict``). Converted once, in parallel, into a resumable cache.

    Args:
        directory: the folder of FITS files (searched with ``pattern``).
        pattern: glob of the files, relative to ``directory`` (default: every ``.fits``,
            ``.fit``, ``.fits.gz`` or ``.fits.fz`` file, in subfolders too).
        bands: the band of each plane (cube) or HDU, in file order, e.g. ``"grz"``; with
            ``band_files``, the bands to read. Default: from the header keywords ``BANDS`` or
            ``BAND0``, ``BAND1``, ... (written by the Legacy Survey cutout service), else ``"grz"``.
        rgb: the bands of the red, green and blue channels of ``make_lupton_rgb`` (the paper:
            z, r, g).
        crop: side in pixels of the centred square kept before the colour mapping (default:
            the largest centred square).
        q: Lupton asinh softening ``Q``.
        stretch: Lupton linear stretch (the paper: 0.2).
        band_files: one file per band, ``<galaxy>_<band>.fits`` (the layout of the paper's
            download script) instead of one file per galaxy.
        cache_dir: where converted images are kept (default: ``$GALGEN_CACHE_DIR`` or
            ``~/.cache/galgen``).
        workers: processes used for converting (default: all cores).
        chunk: cutouts per cached file (the unit of resuming an interrupted conversion).
        strict: stop at the first unreadable or malformed file instead of skipping it.
    """

    kind = "fits"
    unit = "cutout"
    option = "data.source.directory"
    noun = "FITS cutouts"

    def __init__(
        self,
        directory: str,
        pattern: str = FITS_PATTERN,
        bands: str | None = None,
        rgb: str = "zrg",
        crop: int | None = None,
        q: float = 8.0,
        stretch: float = 0.2,
        band_files: bool = False,
        cache_dir: str | None = None,
        workers: int | None = None,
        chunk: int = 256,
        strict: bool = False,
    ) -> None:
        super().__init__(cache_dir=cache_dir, workers=workers, chunk=chunk, strict=strict)
        _positive(q, "data.source.q")
        _positive(stretch, "data.source.stretch")
        _positive(crop, "data.source.crop")
        if len(rgb) != 3:
            raise GalgenError(f"data.source.rgb must name 3 bands (red, green, blue), got {rgb!r}")
        if bands is not None and (not bands or len(set(bands)) != len(bands)):
            raise GalgenError(f"data.source.bands must name each band once, got {bands!r}")
        if band_files and bands is not None and any(b not in bands for b in rgb):
            raise GalgenError(f"data.source.bands={bands!r} lacks a band of data.source.rgb={rgb!r}")
        self.directory = self.location = Path(directory).expanduser()
        self.pattern = pattern
        self.bands = bands
        self.rgb = rgb
        self.crop = crop
        self.q = q
        self.stretch = stretch
        self.band_files = band_files

    def _params(self) -> dict:
        return {
            "directory": str(self.directory.resolve()),
            "pattern": self.pattern,
            "bands": self.bands,
            "rgb": self.rgb,
            "crop": self.crop,
            "q": self.q,
            "stretch": self.stretch,
            "band_files": self.band_files,
            "max_zero_fraction": MAX_ZERO_FRACTION,
        }

    def _scan(self) -> tuple[list[str], list[Any], dict]:
        files = _list_files(self.directory, self.pattern, FITS_SUFFIXES, self.option)
        fingerprint = {"files": len(files), "sha1": _files_fingerprint(files, self.directory)}
        if not self.band_files:
            return [p.relative_to(self.directory).as_posix() for p in files], [(str(p),) for p in files], fingerprint
        bands = self.bands or "grz"
        groups: dict[str, dict[str, str]] = {}
        for p in files:
            rel = p.relative_to(self.directory).as_posix()
            stem = _fits_stem(rel)
            for b in bands:
                if stem.endswith(f"_{b}"):
                    groups.setdefault(stem[:-2], {})[b] = str(p)
        if not groups:
            raise GalgenError(f"data.source.band_files: no file in {self.directory} is named <galaxy>_<band>.fits for a band of {bands!r}")
        names = sorted(groups)
        return [f"{n}_[{bands}]" for n in names], [tuple(groups[n].get(b) for b in bands) for n in names], fingerprint

    def _check_image_size(self, image_size: int) -> None:
        if self.crop is not None and self.crop < image_size:
            raise GalgenError(f"data.source.crop={self.crop} is smaller than data.image_size={image_size}")

    def _converter(self, image_size: int) -> Callable[[list[Any]], list[Result]]:
        recipe = FitsRecipe(self.bands, self.rgb, self.crop, self.q, self.stretch, image_size)
        return functools.partial(convert_fits, recipe)


# =============================================================================== image folders
def read_image(path: str) -> np.ndarray:
    """One PNG/JPEG/TIFF image as a 2-D float array in [0, 1].

    8-bit images are divided by 255 and 16-bit ones by 65535; colour images become the mean of
    their channels (as the Lupton grayscale of FITS cutouts); float images must lie in [0, 1].

    Raises:
        Reject: unreadable or truncated file, NaN pixels, or values outside [0, 1].
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("L", "I;16", "I;16L", "I;16B", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                scale = 255.0 if mode == "L" else (1.0 if mode == "F" else 65535.0)
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float64).mean(axis=-1)
                scale = 255.0
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
        raise Reject(UNREADABLE, f"unreadable image ({_first_line(e)})") from None
    if not np.isfinite(arr).all():
        raise Reject(NAN, f"{int((~np.isfinite(arr)).sum())} NaN or infinite pixels")
    arr = arr / scale
    if arr.min() < 0 or arr.max() > 1:
        raise Reject(FATAL, f"{mode} image with values in [{arr.min():g}, {arr.max():g}]; expected [0, 1]")
    return arr


def convert_images(image_size: int, paths: list[str]) -> list[Result]:
    """Convert image files (see :func:`read_image`), centre-cropped and area-averaged to ``image_size``."""
    out: list[Result] = []
    for path in paths:
        try:
            arr = read_image(path)
            if min(arr.shape) < image_size:
                raise Reject(FATAL, f"image is {arr.shape[0]}x{arr.shape[1]}, smaller than data.image_size={image_size}")
            out.append((resize(arr[None], image_size, path)[0], "", ""))
        except Reject as r:
            out.append((None, r.reason, r.detail))
    return out


class ImageFolder(CachedReader):
    """Galaxy images in PNG, JPEG or TIFF files (grayscale or colour), one galaxy per file.

    Colour images become the mean of their channels; 8-bit values are divided by 255 and
    16-bit ones by 65535. Each image is centre-cropped to a square and area-averaged to
    ``image_size``. Unreadable or truncated files are skipped and reported (fatal with
    ``strict``). Converted once, in parallel, into a resumable cache.

    Args:
        directory: the folder of images (searched with ``pattern``).
        pattern: glob of the files, relative to ``directory`` (default: every ``.png``,
            ``.jpg``, ``.jpeg``, ``.tif`` or ``.tiff`` file, in subfolders too).
        cache_dir: where converted images are kept (default: ``$GALGEN_CACHE_DIR`` or
            ``~/.cache/galgen``).
        workers: processes used for converting (default: all cores).
        chunk: images per cached file (the unit of resuming an interrupted conversion).
        strict: stop at the first unreadable file instead of skipping it.
    """

    kind = "images"
    unit = "image"
    option = "data.source.directory"
    noun = "images"

    def __init__(
        self,
        directory: str,
        pattern: str = "**/*",
        cache_dir: str | None = None,
        workers: int | None = None,
        chunk: int = 256,
        strict: bool = False,
    ) -> None:
        super().__init__(cache_dir=cache_dir, workers=workers, chunk=chunk, strict=strict)
        self.directory = self.location = Path(directory).expanduser()
        self.pattern = pattern

    def _params(self) -> dict:
        return {"directory": str(self.directory.resolve()), "pattern": self.pattern}

    def _scan(self) -> tuple[list[str], list[Any], dict]:
        files = _list_files(self.directory, self.pattern, IMAGE_SUFFIXES, self.option)
        fingerprint = {"files": len(files), "sha1": _files_fingerprint(files, self.directory)}
        return [p.relative_to(self.directory).as_posix() for p in files], [str(p) for p in files], fingerprint

    def _converter(self, image_size: int) -> Callable[[list[Any]], list[Result]]:
        return functools.partial(convert_images, image_size)


# =============================================================================== arrays
ARRAY_SUFFIXES = (".npy", ".npz", ".h5", ".hdf5", ".hdf")
_LAYOUTS = "(N, H, W), (N, 1, H, W), (N, H, W, 1), (N, H, W, 3) or (N, 3, H, W)"


def array_layout(shape: tuple[int, ...]) -> str | None:
    """``"nhw"``, ``"nchw"`` or ``"nhwc"`` for a supported shape (1 or 3 channels), else ``None``."""
    if len(shape) == 3:
        return "nhw"
    if len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3):
        return "nchw"
    if len(shape) == 4 and shape[3] in (1, 3):
        return "nhwc"
    return None


def rows_to_gray(block: np.ndarray, layout: str) -> np.ndarray:
    """Rows of an array in ``layout`` to ``(n, H, W)`` float64 in [0, 1] scale: uint8 / 255,
    uint16 / 65535, other types as they are; channels averaged (as the Lupton grayscale)."""
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(block.dtype, 1.0)
    x = np.asarray(block, dtype=np.float64)
    if layout == "nchw":
        x = x.mean(axis=1)
    elif layout == "nhwc":
        x = x.mean(axis=3)
    return x / scale if scale != 1.0 else x


@dataclass(frozen=True)
class ArrayHeader:
    """Shape and dtype of an array that was not read."""

    shape: tuple[int, ...]
    dtype: np.dtype


def _npz_header(path: Path, pick: Callable[[list[str], str], str]) -> ArrayHeader | None:
    """Shape and dtype of the ``.npz`` member that ``pick`` chooses, read from its header only
    (``None`` when the file cannot be read that way: the caller loads it and reports)."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            name = pick(members, "array")
            with zf.open(f"{name}.npy") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    return None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
    return ArrayHeader(tuple(shape), np.dtype(dtype))


class ArrayFile(CachedReader):
    """Images from an array file: ``.npy``, ``.npz`` or HDF5 (``.h5``, ``.hdf5``).

    Shapes ``(N, H, W)``, ``(N, 1, H, W)``, ``(N, H, W, 1)``, ``(N, H, W, 3)`` or
    ``(N, 3, H, W)``; uint8 (divided by 255), uint16 (divided by 65535) or float with values in
    [0, 1]. Colour images become the mean of their channels. Images with NaN or infinite pixels
    are rejected and counted. Each image is centre-cropped to a square and area-averaged to
    ``image_size``; the result is cached (``.npy`` files are memory-mapped, so a large file is
    read a chunk at a time).

    Args:
        path: the array file.
        key: the array's name inside an ``.npz`` or HDF5 file (default: ``images``, or the only
            array in the file).
        cache_dir: where converted images are kept (default: ``$GALGEN_CACHE_DIR`` or
            ``~/.cache/galgen``).
        chunk: images per cached file.
    """

    kind = "array"
    unit = "image"
    option = "data.source.path"
    parallel = False

    def __init__(self, path: str, key: str | None = None, cache_dir: str | None = None, chunk: int = 4096) -> None:
        super().__init__(cache_dir=cache_dir, workers=1, chunk=chunk)
        self.path = self.location = Path(path).expanduser()
        self.key = key
        self._shape: tuple[int, ...] | None = None
        self._dtype: str | None = None
        self._array: Any = None

    # ---------------------------------------------------------------- opening
    @contextmanager
    def _open(self, header_only: bool = False) -> Iterator[Any]:
        """The array (memory-mapped ``.npy``, loaded ``.npz`` member or HDF5 dataset), checked;
        with ``header_only``, an ``.npz`` member may come as its shape and dtype only."""
        p, opt = self.path, self.option
        if not p.exists():
            raise GalgenError(f"{opt}: {p} does not exist")
        suffix = p.suffix.lower()
        if suffix not in ARRAY_SUFFIXES:
            raise GalgenError(f"{opt}: {p} is not a .npy, .npz or HDF5 (.h5, .hdf5) file")
        if suffix == ".npy":
            try:
                arr = np.load(p, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise GalgenError(f"{opt}: {p} is not a readable .npy array ({_first_line(e)})") from None
            yield self._checked(arr)
        elif suffix == ".npz":
            header = _npz_header(p, self._pick) if header_only else None
            if header is not None:
                yield self._checked(header)
                return
            try:
                with np.load(p, allow_pickle=False) as z:
                    name = self._pick(list(z.files), "array")
                    arr = z[name]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise GalgenError(f"{opt}: {p} is not a readable .npz file ({_first_line(e)})") from None
            yield self._checked(arr)
        else:
            try:
                import h5py
            except ImportError:
                raise GalgenError(f"{opt}: reading {p} needs h5py (pip install h5py)") from None
            try:
                f = h5py.File(p, "r")
            except OSError as e:
                raise GalgenError(f"{opt}: {p} is not a readable HDF5 file ({_first_line(e)})") from None
            with f:
                names: list[str] = []
                f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
                yield self._checked(f[self._pick(names, "dataset")])

    def _pick(self, names: list[str], what: str) -> str:
        if self.key is not None:
            if self.key not in names:
                raise GalgenError(f"data.source.key: {self.path} has no {what} {self.key!r} (it has {', '.join(names) or 'none'})")
            return self.key
        if "images" in names:
            return "images"
        if len(names) == 1:
            return names[0]
        raise GalgenError(f"data.source.key: {self.path} holds {len(names)} {what}s ({', '.join(names[:8])}); name one with data.source.key")

    def _checked(self, arr: Any) -> Any:
        shape, dtype = tuple(arr.shape), np.dtype(arr.dtype)
        if array_layout(shape) is None:
            raise GalgenError(f"{self.option}: {self.path} has shape {shape}; expected {_LAYOUTS}")
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or np.issubdtype(dtype, np.complexfloating):
            raise GalgenError(f"{self.option}: {self.path} holds {dtype} values; expected uint8, uint16 or float")
        if shape[0] == 0:
            raise GalgenError(f"{self.option}: {self.path} holds no images (shape {shape})")
        self._shape, self._dtype = shape, str(dtype)
        return arr

    # ---------------------------------------------------------------- the reader hooks
    def _params(self) -> dict:
        return {"path": str(self.path.resolve()), "key": self.key}

    def _scan(self) -> tuple[list[str], list[Any], dict]:
        with self._open(header_only=True):
            pass
        assert self._shape is not None
        st = self.path.stat()
        fingerprint = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "shape": list(self._shape), "dtype": self._dtype}
        n = self._shape[0]
        return [f"row {i}" for i in range(n)], list(range(n)), fingerprint

    def _check_image_size(self, image_size: int) -> None:
        self._listing()
        assert self._shape is not None
        layout = array_layout(self._shape)
        h, w = self._shape[2:4] if layout == "nchw" else self._shape[1:3]
        if min(h, w) < image_size:
            raise GalgenError(f"{self.option}: {self.path}: images are {h}x{w}, smaller than data.image_size={image_size}")

    def _converter(self, image_size: int) -> Callable[[list[Any]], list[Result]]:
        return functools.partial(self._convert_rows, image_size)

    def _piece_size(self, workers: int) -> int:
        return self.chunk  # in-process and vectorised: one task per chunk

    def _convert(
        self, run: list[int], bounds: list[tuple[int, int]], inputs: list[Any], names: list[str], image_size: int, folder: Path
    ) -> Iterator[tuple[int, Chunk]]:
        with self._open() as arr:
            self._array = arr
            try:
                yield from super()._convert(run, bounds, inputs, names, image_size, folder)
            finally:
                self._array = None

    def _convert_rows(self, image_size: int, rows: list[int]) -> list[Result]:
        """Convert rows (consecutive indices) of the open array, vectorised."""
        assert self._shape is not None
        block = rows_to_gray(np.asarray(self._array[rows[0] : rows[-1] + 1]), array_layout(self._shape) or "nhw")
        finite = np.isfinite(block).all(axis=(1, 2))
        good = block[finite]
        if len(good) and (good.min() < 0 or good.max() > 1):
            raise GalgenError(
                f"{self.option}: {self.path} has values in [{good.min():g}, {good.max():g}] (rows {rows[0]}-{rows[-1]}); "
                "expected [0, 1] for float arrays, or uint8 / uint16"
            )
        images = iter(resize(good, image_size, str(self.path)) if len(good) else [])
        out: list[Result] = []
        for row_finite, row in zip(finite, block):
            if row_finite:
                out.append((next(images), "", ""))
            else:
                out.append((None, NAN, f"{int((~np.isfinite(row)).sum())} NaN or infinite pixels"))
        return out

    def _display(self, name: str) -> str:
        return f"{self.path} {name}"
