"""Pure tensor functions behind the two-models tests: similarities, nearest neighbours, PSNR.

Nothing here knows about Lightning; every function takes and returns tensors or plain numbers,
so a notebook can use them on any pair of image sets.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def unit_vectors(x: Tensor, mean_removed: bool = True, eps: float = 1e-12, dtype: torch.dtype = torch.float32) -> Tensor:
    """Flatten images ``(n, ...)`` to rows of unit length, in ``dtype`` (float32: the GPU search;
    the statistics use float64).

    Args:
        x: images, any shape with the batch first.
        mean_removed: subtract each image's own mean first (the cosine of centred images, i.e.
            Pearson's correlation). Centred galaxies all share a bright middle, so the plain
            cosine is high for any two of them; the mean-removed one is the default.
        eps: floor on the norm, so a constant image gives a zero vector instead of NaN.
    """
    v = x.flatten(1).to(dtype)
    if mean_removed:
        v = v - v.mean(dim=1, keepdim=True)
    return v / v.norm(dim=1, keepdim=True).clamp_min(eps)


def paired_cosine(a: Tensor, b: Tensor, mean_removed: bool = True) -> Tensor:
    """Cosine similarity of ``a[i]`` with ``b[i]`` for every i (A and B from the same noise)."""
    if a.shape != b.shape:
        raise ValueError(f"paired_cosine needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (unit_vectors(a, mean_removed) * unit_vectors(b, mean_removed)).sum(dim=1)


DIHEDRAL_NAMES = ("identity", "rot90", "rot180", "rot270", "flip_lr", "antitranspose", "flip_ud", "transpose")
"""The 8 flips and right-angle rotations, in the order of :func:`dihedral`: view ``k`` turns the
image by ``k % 4`` quarter turns counter-clockwise (``np.rot90``), then flips it left-right when
``k >= 4``. A non-square image has the four that keep its shape: views 0, 2, 4 and 6."""


def dihedral(x: Tensor) -> Tensor:
    """The flips and right-angle rotations of images ``(..., h, w)``, stacked first.

    The one definition of these transforms in galgen (the nearest-neighbour search, the
    galleries, the near-duplicate search and the reference families use it).

    Returns:
        ``(8, ..., h, w)`` in :data:`DIHEDRAL_NAMES` order for square images; for others the
        four views that keep the shape, ``(4, ..., h, w)`` (identity, rot180, flip_lr, flip_ud).
    """
    turns = range(4) if x.shape[-1] == x.shape[-2] else (0, 2)
    rots = [torch.rot90(x, k, dims=(-2, -1)) for k in turns]
    return torch.stack(rots + [r.flip(-1) for r in rots])


def nearest_similarity(
    queries: Tensor,
    reference: Tensor,
    mean_removed: bool = True,
    transforms: bool = False,
    chunk_size: int = 8192,
    exclude_self: bool = False,
) -> tuple[Tensor, Tensor]:
    """For each query, its highest cosine similarity to any reference image, and which one.

    Args:
        queries: ``(q, c, h, w)`` images (e.g. samples).
        reference: ``(n, c, h, w)`` images (e.g. a training subset).
        mean_removed: see :func:`unit_vectors`.
        transforms: also match each reference image under its 8 flips/rotations (a model trained
            with flip augmentation may reproduce a training image flipped).
        chunk_size: reference rows per matrix product, bounding memory to ``q * chunk_size``.
        exclude_self: ignore exact index matches (queries and reference being the same set).

    Returns:
        ``(similarity, index)``, both of shape ``(q,)``, on the queries' device; ``index`` is the
        position of the best match in ``reference``.
    """
    q = unit_vectors(queries, mean_removed)
    views = dihedral(reference) if transforms else reference[None]
    best = torch.full((len(q),), -math.inf, device=q.device)
    arg = torch.zeros(len(q), dtype=torch.long, device=q.device)
    for view in views:
        for start in range(0, len(view), chunk_size):
            r = unit_vectors(view[start : start + chunk_size].to(q.device), mean_removed)
            sims = q @ r.T
            if exclude_self:
                rows = torch.arange(len(q), device=q.device)
                cols = rows - start
                ok = (cols >= 0) & (cols < len(r))
                sims[rows[ok], cols[ok]] = -math.inf
            value, index = sims.max(dim=1)
            better = value > best
            best = torch.where(better, value, best)
            arg = torch.where(better, index + start, arg)
    return best, arg


def top_similarities(
    queries: Tensor,
    reference: Tensor,
    k: int,
    mean_removed: bool = True,
    transforms: bool = False,
    chunk_size: int = 8192,
) -> tuple[Tensor, Tensor]:
    """For each query, its ``k`` most similar reference images (each image once, at its best
    flip/rotation with ``transforms``), in decreasing order: the first is :func:`nearest_similarity`'s.

    Args:
        queries: ``(q, c, h, w)`` images (e.g. samples).
        reference: ``(n, c, h, w)`` images (e.g. a training subset).
        k: how many (fewer when ``reference`` has fewer images).
        mean_removed: see :func:`unit_vectors`.
        transforms: also match each reference image under its 8 flips/rotations.
        chunk_size: reference rows per matrix product, bounding memory to ``q * chunk_size``.

    Returns:
        ``(similarity, index)``, both ``(q, min(k, n))``, on the queries' device.
    """
    q = unit_vectors(queries, mean_removed)
    k = min(int(k), len(reference))
    best = torch.full((len(q), 0), -math.inf, device=q.device)
    arg = torch.zeros((len(q), 0), dtype=torch.long, device=q.device)
    for start in range(0, len(reference), chunk_size):
        block = reference[start : start + chunk_size]
        views = dihedral(block) if transforms else block[None]
        sims = q @ unit_vectors(views[0].to(q.device), mean_removed).T
        for view in views[1:]:  # each image at its best flip/rotation (a running max: memory of two views)
            torch.maximum(sims, q @ unit_vectors(view.to(q.device), mean_removed).T, out=sims)
        index = torch.arange(start, start + len(block), device=q.device).expand(len(q), -1)
        best, pos = torch.cat([best, sims], dim=1).topk(min(k, best.shape[1] + sims.shape[1]), dim=1)
        arg = torch.cat([arg, index], dim=1).gather(1, pos)
    return best, arg


def summarize(values: Tensor | np.ndarray, line: float = 0.95) -> dict[str, float]:
    """Median, mean, and share above ``line`` of a similarity distribution (NaN when empty).

    The share's key is ``above_0p95`` for ``line`` 0.95: metric keys carry no dots (W&B reads a
    dot as nesting)."""
    v = np.asarray(values, dtype=np.float64)
    above = f"above_{line:g}".replace(".", "p")
    if v.size == 0:
        return {"median": math.nan, "mean": math.nan, above: math.nan}
    return {"median": float(np.median(v)), "mean": float(np.mean(v)), above: float(np.mean(v > line))}


def psnr(x: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB of each image in ``x`` against ``target`` (per row), by torchmetrics."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    dims = tuple(range(1, x.dim()))
    return peak_signal_noise_ratio(x.float(), target.float(), data_range=data_range, reduction="none", dim=dims)
