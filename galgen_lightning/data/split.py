"""De-duplication and the A / B / validation split, disjoint by content, with a proof.

Pure numpy/torch functions: the DataModule calls them, tests call them directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from galgen_lightning.data.dedup import duplicate_mask as duplicate_mask  # re-exported: callers import it from here
from galgen_lightning.data.sources.base import content_hash
from galgen_lightning.errors import GalgenError

SUBSETS = ("a", "b", "val")


@dataclass
class Split:
    """Indices (into the source's images) of subsets A, B and validation.

    Attributes:
        a: indices of subset A, sorted.
        b: indices of subset B, sorted.
        val: indices of the held-out set, sorted.
        n_duplicates: images of the pool dropped as duplicates.
        n_pool: images the split was drawn from (duplicates included).
    """

    a: np.ndarray
    b: np.ndarray
    val: np.ndarray
    n_duplicates: int
    n_pool: int = 0

    def indices(self, subset: str) -> np.ndarray:
        return {"a": self.a, "b": self.b, "val": self.val}[subset]


def make_split(images: np.ndarray, n: int, n_val: int, seed: int, drop: np.ndarray) -> Split:
    """Shuffle the kept images with ``seed``; the first ``n_val`` are held out, A and B alternate
    through the rest.

    With ``order`` the kept images permuted by ``seed``: ``val = order[:n_val]``,
    ``A = order[n_val::2][:n]``, ``B = order[n_val + 1::2][:n]``. For one pool (``images`` and
    ``drop``) and one seed the held-out set does not depend on ``n``, and A and B at a smaller
    ``n`` are the first images of A and B at a larger one (nested subsets).

    Raises:
        GalgenError: when fewer than ``2 n + n_val`` distinct images are left.
    """
    keep = np.flatnonzero(~drop)
    need = 2 * n + n_val
    if len(keep) < need:
        raise GalgenError(
            f"data: 2 * n + n_val = {need} images needed but only {len(keep)} distinct images are available "
            f"({int(drop.sum())} duplicates removed of {len(images)}); lower data.n or data.n_val"
        )
    order = np.random.default_rng(seed).permutation(keep)
    rest = order[n_val:]
    return Split(
        a=np.sort(rest[0::2][:n]),
        b=np.sort(rest[1::2][:n]),
        val=np.sort(order[:n_val]),
        n_duplicates=int(drop.sum()),
        n_pool=len(images),
    )


def check_disjoint(images: np.ndarray, split: Split) -> dict[str, list[str]]:
    """Prove A, B and validation share no image by content; return their content hashes.

    Raises:
        GalgenError: if any two subsets share an identical image (a bug, or a bad source).
    """
    hashes = {s: [content_hash(images[i]) for i in split.indices(s)] for s in SUBSETS}
    for i, s in enumerate(SUBSETS):
        for t in SUBSETS[i + 1 :]:
            common = set(hashes[s]) & set(hashes[t])
            if common:
                raise GalgenError(f"data: subsets {s} and {t} share {len(common)} identical images")
        if len(set(hashes[s])) != len(hashes[s]):
            raise GalgenError(f"data: subset {s} holds repeated images")
    return hashes
