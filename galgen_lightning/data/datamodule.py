"""The DataModule of the two-models test: paired, non-overlapping subsets A and B.

Training batches are dicts ``{"a": (B, 1, H, W), "b": (B, 1, H, W)}``: model A sees only
``"a"``, model B only ``"b"``. Validation batches are ``(B, 1, H, W)`` held-out images.
"""

from __future__ import annotations

import hashlib
import math
import os

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from galgen_lightning.data.sources.base import GalaxySource
from galgen_lightning.data.sources.synthetic import SyntheticGalaxies
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


def epoch_seed(seed: int, epoch: int) -> int:
    """One 63-bit seed per (seed, epoch): the epoch's batch order and flips."""
    return int(np.random.SeedSequence([int(seed) % 2**63, int(epoch)]).generate_state(1, np.uint64)[0]) % 2**63


def flip_batch(x: torch.Tensor, flip_w: torch.Tensor, flip_h: torch.Tensor) -> torch.Tensor:
    """Flip image ``i`` of ``x`` left-right where ``flip_w[i]`` and upside down where ``flip_h[i]``
    (boolean ``(B,)`` masks), in a few whole-batch operations."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    x = torch.where(flip_w.view(shape), x.flip(-1), x)
    return torch.where(flip_h.view(shape), x.flip(-2), x)


def _rank_share(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's share of ``order`` as a ``DistributedSampler`` deals it: padded by wrapping to
    a multiple of ``world``, then every ``world``-th entry from ``rank``."""
    if world <= 1:
        return order
    total = math.ceil(len(order) / world) * world
    if total > len(order):
        order = torch.cat([order, order[: total - len(order)].clone()])
    return order[rank:total:world]


class DeviceTiledPairs:
    """Training batches of :class:`TiledPairs`, drawn on the device: no per-item Python, no workers.

    A and B live on ``device`` (copied once). Each epoch draws, from ``(seed, epoch)`` alone, a
    permutation of the ``length`` tiled positions and two flip bits per position and subset;
    batch ``j`` is positions ``j * batch_size ...`` of this rank's share (under DDP the ranks
    deal the permutation like ``DistributedSampler``: disjoint shares of equal size), position
    ``k`` gives ``A[k mod N_a]`` and ``B[k mod N_b]``, and the flips are applied by whole-batch
    ``torch.where``. The order and flips are generated on the CPU once per epoch (a few ms for
    250,000 positions), so the same seed gives the same batches on every device.

    Under a Trainer the epoch is the trainer's ``current_epoch`` (a resumed run draws the epochs
    it has not trained yet exactly as an uninterrupted run would); without one, the number of
    epochs iterated so far. ``state_dict``/``load_state_dict`` let Lightning resume mid-epoch at
    the next batch.
    """

    def __init__(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        length: int,
        batch_size: int,
        flips: bool,
        seed: int,
        trainer=None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool | None = None,
    ) -> None:
        if a.device != b.device:
            raise ValueError("DeviceTiledPairs: A and B must be on the same device")
        self.a, self.b = a, b
        self.length, self.batch_size, self.flips, self.seed = int(length), int(batch_size), bool(flips), int(seed)
        self.trainer = trainer
        self.rank, self.world_size = int(rank), max(int(world_size), 1)
        self.share = math.ceil(self.length / self.world_size)
        self.drop_last = self.share >= self.batch_size if drop_last is None else bool(drop_last)
        self._iterated = 0
        self._epoch: int | None = None
        self._yielded = 0
        self._resume: dict | None = None

    @property
    def device(self) -> torch.device:
        return self.a.device

    def __len__(self) -> int:
        return self.share // self.batch_size if self.drop_last else math.ceil(self.share / self.batch_size)

    def _current_epoch(self) -> int:
        if self.trainer is not None:
            return int(self.trainer.current_epoch)
        return self._iterated

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positions, flips)`` of this rank for ``epoch``: ``(share,)`` tiled positions and a
        ``(share, 4)`` boolean array (A left-right, A upside down, B left-right, B upside down),
        both on the device."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(self.length, generator=g)
        bits = torch.rand(self.length, 4, generator=g) < 0.5
        pick = _rank_share(torch.arange(self.length), self.rank, self.world_size)
        return order[pick].to(self.device), bits[pick].to(self.device)

    def __iter__(self):
        return self._batches()

    def _batches(self):
        # a generator: the epoch is read at the first batch, after Lightning has set it
        epoch = self._current_epoch()
        self._iterated += 1
        positions, bits = self.epoch_plan(epoch)
        index_a, index_b = positions % len(self.a), positions % len(self.b)
        start = 0
        resume, self._resume = self._resume, None
        if resume is not None and int(resume.get("epoch", -1)) == epoch and 0 < int(resume.get("batches", 0)) < len(self):
            start = int(resume["batches"])
        self._epoch, self._yielded = epoch, start
        for j in range(start, len(self)):
            window = slice(j * self.batch_size, (j + 1) * self.batch_size)
            a = torch.index_select(self.a, 0, index_a[window])  # index_select: one kernel, 10x [] on CPUs
            b = torch.index_select(self.b, 0, index_b[window])
            if self.flips:
                f = bits[window]
                a, b = flip_batch(a, f[:, 0], f[:, 1]), flip_batch(b, f[:, 2], f[:, 3])
            self._yielded = j + 1
            yield {"a": a, "b": b}

    def state_dict(self) -> dict:
        """Where the epoch in progress stands: its number and the batches trained (under a
        Trainer its count of processed batches, since Lightning fetches ahead)."""
        done = self._yielded
        if self.trainer is not None:
            try:
                done = int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)
            except AttributeError:
                pass
        return {"seed": self.seed, "epoch": self._epoch, "batches": done}

    def load_state_dict(self, state: dict) -> None:
        """Resume the saved epoch at its next batch (ignored for another seed or epoch)."""
        if state.get("seed") == self.seed and state.get("epoch") is not None:
            self._resume = dict(state)


class DeviceBatches:
    """Validation batches of a device-resident tensor, in order; under DDP this rank's share as
    ``DistributedSampler(shuffle=False)`` deals it. ``batch_sampler`` lists the images' indices
    per batch (what :class:`~galgen_lightning.models.base.ValidationIndex` reads)."""

    def __init__(self, images: torch.Tensor, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.images = images
        mine = _rank_share(torch.arange(len(images)), rank, world_size)
        self._index = mine.to(images.device) if world_size > 1 else None
        self.batch_sampler = [mine[i : i + batch_size].tolist() for i in range(0, len(mine), batch_size)]

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        start = 0
        for idx in self.batch_sampler:
            if self._index is None:
                yield self.images[idx[0] : idx[-1] + 1]
            else:
                yield torch.index_select(self.images, 0, self._index[start : start + len(idx)])
            start += len(idx)


LOADERS = ("device", "dataset")


def pool_with_margin(need: int, attempt: int = 0) -> int:
    """Images to read for ``need`` distinct ones: a margin for duplicates, growing per attempt."""
    return math.ceil(need * (1.25 + attempt)) + 64


def epoch_length(n: int, batch_size: int, samples_per_epoch: int | None = None) -> int:
    """Training items per epoch: ``samples_per_epoch``, by default ``max(n, batch_size)`` (each
    image of a subset once, and at least one full batch)."""
    return samples_per_epoch or max(n, batch_size)


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
        loader: ``"device"``: A, B and validation are copied once to the training device and
            each batch is gathered there by index, flips applied to the whole batch (no per-item
            Python, no worker processes; ``num_workers`` is unused); ``"dataset"``: a
            ``DataLoader`` over :class:`TiledPairs` (items built in Python, ``num_workers``
            processes). Same batches in distribution; not the same order.
        shuffle_seed: seed of the device loader's batch order and flips, with the epoch
            (default: the run's ``seed_everything``, else ``seed``).
    """

    channels: int = 1
    """Channels per image: every source gives one band (a model's ``channels`` must match)."""

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
        loader: str = "device",
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        if loader not in LOADERS:
            raise GalgenError(f"data.loader must be one of {', '.join(LOADERS)}, got {loader!r}")
        self.source = source if source is not None else SyntheticGalaxies()
        for name, value, low in (("image_size", image_size, 4), ("n", n, 1), ("n_val", n_val, 1), ("batch_size", batch_size, 1)):
            if value < low:
                raise GalgenError(f"data.{name} must be at least {low}, got {value}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise GalgenError(f"data.samples_per_epoch must be positive, got {samples_per_epoch}")
        for name, value in (("seed", seed), ("shuffle_seed", shuffle_seed), ("num_workers", num_workers)):
            if value is not None and value < 0:
                raise GalgenError(f"data.{name} must not be negative, got {value}")
        self.image_size = image_size
        self.n = n
        self.n_val = n_val
        self.seed = seed
        self.batch_size = batch_size
        self.samples_per_epoch = epoch_length(n, batch_size, samples_per_epoch)
        self.flips = flips
        self.num_workers = num_workers
        self.dedup_threshold = dedup_threshold
        self.val_batch_size = val_batch_size or batch_size
        self.pool_size = pool_size
        self.loader = loader
        self.shuffle_seed = shuffle_seed
        self._on_device: dict[tuple[str, str], torch.Tensor] = {}
        need = 2 * n + n_val
        available = self.source.available()
        if need > available:
            raise GalgenError(
                f"data: 2 * n + n_val = {need} images needed but the source has only {available}; lower data.n or data.n_val"
            )
        if pool_size is not None:
            if pool_size < need:
                raise GalgenError(
                    f"data.pool_size = {pool_size} is below 2 * n + n_val = {need}; raise data.pool_size or lower data.n"
                )
            if pool_size > available:
                raise GalgenError(
                    f"data.pool_size = {pool_size} but the source has only {available} images; lower data.pool_size"
                )
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
                f"data.source ({self.source.label()}): 2 * n + n_val = {need} images needed but only {int((~drop).sum())} "
                f"distinct remain of the data.pool_size = {len(images)} images read ({int(drop.sum())} duplicates removed); "
                "raise data.pool_size or lower data.n or data.n_val"
            )
        if (~drop).sum() < need:
            raise GalgenError(
                f"data.source ({self.source.label()}): 2 * n + n_val = {need} images needed but only {int((~drop).sum())} "
                f"usable remain ({len(images)} read, {int(drop.sum())} duplicates removed); lower data.n or data.n_val"
            )
        self.split = make_split(images, self.n, self.n_val, self.seed, drop)
        self.hashes = check_disjoint(images, self.split)
        self.subsets = {s: torch.from_numpy(np.ascontiguousarray(images[self.split.indices(s)]))[:, None] for s in SUBSETS}
        self.pixel_mean = float(torch.cat([self.subsets["a"], self.subsets["b"]]).mean())
        self._check_same_on_all_ranks()

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
            raise GalgenError(
                f"data: the ranks built different splits ({len(set(digests))} distinct); is the source deterministic?"
            )

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

    def _trainer_context(self) -> tuple[torch.device, int, int]:
        """``(device, rank, world size)`` of the attached Trainer (CPU, 0, 1 without one)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return torch.device("cpu"), 0, 1
        return trainer.strategy.root_device, int(trainer.global_rank), int(trainer.world_size)

    def on_device(self, subset: str, device: torch.device) -> torch.Tensor:
        """Subset ``"a"``, ``"b"`` or ``"val"`` on ``device`` (copied once, kept until teardown)."""
        key = (subset, str(device))
        if key not in self._on_device:
            self._on_device[key] = self.subset_images(subset).to(device)
        return self._on_device[key]

    def batch_seed(self) -> int:
        """The device loader's seed: ``shuffle_seed``, else the run's ``seed_everything``, else ``seed``."""
        if self.shuffle_seed is not None:
            return int(self.shuffle_seed)
        env = os.environ.get("PL_GLOBAL_SEED")
        return int(env) if env not in (None, "") else int(self.seed)

    def teardown(self, stage: str | None = None) -> None:
        self._on_device.clear()

    def train_dataloader(self) -> DataLoader | DeviceTiledPairs:
        if self.loader == "device":
            device, rank, world = self._trainer_context()
            return DeviceTiledPairs(
                self.on_device("a", device),
                self.on_device("b", device),
                self.samples_per_epoch,
                self.batch_size,
                self.flips,
                self.batch_seed(),
                trainer=getattr(self, "trainer", None),
                rank=rank,
                world_size=world,
            )
        ds = TiledPairs(self.subsets["a"], self.subsets["b"], self.samples_per_epoch, self.flips)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=self.samples_per_epoch >= self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        if self.loader == "device":
            device, rank, world = self._trainer_context()
            return DeviceBatches(self.on_device("val", device), self.val_batch_size, rank, world)
        return DataLoader(self.subsets["val"], batch_size=self.val_batch_size, shuffle=False, num_workers=0)
