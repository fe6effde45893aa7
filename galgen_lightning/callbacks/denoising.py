"""Denoising test (the paper's Figures 5 and 6): PSNR out against PSNR in, for A and B.

Known noise levels are added to a training image of A, a training image of B and a held-out
validation image; each model denoises each. A memorizing denoiser restores its own training
image far better than the others; generalizing denoisers perform alike on all three.
Needs a family with ``denoise(which, noisy) -> denoised``; others are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch

from galgen_lightning.callbacks.common import EvalCallback
from galgen_lightning.metrics import psnr
from galgen_lightning.noise import counter_normal
from galgen_lightning.pair import MODELS

IMAGES = ("train_a", "train_b", "val")


def psnr_curves(pl_module, images: dict[str, torch.Tensor], sigmas: Sequence[float], seed: int = 0) -> dict[str, np.ndarray]:
    """PSNR in and out for each image and model.

    Args:
        pl_module: a pair with ``denoise(which, y)``.
        images: name -> ``(1, c, h, w)`` clean image in [0, 1].
        sigmas: noise standard deviations.
        seed: noise seed (the same noise for every model).

    Returns:
        ``{"psnr_in_<image>": (S,), "psnr_out_<model>_<image>": (S,)}``.
    """
    out: dict[str, np.ndarray] = {}
    for k, (name, x) in enumerate(images.items()):
        idx = torch.arange(len(sigmas)) + 1000 * k
        z = counter_normal(seed, idx, tuple(x.shape[1:]))
        clean = x.expand(len(sigmas), *x.shape[1:])
        noisy = clean + torch.tensor(sigmas, dtype=torch.float32).view(-1, 1, 1, 1) * z
        out[f"psnr_in_{name}"] = psnr(noisy, clean).numpy()
        for which in MODELS:
            out[f"psnr_out_{which}_{name}"] = psnr(pl_module.denoise(which, noisy), clean).numpy()
    return out


class DenoisingTest(EvalCallback):
    """Per-epoch denoising test (see the module docstring).

    Args:
        every_n_epochs: run every this many epochs (and at the last one).
        sigmas: noise standard deviations (images in [0, 1]).
        seed: noise seed.
        index: which image of each subset to use.
    """

    name = "denoising"

    def __init__(
        self,
        every_n_epochs: int = 1,
        sigmas: list[float] = [0.02, 0.05, 0.1, 0.2, 0.4, 0.8],  # noqa: B006 (jsonargparse needs a literal default)
        seed: int = 0,
        index: int = 0,
    ) -> None:
        super().__init__(every_n_epochs)
        self.sigmas = list(sigmas)
        self.seed = seed
        self.index = index

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "denoise"):
            return
        dm = trainer.datamodule
        images = {name: dm.subset_images(s)[self.index : self.index + 1] for name, s in zip(IMAGES, ("a", "b", "val"))}
        curves = psnr_curves(pl_module, images, self.sigmas, self.seed)
        curves["sigmas"] = np.asarray(self.sigmas)
        scalars = {}
        for which in MODELS:
            for name in IMAGES:
                gain = curves[f"psnr_out_{which}_{name}"] - curves[f"psnr_in_{name}"]
                scalars[f"gain_{which}_{name}"] = float(np.mean(gain))
        self.log_scalars(trainer, scalars)
        self.save_arrays(trainer, curves)
        self.save_figure(trainer, self.figure(curves, trainer.current_epoch), "psnr")

    def figure(self, curves: dict[str, np.ndarray], epoch: int):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        titles = {"train_a": "training image of A", "train_b": "training image of B", "val": "held-out image"}
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
        for ax, name in zip(axes, IMAGES):
            x = curves[f"psnr_in_{name}"]
            ax.plot(x, x, color="gray", ls=":", label="identity")
            for which, color in (("a", "tab:red"), ("b", "tab:blue")):
                ax.plot(x, curves[f"psnr_out_{which}_{name}"], "o-", color=color, label=f"model {which.upper()}")
            ax.set_title(titles[name])
            ax.set_xlabel("PSNR in (dB)")
        axes[0].set_ylabel("PSNR out (dB)")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"denoising test, epoch {epoch}")
        return fig
