"""Light-weight GAN networks (Liu et al. 2021, as in lucidrains/lightweight-gan), written small.

- :class:`Generator`: latent -> 4x4 (transposed conv, batch norm, GLU) -> a stack of x2 up
  blocks (pixel-shuffle upsampling, 4x4 conv, noise injection, batch norm, GLU), skip-layer
  excitation (SLE) from the 16/32/64/128 px maps onto the 128/256/512/1024 px maps (so it is
  active from 128 px; a 64 px generator has no pair to connect), optional attention at chosen
  resolutions, and a 3x3 conv to the image channels. The output is not squashed: images live
  in [0, 1] and the caller clamps for display.
- :class:`Discriminator`: residual down blocks to 8x8 features, a 1x1 logit ("main head"),
  a second small network on the image resized to 32x32 ("small head"), and a decoder that
  reconstructs the image from the 8x8 features (the self-supervised regulariser).
- Helpers: the hinge losses with the sign convention of the reference (real images push the
  discriminator *down*, generated ones *up*; a discriminator that outputs 0 scores exactly 2),
  the gradient penalty, and DiffAugment (translation, cutout).

What the two networks share (image, width rule, attention) is one :class:`Plan`. Channel
widths follow the reference's rule: at side ``s`` the generator has
``min(fmap_max, 2**(fmap_inverse_coef + 1) / s)`` channels and the discriminator
``min(fmap_max, 2**fmap_inverse_coef / s)``; with the defaults (512, 12), a 64 px, 1-channel,
latent-256 model with attention at 32 px has 23.6 M (generator) and 11.7 M (discriminator)
parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NoiseFn = Callable[[int, tuple[int, int, int]], Tensor]


# --------------------------------------------------------------------------- small helpers
def is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def resize(x: Tensor, side: int) -> Tensor:
    """Square resize: area averaging when shrinking, nearest neighbour when growing."""
    if x.shape[-1] == side:
        return x
    mode = "area" if side < x.shape[-1] else "nearest"
    return F.interpolate(x, size=(side, side), mode=mode)


def leaky() -> nn.Module:
    return nn.LeakyReLU(0.1)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan in) for every conv and linear weight, as the reference does."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in", nonlinearity="leaky_relu")
    for m in module.modules():
        if isinstance(m, PixelShuffleUp):
            m.reset_parameters()


# --------------------------------------------------------------------------- losses
def hinge_per_sample(real: Tensor, fake: Tensor) -> Tensor:
    """Per-sample discriminator hinge loss ``relu(1 + D(real)) + relu(1 - D(fake))``.

    Sign convention of the reference: the discriminator pushes real images below -1 and
    generated ones above +1; the generator minimises ``D(fake)``. Outputs of 0 score exactly 2.
    """
    return F.relu(1 + real.float()) + F.relu(1 - fake.float())


def hinge_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Mean discriminator hinge loss of one head (2 for a discriminator that outputs 0)."""
    return hinge_per_sample(real, fake).mean()


def generator_loss(fake: Tensor) -> Tensor:
    """Generator hinge loss of one head: ``D(fake).mean()`` (pushes fakes toward "real")."""
    return fake.float().mean()


def gradient_penalty(inputs: Sequence[Tensor], outputs: Sequence[Tensor], weight: float) -> Tensor:
    """``weight * mean_i ||d(sum of outputs)/d input_i||^2`` over the samples of every input.

    Args:
        inputs: the discriminator inputs (they must require grad), e.g. ``[real, fake]``.
        outputs: the discriminator outputs to differentiate (both heads), summed.
        weight: the penalty weight (10 in the reference).
    """
    total = sum(o.float().sum() for o in outputs)
    grads = torch.autograd.grad(total, list(inputs), create_graph=True)
    norms = torch.cat([g.float().flatten(1).square().sum(dim=1) for g in grads])
    return weight * norms.mean()


# --------------------------------------------------------------------------- DiffAugment
def rand_translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    """Shift each image by a random integer offset up to ``ratio`` of its side; zeros fill in."""
    b, c, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).flatten(1)
    out = x.flatten(2).gather(2, index.unsqueeze(1).expand(b, c, h * w)).view(b, c, h, w)
    return out * inside.unsqueeze(1).to(x.dtype)


def rand_cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    """Zero a random square of ``ratio`` times the side in each image (it may cross the edge)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device) - ch // 2
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device) - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (rows >= cy) & (rows < cy + ch) & (cols >= cx) & (cols < cx + cw)
    return x * (~hole).unsqueeze(1).to(x.dtype)


AUGMENTATIONS: dict[str, Callable[[Tensor], Tensor]] = {"translation": rand_translation, "cutout": rand_cutout}


def diff_augment(x: Tensor, prob: float, types: Sequence[str]) -> Tensor:
    """DiffAugment: with probability ``prob`` (one draw per call) apply ``types`` in order.

    Differentiable in ``x``, so the generator's gradient passes through it.
    """
    if prob <= 0 or not types or float(torch.rand(())) >= prob:
        return x
    for name in types:
        x = AUGMENTATIONS[name](x)
    return x


def auto_aug_prob(n: int) -> float:
    """The reference's automatic augmentation probability for ``n`` training images."""
    return min(0.5, (1e5 - n) * 3e-6) if n < 1e5 else 0.0


# --------------------------------------------------------------------------- building blocks
class ChanNorm(nn.Module):
    """Layer norm over channels at every pixel, with a learned scale and shift."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.g + self.b


class Attention(nn.Module):
    """Residual attention on feature maps: ``x + out(norm(x))`` with two branches.

    A global *linear* attention (softmax over features for queries, over positions for keys;
    keys and values from a depthwise-separable 3x3 conv) and a *local* attention over each
    pixel's 3x3 neighbourhood (zero padded), concatenated and projected back.
    """

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8) -> None:
        super().__init__()
        inner = dim_head * heads
        self.heads, self.dim_head, self.scale = heads, dim_head, dim_head**-0.5
        self.norm = ChanNorm(dim)
        self.to_lin_q = nn.Conv2d(dim, inner, 1, bias=False)
        self.to_lin_kv = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False), nn.Conv2d(dim, 2 * inner, 1, bias=False)
        )
        self.to_q = nn.Conv2d(dim, inner, 1, bias=False)
        self.to_kv = nn.Conv2d(dim, 2 * inner, 1, bias=False)
        self.to_out = nn.Conv2d(2 * inner, dim, 1)

    def _heads(self, t: Tensor) -> Tensor:
        b, _, h, w = t.shape
        return t.reshape(b * self.heads, self.dim_head, h, w)

    def _linear(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        k, v = self.to_lin_kv(x).chunk(2, dim=1)
        q, k, v = (self._heads(t).flatten(2) for t in (self.to_lin_q(x), k, v))  # (bh, d, n)
        q = q.softmax(dim=1) * self.scale
        k = k.softmax(dim=2)
        context = torch.einsum("bdn,ben->bde", k, v)
        out = torch.einsum("bdn,bde->ben", q, context)
        return F.gelu(out.reshape(b, -1, h, w))

    def _local(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        k, v = self.to_kv(x).chunk(2, dim=1)
        q, k, v = (self._heads(t) for t in (self.to_q(x) * self.scale, k, v))  # (bh, d, h, w)
        bh, d = q.shape[:2]
        k, v = (F.unfold(t, 3, padding=1).view(bh, d, 9, h * w) for t in (k, v))  # 3x3 neighbours, zero padded
        sim = (q.flatten(2).unsqueeze(2) * k).sum(dim=1)  # (bh, 9, n)
        attn = sim.float().softmax(dim=1).to(v.dtype)
        return (attn.unsqueeze(1) * v).sum(dim=2).reshape(b, -1, h, w)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(x)
        return x + self.to_out(torch.cat([self._linear(y), self._local(y)], dim=1))


class PixelShuffleUp(nn.Module):
    """x2 upsampling: 1x1 conv to 4x the channels, SiLU, pixel shuffle (ICNR-initialised)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, 4 * dim, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # ICNR: the four sub-pixels start identical, so the upsampling starts checkerboard-free
        o, i = self.conv.weight.shape[:2]
        base = torch.empty(o // 4, i, 1, 1)
        nn.init.kaiming_uniform_(base)
        with torch.no_grad():
            self.conv.weight.copy_(base.repeat_interleave(4, dim=0))
            self.conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(F.silu(self.conv(x)), 2)


class NoiseInjection(nn.Module):
    """``x + weight * noise`` with one learned weight (0 at start) and one noise map per image."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            noise = torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        return x + self.weight * noise.to(x.dtype)


class UpBlock(nn.Module):
    """Generator stage: pixel-shuffle x2, 4x4 'same' conv to 2 * c_out, noise, batch norm, GLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.up = PixelShuffleUp(c_in)
        self.conv = nn.Conv2d(c_in, 2 * c_out, 4)
        self.noise = NoiseInjection()
        self.norm = nn.BatchNorm2d(2 * c_out)

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        x = self.conv(F.pad(self.up(x), (2, 1, 2, 1)))  # even kernel: pad 2 before, 1 after
        return F.glu(self.norm(self.noise(x, noise)), dim=1)


class Excitation(nn.Module):
    """Skip-layer excitation (global-context flavour): a low-resolution map gates the channels
    of a high-resolution one through ``sigmoid(mlp(attention-pooled features))``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.to_k = nn.Conv2d(c_in, 1, 1)
        hidden = max(3, c_out // 2)
        self.net = nn.Sequential(nn.Conv2d(c_in, hidden, 1), leaky(), nn.Conv2d(hidden, c_out, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        weights = self.to_k(x).flatten(2).softmax(dim=-1)  # (b, 1, n)
        pooled = torch.einsum("bin,bcn->bc", weights, x.flatten(2))
        return self.net(pooled[..., None, None])


class DownBlock(nn.Module):
    """Discriminator stage, x1/2: (space-to-depth 1x1 conv, 3x3 conv) plus (avg pool, 1x1 conv)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.PixelUnshuffle(2), nn.Conv2d(4 * c_in, c_out, 1), leaky(), nn.Conv2d(c_out, c_out, 3, padding=1), leaky()
        )
        self.skip = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(c_in, c_out, 1), leaky())

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x) + self.skip(x)


class Decoder(nn.Module):
    """Reconstructs an image from low-resolution features: ``upsamples`` x2 stages, each
    pixel-shuffle, 3x3 conv and GLU (halving the channels), the last one to the image channels."""

    def __init__(self, c_in: int, channels: int, upsamples: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = c_in
        for k in range(upsamples):
            last = k == upsamples - 1
            layers += [PixelShuffleUp(c), nn.Conv2d(c, 2 * channels if last else c, 3, padding=1), nn.GLU(dim=1)]
            c //= 2
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# --------------------------------------------------------------------------- the networks
SLE_PAIRS = ((16, 128), (32, 256), (64, 512), (128, 1024))  # (source side, target side)


@dataclass(frozen=True)
class Plan:
    """What the generator and the discriminator of one GAN share: the image, the width rule and
    the attention (one place, so the two networks cannot disagree on them).

    Args:
        image_size: image side (a power of two; at least 8 for the generator, 16 for the
            discriminator).
        channels: image channels.
        fmap_max: most channels in any stage.
        fmap_inverse_coef: the width rule: at side ``s``, ``min(fmap_max, 2**(coef + 1) / s)``
            channels in the generator and ``min(fmap_max, 2**coef / s)`` in the discriminator.
        attn_sizes: sides that get attention (32 in the reference): the generator's feature maps
            before they are upsampled, the inputs of the discriminator's down blocks.
        attn_heads: attention heads (8 in the reference), also in the discriminator's small head.
        attn_dim_head: channels per head (64 in the reference).
    """

    image_size: int = 64
    channels: int = 1
    fmap_max: int = 512
    fmap_inverse_coef: int = 12
    attn_sizes: tuple[int, ...] = (32,)
    attn_heads: int = 8
    attn_dim_head: int = 64

    def generator_width(self, side: int) -> int:
        """Generator channels at spatial side ``side``."""
        return max(1, min(self.fmap_max, 2 ** (self.fmap_inverse_coef + 1) // side))

    def discriminator_width(self, side: int) -> int:
        """Discriminator channels at spatial side ``side``."""
        return max(1, min(self.fmap_max, 2**self.fmap_inverse_coef // side))

    def attention(self, dim: int) -> Attention:
        """An attention layer over ``dim`` channels."""
        return Attention(dim, self.attn_dim_head, self.attn_heads)


class Generator(nn.Module):
    """Light-weight GAN generator.

    Args:
        plan: the image, widths and attention (:class:`Plan`; attention at side 32 means the
            32x32 map that becomes 64x64).
        latent_dim: latent size.
    """

    def __init__(self, plan: Plan, latent_dim: int = 256) -> None:
        super().__init__()
        image_size = plan.image_size
        if not is_power_of_two(image_size) or image_size < 8:
            raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
        self.latent_dim = latent_dim
        self.initial = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 2 * latent_dim, 4), nn.BatchNorm2d(2 * latent_dim), nn.GLU(dim=1)
        )
        self.sides = [2**k for k in range(3, int(math.log2(image_size)) + 1)]  # output side of each stage
        widths = [latent_dim] + [plan.generator_width(s) for s in self.sides]
        self.stages = nn.ModuleList(UpBlock(widths[k], widths[k + 1]) for k in range(len(self.sides)))
        self.attn = nn.ModuleDict(
            {str(s // 2): plan.attention(widths[k]) for k, s in enumerate(self.sides) if s // 2 in plan.attn_sizes}
        )
        width_at = dict(zip(self.sides, widths[1:]))
        self.sle_pairs = {src: dst for src, dst in SLE_PAIRS if dst <= image_size}
        self.sle = nn.ModuleDict({str(src): Excitation(width_at[src], width_at[dst]) for src, dst in self.sle_pairs.items()})
        self.out = nn.Conv2d(widths[-1], plan.channels, 3, padding=1)
        init_weights(self)

    def forward(self, z: Tensor, noise: NoiseFn | None = None) -> Tensor:
        """Images from latents ``z`` of shape ``(B, latent_dim)``.

        Args:
            z: latents.
            noise: optional ``noise(stage, (1, h, w)) -> (B, 1, h, w)`` for the noise injection
                of each stage (a pure function of the sample makes the output one too); default
                fresh ``torch.randn``.
        """
        x = F.normalize(self.initial(z[:, :, None, None]), dim=1)
        gates: dict[int, Tensor] = {}
        for k, (side, stage) in enumerate(zip(self.sides, self.stages)):
            if str(side // 2) in self.attn:
                x = self.attn[str(side // 2)](x)
            x = stage(x, None if noise is None else noise(k, (1, 2 * x.shape[-2], 2 * x.shape[-1])))
            if str(side) in self.sle:
                gates[self.sle_pairs[side]] = self.sle[str(side)](x)
            if side in gates:
                x = x * gates.pop(side)
        return self.out(x)


class Discriminator(nn.Module):
    """Light-weight GAN discriminator: main head, small head and reconstruction decoder.

    Args:
        plan: the image, widths and attention (:class:`Plan`; attention at side 32 means the
            down block whose input is 32x32).
        small_size: side the image is resized to for the small head (default
            ``min(32, image_size // 2)``: 32 at 64 px as in the reference).
        small_width: channels of the small head (64 in the reference).
        decoder_upsamples: x2 stages of the decoder from the 8x8 features (4 in the reference:
            it reconstructs at 128 px whatever the input side; 3 reconstructs at 64 px).
    """

    def __init__(self, plan: Plan, small_size: int | None = None, small_width: int = 64, decoder_upsamples: int = 4) -> None:
        super().__init__()
        image_size, channels, width = plan.image_size, plan.channels, plan.discriminator_width
        if not is_power_of_two(image_size) or image_size < 16:
            raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
        stem: list[nn.Module] = []
        side, c = image_size, channels
        while side > 256:  # plain strided convs down to 256 px (only for large images)
            c_out = width(256) if side == 512 else channels
            stem += [nn.Conv2d(c, c_out, 4, stride=2, padding=1), leaky()]
            side, c = side // 2, c_out
        self.stem = nn.Sequential(*stem)
        self.blocks = nn.ModuleList()
        self.block_attn = nn.ModuleList()
        while side > 8:
            self.block_attn.append(plan.attention(c) if side in plan.attn_sizes else nn.Identity())
            self.blocks.append(DownBlock(c, width(side // 2)))
            side, c = side // 2, width(side // 2)
        self.to_logits = nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), leaky(), nn.Conv2d(c, 1, 4))
        self.small_size = small_size or min(32, image_size // 2)
        half = max(1, small_width // 2)
        self.small_head = nn.Sequential(
            nn.Conv2d(channels, small_width, 3, padding=1),
            plan.attention(small_width),
            DownBlock(small_width, half),
            plan.attention(half),
            nn.AdaptiveAvgPool2d(4),
            nn.Conv2d(half, 1, 4),
        )
        self.decoder = Decoder(c, channels, decoder_upsamples)
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        """The 8x8 feature map."""
        x = self.stem(x)
        for attn, block in zip(self.block_attn, self.blocks):
            x = block(attn(x))
        return x

    def forward(self, x: Tensor, reconstruct: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Scores of both heads, ``(B,)`` each, and the reconstruction loss if asked.

        Args:
            x: images ``(B, c, h, w)``.
            reconstruct: also return the mean squared error of the decoder's reconstruction of
                ``x`` (resized to the decoder's output side); ``None`` otherwise.
        """
        feats = self.features(x)
        main = self.to_logits(feats).flatten(1).mean(dim=1)
        small = self.small_head(resize(x, self.small_size)).flatten(1).mean(dim=1)
        recon = None
        if reconstruct:
            out = self.decoder(feats)
            recon = F.mse_loss(out.float(), resize(x, out.shape[-1]).float())
        return main, small, recon
