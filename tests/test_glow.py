"""Glow pair and inversion test: exact inverses and log-determinants, likelihood, ActNorm
initialisation, shared latents, non-finite steps, Wasserstein numbers, and the CLI."""

from __future__ import annotations

import json
import math

import lightning as L
import numpy as np
import pytest
import torch
from scipy import integrate, stats
from support import CONFIGS, quiet_trainer, read_jsonl, run_cli
from torch.autograd.functional import jacobian

from galgen_lightning.evaluation.inversion import InversionTest, inversion_statistics, w1_standard_normal
from galgen_lightning.models.base import VAL_SEED
from galgen_lightning.models.glow import Glow, GlowPair, dequantize, latent_shapes
from galgen_lightning.models.glow.module import uniform_from_normal
from galgen_lightning.models.glow.network import (
    ActNorm,
    Coupling,
    FlowStep,
    InvConv1x1,
    Level,
    ZeroConv2d,
    squeeze2x2,
    unsqueeze2x2,
)
from galgen_lightning.noise import counter_normal


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is faster than two, above all on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised convs and the ActNorms non-trivial values (identity otherwise)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, ZeroConv2d):
                for p in (m.conv.weight, m.conv.bias, m.gain):
                    p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
            if isinstance(m, ActNorm):
                m.loc.copy_(scale * torch.randn(m.loc.shape, generator=g, dtype=m.loc.dtype))
                m.log_scale.copy_(scale * torch.randn(m.log_scale.shape, generator=g, dtype=m.loc.dtype))
                m.initialized.fill_(1)
    return module


def brute_logdet(f, x: torch.Tensor) -> float:
    """log|det| of the Jacobian of ``f`` (one sample, flattened in and out) by autograd."""
    shape = x.shape

    def flat(v):
        return f(v.reshape(shape)).reshape(-1)

    jac = jacobian(flat, x.reshape(-1))
    return float(torch.linalg.slogdet(jac)[1])


# --- the network -----------------------------------------------------------------------------
def test_squeeze_roundtrip_and_latent_shapes():
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(unsqueeze2x2(squeeze2x2(x)), x)
    assert squeeze2x2(x)[0, :, 0, 0].tolist() == x[0, :, :2, :2].reshape(3, 4).reshape(-1).tolist()
    assert latent_shapes(1, 64, 4) == [(2, 32, 32), (4, 16, 16), (8, 8, 8), (32, 4, 4)]


def test_paper_parameter_count():
    with torch.device("meta"):
        glow = Glow(1, n_flow=32, n_block=4, hidden=512, affine=False)
    assert sum(p.numel() for p in glow.parameters()) == 42_647_712
    assert glow.latent_shapes(64) == [(2, 32, 32), (4, 16, 16), (8, 8, 8), (32, 4, 4)]


LAYERS = {
    "actnorm": lambda: ActNorm(4),
    "invconv": lambda: InvConv1x1(4),
    "additive": lambda: Coupling(4, hidden=8, affine=False),
    "affine": lambda: Coupling(4, hidden=8, affine=True),
    "flowstep": lambda: FlowStep(4, hidden=8, affine=True),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_inverse_and_logdet(name):
    torch.manual_seed(0)
    layer = randomize(LAYERS[name]()).double().eval()
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        y, logdet = layer(x, torch.zeros(1, dtype=torch.float64))
        assert torch.allclose(layer.reverse(y), x, atol=1e-12)
    expected = brute_logdet(lambda v: layer(v, torch.zeros(1, dtype=torch.float64))[0], x)
    assert float(logdet) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("split", [True, False])
def test_level_inverse_and_logdet(split):
    torch.manual_seed(1)
    level = randomize(Level(2, n_flow=2, hidden=8, affine=True, split=split)).double().eval()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    out = level(x, torch.zeros(1, dtype=torch.float64))
    assert torch.allclose(level.reverse(out.h, out.eps), x, atol=1e-12)
    assert torch.allclose(level.reverse(out.h, out.z, standardized=False), x, atol=1e-12)

    def f(v):
        o = level(v, torch.zeros(1, dtype=torch.float64))
        return torch.cat([o.h.reshape(-1), o.z.reshape(-1)]) if split else o.z

    assert float(out.logdet) == pytest.approx(brute_logdet(f, x), abs=1e-9)


@pytest.mark.parametrize("affine", [False, True])
def test_whole_flow_inverse_logdet_and_density(affine):
    torch.manual_seed(2)
    glow = randomize(Glow(1, n_flow=2, n_block=3, hidden=8, affine=affine)).double().eval()
    x = 0.3 * torch.randn(1, 1, 8, 8, dtype=torch.float64)
    out = glow(x)
    assert torch.allclose(glow.reverse(out.eps), x, atol=1e-11)
    assert torch.allclose(glow.reverse(out.z, standardized=False), x, atol=1e-11)
    # log|det dz/dx| of the whole flow, by brute force
    assert float(out.logdet) == pytest.approx(brute_logdet(lambda v: torch.cat([z.reshape(-1) for z in glow(v).z]), x), abs=1e-8)
    # log p(x) = log N(eps; 0, I) + log|det d eps/dx|: the prior and the standardisation agree
    logdet_eps = brute_logdet(lambda v: torch.cat([e.reshape(-1) for e in glow(v).eps]), x)
    eps = torch.cat([e.reshape(-1) for e in out.eps])
    log_px = float(torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum()) + logdet_eps
    assert float(out.log_p + out.logdet) == pytest.approx(log_px, abs=1e-8)


def test_standardised_latents_use_the_models_own_prior():
    torch.manual_seed(3)
    glow = randomize(Glow(1, n_flow=1, n_block=2, hidden=8)).double().eval()
    x = 0.3 * torch.randn(3, 1, 8, 8, dtype=torch.float64)
    out = glow(x)
    level0, level1 = glow.levels
    h = squeeze2x2(x)
    for flow in level0.flows:
        h, _ = flow(h, torch.zeros(3, dtype=torch.float64))
    kept, z0 = h.chunk(2, dim=1)
    mean, log_std = level0.prior(kept).chunk(2, dim=1)
    assert torch.allclose(out.z[0], z0)
    assert torch.allclose(out.eps[0], (z0 - mean) / log_std.exp())
    mean1, log_std1 = level1.prior(torch.zeros_like(out.z[1])).chunk(2, dim=1)
    assert torch.allclose(out.eps[1], (out.z[1] - mean1) / log_std1.exp())
    assert not torch.allclose(out.eps[0], out.z[0])  # the prior is not the identity here


def test_bits_per_dim_of_an_identity_flow_is_the_gaussian_one():
    pair = GlowPair(image_size=8, n_flow=2, n_block=2, hidden=8, n_bits=5).double().eval()
    glow = pair.model_a
    with torch.no_grad():  # every layer the identity: z is x rearranged, the prior N(0, I)
        for m in glow.modules():
            if isinstance(m, InvConv1x1):
                m.perm.copy_(torch.eye(len(m.perm)))
                m.sign_s.fill_(1)
                m.lower.zero_()
                m.upper.zero_()
                m.log_s.zero_()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    noise = torch.rand_like(x)
    v = dequantize(x, 5, noise)
    bpd, logdet = pair.bits_per_dim("a", x, noise)
    expected = (0.5 * math.log(2 * math.pi) + 0.5 * v.square()).flatten(1).sum(1) / (64 * math.log(2)) + 5
    assert torch.allclose(logdet, torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(bpd, expected, atol=1e-12)


def test_dequantize_five_bits():
    x = torch.tensor([0.0, 7 / 255, 8 / 255, 0.5, 1.0])
    assert dequantize(x, 5, torch.zeros(5)).tolist() == [-0.5, -0.5, -0.5 + 1 / 32, 15 / 32 - 0.5, 31 / 32 - 0.5]
    assert (dequantize(torch.rand(1000), 5, torch.rand(1000)) < 0.5).all()


def test_actnorm_initialises_once_and_survives_reload():
    torch.manual_seed(4)
    pair = GlowPair(image_size=8, n_flow=2, n_block=2, hidden=8).train()
    first = pair.model_a.levels[0].flows[0].layers[0]
    x = torch.rand(16, 1, 8, 8)
    pair.bits_per_dim("a", x)
    assert int(first.initialized) == 1
    y = squeeze2x2(dequantize(x, 5, torch.zeros_like(x)))  # roughly what the first ActNorm saw
    assert torch.allclose(first.loc.flatten(), -y.mean(dim=(0, 2, 3)), atol=0.02)
    state = {k: v.clone() for k, v in pair.state_dict().items()}
    pair.bits_per_dim("a", 0.2 * torch.rand(16, 1, 8, 8))  # other data: no second initialisation
    assert all(torch.equal(v, pair.state_dict()[k]) for k, v in state.items())
    assert not any(int(m.initialized) for m in pair.model_b.modules() if isinstance(m, ActNorm))  # B saw nothing

    other = GlowPair(image_size=8, n_flow=2, n_block=2, hidden=8).train()
    other.bits_per_dim("a", torch.rand(16, 1, 8, 8))  # initialised on its own data ...
    other.load_state_dict(state)  # ... then reloaded: must keep the loaded values
    other.bits_per_dim("a", 0.5 * torch.rand(16, 1, 8, 8))
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in state.items())


def _actnorm_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # each rank its own data, as under DDP
        x = (1.0 + rank) * torch.randn(8, 4, 3, 3) + 3.0 * rank
        layer = ActNorm(4).train()
        layer(x, torch.zeros(8))
        torch.save({"loc": layer.loc.detach(), "log_scale": layer.log_scale.detach(), "x": x}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.cli  # a two-process DDP group: make test, not make test-fast
def test_actnorm_initialises_from_the_global_batch_under_ddp(tmp_path):
    """Under DDP every rank gets the same ActNorm parameters: the statistics of all ranks' data."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_actnorm_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{k}.pt") for k in (0, 1))
    assert torch.equal(r0["loc"], r1["loc"]) and torch.equal(r0["log_scale"], r1["log_scale"])
    both = torch.cat([r0["x"], r1["x"]])
    assert torch.allclose(r0["loc"].flatten(), -both.mean(dim=(0, 2, 3)), atol=1e-5)
    std = both.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(r0["log_scale"].flatten(), -torch.log(std + 1e-6), atol=1e-5)


# --- sampling --------------------------------------------------------------------------------
def test_same_latents_for_a_and_b_and_batch_size_invariance():
    torch.manual_seed(5)
    pair = GlowPair(image_size=8, n_flow=2, n_block=2, hidden=8, temperature=0.7)
    randomize(pair.model_a, seed=1)
    randomize(pair.model_b, seed=2)
    lat = pair.latents(torch.arange(10), seed=3)
    sub = pair.latents(torch.tensor([7, 2]), seed=3)
    assert all(torch.equal(s, z[[7, 2]]) for s, z in zip(sub, lat))
    assert [tuple(z.shape[1:]) for z in lat] == pair.latent_shapes
    whole = pair.sample(10, seed=3)
    parts = pair.sample(10, seed=3, batch_size=3)
    assert torch.allclose(whole.a, parts.a, atol=1e-6) and torch.allclose(whole.b, parts.b, atol=1e-6)
    assert whole.ok_a.all() and whole.ok_b.all() and (whole.a >= 0).all() and (whole.a <= 1).all()
    assert not torch.allclose(whole.a, whole.b)
    pair.model_b.load_state_dict(pair.model_a.state_dict())  # same weights: same images
    same = pair.sample(10, seed=3, batch_size=4)
    assert torch.allclose(same.a, same.b, atol=1e-6)


@pytest.mark.parametrize("loader", ["3", "4", "10", "prebatched"])
def test_validation_bpd_does_not_depend_on_the_batch_size(loader):
    """Each validation image's dequantisation noise is a function of its global index only."""
    torch.manual_seed(8)
    pair = GlowPair(image_size=8, n_flow=2, n_block=2, hidden=8)
    randomize(pair.model_a, seed=1)
    randomize(pair.model_b, seed=2)
    val = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    if loader == "prebatched":  # ready-made batches of 3, 3, 3, 1: no batch sampler to read
        dl = torch.utils.data.DataLoader(list(val.split(3)), batch_size=None)
    else:
        dl = torch.utils.data.DataLoader(val, batch_size=int(loader), shuffle=False)
    trainer = quiet_trainer()
    (metrics,) = trainer.validate(pair, dl, verbose=False)
    # the reference: every image at once, noise from its index
    noise = uniform_from_normal(counter_normal(VAL_SEED, torch.arange(10), (1, 8, 8)))
    with torch.no_grad():
        for which in ("a", "b"):
            expected = pair.bits_per_dim(which, val, noise)[0].mean()
            assert float(metrics[f"val/bpd_{which}"]) == pytest.approx(float(expected), rel=1e-5)


# --- non-finite steps ------------------------------------------------------------------------
def _fit(pair: GlowPair, batches: list[dict], **kwargs) -> L.Trainer:
    trainer = quiet_trainer(max_steps=len(batches), num_sanity_val_steps=0, limit_val_batches=0, **kwargs)
    trainer.fit(pair, torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer


def _snapshot(module: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(module: torch.nn.Module, snap: dict) -> bool:
    return all(torch.equal(v, snap[k]) for k, v in module.state_dict().items())


def test_nonfinite_loss_skips_that_models_update_only():
    torch.manual_seed(6)
    pair = GlowPair(image_size=8, n_flow=2, n_block=2, hidden=8)
    good = torch.rand(8, 1, 8, 8)
    pair.train()
    for which in ("a", "b"):
        pair.bits_per_dim(which, good)  # ActNorm initialised on good data
    before_a, before_b = _snapshot(pair.model_a), _snapshot(pair.model_b)
    bad = good.clone()
    bad[0, 0, 0, 0] = float("nan")
    trainer = _fit(pair, [{"a": bad, "b": good}])
    assert _same(pair.model_a, before_a)
    assert not _same(pair.model_b, before_b)
    assert pair.skipped == {"a": 1, "b": 0} and pair.streak == {"a": 1, "b": 0}
    assert float(trainer.callback_metrics["train/skipped_a"]) == 1.0


def test_nonfinite_gradient_skips_the_update():
    torch.manual_seed(7)
    pair = GlowPair(image_size=8, n_flow=2, n_block=2, hidden=8)
    good = torch.rand(8, 1, 8, 8)
    pair.train()
    for which in ("a", "b"):
        pair.bits_per_dim(which, good)
    before_a, before_b = _snapshot(pair.model_a), _snapshot(pair.model_b)
    pair.model_b.levels[0].flows[0].layers[0].loc.register_hook(lambda g: g * float("nan"))
    _fit(pair, [{"a": good, "b": good}])
    assert not _same(pair.model_a, before_a)
    assert _same(pair.model_b, before_b)
    assert pair.skipped == {"a": 0, "b": 1}


class _PoisonOnRankOne(GlowPair):
    """Rank 1 sees a NaN in A's batch at the second step; rank 0 never does."""

    def training_step(self, batch, batch_idx):
        if self.global_rank == 1 and batch_idx == 1:
            batch = {**batch, "a": batch["a"].clone().index_fill_(0, torch.tensor([0]), float("nan"))}
        return super().training_step(batch, batch_idx)

    def on_train_end(self) -> None:
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        torch.save({"state": state, "skipped": dict(self.skipped)}, f"{self.out}/rank{self.global_rank}.pt")


@pytest.mark.slow
def test_ddp_replicas_stay_identical_when_one_rank_sees_a_nonfinite_loss(tmp_path):
    """Two CPU processes (gloo): A's update is skipped on both ranks, B trains, the replicas stay equal."""
    torch.manual_seed(8)
    pair = _PoisonOnRankOne(image_size=8, n_flow=2, n_block=2, hidden=8)
    pair.out = str(tmp_path)
    g = torch.Generator().manual_seed(0)
    batches = [{"a": torch.rand(4, 1, 8, 8, generator=g), "b": torch.rand(4, 1, 8, 8, generator=g)} for _ in range(3)]
    trainer = quiet_trainer(max_steps=3, devices=2, strategy="ddp_spawn", limit_val_batches=0, use_distributed_sampler=False)
    trainer.fit(pair, torch.utils.data.DataLoader(batches, batch_size=None))
    r0, r1 = (torch.load(tmp_path / f"rank{k}.pt") for k in (0, 1))
    assert r0["skipped"] == r1["skipped"] == {"a": 1, "b": 0}
    assert all(torch.equal(v, r1["state"][k]) for k, v in r0["state"].items())


# --- the inversion test ----------------------------------------------------------------------
def test_w1_to_standard_normal_is_exact():
    values = np.random.default_rng(0).normal(0.3, 1.2, size=5000)
    m = 400_000
    grid = stats.norm.ppf((np.arange(m) + 0.5) / m)  # N(0, 1) by its quantiles
    assert w1_standard_normal(values) == pytest.approx(stats.wasserstein_distance(values, grid), abs=2e-4)
    few = np.array([-0.4, 0.1, 2.0])
    cdf = lambda t: np.searchsorted(np.sort(few), t, side="right") / len(few)  # noqa: E731
    direct = sum(
        integrate.quad(lambda t: abs(cdf(t) - stats.norm.cdf(t)), a, b, limit=200)[0]
        for a, b in [(-12, -0.4), (-0.4, 0.1), (0.1, 2.0), (2.0, 12)]
    )
    assert w1_standard_normal(few) == pytest.approx(direct, abs=1e-8)


def test_inversion_statistics_against_scipy():
    torch.manual_seed(8)
    pair = GlowPair(image_size=8, n_flow=2, n_block=2, hidden=8)
    randomize(pair.model_a, 0.1, seed=1)
    randomize(pair.model_b, 0.1, seed=2)
    z = pair.latents(torch.arange(12), seed=0)
    result = inversion_statistics(pair.model_a, pair.model_b, z, batch_size=5)
    for direction, own in (("a", "za"), ("b", "zb")):
        res = result[direction]
        assert res["valid"].all()
        for k in range(len(z)):
            assert np.allclose(res["z"][k], z[k].numpy())
            w = res["w1"][k]
            for name, (u, v) in {"z_zb": ("z", "zb"), "z_za": ("z", "za"), "za_zb": ("za", "zb")}.items():
                assert w[name] == pytest.approx(
                    stats.wasserstein_distance(res[u][k].ravel(), res[v][k].ravel()), rel=1e-9, abs=1e-12
                )
            assert w["zb_normal"] == pytest.approx(w1_standard_normal(res["zb"][k]))
            assert res["max_err"][k] < 1e-4  # the model inverts itself
            assert w[f"z_{own}"] < 1e-5
            assert w["z_zb" if own == "za" else "z_za"] > 1e-3  # the other model does not
    # two identical models: z_B = z_A = z
    pair.model_b.load_state_dict(pair.model_a.state_dict())
    same = inversion_statistics(pair.model_a, pair.model_b, z)
    assert max(same["a"]["w1"][k]["z_zb"] for k in range(len(z))) < 1e-5


def test_inversion_statistics_survive_a_broken_model():
    pair = GlowPair(image_size=8, n_flow=1, n_block=2, hidden=8)
    with torch.no_grad():
        pair.model_b.levels[0].flows[0].layers[0].loc.fill_(float("nan"))
    z = pair.latents(torch.arange(4), seed=0)
    result = inversion_statistics(pair.model_a, pair.model_b, z)
    assert not result["a"]["valid"].any() and not result["b"]["valid"].any()
    assert math.isnan(result["a"]["w1"][0]["z_zb"])
    arrays = InversionTest(max_points=50).subsample(result)
    InversionTest().figure(arrays, result, "a", pair.latent_shapes, 0)


# --- the CLI ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blob_source_args(blob_file) -> list[str]:
    """The shared .npy of 16 px Gaussian blobs plus noise (conftest): no rendering, so the file stays fast."""
    path = blob_file
    return ["--data.source=galgen_lightning.data.ArrayFile", f"--data.source.path={path}", "--data.image_size=16"]


FAMILY = [f"--config={CONFIGS / 'glow.yaml'}", f"--config={CONFIGS / 'quick' / 'glow.yaml'}"]
TINY = [
    "--data.n=8",
    "--data.n_val=32",
    "--data.batch_size=8",
    "--model.init_args.n_flow=2",
    "--model.init_args.n_block=2",
    "--model.init_args.hidden=16",
]


@pytest.mark.cli  # a whole galgen command: make test, not make test-fast
def test_cli_fast_dev_run_writes_inversion_outputs(tmp_path, blob_source_args):
    run = tmp_path / "run"
    code = run_cli(["fit", *FAMILY, *blob_source_args, *TINY, "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={run}"])
    assert code == 0
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    assert "GlowPair" in (run / "config.yaml").read_text()
    records = read_jsonl(run / "metrics.jsonl")
    assert {r["test"] for r in records} == {"two_models", "inversion"}
    inv = next(r for r in records if r["test"] == "inversion")
    assert inv["from_a/level0/w1_z_za"] < 1e-3 and inv["from_b/level1/w1_z_zb"] < 1e-3
    assert inv["from_a/valid"] == 64
    folder = run / "eval" / "inversion"
    table = (folder / "epoch_0000_table.md").read_text()
    assert "| A^-1(z) | 0 | 2x8x8 |" in table and "W1(z, z_B)" in table
    assert (folder / "epoch_0000_table.csv").read_text().count("\n") == 5
    for direction in ("a", "b"):
        assert (folder / f"epoch_0000_from_{direction}.png").stat().st_size > 5000
    with np.load(folder / "epoch_0000.npz") as npz:
        assert npz["w1_from_a"].shape == (2, 6) and len(npz["from_b/zb_1"]) == 64 * 8 * 4 * 4
        assert npz["from_a/z_0"].shape == npz["from_a/zb_0"].shape


def test_cli_stops_after_max_bad_steps_and_names_the_checkpoint(tmp_path, blob_source_args, capsys):
    run = tmp_path / "run"
    args = [
        "--model.init_args.lr=1e30",  # the first update makes every later loss non-finite
        "--model.init_args.max_bad_steps=2",
        "--data.samples_per_epoch=16",
        "--trainer.max_epochs=3",
        "--trainer.limit_val_batches=1",
        f"--trainer.default_root_dir={run}",
    ]
    code = run_cli(["fit", *FAMILY, *blob_source_args, *TINY, *args])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("galgen: error: glow model")
    assert "2 updates in a row" in err[-1] and str(run / "checkpoints" / "last.ckpt") in err[-1]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "diverged" and "glow model" in status["error"]


# --- GPU (skipped without one) ---------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile_mode", [None, "reduce-overhead"])
def test_train_sample_and_invert_on_cuda(compile_mode):
    torch.manual_seed(9)
    pair = GlowPair(image_size=16, n_flow=4, n_block=3, hidden=32, compile_mode=compile_mode)
    good = torch.rand(8, 1, 16, 16)
    batches = [{"a": good, "b": good.flip(-1)} for _ in range(6)]
    trainer = quiet_trainer(max_steps=len(batches), accelerator="gpu", devices=1, limit_val_batches=0)
    trainer.fit(pair, torch.utils.data.DataLoader(batches, batch_size=None))
    assert pair.skipped == {"a": 0, "b": 0}
    pair = pair.cuda()
    whole, parts = pair.sample(12, seed=1), pair.sample(12, seed=1, batch_size=5)
    assert whole.ok_a.all() and torch.allclose(whole.a, parts.a, atol=1e-4)
    result = inversion_statistics(pair.model_a, pair.model_b, pair.latents(torch.arange(16, device="cuda"), seed=0))
    assert all(result["a"]["w1"][k]["z_za"] < 1e-4 for k in range(3))


# ----------------------------------------------------------------------------- GPU-path options
def test_channels_last_and_fused_adam_leave_the_bits_per_dim_unchanged():
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    noise = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    bpd = {}
    for name, options in (("plain", {}), ("fast", {"channels_last": True, "fused_adam": True})):
        torch.manual_seed(4)
        pair = GlowPair(image_size=8, n_flow=2, n_block=2, hidden=8, **options)
        opt = pair.configure_optimizers()
        assert opt.defaults["fused"] == bool(options)  # the default on a CPU: foreach Adam, as before
        for _ in range(3):
            loss = pair.bits_per_dim("a", x, noise)[0].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        bpd[name] = pair.bits_per_dim("a", x, noise)[0]
        assert pair.sample(3, seed=1).a.shape == (3, 1, 8, 8)
    assert torch.allclose(bpd["plain"], bpd["fast"], atol=1e-4), bpd


def test_compile_alone_or_through_compile_mode():
    assert GlowPair(image_size=8, n_flow=1, n_block=2, hidden=4, compile=True).compile_networks
    assert GlowPair(image_size=8, n_flow=1, n_block=2, hidden=4, compile_mode="default").compile_networks  # older configs
    assert not GlowPair(image_size=8, n_flow=1, n_block=2, hidden=4).compile_networks


@pytest.mark.slow
def test_glow_benchmark_runs_on_the_cpu_with_the_option_flags():
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_glow.py"
    run = subprocess.run(
        [sys.executable, str(bench), "--device", "cpu", "--image-size", "8", "--n-flow", "1", "--n-block", "2", "--hidden", "8",
         "--batch-size", "4", "--steps", "1", "--warmup", "1", "--threads", "1", "--channels-last", "--fused-adam"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (result,) = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert result["options"] == {"channels_last": True, "fused_adam": True, "compile": False}
    assert result["images_per_s"] > 0 and result["skipped_steps"] == {"a": 0, "b": 0}
    built = GlowPair(image_size=8, n_flow=1, n_block=2, hidden=8)  # the flags reach the options they name
    assert result["params_per_model"] == sum(p.numel() for p in built.model_a.parameters())
