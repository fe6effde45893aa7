"""Test set-up: W&B disabled, Agg backend, a private data cache, and an in-process CLI runner."""

from __future__ import annotations

import os

os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


CLI_MODULES = {"test_cli", "test_faults", "test_sample", "test_wandb", "test_data_command"}
"""Modules that drive whole `galgen` commands (Lightning start-up, training steps): marked `cli`, so
`make test-fast` (``-m "not slow and not cli"``) leaves them to `make test`."""


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


def run_cli(args: list[str]) -> int:
    """Run ``galgen`` in-process; return its exit status (0 when it returned normally)."""
    from galgen_lightning.cli import main

    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
