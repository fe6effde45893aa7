"""The device loader (``data.loader: device``): batches gathered by index on the training device,
flips applied to whole batches; the same batches in distribution as the per-item ``TiledPairs``
loader (tiling, flips with probability 1/2 per axis, A only from A), deterministic, split
between DDP ranks, and resumed exactly by a Trainer (at an epoch boundary and mid-epoch)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from support import quiet_trainer

from galgen_lightning.data import GalaxyPairDataModule, SyntheticGalaxies
from galgen_lightning.data.datamodule import DeviceBatches, DeviceTiledPairs, flip_batch
from galgen_lightning.errors import GalgenError


def _asymmetric(n: int, side: int = 6, offset: float = 0.0) -> torch.Tensor:
    """``n`` images whose four flips all differ, told apart by their (flip-invariant) sum."""
    g = torch.Generator().manual_seed(n)
    x = torch.rand(n, 1, side, side, generator=g) * 0.1
    x[:, :, 0, 0] += 1.0  # a bright corner: top-left, unless flipped
    return x + offset + torch.arange(n, dtype=torch.float32).view(-1, 1, 1, 1) * 10


def _which(batch: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Index in ``images`` of each image of ``batch`` (by its sum, which flips keep)."""
    sums = images.sum((1, 2, 3))
    return (batch.sum((1, 2, 3))[:, None] - sums[None]).abs().argmin(1)


def _corner(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: flipped left-right? upside down? (where its bright corner went)."""
    side = batch.shape[-1]
    flat = batch[:, 0].reshape(len(batch), -1).argmax(1)
    row, col = flat // side, flat % side
    return col == side - 1, row == side - 1


def _epoch(loader) -> list[dict[str, torch.Tensor]]:
    return list(iter(loader))


def test_every_image_appears_equally_often_and_a_only_from_a():
    a, b = _asymmetric(6), _asymmetric(6, offset=1000.0)
    loader = DeviceTiledPairs(a, b, length=60, batch_size=4, flips=True, seed=0)
    assert len(loader) == 15
    for _ in range(2):  # two epochs
        batches = _epoch(loader)
        ia = torch.cat([_which(x["a"], a) for x in batches])
        ib = torch.cat([_which(x["b"], b) for x in batches])
        assert torch.equal(torch.bincount(ia, minlength=6), torch.full((6,), 10))
        assert torch.equal(torch.bincount(ib, minlength=6), torch.full((6,), 10))
        # A batches hold only images of A (values below 1000), B batches only B's
        assert all(x["a"].max() < 1000 and x["b"].min() >= 1000 for x in batches)
        # position k pairs A[k mod N] with B[k mod N], as TiledPairs does
        assert torch.equal(ia, ib)


def test_flips_have_probability_one_half_per_axis_and_are_independent():
    a, b = _asymmetric(5), _asymmetric(5, offset=1000.0)
    loader = DeviceTiledPairs(a, b, length=8000, batch_size=100, flips=True, seed=1)
    batches = _epoch(loader)
    for key, images in (("a", a), ("b", b)):
        x = torch.cat([bt[key] for bt in batches])
        lr, ud = _corner(x)
        n = len(x)
        tol = 4 * (0.25 / n) ** 0.5
        assert abs(lr.float().mean() - 0.5) < tol and abs(ud.float().mean() - 0.5) < tol
        assert abs((lr & ud).float().mean() - 0.25) < tol
        # each batch image is exactly one of the four flips of its source image
        src = images[_which(x, images)]
        assert torch.equal(x, flip_batch(src, lr, ud))
    no_flips = DeviceTiledPairs(a, b, length=40, batch_size=8, flips=False, seed=1)
    for bt in _epoch(no_flips):
        lr, ud = _corner(bt["a"])
        assert not lr.any() and not ud.any()


def test_same_seed_same_batches_other_epoch_or_seed_other_batches():
    a, b = _asymmetric(7), _asymmetric(7, offset=1000.0)

    def first_two_epochs(seed):
        loader = DeviceTiledPairs(a, b, length=28, batch_size=4, flips=True, seed=seed)
        return _epoch(loader), _epoch(loader)

    (e0, e1), (f0, f1), (g0, _) = first_two_epochs(5), first_two_epochs(5), first_two_epochs(6)
    same = lambda u, v: all(torch.equal(x["a"], y["a"]) and torch.equal(x["b"], y["b"]) for x, y in zip(u, v))  # noqa: E731
    assert same(e0, f0) and same(e1, f1)
    assert not same(e0, e1) and not same(e0, g0)


@pytest.mark.parametrize("length, world", [(24, 2), (25, 2), (30, 4)])
def test_ddp_ranks_take_disjoint_equal_shares(length, world):
    a, b = _asymmetric(3), _asymmetric(3, offset=1000.0)
    loaders = [DeviceTiledPairs(a, b, length, batch_size=2, flips=True, seed=2, rank=r, world_size=world) for r in range(world)]
    plans = [ld.epoch_plan(0)[0] for ld in loaders]
    assert len({len(ld) for ld in loaders}) == 1 and len({len(p) for p in plans}) == 1
    positions = torch.cat(plans)
    assert set(positions.tolist()) == set(range(length))  # every position, each once (padding repeats a few)
    assert len(positions) - len(set(positions.tolist())) == -length % world


def test_validation_batches_in_order_and_per_rank():
    val = torch.arange(10, dtype=torch.float32).view(-1, 1, 1, 1)
    one = DeviceBatches(val, batch_size=4)
    assert one.batch_sampler == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert torch.equal(torch.cat(list(one)).flatten(), torch.arange(10, dtype=torch.float32))
    r1 = DeviceBatches(val, batch_size=2, rank=1, world_size=3)  # DistributedSampler(shuffle=False): 1, 4, 7, 0 (padded)
    assert r1.batch_sampler == [[1, 4], [7, 0]]
    assert [b.flatten().tolist() for b in r1] == [[1.0, 4.0], [7.0, 0.0]]


def test_unknown_loader_is_a_one_line_error():
    with pytest.raises(GalgenError, match=r"^data.loader must be one of device, dataset, got 'gpu'$"):
        GalaxyPairDataModule(SyntheticGalaxies(size=60), image_size=8, n=4, n_val=8, loader="gpu")


class _Record(L.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, int, float]] = []
        self.val: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.current_epoch, batch_idx, float(batch["a"].sum() + 2 * batch["b"].sum())))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val.append(pl_module._val_index(batch_idx, len(batch), batch.device))


def _fit(root, epochs, ckpt=None, every_n_train_steps=None, **trainer_kwargs):
    from galgen_lightning.models.diffusion import DiffusionPair

    L.seed_everything(3, verbose=False)
    dm = GalaxyPairDataModule(SyntheticGalaxies(size=120), image_size=16, n=8, n_val=10, batch_size=4, samples_per_epoch=24)
    record = _Record()
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=root, save_top_k=-1, every_n_epochs=None if every_n_train_steps else 1, every_n_train_steps=every_n_train_steps
    )
    trainer = quiet_trainer(
        max_epochs=epochs,
        num_sanity_val_steps=0,
        callbacks=[record, checkpoint],
        default_root_dir=root,
        enable_checkpointing=True,
        accelerator="auto",
        **trainer_kwargs,
    )
    trainer.fit(DiffusionPair(image_size=16, blocks=1, width=4), datamodule=dm, ckpt_path=ckpt)
    return record


def test_trainer_resumes_the_same_batches_at_an_epoch_boundary_and_mid_epoch(tmp_path):
    full = _fit(tmp_path / "full", 3, every_n_train_steps=4)
    assert [(e, i) for e, i, _ in full.seen] == [(e, i) for e in range(3) for i in range(6)]
    assert len({s for _, _, s in full.seen}) == 18  # epochs differ
    # validation: every held-out image once per epoch, with its global index
    assert torch.equal(torch.cat(full.val[:3]), torch.arange(10))
    ckpts = tmp_path / "full"
    after_epoch = _fit(tmp_path / "resumed", 3, ckpt=ckpts / "epoch=1-step=12.ckpt")  # saved after epoch 1's last batch
    assert after_epoch.seen == full.seen[12:]  # the last epoch, as the uninterrupted run drew it
    mid = _fit(tmp_path / "mid", 3, ckpt=ckpts / "epoch=1-step=8.ckpt")  # 2 of epoch 1's 6 batches done
    assert mid.seen == full.seen[8:]


def test_fast_dev_run_and_dataset_loader(tmp_path):
    assert len(_fit(tmp_path / "dev", 1, fast_dev_run=True).seen) == 1
    dm = GalaxyPairDataModule(SyntheticGalaxies(size=120), image_size=16, n=8, n_val=10, batch_size=4, loader="dataset")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(dm.train_dataloader(), torch.utils.data.DataLoader) and batch["a"].shape == (4, 1, 16, 16)


class _RankRecord(L.Callback):
    """Writes the (flip-invariant) sums of every A image this rank trained on to ``<folder>/rank<r>.pt``."""

    def __init__(self, folder) -> None:
        self.folder, self.sums = str(folder), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.sums.append(batch["a"].sum((1, 2, 3)))

    def on_train_end(self, trainer, pl_module):
        torch.save(torch.cat(self.sums), f"{self.folder}/rank{trainer.global_rank}.pt")


@pytest.mark.cli  # a two-process DDP group: make test, not make test-fast
def test_ddp_ranks_train_on_disjoint_shares_of_the_epoch(tmp_path):
    """Two CPU processes (ddp_spawn): each takes half the epoch; together every image of A exactly
    samples_per_epoch / N times, as one process would."""
    from galgen_lightning.models.diffusion import DiffusionPair

    L.seed_everything(1, verbose=False)
    dm = GalaxyPairDataModule(SyntheticGalaxies(size=120), image_size=8, n=16, n_val=10, batch_size=4, samples_per_epoch=32)
    trainer = quiet_trainer(
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        num_sanity_val_steps=0,
        callbacks=[_RankRecord(tmp_path)],
    )
    trainer.fit(DiffusionPair(image_size=8, blocks=1, width=4), datamodule=dm)
    dm.setup("fit")
    a = dm.subset_images("a")
    sums = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [len(s) for s in sums] == [16, 16]
    ids = [(s[:, None] - a.sum((1, 2, 3))[None]).abs().argmin(1) for s in sums]
    assert torch.equal(torch.bincount(torch.cat(ids), minlength=16), torch.full((16,), 2))
