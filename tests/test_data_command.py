"""``galgen data download | convert | inspect``: the downloader against a misbehaving local HTTP
server (timeouts, 500, 429 with Retry-After, truncated bodies, HTML pages with status 200, 404,
wrong shapes), resuming after an interruption, bad input as one-line errors, and inspect on the
built-in sources.

Run as a script, this file serves good cutouts for timing the downloader by hand::

    python tests/test_data_command.py serve 8765
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import run_cli  # noqa: E402

# ----------------------------------------------------------------------------- the test server
# How the server answers, by RA. Every other RA gets a good cube at once.
SLOW, ERROR_ONCE, LIMITED_ONCE, TRUNCATED, HTML, MISSING, DOWN, WRONG_SHAPE = 20.5, 21.5, 22.5, 23.5, 24.5, 25.5, 26.5, 27.5
GOOD_RAS = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
RECOVER = [SLOW, ERROR_ONCE, LIMITED_ONCE]  # misbehave on the first request only, then fine
FAIL = {TRUNCATED: "truncated", HTML: "invalid", MISSING: "http 404", DOWN: "http 503", WRONG_SHAPE: "invalid"}
SLOW_SECONDS = 1.2
TIMEOUT = "0.5"


def cube(ra: float, bands: str, size: int) -> np.ndarray:
    """The cutout the server gives for ``ra``: sky noise, an elliptical galaxy near the centre
    and a companion, different per RA (different enough not to be near-duplicates)."""
    rng = np.random.default_rng(int(ra * 1000))
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    cx, cy = size / 2 + rng.normal(0, size / 40, 2)
    sx, sy, angle = rng.uniform(size / 40, size / 8), rng.uniform(size / 40, size / 8), rng.uniform(0, np.pi)
    ox, oy = rng.uniform(0, size, 2)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    galaxy = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    companion = np.exp(-0.5 * ((xx - ox) ** 2 + (yy - oy) ** 2) / (size / 30) ** 2)
    planes = [f * (galaxy + 0.3 * companion) + rng.normal(0.0, 0.05, (size, size)) for f in rng.uniform(0.5, 4.0, len(bands))]
    return np.stack(planes).astype(np.float32)


def fits_bytes(data: np.ndarray, bands: str) -> bytes:
    hdu = fits.PrimaryHDU(data)
    hdu.header["BANDS"] = bands
    for i, b in enumerate(bands):
        hdu.header[f"BAND{i}"] = b
    buf = io.BytesIO()
    hdu.writeto(buf)
    return buf.getvalue()


class CutoutServer:
    """A local cutout service on 127.0.0.1 (port 0), misbehaving on purpose by RA."""

    def __init__(self, misbehave: bool = True) -> None:
        self.hits: Counter = Counter()
        self.times: dict[float, list[float]] = defaultdict(list)
        self.connections: set = set()
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the client's sessions reuse connections

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                q = parse_qs(urlparse(self.path).query)
                ra, bands, size = float(q["ra"][0]), q.get("bands", ["grz"])[0], int(q.get("size", ["32"])[0])
                with outer.lock:
                    outer.hits[ra] += 1
                    outer.times[ra].append(time.monotonic())
                    outer.connections.add(self.client_address)
                    first = outer.hits[ra] == 1
                act = "good" if not misbehave else outer.behaviour(ra, first)
                try:
                    self.answer(act, ra, bands, size)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def send(self, status: int, body: bytes, kind: str = "application/fits", extra: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def answer(self, act: str, ra: float, bands: str, size: int) -> None:
                good = fits_bytes(cube(ra, bands, size), bands)
                if act == "slow":
                    time.sleep(SLOW_SECONDS)
                    self.send(200, good)
                elif act == "500":
                    self.send(500, b"internal error", "text/plain")
                elif act == "429":
                    self.send(429, b"slow down", "text/plain", {"Retry-After": "1"})
                elif act == "503":
                    self.send(503, b"down", "text/plain")
                elif act == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/fits")
                    self.send_header("Content-Length", str(len(good)))
                    self.end_headers()
                    self.wfile.write(good[: len(good) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                elif act == "html":
                    self.send(200, b"<!DOCTYPE html><html><body>No such layer</body></html>", "text/html")
                elif act == "404":
                    self.send(404, b"not found", "text/plain")
                elif act == "shape":
                    self.send(200, fits_bytes(cube(ra, bands, 10), bands))
                else:
                    self.send(200, good)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @staticmethod
    def behaviour(ra: float, first: bool) -> str:
        once = {SLOW: "slow", ERROR_ONCE: "500", LIMITED_ONCE: "429"}
        always = {TRUNCATED: "truncated", HTML: "html", MISSING: "404", DOWN: "503", WRONG_SHAPE: "shape"}
        if ra in once:
            return once[ra] if first else "good"
        return always.get(ra, "good")

    @property
    def template(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/cutout?ra={{ra}}&dec={{dec}}&layer={{layer}}&bands={{bands}}&size={{size}}&pixscale={{pixscale}}"

    def __enter__(self) -> CutoutServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    with CutoutServer() as s:
        yield s


def write_catalogue(path: Path, ras: list[float], extra: str = "") -> Path:
    lines = ["objid,ra,dec" + extra] + [f"{1000 + i},{ra},{-5 + i * 0.5}" for i, ra in enumerate(ras)]
    path.write_text("\n".join(lines) + "\n")
    return path


def fast(server: CutoutServer, out: Path, *more: str) -> list[str]:
    """Options for short tests: small cutouts, short timeouts and waits."""
    return [f"--out={out}", f"--url_template={server.template}", "--size=32", f"--timeout={TIMEOUT}", "--retries=3",
            "--backoff=0.05", "--max_backoff=0.2", "--workers=4", "--rate=null", *more]  # fmt: skip


def manifest_records(out: Path) -> dict[str, dict]:
    """The last record of each galaxy in a folder's manifest (a partial last line, as a kill
    leaves, is skipped)."""
    last = {}
    for line in (out / "manifest.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "name" in record:
            last[record["name"]] = record
    return last


def states(out: Path) -> dict[str, tuple]:
    """The final state of every galaxy in a folder's manifest: name -> (state, reason)."""
    last = manifest_records(out)
    return {n: (r["state"], r.get("reason", "")) for n, r in sorted(last.items())}


def folder_digest(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.is_file()}


ALL_RAS = GOOD_RAS[:3] + RECOVER + list(FAIL) + GOOD_RAS[3:]


def expected_states() -> dict[str, tuple]:
    return {f"cutout_{i:06d}": ("failed", FAIL[ra]) if ra in FAIL else ("done", "") for i, ra in enumerate(ALL_RAS)}


def check_folder(out: Path) -> None:
    """Every done galaxy has its valid file with the server's pixels; nothing else is there."""
    want = expected_states()
    assert states(out) == want
    files = sorted(p.name for p in out.glob("*.fits"))
    assert files == sorted(f"{n}.fits" for n, (s, _) in want.items() if s == "done")
    assert not [p for p in out.iterdir() if ".part" in p.name]
    for i, ra in enumerate(ALL_RAS):
        if ra not in FAIL:
            with fits.open(out / f"cutout_{i:06d}.fits") as hdul:
                np.testing.assert_array_equal(hdul[0].data, cube(ra, "grz", 32))
                assert hdul[0].header["BANDS"] == "grz"


# ----------------------------------------------------------------------------- download
def test_download_retries_records_failures_and_resumes(tmp_path, server, capsys, monkeypatch):
    from galgen_lightning.data import download as dl

    cat = write_catalogue(tmp_path / "cat.csv", ALL_RAS)
    out = tmp_path / "cutouts"

    # 1. a partial run (--first), then the debris a kill -9 leaves: a file in flight, half a manifest line
    assert run_cli(["data", "download", str(cat), *fast(server, out, "--first=4")]) == 0
    first = states(out)
    assert len(first) == 4 and all(s == ("done", "") for s in first.values())
    (out / ".cutout_000005.fits.part123-456").write_bytes(b"SIMPLE  = half a file")
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"name": "cutout_0000')

    # 2. an injected crash mid-way: files renamed before their manifest line are found again later
    calls = {"n": 0}
    original = dl.Manifest.append

    def crash(self, record):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("injected crash")
        return original(self, record)

    monkeypatch.setattr(dl.Manifest, "append", crash)
    with pytest.raises(RuntimeError, match="injected"):
        run_cli(["data", "download", str(cat), *fast(server, out)])
    monkeypatch.setattr(dl.Manifest, "append", original)
    assert not [p for p in out.glob("*.fits") if p.stat().st_size == 0]

    # 3. the rerun finishes
    capsys.readouterr()
    assert run_cli(["data", "download", str(cat), *fast(server, out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    check_folder(out)
    assert "9 done" in printed and "5 failed" in printed and "0 pending" in printed, printed
    for reason in ("2 invalid", "1 http 404", "1 http 503", "1 truncated"):
        assert reason in printed, printed

    records = manifest_records(out)
    by_ra = {ra: records[f"cutout_{i:06d}"] for i, ra in enumerate(ALL_RAS)}
    assert server.hits[MISSING] == 1 and by_ra[MISSING]["transient"] is False  # a 404 is not retried
    assert "not a FITS file" in by_ra[HTML]["detail"] and "text/html" in by_ra[HTML]["detail"]
    assert "10x10" in by_ra[WRONG_SHAPE]["detail"]
    assert by_ra[DOWN]["transient"] and by_ra[DOWN]["attempts"] == 4
    assert by_ra[TRUNCATED]["transient"] and "truncated" in by_ra[TRUNCATED]["detail"]
    assert server.hits[SLOW] == 2 and server.hits[ERROR_ONCE] == 2 and server.hits[LIMITED_ONCE] == 2
    waited = server.times[LIMITED_ONCE][1] - server.times[LIMITED_ONCE][0]
    assert waited >= 0.95, f"Retry-After: 1 not honoured ({waited:.2f} s)"
    assert len(server.connections) < sum(server.hits.values())  # sessions reuse their connections

    # 4. a further run downloads nothing again: only the transient failures are retried
    hits = Counter(server.hits)
    assert run_cli(["data", "download", str(cat), *fast(server, out, "--retries=0")]) == 0
    assert {ra for ra in server.hits if server.hits[ra] != hits[ra]} == {DOWN, TRUNCATED}
    check_folder(out)

    # 5. the same catalogue in one uninterrupted run gives the same folder
    fresh = tmp_path / "fresh"
    assert run_cli(["data", "download", str(cat), *fast(server, fresh)]) == 0
    check_folder(fresh)
    assert {k: v for k, v in folder_digest(fresh).items() if k.endswith(".fits")} == {
        k: v for k, v in folder_digest(out).items() if k.endswith(".fits")
    }

    # 6. convert reads the folder into the cache galgen fit reads; inspect finds nothing rejected
    capsys.readouterr()
    source = [
        "--source=galgen_lightning.data.FitsCutouts",
        f"--source.directory={out}",
        "--source.workers=1",
        f"--source.cache_dir={tmp_path / 'cache'}",
    ]
    assert run_cli(["data", "convert", *source, "--image_size=16"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "9 usable images at 16px" in line and "none rejected" in line, line
    from galgen_lightning.data import FitsCutouts

    reader = FitsCutouts(str(out), workers=1, cache_dir=str(tmp_path / "cache"))
    assert reader.available() == 9  # the conversion is complete: the exact count is in the cache


def test_interrupt_keeps_the_folder_resumable(tmp_path, server, monkeypatch, capsys):
    from galgen_lightning.data import download as dl

    cat = write_catalogue(tmp_path / "cat.csv", ALL_RAS)
    out = tmp_path / "cutouts"
    calls = {"n": 0}
    original = dl.Manifest.append

    def interrupt(self, record):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, record)

    monkeypatch.setattr(dl.Manifest, "append", interrupt)
    assert run_cli(["data", "download", str(cat), *fast(server, out)]) == 130
    assert "run the same command again" in capsys.readouterr().err
    monkeypatch.setattr(dl.Manifest, "append", original)
    assert run_cli(["data", "download", str(cat), *fast(server, out)]) == 0
    check_folder(out)


def test_kill_9_mid_download_then_rerun_ends_as_one_uninterrupted_run(tmp_path, server):
    """A real SIGKILL of a child `galgen data download` mid-run: the rerun finishes with every good
    galaxy downloaded and valid, every bad one recorded, and no partial file counted as done."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cat = write_catalogue(tmp_path / "cat.csv", ALL_RAS)
    out = tmp_path / "cutouts"
    slow = [*fast(server, out)[:-1], "--rate=3", "--workers=1"]  # about 3 requests a second: time to kill it
    child = subprocess.Popen([sys.executable, "-m", "galgen_lightning.cli", "data", "download", str(cat), *slow],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and child.poll() is None:
            if (out / "manifest.jsonl").exists() and len(manifest_records(out)) >= 3:
                break
            time.sleep(0.05)
        assert child.poll() is None, "the download ended before it could be killed"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert 3 <= len(manifest_records(out)) < len(ALL_RAS)  # killed mid-way
    assert run_cli(["data", "download", str(cat), *fast(server, out)]) == 0
    check_folder(out)


def test_download_of_an_id_column_and_a_fits_catalogue(tmp_path, server):
    from astropy.table import Table

    cat = tmp_path / "cat.fits"
    Table({"OBJID": ["J1", "J/2", "J1"], "RA_DEG": [10.0, 11.0, 12.0], "DEC_DEG": [0.0, 1.0, 2.0]}).write(cat)
    out = tmp_path / "out"
    assert run_cli(["data", "download", str(cat), *fast(server, out, "--id_column=objid", "--first=2")]) == 2  # J1 twice
    assert not out.exists()
    Table({"OBJID": ["J1", "J/2"], "RA_DEG": [10.0, 11.0], "DEC_DEG": [0.0, 1.0]}).write(cat, overwrite=True)
    assert run_cli(["data", "download", str(cat), *fast(server, out, "--id_column=objid")]) == 0
    assert sorted(p.name for p in out.glob("*.fits")) == ["J1.fits", "J_2.fits"]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "case, message",
    [
        ("columns", "no RA column"),
        ("ra", "out of range"),
        ("dec", "out of range"),
        ("unwritable", "cannot create --out"),
        ("template", "must contain {ra} and {dec}"),
        ("format", "without a format or conversion ({ra:.4f}, {dec!r})"),
        ("options", "holds cutouts downloaded with size=32"),
        ("missing", "does not exist"),
        ("busy", f"another galgen data download (pid {os.getpid()}) is writing to it"),
    ],
)
def test_bad_input_is_one_line_and_loses_nothing(tmp_path, server, capsys, case, message):
    cat = write_catalogue(tmp_path / "cat.csv", [10.0, 11.0])
    out = tmp_path / "cutouts"
    assert run_cli(["data", "download", str(cat), *fast(server, out)]) == 0
    before = folder_digest(out)
    capsys.readouterr()
    args = ["data", "download", str(cat), *fast(server, out)]
    if case == "columns":
        (tmp_path / "cat.csv").write_text("x,y\n1,2\n")
    elif case == "ra":
        write_catalogue(tmp_path / "cat.csv", [10.0, 400.0])
    elif case == "dec":
        (tmp_path / "cat.csv").write_text("ra,dec\n10.0,-95\n")
    elif case == "unwritable":
        (tmp_path / "file").write_text("a file")
        args = ["data", "download", str(cat), *fast(server, tmp_path / "file" / "sub")]
    elif case == "template":
        args.append("--url_template=http://127.0.0.1:1/cutout?dec={dec}&size={size}")
    elif case == "format":  # the values come formatted already: a format spec would fail in the workers
        args.append("--url_template=http://127.0.0.1:1/cutout?ra={ra:.4f}&dec={dec!r}")
    elif case == "options":
        args.append("--size=64")
    elif case == "missing":
        args[2] = str(tmp_path / "nope.csv")
    elif case == "busy":  # another downloader holds the folder
        from galgen_lightning.data.download import LOCK
        from galgen_lightning.faults.lock import FolderLock

        holder = FolderLock(out, LOCK).acquire()
    code = run_cli(args)
    if case == "busy":
        holder.release()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("galgen: error:") and message in err[0], err
    assert folder_digest(out) == before


def test_template_must_name_ra_and_dec_and_known_placeholders():
    from galgen_lightning.data.download import check_template
    from galgen_lightning.errors import GalgenError

    check_template("https://example.org/c?ra={ra}&dec={dec}")
    for bad, words in (
        ("https://x/?ra={ra}", "{dec}"),
        ("https://x/?ra={ra}&dec={dec}&z={zoom}", "unknown"),
        ("x?ra={ra}&dec={dec}", "http"),
    ):
        with pytest.raises(GalgenError, match=words):
            check_template(bad)


def test_a_retry_after_pauses_every_worker_not_only_the_one_told(tmp_path):
    """A 429 with Retry-After: 1 on one worker: no worker starts a request in the next second."""
    goods = [30.0 + i for i in range(40)]
    with CutoutServer() as server:
        cat = write_catalogue(tmp_path / "cat.csv", [LIMITED_ONCE, *goods])
        assert run_cli(["data", "download", str(cat), *fast(server, tmp_path / "out", "--workers=2")]) == 0
    told = server.times[LIMITED_ONCE][0]  # when the 429 went out
    others = sorted(t - told for ra in goods for t in server.times[ra])
    assert server.hits[LIMITED_ONCE] == 2 and sum(server.hits[ra] for ra in goods) == len(goods)
    assert not [t for t in others if 0.1 < t < 0.95], others  # started during the pause
    assert any(t >= 0.95 for t in others)


def test_retry_after_parsing():
    from email.utils import formatdate

    from galgen_lightning.data.fetch import retry_after_seconds

    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert 5 < retry_after_seconds(formatdate(time.time() + 10, usegmt=True)) <= 10
    assert retry_after_seconds("99999") == 600.0


# ----------------------------------------------------------------------------- inspect
def _pngs_open(out: Path, rejected: bool) -> dict:
    import matplotlib.image as mpimg

    assert mpimg.imread(out / "images.png").ndim == 3
    assert (out / "rejected.png").exists() == rejected
    if rejected:
        assert mpimg.imread(out / "rejected.png").ndim == 3
    return json.loads((out / "summary.json").read_text())


def test_inspect_synthetic_with_nearest(tmp_path, capsys):
    out = tmp_path / "inspect"
    src = ["--source=galgen_lightning.data.SyntheticGalaxies", "--source.size=40", "--source.chunk=40", "--source.workers=1"]
    assert (
        run_cli(
            ["data", "inspect", *src, "--image_size=16", "--n=10", "--n_val=10", "--nearest=true", "--grid=4", f"--out={out}"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "40 usable images at 16px" in printed and "nearest training image (n=10, 10 held-out images)" in printed
    summary = _pngs_open(out, rejected=False)
    assert summary["usable"] == 40 and summary["split"]["n"] == 10
    assert -1 <= summary["nearest"]["median"] <= 1 and summary["pixels"]["max"] <= 1


def test_inspect_arrays_images_and_fits_show_their_rejections(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.random((30, 20, 20)).astype(np.float32)
    images[[3, 7, 11]] = np.nan
    np.savez(tmp_path / "arr.npz", images=images)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(12):
        Image.fromarray((rng.random((24, 24)) * 255).astype(np.uint8)).save(folder / f"g{i:02d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    fitsdir = tmp_path / "fits"
    fitsdir.mkdir()
    for i in range(6):
        data = cube(10.0 + i, "grz", 24)
        if i == 2:
            data[1, 3, 3] = np.nan
        (fitsdir / f"c{i}.fits").write_bytes(fits_bytes(data, "grz"))
    cases = [
        (["--source=galgen_lightning.data.ArrayFile", f"--source.path={tmp_path / 'arr.npz'}"], 27, "3 NaN or infinite pixels"),
        (
            ["--source=galgen_lightning.data.ImageFolder", f"--source.directory={folder}", "--source.workers=1"],
            12,
            "1 unreadable or truncated",
        ),
        (
            ["--source=galgen_lightning.data.FitsCutouts", f"--source.directory={fitsdir}", "--source.workers=1"],
            5,
            "1 NaN or infinite pixels",
        ),
    ]
    for k, (src, usable, reason) in enumerate(cases):
        out = tmp_path / f"inspect{k}"
        capsys.readouterr()
        assert run_cli(["data", "inspect", *src, "--image_size=16", "--grid=3", f"--out={out}"]) == 0
        printed = capsys.readouterr().out
        assert f"{usable} usable images at 16px" in printed and reason in printed, printed
        summary = _pngs_open(out, rejected=True)
        assert summary["usable"] == usable and summary["rejected_shown"]


def test_inspect_hubble_deep_field(tmp_path, capsys):
    out = tmp_path / "hxdf"
    assert (
        run_cli(
            [
                "data",
                "inspect",
                "--source=galgen_lightning.data.HubbleDeepField",
                "--image_size=16",
                "--count=40",
                "--grid=3",
                f"--out={out}",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "40 usable images" in printed and "too close to the edge" in printed
    _pngs_open(out, rejected=False)


def test_data_command_parse_errors_are_one_line(capsys):
    for args in (
        ["data"],
        ["data", "inspect"],
        ["data", "download"],
        ["data", "convert", "--source=galgen_lightning.data.FitsCutouts"],
    ):
        assert run_cli(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("galgen: error:"), (args, err)
    assert run_cli(["data", "inspect", "--source=galgen_lightning.data.SyntheticGalaxies", "--nearest=true"]) == 2
    assert "--nearest needs --n" in capsys.readouterr().err


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    import socketserver

    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8765
    server = CutoutServer(misbehave=False)
    server.httpd.server_close()
    socketserver.TCPServer.allow_reuse_address = True
    server.httpd = ThreadingHTTPServer(("127.0.0.1", port), server.httpd.RequestHandlerClass)
    print(f"serving good cutouts at {server.template}", flush=True)
    server.httpd.serve_forever()


def test_a_valid_file_after_a_failed_record_is_kept_on_resume(tmp_path, server, capsys):
    """A galaxy recorded as a transient failure whose cutout then landed (renamed just before a
    kill, before its manifest line): the rerun finds it, checks it and records it, never deletes it."""
    import shutil

    cat = write_catalogue(tmp_path / "cat.csv", ALL_RAS)
    out = tmp_path / "cutouts"
    assert run_cli(["data", "download", str(cat), *fast(server, out, "--retries=0")]) == 0
    down = f"cutout_{ALL_RAS.index(DOWN):06d}"
    assert manifest_records(out)[down]["state"] == "failed"
    shutil.copy(next(p for p in sorted(out.glob("cutout_*.fits"))), out / f"{down}.fits")
    hits = server.hits[DOWN]
    assert run_cli(["data", "download", str(cat), *fast(server, out, "--retries=0")]) == 0
    assert (out / f"{down}.fits").is_file() and server.hits[DOWN] == hits
    assert manifest_records(out)[down]["state"] == "done" and manifest_records(out)[down]["detail"] == "found on disk"


def test_a_bom_in_a_csv_catalogue_and_an_empty_id(tmp_path, server, capsys):
    """Excel's "CSV UTF-8" starts with a byte-order mark; an empty id cell is an error, not a file named '--'."""
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfra,dec\n10.0,1.0\n11.0,2.0\n")
    assert run_cli(["data", "download", str(bom), *fast(server, tmp_path / "o1")]) == 0
    empty = tmp_path / "empty.csv"
    empty.write_text("id,ra,dec\n1,10,1\n,11,2\n")
    assert run_cli(["data", "download", str(empty), *fast(server, tmp_path / "o2", "--id_column=id")]) == 2
    assert "column 'id' is empty in row 1" in capsys.readouterr().err and not (tmp_path / "o2").exists()
