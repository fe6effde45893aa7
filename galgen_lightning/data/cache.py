"""galgen's one on-disk cache of preprocessed images: keyed folders of chunks, resumable, self-healing.

Every source that derives images (the synthetic renderer, the FITS / image-folder / array
readers) keeps them here, the same way:

- a **keyed folder**: its name holds everything the images depend on (a version, the
  parameters, a fingerprint of the input), so changing any of them fills a new folder and never
  reuses a stale one. The readers name it by a digest of a ``meta.json`` it holds
  (:func:`keyed_root`, :func:`open_keyed_root`); the synthetic set by its readable parameters;
- **chunks** ``chunk_00000.npz`` (or ``.npy``), one per run of ``chunk`` inputs, each written
  atomically (:func:`write_atomic`) as soon as it is complete, so an interrupted fill resumes
  where it stopped and a failure (a full disk, Ctrl-C) loses nothing already written;
- **self-healing**: a chunk, ``meta.json`` or ``summary.json`` that is unreadable or not what it
  must hold is never used: one warning line, and it is made again from the inputs (which the
  cache never modifies);
- :class:`ChunkCache` fills a folder only as far as a caller needs: ``fill(count, produce)``
  stops once ``count`` usable images are there;
- **one filler at a time**: a process that has chunks to make holds the folder's lock
  (``.lock``, a ``flock`` through the ``filelock`` library, released by the OS when the process
  dies, so a lock left by a killed process is free); a second process (another run, another
  DDP rank) waits for it, then reads what it made instead of making it again.

A cache that cannot be written (read-only, full) is a one-line :class:`GalgenError` naming the
directory; a complete cache is read without writing anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from galgen_lightning.files import atomic_write, make_dir

LOCK = ".lock"
"""The lock file of a cache folder (held while a process makes its missing chunks)."""

Result = tuple["np.ndarray | None", str, str]
"""What preparing one input gives: ``(image or None, reason or "", detail or "")``."""


def default_cache_dir() -> Path:
    """``$GALGEN_CACHE_DIR`` or, when it is unset or empty, ``~/.cache/galgen`` (never the current folder)."""
    return Path(os.environ.get("GALGEN_CACHE_DIR") or Path.home() / ".cache" / "galgen").expanduser()


# ============================================================================ writing, all or nothing
CACHE_HINT = "free space or point data.source.init_args.cache_dir (or GALGEN_CACHE_DIR) to a writable directory"
"""What a user does about a data cache that cannot be written."""


def make_cache_dir(folder: Path) -> None:
    """``mkdir -p folder``, or a :class:`GalgenError` naming it as the data cache."""
    make_dir(folder, "the data cache", CACHE_HINT)


def write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a cache file all or nothing (:func:`galgen_lightning.files.atomic_write`).

    ``write`` fills a temporary file that then replaces ``path``; a failure leaves the previous
    ``path`` and no temporary file (whose name matches no cache glob).

    Raises:
        GalgenError: naming the cache directory when it cannot be written.
    """
    atomic_write(path, write, f"the data cache {path.parent}", CACHE_HINT)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON with :func:`write_atomic`."""
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True).encode(), f"the data cache {path.parent}", CACHE_HINT)


def _warn(path: Path, problem: str, redo: str) -> None:
    print(f"galgen: warning: data cache {path} {problem}; {redo}", file=sys.stderr, flush=True)


def _discard(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


# ============================================================================ keyed folders
def digest(obj: Any) -> str:
    """SHA-1 of ``obj`` as sorted JSON (what names a keyed folder)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def keyed_root(base: Path, kind: str, version: int, meta: dict) -> Path:
    """``base/kind/v<version>-<digest of meta>``: the folder of everything ``meta`` describes."""
    return base / kind / f"v{version}-{digest(meta)[:16]}"


def open_keyed_root(root: Path, meta: dict) -> Path:
    """Create ``root`` and its ``meta.json``, or check that an existing one holds ``meta``.

    A ``meta.json`` that is unreadable or differs from what the folder is named for is damage
    (the name is a digest of it): one warning, and it is written again.
    """
    meta_path = root / "meta.json"
    if not meta_path.exists():
        make_cache_dir(root)
        write_json_atomic(meta_path, meta)
        return root
    problem = ""
    try:
        found = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        found, problem = None, f"is unreadable ({type(e).__name__})"
    if found is not None and found != meta:
        diff = sorted(k for k in set(found) | set(meta) if found.get(k) != meta.get(k)) if isinstance(found, dict) else ["all"]
        problem = f"differs from what its folder is named for (in {', '.join(diff)})"
    if problem:
        _warn(meta_path, problem, "writing it again")
        write_json_atomic(meta_path, meta)
    return root


def read_summary(root: Path) -> dict | None:
    """The ``summary.json`` of a complete fill (``usable`` images and more), if one was written;
    a damaged one is dropped with a warning (the next complete fill writes it again)."""
    path = root / "summary.json"
    try:
        summary = json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        summary = False
    if summary is None:
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("usable"), int) or summary["usable"] < 0:
        _warn(path, "is unreadable or damaged", "counting again")
        _discard(path)
        return None
    return summary


def write_summary(root: Path, summary: dict) -> None:
    """Record the counts of a complete fill in ``root/summary.json``."""
    write_json_atomic(root / "summary.json", summary)


# ============================================================================ chunks
@dataclass
class Chunk:
    """The images prepared from a run of inputs: the usable ones and, per input, why it was rejected."""

    images: np.ndarray  # (usable, S, S) float32
    reasons: np.ndarray  # (inputs,) str, "" for a usable input
    details: np.ndarray  # (inputs,) str

    @classmethod
    def pack(cls, results: Sequence[Result], image_size: int) -> Chunk:
        good = [img for img, reason, _ in results if not reason]
        images = np.stack(good).astype(np.float32) if good else np.zeros((0, image_size, image_size), np.float32)
        return cls(images, np.array([r for _, r, _ in results], dtype=str), np.array([d for _, _, d in results], dtype=str))

    @classmethod
    def of(cls, images: np.ndarray) -> Chunk:
        """A chunk whose every input gave an image (the synthetic set)."""
        blank = np.full(len(images), "", dtype=str)
        return cls(images, blank, blank.copy())

    def save(self, path: Path) -> None:
        """Write atomically: ``.npz`` with the reasons, ``.npy`` (images only) when all are usable."""
        if path.suffix == ".npy":
            write_atomic(path, lambda f: np.save(f, self.images))
        else:
            write_atomic(path, lambda f: np.savez(f, images=self.images, reasons=self.reasons, details=self.details))

    @classmethod
    def read(cls, path: Path, inputs: int, image_size: int, redo: str = "converting it again from the inputs") -> Chunk | None:
        """Read and check a cached chunk; a broken or foreign one is never used: None, with a
        one-line warning (ending in ``redo``), and the file is removed for the caller to make again."""
        try:
            if path.suffix == ".npy":
                chunk = cls.of(np.load(path, allow_pickle=False))
            else:
                with np.load(path, allow_pickle=False) as z:
                    chunk = cls(z["images"], z["reasons"], z["details"])
            problem = chunk._problem(inputs, image_size, full=path.suffix == ".npy")
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            problem = f"is unreadable ({type(e).__name__})"
        if not problem:
            return chunk
        _warn(path, problem, redo)
        _discard(path)
        return None

    def _problem(self, inputs: int, image_size: int, full: bool) -> str:
        images = self.images
        if full:  # images only: one per input
            shape = (inputs, image_size, image_size)
            if images.dtype != np.float32 or images.shape != shape:
                return f"holds {images.dtype} {images.shape}, expected float32 {shape}"
            return "" if np.isfinite(images).all() else "holds non-finite pixels"
        shape = (int((self.reasons == "").sum()), image_size, image_size)
        if images.dtype != np.float32 or images.shape != shape or len(self.reasons) != inputs or len(self.details) != inputs:
            return f"holds {images.dtype} {images.shape} for {len(self.reasons)} inputs, expected float32 {shape} for {inputs}"
        return ""


@dataclass
class Filled:
    """What :meth:`ChunkCache.fill` gathered: the chunks in order, whether every input is in them,
    and how many inputs were prepared (not read from the cache) on the way."""

    chunks: list[Chunk]
    complete: bool
    prepared: int

    @property
    def images(self) -> np.ndarray:
        return np.concatenate([c.images for c in self.chunks])

    @property
    def usable(self) -> int:
        return sum(len(c.images) for c in self.chunks)


Produce = Callable[[list[int]], Iterable[tuple[int, Chunk]]]
"""Prepares the chunks of a run (their numbers, in order) and yields ``(number, chunk)`` in order."""


class ChunkCache:
    """One keyed folder of chunks: chunk ``k`` holds the images of inputs ``bounds[k]``.

    Args:
        folder: the keyed folder (created on the first write).
        bounds: ``(start, stop)`` of the inputs of each chunk.
        image_size: side of the images.
        suffix: ``.npz`` (images and rejection reasons) or ``.npy`` (images only, every input usable).
        redo: what a warning about a damaged chunk says happens next.
    """

    def __init__(
        self,
        folder: Path,
        bounds: Sequence[tuple[int, int]],
        image_size: int,
        suffix: str = ".npz",
        redo: str = "converting it again from the inputs",
    ) -> None:
        self.folder = folder
        self.bounds = list(bounds)
        self.image_size = image_size
        self.suffix = suffix
        self.redo = redo

    def path(self, k: int) -> Path:
        return self.folder / f"chunk_{k:05d}{self.suffix}"

    def inputs(self, k: int) -> int:
        return self.bounds[k][1] - self.bounds[k][0]

    def read(self, k: int) -> Chunk | None:
        """Chunk ``k`` if it is cached and sound (a damaged one is removed, with a warning)."""
        path = self.path(k)
        return Chunk.read(path, self.inputs(k), self.image_size, self.redo) if path.exists() else None

    def fill(self, count: int, produce: Produce, check: Callable[[int, Chunk], None] | None = None) -> Filled:
        """Gather chunks from the first until they hold ``count`` usable images (or the inputs run out).

        Cached chunks are read; a run of missing ones, sized for the images still wanted at the
        usable rate seen so far, is handed to ``produce``, and each chunk it yields is written at
        once. ``check(k, chunk)`` sees every chunk, a new one before it is written (so a chunk it
        rejects with an exception is never cached).
        """
        chunks: list[Chunk] = []
        seen = have = prepared = k = 0
        with contextlib.ExitStack() as held:
            locked = False
            while k < len(self.bounds) and have < count:
                cached = self.read(k)
                if cached is None and not locked:  # chunks to make: one process at a time
                    held.enter_context(self.lock())
                    locked = True
                    cached = self.read(k)  # made by another process while this one waited?
                if cached is not None:
                    found: Iterable[tuple[int, Chunk]] = [(k, cached)]
                else:
                    run = self._missing_run(k, count - have, seen, have)
                    prepared += sum(self.inputs(j) for j in run)
                    found = self._written(produce(run), check)
                for j, chunk in found:
                    if check is not None and cached is not None:
                        check(j, chunk)
                    chunks.append(chunk)
                    seen += len(chunk.reasons)
                    have += len(chunk.images)
                    k = j + 1
        return Filled(chunks, k >= len(self.bounds), prepared)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this folder's lock (``.lock``) while making chunks; wait, with one line, while
        another process holds it. The OS releases the lock of a process that dies.

        Raises:
            GalgenError: naming the folder when the lock file cannot be created.
        """
        from galgen_lightning.faults.lock import FolderLock

        lock = FolderLock(self.folder, LOCK, f"the data cache {self.folder}", CACHE_HINT)
        with lock.held(waiting=f"galgen: waiting for another process that fills the data cache {self.folder} (lock {lock.path})"):
            yield

    def _written(
        self, produced: Iterable[tuple[int, Chunk]], check: Callable[[int, Chunk], None] | None
    ) -> Iterable[tuple[int, Chunk]]:
        make_cache_dir(self.folder)
        for j, chunk in produced:
            if check is not None:
                check(j, chunk)
            chunk.save(self.path(j))
            yield j, chunk

    def _missing_run(self, k: int, wanted: int, seen: int, usable: int) -> list[int]:
        """The chunks to prepare next: enough for ``wanted`` more images at the usable rate seen so
        far, up to the next cached chunk."""
        rate = max(usable / seen, 0.05) if seen else 1.0
        chunk = max(self.inputs(k), 1)
        n = max(1, math.ceil(wanted / rate / chunk))
        run = []
        for j in range(k, len(self.bounds)):
            if len(run) == n or self.path(j).exists():
                break
            run.append(j)
        return run
