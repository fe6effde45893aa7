"""Diffusion pair (the Lightning module): two blind bias-free U-Net denoisers and their sampler.

- Denoiser (Kadkhodaie et al., ICLR 2024): a U-Net with no additive constant anywhere (no
  conv biases, batch norm that divides by the batch standard deviation without subtracting a
  mean), so ``f(a * y) = a * f(y)``. It predicts the noise; the denoised image is ``y - f(y)``.
  It is *blind*: trained on noise levels ``sigma = U**2``, ``U ~ Uniform(0, 1)``, never told
  the level.
- Sampler (Kadkhodaie & Simoncelli): ascent of the implicit prior with injected noise, batched,
  each sample with its own noise stream (shared by A and B), its own stopping step, and no
  host synchronisation except every ``check_every`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from galgen_lightning.errors import GalgenError, require
from galgen_lightning.models.base import MODELS, PairModule, golden_uniform
from galgen_lightning.models.diffusion.network import NORMS, BiasFreeUNet, SamplerSettings, sample_denoiser
from galgen_lightning.noise import counter_normal


class DiffusionPair(PairModule):
    """Two blind bias-free U-Net denoisers, A and B, and their shared-noise sampler.

    Args:
        blocks: U-Net downsampling stages.
        width: U-Net base channels (64 in the paper).
        lr: Adam learning rate.
        lr_halving_epochs: the learning rate halves every this many epochs.
        sigma_max: training noise levels are ``sigma_max * U**2``.
        sigma0: sampler initial noise level (the sampler's settings: :class:`SamplerSettings`).
        sigma_final: sampler stopping noise level (an under-trained denoiser may never reach
            0.01: raise it rather than let samples hit the step limit; 0 never stops).
        h0: sampler initial step size.
        beta: sampler noise injection, in (0, 1].
        max_steps: sampler step limit.
        check_every: sampler steps between host checks for early exit.
        sample_batch_size: samples per sampler batch (see :class:`PairModule`; 256 here).
        norm: form of the bias-free batch norm: ``"reference"`` (Kadkhodaie et al.: centred
            batch standard deviation, small random initial scale) or ``"rms"`` (root mean
            square around zero, initial scale 1); see :class:`BiasFreeBatchNorm`.
        max_loss_ratio: stop when a model's loss exceeds this multiple of the median of its last
            100 losses (see :class:`PairModule`; on here: ``null`` turns it off).
        fused_adam: Adam's fused kernel (see :class:`PairModule`; ``false`` here, as before).
        sampler_graph: run the denoiser evaluation of every sampler step as a CUDA graph
            (``torch.compile(mode="reduce-overhead")``, one graph per batch size): no kernel
            launch overhead per step. CUDA only: on another device it is a one-line error.
        **kwargs: the options every family shares (:class:`PairModule`): ``image_size``
            (linked from ``data.image_size``), ``channels``, ``channels_last``, ``compile``
            (the two U-Nets for training; validation and sampling stay eager unless
            ``sampler_graph``), ``max_bad_steps`` and ``check_grads`` (the divergence guard).

    Each model's sampler starts from the mean pixel of its own training subset
    (``data_mean_a``, ``data_mean_b``, set at fit start from ``datamodule.subset_images``), so
    model A never depends on subset B.
    """

    def __init__(
        self,
        blocks: int = 3,
        width: int = 64,
        lr: float = 1e-3,
        lr_halving_epochs: int = 100,
        sigma_max: float = 1.0,
        sigma0: float = 1.0,
        sigma_final: float = 0.01,
        h0: float = 0.01,
        beta: float = 0.01,
        max_steps: int = 1000,
        check_every: int = 10,
        sample_batch_size: int = 256,
        norm: str = "reference",
        max_loss_ratio: float | None = 1000.0,
        fused_adam: bool | None = False,
        sampler_graph: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(sample_batch_size=sample_batch_size, fused_adam=fused_adam, max_loss_ratio=max_loss_ratio, **kwargs)
        require(blocks >= 1, "model.blocks", "at least 1", blocks)
        require(width >= 1, "model.width", "at least 1", width)
        require(0 < lr < math.inf, "model.lr", "positive", lr)
        require(lr_halving_epochs >= 1, "model.lr_halving_epochs", "at least 1", lr_halving_epochs)
        require(0 < sigma_max < math.inf, "model.sigma_max", "positive", sigma_max)
        require(norm in NORMS, "model.norm", f"one of {', '.join(NORMS)}", norm)
        if self.image_size % 2**blocks:  # the U-Net halves the side blocks times
            raise GalgenError(
                f"model.blocks {blocks}: the image side {self.image_size} (data.image_size) "
                f"must be divisible by 2**blocks = {2**blocks}"
            )
        self.save_hyperparameters()
        self.sampler_settings  # noqa: B018 (checks the sampler's settings now)
        self.model_a = BiasFreeUNet(self.channels, blocks, width, norm)
        self.model_b = BiasFreeUNet(self.channels, blocks, width, norm)
        for which in MODELS:
            self.register_buffer(f"data_mean_{which}", torch.tensor(0.5))
        self._train_nets: dict[str, Callable[[Tensor], Tensor]] = {}
        self._sampler_nets: dict[str, Callable[[Tensor], Tensor]] = {}
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def sampler_settings(self) -> SamplerSettings:
        """The sampler's settings, from the hyperparameters of the same names."""
        return SamplerSettings.from_hparams(self.hparams)

    def data_mean(self, which: str) -> Tensor:
        """Mean pixel of model ``which``'s training subset: where its sampler starts."""
        self.model(which)  # validates ``which``
        return getattr(self, f"data_mean_{which}")

    def setup(self, stage: str) -> None:
        if self.hparams.sampler_graph:
            self._check_sampler_graph(self.trainer.strategy.root_device)

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "subset_images"):
            for which in MODELS:
                self.data_mean(which).fill_(float(dm.subset_images(which).double().mean()))
        if self.compile_networks:
            self.compile_for_training()

    def compile_for_training(self) -> None:
        """``torch.compile`` both U-Nets for the training step (what ``compile: true`` does at fit start)."""
        if not self._train_nets:
            self._train_nets = {which: torch.compile(self.model(which)) for which in MODELS}

    def _check_sampler_graph(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise GalgenError(
                f"model.sampler_graph needs a CUDA device (CUDA graphs), the model is on {device.type}: set it to false"
            )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # checkpoints from before the per-model means hold one pooled ``data_mean``: both models start from it
        old = state_dict.pop(prefix + "data_mean", None)
        if old is not None:
            for which in MODELS:
                state_dict.setdefault(f"{prefix}data_mean_{which}", old.clone())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def noise_loss(self, which: str, x: Tensor, noise: Tensor, net: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Summed squared error of the predicted noise, divided by the batch size.

        ``net`` replaces model ``which`` (the training step passes the compiled one).
        """
        pred = (self.model(which) if net is None else net)(self.to_memory_format(x + noise))
        return (pred.float() - noise.float()).square().sum() / len(x)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = {}
        for which in MODELS:
            x = batch[which]
            sigma = self.hparams.sigma_max * torch.rand(len(x), 1, 1, 1, device=x.device) ** 2
            losses[which] = self.noise_loss(which, x, sigma * torch.randn_like(x), self._train_nets.get(which))
        # a non-finite (or spiking) loss skips that model's update: see PairModule.guard
        total = self.guard.guard_losses(self, losses)
        for which in MODELS:
            if not self.guard.bad_now[which]:
                self.log(
                    f"train/loss_{which}", losses[which], prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch[which])
                )
        return total

    def validation_noise(self, indices: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Fixed noise of the validation images ``indices``: a function of each image's index only.

        Image ``i`` gets ``sigma_i = sigma_max * u_i**2`` with ``u_i`` = :func:`golden_uniform`
        (evenly spread levels, as in training's ``U**2``), times its own counter-based normal
        pattern; neither depends on the batch, the batch size or the number of images.
        """
        sigma = self.hparams.sigma_max * golden_uniform(indices).square().view(-1, *([1] * len(shape)))
        return sigma * counter_normal(self.val_seed, indices, tuple(shape), stream=0)

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        x = batch
        idx = self.validation_indices(batch_idx, len(x), x.device)
        noise = self.validation_noise(idx, tuple(x.shape[1:])).to(x.dtype)
        for which in ("a", "b"):
            self.log(f"val/loss_{which}", self.noise_loss(which, x, noise), on_epoch=True, batch_size=len(x), sync_dist=True)

    def configure_optimizers(self):
        opt = self.make_adam(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.hparams.lr_halving_epochs, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    @torch.no_grad()
    def denoise(self, which: str, y: Tensor) -> Tensor:
        """Denoised images ``y - f(y)`` from model ``which`` (eval mode)."""
        was = self.training
        self.eval()
        try:
            y = y.to(self.device)  # the images in float32; the network in its own dtype (a "-true" precision)
            return (y.float() - self.model(which)(self.to_memory_format(y.to(self.dtype))).float()).cpu()
        finally:
            self.train(was)

    def _sampler_net(self, which: str) -> Callable[[Tensor], Tensor]:
        """Model ``which`` as the sampler calls it: eager, or a CUDA graph under ``sampler_graph``."""
        net = self.model(which)
        if not self.hparams.sampler_graph:
            return net
        self._check_sampler_graph(self.device)
        if which not in self._sampler_nets:
            self._sampler_nets[which] = torch.compile(net, mode="reduce-overhead", dynamic=False)
        graph = self._sampler_nets[which]

        def replay(y: Tensor) -> Tensor:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's output is no longer needed
            return graph(y).clone()  # the graph's output buffer is reused by the next replay

        return replay

    def generate(self, which: str, indices: Tensor, seed: int) -> tuple[Tensor, Tensor, dict[str, float | Tensor]]:
        net = self._sampler_net(which)

        def f(y: Tensor) -> Tensor:
            with self.sampling_autocast(indices.device):
                return net(self.to_memory_format(y))

        return sample_denoiser(
            f, indices, seed, self.image_shape, self.data_mean(which), self.sampler_settings, dtype=self.noise_dtype
        )
