"""Property-based tests (hypothesis) of the readers: whatever the file, a counted rejection or one line.

Malformed arrays (any ndim, dtype, NaN, infinities, huge values, empty, truncated files), FITS
files with odd headers (missing or garbage ``BITPIX``/``NAXIS``, truncated data) and image files
(truncated, empty, under the wrong extension) go through the readers. Each must end as images
(with the rejected inputs counted) or as a :class:`GalgenError` of one line: never another
exception. ``max_examples`` is small so that the file runs in seconds.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from galgen_lightning.data import ArrayFile, FitsCutouts, ImageFolder
from galgen_lightning.data.sources.fits import FitsRecipe, convert_fits
from galgen_lightning.data.sources.images import convert_images
from galgen_lightning.data.sources.reader import FATAL, REASONS
from galgen_lightning.errors import GalgenError

# hypothesis keeps caches (of constants, of unicode data) under .hypothesis/ in the working
# directory unless told otherwise (read when first needed): keep them out of the checkout
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "galgen-hypothesis"))

SETTINGS = settings(
    max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
KNOWN = set(REASONS) | {FATAL}


def _ends_well(load, image_size: int, count: int):
    """Run ``load``: images in [0, 1] of the right shape, or a one-line GalgenError; None then."""
    try:
        images = load()
    except GalgenError as e:
        assert str(e).strip() and "\n" not in str(e).strip(), repr(str(e))
        return None
    assert images.dtype == np.float32 and images.shape[1:] == (image_size, image_size) and 0 < len(images) <= count
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    return images


def _check_result(result) -> None:
    """One converted input: an image, or a rejection with a known reason and a one-line detail."""
    image, reason, detail = result
    if reason:
        assert image is None and reason in KNOWN and "\n" not in detail, (reason, detail)
    else:
        assert image is not None and np.isfinite(image).all()


# ----------------------------------------------------------------------------- arrays
DTYPES = st.sampled_from(
    ["uint8", "uint16", "int8", "int32", "int64", "float16", "float32", "float64", "bool", "complex64", "<U3"]
)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=12)


@st.composite
def arrays(draw):
    dtype = np.dtype(draw(DTYPES))
    shape = draw(SHAPES)
    if dtype.kind == "f":
        elements = st.floats(allow_nan=True, allow_infinity=True, width=dtype.itemsize * 8)
        fill = st.sampled_from([0.0, 0.5, 1.0, np.nan, np.inf, 1e30, -1.0])
    else:
        elements, fill = None, None
    return draw(hnp.arrays(dtype, shape, elements=elements, fill=fill))


@SETTINGS
@given(
    array=arrays(),
    suffix=st.sampled_from([".npy", ".npz"]),
    key=st.sampled_from(["images", "other", None]),
    cut=st.sampled_from([None, 0, 10, 100, -1]),
    image_size=st.sampled_from([4, 8]),
)
def test_any_array_file_ends_as_images_with_rejections_counted_or_one_line(array, suffix, key, cut, image_size):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        if suffix == ".npy":
            np.save(path, array)
        else:
            np.savez(path, **{key or "images": array, **({"extra": np.zeros(2)} if key is None else {})})
        if cut is not None:  # a truncated file
            data = path.read_bytes()
            path.write_bytes(data[:cut] if cut >= 0 else data[: len(data) // 2])
        source = ArrayFile(str(path), cache_dir=str(Path(tmp) / "cache"), chunk=5)
        images = _ends_well(lambda: source.load(6, image_size), image_size, 6)
        if images is not None:  # the rows that were not usable are counted, per reason
            report = source.describe()["report"]
            assert report["usable"] + report["rejected"] == report["converted"] and report["usable"] >= len(images)
            assert sum(report["by_reason"].values()) == report["rejected"]


# ----------------------------------------------------------------------------- FITS
def _card(key: str, value) -> str:
    text = f"'{value}'" if isinstance(value, str) and not value.startswith(("T", "F")) or value == "" else str(value)
    return f"{key:<8}= {text:>20}"


@st.composite
def fits_files(draw) -> bytes:
    """A FITS file whose header may lack or garble SIMPLE, BITPIX, NAXIS, NAXISn, whose data may
    be truncated or too long, and whose values may be anything."""
    bitpix = draw(st.sampled_from([8, 16, 32, 64, -32, -64, 0, 7, -16, "abc", None]))
    naxis = draw(st.sampled_from([0, 1, 2, 3, 4, -1, 999, "x", None]))
    sides = draw(st.lists(st.sampled_from([0, 1, 3, 8, 12, 20, -5, "junk"]), min_size=0, max_size=4))
    simple = draw(st.sampled_from(["T", "T", "F", "maybe", None]))
    cards = [] if simple is None else [_card("SIMPLE", simple)]
    if bitpix is not None:
        cards.append(_card("BITPIX", bitpix))
    if naxis is not None:
        cards.append(_card("NAXIS", naxis))
    for i, side in enumerate(sides, 1):
        cards.append(_card(f"NAXIS{i}", side))
    if draw(st.booleans()):
        cards.append(_card("BANDS", draw(st.sampled_from(["grz", "gr", "", "zzz", "g"]))))
    if draw(st.booleans()):
        cards.append(draw(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)))
    cards.append("END")
    header = "".join(c.ljust(80)[:80] for c in cards)
    header = header.ljust(-(-len(header) // 2880) * 2880).encode("ascii")
    try:
        width = abs(int(bitpix)) // 8
        count = int(np.prod([int(s) for s in sides[: int(naxis)]])) if int(naxis) > 0 else 0
    except (TypeError, ValueError):
        width, count = 4, 64
    size = max(0, min(width * count, 200_000))
    kind = draw(st.sampled_from(["zeros", "random", "nan", "huge"]))
    if kind == "random":
        data = draw(st.binary(min_size=min(size, 64), max_size=min(size, 64))) * (size // 64 + 1)
    elif kind == "nan" and bitpix in (-32, -64):
        data = np.full(max(size // width, 0), np.nan, dtype=f">f{width}").tobytes()
    elif kind == "huge" and bitpix in (-32, -64):
        data = np.full(max(size // width, 0), 1e30, dtype=f">f{width}").tobytes()
    else:
        data = bytes(size)
    data = data[:size]
    end = draw(st.sampled_from(["padded", "truncated", "none", "extra"]))
    if end == "padded":
        data = data.ljust(-(-len(data) // 2880) * 2880, b"\0")
    elif end == "truncated":
        data = data[: len(data) // 3]
    elif end == "none":
        data = b""
    else:
        data = data + b"\0" * 5000
    return header + data


@SETTINGS
@given(blob=fits_files(), image_size=st.sampled_from([4, 8]))
def test_a_fits_file_with_an_odd_header_is_a_counted_rejection_or_one_line(blob, image_size):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cutouts"
        folder.mkdir()
        (folder / "odd.fits").write_bytes(blob)
        _check_result(convert_fits(FitsRecipe(None, "zrg", None, 8.0, 0.2, image_size), [(str(folder / "odd.fits"),)])[0])
        source = FitsCutouts(str(folder), cache_dir=str(Path(tmp) / "cache"), workers=1, chunk=4)
        _ends_well(lambda: source.load(1, image_size), image_size, 1)


@st.composite
def cubes(draw) -> np.ndarray:
    """A (bands, H, W) cube of any FITS type, small or huge values, maybe a NaN or an infinity."""
    dtype = np.dtype(draw(st.sampled_from(["uint8", "int16", "int32", "int64", "float32", "float64"])))
    shape = draw(st.tuples(st.sampled_from([1, 2, 3, 4]), st.integers(1, 12), st.integers(1, 12)))
    values = draw(hnp.arrays(np.float64, shape, elements=st.integers(-5, 5) | st.sampled_from([0, 1, 10**6])))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(values, info.min, info.max).astype(dtype)
    cube = values.astype(dtype)
    poison = draw(st.sampled_from([None, np.nan, np.inf, -np.inf, 1e38]))
    if poison is not None:
        cube.flat[draw(st.integers(0, cube.size - 1))] = poison
    return cube


@SETTINGS
@given(cube=cubes(), image_size=st.sampled_from([4, 8]))
def test_any_fits_cube_is_an_image_or_a_counted_rejection(cube, image_size):
    from astropy.io import fits

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cube.fits"
        fits.PrimaryHDU(cube).writeto(path)
        result = convert_fits(FitsRecipe(None, "zrg", None, 8.0, 0.2, image_size), [(str(path),)])[0]
        _check_result(result)
        if result[1] == "" and result[0] is not None:
            assert result[0].shape == (image_size, image_size) and result[0].min() >= 0 and result[0].max() <= 1


# ----------------------------------------------------------------------------- image files
MODES = st.sampled_from(["1", "L", "P", "LA", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])


@st.composite
def image_files(draw) -> tuple[str, bytes]:
    """An image file: any mode and size, saved as PNG, TIFF or JPEG, then maybe truncated, emptied
    or replaced by other bytes; named with a suffix that may not match its content."""
    mode = draw(MODES)
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    from PIL import Image

    values = draw(hnp.arrays(np.float32, (h, w), elements=st.floats(-2, 2, width=32) | st.sampled_from([np.nan, np.inf, 0.5])))
    if mode == "F":
        image = Image.fromarray(values, mode="F")
    else:
        image = Image.fromarray((np.nan_to_num(np.clip(values, 0, 1)) * 255).astype(np.uint8), mode="L").convert(mode)
    fmt = draw(st.sampled_from(["PNG", "TIFF", "JPEG"]))
    if fmt == "JPEG" and mode not in ("L", "RGB", "CMYK"):
        fmt = "PNG"
    if fmt == "PNG" and mode in ("CMYK", "F", "I"):
        fmt = "TIFF"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    data = buffer.getvalue()
    damage = draw(st.sampled_from(["none", "truncated", "empty", "text", "random"]))
    if damage == "truncated":
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    elif damage == "empty":
        data = b""
    elif damage == "text":
        data = b"SIMPLE  = T\nthis is not an image\n"
    elif damage == "random":
        data = draw(st.binary(min_size=1, max_size=300))
    suffix = draw(st.sampled_from([".png", ".tif", ".jpg", {"PNG": ".png", "TIFF": ".tif", "JPEG": ".jpg"}[fmt]]))
    return suffix, data


@SETTINGS
@given(file=image_files(), image_size=st.sampled_from([1, 4]))
def test_an_image_file_of_any_mode_or_damage_is_a_counted_rejection_or_one_line(file, image_size):
    suffix, data = file
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        path = folder / f"galaxy{suffix}"
        path.write_bytes(data)
        _check_result(convert_images(image_size, [str(path)])[0])
        source = ImageFolder(str(folder), cache_dir=str(Path(tmp) / "cache"), workers=1, chunk=4)
        _ends_well(lambda: source.load(1, image_size), image_size, 1)


def test_the_one_line_helper_rejects_a_many_line_error():
    def two_lines():
        raise GalgenError("first\nsecond")

    with pytest.raises(AssertionError):
        _ends_well(two_lines, 4, 1)
