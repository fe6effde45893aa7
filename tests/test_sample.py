"""``galgen sample``: npz, FITS and PNG from a trained pair, the shared-noise contract, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CONFIGS, run_cli

FAMILY = [f"--config={CONFIGS / 'diffusion.yaml'}", "--config=quick/diffusion.yaml"]  # a bundled config by name
TINY = [
    "--data.n=8",
    "--data.n_val=32",
    "--data.batch_size=8",
    "--data.samples_per_epoch=16",
    "--model.init_args.blocks=2",
    "--model.init_args.width=8",
    "--model.init_args.max_steps=20",
    "--trainer.max_epochs=1",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_source_args):
    run = tmp_path_factory.mktemp("sample") / "run"
    assert run_cli(["fit", *FAMILY, *tiny_source_args, *TINY, f"--trainer.default_root_dir={run}"]) == 0
    return run / "checkpoints" / "last.ckpt"


def test_sample_npz_fits_png(checkpoint, tmp_path):
    from astropy.io import fits

    out = tmp_path / "s.npz"
    assert run_cli(["sample", f"--ckpt_path={checkpoint}", "--n=5", "--seed=3", f"--out={out}"]) == 0
    with np.load(out) as z:
        a, b, ok_a, seed = z["a"], z["b"], z["ok_a"], int(z["seed"])
    assert a.shape == b.shape == (5, 1, 16, 16) and ok_a.shape == (5,) and seed == 3
    # the same seed gives the same samples whatever the batch size (sample i depends on seed and i)
    again = tmp_path / "again.npz"
    assert run_cli(["sample", f"--ckpt_path={checkpoint}", "--n=3", "--seed=3", "--batch_size=2", f"--out={again}"]) == 0
    with np.load(again) as z:
        np.testing.assert_allclose(z["a"], a[:3], atol=1e-5)
        np.testing.assert_allclose(z["b"], b[:3], atol=1e-5)
    assert run_cli(["sample", f"--ckpt_path={checkpoint}", "--n=3", "--seed=3", f"--out={tmp_path / 's.fits'}"]) == 0
    with fits.open(tmp_path / "s.fits") as hdus:
        assert hdus[0].header["SEED"] == 3
        np.testing.assert_allclose(hdus["A"].data, a[:3], atol=1e-5)
        assert hdus["B"].data.shape == (3, 1, 16, 16) and hdus["OK_A"].data.shape == (3,)
    assert run_cli(["sample", f"--ckpt_path={checkpoint}", "--n=4", f"--out={tmp_path / 'grid.png'}"]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 100


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--ckpt_path=/no/such.ckpt"], "--ckpt_path /no/such.ckpt: no such file"),
        (["--n=3"], "required: --ckpt_path"),
        (["--ckpt_path=CKPT", "--out=x.txt"], "--out x.txt: the name must end in .npz, .fits, .png"),
        (["--ckpt_path=CKPT", "--n=0"], "--n must be positive"),
    ],
)
def test_sample_errors_are_one_line(args, expected, checkpoint, capsys):
    args = [a.replace("CKPT", str(checkpoint)) for a in args]
    assert run_cli(["sample", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("galgen: error:") and expected in err[0]


def test_help_lists_every_subcommand(capsys):
    assert run_cli(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in ("fit", "validate", "sample", "report", "sweep", "data"):
        assert f"{name} (" in text


def test_missing_optional_package_names_its_extra():
    from galgen_lightning.cli import missing_extra

    try:
        try:
            raise ModuleNotFoundError("No module named 'statmorph'", name="statmorph")
        except ModuleNotFoundError as inner:
            raise RuntimeError("wrapped by a caller") from inner
    except RuntimeError as e:
        assert missing_extra(e) == "this needs the optional package statmorph, which is not installed: pip install 'galgen[morphology]'"
    assert missing_extra(ImportError("something else")) is None
