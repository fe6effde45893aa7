"""The built-in synthetic galaxies: shape, range, determinism, parallel rendering, diversity."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("galsim")
pytest.importorskip("astropy")

from galgen_lightning.data import synthetic  # noqa: E402
from galgen_lightning.data.synthetic import SYNTHETIC_VERSION, render_galaxy, render_many  # noqa: E402
from galgen_lightning.metrics import nearest_similarity  # noqa: E402


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_version_is_a_positive_int():
    assert isinstance(SYNTHETIC_VERSION, int) and SYNTHETIC_VERSION >= 1


@pytest.mark.parametrize("size", [16, 32])
def test_image_is_float32_in_unit_range_with_a_galaxy(size):
    image = render_galaxy(3, image_size=size)
    assert image.shape == (size, size)
    assert image.dtype == np.float32
    assert np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0
    # a galaxy in the middle: the centre is brighter than the border
    c = slice(size // 2 - 2, size // 2 + 2)
    assert image[c, c].mean() > image[[0, -1]].mean() + 0.1


def test_same_arguments_give_the_same_array():
    a = render_galaxy(5, seed=1, image_size=32)
    b = render_galaxy(5, seed=1, image_size=32)
    np.testing.assert_array_equal(a, b)


def test_other_index_seed_or_stretch_give_another_image():
    base = render_galaxy(5, seed=1, image_size=32)
    assert not np.array_equal(base, render_galaxy(6, seed=1, image_size=32))
    assert not np.array_equal(base, render_galaxy(5, seed=2, image_size=32))
    assert not np.array_equal(base, render_galaxy(5, seed=1, image_size=32, q=4.0))
    assert not np.array_equal(base, render_galaxy(5, seed=1, image_size=32, stretch=0.5))


def test_smaller_size_is_the_same_galaxy_at_lower_resolution():
    for index in range(3):
        coarse = render_galaxy(index, image_size=16)
        binned = render_galaxy(index, image_size=64).reshape(16, 4, 16, 4).mean(axis=(1, 3))
        other = render_galaxy(index + 100, image_size=16)
        assert _correlation(coarse, binned) > 0.85
        assert _correlation(coarse, binned) > _correlation(coarse, other) + 0.1


def test_render_many_equals_one_by_one_whatever_the_workers():
    indices = [7, 0, 3, 12, 5]
    one_by_one = np.stack([render_galaxy(i, seed=2, image_size=16) for i in indices])
    serial = render_many(indices, seed=2, image_size=16, workers=1)
    parallel = render_many(indices, seed=2, image_size=16, workers=2)
    assert serial.shape == (5, 16, 16) and serial.dtype == np.float32
    np.testing.assert_array_equal(serial, one_by_one)
    np.testing.assert_array_equal(parallel, one_by_one)


def test_render_many_of_nothing_is_empty():
    assert render_many([], image_size=16, workers=2).shape == (0, 16, 16)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        render_galaxy(-1)
    with pytest.raises(ValueError):
        render_galaxy(0, seed=-1)
    with pytest.raises(ValueError):
        render_galaxy(0, image_size=1)
    with pytest.raises(ValueError):
        render_many([0, 1], workers=0)


def test_set_is_diverse():
    # measured with seeds 0-3: median nearest-other similarity 0.84-0.87, highest 0.94-0.96
    images = torch.from_numpy(render_many(range(64), seed=0, image_size=32, workers=1))[:, None]
    sims, _ = nearest_similarity(images, images, mean_removed=True, transforms=True, exclude_self=True)
    assert float(sims.median()) < 0.92
    assert float(sims.max()) < 0.99


def test_galsim_and_astropy_are_imported_lazily():
    # the GPU machines lack GalSim: the module must import without it (no top-level import)
    tree = ast.parse(Path(synthetic.__file__).read_text())
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module.split(".")[0])
    assert not top_level & {"galsim", "astropy", "torch"}
