"""The HTTP side of ``galgen data download``: one galaxy's request, retried with backoff, rate-limited,
its body written to a hidden temporary file, checked and only then renamed into place."""

from __future__ import annotations

import email.utils
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from galgen_lightning.data.catalogue import CutoutSpec, Galaxy, check_cutout
from galgen_lightning.errors import first_line

USER_AGENT = "galgen-data-download (+https://github.com; polite: rate-limited, retries with backoff)"
MAX_RETRY_AFTER = 600.0  # seconds: a longer Retry-After is cut to this


class RateLimiter:
    """At most ``rate`` starts per second over all threads (``None``: no limit), and none at all
    during a pause the server asked for (:meth:`pause`)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def pause(self, seconds: float) -> None:
        """No thread starts a request before ``seconds`` from now: a ``Retry-After`` is the
        server's, so every worker honours it, not only the one that was told."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)

    def wait(self, stop: threading.Event) -> bool:
        """Wait for the next slot; ``False`` when ``stop`` was set meanwhile."""
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
                            if retry_after is not None:
                                self.limiter.pause(retry_after)
                        elif not 200 <= status < 300:
                            return self._record(
                                galaxy,
                                "failed",
                                f"http {status}",
                                f"HTTP {status} {response.reason or ''}".strip(),
                                attempt,
                                started,
                            )
                        else:
                            size = self._save(response, tmp)
                            if size is None:
                                return self._record(
                                    galaxy, "failed", "too large", f"body larger than {self.max_bytes:,} bytes", attempt, started
                                )
                            problem = check_cutout(tmp, self.spec)
                            if problem is not None:
                                kind = response.headers.get("Content-Type", "?").split(";")[0]
                                return self._record(
                                    galaxy, "failed", "invalid", f"{problem} (HTTP {status}, {kind})", attempt, started
                                )
                            os.replace(tmp, final)
                            return self._record(galaxy, "done", "", "", attempt, started, size=size)
                except requests.exceptions.ChunkedEncodingError as e:
                    reason, detail = "truncated", f"truncated body ({first_line(e, 160, with_type=True)})"
                except requests.exceptions.Timeout:
                    reason, detail = "timeout", f"no answer within --timeout {self.timeout:g} s"
                except requests.exceptions.ConnectionError as e:
                    timed_out = "timed out" in str(e).lower()
                    reason = "timeout" if timed_out else "connection"
                    detail = (
                        f"no answer within --timeout {self.timeout:g} s"
                        if timed_out
                        else f"connection error ({first_line(e, 160, with_type=True)})"
                    )
                except _Truncated as e:
                    reason, detail = "truncated", str(e)
                except _SlowBody:
                    reason, detail = "timeout", f"body not received within {self._body_limit():g} s"
                except requests.exceptions.RequestException as e:  # an invalid URL, too many redirects, ...
                    return self._record(galaxy, "failed", "request", first_line(e, 160, with_type=True), attempt, started)
                if attempt <= self.retries and self.stop.wait(self._delay(attempt - 1, retry_after)):
                    raise Stopped
            return self._record(
                galaxy, "failed", reason, f"{detail}; gave up after {attempt} attempts", attempt, started, transient=True
            )
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

    def _record(
        self,
        galaxy: Galaxy,
        state: str,
        reason: str,
        detail: str,
        attempts: int,
        started: float,
        size: int = 0,
        transient: bool = False,
    ) -> dict:
        record = {
            "name": galaxy.name,
            "row": galaxy.row,
            "ra": galaxy.ra,
            "dec": galaxy.dec,
            "state": state,
            "attempts": attempts,
        }
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
