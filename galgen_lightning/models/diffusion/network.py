"""The diffusion family's network: a blind, bias-free U-Net denoiser and its sampler.

Kadkhodaie et al. (ICLR 2024): no biases anywhere, bias-free batch norm, so ``f(a y) = a f(y)``;
the net predicts the noise and ``y - f(y)`` is the denoised image. The sampler is Kadkhodaie &
Simoncelli's stochastic coarse-to-fine ascent (see :func:`sample_denoiser`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from galgen_lightning.errors import require
from galgen_lightning.noise import counter_normal

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


@dataclass(frozen=True)
class SamplerSettings:
    """The settings of :func:`sample_denoiser`, in one place (``DiffusionPair`` builds them from
    its hyperparameters of the same names: ``model.sigma0``, ``model.sigma_final``, ...).

    Attributes:
        sigma0: initial noise level.
        sigma_final: stopping noise level (sigma_L); 0 never stops (``max_steps`` steps, for
            benchmarks).
        h0: initial step size.
        beta: noise injection, in (0, 1] (1: none; 0.01 the reference default; 0.1-0.5
            converges faster).
        max_steps: step limit.
        check_every: steps between the host checks of whether every sample has stopped.
        diverge_factor: divergence when sigma exceeds this multiple of its first value.
    """

    sigma0: float = 1.0
    sigma_final: float = 0.01
    h0: float = 0.01
    beta: float = 0.01
    max_steps: int = 1000
    check_every: int = 10
    diverge_factor: float = 2.0

    def __post_init__(self) -> None:
        for name in ("sigma0", "h0", "diverge_factor"):
            require(0 < getattr(self, name) < math.inf, f"model.{name}", "positive", getattr(self, name))
        require(0 <= self.sigma_final < math.inf, "model.sigma_final", "non-negative", self.sigma_final)
        require(0 < self.beta <= 1, "model.beta", "in (0, 1]", self.beta)
        for name in ("max_steps", "check_every"):
            require(getattr(self, name) >= 1, f"model.{name}", "at least 1", getattr(self, name))

    @classmethod
    def from_hparams(cls, hparams) -> SamplerSettings:
        """The settings named in ``hparams`` (a mapping; absent names keep their defaults)."""
        return cls(**{f.name: hparams[f.name] for f in fields(cls) if f.name in hparams})


@torch.no_grad()
def sample_denoiser(
    net: Callable[[Tensor], Tensor],
    indices: Tensor,
    seed: int,
    shape: tuple[int, int, int],
    mean: float | Tensor = 0.5,
    settings: SamplerSettings | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, dict[str, float | Tensor]]:
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
        settings: the sampler's settings (:class:`SamplerSettings`; default: its defaults).
        dtype: dtype of the noise (float64 for a float64 denoiser).

    Returns:
        ``(samples (B, c, h, w), ok (B,), counters)`` with counters ``diverged``,
        ``step_limit``, ``stalled``, ``finished`` and ``steps_sum`` (steps of the finished samples).
    """
    s = settings or SamplerSettings()
    sigma0, sigma_final, h0, beta = s.sigma0, s.sigma_final, s.h0, s.beta
    max_steps, check_every, diverge_factor = s.max_steps, s.check_every, s.diverge_factor
    dims = math.prod(shape)
    y = mean + sigma0 * counter_normal(seed, indices, shape, stream=0, dtype=dtype)
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
            z = counter_normal(seed, indices, shape, stream=t, dtype=dtype)
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
    counters = {  # per sample: the pair sums them, and recounts them for its first n samples
        "diverged": diverged.double(),
        "step_limit": hit_limit.double(),
        "stalled": stalled.double(),
        "steps_sum": (steps * finished).double(),
        "finished": finished.double(),
    }
    return out, ok, counters
