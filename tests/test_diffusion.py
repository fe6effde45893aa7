"""The diffusion pair: the bias-free U-Net, the shared-noise batched sampler, training."""

from __future__ import annotations

import pytest
import torch

from galgen_lightning.diffusion import BiasFreeUNet, DiffusionPair, sample_denoiser


def test_paper_unet_has_the_reference_parameter_count():
    assert sum(p.numel() for p in BiasFreeUNet(1, blocks=3, width=64).parameters()) == 7_659_264


def test_unet_has_no_additive_constant():
    net = BiasFreeUNet(1, blocks=2, width=8)
    net.train()
    net(torch.rand(8, 1, 16, 16))  # populate running statistics
    net.eval()
    y = torch.randn(3, 1, 16, 16)
    assert torch.allclose(net(2.5 * y), 2.5 * net(y), atol=1e-5)
    assert torch.equal(net(torch.zeros(1, 1, 16, 16)), torch.zeros(1, 1, 16, 16))
    assert not any("bias" in name for name, _ in net.named_parameters())


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
