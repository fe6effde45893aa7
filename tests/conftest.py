"""Test set-up: W&B disabled, Agg backend, a private data cache, the `cli` marker, and fixtures.

Plain helpers (paths, the in-process CLI runner, tiny arguments) are in ``tests/support.py``."""

from __future__ import annotations

import os

os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "2")


import pytest  # noqa: E402

CLI_MODULES = {"test_cli", "test_faults", "test_sample", "test_wandb", "test_data_command", "test_report"}
"""Modules that drive whole `galgen` commands (Lightning start-up, training steps; test_report: the
whole `galgen report` over folders of runs, every figure, a headless browser): marked `cli`, so
`make test-fast` (``-m "not slow and not cli"``) leaves them to `make test`. A single test of that
kind in another module carries ``@pytest.mark.cli`` itself."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in CLI_MODULES:
            item.add_marker(pytest.mark.cli)


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Every test session renders synthetic galaxies into its own cache."""
    path = tmp_path_factory.mktemp("galgen-cache")
    os.environ["GALGEN_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_source_args() -> list[str]:
    """CLI arguments for a tiny synthetic set at 16 px (a few hundred galaxies, rendered once)."""
    return ["--data.source", "galgen_lightning.data.SyntheticGalaxies", "--data.source.size", "300", "--data.image_size", "16"]


@pytest.fixture(scope="session")
def blob_file(tmp_path_factory):
    """200 galaxy-like 16x16 images (a Gaussian blob on noise) in a .npy file: the data path is
    tested elsewhere; here it only has to be fast (no GalSim rendering)."""
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    cy, cx = rng.uniform(5, 11, (2, 200, 1, 1))
    width = rng.uniform(1.5, 4, (200, 1, 1))
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
    images = (0.6 * blob + 0.4 * rng.uniform(0, 1, (200, 16, 16))).astype(np.float32)
    path = tmp_path_factory.mktemp("blobs") / "blobs.npy"
    np.save(path, images)
    return path
