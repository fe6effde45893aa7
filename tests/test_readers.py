"""Real-data readers: FITS cutouts (checked against astropy directly), arrays, image folders,
the keyed resumable cache, every bad input as a one-line error, and the CLI on a FITS folder."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from astropy.io import fits
from astropy.visualization import make_lupton_rgb
from support import CONFIGS, run_cli

from galgen_lightning.data import ArrayFile, FitsCutouts, GalaxyPairDataModule, ImageFolder
from galgen_lightning.data import cache as readers_module
from galgen_lightning.data.sources.base import resize
from galgen_lightning.errors import GalgenError


# ----------------------------------------------------------------------------- making inputs
def galaxy_bands(rng: np.random.Generator, side: int = 40) -> np.ndarray:
    """(3, side, side) float32 g, r, z fluxes: an elliptical blob somewhere near the centre, a
    companion, and noise (different enough that no two are near-duplicates)."""
    yy, xx = np.mgrid[:side, :side].astype(np.float64)
    out = []
    cx, cy = side / 2 + rng.normal(0, 2, 2)
    sx, sy, angle = rng.uniform(1.5, side / 6), rng.uniform(1.5, side / 6), rng.uniform(0, np.pi)
    ox, oy = rng.uniform(0, side, 2)
    for flux in rng.uniform(0.5, 4.0, 3):
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        blob = flux * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
        blob += 0.3 * flux * np.exp(-0.5 * ((xx - ox) ** 2 + (yy - oy) ** 2) / 4.0)
        out.append(blob + rng.normal(0, 0.05, (side, side)))
    return np.stack(out).astype(np.float32)


def write_cube(path: Path, bands: np.ndarray, names: str | None = "grz", per_hdu: bool = False) -> Path:
    """A FITS file holding ``bands`` as one cube (header BANDn keywords) or as one HDU per band."""
    if per_hdu:
        hdus = [fits.PrimaryHDU()]
        for i, plane in enumerate(bands):
            hdu = fits.ImageHDU(plane)
            if names:
                hdu.header["BAND"] = names[i]
            hdus.append(hdu)
        fits.HDUList(hdus).writeto(path, overwrite=True)
    else:
        hdu = fits.PrimaryHDU(bands)
        if names:
            hdu.header["BANDS"] = names
            for i, b in enumerate(names):
                hdu.header[f"BAND{i}"] = b
        hdu.writeto(path, overwrite=True)
    return path


def fits_dir(root: Path, count: int, side: int = 40, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        write_cube(root / f"gal_{i:04d}.fits", galaxy_bands(rng, side))
    return root


def direct_gray(g: np.ndarray, r: np.ndarray, z: np.ndarray, crop: int, image_size: int, q: float, stretch: float) -> np.ndarray:
    """The paper's preprocessing written out with astropy: centre crop of the float32 bands as
    stored, make_lupton_rgb(z, r, g), mean of the 8-bit channels / 255, block-average to image_size."""
    h = g.shape[0]
    a = (h - crop) // 2
    cut = [b[a : a + crop, a : a + crop] for b in (z, r, g)]
    rgb = make_lupton_rgb(*cut, Q=q, stretch=stretch)
    gray = rgb.astype(np.float64).mean(axis=-1) / 255.0
    f = crop // image_size
    return gray.reshape(image_size, f, image_size, f).mean(axis=(1, 3))


def cache_of(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


# ----------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("layout", ["cube", "cube-zgr-header", "hdus", "band-files"])
def test_fits_preprocessing_matches_astropy(tmp_path, layout):
    rng = np.random.default_rng(1)
    cubes = [galaxy_bands(rng, 48) for _ in range(3)]  # g, r, z
    folder = tmp_path / "in"
    folder.mkdir()
    for i, c in enumerate(cubes):
        if layout == "cube":
            write_cube(folder / f"{i}.fits", c)
        elif layout == "cube-zgr-header":  # the header's band order is followed
            write_cube(folder / f"{i}.fits", c[[2, 0, 1]], names="zgr")
        elif layout == "hdus":
            write_cube(folder / f"{i}.fits", c, per_hdu=True)
        else:
            for b, plane in zip("grz", c):
                fits.PrimaryHDU(plane).writeto(folder / f"gal{i}_{b}.fits")
    src = FitsCutouts(
        str(folder), crop=32, q=4.0, stretch=0.3, band_files=layout == "band-files", workers=1, cache_dir=cache_of(tmp_path)
    )
    got = src.load(3, 16)
    want = np.stack([direct_gray(*c, crop=32, image_size=16, q=4.0, stretch=0.3) for c in cubes])
    assert got.shape == (3, 16, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_explicit_band_order_overrides_a_missing_header(tmp_path):
    rng = np.random.default_rng(2)
    c = galaxy_bands(rng, 32)
    (tmp_path / "in").mkdir()
    write_cube(tmp_path / "in" / "x.fits", c[[1, 2, 0]], names=None)  # r, z, g, and no header says so
    got = FitsCutouts(str(tmp_path / "in"), bands="rzg", workers=1, cache_dir=cache_of(tmp_path)).load(1, 16)
    np.testing.assert_allclose(got[0], direct_gray(*c, crop=32, image_size=16, q=8.0, stretch=0.2), atol=1e-6)


def test_numpy_area_resize_equals_torch_area_interpolation():
    rng = np.random.default_rng(0)
    for side, size in ((48, 16), (50, 16), (37, 10), (64, 64)):
        x = rng.random((3, side, side), dtype=np.float32)
        want = F.interpolate(torch.from_numpy(x)[:, None], size=(size, size), mode="area")[:, 0].numpy()
        np.testing.assert_allclose(resize(x, size, "x"), want, atol=1e-6)


# ----------------------------------------------------------------------------- rejections
def _bad_fits(folder: Path, rng: np.random.Generator) -> dict[str, str]:
    """One file for each kind of bad cutout; returns name -> the reason it must be rejected for."""
    good = galaxy_bands(rng, 40)
    nan = good.copy()
    nan[1, 5, 5] = np.nan
    write_cube(folder / "bad_nan.fits", nan)
    write_cube(folder / "bad_allnan.fits", np.full_like(good, np.nan))
    zeros = good.copy()
    zeros[2, :16] = 0.0  # 40% of the z band (the paper's pipeline rejects > 30% in a band)
    write_cube(folder / "bad_zeros.fits", zeros)
    (folder / "bad_garbage.fits").write_bytes(b"this is not a FITS file" * 200)
    (folder / "bad_empty.fits").write_bytes(b"")
    raw = write_cube(folder / "tmp.fits", good).read_bytes()
    (folder / "tmp.fits").unlink()
    (folder / "bad_truncated.fits").write_bytes(raw[: len(raw) - 9000])
    write_cube(folder / "bad_twobands.fits", good[:2], names="gr")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(good[0]), fits.ImageHDU(good[1]), fits.ImageHDU(good[2, :30])]).writeto(
        folder / "bad_shapes.fits"
    )
    write_cube(folder / "bad_small.fits", galaxy_bands(rng, 24))  # smaller than crop=32
    return {
        "bad_nan.fits": "nan",
        "bad_allnan.fits": "nan",
        "bad_zeros.fits": "zeros",
        "bad_garbage.fits": "unreadable",
        "bad_empty.fits": "unreadable",
        "bad_truncated.fits": "unreadable",
        "bad_twobands.fits": "bands",
        "bad_shapes.fits": "shapes",
        "bad_small.fits": "small",
    }


def test_bad_cutouts_are_rejected_counted_and_reported(tmp_path, capsys):
    folder = fits_dir(tmp_path / "in", 30)
    bad = _bad_fits(folder, np.random.default_rng(5))
    src = FitsCutouts(str(folder), crop=32, workers=1, chunk=8, cache_dir=cache_of(tmp_path))
    assert src.available() == 39  # an upper bound until everything was converted
    images = src.load(1000, 16)
    assert images.shape == (30, 16, 16) and np.isfinite(images).all()
    assert 0 <= images.min() and images.max() <= 1
    report = src.describe()["report"]
    assert report["rejected"] == 9 and report["usable"] == 30 and report["complete"]
    assert report["by_reason"] == {"bands": 1, "nan": 2, "shapes": 1, "small": 1, "unreadable": 3, "zeros": 1}
    for line in report["first_rejected"]:
        assert bad[line.split(" ")[0]]  # every rejected file is one of the bad ones
    assert "truncated" in " ".join(report["first_rejected"])
    out = capsys.readouterr().out
    summary = [line for line in out.splitlines() if " usable, " in line]
    assert len(summary) == 1 and "9 rejected" in summary[0] and "bad_allnan.fits" in summary[0] and str(folder) in summary[0]
    assert src.available() == 30  # exact once converted, also in a new process
    assert FitsCutouts(str(folder), crop=32, workers=1, chunk=8, cache_dir=cache_of(tmp_path)).available() == 30


def test_strict_makes_a_broken_file_fatal_without_losing_the_cache(tmp_path):
    folder = fits_dir(tmp_path / "in", 12)
    (folder / "gal_0005b.fits").write_bytes(b"junk" * 100)
    src = FitsCutouts(str(folder), workers=1, chunk=4, strict=True, cache_dir=cache_of(tmp_path))
    with pytest.raises(GalgenError, match=r"gal_0005b\.fits: unreadable FITS file .*strict"):
        src.load(20, 16)
    # the chunk before the broken file was kept, and a lenient run skips the file
    lenient = FitsCutouts(str(folder), workers=1, chunk=4, cache_dir=cache_of(tmp_path))
    assert lenient.load(20, 16).shape == (12, 16, 16)
    assert lenient.describe()["report"]["by_reason"] == {"unreadable": 1}


def test_nan_and_zero_checks_cover_the_full_cutout_in_the_used_bands(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    c = galaxy_bands(np.random.default_rng(3), 40)
    c[0, 0, 0] = np.nan  # outside the crop, still rejected (as the paper's pipeline does)
    write_cube(folder / "a.fits", c)
    four = np.concatenate([galaxy_bands(np.random.default_rng(4), 40), np.zeros((1, 40, 40), np.float32)])
    write_cube(folder / "b.fits", four, names="grzi")  # an empty i band is not used: kept
    src = FitsCutouts(str(folder), crop=16, workers=1, cache_dir=cache_of(tmp_path))
    assert src.load(5, 16).shape == (1, 16, 16)
    assert src.describe()["report"]["by_reason"] == {"nan": 1}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "no fits/fit/fts files matching"),
        (lambda d: d.write_text("x"), "is not a directory"),
    ],
)
def test_missing_or_empty_directory(tmp_path, make, message):
    d = tmp_path / "cutouts"
    make(d)
    src = FitsCutouts(str(d), cache_dir=cache_of(tmp_path))
    with pytest.raises(GalgenError) as info:
        src.available()
    text = str(info.value)
    assert text.startswith("data.source.directory:") and message in text and str(d) in text and "\n" not in text


def test_no_usable_cutout_is_one_clear_error(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        write_cube(folder / f"n{i}.fits", np.full((3, 20, 20), np.nan, np.float32))
    with pytest.raises(
        GalgenError,
        match=r"directory: none of the 3 cutouts in .*/in is usable: 3 rejected \(3 NaN or infinite pixels\): n0.fits",
    ):
        FitsCutouts(str(folder), workers=1, cache_dir=cache_of(tmp_path)).load(3, 16)


def test_fewer_usable_images_than_the_split_needs(tmp_path):
    folder = fits_dir(tmp_path / "in", 20)
    for i in range(10):
        write_cube(folder / f"nan_{i}.fits", np.full((3, 40, 40), np.nan, np.float32))
    src = FitsCutouts(str(folder), workers=1, cache_dir=cache_of(tmp_path))
    dm = GalaxyPairDataModule(src, image_size=16, n=10, n_val=5)  # 30 inputs: may be enough
    with pytest.raises(GalgenError, match=r"2 \* n \+ n_val = 25 images needed but only 1?[0-9] usable remain \(20 read"):
        dm.setup("fit")
    # once converted the source knows: the DataModule refuses at once
    with pytest.raises(GalgenError, match=r"2 \* n \+ n_val = 25 images needed but the source has only 20"):
        GalaxyPairDataModule(FitsCutouts(str(folder), workers=1, cache_dir=cache_of(tmp_path)), image_size=16, n=10, n_val=5)


def test_images_smaller_than_image_size(tmp_path):
    folder = fits_dir(tmp_path / "in", 2, side=12)
    with pytest.raises(GalgenError, match=r"gal_0000.fits: cutout is 12x12, smaller than data.image_size=16"):
        FitsCutouts(str(folder), workers=1, cache_dir=cache_of(tmp_path)).load(2, 16)
    with pytest.raises(GalgenError, match=r"data.source.crop=8 is smaller than data.image_size=16"):
        FitsCutouts(str(folder), crop=8, cache_dir=cache_of(tmp_path)).load(2, 16)


def test_bad_options_are_one_line_errors(tmp_path):
    for kwargs, message in (
        ({"rgb": "zr"}, "data.source.rgb"),
        ({"q": 0.0}, "data.source.q"),
        ({"bands": "ggr"}, "data.source.bands"),
    ):
        with pytest.raises(GalgenError, match=message):
            FitsCutouts(str(tmp_path), **kwargs)
    folder = fits_dir(tmp_path / "in", 1)
    src = FitsCutouts(str(folder), bands="gri", workers=1, cache_dir=cache_of(tmp_path))
    with pytest.raises(GalgenError, match=r"none of the 1 cutout in .* is usable.*without 'z' that data.source.rgb='zrg' needs"):
        src.load(1, 16)


# ----------------------------------------------------------------------------- the cache
def _chunks(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache").glob("fits/*/*/chunk_*.npz"))


def test_conversion_is_lazy_parallel_and_cached(tmp_path, capsys):
    folder = fits_dir(tmp_path / "in", 40)
    serial = FitsCutouts(str(folder), workers=1, chunk=8, cache_dir=str(tmp_path / "serial")).load(40, 16)
    src = FitsCutouts(str(folder), workers=2, chunk=8, cache_dir=cache_of(tmp_path))
    first = src.load(10, 16)
    assert len(_chunks(tmp_path)) == 2  # only what was asked for (10 images: two chunks of 8)
    assert np.array_equal(first, serial[:10])
    everything = src.load(40, 16)
    assert np.array_equal(everything, serial)  # parallel == in-process, in order
    stamps = {p: p.stat().st_mtime_ns for p in _chunks(tmp_path)}
    capsys.readouterr()
    again = FitsCutouts(str(folder), workers=2, chunk=8, cache_dir=cache_of(tmp_path)).load(40, 16)
    assert np.array_equal(again, serial) and "converting" not in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in _chunks(tmp_path)} == stamps


def test_interrupted_conversion_resumes_and_loses_nothing(tmp_path, monkeypatch, capsys):
    folder = fits_dir(tmp_path / "in", 24)
    want = FitsCutouts(str(folder), workers=1, chunk=4, cache_dir=str(tmp_path / "ref")).load(24, 16)
    saved = readers_module.Chunk.save
    calls = []

    def interrupted(self, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        saved(self, path)

    monkeypatch.setattr(readers_module.Chunk, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        FitsCutouts(str(folder), workers=2, chunk=4, cache_dir=cache_of(tmp_path)).load(24, 16)
    monkeypatch.setattr(readers_module.Chunk, "save", saved)
    assert [p.name for p in _chunks(tmp_path)] == ["chunk_00000.npz", "chunk_00001.npz"]
    capsys.readouterr()
    resumed = FitsCutouts(str(folder), workers=2, chunk=4, cache_dir=cache_of(tmp_path)).load(24, 16)
    assert "converting 16 cutouts 8-23 of 24" in capsys.readouterr().out  # only what was missing
    assert np.array_equal(resumed, want)
    assert not [p for p in (tmp_path / "cache").rglob("*") if ".tmp" in p.name]


def test_changing_a_parameter_or_a_file_converts_again_and_keeps_the_old_cache(tmp_path):
    folder = fits_dir(tmp_path / "in", 6)
    a = FitsCutouts(str(folder), workers=1, cache_dir=cache_of(tmp_path)).load(6, 16)
    before = {p: p.read_bytes() for p in _chunks(tmp_path)}
    b = FitsCutouts(str(folder), q=3.0, workers=1, cache_dir=cache_of(tmp_path)).load(6, 16)
    c = FitsCutouts(str(folder), crop=20, workers=1, cache_dir=cache_of(tmp_path)).load(6, 16)
    assert not np.allclose(a, b) and not np.allclose(a, c)
    assert len(_chunks(tmp_path)) == 3 and all(p.read_bytes() == data for p, data in before.items())
    write_cube(folder / "gal_0002.fits", galaxy_bands(np.random.default_rng(99), 40))  # the data changed
    d = FitsCutouts(str(folder), workers=1, cache_dir=cache_of(tmp_path)).load(6, 16)
    assert len(_chunks(tmp_path)) == 4 and not np.array_equal(d[2], a[2]) and np.array_equal(d[3], a[3])


def test_foreign_or_corrupt_cache_is_rebuilt_not_used(tmp_path, capsys):
    """A damaged meta.json or chunk is never used: one warning, and it is made again from the inputs."""
    folder = fits_dir(tmp_path / "in", 4)
    want = FitsCutouts(str(folder), workers=1, cache_dir=cache_of(tmp_path)).load(4, 16)
    (chunk,) = _chunks(tmp_path)
    meta = chunk.parent.parent / "meta.json"
    original = meta.read_text()
    meta.write_text(original.replace('"format": 1', '"format": 0'))
    capsys.readouterr()
    assert np.array_equal(FitsCutouts(str(folder), workers=1, cache_dir=cache_of(tmp_path)).load(4, 16), want)
    assert f"data cache {meta} differs from what its folder is named for (in format); writing it again" in capsys.readouterr().err
    assert meta.read_text() == original
    chunk.write_bytes(chunk.read_bytes()[:100])
    assert np.array_equal(FitsCutouts(str(folder), workers=1, cache_dir=cache_of(tmp_path)).load(4, 16), want)
    assert f"data cache {chunk} is unreadable (BadZipFile); converting it again from the inputs" in capsys.readouterr().err
    np.savez(chunk, images=np.zeros((4, 8, 8), np.float32), reasons=np.array([""] * 4), details=np.array([""] * 4))
    assert np.array_equal(FitsCutouts(str(folder), workers=1, cache_dir=cache_of(tmp_path)).load(4, 16), want)
    assert "expected float32 (4, 16, 16) for 4; converting it again from the inputs" in capsys.readouterr().err
    assert _chunks(tmp_path) == [chunk]


@pytest.mark.parametrize(
    "code, words",
    [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied")],
)
def test_full_or_read_only_cache_is_a_clear_error_and_keeps_what_was_written(tmp_path, monkeypatch, code, words):
    folder = fits_dir(tmp_path / "in", 12)
    FitsCutouts(str(folder), workers=1, chunk=4, cache_dir=cache_of(tmp_path)).load(4, 16)
    (kept,) = _chunks(tmp_path)
    kept_bytes = kept.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(readers_module.np, "savez", fail)
    with pytest.raises(GalgenError, match=f"cannot write the data cache {kept.parent}: {words}"):
        FitsCutouts(str(folder), workers=1, chunk=4, cache_dir=cache_of(tmp_path)).load(12, 16)
    assert _chunks(tmp_path) == [kept] and kept.read_bytes() == kept_bytes
    assert not [p for p in (tmp_path / "cache").rglob("*") if ".tmp" in p.name]


def test_unwritable_cache_directory(tmp_path):
    folder = fits_dir(tmp_path / "in", 2)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(GalgenError, match=f"cannot create the data cache {blocker}/sub"):
        FitsCutouts(str(folder), workers=1, cache_dir=str(blocker / "sub")).load(2, 16)


# ----------------------------------------------------------------------------- arrays
def _gray(n: int = 12, side: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, side, side))


@pytest.mark.parametrize(
    "name, make",
    [
        ("a.npy", lambda g: g.astype(np.float32)),
        ("a.npy", lambda g: g.astype(np.float32)[:, None]),
        ("a.npz", lambda g: np.round(g * 255).astype(np.uint8)[..., None].repeat(3, axis=-1)),
        ("a.h5", lambda g: np.round(g * 65535).astype(np.uint16)[:, None].repeat(3, axis=1)),
        ("a.hdf5", lambda g: g.astype(np.float64)[..., None]),
    ],
)
def test_array_layouts_and_formats(tmp_path, name, make):
    g = _gray()
    arr = make(g)
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, arr)
    elif name.endswith(".npz"):
        np.savez(path, images=arr, labels=np.arange(len(arr)))
    else:
        import h5py

        with h5py.File(path, "w") as f:
            f.create_dataset("group/cutouts", data=arr)
    got = ArrayFile(str(path), cache_dir=cache_of(tmp_path)).load(12, 10)
    scale = 255 if arr.dtype == np.uint8 else 65535 if arr.dtype == np.uint16 else 1
    np.testing.assert_allclose(got, g.reshape(12, 10, 2, 10, 2).mean(axis=(2, 4)), atol=0.6 / scale + 1e-6)


def test_array_rejects_nan_images_and_checks_shapes_and_keys(tmp_path):
    g = _gray().astype(np.float32)
    g[3, 0, 0] = np.nan
    g[7] = np.nan
    np.save(tmp_path / "x.npy", g)
    src = ArrayFile(str(tmp_path / "x.npy"), cache_dir=cache_of(tmp_path))
    assert src.load(100, 20).shape == (10, 20, 20)
    assert src.describe()["report"]["by_reason"] == {"nan": 2} and src.available() == 10
    for shape in ((5, 2, 8, 8), (5, 8), (5, 8, 8, 4)):
        np.save(tmp_path / "bad.npy", np.zeros(shape, np.float32))
        with pytest.raises(GalgenError, match=r"has shape .*; expected \(N, H, W\), \(N, 1, H, W\)"):
            ArrayFile(str(tmp_path / "bad.npy"), cache_dir=cache_of(tmp_path)).available()
    np.savez(tmp_path / "two.npz", a=g, b=g)
    with pytest.raises(GalgenError, match=r"data.source.key: .*two.npz holds 2 arrays \(a, b\)"):
        ArrayFile(str(tmp_path / "two.npz")).available()
    assert ArrayFile(str(tmp_path / "two.npz"), key="b", cache_dir=cache_of(tmp_path)).available() == 12
    with pytest.raises(GalgenError, match=r"has no array 'c'"):
        ArrayFile(str(tmp_path / "two.npz"), key="c").available()
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(GalgenError, match=r"is not a .npy, .npz or HDF5"):
        ArrayFile(str(tmp_path / "x.txt")).available()
    (tmp_path / "broken.h5").write_bytes(b"\x89HDF\r\n" + b"0" * 50)
    with pytest.raises(GalgenError, match=r"broken.h5 is not a readable HDF5 file"):
        ArrayFile(str(tmp_path / "broken.h5")).available()


def test_array_file_keeps_its_old_import_path_and_npy_behaviour(tmp_path):
    from galgen_lightning.data.sources import ArrayFile as Old

    assert Old is ArrayFile
    g = _gray(4, 16).astype(np.float32)
    np.save(tmp_path / "x.npy", g)
    assert np.array_equal(ArrayFile(str(tmp_path / "x.npy")).load(4, 16), g)  # the default cache dir, same pixels


# ----------------------------------------------------------------------------- image folders
def test_image_folder_modes_and_a_truncated_file(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "img"
    (folder / "sub").mkdir(parents=True)
    g = _gray(4, 24, seed=3)
    Image.fromarray(np.round(g[0] * 255).astype(np.uint8)).save(folder / "a.png")
    Image.fromarray(np.round(g[1] * 255).astype(np.uint8)[..., None].repeat(3, -1)).save(folder / "b.png")
    Image.fromarray(np.round(g[2] * 65535).astype(np.uint16)).save(folder / "c.png")
    Image.fromarray(np.round(g[3] * 255).astype(np.uint8)).save(folder / "sub" / "d.jpg", quality=100)
    raw = (folder / "a.png").read_bytes()
    (folder / "e.png").write_bytes(raw[: len(raw) // 2])
    (folder / "notes.txt").write_text("ignored")
    src = ImageFolder(str(folder), workers=1, cache_dir=cache_of(tmp_path))
    got = src.load(10, 12)
    assert got.shape == (4, 12, 12)
    want = g.reshape(4, 12, 2, 12, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(got[:3], want[:3], atol=0.5 / 255 + 1e-6)
    assert np.abs(got[3] - want[3]).mean() < 0.02  # JPEG is lossy
    assert src.describe()["report"]["by_reason"] == {"unreadable": 1} and "e.png" in capsys.readouterr().out
    with pytest.raises(GalgenError, match=r"e.png: unreadable image .*strict"):
        ImageFolder(str(folder), workers=1, strict=True, cache_dir=str(tmp_path / "c2")).load(10, 12)
    with pytest.raises(GalgenError, match=r"a.png: image is 24x24, smaller than data.image_size=32"):
        ImageFolder(str(folder), workers=1, cache_dir=cache_of(tmp_path)).load(10, 32)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(GalgenError, match=r"data.source.directory: no png/jpg/jpeg files"):
        ImageFolder(str(tmp_path / "nothing")).available()


# ----------------------------------------------------------------------------- through the CLI
FAMILY = [f"--config={CONFIGS / 'diffusion.yaml'}", f"--config={CONFIGS / 'quick' / 'diffusion.yaml'}"]
TINY = [
    "--data.n=8",
    "--data.n_val=16",
    "--data.batch_size=8",
    "--data.image_size=16",
    "--model.init_args.blocks=2",
    "--model.init_args.width=8",
    "--model.init_args.max_steps=20",
    "--trainer.fast_dev_run=true",
]


@pytest.mark.cli  # a whole galgen command: make test, not make test-fast
def test_cli_trains_on_a_fits_directory(tmp_path):
    import json

    folder = fits_dir(tmp_path / "cutouts", 44)
    write_cube(folder / "zz_nan.fits", np.full((3, 40, 40), np.nan, np.float32))
    run = tmp_path / "run"
    source = [
        f"--config={CONFIGS / 'data' / 'fits.yaml'}",
        f"--data.source.init_args.directory={folder}",
        "--data.source.init_args.crop=32",
    ]
    code = run_cli(["fit", *FAMILY, *source, *TINY, f"--trainer.default_root_dir={run}"])
    assert code == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["source"]["source"] == "fits" and manifest["source"]["crop"] == 32
    assert manifest["source"]["report"]["by_reason"] == {"nan": 1}
    assert len(manifest["subsets"]["a"]["sha1"]) == 8


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_cli_bad_fits_directory_is_one_line_and_exit_2(tmp_path, capsys, kind):
    folder = tmp_path / "cutouts"
    if kind == "empty":
        folder.mkdir()
    args = ["--data.source=galgen_lightning.data.FitsCutouts", f"--data.source.directory={folder}"]
    code = run_cli(["fit", *FAMILY, *args, *TINY, f"--trainer.default_root_dir={tmp_path / 'r'}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("galgen: error: data.source.directory:") and str(folder) in err[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("overlay", sorted(p.name for p in (CONFIGS / "data").glob("*.yaml")))
def test_data_overlays_parse(overlay, capsys):
    assert run_cli(["fit", *FAMILY, f"--config={CONFIGS / 'data' / overlay}", "--print_config"]) == 0
    assert "class_path: galgen_lightning.data." in capsys.readouterr().out


def test_lupton_png_folder_gives_what_the_fits_reader_gives(tmp_path):
    """The grayscale of an image folder is the Lupton grayscale: a lossless PNG of make_lupton_rgb
    of the crop reads back as the FITS reader's image of the same cutout."""
    from PIL import Image

    rng = np.random.default_rng(7)
    (tmp_path / "fits").mkdir()
    (tmp_path / "png").mkdir()
    for i in range(3):
        g, r, z = galaxy_bands(rng, 40)
        write_cube(tmp_path / "fits" / f"{i}.fits", np.stack([g, r, z]))
        Image.fromarray(make_lupton_rgb(z[4:36, 4:36], r[4:36, 4:36], g[4:36, 4:36], Q=8.0, stretch=0.2)).save(
            tmp_path / "png" / f"{i}.png"
        )
    from_fits = FitsCutouts(str(tmp_path / "fits"), crop=32, workers=1, cache_dir=cache_of(tmp_path)).load(3, 16)
    from_png = ImageFolder(str(tmp_path / "png"), workers=1, cache_dir=cache_of(tmp_path)).load(3, 16)
    np.testing.assert_allclose(from_png, from_fits, atol=1e-6)


def test_a_complete_cache_is_read_without_writing(tmp_path, monkeypatch):
    """A converted set on a read-only medium still serves its images (nothing is written again)."""
    folder = fits_dir(tmp_path / "in", 6)
    want = FitsCutouts(str(folder), workers=1, chunk=4, cache_dir=cache_of(tmp_path)).load(6, 16)

    def read_only(path, write):
        raise GalgenError(f"attempted to write {path}")

    monkeypatch.setattr(readers_module, "write_atomic", read_only)
    monkeypatch.setattr(readers_module, "write_json_atomic", read_only)
    again = FitsCutouts(str(folder), workers=1, chunk=4, cache_dir=cache_of(tmp_path))
    assert again.available() == 6 and np.array_equal(again.load(6, 16), want)
