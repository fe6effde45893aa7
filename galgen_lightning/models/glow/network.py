"""Multi-scale Glow (Kingma & Dhariwal 2018), written as small invertible pieces.

Direction convention: ``forward`` is the *encoding* (training) direction, image -> latents, and
returns the log-determinant of its Jacobian; ``reverse`` is the generative direction. Every
layer maps ``(x, logdet)`` to ``(y, logdet + log|det dy/dx|)`` per sample.

The network, for a ``(c, h, w)`` image and ``n_block`` levels::

    level k:  squeeze (2x2 space -> 4x channels)
              n_flow x [ActNorm -> invertible 1x1 conv (LU) -> coupling]
              split off half the channels as the level's latent z_k, whose Gaussian prior
              (mean, log std) a zero-initialised conv predicts from the other half;
    last level: no split, the whole tensor is z_k, with a learned (per-channel) prior.

For ``1x64x64`` and ``n_block=4`` the latent shapes are ``(2,32,32), (4,16,16), (8,8,8),
(32,4,4)``. Besides the raw ``z_k`` the forward pass returns the *standardised* latents
``eps_k = (z_k - mean_k) / std_k`` of the model's own prior: those are the ``N(0, I)``
variables that sampling draws and the inversion test compares.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)


# --- pure helpers ----------------------------------------------------------------------------
def squeeze2x2(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, 4C, H/2, W/2)``: each 2x2 block of pixels becomes 4 channels."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unsqueeze2x2(x: Tensor) -> Tensor:
    """Inverse of :func:`squeeze2x2`."""
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)


def gaussian_log_density(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Elementwise log density of ``N(mean, exp(log_std)**2)`` at ``x``."""
    return -0.5 * LOG_2PI - log_std - 0.5 * (x - mean).square() * torch.exp(-2 * log_std)


def sum_per_sample(x: Tensor) -> Tensor:
    """Sum over every dimension but the first, in float32 at least (float64 stays float64)."""
    return wide(x).flatten(1).sum(dim=1)


def wide(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 if it already is (log densities are never summed in bf16)."""
    return x if x.dtype == torch.float64 else x.float()


def latent_shapes(channels: int, image_size: int, n_block: int) -> list[tuple[int, int, int]]:
    """Shapes ``(c, h, w)`` of the per-level latents of a Glow on ``channels x size x size`` images."""
    shapes = []
    c, s = channels, image_size
    for level in range(n_block):
        c, s = c * 4, s // 2
        if level < n_block - 1:
            c //= 2
        shapes.append((c, s, s))
    return shapes


# --- layers ----------------------------------------------------------------------------------
def _global_channel_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation of ``x`` (B, C, H, W), over every process.

    With one value per channel in all (a single 1x1 image) the standard deviation is 1.
    """
    stats = torch.stack([torch.full_like(x[0, :, 0, 0], x[:, 0].numel()), x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3))])
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(stats)
    count, total, squares = stats
    mean = total / count
    var = (squares / count - mean.square()).clamp_min(0.0)
    std = torch.where(count > 1, var.sqrt(), torch.ones_like(var))
    return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)


class ActNorm(nn.Module):
    """Per-channel affine normalisation ``y = (x + loc) * exp(log_scale)``.

    Data-dependent initialisation: the first forward pass *in training mode* sets ``loc`` and
    ``log_scale`` so that this batch comes out with zero mean and unit variance per channel,
    and sets the ``initialized`` buffer. The buffer is saved in the state dict, so a reloaded
    checkpoint is never re-initialised. A batch with non-finite statistics does not initialise.
    Only a Python flag is checked on later passes (no host synchronisation per layer).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self._checked = False  # True once the buffer is known to be set: no more checks

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``loc`` and ``log_scale`` from the statistics of batch ``x``.

        Under ``torch.distributed`` (DDP) the statistics are those of the global batch, summed
        over all processes, so every rank starts from the same parameters.
        """
        mean, std = _global_channel_moments(x.float())
        log_scale = -torch.log(std + 1e-6)
        if not (torch.isfinite(mean).all() and torch.isfinite(log_scale).all()):
            return
        self.loc.copy_(-mean)
        self.log_scale.copy_(log_scale)
        self.initialized.fill_(1)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._checked = False

    def forward(self, x: Tensor, logdet: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not self._checked:
            if not bool(self.initialized):
                self.initialize(x)
            self._checked = bool(self.initialized)
        y = (x + self.loc) * torch.exp(self.log_scale)
        return y, logdet + x.shape[2] * x.shape[3] * self.log_scale.sum()

    def reverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.loc


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution with an LU-parametrised weight ``W = P (L + I) (U + diag(s))``.

    ``P`` is a fixed permutation, ``L`` strictly lower and ``U`` strictly upper triangular, and
    ``s = sign * exp(log_s)``, so ``log|det W| = sum(log_s)`` costs nothing. It starts at a
    random rotation. ``L`` and ``U`` are stored as full ``C x C`` matrices and masked (the
    masked-out entries are parameters that never receive a gradient; they count in
    ``numel``, as in the reference implementations).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(upper * self.lower_mask.T)
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def weight(self) -> Tensor:
        """The ``C x C`` matrix ``W`` (always in float32 or higher, also under autocast)."""
        device = self.perm.device.type
        with torch.autocast(device, enabled=False) if device != "meta" else contextlib.nullcontext():
            lower = self.lower * self.lower_mask + self.eye
            upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
            return self.perm @ lower @ upper

    def forward(self, x: Tensor, logdet: Tensor) -> tuple[Tensor, Tensor]:
        w = self.weight()
        y = F.conv2d(x, w[:, :, None, None].to(x.dtype))
        return y, logdet + x.shape[2] * x.shape[3] * self.log_s.sum()

    def reverse(self, y: Tensor) -> Tensor:
        w_inv = torch.linalg.inv(self.weight().double()).to(y.dtype)
        return F.conv2d(y, w_inv[:, :, None, None])


class ZeroConv2d(nn.Module):
    """3x3 convolution initialised to output zero, with a learned per-channel output gain.

    ``out = conv(x) * exp(3 * gain)``; weights, bias and gain start at zero, so a coupling
    starts as the identity and a prior as ``N(0, I)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.gain = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.exp(3 * self.gain)


def coupling_net(in_channels: int, out_channels: int, hidden: int) -> nn.Sequential:
    """conv 3x3 -> ReLU -> conv 1x1 -> ReLU -> zero-initialised conv 3x3."""
    first = nn.Conv2d(in_channels, hidden, 3, padding=1)
    middle = nn.Conv2d(hidden, hidden, 1)
    for conv in (first, middle):
        nn.init.normal_(conv.weight, 0.0, 0.05)
        nn.init.zeros_(conv.bias)
    return nn.Sequential(first, nn.ReLU(), middle, nn.ReLU(), ZeroConv2d(hidden, out_channels))


class Coupling(nn.Module):
    """Coupling layer: the first half of the channels conditions a map of the second half.

    Additive: ``y_b = x_b + t(x_a)`` (log-determinant 0). Affine: ``y_b = (x_b + t(x_a)) *
    sigmoid(r(x_a) + 2)``, which starts near the identity (scale ~0.88) and cannot blow up.
    """

    def __init__(self, channels: int, hidden: int = 512, affine: bool = False) -> None:
        super().__init__()
        self.affine = affine
        half = channels // 2
        self.net = coupling_net(half, channels if affine else channels - half, hidden)

    def _shift_scale(self, x_a: Tensor) -> tuple[Tensor, Tensor | None]:
        h = self.net(x_a)
        if not self.affine:
            return h, None
        raw, shift = h.chunk(2, dim=1)
        return shift, torch.sigmoid(raw + 2.0)

    def forward(self, x: Tensor, logdet: Tensor) -> tuple[Tensor, Tensor]:
        x_a, x_b = x.chunk(2, dim=1)
        shift, scale = self._shift_scale(x_a)
        if scale is None:
            return torch.cat([x_a, x_b + shift], dim=1), logdet
        y_b = (x_b + shift) * scale
        return torch.cat([x_a, y_b], dim=1), logdet + sum_per_sample(torch.log(scale))

    def reverse(self, y: Tensor) -> Tensor:
        y_a, y_b = y.chunk(2, dim=1)
        shift, scale = self._shift_scale(y_a)
        x_b = y_b - shift if scale is None else y_b / scale - shift
        return torch.cat([y_a, x_b], dim=1)


class FlowStep(nn.Module):
    """One step of flow: ActNorm -> invertible 1x1 conv -> coupling."""

    def __init__(self, channels: int, hidden: int = 512, affine: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList([ActNorm(channels), InvConv1x1(channels), Coupling(channels, hidden, affine)])

    def forward(self, x: Tensor, logdet: Tensor) -> tuple[Tensor, Tensor]:
        for layer in self.layers:
            x, logdet = layer(x, logdet)
        return x, logdet

    def reverse(self, y: Tensor) -> Tensor:
        for layer in reversed(self.layers):
            y = layer.reverse(y)
        return y


class LevelOutput(NamedTuple):
    """What one level hands on: the tensor for the next level (``None`` at the last), its latent."""

    h: Tensor | None
    z: Tensor
    eps: Tensor
    mean: Tensor
    log_std: Tensor
    logdet: Tensor
    log_p: Tensor


class Level(nn.Module):
    """Squeeze, ``n_flow`` steps of flow, then split with a learned prior (or, last, no split).

    Args:
        in_channels: channels entering the level (before the squeeze).
        n_flow: steps of flow.
        hidden: coupling network width.
        affine: affine instead of additive coupling.
        split: split off half the channels as this level's latent (every level but the last).
    """

    def __init__(self, in_channels: int, n_flow: int, hidden: int = 512, affine: bool = False, split: bool = True) -> None:
        super().__init__()
        channels = in_channels * 4
        self.split = split
        self.flows = nn.ModuleList([FlowStep(channels, hidden, affine) for _ in range(n_flow)])
        z_channels = channels // 2 if split else channels
        self.prior = ZeroConv2d(channels - z_channels if split else channels, 2 * z_channels)

    def _prior(self, h: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log std of the latent; from the kept half, or (last level) from zeros."""
        cond = h if h is not None else torch.zeros_like(like)
        mean, log_std = self.prior(cond).chunk(2, dim=1)
        return mean, log_std

    def forward(self, x: Tensor, logdet: Tensor) -> LevelOutput:
        x = squeeze2x2(x)
        for flow in self.flows:
            x, logdet = flow(x, logdet)
        h, z = x.chunk(2, dim=1) if self.split else (None, x)
        mean, log_std = self._prior(h, z)
        eps = (z - mean) * torch.exp(-log_std)
        log_p = sum_per_sample(gaussian_log_density(wide(z), wide(mean), wide(log_std)))
        return LevelOutput(h, z, eps, mean, log_std, logdet, log_p)

    def reverse(self, h: Tensor | None, latent: Tensor, standardized: bool = True, temperature: float = 1.0) -> Tensor:
        """Invert the level. ``latent`` is ``eps`` (standardised, scaled by ``temperature``) or raw ``z``."""
        if standardized:
            mean, log_std = self._prior(h, latent)
            z = mean + torch.exp(log_std) * (temperature * latent)
        else:
            z = latent
        x = torch.cat([h, z], dim=1) if self.split else z
        for flow in reversed(self.flows):
            x = flow.reverse(x)
        return unsqueeze2x2(x)


class FlowOutput(NamedTuple):
    """Result of encoding a batch: per-level latents and the per-sample log densities.

    Attributes:
        z: raw latents, one ``(B, c_k, h_k, w_k)`` tensor per level.
        eps: the same standardised with the model's own prior, ``(z_k - mean_k) / std_k``.
        logdet: ``(B,)`` log|det dz/dx| of the whole flow (``z`` being all raw latents).
        log_p: ``(B,)`` log density of the raw latents under the learned prior.
    """

    z: list[Tensor]
    eps: list[Tensor]
    logdet: Tensor
    log_p: Tensor


class Glow(nn.Module):
    """Multi-scale Glow: ``n_block`` levels of ``n_flow`` steps each (see the module docstring).

    Args:
        channels: image channels.
        n_flow: steps of flow per level (32 in the paper).
        n_block: levels (4 in the paper); the image side must be divisible by ``2**n_block``.
        hidden: coupling network width (512).
        affine: affine coupling (default additive).
    """

    def __init__(self, channels: int = 1, n_flow: int = 32, n_block: int = 4, hidden: int = 512, affine: bool = False) -> None:
        super().__init__()
        self.channels, self.n_block = channels, n_block
        self.levels = nn.ModuleList()
        c = channels
        for k in range(n_block):
            split = k < n_block - 1
            self.levels.append(Level(c, n_flow, hidden, affine, split))
            c = c * 2 if split else c * 4

    def latent_shapes(self, image_size: int) -> list[tuple[int, int, int]]:
        """Per-level latent shapes for square images of side ``image_size``."""
        return latent_shapes(self.channels, image_size, self.n_block)

    def forward(self, x: Tensor) -> FlowOutput:
        logdet = torch.zeros(len(x), device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
        log_p = torch.zeros_like(logdet)
        zs, eps = [], []
        h: Tensor | None = x
        for level in self.levels:
            out = level(h, logdet)
            h, logdet, log_p = out.h, out.logdet, log_p + out.log_p
            zs.append(out.z)
            eps.append(out.eps)
        return FlowOutput(zs, eps, logdet, log_p)

    def reverse(self, latents: list[Tensor], standardized: bool = True, temperature: float = 1.0) -> Tensor:
        """Image from per-level latents.

        Args:
            latents: one tensor per level, shapes as :meth:`latent_shapes`.
            standardized: ``latents`` are standardised (``eps``, drawn from ``N(0, I)`` to
                sample) and are mapped through each level's prior; else they are raw ``z``.
            temperature: multiplies standardised latents (sampling at ``T < 1``).
        """
        if len(latents) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} latents, got {len(latents)}")
        h: Tensor | None = None
        for level, latent in zip(reversed(self.levels), reversed(latents)):
            h = level.reverse(h, latent, standardized, temperature)
        assert h is not None
        return h
