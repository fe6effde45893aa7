"""Glow pair: two multi-scale Glows, A and B, trained by maximum likelihood in bits per dimension.

- Data: images in [0, 1] are reduced to ``n_bits`` (default 5) and dequantised:
  ``x = floor(x * 255 / 2**(8 - n_bits)) / 2**n_bits - 0.5 + u / 2**n_bits``, ``u ~ U[0, 1)``.
- Loss: ``-log2 p(x) / D + n_bits`` (``D`` pixels of the one channel): the discrete
  probability of the ``n_bits`` image, in bits per dimension.
- Sampling: level ``k``'s standardised latent for sample ``i`` is
  ``temperature * counter_normal(seed, i, shape_k, stream=k)``, so A and B decode the same
  latents, whatever the batch.
- A non-finite loss, log-determinant or gradient never reaches the weights: that model's
  update is skipped and counted; ``max_bad_steps`` of them in a row stop training with a
  :class:`~galgen_lightning.errors.GalgenError` that names the last checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from galgen_lightning.errors import GalgenError, require
from galgen_lightning.models.base import MODELS, PairModule
from galgen_lightning.models.glow.network import FlowStep, Glow, latent_shapes
from galgen_lightning.noise import counter_normal


def dequantize(x: Tensor, n_bits: int, noise: Tensor) -> Tensor:
    """Images in [0, 1] -> ``n_bits`` levels in [-0.5, 0.5), plus ``noise`` in [0, 1) of one bin."""
    n_bins = 2**n_bits
    levels = torch.floor(x * (255 / 2 ** (8 - n_bits))).clamp(0, n_bins - 1)
    return levels / n_bins - 0.5 + noise / n_bins


def to_image(x: Tensor, n_bits: int) -> Tensor:
    """Model space ``[-0.5, 0.5)`` back to [0, 1] (the inverse of the reduction, clamped)."""
    scale = 2**n_bits * 2 ** (8 - n_bits) / 255
    return ((x + 0.5) * scale).clamp(0, 1)


def bits_per_dim(log_p: Tensor, logdet: Tensor, dims: int, n_bits: int) -> Tensor:
    """Per-sample ``-(log p(z) + log|det|) / (D log 2) + n_bits``: bits per dimension of the
    ``n_bits`` discrete image (density times the bin volume ``2**-(n_bits D)``)."""
    return -(log_p + logdet) / (dims * math.log(2)) + n_bits


def uniform_from_normal(z: Tensor) -> Tensor:
    """``Phi(z)``: turns counter-based normals into uniforms in [0, 1)."""
    return (0.5 * (1 + torch.erf(z / math.sqrt(2)))).clamp(0, 1 - 1e-7)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""The modes ``torch.compile`` takes."""


class GlowPair(PairModule):
    """Two multi-scale Glows, A and B, for the two-models and inversion tests.

    Args:
        n_flow: steps of flow per level (paper 32).
        n_block: levels (paper 4).
        hidden: coupling network width (paper 512).
        affine: affine coupling (``sigmoid(s + 2)`` scale) instead of additive.
        n_bits: bits per pixel the images are reduced to (paper 5).
        lr: Adam learning rate (paper 1e-4).
        temperature: sampling temperature of :meth:`generate` (scales the standardised
            latents; 1 samples the model's distribution, 0.7 the Glow paper's choice for
            cleaner images).
        compile_mode: the ``torch.compile`` mode of ``compile`` (e.g. ``"reduce-overhead"``: CUDA
            graphs; ``null``: ``"default"``). Setting it alone also compiles (older configs).
        **kwargs: the options every family shares (:class:`PairModule`): ``image_size``
            (linked from ``data.image_size``; divisible by ``2**n_block`` here), ``channels``,
            ``sample_batch_size``, ``channels_last``, ``fused_adam`` (one kernel for the ~1,500
            parameter tensors of each Glow) and ``compile`` (every step of flow after the first
            training batch, which initialises ActNorm eagerly; steps of one level share a graph,
            so compilation is short; aimed at GPUs, where the small kernels of a Glow make
            training overhead bound), and the divergence guard's ``max_bad_steps``,
            ``max_loss_ratio`` (off by default: bits per dimension rarely spike before they turn
            non-finite) and ``check_grads``.
    """

    def __init__(
        self,
        n_flow: int = 32,
        n_block: int = 4,
        hidden: int = 512,
        affine: bool = False,
        n_bits: int = 5,
        lr: float = 1e-4,
        temperature: float = 0.7,
        compile_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.compile_networks = self.compile_networks or compile_mode is not None
        require(n_flow >= 1, "model.n_flow", "at least 1", n_flow)
        require(n_block >= 1, "model.n_block", "at least 1", n_block)
        require(hidden >= 1, "model.hidden", "at least 1", hidden)
        if self.image_size % 2**n_block:
            raise GalgenError(
                f"model: image_size {self.image_size} is not divisible by 2**n_block = {2**n_block}; lower model.n_block"
            )
        require(1 <= n_bits <= 8, "model.n_bits", "in 1..8", n_bits)
        require(0 < lr < math.inf, "model.lr", "positive", lr)
        require(0 < temperature < math.inf, "model.temperature", "positive", temperature)
        require(
            compile_mode in (None, *COMPILE_MODES),
            "model.compile_mode",
            f"one of {', '.join(COMPILE_MODES)} (or null)",
            compile_mode,
        )
        self.save_hyperparameters()
        self.model_a = Glow(self.channels, n_flow, n_block, hidden, affine)
        self.model_b = Glow(self.channels, n_flow, n_block, hidden, affine)
        self._compiled = False
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """Per-level latent shapes ``(c, h, w)``."""
        return latent_shapes(self.channels, self.image_size, self.hparams.n_block)

    @property
    def dims(self) -> int:
        return self.channels * self.image_size**2

    # --- likelihood --------------------------------------------------------------------------
    def bits_per_dim(self, which: str, x: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-sample bits/dim of images ``x`` in [0, 1] under model ``which``, and the logdet.

        Args:
            which: ``"a"`` or ``"b"``.
            x: ``(B, c, h, w)`` images in [0, 1].
            noise: dequantisation noise in [0, 1) (default: fresh uniform noise).
        """
        noise = torch.rand_like(x) if noise is None else noise
        out = self.model(which)(self.to_memory_format(dequantize(x, self.hparams.n_bits, noise)))
        return bits_per_dim(out.log_p, out.logdet, self.dims, self.hparams.n_bits), out.logdet

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses, finite = {}, {}
        for which in MODELS:
            bpd, logdet = self.bits_per_dim(which, batch[which])
            losses[which] = bpd.mean()
            finite[which] = torch.isfinite(logdet).all()
        # a non-finite loss or log-determinant (on any rank) skips that model's update: see UpdateGuard
        total = self.guard.guard_losses(self, losses, finite, what="loss or log-determinant")
        for which in MODELS:
            if not self.guard.bad_now[which]:
                self.log(
                    f"train/bpd_{which}", losses[which], prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch[which])
                )
        return total

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)  # counts skipped updates, stops on divergence
        if self.compile_networks and not self._compiled:
            self.compile_steps(self.hparams.compile_mode or "default")

    def compile_steps(self, mode: str = "reduce-overhead") -> None:
        """``torch.compile`` every step of flow of both models in place (the state dict is unchanged)."""
        for which in MODELS:
            for module in self.model(which).modules():
                if isinstance(module, FlowStep):
                    module.compile(mode=mode)
        self._compiled = True

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        x = batch
        # each image's dequantisation noise is a function of its global validation index only
        idx = self.validation_indices(batch_idx, len(x), x.device)
        noise = uniform_from_normal(counter_normal(self.val_seed, idx, tuple(x.shape[1:]))).to(x.dtype)
        for which in MODELS:
            bpd, _ = self.bits_per_dim(which, x, noise)
            self.log(f"val/bpd_{which}", bpd.mean(), on_epoch=True, batch_size=len(x), sync_dist=True)

    def configure_optimizers(self):
        return self.make_adam(self.parameters(), lr=self.hparams.lr)

    # --- sampling ----------------------------------------------------------------------------
    def latents(self, indices: Tensor, seed: int) -> list[Tensor]:
        """Standard-normal latents of every level for samples ``indices`` (level ``k``: stream ``k``)."""
        return [counter_normal(seed, indices, s, stream=k, dtype=self.noise_dtype) for k, s in enumerate(self.latent_shapes)]

    def generate(self, which: str, indices: Tensor, seed: int) -> tuple[Tensor, Tensor, dict[str, float | Tensor]]:
        with self.sampling_autocast(indices.device):
            x = self.model(which).reverse(self.latents(indices, seed), standardized=True, temperature=self.hparams.temperature)
        ok = torch.isfinite(x).flatten(1).all(dim=1)
        return to_image(x.float(), self.hparams.n_bits), ok, {"nonfinite": (~ok).double()}
