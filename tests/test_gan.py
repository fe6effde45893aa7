"""The light-weight GAN pair and the four-way discriminator test, with tiny models at 16 px."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support import CONFIGS, quiet_trainer, read_jsonl, run_cli

from galgen_lightning.evaluation.discriminator import CURVES, DiscriminatorTest, discriminator_losses, discriminator_statistics
from galgen_lightning.models.base import count_parameters
from galgen_lightning.models.gan import Discriminator, GANPair, Generator, Plan, discriminator_objective
from galgen_lightning.models.gan.network import auto_aug_prob, diff_augment, generator_loss, hinge_loss, hinge_per_sample

TINY_MODEL = dict(
    image_size=16,
    latent_dim=16,
    fmap_max=16,
    fmap_inverse_coef=7,
    attn_sizes=[16],
    attn_heads=1,
    attn_dim_head=8,
    small_width=8,
    decoder_upsamples=1,
    sample_batch_size=16,
)


def tiny_pair(**overrides) -> GANPair:
    torch.manual_seed(0)
    return GANPair(**{**TINY_MODEL, **overrides})


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions run faster on one thread (and on a busy machine, much faster)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- losses
def test_hinge_signs_and_the_value_two():
    zeros = torch.zeros(5)
    assert torch.equal(hinge_per_sample(zeros, zeros), torch.full((5,), 2.0))
    assert hinge_loss(zeros, zeros).item() == 2.0
    # the reference's convention: real images are pushed below -1, generated ones above +1
    assert hinge_loss(torch.full((5,), -1.0), torch.full((5,), 1.0)).item() == 0.0
    assert hinge_loss(torch.full((5,), 1.0), torch.full((5,), -1.0)).item() == 4.0
    # the generator lowers D(fake)
    assert generator_loss(torch.tensor([0.5, 1.5])).item() == 1.0

    def silent(x, reconstruct=False):  # a discriminator that cannot tell: 0 on both heads
        z = x.sum(dim=(1, 2, 3)) * 0
        return z, z, (z.sum() if reconstruct else None)

    real, fake = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)
    out = discriminator_objective(silent, real, fake, lambda x: x)
    assert out["hinge"].item() == 4.0  # 2 per head, two heads
    assert out["loss"].item() == 4.0
    with_gp = discriminator_objective(silent, real, fake, lambda x: x, gp_weight=10.0)
    assert with_gp["gp"].item() == 0.0


def test_auto_augmentation_probability():
    assert auto_aug_prob(1000) == pytest.approx(min(0.5, 99000 * 3e-6))
    assert auto_aug_prob(10) == pytest.approx(0.29997)  # the min with 0.5 never binds: at most 0.3
    assert auto_aug_prob(100000) == 0.0


def test_diff_augment_is_differentiable_and_optional():
    x = torch.rand(6, 1, 16, 16, requires_grad=True)
    assert diff_augment(x, 0.0, ["translation", "cutout"]) is x
    y = diff_augment(x, 1.0, ["translation", "cutout"])
    assert y.shape == x.shape and (y == 0).any()
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- networks
def test_paper_size_parameter_counts():
    G = Generator(Plan(64, 1, attn_sizes=(32,)), latent_dim=256)
    D = Discriminator(Plan(64, 1, attn_sizes=(32,)))
    assert count_parameters(G) == 23_613_317  # design notes: 23.6 M
    assert count_parameters(D) == 11_723_108  # design notes: 11.7 M


def test_skip_layer_excitation_starts_at_128_px():
    small = dict(fmap_max=8, fmap_inverse_coef=6, attn_sizes=())
    assert len(Generator(Plan(64, **small), latent_dim=8).sle) == 0
    g128 = Generator(Plan(128, **small), latent_dim=8)
    assert g128.sle_pairs == {16: 128}
    assert g128(torch.randn(2, 8)).shape == (2, 1, 128, 128)


# ----------------------------------------------------------------------------- sampling
def test_same_latents_for_a_and_b_and_batch_size_invariance():
    pair = tiny_pair()
    one = pair.sample(6, seed=3, batch_size=6)
    two = pair.sample(6, seed=3, batch_size=4)
    assert torch.equal(one.a, two.a) and torch.equal(one.b, two.b)
    assert one.a.shape == (6, 1, 16, 16) and one.a.min() >= 0 and one.a.max() <= 1
    assert not torch.equal(one.a, one.b)  # independent initialisations
    # give B the weights of A: the same latents and noise must then give the same images
    pair.model_b.load_state_dict(pair.model_a.state_dict())
    same = pair.sample(6, seed=3, batch_size=5)
    assert torch.equal(same.a, same.b)
    assert not torch.equal(pair.sample(6, seed=4).a, same.a)


# ----------------------------------------------------------------------------- the four-way test
def _reals(n: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {s: torch.rand(n, 1, 16, 16, generator=g) for s in ("a", "b", "val")}


def test_swapping_a_and_b_swaps_the_curves():
    pair, reals = tiny_pair(), _reals()
    losses = discriminator_losses(pair, reals, n=12, seed=5, batch_size=5)
    pair.model_a, pair.model_b = pair.model_b, pair.model_a
    swapped = discriminator_losses(pair, {"a": reals["b"], "b": reals["a"], "val": reals["val"]}, n=12, seed=5, batch_size=12)
    for key, twin in (("da_ga", "db_gb"), ("da_gb", "db_ga"), ("db_gb", "da_ga"), ("db_ga", "da_gb"), ("da_val", "db_val")):
        np.testing.assert_allclose(swapped[key], losses[twin], rtol=1e-5, atol=1e-6)
    stats = discriminator_statistics(losses)
    assert {f"{c}_mean" for c in CURVES} <= stats.keys()
    assert stats["score"] == max(stats["max_w1"], stats["max_mean_dev"])
    assert stats["max_mean_gap"] >= 0 and np.isfinite(stats["overfit_a"])


def test_a_discriminator_that_cannot_tell_scores_two_everywhere():
    pair = tiny_pair()
    pair.discriminator_scores = lambda which, images, head="main": torch.zeros(len(images))
    losses = discriminator_losses(pair, _reals(), n=7)
    for key in CURVES:
        assert np.all(losses[key] == 2.0)
    stats = discriminator_statistics(losses)
    assert stats["score"] == 0.0 and stats["max_mean_dev"] == 0.0 and stats["da_ga_mean"] == 2.0


@pytest.mark.parametrize("broken", CURVES)
def test_a_curve_with_no_finite_loss_makes_the_convergence_numbers_nan(broken):
    """Whichever curve blew up, the monitored numbers say so (NaN), never a healthy-looking value."""
    rng = np.random.default_rng(0)
    losses = {c: 2 + 0.1 * rng.normal(size=16) for c in CURVES}
    losses[broken] = np.full(16, np.nan)
    stats = discriminator_statistics(losses)
    assert all(np.isnan(stats[k]) for k in ("max_mean_dev", "max_mean_gap", "max_w1", "score"))
    assert stats[f"{broken}_nonfinite"] == 16


# ----------------------------------------------------------------------------- training
class _Pairs:
    """A fixed list of training batches ``{"a", "b"}`` for a Trainer."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def test_a_few_steps_lower_the_discriminator_loss():

    pair = tiny_pair(lr=2e-3, aug_prob=0.0, gp_every=1000)
    g = torch.Generator().manual_seed(2)
    real = {m: 0.8 * torch.rand(8, 1, 16, 16, generator=g) ** 4 for m in ("a", "b")}  # fixed "galaxies"

    def d_loss() -> float:
        pair.eval()
        fake = pair.fake_images("a", torch.arange(8), seed=9, ema=False)
        loss = hinge_per_sample(pair.discriminator_scores("a", real["a"]), pair.discriminator_scores("a", fake)).mean().item()
        pair.train()
        return loss

    before = d_loss()
    trainer = quiet_trainer(max_steps=4 * 12, limit_val_batches=0)
    trainer.fit(pair, train_dataloaders=_Pairs([real] * 12))
    assert trainer.global_step == 4 * 12  # four optimizer steps (G_A, D_A, G_B, D_B) per batch
    after = d_loss()
    assert after < before - 0.1, (before, after)


def test_monitor_key_reaches_model_checkpoint(tmp_path, blob_file):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from galgen_lightning.data import ArrayFile, GalaxyPairDataModule

    dm = GalaxyPairDataModule(ArrayFile(str(blob_file)), image_size=16, n=8, n_val=16, batch_size=4)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="discriminator/score", mode="min")
    test = DiscriminatorTest(n_samples=8)
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[test, ckpt],
        default_root_dir=tmp_path,
        enable_checkpointing=True,
    )
    trainer.fit(tiny_pair(), datamodule=dm)
    assert trainer.global_step == 8
    assert ckpt.best_model_score is not None and torch.isfinite(ckpt.best_model_score)
    assert "val/hinge_a" in trainer.callback_metrics
    record = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["test"] == "discriminator"][0]
    assert record["score"] == pytest.approx(float(ckpt.best_model_score), rel=1e-6)


# ----------------------------------------------------------------------------- the CLI
FAMILY = [f"--config={CONFIGS / 'gan.yaml'}", f"--config={CONFIGS / 'quick' / 'gan.yaml'}"]
TINY = [
    "--data.n=8",
    "--data.n_val=32",
    "--data.batch_size=4",
    "--model.init_args.latent_dim=16",
    "--model.init_args.fmap_max=16",
    "--model.init_args.fmap_inverse_coef=7",
    "--model.init_args.attn_heads=1",
    "--model.init_args.attn_dim_head=8",
    "--model.init_args.small_width=8",
    "--model.init_args.decoder_upsamples=1",
    "--model.init_args.attn_sizes=[16]",
    "--trainer.fast_dev_run=true",
]


@pytest.mark.cli  # a whole galgen command: make test, not make test-fast
def test_cli_fast_dev_run_writes_the_discriminator_test(tmp_path, blob_file):
    run = tmp_path / "run"
    source = ["--data.source=galgen_lightning.data.ArrayFile", f"--data.source.path={blob_file}", "--data.image_size=16"]
    code = run_cli(["fit", *FAMILY, *source, *TINY, f"--trainer.default_root_dir={run}"])
    assert code == 0
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    assert "GANPair" in (run / "config.yaml").read_text()
    records = read_jsonl(run / "metrics.jsonl")
    assert {r["test"] for r in records} == {"two_models", "discriminator"}
    disc = [r for r in records if r["test"] == "discriminator"][0]
    assert {"score", "max_w1", "max_mean_dev", "da_ga_mean", "db_ga_std", "da_val_mean"} <= disc.keys()
    folder = run / "eval" / "discriminator"
    assert (folder / "epoch_0000.png").stat().st_size > 1000
    arrays = np.load(folder / "epoch_0000.npz")
    assert set(CURVES) <= set(arrays.files) and arrays["da_ga"].shape == (256,)


@pytest.mark.slow
def test_ddp_two_cpu_processes_with_manual_optimization(tmp_path, blob_file):
    """The four optimizers of the pair under DDP (2 CPU processes, gloo): the run completes,
    the split is the same on both ranks (the DataModule checks it) and the tests log once.

    Each optimizer step of a GAN uses only part of the parameters (D's step leaves G's alone),
    so DDP must look for unused parameters: ``--trainer.strategy ddp_find_unused_parameters_true``
    (plain ``ddp`` stops with Lightning's message saying so)."""
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    source = ["--data.source=galgen_lightning.data.ArrayFile", f"--data.source.path={blob_file}", "--data.image_size=16"]
    tiny = [a for a in TINY if not a.startswith("--trainer.fast_dev_run")]
    cmd = [sys.executable, "-m", "galgen_lightning.cli", "fit", *FAMILY, *source, *tiny]
    cmd += ["--trainer.max_epochs=1", "--data.samples_per_epoch=16", "--trainer.limit_val_batches=1"]
    cmd += [
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp_find_unused_parameters_true",
        f"--trainer.default_root_dir={run}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    records = read_jsonl(run / "metrics.jsonl")
    assert sorted(r["test"] for r in records) == ["discriminator", "two_models"]


# ----------------------------------------------------------------------------- the EMA generator
def _old_ema_update(ema: dict[str, torch.Tensor], live: dict[str, torch.Tensor], beta: float) -> None:
    """The hand-written EMA this family had before AveragedModel: lerp floats, copy integers."""
    for key, value in live.items():
        if value.dtype.is_floating_point:
            ema[key].lerp_(value, 1.0 - beta)
        else:
            ema[key].copy_(value)


def test_ema_through_averaged_model_matches_the_old_formula():
    torch.manual_seed(3)
    net = tiny_pair(ema_beta=0.9).model_a
    net.reset_ema()
    expected = {k: v.clone() for k, v in net.G.state_dict().items()}
    for _ in range(4):
        with torch.no_grad():  # move the live generator: parameters, running statistics and counters
            for p in net.G.parameters():
                p.add_(0.1 * torch.randn_like(p))
            net.G.train()(torch.randn(4, 16))
        net.update_ema()
        _old_ema_update(expected, net.G.state_dict(), 0.9)
    got = net.generator_ema.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.allclose(got[key].double(), value.double(), rtol=0, atol=1e-7), key
    assert int(net.G_ema.n_averaged) == 5
    net.reset_ema()
    assert all(torch.equal(a, b) for a, b in zip(net.generator_ema.state_dict().values(), net.G.state_dict().values()))
    assert not any(p.requires_grad for p in net.G_ema.parameters())


def test_ema_schedule_copies_before_ema_start_then_averages_every_ema_every():
    import lightning as L

    class Record(L.Callback):  # after each training batch: the live generator of model A
        states: list[dict[str, torch.Tensor]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.states.append({k: v.clone() for k, v in pl_module.model_a.G.state_dict().items()})

    record = Record()
    pair = tiny_pair(ema_every=2, ema_start=2, ema_beta=0.8, aug_prob=0.0, gp_every=1000)
    g = torch.Generator().manual_seed(5)
    batches = [{m: torch.rand(4, 1, 16, 16, generator=g) for m in ("a", "b")} for _ in range(6)]
    trainer = quiet_trainer(max_steps=4 * 6, limit_val_batches=0, callbacks=[record])
    trainer.fit(pair, train_dataloaders=_Pairs(batches))
    expected = None
    for iteration, state in enumerate(record.states):
        if (iteration + 1) % 2 == 0:
            if iteration + 1 > 2 and expected is not None:
                _old_ema_update(expected, state, 0.8)
            else:
                expected = {k: v.clone() for k, v in state.items()}
    got = pair.model_a.generator_ema.state_dict()
    assert all(torch.allclose(got[k].double(), v.double(), rtol=0, atol=1e-6) for k, v in expected.items())
    assert int(pair.model_a.G_ema.n_averaged) == 3  # a copy at iteration 2, averages at 4 and 6


def test_checkpoints_from_before_averaged_model_still_load():
    old = tiny_pair()
    with torch.no_grad():
        for p in old.model_a.G_ema.parameters():
            p.add_(0.5)  # an EMA generator that differs from the live one
    state = {k.replace("G_ema.module.", "G_ema."): v for k, v in old.state_dict().items() if not k.endswith("G_ema.n_averaged")}
    assert "model_a.G_ema.initial.0.weight" in state  # the old layout
    fresh = tiny_pair(ema_beta=0.5)
    torch.manual_seed(9)
    fresh.load_state_dict(state)  # strict: every old key has its place
    assert int(fresh.model_a.G_ema.n_averaged) == 1  # holds an average: the next update averages
    assert torch.equal(fresh.sample(4, seed=2).a, old.sample(4, seed=2).a)


def test_galgen_sample_reads_a_checkpoint_from_before_averaged_model(tmp_path, capsys):
    """``galgen sample`` on an old GAN checkpoint (``G_ema.<name>`` keys) samples, as the pair does."""
    old = tiny_pair()
    state = {k.replace("G_ema.module.", "G_ema."): v for k, v in old.state_dict().items() if not k.endswith("G_ema.n_averaged")}
    hparams = {**dict(old.hparams), "_class_path": "galgen_lightning.models.gan.GANPair"}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, tmp_path / "old.ckpt")
    out = tmp_path / "samples.npz"
    assert run_cli(["sample", f"--ckpt_path={tmp_path / 'old.ckpt'}", "--n=4", "--seed=2", f"--out={out}"]) == 0
    assert np.array_equal(np.load(out)["a"], old.sample(4, seed=2).a.numpy())


def test_validation_does_not_depend_on_the_batch_size():
    from torch.utils.data import DataLoader

    pair = tiny_pair()
    val = torch.rand(10, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    results = []
    for batch_size in (3, 4, 10):  # short last batches: 3+3+3+1, 4+4+2
        trainer = quiet_trainer()
        (metrics,) = trainer.validate(pair, DataLoader(val, batch_size=batch_size), verbose=False)
        results.append([metrics[f"val/{k}_{m}"] for k in ("d_real", "d_fake", "hinge") for m in ("a", "b")])
    results = torch.tensor(results)
    assert torch.allclose(results, results[:1].expand_as(results), atol=1e-5), results


@pytest.mark.slow
def test_gan_benchmark_runs_on_the_cpu_with_the_option_flags():
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gan.py"
    run = subprocess.run(
        [sys.executable, str(bench), "--device", "cpu", "--size", "small", "--steps", "1", "--warmup", "1", "--batch-size", "4",
         "--threads", "1", "--channels-last", "--fused-adam"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (result,) = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert result["options"] == {"channels_last": True, "fused_adam": True, "compile": False}
    assert result["pair_img_per_s"] > 0 and result["peak_memory_mib"] > 0
