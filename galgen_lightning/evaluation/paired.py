"""The two-models test's per-sample arrays, re-indexed by noise index: what every statistic reads.

The callback stores one value per *valid* sample of each model (``own_a``, ``other_a``, ...,
with ``sample_index_a`` naming the noise index of each); :func:`paired_arrays` puts them back
on the noise indices, NaN where a sample is invalid, so that ``A_i`` and ``B_i`` line up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from galgen_lightning.models.base import MODELS


def unit_rows(x: np.ndarray, mean_removed: bool = True) -> np.ndarray:
    """Images ``(n, ...)`` as rows of unit length in float64 (:func:`galgen_lightning.metrics.unit_vectors`);
    a constant image gives zeros."""
    from galgen_lightning.metrics import unit_vectors

    return unit_vectors(torch.from_numpy(np.asarray(x, dtype=np.float64)), mean_removed, dtype=torch.float64).numpy()


def full_length(values: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    """Per-sample values given for the sample indices ``index`` as a length-``n`` array, NaN elsewhere."""
    out = np.full(n, np.nan)
    out[np.asarray(index, dtype=np.int64)] = np.asarray(values, dtype=np.float64)
    return out


@dataclass
class PairedArrays:
    """Per noise index ``i`` (rows: model A, model B), NaN where a sample is invalid.

    Attributes:
        own: ``(2, n)`` nearest similarity to the model's own subset.
        other: ``(2, n)`` nearest similarity to the other subset.
        pixel_std: ``(2, n)`` pixel standard deviation of each sample.
        heldout: held-out real galaxies' nearest-training similarities (val vs A, then val vs B).
        heldout_std: held-out real galaxies' pixel standard deviations (empty when not recorded).
        units: ``{"a": (n, d), "b": (n, d)}`` mean-removed unit rows of the samples (NaN rows
            where invalid), for the agreement statistic; empty when samples were not stored.
        top: ``(2, n, m)`` each sample's most similar training images of both subsets (its own
            subset's list, then the other's), NaN rows where invalid; None for results written
            before galgen kept them (the re-split test then falls back to the swap test).
        top_index: ``(2, n, m)`` their positions in the pool of A then B (B's images after A's).
        top_floor: ``(2, n)`` the larger of the two lists' last values: above any unlisted image.
        sizes: the sizes of subsets A and B.
        sibling: ``(2, n)`` each sample's nearest similarity to another sample of its model
            (:mod:`~galgen_lightning.evaluation.variety`); None when not recorded.
        sibling_index: ``(2, n)`` the noise index of that nearest sibling (-1: none); None when
            not recorded.
        heldout_sibling: held-out galaxies' nearest similarity to another held-out galaxy
            (empty when not recorded).
        heldout_sibling_index: the position of each one's nearest sibling (-1: none).
    """

    own: np.ndarray
    other: np.ndarray
    pixel_std: np.ndarray
    heldout: np.ndarray
    heldout_std: np.ndarray
    units: dict[str, np.ndarray] = field(default_factory=dict)
    top: np.ndarray | None = None
    top_index: np.ndarray | None = None
    top_floor: np.ndarray | None = None
    sizes: tuple[int, int] | None = None
    sibling: np.ndarray | None = None
    sibling_index: np.ndarray | None = None
    heldout_sibling: np.ndarray = field(default_factory=lambda: np.zeros(0))
    heldout_sibling_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n(self) -> int:
        return self.own.shape[1]

    @property
    def valid(self) -> np.ndarray:
        """``(2, n)`` bool: the sample is usable."""
        return np.isfinite(self.own) & np.isfinite(self.other)


def paired_arrays(arrays: dict[str, np.ndarray]) -> PairedArrays:
    """Re-index the callback's stored arrays by noise index (see :class:`PairedArrays`).

    ``arrays`` is the content of ``eval/two_models/epoch_XXXX.npz``: ``own_<m>``, ``other_<m>``,
    ``sample_index_<m>``, ``heldout`` and, when stored, ``samples_<m>``, ``ok_<m>``,
    ``heldout_pixel_std``, ``sibling_<m>``, ``sibling_index_<m>``, ``heldout_sibling`` and
    ``heldout_sibling_index`` (the siblings are read only when all of them were recorded).
    """
    n = 0
    for m in MODELS:
        idx = np.asarray(arrays.get(f"sample_index_{m}", np.arange(len(arrays.get(f"own_{m}", [])))), dtype=np.int64)
        n = max(n, int(idx.max()) + 1 if idx.size else 0)
        if f"samples_{m}" in arrays:
            n = max(n, len(arrays[f"samples_{m}"]))
    own, other, std = (np.full((2, n), np.nan) for _ in range(3))
    units: dict[str, np.ndarray] = {}
    for r, m in enumerate(MODELS):
        idx = np.asarray(arrays.get(f"sample_index_{m}", np.arange(len(arrays.get(f"own_{m}", [])))), dtype=np.int64)
        own[r] = full_length(arrays.get(f"own_{m}", []), idx, n)
        other[r] = full_length(arrays.get(f"other_{m}", []), idx, n)
        x = arrays.get(f"samples_{m}")
        if x is not None and len(x) == n:
            x = np.asarray(x, dtype=np.float64).reshape(n, -1)
            ok = np.isfinite(own[r]) & np.all(np.isfinite(x), axis=1)
            std[r] = np.where(ok, np.nan_to_num(x).std(axis=1, ddof=1), np.nan)  # as heldout_pixel_std (torch.std)
            u = unit_rows(np.nan_to_num(x))
            u[~ok] = np.nan
            units[m] = u
    top, top_index, top_floor, sizes = _top_lists(arrays, n)
    return PairedArrays(
        own=own,
        other=other,
        pixel_std=std,
        heldout=np.asarray(arrays.get("heldout", []), dtype=np.float64).ravel(),
        heldout_std=np.asarray(arrays.get("heldout_pixel_std", []), dtype=np.float64).ravel(),
        units=units if len(units) == 2 else {},
        top=top,
        top_index=top_index,
        top_floor=top_floor,
        sizes=sizes,
        **_siblings(arrays, n),
    )


def _siblings(arrays: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """:attr:`PairedArrays.sibling`, ``sibling_index``, ``heldout_sibling`` and
    ``heldout_sibling_index`` from the stored arrays; nothing (the defaults: not recorded) unless
    all of them were recorded."""
    keys = [f"{key}_{m}" for key in ("sibling", "sibling_index") for m in MODELS] + ["heldout_sibling", "heldout_sibling_index"]
    if any(key not in arrays for key in keys):
        return {}
    sibling = np.full((2, n), np.nan)
    index = np.full((2, n), -1, dtype=np.int64)
    for r, m in enumerate(MODELS):
        idx = np.asarray(arrays.get(f"sample_index_{m}", np.arange(len(arrays[f"sibling_{m}"]))), dtype=np.int64)
        sibling[r] = full_length(arrays[f"sibling_{m}"], idx, n)
        index[r, idx] = np.asarray(arrays[f"sibling_index_{m}"], dtype=np.int64)
    return {
        "sibling": sibling,
        "sibling_index": index,
        "heldout_sibling": np.asarray(arrays["heldout_sibling"], dtype=np.float64).ravel(),
        "heldout_sibling_index": np.asarray(arrays["heldout_sibling_index"], dtype=np.int64).ravel(),
    }


def _top_lists(arrays: dict[str, np.ndarray], n: int) -> tuple:
    """:attr:`PairedArrays.top`, ``top_index``, ``top_floor`` and ``sizes`` from the stored lists, or Nones."""
    keys = [f"{side}_top{part}_{m}" for side in ("own", "other") for part in ("", "_index") for m in MODELS]
    if "subset_sizes" not in arrays or any(key not in arrays for key in keys):
        return None, None, None, None
    size_a, size_b = (int(v) for v in np.asarray(arrays["subset_sizes"]).ravel()[:2])
    offset = {"a": 0, "b": size_a}  # a subset's first position in the pool
    rows, index_rows, floors = [], [], []
    for m in MODELS:
        other = "b" if m == "a" else "a"
        idx = np.asarray(arrays.get(f"sample_index_{m}", np.arange(len(arrays[f"own_top_{m}"]))), dtype=np.int64)
        sims = np.concatenate([np.asarray(arrays[f"own_top_{m}"]), np.asarray(arrays[f"other_top_{m}"])], axis=1)
        pool = np.concatenate(
            [np.asarray(arrays[f"own_top_index_{m}"]) + offset[m], np.asarray(arrays[f"other_top_index_{m}"]) + offset[other]],
            axis=1,
        )
        row = np.full((n, sims.shape[1]), np.nan)
        row[idx] = sims
        index_row = np.zeros((n, sims.shape[1]), dtype=np.int64)
        index_row[idx] = pool
        floor = np.full(n, np.nan)
        floor[idx] = np.maximum(np.asarray(arrays[f"own_top_{m}"])[:, -1], np.asarray(arrays[f"other_top_{m}"])[:, -1])
        rows.append(row)
        index_rows.append(index_row)
        floors.append(floor)
    if rows[0].shape[1] != rows[1].shape[1]:
        return None, None, None, None
    return np.stack(rows), np.stack(index_rows), np.stack(floors), (size_a, size_b)
