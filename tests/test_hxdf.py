"""The built-in real galaxies: stamps cut from the Hubble XDF image that scikit-image ships."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from galgen_lightning.data import GalaxyPairDataModule, HubbleDeepField
from galgen_lightning.data.sources.base import content_hash
from galgen_lightning.data.sources.hxdf import hubble_deep_field_gray
from galgen_lightning.errors import GalgenError


def test_the_image_ships_with_scikit_image():
    """No download at run time: the JPEG is inside the installed package."""
    import skimage.data

    assert (Path(skimage.data.__file__).parent / "hubble_deep_field.jpg").stat().st_size > 100_000


def test_stamps_are_centred_cuts_of_the_xdf_image():
    src = HubbleDeepField()
    n = src.available()
    assert 40 <= n <= 80  # about fifty galaxies whose stamps share no pixel
    stamps = src.load(n, 64)
    assert stamps.shape == (n, 64, 64) and stamps.dtype == np.float32
    assert 0.0 <= stamps.min() and stamps.max() <= 1.0
    gray = hubble_deep_field_gray()
    centres = src.centres()
    for stamp, (row, col) in zip(stamps, centres):
        np.testing.assert_array_equal(stamp, gray[row - 32 : row + 32, col - 32 : col + 32].astype(np.float32))
    gaps = np.abs(centres[:, None] - centres[None]).max(axis=2) + np.eye(n, dtype=int) * 64
    assert gaps.min() >= 64  # no two stamps share a pixel of the XDF image: A, B and held-out share no sky
    centre_mean = stamps[:, 24:40, 24:40].mean(axis=(1, 2))
    assert (centre_mean > stamps.mean(axis=(1, 2))).mean() > 0.95  # a galaxy in the middle of (nearly) every stamp
    assert len({content_hash(s) for s in stamps}) == n
    assert np.array_equal(HubbleDeepField().load(5, 64), stamps[:5])  # deterministic


def test_report_and_resizing():
    src = HubbleDeepField()
    d = src.describe()
    r = d["report"]
    assert d["source"] == "hxdf" and d["galaxies"] == src.available()
    assert r["detected"] == d["galaxies"] + r["edge"] + r["overlap"] + r["zeros"]
    small = src.load(10, 32)
    np.testing.assert_allclose(small, src.load(10, 64).reshape(10, 32, 2, 32, 2).mean(axis=(2, 4)), atol=1e-6)
    stricter = HubbleDeepField(min_area=300)
    assert 0 < stricter.available() < src.available()
    looser = HubbleDeepField(max_overlap=0.25)
    assert looser.available() > src.available() and looser.describe()["report"]["overlap"] < r["overlap"]
    for share in (0.25, 0.5):  # every stamp shares at most max_overlap of its pixels with a larger one
        c = HubbleDeepField(max_overlap=share).centres()
        shared = np.prod(np.clip(64 - np.abs(c[:, None] - c[None]), 0, None), axis=2) / 64**2
        assert np.tril(shared, -1).max() <= share


def test_datamodule_split_on_real_galaxies():
    dm = GalaxyPairDataModule(HubbleDeepField(), image_size=16, n=16, n_val=16, batch_size=4, samples_per_epoch=8)
    dm.setup("fit")
    a, b, val = (set(dm.hashes[s]) for s in ("a", "b", "val"))
    assert len(a) == 16 and len(val) == 16 and not (a & b) and not (val & (a | b))
    assert dm.manifest()["source"]["source"] == "hxdf"


def test_too_large_requests_are_clear_errors():
    with pytest.raises(GalgenError, match=r"data.image_size=128 is larger than the Hubble Deep Field stamps"):
        HubbleDeepField().load(4, 128)
    with pytest.raises(GalgenError, match=r"2 \* n \+ n_val = 232 images needed but the source has only"):
        GalaxyPairDataModule(HubbleDeepField(), image_size=16, n=100, n_val=32)
    with pytest.raises(GalgenError, match="data.source.stamp must be positive"):
        HubbleDeepField(stamp=0)
    with pytest.raises(GalgenError, match=r"data.source.max_overlap must be in \[0, 1\], got 1.5"):
        HubbleDeepField(max_overlap=1.5)
