"""The model families and the benchmarks import without the optional heavy packages.

A GPU machine may have only torch, lightning, torchmetrics, scipy and matplotlib; the
benchmarks (``benchmarks/gpu_checks.sh``) must run there, so galsim, statmorph, photutils,
astropy, wandb, jsonargparse, h5py and scikit-image are imported only where they are used.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import ROOT

OPTIONAL = ("jsonargparse", "wandb", "astropy", "galsim", "statmorph", "photutils", "h5py", "skimage")

SCRIPT = f"""
import sys, importlib.util
for name in {OPTIONAL!r}:
    sys.modules[name] = None  # any import of it raises ImportError
import galgen_lightning.models.diffusion, galgen_lightning.models.glow, galgen_lightning.models.gan, galgen_lightning.evaluation
sys.path.insert(0, r"{ROOT / "benchmarks"}")  # as when a benchmark runs as a script (its _timing helper)
for bench in ("bench_diffusion", "bench_glow", "bench_gan", "bench_fit", "bench_search"):
    spec = importlib.util.spec_from_file_location(bench, r"{ROOT / "benchmarks"}/" + bench + ".py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
print("ok")
"""


@pytest.mark.cli  # a fresh interpreter importing the whole package (8 s): make test, not make test-fast
def test_families_callbacks_and_benchmarks_import_without_optional_packages():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
