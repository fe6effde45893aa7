"""The DataModule of the two-models test: paired, non-overlapping subsets A and B.

Training batches are dicts ``{"a": (B, 1, H, W), "b": (B, 1, H, W)}``: model A sees only
``"a"``, model B only ``"b"``. Validation batches are ``(B, 1, H, W)`` held-out images.
"""

from __future__ import annotations

import hashlib
import math

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from galgen_lightning.data.sources import GalaxySource, SyntheticGalaxies
from galgen_lightning.data.split import SUBSETS, Split, check_disjoint, duplicate_mask, make_split
from galgen_lightning.errors import GalgenError


class TiledPairs(Dataset):
    """Item ``k`` is ``{"a": A[k mod N_a], "b": B[k mod N_b]}``, randomly flipped.

    An epoch has ``length`` items whatever N, so epochs are comparable across dataset sizes
    (the subset is tiled, as the reference does).
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, length: int, flips: bool) -> None:
        self.a, self.b, self.length, self.flips = a, b, length, flips

    def __len__(self) -> int:
        return self.length

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if self.flips:
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            if torch.rand(()) < 0.5:
                x = x.flip(-2)
        return x

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return {"a": self._augment(self.a[k % len(self.a)]), "b": self._augment(self.b[k % len(self.b)])}


def pool_with_margin(need: int, attempt: int = 0) -> int:
    """Images to read for ``need`` distinct ones: a margin for duplicates, growing per attempt."""
    return math.ceil(need * (1.25 + attempt)) + 64


class GalaxyPairDataModule(L.LightningDataModule):
    """Paired non-overlapping galaxy subsets for the two-models test.

    Loads the first images of the source (the pool), removes exact and near duplicates
    (correlation above ``dedup_threshold`` on 16x16 downsampled images), shuffles the rest with
    ``seed``, holds out the first ``n_val`` and deals the others alternately to A and B until each
    has ``n`` (:func:`~galgen_lightning.data.split.make_split`), then checks by content hash that
    the three are disjoint. The split depends only on the source, the pool and ``seed``: it is
    the same on every DDP rank and in every rerun. With ``pool_size`` set, the pool does not
    depend on ``n``: runs with the same ``pool_size`` and ``seed`` share the held-out set, and
    their A (and B) are nested (A at N = 10 is part of A at N = 100). Without it the pool grows
    with ``n`` (what one run needs, plus a margin for duplicates).

    Args:
        source: where the images come from (default: the built-in synthetic galaxies).
        image_size: side of the square images fed to the models.
        n: images per model (the N of the paper).
        n_val: held-out images (calibration of the similarity tests, validation loss).
        seed: the split's seed.
        batch_size: images per model per training step.
        samples_per_epoch: training items per epoch; the subsets are tiled to this length so an
            epoch means the same work whatever N (default: ``max(n, batch_size)``).
        flips: random horizontal and vertical flips as augmentation.
        num_workers: DataLoader worker processes.
        dedup_threshold: correlation above which two images count as near duplicates.
        val_batch_size: batch size of validation (default: ``batch_size``).
        pool_size: read exactly this many source images (the first ones), whatever ``n``, so
            that runs of different N with the same seed share the held-out set and have nested
            A and B (``galgen sweep`` sets it). Default: enough for this ``n`` alone.
    """

    def __init__(
        self,
        source: GalaxySource | None = None,
        image_size: int = 64,
        n: int = 1000,
        n_val: int = 500,
        seed: int = 0,
        batch_size: int = 64,
        samples_per_epoch: int | None = None,
        flips: bool = True,
        num_workers: int = 0,
        dedup_threshold: float = 0.95,
        val_batch_size: int | None = None,
        pool_size: int | None = None,
    ) -> None:
        super().__init__()
        self.source = source if source is not None else SyntheticGalaxies()
        for name, value, low in (("image_size", image_size, 4), ("n", n, 1), ("n_val", n_val, 1), ("batch_size", batch_size, 1)):
            if value < low:
                raise GalgenError(f"data.{name} must be at least {low}, got {value}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise GalgenError(f"data.samples_per_epoch must be positive, got {samples_per_epoch}")
        self.image_size = image_size
        self.n = n
        self.n_val = n_val
        self.seed = seed
        self.batch_size = batch_size
        self.samples_per_epoch = samples_per_epoch or max(n, batch_size)
        self.flips = flips
        self.num_workers = num_workers
        self.dedup_threshold = dedup_threshold
        self.val_batch_size = val_batch_size or batch_size
        self.pool_size = pool_size
        need = 2 * n + n_val
        available = self.source.available()
        if need > available:
            raise GalgenError(
                f"data: 2 * n + n_val = {need} images needed but the source has only {available}; lower data.n or data.n_val"
            )
        if pool_size is not None:
            if pool_size < need:
                raise GalgenError(f"data.pool_size = {pool_size} is below 2 * n + n_val = {need}; raise data.pool_size or lower data.n")
            if pool_size > available:
                raise GalgenError(f"data.pool_size = {pool_size} but the source has only {available} images; lower data.pool_size")
        self.split: Split | None = None
        self.hashes: dict[str, list[str]] = {}
        self.subsets: dict[str, torch.Tensor] = {}
        self.pixel_mean: float = 0.5

    def _pool_size(self, attempt: int) -> int:
        """How many images to load: ``pool_size``, else the need plus a margin for duplicates,
        growing per attempt."""
        if self.pool_size is not None:
            return self.pool_size
        return min(self.source.available(), pool_with_margin(2 * self.n + self.n_val, attempt))

    def prepare_data(self) -> None:
        """Render or convert the source once (rank zero); ``setup`` then reads the cache."""
        self.source.load(self._pool_size(0), self.image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        attempt = 0
        while True:
            count = self._pool_size(attempt)
            images = self.source.load(count, self.image_size)
            drop = duplicate_mask(images, self.dedup_threshold)
            if (~drop).sum() >= 2 * self.n + self.n_val or self.pool_size is not None or count >= self.source.available():
                break
            attempt += 1
        need = 2 * self.n + self.n_val
        if (~drop).sum() < need and self.pool_size is not None:
            raise GalgenError(
                f"data.source ({self._source_label()}): 2 * n + n_val = {need} images needed but only {int((~drop).sum())} "
                f"distinct remain of the data.pool_size = {len(images)} images read ({int(drop.sum())} duplicates removed); "
                "raise data.pool_size or lower data.n or data.n_val"
            )
        if (~drop).sum() < need:
            raise GalgenError(
                f"data.source ({self._source_label()}): 2 * n + n_val = {need} images needed but only {int((~drop).sum())} "
                f"usable remain ({len(images)} read, {int(drop.sum())} duplicates removed); lower data.n or data.n_val"
            )
        self.split = make_split(images, self.n, self.n_val, self.seed, drop)
        self.hashes = check_disjoint(images, self.split)
        self.subsets = {s: torch.from_numpy(np.ascontiguousarray(images[self.split.indices(s)]))[:, None] for s in SUBSETS}
        self.pixel_mean = float(torch.cat([self.subsets["a"], self.subsets["b"]]).mean())
        self._check_same_on_all_ranks()

    def _source_label(self) -> str:
        """The source's kind and where it reads from, for error messages."""
        info = self.source.describe()
        kind = info.get("source", type(self.source).__name__)
        where = info.get("directory") or info.get("path")
        return f"{kind} {where}" if where else str(kind)

    def split_digest(self) -> str:
        """SHA-1 over the content hashes of A, B and validation: one string per split."""
        joined = "|".join(",".join(self.hashes[s]) for s in SUBSETS)
        return hashlib.sha1(joined.encode()).hexdigest()

    def _check_same_on_all_ranks(self) -> None:
        """Under DDP, prove every rank holds the same split (by content)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        digests: list[str | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(digests, self.split_digest())
        if len(set(digests)) != 1:
            raise GalgenError(f"data: the ranks built different splits ({len(set(digests))} distinct); is the source deterministic?")

    def subset_images(self, subset: str) -> torch.Tensor:
        """All images of subset ``"a"``, ``"b"`` or ``"val"`` as ``(N, 1, H, W)`` float32 (CPU)."""
        if not self.subsets:
            self.setup()
        return self.subsets[subset]

    def manifest(self) -> dict:
        """Indices and content hashes of A, B and validation, with the source and split parameters.

        ``seed`` is the split's seed (``data.seed``), ``pool_size`` the option (None: the pool
        grew with ``n``), ``images_read`` the images the split was drawn from.
        """
        if self.split is None:
            self.setup()
        assert self.split is not None
        return {
            "source": self.source.describe(),
            "image_size": self.image_size,
            "n": self.n,
            "n_val": self.n_val,
            "seed": self.seed,
            "pool_size": self.pool_size,
            "images_read": self.split.n_pool,
            "dedup_threshold": self.dedup_threshold,
            "duplicates_removed": self.split.n_duplicates,
            "split_sha1": self.split_digest(),
            "subsets": {s: {"indices": self.split.indices(s).tolist(), "sha1": self.hashes[s]} for s in SUBSETS},
        }

    def train_dataloader(self) -> DataLoader:
        ds = TiledPairs(self.subsets["a"], self.subsets["b"], self.samples_per_epoch, self.flips)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=self.samples_per_epoch >= self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.subsets["val"], batch_size=self.val_batch_size, shuffle=False, num_workers=0)
