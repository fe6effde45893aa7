"""``galgen sample``: npz, FITS and PNG from a trained pair, the shared-noise contract, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from support import CONFIGS, TINY_DIFFUSION, run_cli

FAMILY = [f"--config={CONFIGS / 'diffusion.yaml'}", "--config=quick/diffusion.yaml"]  # a bundled config by name
TINY = [*TINY_DIFFUSION, "--data.samples_per_epoch=16", "--trainer.max_epochs=1"]


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


def test_sample_never_replaces_a_file_unless_asked(checkpoint, tmp_path, capsys):
    out = tmp_path / "s.npz"
    out.write_bytes(b"the user's file")
    assert run_cli(["sample", f"--ckpt_path={checkpoint}", "--n=2", f"--out={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"galgen: error: --out {out} exists; choose another name, or pass --overwrite to replace it"]
    assert out.read_bytes() == b"the user's file"
    assert run_cli(["sample", f"--ckpt_path={checkpoint}", "--n=2", f"--out={out}", "--overwrite"]) == 0
    with np.load(out) as z:
        assert z["a"].shape == (2, 1, 16, 16)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--ckpt_path=/no/such.ckpt"], "--ckpt_path /no/such.ckpt: no such file"),
        (["--n=3"], "required: --ckpt_path (galgen sample --help lists the options)"),
        (["--ckpt_path=CKPT", "--out=x.txt"], "--out x.txt: the name must end in .npz, .fits, .png"),
        (["--ckpt_path=CKPT", "--n=0"], "--n must be positive"),
        (["--ckpt_path=CKPT", "--batch_size=0"], "--batch_size must be positive, got 0"),
        (["--ckpt_path=CKPT", "--batch_size=-1"], "--batch_size must be positive, got -1"),
        (["--ckpt_path=CKPT", "--seed=99999999999999999999"], "--seed must be in [0, 2**63)"),
        (["--ckpt_path=CKPT", "--device=cuda"], "--device cuda: this torch has no CUDA device"),
        (["--ckpt_path=CKPT", "--out=/proc/no/x.npz"], "cannot create /proc/no"),
    ],
)
def test_sample_errors_are_one_line(args, expected, checkpoint, capsys):
    import torch

    if "--device=cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    args = [a.replace("CKPT", str(checkpoint)) for a in args]
    assert run_cli(["sample", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("galgen: error:") and expected in err[0]


def _foreign(checkpoint, tmp_path, name: str, change) -> str:
    """A copy of ``checkpoint`` (in a folder without a run's config.yaml) changed by ``change``."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    change(state)
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


def test_a_checkpoint_of_another_family_or_shape_is_one_line_naming_what_differs(checkpoint, tmp_path, capsys):
    import torch

    from galgen_lightning.models.gan import GANPair

    gan = GANPair(
        image_size=16, latent_dim=16, fmap_max=16, fmap_inverse_coef=7, attn_sizes=[], small_width=8, decoder_upsamples=1
    )
    wider = lambda s: s["hyper_parameters"].update(width=16)  # noqa: E731
    cases = {
        # the hyperparameters name another family: its constructor refuses them
        _foreign(
            checkpoint,
            tmp_path,
            "family.ckpt",
            lambda s: s["hyper_parameters"].update(_class_path="galgen_lightning.models.gan.GANPair"),
        ): "its hyperparameters do not fit GANPair (a checkpoint of another family?):",
        # the weights of another family under diffusion's hyperparameters
        _foreign(
            checkpoint, tmp_path, "weights.ckpt", lambda s: s.update(state_dict=gan.state_dict())
        ): "its weights do not fit DiffusionPair as its hyperparameters build it: ",
        # another shape: the weights of width 8 where the hyperparameters say 16
        _foreign(
            checkpoint, tmp_path, "shape.ckpt", wider
        ): "its weights do not fit DiffusionPair as its hyperparameters build it: ",
        _foreign(
            checkpoint, tmp_path, "bare.ckpt", lambda s: s.pop("hyper_parameters")
        ): "not a galgen checkpoint (no model class or weights)",
    }
    errors = []
    for path, text in cases.items():
        assert run_cli(["sample", f"--ckpt_path={path}", "--n=2", f"--out={tmp_path / 'x.npz'}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"galgen: error: --ckpt_path {path}: ") and text in err[0], err
        errors.append(err[0])
    assert not (tmp_path / "x.npz").exists()
    assert "parameters missing (e.g. " in errors[1] and "unexpected (e.g. model_a.G." in errors[1]
    assert "of another shape (e.g. model_a." in errors[2] and "in the checkpoint" in errors[2] and "16" in errors[2]
    assert (
        torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]["width"] == 8
    )  # the original untouched


def test_validate_with_a_checkpoint_of_another_shape_is_one_line(checkpoint, tiny_source_args, tmp_path, capsys):
    """validate builds the model from the checkpoint's hyperparameters: weights of width 8 under
    hyperparameters that say 16 do not fit."""
    shape = _foreign(checkpoint, tmp_path, "shape.ckpt", lambda s: s["hyper_parameters"].update(width=16))
    config = checkpoint.parent.parent / "config.yaml"
    args = [
        "validate",
        f"--config={config}",
        *tiny_source_args,
        f"--ckpt_path={shape}",
        f"--trainer.default_root_dir={tmp_path / 'v'}",
    ]
    assert run_cli(args) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("galgen:")]
    assert len(err) == 1 and err[0].startswith(
        f"galgen: error: --ckpt_path {shape} does not fit DiffusionPair with these options: "
    ), err
    assert "of another shape (e.g. model_a." in err[0]


def test_model_options_given_with_a_checkpoint_win_over_its_hyperparameters(checkpoint, tiny_source_args, tmp_path, capsys):
    """LightningCLI builds the model from the checkpoint's hyperparameters; the options given on the
    command line still apply (a GPU-only option off on a CPU, a longer sampler), not dropped silently."""
    import torch
    import yaml

    graph = _foreign(checkpoint, tmp_path, "graph.ckpt", lambda s: s["hyper_parameters"].update(sampler_graph=True))
    config = checkpoint.parent.parent / "config.yaml"
    base = ["validate", f"--config={config}", *tiny_source_args, f"--ckpt_path={graph}", "--two_models=null", "--denoising=null"]
    if not torch.cuda.is_available():
        assert run_cli([*base, f"--trainer.default_root_dir={tmp_path / 'v1'}"]) == 2
        assert "model.sampler_graph needs a CUDA device" in capsys.readouterr().err
    given = ["--model.init_args.sampler_graph=false", "--model.init_args.max_steps", "7"]
    assert run_cli([*base, *given, f"--trainer.default_root_dir={tmp_path / 'v2'}"]) == 0
    (folder,) = (tmp_path / "v2").glob("validate-*")
    init = yaml.safe_load((folder / "config.yaml").read_text())["model"]["init_args"]
    assert init["sampler_graph"] is False and init["max_steps"] == 7 and init["width"] == 8  # the rest: the checkpoint's
    assert run_cli(["sample", f"--ckpt_path={graph}", "--n=2", "--device=cpu", f"--out={tmp_path / 's.npz'}"]) == 0


def test_validate_refuses_lightnings_checkpoint_keywords(tiny_source_args, tmp_path, capsys):
    """``--ckpt_path last`` with no checkpoint at hand would validate an untrained model, with a warning only."""
    args = ["validate", *FAMILY, *tiny_source_args, "--ckpt_path=last", f"--trainer.default_root_dir={tmp_path / 'v'}"]
    assert run_cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "galgen: error: --ckpt_path last: galgen validate needs a checkpoint file, e.g. runs/<run>/checkpoints/last.ckpt"
    ]
    assert not (tmp_path / "v").exists() or not any((tmp_path / "v").iterdir())


def test_help_lists_every_subcommand(capsys):
    assert run_cli(["--help"]) == 0
    import re

    usage = re.search(r"\{([a-z,]+)\}", capsys.readouterr().out)
    assert usage is not None
    for name in ("fit", "validate", "sample", "report", "sweep", "data"):
        assert name in usage.group(1).split(",")


def test_missing_optional_package_names_its_extra():
    from galgen_lightning.cli import missing_extra

    try:
        try:
            raise ModuleNotFoundError("No module named 'statmorph'", name="statmorph")
        except ModuleNotFoundError as inner:
            raise RuntimeError("wrapped by a caller") from inner
    except RuntimeError as e:
        assert (
            missing_extra(e)
            == "this needs the optional package statmorph, which is not installed: pip install 'galgen[morphology]'"
        )
    assert missing_extra(ImportError("something else")) is None
