"""galgen from a wheel, installed into a fresh virtual environment outside the repository: the
bundled configs are found by name from any directory, ``galgen fit`` and ``galgen sample`` work,
and what runs is the wheel's copy of galgen, not the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from support import ROOT, TINY_DIFFUSION

pytestmark = pytest.mark.slow

SOURCE = ["--data.source=galgen_lightning.data.SyntheticGalaxies", "--data.source.size=300", "--data.image_size=16"]
TINY = [*SOURCE, *TINY_DIFFUSION]


def _run(cmd: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> tuple[Path, dict]:
    """A wheel built from a copy of the package (nothing is written into the checkout), installed
    with ``--no-deps`` into a new venv. The venv sees the dependencies through a ``.pth`` line
    naming this environment's site-packages (a plain path: this environment's own ``.pth`` files,
    among them the editable install of the checkout, are not processed there)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "galgen_lightning", src / "galgen_lightning", ignore=ignore)
    shutil.copytree(ROOT / "configs", src / "configs", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", base / "dist", src], base, env)
    (wheel,) = (base / "dist").glob("galgen-*.whl")

    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], base, env)
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], base, env).stdout.strip())
    (purelib / "galgen-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # --ignore-installed: the checkout's editable galgen is visible through the .pth line; pip must neither keep nor touch it
    _run([python, "-m", "pip", "install", "--no-deps", "--ignore-installed", wheel], base, env)
    env["GALGEN_CACHE_DIR"] = os.environ.get("GALGEN_CACHE_DIR", str(base / "cache"))
    return venv, env


def test_wheel_installs_the_package_and_its_configs(venv, tmp_path):
    venv, env = venv
    code = "import galgen_lightning, galgen_lightning.config_files as f; print(galgen_lightning.__file__)"
    code += "; print(f.config_folders()[0])"
    out = _run([venv / "bin" / "python", "-c", code], tmp_path, env).stdout.splitlines()
    package, configs = Path(out[0]).resolve(), Path(out[1]).resolve()
    assert package.is_relative_to(venv.resolve()) and not package.is_relative_to(ROOT)
    assert configs == (venv / "share" / "galgen" / "configs").resolve() and (configs / "quick" / "diffusion.yaml").is_file()


def test_wheel_fit_and_sample_from_any_directory(venv, tmp_path):
    """The issue's check: ``galgen fit --config diffusion.yaml --config quick/diffusion.yaml
    --trainer.fast_dev_run true`` (bundled names) from a directory without configs, then a short
    fit that saves a checkpoint, and ``galgen sample`` of it; the runs record the wheel's galgen."""
    venv, env = venv
    galgen = venv / "bin" / "galgen"
    configs = ["--config", "diffusion.yaml", "--config", "quick/diffusion.yaml"]
    _run([galgen, "fit", *configs, "--trainer.fast_dev_run", "true", *TINY, "--trainer.default_root_dir=dev"], tmp_path, env)
    assert (tmp_path / "dev" / "status.json").read_text().count('"complete"') == 1
    assert str(venv / "share" / "galgen" / "configs") in (tmp_path / "dev" / "status.json").read_text()  # the command line

    args = ["--trainer.max_epochs=1", "--data.samples_per_epoch=16", "--trainer.default_root_dir=run"]
    _run([galgen, "fit", *configs, *TINY, *args], tmp_path, env)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    _run([galgen, "sample", "--ckpt_path", ckpt, "--n", "4", "--out", "samples.npz", "--device", "cpu"], tmp_path, env)
    with np.load(tmp_path / "samples.npz") as z:
        assert z["a"].shape == z["b"].shape == (4, 1, 16, 16) and z["ok_a"].shape == (4,)
