"""The paired DataModule: disjoint by content, deterministic, de-duplicated, tiled; clear errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from galgen_lightning.data import ArrayFile, GalaxyPairDataModule, SyntheticGalaxies, TiledPairs
from galgen_lightning.data.sources.base import content_hash
from galgen_lightning.data.split import check_disjoint, duplicate_mask, make_split
from galgen_lightning.errors import GalgenError


def _images(n=60, side=16, seed=0):
    return np.random.default_rng(seed).random((n, side, side), dtype=np.float32)


def test_duplicates_exact_and_near_are_dropped_keeping_the_first():
    imgs = _images(40)
    imgs[10] = imgs[3]  # exact copy
    imgs[20] = np.clip(imgs[5] + 0.001, 0, 1)  # near copy
    drop = duplicate_mask(imgs, 0.95)
    assert drop[10] and drop[20] and not drop[3] and not drop[5]
    assert drop.sum() == 2


def test_split_is_disjoint_by_content_and_deterministic():
    imgs = _images(60)
    imgs[7] = imgs[1]
    drop = duplicate_mask(imgs)
    s1 = make_split(imgs, 20, 10, seed=1, drop=drop)
    s2 = make_split(imgs, 20, 10, seed=1, drop=drop)
    s3 = make_split(imgs, 20, 10, seed=2, drop=drop)
    assert all(np.array_equal(s1.indices(k), s2.indices(k)) for k in ("a", "b", "val"))
    assert not np.array_equal(s1.a, s3.a)
    hashes = check_disjoint(imgs, s1)
    assert not set(hashes["a"]) & set(hashes["b"])
    assert 7 not in np.concatenate([s1.a, s1.b, s1.val])


def _hashes(images, indices):
    return {content_hash(images[i]) for i in indices}


def test_split_is_nested_over_n_with_one_held_out_set():
    """One pool, one seed: the same held-out set at every N, A and B at N = 10 inside A and B at N = 100."""
    imgs = _images(300)
    imgs[50] = imgs[4]  # a duplicate, dropped whatever N
    drop = duplicate_mask(imgs)
    small, large = (make_split(imgs, n, 40, seed=3, drop=drop) for n in (10, 100))
    assert np.array_equal(small.val, large.val) and len(small.val) == 40
    assert set(small.a) < set(large.a) and set(small.b) < set(large.b)
    assert len(small.a) == len(small.b) == 10 and len(large.a) == len(large.b) == 100
    for split in (small, large):
        hashes = check_disjoint(imgs, split)
        assert not set(hashes["a"]) & set(hashes["b"]) and not (set(hashes["a"]) | set(hashes["b"])) & set(hashes["val"])
        assert 50 not in np.concatenate([split.a, split.b, split.val]) and split.n_pool == 300
    # by content too: every image of A at N = 10 is in A at N = 100, none in B or the held-out set
    assert _hashes(imgs, small.a) <= _hashes(imgs, large.a) and not _hashes(imgs, small.a) & _hashes(imgs, large.b)
    assert _hashes(imgs, small.b) <= _hashes(imgs, large.b) and not _hashes(imgs, small.b) & _hashes(imgs, large.val)


def test_datamodule_pool_size_nests_runs_of_different_n(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, _images(200, side=16)[:, None])
    dms = [GalaxyPairDataModule(ArrayFile(str(path)), image_size=16, n=n, n_val=20, seed=5, pool_size=150) for n in (5, 40)]
    for dm in dms:
        dm.setup("fit")
    small, large = (dm.manifest() for dm in dms)
    assert small["pool_size"] == large["pool_size"] == 150 and small["images_read"] == large["images_read"] == 150
    assert small["subsets"]["val"] == large["subsets"]["val"]
    for s in ("a", "b"):
        assert set(small["subsets"][s]["sha1"]) < set(large["subsets"][s]["sha1"])
    # without pool_size the pool grows with N (one run); the manifest says so
    alone = GalaxyPairDataModule(ArrayFile(str(path)), image_size=16, n=5, n_val=20, seed=5)
    alone.setup("fit")
    assert alone.manifest()["pool_size"] is None and alone.manifest()["images_read"] < 150


@pytest.mark.parametrize(
    "n, pool_size, message",
    [
        (40, 90, r"^data.pool_size = 90 is below 2 \* n \+ n_val = 100; raise data.pool_size or lower data.n$"),
        (5, 500, r"^data.pool_size = 500 but the source has only 200 images; lower data.pool_size$"),
    ],
)
def test_pool_size_out_of_range_is_a_one_line_error(tmp_path, n, pool_size, message):
    path = tmp_path / "x.npy"
    np.save(path, _images(200, side=16)[:, None])
    with pytest.raises(GalgenError, match=message):
        GalaxyPairDataModule(ArrayFile(str(path)), image_size=16, n=n, n_val=20, pool_size=pool_size)


def test_pool_size_with_too_few_distinct_images_is_a_one_line_error(tmp_path):
    path = tmp_path / "dups.npy"
    imgs = _images(40, side=16)
    np.save(path, np.concatenate([imgs, imgs])[:, None])  # 80 images, 40 distinct
    dm = GalaxyPairDataModule(ArrayFile(str(path)), image_size=16, n=20, n_val=10, pool_size=80)
    with pytest.raises(GalgenError) as info:
        dm.setup("fit")
    text = str(info.value)
    assert "\n" not in text and "only 40 distinct remain of the data.pool_size = 80 images read (40 duplicates removed)" in text
    assert "raise data.pool_size" in text


def test_disjointness_check_catches_shared_content():
    imgs = _images(30)
    s = make_split(imgs, 10, 5, seed=0, drop=np.zeros(30, bool))
    imgs[s.b[0]] = imgs[s.a[0]]
    with pytest.raises(GalgenError, match="share"):
        check_disjoint(imgs, s)


def test_too_few_images_is_a_clear_error():
    with pytest.raises(GalgenError, match="2 \\* n \\+ n_val = 70"):
        make_split(_images(60), 30, 10, seed=0, drop=np.zeros(60, bool))


def test_datamodule_on_array_file(tmp_path):
    path = tmp_path / "x.npy"
    imgs = _images(80, side=32)
    np.save(path, imgs[:, None])
    dm = GalaxyPairDataModule(ArrayFile(str(path)), image_size=16, n=20, n_val=10, batch_size=4, samples_per_epoch=100)
    dm.setup("fit")
    a, b, val = (dm.subset_images(s) for s in ("a", "b", "val"))
    assert a.shape == (20, 1, 16, 16) and val.shape == (10, 1, 16, 16)
    assert not {content_hash(x.numpy()) for x in a} & {content_hash(x.numpy()) for x in b}
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"a", "b"} and batch["a"].shape == (4, 1, 16, 16)
    assert len(dm.train_dataloader()) == 25
    manifest = dm.manifest()
    assert len(manifest["subsets"]["a"]["sha1"]) == 20 and manifest["source"]["source"] == "array"
    # the same split again, from scratch
    dm2 = GalaxyPairDataModule(ArrayFile(str(path)), image_size=16, n=20, n_val=10)
    dm2.setup("fit")
    assert torch.equal(dm2.subset_images("a"), a)


def test_too_few_images_after_deduplication_names_the_source(tmp_path):
    path = tmp_path / "dups.npy"
    imgs = _images(20, side=16)
    np.save(path, np.concatenate([imgs, imgs, imgs]))  # 60 images, only 20 distinct
    dm = GalaxyPairDataModule(ArrayFile(str(path)), image_size=16, n=20, n_val=10)
    with pytest.raises(
        GalgenError, match=r"data.source \(array .*dups.npy\): 2 \* n \+ n_val = 50 .* only 20 usable .* 40 duplicates"
    ):
        dm.setup("fit")


def test_tiling_gives_the_same_epoch_length_whatever_n():
    a, b = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    ds = TiledPairs(a, b, length=10, flips=False)
    assert len(ds) == 10 and torch.equal(ds[4]["a"], a[1]) and torch.equal(ds[5]["b"], b[2])


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((5, 3)), "expected \\(N, H, W\\)"),
        (np.full((10, 8, 8), np.nan, dtype=np.float32), "NaN"),
        (np.full((10, 8, 8), 3.0, dtype=np.float32), "expected \\[0, 1\\]"),
    ],
)
def test_bad_arrays_are_clear_errors(tmp_path, array, message):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(GalgenError, match=message):
        GalaxyPairDataModule(ArrayFile(str(path)), image_size=4, n=2, n_val=1).setup("fit")


def test_big_endian_uint16_arrays_scale_like_little_endian_ones(tmp_path):
    """FITS-derived and some HDF5 arrays are big-endian: uint16 is uint16 whatever the byte order."""
    x = (np.random.default_rng(0).random((12, 16, 16)) * 65535).astype(">u2")
    np.save(tmp_path / "be.npy", x)
    np.save(tmp_path / "le.npy", x.astype("<u2"))
    be, le = (ArrayFile(str(tmp_path / f), cache_dir=str(tmp_path / "cache")).load(12, 16) for f in ("be.npy", "le.npy"))
    np.testing.assert_array_equal(be, le)
    np.testing.assert_allclose(be, x.astype(np.float64) / 65535, atol=1e-6)


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: GalaxyPairDataModule(SyntheticGalaxies(size=10), image_size=8, n=2, n_val=1, seed=-1),
            "data.seed must not be negative",
        ),
        (lambda: SyntheticGalaxies(chunk=0), "data.source.chunk must be positive, got 0"),
        (lambda: SyntheticGalaxies(workers=0), "data.source.workers must be positive, got 0"),
        (lambda: SyntheticGalaxies(stretch=0.0), "data.source.stretch must be positive"),
        (lambda: SyntheticGalaxies(seed=-1), "data.source.seed must not be negative"),
        (lambda: SyntheticGalaxies(q=-1.0), "data.source.q must not be negative"),
    ],
)
def test_bad_options_are_one_line_errors(make, message):
    with pytest.raises(GalgenError, match=re.escape(message)):
        make()


def test_an_absolute_pattern_is_a_one_line_error(tmp_path):
    from galgen_lightning.data import ImageFolder

    with pytest.raises(GalgenError, match=re.escape("data.source.pattern '/data/*.png' must be a pattern relative to")):
        ImageFolder(str(tmp_path), pattern="/data/*.png", cache_dir=str(tmp_path / "c")).load(1, 8)


def test_an_empty_cache_variable_is_unset(monkeypatch):
    """``GALGEN_CACHE_DIR=`` (exported empty) must not put the cache in the current folder."""
    from pathlib import Path

    from galgen_lightning.data.cache import default_cache_dir

    monkeypatch.setenv("GALGEN_CACHE_DIR", "")
    assert default_cache_dir() == Path.home() / ".cache" / "galgen"


def test_images_smaller_than_image_size(tmp_path):
    path = tmp_path / "small.npy"
    np.save(path, _images(10, side=8))
    with pytest.raises(GalgenError, match="smaller than data.image_size=16"):
        GalaxyPairDataModule(ArrayFile(str(path)), image_size=16, n=2, n_val=1).setup("fit")


def test_synthetic_source_caches_and_heals_a_corrupt_chunk(tmp_path, capsys):
    src = SyntheticGalaxies(size=40, cache_dir=str(tmp_path), chunk=16, workers=1)
    first = src.load(40, 16)
    files = sorted(src.folder(16).glob("chunk_*.npy"))
    assert len(files) == 3 and first.shape == (40, 16, 16)
    assert np.array_equal(src.load(20, 16), first[:20])  # from the cache
    files[1].write_bytes(b"not a numpy file")
    healed = src.load(40, 16)  # derived data: the chunk is rendered again, with a one-line warning
    assert np.array_equal(healed, first)
    assert "chunk_00001.npy" in capsys.readouterr().err


def test_unwritable_cache_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(GalgenError, match="cannot create the data cache"):
        SyntheticGalaxies(size=10, cache_dir=str(blocker / "sub")).load(4, 16)


def test_synthetic_cache_is_keyed_by_the_renderer_code(tmp_path, monkeypatch):
    """A cache rendered by other code (an edit of the renderer without a version bump) is not reused."""
    from galgen_lightning.data import synthetic

    src = SyntheticGalaxies(size=8, cache_dir=str(tmp_path), chunk=8, workers=1)
    info = src.describe()
    assert info["renderer"] == synthetic.renderer_digest() and info["renderer"] in src.folder(16).name
    assert info["galsim"] and info["astropy"]  # provenance in the run manifest
    before = src.folder(16)
    monkeypatch.setattr(synthetic, "renderer_digest", lambda: "0123456789")
    assert src.folder(16) != before and "0123456789" in src.folder(16).name
