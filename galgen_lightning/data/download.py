"""``galgen data download``: a catalogue of positions to a folder of FITS cutouts, resumably.

One HTTP request per galaxy (the Legacy Survey cutout service by default, or any URL template),
one ``<name>.fits`` file per galaxy holding a ``(bands, size, size)`` cube, the layout
:class:`~galgen_lightning.data.FitsCutouts` reads. The folder is safe to interrupt and to
resume:

- every galaxy's outcome is appended to ``<out>/manifest.jsonl`` (one JSON line per outcome,
  flushed at once; the first line records the download options), so a rerun skips what is
  done and carries on with what is pending;
- a file in flight is written to a hidden temporary name (``.<name>.fits.part...``, which no
  FITS glob matches), opened with astropy and checked (number of bands, shape, finite pixels)
  and only then renamed to ``<name>.fits``: ``kill -9`` loses only the files in flight, and a
  ``.fits`` file in the folder is always complete and valid;
- timeouts, connection errors, truncated bodies, 429 and 5xx answers are retried with
  exponential backoff and jitter (a ``Retry-After`` header is honoured by every worker); any other 4xx and a
  body that is not a valid cutout (an HTML error page served with status 200) are recorded
  as failed with the reason and not retried (``retry_failed`` retries them in a later run);
- requests go through one ``requests.Session`` per thread (connections are reused), at most
  ``rate`` per second over all threads.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from galgen_lightning.data.catalogue import CutoutSpec, Galaxy, check_cutout, check_template, read_catalogue
from galgen_lightning.data.fetch import Fetcher, Stopped
from galgen_lightning.errors import GalgenError
from galgen_lightning.files import write_error

DEFAULT_URL_TEMPLATE = "https://www.legacysurvey.org/viewer/fits-cutout?ra={ra}&dec={dec}&layer={layer}&pixscale={pixscale}&bands={bands}&size={size}"
"""The Legacy Survey viewer's FITS cutout service, one request per galaxy (all bands in one cube)."""


MANIFEST = "manifest.jsonl"
LOCK = ".galgen-download.lock"
MANIFEST_FORMAT = 1


# ======================================================================== the manifest
class Manifest:
    """``<out>/manifest.jsonl``: the download options on the first line, then one line per outcome.

    The last line about a galaxy is its state. Lines are appended and flushed one at a time
    (and synced to disk every ``sync_every`` lines and at the end), so a crash loses at most
    the line being written; a partial last line is ignored when read.
    """

    def __init__(self, path: Path, sync_every: int = 64) -> None:
        self.path = path
        self.header: dict | None = None
        self.records: dict[str, dict] = {}
        self.sync_every = sync_every
        self._file: Any = None
        self._unsynced = 0
        if path.exists():
            self._read()

    def _read(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise GalgenError(f"cannot read the manifest {self.path}: {e.strerror}") from None
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the partial line of an interrupted write
            if not isinstance(record, dict):
                continue
            if record.get("kind") == "download":
                self.header = self.header or record
            elif isinstance(record.get("name"), str) and record.get("state") in ("done", "failed"):
                self.records[record["name"]] = record

    def open(self, header: dict) -> None:
        """Start appending (after checking or writing the header)."""
        if self.header is not None:
            keys = ("layer", "bands", "pixscale", "size")
            differ = [k for k in keys if self.header.get(k) != header.get(k)]
            if differ:
                found = ", ".join(f"{k}={self.header.get(k)!r}" for k in differ)
                asked = ", ".join(f"{k}={header.get(k)!r}" for k in differ)
                raise GalgenError(
                    f"--out {self.path.parent} holds cutouts downloaded with {found} (see {self.path}), not {asked}; "
                    "use the same options to resume, or another --out"
                )
        try:
            ends_cleanly = not self.path.exists() or self.path.stat().st_size == 0 or self.path.read_bytes()[-1:] == b"\n"
            self._file = open(self.path, "a", encoding="utf-8")
            if not ends_cleanly:
                self._file.write("\n")  # end the partial line of an interrupted write
            if self.header is None:
                self.header = header
                self.append(header)
        except OSError as e:
            raise write_error(f"the manifest {self.path}", e) from None

    def append(self, record: dict) -> None:
        try:
            self._file.write(json.dumps(record, sort_keys=True) + "\n")
            self._file.flush()
            self._unsynced += 1
            if self._unsynced >= self.sync_every:
                self.sync()
        except OSError as e:
            raise _write_error(self.path.parent, e) from None
        if "name" in record:
            self.records[record["name"]] = record

    def sync(self) -> None:
        if self._file is not None and self._unsynced:
            os.fsync(self._file.fileno())
            self._unsynced = 0

    def close(self) -> None:
        if self._file is not None:
            try:
                self.sync()
            finally:
                self._file.close()
                self._file = None


# ======================================================================== the command
def _write_error(out: Path, error: OSError) -> GalgenError:
    return write_error(f"--out {out}", error, "write to")


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Create ``out`` and hold its lock file: one downloader per folder at a time."""
    from galgen_lightning.faults.lock import FolderLock

    def busy(pid: str) -> GalgenError:
        return GalgenError(f"--out {out}: another galgen data download (pid {pid}) is writing to it ({out / LOCK} is locked)")

    with FolderLock(out, LOCK, f"--out {out}").held(busy):
        yield


def _probe(out: Path) -> None:
    """Fail early, with one line, when files cannot be created in ``out``."""
    probe = out / f".galgen-probe{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise _write_error(out, e) from None


def _outcome_text(counts: Counter) -> str:
    return ", ".join(f"{n:,} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def download(
    catalogue: str,
    out: str = "data/cutouts",
    ra_column: str | None = None,
    dec_column: str | None = None,
    id_column: str | None = None,
    first: int | None = None,
    layer: str = "ls-dr9",
    bands: str = "grz",
    pixscale: float = 0.262,
    size: int = 256,
    url_template: str = DEFAULT_URL_TEMPLATE,
    workers: int = 8,
    rate: float | None = 8.0,
    timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 2.0,
    max_backoff: float = 120.0,
    retry_failed: bool = False,
    min_finite: float = 0.5,
    verify: bool = False,
) -> dict:
    """Download FITS cutouts of the galaxies of a catalogue into a folder FitsCutouts reads.

    One request per galaxy; ``<out>/<name>.fits`` holds its ``(bands, size, size)`` cube.
    Resumable: ``<out>/manifest.jsonl`` records each galaxy's outcome and a rerun carries on
    with the galaxies not done (interrupted, or failed for a transient reason).

    Args:
        catalogue: table of positions (CSV, FITS table, ECSV, VOTable, ... read with astropy),
            RA and Dec in degrees.
        out: the folder of cutouts (created; ``configs/data/fits.yaml`` reads ``data/cutouts``).
        ra_column: the RA column (default: ``ra``, ``ra_deg``, ``raj2000``, ... in any case).
        dec_column: the Dec column (default: ``dec``, ``dec_deg``, ``dej2000``, ...).
        id_column: column naming the files (default: ``cutout_<row>``, zero-padded).
        first: only the first this many galaxies of the catalogue.
        layer: survey layer of the cutout service (the paper: ``ls-dr9``).
        bands: bands, one letter each, in the order of the planes (the paper: ``grz``).
        pixscale: arcseconds per pixel (the paper: 0.262, the survey's native scale).
        size: cutout side in pixels (galgen uses the central 256 of the paper's 512).
        url_template: URL of one cutout with ``{ra}`` and ``{dec}`` (degrees), and optionally
            ``{layer}``, ``{bands}``, ``{pixscale}``, ``{size}`` (default: the Legacy Survey
            viewer's fits-cutout service).
        workers: downloads in flight at once (threads, one HTTP session each).
        rate: at most this many requests per second over all workers (retries included);
            null: no limit.
        timeout: seconds to wait to connect and for each read of the answer.
        retries: further attempts after a timeout, connection error, truncated body, 429 or 5xx.
        backoff: first wait between attempts in seconds, doubled each retry, with jitter.
        max_backoff: longest wait between attempts (a ``Retry-After`` header may ask for more,
            up to 10 minutes).
        retry_failed: also retry galaxies that failed for a lasting reason (a 4xx answer, an
            invalid file) in an earlier run.
        min_finite: a cutout with a smaller share of finite pixels is recorded as failed.
        verify: open and check every file recorded as done (default: check that it exists).

    Returns:
        The counts by outcome over the galaxies selected.
    """
    # -- check everything before writing anything
    check_template(url_template)
    if not re.fullmatch(r"[A-Za-z]+", bands) or len(set(bands)) != len(bands):
        raise GalgenError(f"--bands must be band letters, each once (e.g. grz), got {bands!r}")
    for option, value in (
        ("size", size),
        ("pixscale", pixscale),
        ("workers", workers),
        ("timeout", timeout),
        ("backoff", backoff),
        ("max_backoff", max_backoff),
    ):
        if value is None or value <= 0:
            raise GalgenError(f"--{option} must be positive, got {value}")
    if rate is not None and rate <= 0:
        raise GalgenError(f"--rate must be positive (or null for no limit), got {rate}")
    if retries < 0:
        raise GalgenError(f"--retries must not be negative, got {retries}")
    if first is not None and first < 1:
        raise GalgenError(f"--first must be positive, got {first}")
    if not 0.0 <= min_finite <= 1.0:
        raise GalgenError(f"--min_finite must lie in [0, 1], got {min_finite}")
    galaxies = read_catalogue(catalogue, ra_column, dec_column, id_column)
    total_rows = len(galaxies)
    if first is not None:
        galaxies = galaxies[:first]
    outdir = Path(out).expanduser()
    if outdir.exists() and not outdir.is_dir():
        raise GalgenError(f"--out {outdir}: cannot write there: it is a file, not a folder")
    spec = CutoutSpec(bands, size, min_finite)
    params = {"layer": layer, "bands": bands, "pixscale": f"{pixscale:g}", "size": size}
    header = {
        "kind": "download",
        "format": MANIFEST_FORMAT,
        "url_template": url_template,
        "catalogue": str(Path(catalogue).expanduser().resolve()),
        **params,
    }

    with _locked(outdir):
        _probe(outdir)
        for stale in outdir.glob(".*.fits.part*"):  # files in flight when an earlier run was killed
            stale.unlink(missing_ok=True)
        manifest = Manifest(outdir / MANIFEST)
        for g in galaxies:
            known = manifest.records.get(g.name)
            if known is not None and (abs(known.get("ra", g.ra) - g.ra) > 1e-7 or abs(known.get("dec", g.dec) - g.dec) > 1e-7):
                raise GalgenError(
                    f"{manifest.path} records {g.name} at ra={known.get('ra')}, dec={known.get('dec')} but the catalogue has "
                    f"ra={g.ra}, dec={g.dec} in row {g.row}; use the catalogue of that download, or another --out"
                )
        manifest.open(header)
        fetcher = Fetcher(outdir, spec, url_template, params, timeout, retries, backoff, max_backoff, rate, threading.Event())
        try:
            todo, before = _plan(galaxies, manifest, outdir, spec, retry_failed, verify)
            print(
                f"galgen: data download: {len(galaxies):,} of the {total_rows:,} galaxies of {catalogue}: "
                f"{before['done']:,} already done, "
                f"{before['failed']:,} failed before, {len(todo):,} to download into {outdir} "
                f"({workers} worker{'s' * (workers != 1)}, "
                f"{'no rate limit' if rate is None else f'at most {rate:g} requests/s'})",
                flush=True,
            )
            return _run(galaxies, todo, manifest, outdir, fetcher, workers)
        finally:
            fetcher.close()
            manifest.close()


def _plan(
    galaxies: list[Galaxy], manifest: Manifest, outdir: Path, spec: CutoutSpec, retry_failed: bool, verify: bool
) -> tuple[list[Galaxy], Counter]:
    """The galaxies to download, and the counts of those done or failed before."""
    before: Counter = Counter()
    todo: list[Galaxy] = []
    for g in galaxies:
        record = manifest.records.get(g.name)
        path = outdir / f"{g.name}.fits"
        if record is not None and record["state"] == "done":
            if path.is_file() and (not verify or check_cutout(path, spec) is None):
                before["done"] += 1
                continue
        elif record is not None and record["state"] == "failed" and not (retry_failed or record.get("transient")):
            before["failed"] += 1
            continue
        if (record is None or record["state"] != "done") and path.is_file():
            # renamed by a run killed before it wrote the manifest line (after no record, or a failed one)
            if check_cutout(path, spec) is None:
                st = path.stat()
                manifest.append(
                    {
                        "name": g.name,
                        "row": g.row,
                        "ra": g.ra,
                        "dec": g.dec,
                        "state": "done",
                        "attempts": 0,
                        "bytes": st.st_size,
                        "detail": "found on disk",
                    }
                )
                before["done"] += 1
                continue
        if path.is_file():
            path.unlink()  # invalid, or done but failing --verify: download again
        todo.append(g)
    return todo, before


def _run(galaxies: list[Galaxy], todo: list[Galaxy], manifest: Manifest, outdir: Path, fetcher: Fetcher, workers: int) -> dict:
    """Download ``todo`` with ``workers`` threads, record each outcome, print the counts."""
    from tqdm.auto import tqdm

    stop = fetcher.stop
    now: Counter = Counter()
    fatal: OSError | None = None
    interrupted = False
    started = time.monotonic()
    queue = iter(todo)
    running: dict[Future, Galaxy] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="galgen-download") as pool:
        with tqdm(
            total=len(todo), unit="cutout", desc="galgen: download", disable=None, file=sys.stderr, dynamic_ncols=True
        ) as bar:
            try:
                while True:
                    while len(running) < 2 * workers and not stop.is_set():
                        g = next(queue, None)
                        if g is None:
                            break
                        running[pool.submit(fetcher.fetch, g)] = g
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        running.pop(future)
                        try:
                            record = future.result()
                        except Stopped:
                            continue
                        except OSError as e:
                            fatal = fatal or e
                            stop.set()
                            continue
                        manifest.append(record)
                        now["done" if record["state"] == "done" else record["reason"]] += 1
                        bar.update(1)
                        bar.set_postfix(done=now["done"], failed=sum(now.values()) - now["done"], refresh=False)
            except KeyboardInterrupt:
                interrupted = True
                stop.set()
                for future in running:
                    future.cancel()
                for future in list(running):  # the ones in flight stop at their next wait or timeout
                    try:
                        record = future.result()
                    except (Stopped, OSError, Exception):
                        continue
                    if not future.cancelled():
                        manifest.append(record)
                        now["done" if record["state"] == "done" else record["reason"]] += 1
    manifest.sync()
    elapsed = time.monotonic() - started

    counts: Counter = Counter()
    failed: Counter = Counter()
    for g in galaxies:
        record = manifest.records.get(g.name)
        if record is None:
            counts["pending"] += 1
        elif record["state"] == "done":
            counts["done"] += 1
        else:
            counts["failed"] += 1
            failed[record.get("reason", "?")] += 1
    downloaded = now["done"]
    rate_text = f", {downloaded / elapsed:.1f} cutouts/s" if downloaded and elapsed > 0 else ""
    fails = f" ({_outcome_text(failed)})" if failed else ""
    print(
        f"galgen: data download: {len(galaxies):,} galaxies: {counts['done']:,} done "
        f"({downloaded:,} now, {counts['done'] - downloaded:,} before), "
        f"{counts['failed']:,} failed{fails}, {counts['pending']:,} pending, in {elapsed:.1f} s{rate_text}; "
        f"manifest {manifest.path}",
        flush=True,
    )
    if fatal is not None:
        raise _write_error(outdir, fatal)
    if interrupted:
        print("galgen: data download: interrupted; run the same command again to carry on", file=sys.stderr, flush=True)
        raise SystemExit(130)
    return {
        "done": counts["done"],
        "failed": counts["failed"],
        "pending": counts["pending"],
        "downloaded": downloaded,
        "by_reason": dict(failed),
    }
