"""The input of ``galgen data download``: the catalogue of positions, the URL template, and
what a valid cutout is (:func:`check_cutout`, used before a downloaded file is kept)."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galgen_lightning.errors import GalgenError

PLACEHOLDERS = ("ra", "dec", "layer", "bands", "pixscale", "size")
RA_NAMES = ("ra", "ra_deg", "raj2000", "ra_icrs", "radeg")
DEC_NAMES = ("dec", "dec_deg", "dej2000", "decj2000", "dec_icrs", "decdeg")
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
        parts = [(f, spec, conversion) for _, f, spec, conversion in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise GalgenError(
            f"--url_template {template!r} is not a valid template ({e}); write the position as {{ra}} and {{dec}}"
        ) from None
    fields = [f for f, _, _ in parts]
    formatted = [f"{{{f}{'!' + c if c else ''}{':' + spec if spec else ''}}}" for f, spec, c in parts if spec or c]
    if formatted:  # the values are filled in already formatted (ra and dec with 6 decimals)
        raise GalgenError(
            f"--url_template {template!r}: write placeholders plainly, without a format or conversion ({', '.join(formatted)})"
        )
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        raise GalgenError(
            f"--url_template {template!r} has unknown placeholders {', '.join('{' + f + '}' for f in unknown)}; "
            f"allowed: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
        )
    missing = [p for p in ("ra", "dec") if p not in fields]
    if missing:
        raise GalgenError(
            f"--url_template {template!r} lacks {' and '.join('{' + p + '}' for p in missing)}: "
            "it must contain {ra} and {dec}"
        )
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
        f"the catalogue {path} has no {what} column (looked for {', '.join(defaults)}; "
        f"columns: {', '.join(names[:20]) or 'none'}); name it with {option}"
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
            table = Table.read(path, format=fmt) if fmt else Table.read(path)
        except Exception as e:  # astropy raises many types on a file it cannot parse
            error = e
            continue
        if table.colnames and table.colnames[0].startswith("\ufeff"):  # a UTF-8 byte-order mark (Excel's "CSV UTF-8")
            table.rename_column(table.colnames[0], table.colnames[0].lstrip("\ufeff"))
        return table
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
            raise GalgenError(
                f"the catalogue {path}: row {i} has {name} = {values[i]!r}, out of range "
                f"({int(bad.sum())} such rows); expected {rule}"
            )
    if id_column is not None:
        id_name = _find_column(names, id_column, (), "--id_column", "id", path)
        col = table[id_name]
        masked = np.asarray(getattr(col, "mask", np.zeros(len(col), bool)), dtype=bool).reshape(len(col), -1).any(axis=1)
        ids = ["" if gone else SAFE_NAME.sub("_", str(v).strip()).strip("._") for v, gone in zip(col, masked)]
        empty = [i for i, v in enumerate(ids) if not v]  # an empty cell (masked: str() would give '--') or only punctuation
        if empty:
            raise GalgenError(f"the catalogue {path}: column {id_name!r} is empty in row {empty[0]}")
        seen: dict[str, int] = {}
        for i, v in enumerate(ids):
            if v in seen:
                raise GalgenError(
                    f"the catalogue {path}: column {id_name!r} repeats {v!r} (rows {seen[v]} and {i}); file names must be unique"
                )
            seen[v] = i
    else:
        width = max(6, len(str(len(table) - 1)))
        ids = [f"cutout_{i:0{width}d}" for i in range(len(table))]
    return [Galaxy(ids[i], i, float(ra[i]), float(dec[i])) for i in range(len(table))]


# ======================================================================== checking a cutout
def check_cutout(path: str | Path, spec: CutoutSpec) -> str | None:
    """Why the file at ``path`` is not a valid cutout, or ``None`` when it is.

    Valid: a FITS file that :func:`~galgen_lightning.data.sources.fits.read_fits_planes` reads
    (one cube, or one image per HDU), with ``len(spec.bands)`` planes of ``spec.size`` x
    ``spec.size`` pixels, band names in the header (when there are any) equal to
    ``spec.bands``, and at least ``spec.min_finite`` of its pixels finite.
    """
    from galgen_lightning.data.sources.fits import read_fits_planes
    from galgen_lightning.data.sources.reader import Reject

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
