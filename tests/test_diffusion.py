"""The diffusion pair: the bias-free U-Net, the shared-noise batched sampler, training."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from galgen_lightning.models.base import golden_uniform
from galgen_lightning.models.diffusion import BiasFreeBatchNorm, BiasFreeUNet, DiffusionPair, sample_denoiser
from galgen_lightning.noise import counter_normal


def test_paper_unet_has_the_reference_parameter_count():
    assert sum(p.numel() for p in BiasFreeUNet(1, blocks=3, width=64).parameters()) == 7_659_264


@pytest.mark.parametrize("norm", ["reference", "rms"])
def test_unet_has_no_additive_constant(norm):
    torch.manual_seed(0)
    net = BiasFreeUNet(1, blocks=2, width=8, norm=norm)
    net.train()
    y = torch.randn(3, 1, 16, 16)
    for _ in range(3):
        net(torch.rand(8, 1, 16, 16))  # populate running statistics
    net.eval()
    with torch.no_grad():
        out, scaled = net(y), net(2.5 * y)
    # homogeneous in evaluation (running statistics; batch statistics make training scale invariant)
    assert out.abs().max() > 0
    assert torch.allclose(scaled, 2.5 * out, rtol=1e-4, atol=1e-5 * float(out.abs().max()))
    assert torch.equal(net(torch.zeros(1, 1, 16, 16)), torch.zeros(1, 1, 16, 16))
    assert not any("bias" in name for name, _ in net.named_parameters())


def test_bias_free_batch_norm_forms():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) + 2.0  # a large mean: centred and uncentred statistics differ
    ref = BiasFreeBatchNorm(3, "reference").train()
    # the reference's initial scale: small, random, N(0, (2/9/64)**2) clamped to +-0.025
    assert (ref.scale.abs() <= 0.025).all() and (ref.scale != 0).all() and ref.scale.abs().max() < 0.02
    sd = (x.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()  # centred...
    out = ref(x)
    assert torch.allclose(out, x / sd * ref.scale.detach())  # ...but the mean is not subtracted
    assert torch.allclose(ref.running_sd, 0.9 + 0.1 * sd)
    rms = BiasFreeBatchNorm(3, "rms").train()
    assert torch.equal(rms.scale.detach(), torch.ones(1, 3, 1, 1))
    assert torch.allclose(rms(x), x / (x.square().mean(dim=(0, 2, 3), keepdim=True) + 1e-5).sqrt())
    # evaluation: the same linear map in both forms
    rms.running_sd.copy_(ref.running_sd)
    rms.scale.data.copy_(ref.scale.data)
    assert torch.equal(ref.eval()(x), rms.eval()(x))
    with pytest.raises(ValueError, match="norm"):
        BiasFreeBatchNorm(3, "layer")
    with pytest.raises(ValueError, match="norm must be one of"):
        DiffusionPair(image_size=16, blocks=2, width=8, norm="layer")


def test_unet_rejects_sizes_it_cannot_pool():
    with pytest.raises(ValueError, match="divisible"):
        BiasFreeUNet(1, blocks=3, width=4)(torch.rand(1, 1, 12, 12))


def _pair(**kw):
    torch.manual_seed(0)
    pair = DiffusionPair(image_size=16, blocks=2, width=8, sigma_final=0.05, beta=0.5, max_steps=40, check_every=7, **kw)
    # a short burst of training so the denoiser sees noise (an untrained one stalls at once)
    opt = torch.optim.Adam(pair.parameters(), lr=3e-3)
    x = torch.rand(16, 1, 16, 16) * 0.2
    for _ in range(15):
        loss = pair.training_step({"a": x, "b": x.flip(-1)}, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return pair


def test_sampler_gives_a_and_b_the_same_noise_whatever_the_batch():
    pair = _pair()
    seen = {}

    def recorder(which):
        net = pair.model(which)

        def f(y):
            seen.setdefault(which, []).append(y.clone())
            return net(y)

        return f

    pair.eval()
    idx = torch.arange(4)
    with torch.no_grad():
        sample_denoiser(recorder("a"), idx, 5, (1, 16, 16), max_steps=1)
        sample_denoiser(recorder("b"), idx, 5, (1, 16, 16), max_steps=1)
    assert torch.equal(seen["a"][0], seen["b"][0])  # same y0 for A and B

    whole = pair.sample(6, seed=3, batch_size=6)
    parts = pair.sample(6, seed=3, batch_size=4)
    assert torch.allclose(whole.a, parts.a, atol=1e-5) and torch.allclose(whole.b, parts.b, atol=1e-5)
    assert torch.equal(whole.ok_a, parts.ok_a)
    other_seed = pair.sample(6, seed=4, batch_size=6)
    assert not torch.allclose(other_seed.a, whole.a)


def test_sampler_counts_step_limit_and_divergence():
    idx = torch.arange(3)
    never = lambda y: 0.5 * torch.ones_like(y)  # noqa: E731  constant residual: sigma never falls
    _, ok, c = sample_denoiser(never, idx, 0, (1, 4, 4), max_steps=5, sigma_final=0.01)
    assert c["step_limit"] == 3 and not ok.any()
    exploding = lambda y: 10 * y  # noqa: E731  sigma grows with y
    _, ok, c = sample_denoiser(exploding, idx, 0, (1, 4, 4), max_steps=50, h0=0.5, beta=1.0)
    assert c["diverged"] == 3 and not ok.any()
    blind = lambda y: 0 * y  # noqa: E731  sees no noise at all
    _, ok, c = sample_denoiser(blind, idx, 0, (1, 4, 4))
    assert c["stalled"] == 3 and not ok.any()


def test_sampler_stops_each_sample_on_its_own():
    # an oracle denoiser for a point mass at 0.3: residual = y - 0.3
    oracle = lambda y: y - 0.3  # noqa: E731
    out, ok, c = sample_denoiser(oracle, torch.arange(5), 1, (1, 8, 8), sigma_final=0.02, h0=0.2, beta=0.5, max_steps=500)
    assert ok.all() and c["finished"] == 5 and c["steps_sum"] > 0
    assert torch.allclose(out, torch.full_like(out, 0.3), atol=1e-4)


def test_training_lowers_the_loss_of_both_models():
    torch.manual_seed(1)
    pair = DiffusionPair(image_size=16, blocks=2, width=8)
    opt = pair.configure_optimizers()["optimizer"]
    x = {"a": torch.rand(8, 1, 16, 16), "b": torch.rand(8, 1, 16, 16)}
    noise = 0.3 * torch.randn(8, 1, 16, 16)
    before = [pair.noise_loss(w, x[w], noise).item() for w in "ab"]
    for _ in range(30):
        loss = pair.training_step(x, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = [pair.noise_loss(w, x[w], noise).item() for w in "ab"]
    assert after[0] < before[0] and after[1] < before[1]


class _TinyPairData(L.LightningDataModule):
    """Subsets A (dark), B (bright) and 10 validation images, with ``subset_images`` like galgen's."""

    def __init__(self, val_batch_size: int | None = 4, prebatched: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.images = {
            "a": 0.2 * torch.rand(4, 1, 16, 16, generator=g),
            "b": 0.6 + 0.3 * torch.rand(4, 1, 16, 16, generator=g),
            "val": torch.rand(10, 1, 16, 16, generator=g) * 0.5,
        }
        self.val_batch_size = val_batch_size
        self.prebatched = prebatched

    def subset_images(self, subset: str) -> torch.Tensor:
        return self.images[subset]

    def train_dataloader(self):
        return DataLoader([{"a": self.images["a"], "b": self.images["b"]}], batch_size=None)

    def val_dataloader(self):
        if self.prebatched:  # ready-made batches of 3, 3, 3, 1: no batch sampler to read
            return DataLoader(list(self.images["val"].split(3)), batch_size=None)
        return DataLoader(self.images["val"], batch_size=self.val_batch_size, shuffle=False)


def _trainer(**kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kw
    )


def test_each_sampler_starts_from_its_own_subsets_mean():
    torch.manual_seed(2)
    pair = DiffusionPair(image_size=16, blocks=2, width=8, max_steps=5)
    dm = _TinyPairData()
    _trainer(max_steps=1, limit_val_batches=0, num_sanity_val_steps=0).fit(pair, datamodule=dm)
    mean = {w: float(dm.subset_images(w).double().mean()) for w in "ab"}
    assert abs(mean["a"] - mean["b"]) > 0.4
    assert float(pair.data_mean_a) == pytest.approx(mean["a"]) and float(pair.data_mean_b) == pytest.approx(mean["b"])
    assert "data_mean_a" in pair.state_dict() and "data_mean_b" in pair.state_dict()

    class Blind(torch.nn.Module):  # sees no noise: the sample is the chain's start y0
        def forward(self, y):
            return torch.zeros_like(y)

    pair.model_a, pair.model_b = Blind(), Blind()
    idx = torch.arange(3)
    z0 = counter_normal(7, idx, (1, 16, 16), stream=0)
    for which in "ab":
        out, _, _ = pair.generate(which, idx, seed=7)
        assert torch.allclose(out, mean[which] + pair.hparams.sigma0 * z0, atol=1e-6)


def test_old_checkpoints_with_one_pooled_mean_still_load():
    pair = DiffusionPair(image_size=16, blocks=2, width=8)
    state = pair.state_dict()
    del state["data_mean_a"], state["data_mean_b"]
    state["data_mean"] = torch.tensor(0.3)
    fresh = DiffusionPair(image_size=16, blocks=2, width=8)
    fresh.load_state_dict(state)  # strict
    assert float(fresh.data_mean_a) == pytest.approx(0.3) and float(fresh.data_mean_b) == pytest.approx(0.3)
    assert torch.equal(fresh.model_a.down[0][0][0].weight, pair.model_a.down[0][0][0].weight)


def test_golden_uniform_is_a_spread_function_of_the_index():
    u = golden_uniform(torch.arange(1000))
    assert torch.equal(golden_uniform(torch.tensor([7, 3])), u[[7, 3]])
    assert (u > 0).all() and (u < 1).all()
    counts = torch.histc(u[:100], bins=10, min=0, max=1)  # any prefix is nearly stratified
    assert counts.min() >= 9 and counts.max() <= 11


@pytest.mark.parametrize("norm", ["reference", "rms"])
def test_validation_loss_does_not_depend_on_the_batch_size(norm):
    pair = _pair(norm=norm)
    losses = []
    for kw in ({"val_batch_size": 3}, {"val_batch_size": 4}, {"val_batch_size": 10}, {"prebatched": True}):
        (metrics,) = _trainer().validate(pair, datamodule=_TinyPairData(**kw), verbose=False)
        losses.append([metrics["val/loss_a"], metrics["val/loss_b"]])
    losses = torch.tensor(losses)
    assert torch.isfinite(losses).all() and (losses > 0).all()
    assert torch.allclose(losses, losses[:1].expand_as(losses), rtol=1e-5), losses
    # image i's noise is a function of i alone: its level and its pattern
    idx = torch.tensor([9, 2])
    assert torch.equal(pair.validation_noise(idx, (1, 16, 16)), pair.validation_noise(torch.arange(10), (1, 16, 16))[[9, 2]])
