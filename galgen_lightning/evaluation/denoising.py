"""Denoising test (the paper's Figures 5 and 6): PSNR out against PSNR in, for A and B.

Known noise levels are added to training images of A, training images of B and held-out
validation images (``images`` of each, the same noise for both models); each model denoises
each. A memorizing denoiser restores its own training images far better than the other
model's and than held-out ones; generalizing denoisers perform alike on all three. PSNR
depends on the image (a faint galaxy on a flat sky is easier), so every comparison that the
scalars make is either paired (two models on the same images) or averaged over several images.
Needs a family with ``denoise(which, noisy) -> denoised``; others are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch

from galgen_lightning.errors import require
from galgen_lightning.evaluation.base import EvalCallback
from galgen_lightning.metrics import psnr
from galgen_lightning.models.base import MODELS
from galgen_lightning.noise import counter_normal

IMAGES = ("train_a", "train_b", "val")


def psnr_curves(pl_module, images: dict[str, torch.Tensor], sigmas: Sequence[float], seed: int = 0) -> dict[str, np.ndarray]:
    """PSNR in and out for each image and model.

    Args:
        pl_module: a pair with ``denoise(which, y)``.
        images: name -> ``(k, c, h, w)`` clean images in [0, 1].
        sigmas: noise standard deviations.
        seed: noise seed (the same noise for every model).

    Returns:
        ``{"psnr_in_<image>": (k, S), "psnr_out_<model>_<image>": (k, S)}``.
    """
    out: dict[str, np.ndarray] = {}
    s = len(sigmas)
    levels = torch.tensor(sigmas, dtype=torch.float32)
    for k, (name, x) in enumerate(images.items()):
        count = len(x)
        # noise index: (set, image, level) -> a distinct counter-based stream (distinct while
        # count <= MAX_IMAGES and s <= MAX_LEVELS, which DenoisingTest checks)
        idx = 100_000 * k + 1000 * torch.arange(count).repeat_interleave(s) + torch.arange(s).repeat(count)
        z = counter_normal(seed, idx, tuple(x.shape[1:]))
        clean = x.repeat_interleave(s, dim=0)
        noisy = clean + levels.repeat(count).view(-1, 1, 1, 1) * z
        out[f"psnr_in_{name}"] = psnr(noisy, clean).numpy().reshape(count, s)
        for which in MODELS:
            out[f"psnr_out_{which}_{name}"] = psnr(pl_module.denoise(which, noisy), clean).numpy().reshape(count, s)
    return out


MAX_IMAGES, MAX_LEVELS = 100, 1000
"""The most images per set and noise levels whose noise indices stay distinct in :func:`psnr_curves`."""


class DenoisingTest(EvalCallback):
    """Per-epoch denoising test (see the module docstring).

    Scalars (each a mean over the images and the noise levels, in dB):
    ``gain_<model>_<set>`` = PSNR out - PSNR in of model ``a``/``b`` on set ``train_a``,
    ``train_b`` or ``val``; ``own_vs_other_<model>`` = the model's gain on its own training
    images minus the other model's gain on the same images (paired; about 0 for generalizing
    pairs, large and positive for memorizing ones); ``own_vs_val_<model>`` = its gain on its own
    training images minus its gain on held-out images.

    Args:
        every_n_epochs: run every this many epochs (and at the last one).
        sigmas: noise standard deviations (images in [0, 1]).
        seed: noise seed.
        images: how many images of each set to use (the first ones; fewer if a set is smaller; at most 100).
    """

    name = "denoising"
    requires = ("denoise",)
    fits = "diffusion: a denoiser"

    def __init__(
        self,
        every_n_epochs: int = 1,
        sigmas: list[float] = [0.02, 0.05, 0.1, 0.2, 0.4, 0.8],  # noqa: B006 (jsonargparse needs a literal default)
        seed: int = 0,
        images: int = 8,
    ) -> None:
        super().__init__(every_n_epochs)
        require(1 <= images <= MAX_IMAGES, "DenoisingTest.images", f"in [1, {MAX_IMAGES}]", images)
        require(1 <= len(sigmas) <= MAX_LEVELS, "DenoisingTest.sigmas", f"1 to {MAX_LEVELS} noise levels", list(sigmas))
        require(all(0 < s < math.inf for s in sigmas), "DenoisingTest.sigmas", "positive finite noise levels", list(sigmas))
        self.sigmas = list(sigmas)
        self.seed = seed
        self.images = images

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        images = {name: dm.subset_images(s)[: self.images] for name, s in zip(IMAGES, ("a", "b", "val"))}
        curves = psnr_curves(pl_module, images, self.sigmas, self.seed)
        curves["sigmas"] = np.asarray(self.sigmas)
        self.save_arrays(trainer, curves)  # arrays first: a logged record always has its arrays
        self.log_scalars(trainer, gain_scalars(curves))
        self.save_figure(trainer, self.figure(curves), "psnr")

    def figure(self, curves: dict[str, np.ndarray]):
        """PSNR out against PSNR in, one panel per image set: each image thin, the mean thick."""
        from galgen_lightning.plotting import pyplot

        plt = pyplot()

        titles = {"train_a": "training images of A", "train_b": "training images of B", "val": "held-out images"}
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
        for ax, name in zip(axes, IMAGES):
            x = curves[f"psnr_in_{name}"].mean(axis=0)
            ax.plot(x, x, color="gray", ls=":", label="no change (out = in)")
            for which, color in (("a", "tab:red"), ("b", "tab:blue")):
                out = curves[f"psnr_out_{which}_{name}"]
                for k, row in enumerate(out):  # each image, thin
                    ax.plot(
                        x,
                        row,
                        "-",
                        color=color,
                        alpha=0.2,
                        lw=0.8,
                        label=f"model {which.upper()}, each image" if k == 0 else None,
                    )
                ax.plot(x, out.mean(axis=0), "o-", color=color, label=f"model {which.upper()}, mean over images")
            ax.set_title(f"{titles[name]} ({len(curves[f'psnr_in_{name}'])} images)")
            ax.set_xlabel("PSNR of the noisy input (dB)")
            ax.set_ylabel("PSNR of the denoised output (dB)")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        return fig


def gain_scalars(curves: dict[str, np.ndarray]) -> dict[str, float]:
    """The summary numbers of :func:`psnr_curves` (see :class:`DenoisingTest`)."""
    gain = {(which, name): curves[f"psnr_out_{which}_{name}"] - curves[f"psnr_in_{name}"] for which in MODELS for name in IMAGES}
    scalars = {f"gain_{which}_{name}": float(np.mean(g)) for (which, name), g in gain.items()}
    for which, other in (("a", "b"), ("b", "a")):
        own = f"train_{which}"
        scalars[f"own_vs_other_{which}"] = float(np.mean(gain[which, own] - gain[other, own]))
        scalars[f"own_vs_val_{which}"] = scalars[f"gain_{which}_{own}"] - scalars[f"gain_{which}_val"]
    return scalars
