"""``galgen sample``: samples of a trained pair, A and B from the same noise.

    galgen sample --ckpt_path runs/<run>/checkpoints/last.ckpt --n 1000 --out samples.npz
    galgen sample --ckpt_path ... --n 64 --seed 3 --out samples.fits     (FITS: one HDU per model)
    galgen sample --ckpt_path ... --n 64 --out grid.png                  (a grid: A above, B below)

Sample ``i`` of A and of B come from the same noise (``PairModule.sample(n, seed)``), so the same
``--seed`` gives the same samples whatever ``--batch_size``. The ``.npz`` holds ``a``, ``b``
(``(n, c, h, w)`` float32), ``ok_a``, ``ok_b`` (usable samples) and ``seed``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

import numpy as np
import torch

from galgen_lightning.errors import GalgenError, OneLineArgparse, weights_mismatch
from galgen_lightning.files import write_error

FORMATS = (".npz", ".fits", ".png")


def parser() -> argparse.ArgumentParser:
    p = OneLineArgparse(
        prog="galgen sample", description="Samples of a trained pair, A and B from the same noise (npz, FITS or a PNG grid)."
    )
    p.add_argument("--ckpt_path", required=True, help="a checkpoint of galgen fit (e.g. runs/<run>/checkpoints/last.ckpt)")
    p.add_argument("--n", type=int, default=1000, help="samples per model (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed: fixes all the noise (default 0)")
    p.add_argument("--out", default="samples.npz", help="output file: .npz, .fits or .png (default samples.npz)")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it exists (default: refuse)")
    p.add_argument(
        "--batch_size", type=int, default=None, help="samples per forward batch (default: the model's sample_batch_size)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--grid", type=int, default=16, help="samples per model in the .png grid (default 16)")
    return p


def load_pair(ckpt_path: str | Path, device: str | torch.device = "cpu"):
    """The pair of a galgen checkpoint (its family from the checkpoint, else the run's config.yaml)."""
    from galgen_lightning.faults.writes import load_checkpoint_file
    from galgen_lightning.models.base import PairModule
    from galgen_lightning.rundir import RunDir

    path = Path(ckpt_path).expanduser()
    checkpoint = load_checkpoint_file(ckpt_path)
    hparams = dict(checkpoint.get("hyper_parameters") or {}) if isinstance(checkpoint, dict) else {}
    class_path = hparams.get("_class_path") or (
        (RunDir(path.resolve().parent.parent).config().get("model") or {}).get("class_path")
    )
    if not isinstance(checkpoint, dict) or not class_path or "state_dict" not in checkpoint:
        raise GalgenError(f"--ckpt_path {ckpt_path}: not a galgen checkpoint (no model class or weights)")
    module, name = str(class_path).rsplit(".", 1)
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise GalgenError(f"--ckpt_path {ckpt_path}: its model {class_path} cannot be imported ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, PairModule)):
        raise GalgenError(f"--ckpt_path {ckpt_path}: {class_path} is not a galgen pair")
    options = {k: v for k, v in hparams.items() if not k.startswith("_")}
    if options.get("sampler_graph") and torch.device(device).type != "cuda":  # CUDA graphs: a GPU-only speed-up
        options["sampler_graph"] = False
    try:
        pair = cls(**options)
    except (TypeError, ValueError, GalgenError) as e:  # hyperparameters of another family, or refused
        raise GalgenError(
            f"--ckpt_path {ckpt_path}: its hyperparameters do not fit {name} (a checkpoint of another family?): "
            f"{' '.join(str(e).split())[:200]}"
        ) from None
    state = checkpoint["state_dict"]
    if not isinstance(state, dict):
        raise GalgenError(f"--ckpt_path {ckpt_path}: its state_dict is not a dictionary")
    try:  # load_state_dict runs the family's own migrations (e.g. the GAN's pre-AveragedModel EMA keys)
        pair.load_state_dict(state)
    except RuntimeError as e:
        differs = state_dict_difference(state, pair.state_dict()) or " ".join(str(e).split())[:300]
        raise GalgenError(
            f"--ckpt_path {ckpt_path}: its weights do not fit {name} as its hyperparameters build it: {differs}"
        ) from None
    return pair.to(device).eval()


def state_dict_difference(found: dict, expected: dict) -> str:
    """What differs between a checkpoint's weights and a model's, as one phrase ("" when they fit):
    parameters missing, unexpected, and of another shape, each with an example."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        (k, tuple(found[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in found and hasattr(found[k], "shape") and tuple(found[k].shape) != tuple(v.shape)
    ]
    return weights_mismatch(missing, unexpected, shapes)


def write(samples, out: Path, seed: int, grid: int = 16) -> Path:
    """Write ``samples`` (:class:`PairSamples`) as ``.npz``, ``.fits`` or a ``.png`` grid."""
    from galgen_lightning.files import atomic_write

    a, b = samples.a.numpy().astype(np.float32), samples.b.numpy().astype(np.float32)
    ok_a, ok_b = samples.ok_a.numpy(), samples.ok_b.numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        import io

        buffer = io.BytesIO()
        np.savez_compressed(buffer, a=a, b=b, ok_a=ok_a, ok_b=ok_b, seed=np.int64(seed))
        atomic_write(out, buffer.getbuffer())
    elif out.suffix == ".fits":
        import io

        from astropy.io import fits

        primary = fits.PrimaryHDU()
        primary.header["SEED"] = (seed, "galgen sampling seed (shared noise of A and B)")
        primary.header["NSAMPLE"] = (len(a), "samples per model")
        hdus = [primary]
        for which, x, ok in (("A", a, ok_a), ("B", b, ok_b)):
            hdu = fits.ImageHDU(x, name=which)
            hdu.header["MODEL"] = (which, "model of the pair")
            hdus.append(hdu)
            hdus.append(fits.ImageHDU(ok.astype(np.uint8), name=f"OK_{which}"))
        buffer = io.BytesIO()
        fits.HDUList(hdus).writeto(buffer)
        atomic_write(out, buffer.getbuffer())
    else:
        import matplotlib.image

        from galgen_lightning.evaluation.base import mosaic

        k = min(grid, len(a))
        image = mosaic([samples.a[:k, :1], samples.b[:k, :1]])
        matplotlib.image.imsave(out, image, cmap="gray", vmin=0, vmax=255)
    return out


def main(args: list[str] | None = None) -> None:
    opts = parser().parse_args(args)
    out = Path(opts.out)
    if out.suffix not in FORMATS:
        raise GalgenError(f"--out {opts.out}: the name must end in {', '.join(FORMATS)}")
    for name, value in (("n", opts.n), ("batch_size", opts.batch_size), ("grid", opts.grid)):
        if value is not None and value < 1:
            raise GalgenError(f"--{name} must be positive, got {value}")
    if not 0 <= opts.seed < 2**63:
        raise GalgenError(f"--seed must be in [0, 2**63), got {opts.seed}")
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise GalgenError(f"--device {opts.device}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GalgenError(f"--device {opts.device}: this torch has no CUDA device (use --device cpu)")
    if out.exists() and not opts.overwrite:
        raise GalgenError(f"--out {out} exists; choose another name, or pass --overwrite to replace it")
    try:  # before the sampling: a bad --out must not cost the whole run
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(out.parent, e, "create") from None
    if not os.access(out.parent, os.W_OK):
        raise GalgenError(f"--out {out}: the folder {out.parent} is not writable")
    pair = load_pair(opts.ckpt_path, device)
    batch_size = opts.batch_size or getattr(pair.hparams, "sample_batch_size", None)
    samples = pair.sample(opts.n, opts.seed, batch_size=batch_size)
    write(samples, out, opts.seed, opts.grid)
    bad = int((~samples.ok_a).sum()) + int((~samples.ok_b).sum())
    print(
        f"galgen sample: {opts.n} samples of A and of B (seed {opts.seed}) -> {out}"
        + (f"; {bad} not usable (ok_a/ok_b)" if bad else ""),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
