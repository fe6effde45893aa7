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
  exponential backoff and jitter (a ``Retry-After`` header is honoured); any other 4xx and a
  body that is not a valid cutout (an HTML error page served with status 200) are recorded
  as failed with the reason and not retried (``retry_failed`` retries them in a later run);
- requests go through one ``requests.Session`` per thread (connections are reused), at most
  ``rate`` per second over all threads.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import re
import string
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galgen_lightning.errors import GalgenError

DEFAULT_URL_TEMPLATE = (
    "https://www.legacysurvey.org/viewer/fits-cutout?ra={ra}&dec={dec}&layer={layer}&pixscale={pixscale}&bands={bands}&size={size}"
)
"""The Legacy Survey viewer's FITS cutout service, one request per galaxy (all bands in one cube)."""

PLACEHOLDERS = ("ra", "dec", "layer", "bands", "pixscale", "size")
MANIFEST = "manifest.jsonl"
LOCK = ".galgen-download.lock"
MANIFEST_FORMAT = 1
USER_AGENT = "galgen-data-download (+https://github.com; polite: rate-limited, retries with backoff)"
RA_NAMES = ("ra", "ra_deg", "raj2000", "ra_icrs", "radeg")
DEC_NAMES = ("dec", "dec_deg", "dej2000", "decj2000", "dec_icrs", "decdeg")
MAX_RETRY_AFTER = 600.0  # seconds: a longer Retry-After is cut to this
SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class Galaxy:
    """One row of the catalogue: the file name (without ``.fits``), its row and position."""

    name: str
    row: int
    ra: float
    dec: float


@dataclass(frozen=True)
class CutoutSpec:
    """What a valid cutout holds: ``len(bands)`` planes of ``size`` x ``size`` pixels, at least
    ``min_finite`` of them finite."""

    bands: str
    size: int
    min_finite: float


# ======================================================================== checking the input
def check_template(template: str) -> None:
    """The URL template must contain ``{ra}`` and ``{dec}`` and no other placeholder than
    :data:`PLACEHOLDERS`."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise GalgenError(f"--url_template {template!r} is not a valid template ({e}); write the position as {{ra}} and {{dec}}") from None
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        raise GalgenError(
            f"--url_template {template!r} has unknown placeholders {', '.join('{' + f + '}' for f in unknown)}; "
            f"allowed: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
        )
    missing = [p for p in ("ra", "dec") if p not in fields]
    if missing:
        raise GalgenError(f"--url_template {template!r} lacks {' and '.join('{' + p + '}' for p in missing)}: it must contain {{ra}} and {{dec}}")
    if not re.match(r"^https?://", template):
        raise GalgenError(f"--url_template {template!r} must start with http:// or https://")


def _find_column(names: list[str], wanted: str | None, defaults: tuple[str, ...], option: str, what: str, path: Path) -> str:
    by_lower = {n.lower(): n for n in names}
    if wanted is not None:
        if wanted in names:
            return wanted
        if wanted.lower() in by_lower:
            return by_lower[wanted.lower()]
        raise GalgenError(f"{option}: the catalogue {path} has no column {wanted!r} (columns: {', '.join(names[:20])})")
    for candidate in defaults:
        if candidate in by_lower:
            return by_lower[candidate]
    raise GalgenError(
        f"the catalogue {path} has no {what} column (looked for {', '.join(defaults)}; columns: {', '.join(names[:20]) or 'none'}); name it with {option}"
    )


def _read_table(path: Path) -> Any:
    from astropy.table import Table

    lower = path.name.lower()
    if lower.endswith((".csv", ".csv.gz")):
        formats: list[str | None] = ["ascii.csv"]
    elif lower.endswith((".fits", ".fit", ".fits.gz", ".fts")):
        formats = ["fits"]
    else:
        formats = [None, "ascii"]  # astropy's guess from the name (ECSV, VOTable, HDF5, ...), else any text table
    error: Exception | None = None
    for fmt in formats:
        try:
            return Table.read(path, format=fmt) if fmt else Table.read(path)
        except Exception as e:  # astropy raises many types on a file it cannot parse
            error = e
    text = str(error).strip().splitlines()[0][:200] if error and str(error).strip() else type(error).__name__
    raise GalgenError(f"cannot read the catalogue {path}: {text}") from None


def _column(table: Any, name: str, path: Path) -> np.ndarray:
    col = table[name]
    mask = np.asarray(getattr(col, "mask", np.zeros(len(col), bool)), dtype=bool).reshape(len(col), -1).any(axis=1)
    if mask.any():
        raise GalgenError(f"the catalogue {path}: column {name!r} has no value in row {int(np.flatnonzero(mask)[0])}")
    try:
        return np.asarray(col, dtype=np.float64).reshape(len(col))
    except (TypeError, ValueError):
        raise GalgenError(f"the catalogue {path}: column {name!r} is not numeric (degrees expected), e.g. {col[0]!r}") from None


def read_catalogue(
    path: str | Path, ra_column: str | None = None, dec_column: str | None = None, id_column: str | None = None
) -> list[Galaxy]:
    """The galaxies of a catalogue (CSV, FITS table, ECSV, VOTable, any table astropy reads).

    RA and Dec are in degrees (``0 <= ra < 360``, ``-90 <= dec <= 90``); their columns are
    ``ra_column`` / ``dec_column`` (default: ``ra`` / ``dec`` and usual variants, in any case).
    Files are named after ``id_column`` (made safe for a file name; the values must be
    unique) or, without it, ``cutout_<row>`` with the row number zero-padded, so that the
    folder sorts in catalogue order.

    Raises:
        GalgenError: a missing or unreadable file, a missing column, a missing, non-numeric or
            out-of-range position, duplicate identifiers.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise GalgenError(f"the catalogue {path} {'is a directory' if path.is_dir() else 'does not exist'}")
    table = _read_table(path)
    names = list(table.colnames)
    ra_name = _find_column(names, ra_column, RA_NAMES, "--ra_column", "RA", path)
    dec_name = _find_column(names, dec_column, DEC_NAMES, "--dec_column", "Dec", path)
    if len(table) == 0:
        raise GalgenError(f"the catalogue {path} has no rows")
    ra, dec = _column(table, ra_name, path), _column(table, dec_name, path)
    for name, values, low, high, closed in ((ra_name, ra, 0.0, 360.0, False), (dec_name, dec, -90.0, 90.0, True)):
        bad = ~np.isfinite(values) | (values < low) | ((values > high) if closed else (values >= high))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            rule = f"{low:g} <= {name} {'<=' if closed else '<'} {high:g} degrees"
            raise GalgenError(f"the catalogue {path}: row {i} has {name} = {values[i]!r}, out of range ({int(bad.sum())} such rows); expected {rule}")
    if id_column is not None:
        id_name = _find_column(names, id_column, (), "--id_column", "id", path)
        ids = [SAFE_NAME.sub("_", str(v).strip()).strip("._") for v in table[id_name]]
        empty = [i for i, v in enumerate(ids) if not v]
        if empty:
            raise GalgenError(f"the catalogue {path}: column {id_name!r} is empty in row {empty[0]}")
        seen: dict[str, int] = {}
        for i, v in enumerate(ids):
            if v in seen:
                raise GalgenError(f"the catalogue {path}: column {id_name!r} repeats {v!r} (rows {seen[v]} and {i}); file names must be unique")
            seen[v] = i
    else:
        width = max(6, len(str(len(table) - 1)))
        ids = [f"cutout_{i:0{width}d}" for i in range(len(table))]
    return [Galaxy(ids[i], i, float(ra[i]), float(dec[i])) for i in range(len(table))]


# ======================================================================== checking a cutout
def check_cutout(path: str | Path, spec: CutoutSpec) -> str | None:
    """Why the file at ``path`` is not a valid cutout, or ``None`` when it is.

    Valid: a FITS file that :func:`~galgen_lightning.data.readers.read_fits_planes` reads
    (one cube, or one image per HDU), with ``len(spec.bands)`` planes of ``spec.size`` x
    ``spec.size`` pixels, band names in the header (when there are any) equal to
    ``spec.bands``, and at least ``spec.min_finite`` of its pixels finite.
    """
    from galgen_lightning.data.readers import Reject, read_fits_planes

    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(80)
    except OSError as e:
        return f"cannot read the file ({e.strerror})"
    if not head.startswith(b"SIMPLE"):
        text = head[:40].decode("latin-1").replace("\n", " ").replace("\r", " ").strip()
        return f"not a FITS file: it starts with {text!r}" if text else "empty body"
    try:
        planes, bands = read_fits_planes(str(path))
    except Reject as r:
        return r.detail
    if len(planes) != len(spec.bands):
        return f"holds {len(planes)} band{'s' * (len(planes) != 1)}, expected {len(spec.bands)} ({spec.bands})"
    if bands is not None and bands != spec.bands:
        return f"its header names the bands {bands!r}, expected {spec.bands!r}"
    shapes = sorted({tuple(p.shape) for p in planes})
    if shapes != [(spec.size, spec.size)]:
        return f"images of {' and '.join('x'.join(map(str, s)) for s in shapes)} pixels, expected {spec.size}x{spec.size}"
    finite = sum(int(np.count_nonzero(np.isfinite(p))) for p in planes) / sum(p.size for p in planes)
    if finite < spec.min_finite:
        return f"only {finite:.0%} of its pixels are finite (--min_finite {spec.min_finite:g})"
    return None


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
            raise GalgenError(f"cannot write the manifest {self.path}: {e.strerror}") from None

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


# ======================================================================== HTTP
class RateLimiter:
    """At most ``rate`` starts per second over all threads (``None``: no limit)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event) -> bool:
        """Wait for the next slot; ``False`` when ``stop`` was set meanwhile."""
        if not self.interval:
            return not stop.is_set()
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        return not stop.wait(slot - now) if slot > now else not stop.is_set()


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class Stopped(Exception):
    """The run is stopping: the galaxy stays pending."""


class Fetcher:
    """Downloads one galaxy (retrying what is worth retrying) and says what happened."""

    def __init__(
        self,
        out: Path,
        spec: CutoutSpec,
        url: str,
        params: dict,
        timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float,
        rate: float | None,
        stop: threading.Event,
    ) -> None:
        self.out, self.spec, self.url, self.params = out, spec, url, params
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, retries, backoff, max_backoff
        self.limiter = RateLimiter(rate)
        self.stop = stop
        self.max_bytes = 16 * len(spec.bands) * spec.size**2 + (1 << 20)  # float64 with room: a larger body is no cutout
        self._local = threading.local()
        self._sessions: list[Any] = []
        self._lock = threading.Lock()

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests
            from requests.adapters import HTTPAdapter

            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = USER_AGENT
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def url_for(self, galaxy: Galaxy) -> str:
        return self.url.format(ra=f"{galaxy.ra:.6f}", dec=f"{galaxy.dec:.6f}", **self.params)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with full jitter in [0.5, 1.5) of the step; at least ``Retry-After``."""
        step = min(self.max_backoff, self.backoff * 2.0**attempt) * random.uniform(0.5, 1.5)
        return max(step, retry_after) if retry_after is not None else step

    def fetch(self, galaxy: Galaxy) -> dict:
        """The outcome record of ``galaxy`` (raises :class:`Stopped` when the run is stopping,
        ``OSError`` when the output folder cannot be written)."""
        import requests

        url = self.url_for(galaxy)
        final = self.out / f"{galaxy.name}.fits"
        tmp = self.out / f".{galaxy.name}.fits.part{os.getpid()}-{threading.get_ident()}"
        started = time.monotonic()
        reason, detail = "", ""
        attempt = 0
        try:
            for attempt in range(1, self.retries + 2):
                if not self.limiter.wait(self.stop):
                    raise Stopped
                retry_after = None
                try:
                    with self._session().get(url, timeout=(self.timeout, self.timeout), stream=True) as response:
                        status = response.status_code
                        if status == 429 or status >= 500:
                            reason, detail = f"http {status}", f"HTTP {status} {response.reason or ''}".strip()
                            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                        elif not 200 <= status < 300:
                            return self._record(galaxy, "failed", f"http {status}", f"HTTP {status} {response.reason or ''}".strip(), attempt, started)
                        else:
                            size = self._save(response, tmp)
                            if size is None:
                                return self._record(galaxy, "failed", "too large", f"body larger than {self.max_bytes:,} bytes", attempt, started)
                            problem = check_cutout(tmp, self.spec)
                            if problem is not None:
                                kind = response.headers.get("Content-Type", "?").split(";")[0]
                                return self._record(galaxy, "failed", "invalid", f"{problem} (HTTP {status}, {kind})", attempt, started)
                            os.replace(tmp, final)
                            return self._record(galaxy, "done", "", "", attempt, started, size=size)
                except requests.exceptions.ChunkedEncodingError as e:
                    reason, detail = "truncated", f"truncated body ({_short(e)})"
                except requests.exceptions.Timeout:
                    reason, detail = "timeout", f"no answer within --timeout {self.timeout:g} s"
                except requests.exceptions.ConnectionError as e:
                    timed_out = "timed out" in str(e).lower()
                    reason = "timeout" if timed_out else "connection"
                    detail = f"no answer within --timeout {self.timeout:g} s" if timed_out else f"connection error ({_short(e)})"
                except _Truncated as e:
                    reason, detail = "truncated", str(e)
                except _SlowBody:
                    reason, detail = "timeout", f"body not received within {self._body_limit():g} s"
                except requests.exceptions.RequestException as e:  # an invalid URL, too many redirects, ...
                    return self._record(galaxy, "failed", "request", _short(e), attempt, started)
                if attempt <= self.retries and self.stop.wait(self._delay(attempt - 1, retry_after)):
                    raise Stopped
            return self._record(galaxy, "failed", reason, f"{detail}; gave up after {attempt} attempts", attempt, started, transient=True)
        finally:
            if tmp.exists():
                tmp.unlink(missing_ok=True)

    def _body_limit(self) -> float:
        return max(30.0, 10 * self.timeout)

    def _save(self, response: Any, tmp: Path) -> int | None:
        """Write the body to ``tmp`` (synced); its size, or ``None`` when it is too large."""
        expected = response.headers.get("Content-Length")
        size = 0
        deadline = time.monotonic() + self._body_limit()
        with open(tmp, "wb") as f:
            for block in response.iter_content(1 << 16):
                size += len(block)
                if size > self.max_bytes:
                    return None
                if time.monotonic() > deadline:
                    raise _SlowBody
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        if expected is not None and expected.isdigit() and int(expected) != size and "Content-Encoding" not in response.headers:
            raise _Truncated(f"truncated body ({size:,} of {int(expected):,} bytes)")
        return size

    def _record(self, galaxy: Galaxy, state: str, reason: str, detail: str, attempts: int, started: float, size: int = 0, transient: bool = False) -> dict:
        record = {"name": galaxy.name, "row": galaxy.row, "ra": galaxy.ra, "dec": galaxy.dec, "state": state, "attempts": attempts}
        record["seconds"] = round(time.monotonic() - started, 3)
        record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if state == "done":
            record["bytes"] = size
        else:
            record.update(reason=reason, detail=detail, transient=transient)
        return record


class _Truncated(Exception):
    pass


class _SlowBody(Exception):
    pass


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160]}" if text else type(error).__name__


# ======================================================================== the command
_WHY = {13: "permission denied", 30: "read-only file system", 28: "no space left on the disk", 20: "a path component is a file, not a folder"}


def _write_error(out: Path, error: OSError) -> GalgenError:
    why = _WHY.get(error.errno or 0) or error.strerror or type(error).__name__
    return GalgenError(f"--out {out}: cannot write there: {why}")


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Create ``out`` and hold its lock file: one downloader per folder at a time."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK, "a")
    except OSError as e:
        raise _write_error(out, e) from None
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise GalgenError(f"--out {out}: another galgen data download is writing to it ({out / LOCK} is locked)") from None
        yield
    finally:
        handle.close()


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
    min_finite: float = 0.5,
    retry_failed: bool = False,
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
        min_finite: a cutout with a smaller share of finite pixels is recorded as failed.
        retry_failed: also retry galaxies that failed for a lasting reason (a 4xx answer, an
            invalid file) in an earlier run.
        verify: open and check every file recorded as done (default: check that it exists).

    Returns:
        The counts by outcome over the galaxies selected.
    """
    # -- check everything before writing anything
    check_template(url_template)
    if not re.fullmatch(r"[A-Za-z]+", bands) or len(set(bands)) != len(bands):
        raise GalgenError(f"--bands must be band letters, each once (e.g. grz), got {bands!r}")
    for option, value in (("size", size), ("pixscale", pixscale), ("workers", workers), ("timeout", timeout), ("backoff", backoff), ("max_backoff", max_backoff)):
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
    header = {"kind": "download", "format": MANIFEST_FORMAT, "url_template": url_template, "catalogue": str(Path(catalogue).expanduser().resolve()), **params}

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
                f"galgen: data download: {len(galaxies):,} of the {total_rows:,} galaxies of {catalogue}: {before['done']:,} already done, "
                f"{before['failed']:,} failed before, {len(todo):,} to download into {outdir} ({workers} worker{'s' * (workers != 1)}, "
                f"{'no rate limit' if rate is None else f'at most {rate:g} requests/s'})",
                flush=True,
            )
            return _run(galaxies, todo, manifest, outdir, fetcher, workers)
        finally:
            fetcher.close()
            manifest.close()


def _plan(galaxies: list[Galaxy], manifest: Manifest, outdir: Path, spec: CutoutSpec, retry_failed: bool, verify: bool) -> tuple[list[Galaxy], Counter]:
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
        if record is None and path.is_file():  # renamed by a run killed before it wrote the manifest line
            if check_cutout(path, spec) is None:
                st = path.stat()
                manifest.append({"name": g.name, "row": g.row, "ra": g.ra, "dec": g.dec, "state": "done", "attempts": 0, "bytes": st.st_size, "detail": "found on disk"})
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
        with tqdm(total=len(todo), unit="cutout", desc="galgen: download", disable=None, file=sys.stderr, dynamic_ncols=True) as bar:
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
        f"galgen: data download: {len(galaxies):,} galaxies: {counts['done']:,} done ({downloaded:,} now, {counts['done'] - downloaded:,} before), "
        f"{counts['failed']:,} failed{fails}, {counts['pending']:,} pending, in {elapsed:.1f} s{rate_text}; manifest {manifest.path}",
        flush=True,
    )
    if fatal is not None:
        raise _write_error(outdir, fatal)
    if interrupted:
        print("galgen: data download: interrupted; run the same command again to carry on", file=sys.stderr, flush=True)
        raise SystemExit(130)
    return {"done": counts["done"], "failed": counts["failed"], "pending": counts["pending"], "downloaded": downloaded, "by_reason": dict(failed)}
