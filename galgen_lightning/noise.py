"""Counter-based Gaussian noise: the same numbers for sample ``i`` whatever the batch.

The two-models test feeds model A and model B *the same* noise. With a stateful generator the
numbers a sample receives depend on the batch it lands in and on how many draws came before.
Here every number is a pure function of ``(seed, sample index, stream, element)``: a 32-bit
integer hash (lowbias32, by Chris Wellons) turned into uniforms, then normals by Box-Muller.
It runs on any device as plain tensor arithmetic, needs no host synchronisation, and a batch
of 512 images costs a few elementwise kernels.

All integer arithmetic stays below 2**63 (32-bit values times 16-bit halves of the
constants), so nothing relies on signed overflow.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """``(x * c) mod 2**32`` for ``x`` in [0, 2**32) without leaving int64 range."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def mix32(x: Tensor) -> Tensor:
    """Bijective 32-bit integer hash (lowbias32) of an int64 tensor with values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _key(seed: int, indices: Tensor, stream: int | Tensor) -> Tensor:
    """One 32-bit key per sample, from the seed, the sample index and the stream number."""
    s = torch.as_tensor(seed & _M32, dtype=torch.int64, device=indices.device)
    s = mix32(s ^ mix32(torch.as_tensor((seed >> 32) & _M32, dtype=torch.int64, device=indices.device)))
    k = mix32((s + mix32(indices.to(torch.int64) & _M32)) & _M32)
    st = torch.as_tensor(stream, dtype=torch.int64, device=indices.device) & _M32
    return mix32(k ^ mix32((st * 0x9E37 + 0x632BE5AB) & _M32))


def _uniform(key: Tensor, counters: Tensor) -> Tensor:
    """Uniforms in (0, 1), shape ``key.shape + counters.shape``."""
    h = mix32((key[..., None] ^ counters) & _M32)
    h = mix32((h + counters) & _M32)
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)


def counter_normal(
    seed: int,
    indices: Tensor,
    shape: tuple[int, ...],
    stream: int | Tensor = 0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of shape ``(len(indices), *shape)``, a pure function of its inputs.

    Args:
        seed: the experiment's sampling seed.
        indices: global sample indices (int tensor of shape ``(B,)``); row ``b`` depends only on
            ``indices[b]``, never on the other rows.
        shape: shape of one sample's noise, e.g. ``(1, 64, 64)``.
        stream: which draw for this sample: 0 for the initial latent, ``t`` for the noise added at
            sampler step ``t``. An int or a 0-d tensor (a tensor avoids host syncs in loops).
        dtype: floating dtype of the result.

    Returns:
        Tensor on ``indices.device``.
    """
    numel = math.prod(shape)
    half = (numel + 1) // 2
    device = indices.device
    key = _key(seed, indices, stream)
    counters = mix32(torch.arange(2 * half, device=device, dtype=torch.int64))
    u = _uniform(key, counters)
    u1, u2 = u[:, :half], u[:, half:]
    r = torch.sqrt(-2.0 * torch.log(u1))
    theta = (2.0 * math.pi) * u2
    z = torch.cat([r * torch.cos(theta), r * torch.sin(theta)], dim=1)[:, :numel]
    return z.reshape(len(indices), *shape).to(dtype)


def counter_uniform(seed: int, indices: Tensor, count: int = 1, stream: int | Tensor = 0) -> Tensor:
    """Uniforms in (0, 1) of shape ``(len(indices), count)``, a pure function of the inputs.

    Row ``b`` depends only on ``(seed, indices[b], stream)``, like :func:`counter_normal`.
    """
    key = _key(seed, indices, stream)
    counters = mix32(torch.arange(count, device=indices.device, dtype=torch.int64) + 0x51ED27)
    return _uniform(key, counters)
