"""Near-duplicate detection: exact, noisy, shifted and flipped/rotated copies of earlier images.

:func:`duplicate_mask` works in two stages:

1. **Candidate search** (cheap, on descriptors). Each image gets a descriptor that does not
   change under the 8 flips/right-angle rotations and hardly changes under small shifts and a
   little noise (:func:`spectrum_descriptors`: the log magnitude of the 2-D Fourier transform of
   the Hann-windowed image, symmetrized over the flips). For every image the ``candidates``
   earlier images with the most correlated descriptors are kept.
2. **Exact check** (full resolution, :func:`pair_scores`). Each image is compared with its
   candidates under its 8 flips/rotations and every shift of at most ``max_shift`` pixels per
   axis: the Pearson correlation of the pixels where the two images overlap. All shifts of one
   flip come from one product of Fourier transforms.

Only earlier images are ever compared with an image, so the mask of a prefix of a set does not
depend on the images after it.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from galgen_lightning.data.sources.base import content_hash
from galgen_lightning.errors import require
from galgen_lightning.metrics import dihedral


def dihedral_views(x: torch.Tensor) -> torch.Tensor:
    """The flips/right-angle rotations of ``(n, h, w)`` images, as ``(n, 8, h, w)``.

    The views of :func:`galgen_lightning.metrics.dihedral`, in its order
    (:data:`~galgen_lightning.metrics.DIHEDRAL_NAMES`); non-square images have four,
    ``(n, 4, h, w)``. Made by one gather of precomputed pixel indices (much faster than torch's
    flips of transposed tensors).
    """
    h, w = x.shape[-2:]
    index = _dihedral_index(h, w)
    return x.reshape(-1, h * w)[:, index.flatten()].reshape(-1, len(index), h, w)


@functools.lru_cache(maxsize=8)
def _dihedral_index(h: int, w: int) -> torch.Tensor:
    """``(v, h * w)`` pixel indices: view ``t`` of a flattened image is ``image[index[t]]`` (the
    views of :func:`~galgen_lightning.metrics.dihedral` applied to the pixel numbers)."""
    return dihedral(torch.arange(h * w).reshape(h, w)).reshape(-1, h * w)


def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with zero rows appended up to ``rows``. Every block of work has a fixed shape, so
    the numbers computed for an image (to the last bit) do not depend on how many images
    follow it: the prefix property holds exactly, not only up to rounding."""
    if len(x) >= rows:
        return x
    return torch.cat([x, x.new_zeros((rows - len(x), *x.shape[1:]))])


def _hann(size: int) -> torch.Tensor:
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    return torch.sin(math.pi * t) ** 2


def spectrum_descriptors(images: torch.Tensor, spectrum_size: int = 16, noise_floor: float = 0.03) -> torch.Tensor:
    """Descriptors of ``(n, h, w)`` images for the candidate search, as unit rows.

    Each image, minus its mean, is multiplied by a 2-D Hann window (so that what a small shift
    brings in or pushes out at the edges hardly counts); its Fourier magnitudes, plus a floor
    (the expected magnitude of white noise with a standard deviation of ``noise_floor`` times
    the image's pixel range, so that noise of that level changes the descriptor little), are
    taken in log, averaged over the flips and transposition of the frequency grid (which is what
    the 8 flips/rotations of the image do to it) and cut to frequencies ``0 .. spectrum_size``
    cycles per image along each axis. The result is mean-removed and scaled to unit length: the
    dot product of two descriptors is their correlation, 1 for an image and its flipped or
    rotated copy.
    """
    n, h, w = images.shape
    window = _hann(h)[:, None] * _hann(w)[None, :]
    x = (images - images.mean(dim=(1, 2), keepdim=True)) * window
    span = (images.amax(dim=(1, 2)) - images.amin(dim=(1, 2))).clamp_min(1e-12)
    floor = noise_floor * span * float(window.square().sum().sqrt())
    kh, kw = min(spectrum_size, h // 2), min(spectrum_size, w // 2)
    # frequencies -k .. k along each axis (FFT order), so that -f sits at 2 k - i for f at i
    rows = torch.arange(-kh, kh + 1) % h
    cols = torch.arange(-kw, kw + 1) % w
    spectrum = torch.fft.fft2(x)[:, rows][:, :, cols].abs()
    log_m = torch.log(spectrum + floor[:, None, None])  # (n, 2 kh + 1, 2 kw + 1)
    sym = log_m + log_m.flip(1)  # f_y -> -f_y
    sym = (sym + sym.flip(2))[:, kh:, kw:]  # f_x -> -f_x; keep f >= 0
    if h == w:
        sym = sym + sym.transpose(1, 2)
        d = sym[:, torch.triu(torch.ones(kh + 1, kw + 1, dtype=torch.bool))]
    else:
        d = sym.reshape(n, -1)
    d = d - d.mean(dim=1, keepdim=True)
    return d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)


def earlier_candidates(desc: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """For each row ``j`` of ``desc``, the ``k`` earlier rows (``i < j``) with the highest dot
    product, best first; ``-1`` where fewer than ``k`` earlier rows exist. ``(n, k)`` long."""
    n = len(desc)
    out = torch.full((n, k), -1, dtype=torch.long)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        if stop <= 1:
            continue
        sims = _padded(desc[start:stop], chunk) @ _padded(desc[:stop], start + chunk).T
        later = torch.arange(start + chunk)[None, :] >= torch.arange(start, start + chunk)[:, None]
        sims.masked_fill_(later, -math.inf)
        kk = min(k, stop - 1)
        value, index = sims[: stop - start].topk(kk, dim=1)
        index[value == -math.inf] = -1
        out[start:stop, :kk] = index
    return out


def _fft_size(n: int) -> int:
    """The smallest ``m >= n`` whose prime factors are 2, 3 and 5 (fast FFTs)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _window_sums(x: torch.Tensor, shift: int, sign: int) -> torch.Tensor:
    """Sums of ``(..., h, w)`` images over the overlap of each shift ``d`` (``|d| <= shift`` per
    axis): the pixels ``p`` with ``0 <= p + sign * d < size``. ``(..., 2 shift + 1, 2 shift + 1)``."""
    h, w = x.shape[-2:]
    d = torch.arange(-shift, shift + 1) * sign
    rows = ((torch.arange(h)[None, :] + d[:, None] >= 0) & (torch.arange(h)[None, :] + d[:, None] < h)).to(x.dtype)
    cols = ((torch.arange(w)[None, :] + d[:, None] >= 0) & (torch.arange(w)[None, :] + d[:, None] < w)).to(x.dtype)
    return rows @ x @ cols.T


class _PairScorer:
    """What :func:`pair_scores` needs once per set: Fourier bases, means and overlap sums."""

    def __init__(self, images: torch.Tensor, max_shift: int) -> None:
        n, h, w = images.shape
        s = int(max_shift)
        self.images, self.shift = images, s
        self.ny, self.nx = _fft_size(h + s), _fft_size(w + s)
        d = torch.arange(-s, s + 1, dtype=torch.float64)
        self.e_y = torch.exp(2j * math.pi * d[:, None] * torch.arange(self.ny)[None, :] / self.ny).to(torch.complex64)
        kx = torch.arange(self.nx // 2 + 1)
        weight = torch.full((len(kx),), 2.0, dtype=torch.float64)  # a half spectrum: count +kx and -kx
        weight[0] = 1.0
        if self.nx % 2 == 0:
            weight[-1] = 1.0
        e_x = weight[:, None] * torch.exp(2j * math.pi * kx[:, None] * d[None, :] / self.nx) / (self.ny * self.nx)
        self.e_x = e_x.to(torch.complex64)
        self.count = _window_sums(torch.ones(1, h, w), s, 1)[0]  # (2s+1, 2s+1): pixels in each overlap
        self.mean = torch.empty(n)
        self.sum_c = torch.empty(n, 2 * s + 1, 2 * s + 1)  # an image's pixels in each overlap, mean removed
        self.sum_cc = torch.empty_like(self.sum_c)
        for start in range(0, n, 1024):
            stop = min(n, start + 1024)
            z = _padded(images[start:stop], 1024)
            mean = z.mean(dim=(1, 2))
            self.mean[start:stop] = mean[: stop - start]
            z = z - mean[:, None, None]
            self.sum_c[start:stop] = _window_sums(z, s, 1)[: stop - start]
            self.sum_cc[start:stop] = _window_sums(z * z, s, 1)[: stop - start]

    def __call__(self, qi: torch.Tensor, ci: torch.Tensor) -> torch.Tensor:
        """Scores of queries ``qi`` ``(b,)`` against candidates ``ci`` ``(b, k)``, ``-1`` for none."""
        s, images, mean = self.shift, self.images, self.mean
        valid = ci >= 0
        ci = ci.clamp_min(0)
        views = dihedral_views(images[qi] - mean[qi, None, None])  # (b, v, h, w)
        cand = images[ci] - mean[ci, None, None]  # (b, k, h, w)
        fv = torch.fft.rfft2(views, s=(self.ny, self.nx))  # (b, v, ny, nx // 2 + 1)
        fc = torch.fft.rfft2(cand, s=(self.ny, self.nx)).conj()  # (b, k, ny, nx // 2 + 1)
        cross = fv[:, :, None] * fc[:, None, :]  # (b, v, k, ny, nx // 2 + 1)
        sum_ab = ((self.e_y @ cross) @ self.e_x).real  # (b, v, k, 2s+1, 2s+1): sum_p T(q)[p + d] c[p]
        sum_a = _window_sums(views, s, -1)[:, :, None]  # the query's pixels p + d inside the frame
        sum_aa = _window_sums(views * views, s, -1)[:, :, None]
        sum_b, sum_bb = self.sum_c[ci][:, None], self.sum_cc[ci][:, None]
        cov = sum_ab - sum_a * sum_b / self.count
        var = (sum_aa - sum_a * sum_a / self.count).clamp_min(0) * (sum_bb - sum_b * sum_b / self.count).clamp_min(0)
        best = (cov / var.sqrt().clamp_min(1e-20)).amax(dim=(1, 3, 4))  # (b, k)
        return best.masked_fill(~valid, -math.inf)


def pair_scores(
    images: torch.Tensor,
    queries: torch.Tensor,
    candidates: torch.Tensor,
    max_shift: int = 3,
    batch: int = 64,
    workers: int | None = None,
) -> torch.Tensor:
    """The best overlap correlation of each query image with each of its candidate images.

    For query ``q``, candidate ``c``, each flip/rotation ``T`` and each shift ``d`` (at most
    ``max_shift`` pixels per axis), the Pearson correlation of ``T(q)[p + d]`` and ``c[p]`` over
    the pixels ``p`` where both are defined; the score is the highest of these. The sums
    ``sum_p T(q)[p + d] c[p]`` for all shifts come from one product of the Fourier transforms
    of the zero-padded images (padded by at least ``max_shift``, so nothing wraps around),
    transformed back at the shifts only.

    Batches run in ``workers`` threads with one torch thread each (many small operations: on
    a busy machine, torch's own threads wait for each other at every one of them); torch's
    thread count is restored afterwards.

    Args:
        images: ``(n, h, w)`` float images.
        queries: ``(q,)`` indices into ``images``.
        candidates: ``(q, k)`` indices into ``images`` to compare each query with (``-1``: none).
        max_shift: largest shift per axis, in pixels.
        batch: queries per step (memory per worker: about ``5 * batch * k * h * w`` complex
            numbers).
        workers: threads (default: torch's thread count).

    Returns:
        ``(q, k)`` float32 scores; ``-inf`` for ``-1`` candidates.
    """
    scorer = _PairScorer(images, max_shift)
    q = len(queries)
    queries = _padded(queries, -(-q // batch) * batch)  # pads with image 0 ...
    candidates = torch.cat([candidates, candidates.new_full((len(queries) - q, candidates.shape[1]), -1)])  # ... and no candidate
    threads = torch.get_num_threads()
    workers = threads if workers is None else max(1, int(workers))
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            starts = range(0, len(queries), batch)
            parts = list(pool.map(lambda i: scorer(queries[i : i + batch], candidates[i : i + batch]), starts))
    finally:
        torch.set_num_threads(threads)
    return torch.cat(parts)[:q] if parts else torch.empty(0, candidates.shape[1])


@dataclass(frozen=True)
class Search:
    """What :func:`nearest_earlier` looks for, for an image's nearest earlier image: the results
    depend on these (the block sizes of :func:`nearest_earlier` bound memory: the scores do not
    depend on them).

    Attributes:
        max_shift: largest shift searched, in pixels per axis; capped at an eighth of the
            shorter side, so that the overlap keeps at least 7/8 of each axis.
        candidates: earlier images scored per image.
        spectrum_size: highest spatial frequency (cycles per image) in the descriptor.
        noise_floor: noise level, as a fraction of each image's pixel range, below which the
            descriptor does not tell Fourier magnitudes apart.
    """

    max_shift: int = 3
    candidates: int = 4
    spectrum_size: int = 16
    noise_floor: float = 0.03

    def __post_init__(self) -> None:
        require(self.max_shift >= 0, "Search.max_shift", "non-negative", self.max_shift)
        require(self.candidates >= 1, "Search.candidates", "at least 1", self.candidates)
        require(self.spectrum_size >= 1, "Search.spectrum_size", "at least 1", self.spectrum_size)
        require(0 <= self.noise_floor < math.inf, "Search.noise_floor", "non-negative", self.noise_floor)


def nearest_earlier(
    images: np.ndarray, search: Search = Search(), chunk: int = 1024, batch: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """For each image, its best score against the earlier images searched, and which one.

    See :func:`duplicate_mask` for the score and the search.

    Args:
        images: ``(n, h, w)`` float images.
        search: what is searched (:class:`Search`).
        chunk: rows per block of the candidate search (memory: about ``chunk * n`` floats).
        batch: images per block of the exact check. Neither block size changes the scores (of
            equally scoring earlier images, another may be named).

    Returns:
        ``(score, index)``: float32 ``(n,)`` (``-inf`` for the first image) and int64 ``(n,)``
        (``-1`` where no earlier image was compared).
    """
    require(chunk >= 1, "nearest_earlier: chunk", "at least 1", chunk)
    require(batch >= 1, "nearest_earlier: batch", "at least 1", batch)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if x.ndim != 3:
        raise ValueError(f"images must be (n, h, w), got shape {tuple(x.shape)}")
    n, h, w = x.shape
    shift = min(int(search.max_shift), min(h, w) // 8)
    with torch.no_grad():
        pieces = (_padded(x[i : i + chunk], chunk) for i in range(0, n, chunk))  # the last one padded ...
        desc = torch.cat([spectrum_descriptors(p, search.spectrum_size, search.noise_floor) for p in pieces])[:n]  # ... cut
        cand = earlier_candidates(desc, int(search.candidates), chunk)
        scores = pair_scores(x, torch.arange(n), cand, shift, batch)
    best, arg = scores.max(dim=1)
    index = cand.gather(1, arg[:, None])[:, 0]
    index[best == -math.inf] = -1
    return best.numpy(), index.numpy()


def duplicate_mask(images: np.ndarray, threshold: float = 0.95, search: Search = Search()) -> np.ndarray:
    """Mark images that repeat an earlier one: exactly, with a little noise, shifted or flipped.

    Image ``j`` is a duplicate when its pixels equal an earlier image's (SHA-1 of the float32
    pixels), or when its **score** against an earlier image ``i`` exceeds ``threshold``. The
    score is the highest Pearson correlation (mean-removed cosine similarity) of the pixels of
    ``T(j)`` shifted by ``d`` and of ``i``, at full resolution, over the 8 flips/right-angle
    rotations ``T`` and every shift ``d`` of at most ``max_shift`` pixels per axis, computed on
    the pixels where the shifted image and image ``i`` overlap. So ``threshold`` is a
    correlation: the score is 1 for an exact, flipped, rotated or shifted copy (shifted with
    ``np.roll``, or cut from the same scene at a position ``d`` away: both match on the
    overlap), and about ``1 / sqrt(1 + sigma**2 / var)`` for a copy with added noise of standard
    deviation ``sigma`` on an image of pixel variance ``var``; independent noise keeps distinct
    images of similar objects below it.

    Not every earlier image is scored: for each image, the ``candidates`` earlier ones whose
    descriptors (:func:`spectrum_descriptors`, unchanged by flips and rotations, nearly
    unchanged by small shifts and noise) correlate best with its own. A copy's descriptor is
    nearly its original's, so the original is among them; ``docs/data.md`` gives measured
    detection rates.

    Earlier images are always kept, and every earlier image counts (dropped or not), so the
    result for a prefix of ``images`` does not depend on the images after it.

    Args:
        images: ``(n, h, w)`` float images.
        threshold: the score (a correlation) above which an image is a duplicate.
        search: the search's settings (:class:`Search`).

    Returns:
        bool array of shape ``(n,)``, True for images to drop.
    """
    n = len(images)
    drop = np.zeros(n, dtype=bool)
    seen: set[str] = set()
    for i in range(n):
        digest = content_hash(images[i])
        drop[i] = digest in seen
        seen.add(digest)
    if n > 1:
        score, _ = nearest_earlier(images, search)
        drop |= score > threshold
    return drop
