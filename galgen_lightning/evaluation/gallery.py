"""Galleries of the two-models test: the most and the least memorized samples, beside their nearest
training images.

A sample's memorization score is its own-minus-other gap: its nearest cosine similarity to
its own model's training subset minus that to the other subset (mean-removed, over the 8
flips/rotations when the test matches them). Samples of A and of B are ranked together. The
``k`` highest gaps are the *most* memorized, the ``k`` lowest the *least*. Each gallery row
shows the sample, its nearest image in its own training subset and its nearest in the other
subset, each training image in the flip/rotation that matches the sample best; the caption
gives the two similarities.

Built from the nearest-neighbour indices the test already computed (no second search). The
``.npz`` keys, per ``<kind>`` in :data:`KINDS` (``k`` entries each, best first), so a report can
rebuild the captions:

* ``gallery_<kind>_idx`` int: the sample number (noise index);
* ``gallery_<kind>_model`` str: ``"a"`` or ``"b"``, the model that drew it;
* ``gallery_<kind>_own`` / ``gallery_<kind>_other`` float: nearest similarity to its own
  training subset / to the other subset;
* ``gallery_<kind>_gap`` float: own minus other;
* ``gallery_<kind>_own_index`` / ``gallery_<kind>_other_index`` int: the nearest image's
  position in the own / the other training subset.
"""

from __future__ import annotations

import numpy as np
import torch

from galgen_lightning.evaluation.base import mosaic, to_uint8
from galgen_lightning.metrics import dihedral, unit_vectors

KINDS = ("most", "least")
OTHER = {"a": "b", "b": "a"}
FIELDS = ("idx", "model", "own", "other", "gap", "own_index", "other_index")


def gallery_selection(arrays: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """The ``k`` most and ``k`` least memorized samples of A and B together (a pure function).

    Args:
        arrays: the test's arrays: ``own_<m>``, ``other_<m>``, ``own_index_<m>``,
            ``other_index_<m>`` and ``sample_index_<m>`` for ``m`` in ``a``, ``b``.
        k: samples per gallery (fewer when fewer samples are valid).

    Returns:
        ``gallery_<kind>_<field>`` arrays (see the module docstring).
    """
    if k < 1:
        raise ValueError(f"gallery k must be positive, got {k}")
    pooled: dict[str, list[np.ndarray]] = {field: [] for field in FIELDS}
    for m in ("a", "b"):
        own, other = np.asarray(arrays[f"own_{m}"], dtype=np.float64), np.asarray(arrays[f"other_{m}"], dtype=np.float64)
        pooled["idx"].append(np.asarray(arrays[f"sample_index_{m}"], dtype=np.int64))
        pooled["model"].append(np.full(len(own), m))
        pooled["own"].append(own)
        pooled["other"].append(other)
        pooled["gap"].append(own - other)
        pooled["own_index"].append(np.asarray(arrays[f"own_index_{m}"], dtype=np.int64))
        pooled["other_index"].append(np.asarray(arrays[f"other_index_{m}"], dtype=np.int64))
    table = {field: np.concatenate(parts) for field, parts in pooled.items()}
    gap = np.where(np.isfinite(table["gap"]), table["gap"], -np.inf)
    order = np.lexsort((table["idx"], table["model"], -gap))  # highest gap first; ties by model, then sample
    finite = order[np.isfinite(gap[order])]
    chosen = {"most": finite[:k], "least": finite[::-1][:k]}
    return {f"gallery_{kind}_{field}": table[field][rows] for kind, rows in chosen.items() for field in FIELDS}


def captions(selection: dict[str, np.ndarray], kind: str) -> list[str]:
    """One caption per gallery row: the sample, its two nearest training images and similarities."""
    out = []
    for i in range(len(selection[f"gallery_{kind}_idx"])):
        m = str(selection[f"gallery_{kind}_model"][i])
        o = OTHER[m]
        out.append(
            f"sample {int(selection[f'gallery_{kind}_idx'][i])} of {m.upper()}: "
            f"nearest in {m.upper()} (#{int(selection[f'gallery_{kind}_own_index'][i])}) "
            f"{selection[f'gallery_{kind}_own'][i]:.3f}, "
            f"nearest in {o.upper()} (#{int(selection[f'gallery_{kind}_other_index'][i])}) "
            f"{selection[f'gallery_{kind}_other'][i]:.3f}, "
            f"own - other {selection[f'gallery_{kind}_gap'][i]:+.3f}"
        )
    return out


def best_view(image: torch.Tensor, sample: torch.Tensor, mean_removed: bool = True) -> torch.Tensor:
    """``image`` ``(c, h, w)`` in the flip/rotation most similar to ``sample`` (the views the search matches under)."""
    views = dihedral(image[None])[:, 0]
    sims = unit_vectors(views, mean_removed) @ unit_vectors(sample[None], mean_removed)[0]
    return views[int(sims.argmax())]


def gallery_triples(samples, subsets: dict[str, torch.Tensor], selection: dict[str, np.ndarray], kind: str) -> list[torch.Tensor]:
    """Per gallery row, ``(3, c, h, w)``: the sample, its nearest own and nearest other training image.

    Args:
        samples: the :class:`~galgen_lightning.models.base.PairSamples` the test measured.
        subsets: ``{"a": A's images, "b": B's images}``.
        selection: the output of :func:`gallery_selection`.
        kind: ``"most"`` or ``"least"``.
    """
    rows = []
    for i in range(len(selection[f"gallery_{kind}_idx"])):
        m = str(selection[f"gallery_{kind}_model"][i])
        sample = samples[m][int(selection[f"gallery_{kind}_idx"][i])].float()
        own = subsets[m][int(selection[f"gallery_{kind}_own_index"][i])].float()
        other = subsets[OTHER[m]][int(selection[f"gallery_{kind}_other_index"][i])].float()
        rows.append(torch.stack([sample, best_view(own, sample), best_view(other, sample)]))
    return rows


def strip(triple: torch.Tensor, min_height: int = 128) -> np.ndarray:
    """One uint8 picture of a gallery row: sample | nearest own | nearest other, its pixels
    repeated (nearest-neighbour) until it is at least ``min_height`` pixels tall."""
    picture = mosaic([triple[:, :1]])
    factor = max(1, -(-min_height // picture.shape[0]))
    return np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)


def gallery_figure(triples: list[torch.Tensor], selection: dict[str, np.ndarray], kind: str):
    """The gallery as a figure: one row per sample, columns sample / nearest own / nearest other.

    Args:
        triples: from :func:`gallery_triples`.
        selection: from :func:`gallery_selection` (for the labels).
        kind: ``"most"`` or ``"least"``.

    Returns:
        A matplotlib figure (the caller saves and closes it).
    """
    from galgen_lightning.plotting import pyplot

    plt = pyplot()

    rows = max(1, len(triples))
    fig, axes = plt.subplots(rows, 3, figsize=(6.6, 2.1 * rows), squeeze=False)
    heads = ("generated sample", "nearest image, own training subset", "nearest image, other training subset")
    for i, ax_row in enumerate(axes):
        if i >= len(triples):
            for ax in ax_row:
                ax.axis("off")
            ax_row[1].text(0.5, 0.5, "no valid sample", ha="center", va="center", transform=ax_row[1].transAxes)
            continue
        m = str(selection[f"gallery_{kind}_model"][i])
        o = OTHER[m]
        labels = (
            (
                f"own - other {selection[f'gallery_{kind}_gap'][i]:+.3f}",
                f"sample {int(selection[f'gallery_{kind}_idx'][i])} of {m.upper()}",
            ),
            (
                f"cosine similarity {selection[f'gallery_{kind}_own'][i]:.3f}",
                f"{m.upper()} image #{int(selection[f'gallery_{kind}_own_index'][i])}",
            ),
            (
                f"cosine similarity {selection[f'gallery_{kind}_other'][i]:.3f}",
                f"{o.upper()} image #{int(selection[f'gallery_{kind}_other_index'][i])}",
            ),
        )
        for j, ax in enumerate(ax_row):
            ax.imshow(to_uint8(triples[i][j, 0], low=0.0, high=1.0), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(labels[j][0], fontsize=8)
            ax.set_ylabel(labels[j][1], fontsize=8)
            if i == 0:
                ax.set_title(heads[j], fontsize=8)
    which = "most" if kind == "most" else "least"
    fig.suptitle(f"{which} memorized samples (by own-minus-other nearest cosine similarity, mean removed)", fontsize=9)
    fig.tight_layout()
    return fig
