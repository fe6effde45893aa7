"""Diffusion pair: the blind bias-free U-Net denoiser and the stochastic sampler.

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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galgen_lightning.noise import counter_normal
from galgen_lightning.pair import MODELS, PairModule

VAL_SEED = 12345  # fixed noise of the validation images, so epochs compare


def golden_uniform(indices: Tensor) -> Tensor:
    """``frac((i + 1) / phi)`` for integer indices ``i`` (a Weyl sequence, 24-bit resolution).

    A pure function of the index, in (0, 1), whose first ``n`` values are spread evenly over
    the interval for any ``n``: per-image noise levels that stratify a validation set of any
    size without knowing the size. Exact integer arithmetic for indices below ``2**31``.
    """
    k = ((indices.to(torch.int64) + 1) * 2654435769) & 0xFFFFFFFF  # round(2**32 / phi)
    return ((k >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)


class ValidationIndex:
    """Global index of every validation image, whatever the batch size.

    :meth:`reset` (at ``on_validation_epoch_start``) reads the order in which the validation
    loader's batch sampler visits its dataset (under DDP, this rank's share of it); batch
    ``batch_idx`` then holds exactly those dataset indices, so a short last batch or another
    batch size changes nothing. A loader without a batch sampler (one that yields ready-made
    batches) falls back to a running count of the images seen this epoch.
    """

    def __init__(self) -> None:
        self.batches: list[list[int]] | None = None
        self.seen = 0

    def reset(self, trainer) -> None:
        self.seen = 0
        self.batches = None
        loaders = getattr(trainer, "val_dataloaders", None) if trainer is not None else None
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if len(loaders) == 1 else None
        batch_sampler = getattr(loaders, "batch_sampler", None)
        if batch_sampler is not None:
            try:
                self.batches = [list(b) for b in batch_sampler]
            except TypeError:  # a sampler that cannot be iterated twice
                self.batches = None

    def __call__(self, batch_idx: int, size: int, device: torch.device) -> Tensor:
        """``(size,)`` int64 global indices of the images of validation batch ``batch_idx``."""
        if self.batches is not None and batch_idx < len(self.batches) and len(self.batches[batch_idx]) == size:
            idx = torch.tensor(self.batches[batch_idx], dtype=torch.int64, device=device)
        else:
            idx = torch.arange(self.seen, self.seen + size, device=device)
        self.seen += size
        return idx


NORMS = ("reference", "rms")


class BiasFreeBatchNorm(nn.Module):
    """Batch norm without additive terms: ``x / sd * scale``, per channel.

    Two forms, both without any additive term (so the network stays bias free):

    - ``"reference"`` (Kadkhodaie et al.): ``sd`` is the batch standard deviation over batch and
      space, *centred* (the batch mean enters the variance but is not subtracted from the
      output); the learned scale starts small and random, ``N(0, (2/9/64)**2)`` clamped to
      [-0.025, 0.025].
    - ``"rms"``: ``sd`` is the root mean square around zero; the scale starts at 1.

    A running ``sd`` (momentum 0.1) replaces the batch value in evaluation, where both forms
    are the same linear map. The parameter and buffer names do not depend on the form.

    Args:
        channels: channels normalised.
        norm: ``"reference"`` or ``"rms"``.
        momentum: weight of the batch value in the running ``sd``.
        eps: added to the variance.
    """

    def __init__(self, channels: int, norm: str = "reference", momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.centered = norm == "reference"
        if self.centered:
            scale = (torch.randn(1, channels, 1, 1) * (2.0 / 9.0 / 64.0)).clamp_(-0.025, 0.025)
        else:
            scale = torch.ones(1, channels, 1, 1)
        self.scale = nn.Parameter(scale)
        self.register_buffer("running_sd", torch.ones(1, channels, 1, 1))
        self.momentum = momentum
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            xf = x.float()
            if self.centered:
                var = xf.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
            else:
                var = xf.square().mean(dim=(0, 2, 3), keepdim=True)
            sd = (var + self.eps).sqrt()
            with torch.no_grad():
                self.running_sd.lerp_(sd.to(self.running_sd.dtype), self.momentum)
        else:
            sd = self.running_sd
        return x / sd.to(x.dtype) * self.scale.to(x.dtype)


def conv_norm_relu(c_in: int, c_out: int, norm: str | None = "reference") -> nn.Sequential:
    """3x3 convolution without bias, then bias-free batch norm of form ``norm`` (None: none) and ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if norm is not None:
        layers.append(BiasFreeBatchNorm(c_out, norm))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BiasFreeUNet(nn.Module):
    """Bias-free U-Net that predicts the noise in its input.

    Encoder stages of ``width * 2**k`` channels (two 3x3 convs each, average pooling between),
    a middle stage of ``width * 2**blocks``, and a decoder of transposed-conv upsampling, skip
    concatenation and two convs per stage, the last of which maps to the image channels. The
    first conv has no norm. ``blocks=3, width=64`` is the paper's 7,659,264-parameter network.

    Args:
        channels: image channels.
        blocks: number of downsampling stages (the receptive field must cover the image for
            small-N memorization: 3 blocks for 64 px).
        width: channels of the first stage.
        norm: form of the bias-free batch norm (see :class:`BiasFreeBatchNorm`).
    """

    def __init__(self, channels: int = 1, blocks: int = 3, width: int = 64, norm: str = "reference") -> None:
        super().__init__()
        widths = [width * 2**k for k in range(blocks + 1)]
        self.down = nn.ModuleList()
        c_in = channels
        for k in range(blocks):
            first = conv_norm_relu(c_in, widths[k], norm=norm if k > 0 else None)
            self.down.append(nn.Sequential(first, conv_norm_relu(widths[k], widths[k], norm)))
            c_in = widths[k]
        self.mid = nn.Sequential(conv_norm_relu(widths[-2], widths[-1], norm), conv_norm_relu(widths[-1], widths[-1], norm))
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for k in reversed(range(blocks)):
            self.up.append(nn.ConvTranspose2d(widths[k + 1], widths[k], 2, stride=2, bias=False))
            if k == 0:
                last: nn.Module = nn.Conv2d(widths[k], channels, 3, padding=1, bias=False)
            else:
                last = conv_norm_relu(widths[k], widths[k], norm)
            self.dec.append(nn.Sequential(conv_norm_relu(2 * widths[k], widths[k], norm), last))
        self.blocks = blocks

    def forward(self, y: Tensor) -> Tensor:
        if y.shape[-1] % 2**self.blocks or y.shape[-2] % 2**self.blocks:
            raise ValueError(f"image side must be divisible by 2**blocks = {2**self.blocks}, got {tuple(y.shape[-2:])}")
        skips = []
        x = y
        for stage in self.down:
            x = stage(x)
            skips.append(x)
            x = F.avg_pool2d(x, 2)
        x = self.mid(x)
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return x


@torch.no_grad()
def sample_denoiser(
    net: Callable[[Tensor], Tensor],
    indices: Tensor,
    seed: int,
    shape: tuple[int, int, int],
    mean: float | Tensor = 0.5,
    sigma0: float = 1.0,
    sigma_final: float = 0.01,
    h0: float = 0.01,
    beta: float = 0.01,
    max_steps: int = 1000,
    check_every: int = 10,
    diverge_factor: float = 2.0,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Batched stochastic coarse-to-fine sampler of Kadkhodaie & Simoncelli.

    ``y0 = mean + sigma0 * z0``; each step ``d = f(y)``, ``sigma = ||d|| / sqrt(D)``,
    ``h = h0 t / (1 + h0 (t - 1))``, ``gamma = sigma sqrt((1 - beta h)^2 - (1 - h)^2)``,
    ``y <- y - h d + gamma z_t``; a sample stops (is frozen) once ``sigma < sigma_final``; the
    result is ``y - f(y)``. The noise ``z_t`` of sample ``i`` depends only on ``(seed, i, t)``.

    A sample whose ``sigma`` becomes non-finite or grows above ``diverge_factor`` times its
    first value is frozen and marked diverged; one still running at ``max_steps`` is marked
    as hitting the step limit; one whose first noise estimate is already below ``sigma_final``
    (an untrained denoiser that sees no noise in pure noise) is marked stalled. All three come
    back with ``ok = False``.

    Args:
        net: the noise-predicting denoiser.
        indices: ``(B,)`` global sample indices (device of the net).
        seed: sampling seed.
        shape: ``(c, h, w)`` of one image.
        mean: the data's mean pixel value, the start of the chain.
        sigma0: initial noise level.
        sigma_final: stopping noise level (sigma_L).
        h0: initial step size.
        beta: noise injection (1: none; 0.01 the reference default; 0.1-0.5 converges faster).
        max_steps: step limit.
        check_every: steps between the host checks of whether every sample has stopped.
        diverge_factor: divergence when sigma exceeds this multiple of its first value.

    Returns:
        ``(samples (B, c, h, w), ok (B,), counters)`` with counters ``diverged``,
        ``step_limit``, ``stalled``, ``finished`` and ``steps_sum`` (steps of the finished samples).
    """
    dims = math.prod(shape)
    y = mean + sigma0 * counter_normal(seed, indices, shape, stream=0)
    active = torch.ones(len(indices), dtype=torch.bool, device=y.device)
    diverged = torch.zeros_like(active)
    steps = torch.zeros(len(indices), dtype=torch.int64, device=y.device)
    first_sigma: Tensor | None = None
    t = 1
    while t <= max_steps:
        for _ in range(min(check_every, max_steps - t + 1)):
            d = net(y).float()
            sigma = d.flatten(1).norm(dim=1) / math.sqrt(dims)
            if first_sigma is None:
                first_sigma = sigma.clone()
                # a denoiser that sees no noise in pure noise cannot sample: never "converged"
                stalled = sigma < sigma_final
            bad = ~torch.isfinite(sigma) | (sigma > diverge_factor * first_sigma)
            diverged |= active & bad
            active = active & ~bad & (sigma >= sigma_final)
            h = h0 * t / (1 + h0 * (t - 1))
            gamma = sigma * math.sqrt(max((1 - beta * h) ** 2 - (1 - h) ** 2, 0.0))
            z = counter_normal(seed, indices, shape, stream=t)
            y_next = y - h * d + gamma.view(-1, 1, 1, 1) * z
            y = torch.where(active.view(-1, 1, 1, 1), y_next, y)
            steps += active.long()
            t += 1
        if not bool(active.any()):
            break
    out = y - net(y).float()
    hit_limit = active
    finished = ~diverged & ~hit_limit & ~stalled
    ok = finished & torch.isfinite(out).flatten(1).all(dim=1)
    counters = {
        "diverged": float(diverged.sum()),
        "step_limit": float(hit_limit.sum()),
        "stalled": float(stalled.sum()),
        "steps_sum": float(steps[finished].sum()),
        "finished": float(finished.sum()),
    }
    return out, ok, counters


class DiffusionPair(PairModule):
    """Two blind bias-free U-Net denoisers, A and B, and their shared-noise sampler.

    Args:
        image_size: image side (linked from ``data.image_size``).
        channels: image channels.
        blocks: U-Net downsampling stages.
        width: U-Net base channels (64 in the paper).
        lr: Adam learning rate.
        lr_halving_epochs: the learning rate halves every this many epochs.
        sigma_max: training noise levels are ``sigma_max * U**2``.
        channels_last: use the channels-last memory format (faster on GPUs).
        sigma0: sampler initial noise level.
        sigma_final: sampler stopping noise level (an under-trained denoiser may never reach
            0.01: raise it rather than let samples hit the step limit).
        h0: sampler initial step size.
        beta: sampler noise injection.
        max_steps: sampler step limit.
        check_every: sampler steps between host checks for early exit.
        sample_batch_size: samples per sampler batch.
        norm: form of the bias-free batch norm: ``"reference"`` (Kadkhodaie et al.: centred
            batch standard deviation, small random initial scale) or ``"rms"`` (root mean
            square around zero, initial scale 1); see :class:`BiasFreeBatchNorm`.

    Each model's sampler starts from the mean pixel of its own training subset
    (``data_mean_a``, ``data_mean_b``, set at fit start from ``datamodule.subset_images``), so
    model A never depends on subset B.
    """

    def __init__(
        self,
        image_size: int = 64,
        channels: int = 1,
        blocks: int = 3,
        width: int = 64,
        lr: float = 1e-3,
        lr_halving_epochs: int = 100,
        sigma_max: float = 1.0,
        channels_last: bool = False,
        sigma0: float = 1.0,
        sigma_final: float = 0.01,
        h0: float = 0.01,
        beta: float = 0.01,
        max_steps: int = 1000,
        check_every: int = 10,
        sample_batch_size: int = 256,
        norm: str = "reference",
    ) -> None:
        super().__init__(image_size=image_size, channels=channels)
        for name, value in (("blocks", blocks), ("width", width), ("max_steps", max_steps), ("sample_batch_size", sample_batch_size)):
            if value < 1:
                raise ValueError(f"DiffusionPair: {name} must be at least 1, got {value}")
        for name, value in (("lr", lr), ("sigma_final", sigma_final), ("h0", h0), ("sigma0", sigma0), ("sigma_max", sigma_max)):
            if not value > 0:
                raise ValueError(f"DiffusionPair: {name} must be positive, got {value}")
        if not 0 < beta <= 1:
            raise ValueError(f"DiffusionPair: beta must be in (0, 1], got {beta}")
        if norm not in NORMS:
            raise ValueError(f"DiffusionPair: norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.save_hyperparameters()
        self.model_a = BiasFreeUNet(channels, blocks, width, norm)
        self.model_b = BiasFreeUNet(channels, blocks, width, norm)
        for which in MODELS:
            self.register_buffer(f"data_mean_{which}", torch.tensor(0.5))
        self._val_index = ValidationIndex()
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def data_mean(self, which: str) -> Tensor:
        """Mean pixel of model ``which``'s training subset: where its sampler starts."""
        self.model(which)  # validates ``which``
        return getattr(self, f"data_mean_{which}")

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "subset_images"):
            for which in MODELS:
                self.data_mean(which).fill_(float(dm.subset_images(which).double().mean()))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # checkpoints from before the per-model means hold one pooled ``data_mean``: both models start from it
        old = state_dict.pop(prefix + "data_mean", None)
        if old is not None:
            for which in MODELS:
                state_dict.setdefault(f"{prefix}data_mean_{which}", old.clone())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def _prepare(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def noise_loss(self, which: str, x: Tensor, noise: Tensor) -> Tensor:
        """Summed squared error of the predicted noise, divided by the batch size."""
        pred = self.model(which)(self._prepare(x + noise))
        return (pred.float() - noise.float()).square().sum() / len(x)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        total = 0.0
        for which in ("a", "b"):
            x = batch[which]
            sigma = self.hparams.sigma_max * torch.rand(len(x), 1, 1, 1, device=x.device) ** 2
            loss = self.noise_loss(which, x, sigma * torch.randn_like(x))
            self.log(f"train/loss_{which}", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x))
            total = total + loss
        return total

    def on_validation_epoch_start(self) -> None:
        self._val_index.reset(self.trainer)

    def validation_noise(self, indices: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Fixed noise of the validation images ``indices``: a function of each image's index only.

        Image ``i`` gets ``sigma_i = sigma_max * u_i**2`` with ``u_i`` = :func:`golden_uniform`
        (evenly spread levels, as in training's ``U**2``), times its own counter-based normal
        pattern; neither depends on the batch, the batch size or the number of images.
        """
        sigma = self.hparams.sigma_max * golden_uniform(indices).square().view(-1, *([1] * len(shape)))
        return sigma * counter_normal(VAL_SEED, indices, tuple(shape), stream=0)

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        x = batch
        idx = self._val_index(batch_idx, len(x), x.device)
        noise = self.validation_noise(idx, tuple(x.shape[1:])).to(x.dtype)
        for which in ("a", "b"):
            self.log(f"val/loss_{which}", self.noise_loss(which, x, noise), on_epoch=True, batch_size=len(x), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.hparams.lr_halving_epochs, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    @torch.no_grad()
    def denoise(self, which: str, y: Tensor) -> Tensor:
        """Denoised images ``y - f(y)`` from model ``which`` (eval mode)."""
        was = self.training
        self.eval()
        try:
            y = y.to(self.device)
            return (y - self.model(which)(self._prepare(y)).float()).cpu()
        finally:
            self.train(was)

    def generate(self, which: str, indices: Tensor, seed: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        hp = self.hparams
        net = self.model(which)
        use_bf16 = indices.device.type == "cuda"

        def f(y: Tensor) -> Tensor:
            with torch.autocast(device_type=indices.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                return net(self._prepare(y))

        return sample_denoiser(
            f,
            indices,
            seed,
            self.image_shape,
            mean=self.data_mean(which),
            sigma0=hp.sigma0,
            sigma_final=hp.sigma_final,
            h0=hp.h0,
            beta=hp.beta,
            max_steps=hp.max_steps,
            check_every=hp.check_every,
        )
