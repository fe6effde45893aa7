"""The diffusion pair (the bias-free U-Net, the shared-noise batched sampler, training), what
PairModule owns for every family (validation seed, sample_batch_size, sampling precision, the
GPU-path options) and the benchmarks' CPU paths."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from support import quiet_trainer
from torch.utils.data import DataLoader

from galgen_lightning.errors import GalgenError
from galgen_lightning.models.base import VAL_SEED, autocast_for, golden_uniform, precision_dtype
from galgen_lightning.models.diffusion import BiasFreeBatchNorm, BiasFreeUNet, DiffusionPair, SamplerSettings, sample_denoiser
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
    with pytest.raises(GalgenError, match="model.norm must be one of reference, rms, got 'layer'"):
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
        sample_denoiser(recorder("a"), idx, 5, (1, 16, 16), settings=SamplerSettings(max_steps=1))
        sample_denoiser(recorder("b"), idx, 5, (1, 16, 16), settings=SamplerSettings(max_steps=1))
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
    _, ok, c = sample_denoiser(never, idx, 0, (1, 4, 4), settings=SamplerSettings(max_steps=5, sigma_final=0.01))
    assert c["step_limit"].sum() == 3 and not ok.any()
    exploding = lambda y: 10 * y  # noqa: E731  sigma grows with y
    _, ok, c = sample_denoiser(exploding, idx, 0, (1, 4, 4), settings=SamplerSettings(max_steps=50, h0=0.5, beta=1.0))
    assert c["diverged"].sum() == 3 and not ok.any()
    blind = lambda y: 0 * y  # noqa: E731  sees no noise at all
    _, ok, c = sample_denoiser(blind, idx, 0, (1, 4, 4))
    assert c["stalled"].sum() == 3 and not ok.any()


def test_sampler_stops_each_sample_on_its_own():
    # an oracle denoiser for a point mass at 0.3: residual = y - 0.3
    oracle = lambda y: y - 0.3  # noqa: E731
    settings = SamplerSettings(sigma_final=0.02, h0=0.2, beta=0.5, max_steps=500)
    out, ok, c = sample_denoiser(oracle, torch.arange(5), 1, (1, 8, 8), settings=settings)
    assert ok.all() and c["finished"].sum() == 5 and (c["steps_sum"] > 0).all()
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


def test_each_sampler_starts_from_its_own_subsets_mean():
    torch.manual_seed(2)
    pair = DiffusionPair(image_size=16, blocks=2, width=8, max_steps=5)
    dm = _TinyPairData()
    quiet_trainer(max_steps=1, limit_val_batches=0, num_sanity_val_steps=0).fit(pair, datamodule=dm)
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
        (metrics,) = quiet_trainer().validate(pair, datamodule=_TinyPairData(**kw), verbose=False)
        losses.append([metrics["val/loss_a"], metrics["val/loss_b"]])
    losses = torch.tensor(losses)
    assert torch.isfinite(losses).all() and (losses > 0).all()
    assert torch.allclose(losses, losses[:1].expand_as(losses), rtol=1e-5), losses
    # image i's noise is a function of i alone: its level and its pattern
    idx = torch.tensor([9, 2])
    assert torch.equal(pair.validation_noise(idx, (1, 16, 16)), pair.validation_noise(torch.arange(10), (1, 16, 16))[[9, 2]])


# ----------------------------------------------------------------------------- what PairModule owns
@pytest.mark.parametrize(
    "precision, dtype",
    [
        ("bf16-mixed", torch.bfloat16),
        ("bf16-true", torch.bfloat16),
        ("16-mixed", torch.float16),
        ("16-true", torch.float16),
        ("32-true", None),
        ("64-true", None),
        ("32", None),
        (None, None),
    ],
)
def test_trainer_precision_maps_to_the_sampling_dtype(precision, dtype):
    assert precision_dtype(precision) == dtype
    with autocast_for(precision, "cpu"):
        out = torch.nn.functional.linear(torch.rand(2, 3), torch.rand(4, 3))
    assert out.dtype == (dtype or torch.float32)


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown trainer precision '8-mixed'"):
        precision_dtype("8-mixed")


@pytest.mark.parametrize("precision, dtype", [(None, torch.float32), ("32-true", torch.float32), ("bf16-mixed", torch.bfloat16)])
def test_the_sampler_runs_at_the_trainers_precision(precision, dtype):
    pair = DiffusionPair(image_size=16, blocks=2, width=4, max_steps=2)
    if precision is not None:
        pair.trainer = quiet_trainer(precision=precision)
    seen = []
    pair.model_a.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    pair.sample(2, seed=0)
    assert seen and set(seen) == {dtype}


def test_every_family_shares_the_validation_seed_and_declares_sample_batch_size():
    from galgen_lightning.models.gan import GANPair
    from galgen_lightning.models.glow import GlowPair
    from galgen_lightning.models.reference import NoisePair, OracleCollapse, OracleGeneralizer, OracleMemorizer, OracleMixture

    pairs = [
        DiffusionPair(image_size=16, blocks=2, width=4, sample_batch_size=3),
        GlowPair(image_size=16, n_flow=1, n_block=2, hidden=4, sample_batch_size=3),
        GANPair(
            image_size=16,
            latent_dim=8,
            fmap_max=8,
            fmap_inverse_coef=6,
            attn_sizes=[],
            small_width=4,
            decoder_upsamples=1,
            sample_batch_size=3,
        ),
        OracleMixture(image_size=16, sample_batch_size=3),
        OracleGeneralizer(image_size=16, sample_batch_size=3),
        OracleMemorizer(image_size=16, sample_batch_size=3),
        OracleCollapse(image_size=16, sample_batch_size=3),
        NoisePair(image_size=16, sample_batch_size=3),
    ]
    for pair in pairs:
        assert pair.val_seed == VAL_SEED == 12345
        assert pair.sample_batch_size == 3
    noise = pairs[-1]
    sizes = []
    generate = noise.generate
    noise.generate = lambda which, idx, seed: (sizes.append(len(idx)), generate(which, idx, seed))[1]
    assert noise.sample(7, seed=1).a.shape == (7, 1, 16, 16)
    assert sizes == [3, 3, 1, 3, 3, 1]  # sample() batches by sample_batch_size by default
    with pytest.raises(GalgenError, match=r"^model.sample_batch_size must be at least 1, got 0$"):
        NoisePair(sample_batch_size=0)
    with pytest.raises(ValueError, match=r"^modes must be at least 1, got 0$"):
        OracleCollapse(modes=0)


def test_sampler_settings_are_listed_once():
    pair = DiffusionPair(
        image_size=16, blocks=2, width=4, sigma0=0.9, sigma_final=0.02, h0=0.05, beta=0.3, max_steps=7, check_every=3
    )
    assert pair.sampler_settings == SamplerSettings(sigma0=0.9, sigma_final=0.02, h0=0.05, beta=0.3, max_steps=7, check_every=3)
    pair.hparams.max_steps = 9  # read afresh from the hyperparameters
    assert pair.sampler_settings.max_steps == 9
    for bad, message in (
        ({"beta": 0.0}, r"^model.beta must be in \(0, 1\], got 0.0$"),
        ({"h0": -1.0}, r"^model.h0 must be positive, got -1.0$"),
        ({"sigma_final": -0.1}, r"^model.sigma_final must be non-negative, got -0.1$"),
        ({"max_steps": 0}, r"^model.max_steps must be at least 1, got 0$"),
    ):
        with pytest.raises(GalgenError, match=message):
            DiffusionPair(image_size=16, blocks=2, width=4, **bad)


def _noise_losses(pair: DiffusionPair, steps: int = 3) -> list[float]:
    opt = pair.configure_optimizers()["optimizer"]
    g = torch.Generator().manual_seed(4)
    out = []
    for _ in range(steps):
        x = {w: torch.rand(4, 1, 16, 16, generator=g) for w in "ab"}
        noise = 0.3 * torch.randn(4, 1, 16, 16, generator=g)
        loss = pair.noise_loss("a", x["a"], noise) + pair.noise_loss("b", x["b"], noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out


@pytest.mark.parametrize("option", ["channels_last", "fused_adam"])
def test_gpu_path_options_leave_the_numbers_unchanged_on_the_cpu(option):
    torch.manual_seed(5)
    plain = DiffusionPair(image_size=16, blocks=2, width=4)
    torch.manual_seed(5)
    other = DiffusionPair(image_size=16, blocks=2, width=4, **{option: True})
    assert not plain.configure_optimizers()["optimizer"].defaults["fused"]  # the default: foreach Adam, as before
    if option == "fused_adam":
        assert other.configure_optimizers()["optimizer"].defaults["fused"]
    else:
        assert other.model_a.down[0][0][0].weight.is_contiguous(memory_format=torch.channels_last)
        assert other.to_memory_format(torch.rand(2, 1, 16, 16)).is_contiguous(memory_format=torch.channels_last)
    assert _noise_losses(plain) == pytest.approx(_noise_losses(other), rel=1e-5)
    assert torch.allclose(plain.sample(3, seed=2).a, other.sample(3, seed=2).a, atol=1e-5)


def test_fused_adam_on_a_device_without_it_is_one_line():
    pair = DiffusionPair(image_size=16, blocks=2, width=4, fused_adam=True).to("meta")
    with pytest.raises(GalgenError, match=r"^model.fused_adam: no fused Adam on meta \(.*\); set model.fused_adam: false$"):
        pair.configure_optimizers()


def test_sampler_graph_is_refused_off_cuda_in_one_line():
    pair = DiffusionPair(image_size=16, blocks=2, width=4, max_steps=2, sampler_graph=True)
    message = r"^model.sampler_graph needs a CUDA device \(CUDA graphs\), the model is on cpu: set it to false$"
    with pytest.raises(GalgenError, match=message):
        pair.sample(2, seed=0)
    with pytest.raises(GalgenError, match=message):
        quiet_trainer(max_steps=1, limit_val_batches=0).fit(pair, datamodule=_TinyPairData())


@pytest.mark.slow
def test_compile_trains_like_eager_on_the_cpu():
    """torch.compile's CPU path (a C++ compiler; about two minutes on a busy 2-core machine)."""
    torch.manual_seed(6)
    eager = DiffusionPair(image_size=16, blocks=2, width=4)
    torch.manual_seed(6)
    compiled = DiffusionPair(image_size=16, blocks=2, width=4, compile=True)
    losses = {}
    for name, pair in (("eager", eager), ("compiled", compiled)):
        L.seed_everything(0, verbose=False)
        quiet_trainer(max_steps=2, limit_val_batches=0).fit(pair, datamodule=_TinyPairData())
        losses[name] = [p.detach().clone() for p in pair.parameters()]
    assert compiled._train_nets and not eager._train_nets
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(losses["eager"], losses["compiled"]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sampler_graph_matches_the_eager_sampler_on_cuda():
    torch.manual_seed(0)
    pair = _pair(fused_adam=True, channels_last=True).cuda()
    assert pair.configure_optimizers()["optimizer"].defaults["fused"]
    eager = pair.sample(6, seed=3, batch_size=4)
    pair.hparams.sampler_graph = True
    graph = pair.sample(6, seed=3, batch_size=4)
    assert torch.equal(eager.ok_a, graph.ok_a)
    assert torch.allclose(eager.a, graph.a, atol=1e-3) and torch.allclose(eager.b, graph.b, atol=1e-3)


# ----------------------------------------------------------------------------- benchmarks
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(BENCH.parent)}
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, env=env, timeout=600)


def test_gpu_checks_script_parses_and_fits_in_ten_minutes():
    script = BENCH / "gpu_checks.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    default = script.read_text().split('if [ -n "${EXTRA:-}" ]')[0]
    limits = [int(m) for m in re.findall(r"^\s*step \w+ (\d+) ", default, flags=re.M)]
    assert len(limits) >= 10 and "timeout -k 2" in default
    assert sum(limits) + 2 * len(limits) < 600, sum(limits)
    timed = default.replace("-", "_")  # a flag (--fused-adam) or a variant name (fused_adam)
    for option in ("channels_last", "fused_adam", "no_fused_adam", "compile", "sampler_graph", "bench_fit.py"):
        assert option in timed, option


@pytest.mark.slow
def test_diffusion_and_fit_benchmarks_run_on_the_cpu_with_the_option_flags():
    run = _bench("bench_diffusion.py", "--device", "cpu", "--size", "small", "--train-steps", "1", "--sample-steps", "1",
                 "--variants", "base,channels_last,fused_adam")  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["variant"] for r in lines] == ["base", "channels_last", "fused_adam"]
    assert [r["options"]["channels_last"] for r in lines] == [False, True, False]
    assert [r["options"]["fused_adam"] for r in lines] == [False, False, True]
    assert all(r["train_img_per_s_per_model"] > 0 and r["peak_memory_mb"] > 0 for r in lines)
    refused = _bench("bench_diffusion.py", "--device", "cpu", "--train-steps", "1", "--sample-steps", "1", "--sampler-graph")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "bench_diffusion: error: model.sampler_graph needs a CUDA device (CUDA graphs), the model is on cpu: set it to false"
    ]
    fit = _bench("bench_fit.py", "--device", "cpu", "--size", "small", "--steps", "2", "--repeats", "1", "--loaders", "device",
                 "--channels-last", "--fused-adam")  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    (result,) = [json.loads(line) for line in fit.stdout.splitlines() if line.startswith("{")]
    assert result["options"] == {"channels_last": True, "fused_adam": True, "compile": False} and result["ratio_device"] > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_the_denoising_test_feeds_a_true_precision_network_its_own_dtype(dtype):
    """--trainer.precision bf16-true / 64-true: the network's weights are in that dtype; the
    denoising test's float32 images are cast for it, and the result comes back in float32."""
    pair = DiffusionPair(image_size=16, blocks=2, width=4).to(dtype)
    out = pair.denoise("a", torch.rand(3, 1, 16, 16))
    assert out.dtype == torch.float32 and out.shape == (3, 1, 16, 16) and torch.isfinite(out).all()


def test_an_image_side_the_unet_cannot_halve_blocks_times_is_refused_when_built():
    with pytest.raises(GalgenError, match=r"image side 12 \(data.image_size\) must be divisible by 2\*\*blocks = 8"):
        DiffusionPair(image_size=12, blocks=3)
