"""The readers' common base: real galaxy images converted once into the data cache.

Each reader (:mod:`.fits`, :mod:`.images`, :mod:`.arrays`) converts its input once into galgen's
preprocessed array, in chunks of the one data cache (:mod:`galgen_lightning.data.cache`):

- the cache folder is keyed by :data:`READER_VERSION`, every conversion parameter and a
  fingerprint of the input (file names, sizes and modification times), so changing any of them
  converts again into a new folder and never reuses a stale one; a damaged ``meta.json``,
  ``summary.json`` or chunk is reported in one warning line and made again from the inputs;
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

import hashlib
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from galgen_lightning.data.cache import (
    Chunk,
    ChunkCache,
    Result,
    default_cache_dir,
    keyed_root,
    open_keyed_root,
    read_summary,
    write_summary,
)
from galgen_lightning.data.sources.base import MAX_ZERO_FRACTION, GalaxySource
from galgen_lightning.errors import GalgenError

READER_VERSION: int = 1
"""Bump whenever a conversion changes: it keys the on-disk cache of converted images."""

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

__all__ = ["BROKEN", "REASONS", "READER_VERSION", "CachedReader", "Chunk", "Reject", "Result"]


class Reject(Exception):
    """Raised inside a conversion to reject one input (becomes a :data:`Result`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def files_fingerprint(paths: Sequence[Path], root: Path) -> str:
    """SHA-1 over each file's path relative to ``root``, size and modification time."""
    h = hashlib.sha1()
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def list_files(directory: Path, pattern: str, suffixes: Sequence[str], option: str) -> list[Path]:
    """Files under ``directory`` matching ``pattern`` with one of ``suffixes``, sorted by relative path."""
    if not directory.exists():
        raise GalgenError(f"{option}: {directory} does not exist")
    if not directory.is_dir():
        raise GalgenError(f"{option}: {directory} is not a directory")
    try:
        found = [p for p in directory.glob(pattern) if p.is_file() and p.name.lower().endswith(tuple(suffixes))]
    except OSError as e:
        raise GalgenError(f"{option}: cannot list {directory}: {e.strerror}") from None
    except (NotImplementedError, ValueError) as e:  # an absolute or empty pattern
        raise GalgenError(f"data.source.pattern {pattern!r} must be a pattern relative to {directory} ({e})") from None
    if not found:
        raise GalgenError(
            f"{option}: no {'/'.join(s.lstrip('.') for s in suffixes[:3])} files matching {pattern!r} in {directory}"
        )
    return sorted(found, key=lambda p: p.relative_to(directory).as_posix())


def check_positive(value: float | int | None, option: str) -> None:
    if value is not None and value <= 0:
        raise GalgenError(f"{option} must be positive, got {value}")


class CachedReader(GalaxySource):
    """Base of the readers: chunked, resumable, parallel conversion into the keyed data cache.

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
        check_positive(workers, "data.source.workers")
        check_positive(chunk, "data.source.chunk")
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
        meta = {
            "format": READER_VERSION,
            "reader": self.kind,
            "params": self._params(),
            "input": fingerprint,
            "count": len(names),
        }
        return json.loads(json.dumps(meta, default=str))

    def _root(self) -> Path:
        """The cache folder of this input and these parameters (all image sizes)."""
        return keyed_root(self.cache_dir or default_cache_dir(), self.kind, READER_VERSION, self._meta())

    def chunks(self, image_size: int, open_root: bool = True) -> ChunkCache:
        """The cache of this input's chunks at ``image_size`` (the one owner of its layout).

        Args:
            image_size: side of the converted images.
            open_root: create or check the keyed folder (``False``: only find it, for a reader
                such as ``galgen data inspect`` that writes nothing).
        """
        names, inputs, _ = self._listing()
        root = open_keyed_root(self._root(), self._meta()) if open_root else self._root()
        folder = root / f"{image_size}px-chunk{self.chunk}"
        bounds = [(a, min(a + self.chunk, len(inputs))) for a in range(0, len(inputs), self.chunk)]
        return ChunkCache(folder, bounds, image_size)

    def _summary(self) -> dict | None:
        """The counts of a complete conversion (any image size), if one has finished."""
        return read_summary(self._root())

    def available(self) -> int:
        """Usable images after rejection once everything was converted, else the number of inputs."""
        names, _, _ = self._listing()
        summary = self._summary()
        return int(summary["usable"]) if summary else len(names)

    def load(self, count: int, image_size: int) -> np.ndarray:
        """The first ``count`` usable images (fewer if the inputs run out), converting what is missing."""
        names, inputs, _ = self._listing()
        self._check_image_size(image_size)
        cache = self.chunks(image_size)
        filled = cache.fill(
            count,
            lambda run: self._convert(run, cache.bounds, inputs, image_size, cache.folder),
            lambda k, chunk: self._check(chunk, names, cache.bounds[k][0]),
        )
        reasons = [r for c in filled.chunks for r in c.reasons.tolist()]
        details = [d for c in filled.chunks for d in c.details.tolist()]
        self._record(names, reasons, details, filled.usable, filled.complete, filled.prepared)
        if filled.usable == 0:
            raise GalgenError(
                f"{self.option}: none of the {self._unit_text(len(names))} in {self._location()} is usable: "
                f"{self._rejected_text()}"
            )
        return filled.images[:count]

    def describe(self) -> dict:
        """Source name, parameters, the input's size and, once loaded, what was rejected."""
        names, _, _ = self._listing()
        out = {"source": self.kind, "version": READER_VERSION, **self._params(), "inputs": len(names)}
        if self._report is not None:
            out["report"] = self._report
        return out

    # ------------------------------------------------------------------ conversion
    def _piece_size(self, workers: int) -> int:
        """Inputs per task handed to a worker (small, so the workers share a chunk evenly)."""
        return max(1, min(16, math.ceil(self.chunk / workers)))

    def _worker_count(self) -> int:
        from galgen_lightning.parallel import default_workers

        return 1 if not self.parallel else (self.workers or default_workers())

    def _convert(
        self, run: list[int], bounds: list[tuple[int, int]], inputs: list[Any], image_size: int, folder: Path
    ) -> Iterator[tuple[int, Chunk]]:
        """Convert chunks ``run`` (in parallel pieces) and yield each, in order, once complete
        (the cache writes it)."""
        from tqdm.auto import tqdm

        from galgen_lightning.parallel import imap

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
        with imap(convert, [[inputs[i] for i in idx] for _, idx in pieces], workers) as results:
            with tqdm(
                total=total, unit=self.unit, desc=f"galgen: {self.kind}", disable=None, leave=False, file=sys.stderr
            ) as bar:
                for (j, idx), res in zip(pieces, results):
                    pending.setdefault(j, []).extend(res)
                    bar.update(len(idx))
                    left[j] -= 1
                    if not left[j]:
                        yield j, Chunk.pack(pending.pop(j), image_size)

    def _check(self, chunk: Chunk, names: list[str], start: int) -> None:
        """Stop on a configuration error, and on a broken input when ``strict``."""
        for i, (reason, detail) in enumerate(zip(chunk.reasons.tolist(), chunk.details.tolist())):
            if reason == FATAL:
                raise GalgenError(f"{self._display(names[start + i])}: {detail}")
            if self.strict and reason in BROKEN:
                raise GalgenError(
                    f"{self._display(names[start + i])}: {detail} "
                    "(data.source.strict is true; set it to false to skip such inputs)"
                )

    # ------------------------------------------------------------------ reporting
    def _location(self) -> str:
        """The input's path, for messages."""
        return str(self.location) if self.location is not None else self.option

    def _where(self) -> str:
        """What and where the input is, for messages."""
        return f"{self.noun} in {self._location()}" if self.noun else self._location()

    def _unit_text(self, n: int) -> str:
        return f"{n:,} {self.unit}{'s' * (n != 1)}"

    def _record(
        self, names: list[str], reasons: list[str], details: list[str], usable: int, complete: bool, converted: int
    ) -> None:
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
            write_summary(self._root(), {"inputs": len(names), **self._report})
        key = (len(reasons), usable)
        if converted or (rejected and self._printed != key):
            print(
                f"galgen: {self._where()}: {len(reasons):,} of {self._unit_text(len(names))} read, {usable:,} usable, "
                f"{self._rejected_text()}",
                flush=True,
            )
        self._printed = key

    def _rejected_text(self) -> str:
        report = self._report or {}
        if not report.get("rejected"):
            return "none rejected"
        parts = ", ".join(f"{n} {REASONS.get(r, r)}" for r, n in report["by_reason"].items())
        first = "; ".join(report["first_rejected"][:SHOW])
        more = ", ..." if report["rejected"] > SHOW else ""
        return f"{report['rejected']} rejected ({parts}): {first}{more}"
