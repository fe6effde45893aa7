"""Throughput of the light-weight GAN pair: training images/s and peak memory.

Prints one JSON object. Two profiles:
- ``--size small`` (CPU): 32 px, a small light-weight GAN (latent 64, at most 64 channels,
  attention at 16 px with 2 heads of 16), batch 16;
- ``--size full`` (GPU): the paper's 64 px model (generator 23.6 M, discriminator 11.7 M
  parameters), batch 64.

The loop is galgen's own ``GANPair.training_step`` run by a Lightning ``Trainer`` (manual
optimization, four optimizers, DiffAugment at the N = 1,000 probability, the gradient penalty
every 4th batch), with the training images resident on the device. One batch trains both
models: ``pair img/s = 2 * batch / seconds per batch``. Time ``--steps`` batches after
``--warmup`` (keep ``--steps`` a multiple of 4 so the penalty batches are counted fairly).
The reference loop does 109 img/s (one model, fp32, batch 64) on one H200. The pair's
GPU-path options (docs/gpu.md) are flags: ``--channels-last``, ``--compile`` and
``--fused-adam``/``--no-fused-adam`` (neither: the family's default, fused on CUDA only).

    python benchmarks/bench_gan.py --device cpu --size small
    python benchmarks/bench_gan.py --device cuda --size full --bf16 --channels-last --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import lightning as L
import torch

from galgen_lightning.models.gan import GANPair
from galgen_lightning.models.gan.network import auto_aug_prob

PROFILES = {
    "small": dict(
        image_size=32,
        latent_dim=64,
        fmap_max=64,
        fmap_inverse_coef=9,
        attn_sizes=[16],
        attn_heads=2,
        attn_dim_head=16,
        small_width=16,
        decoder_upsamples=2,
        batch_size=16,
        steps=8,
        warmup=2,
    ),
    "full": dict(
        image_size=64,
        latent_dim=256,
        fmap_max=512,
        fmap_inverse_coef=12,
        attn_sizes=[32],
        attn_heads=8,
        attn_dim_head=64,
        small_width=64,
        decoder_upsamples=4,
        batch_size=64,
        steps=40,
        warmup=8,
    ),
}
MODEL_KEYS = (
    "image_size",
    "latent_dim",
    "fmap_max",
    "fmap_inverse_coef",
    "attn_sizes",
    "attn_heads",
    "attn_dim_head",
    "small_width",
    "decoder_upsamples",
)


class ResidentBatches:
    """``length`` random training batches ``{"a", "b"}`` drawn from image pools on the device."""

    def __init__(self, pool_a: torch.Tensor, pool_b: torch.Tensor, batch: int, length: int) -> None:
        self.pool_a, self.pool_b, self.batch, self.length = pool_a, pool_b, batch, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        for _ in range(self.length):
            ia = torch.randint(0, len(self.pool_a), (self.batch,), device=self.pool_a.device)
            ib = torch.randint(0, len(self.pool_b), (self.batch,), device=self.pool_b.device)
            yield {"a": self.pool_a[ia], "b": self.pool_b[ib]}


class Timer(L.Callback):
    """Wall time of the batches after ``warmup`` (device synchronised), and peak memory from then."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.stop: float | None = None
        self.batches = 0

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == self.warmup:
            self._sync(pl_module)
            if pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(pl_module.device)
            self.start = time.perf_counter()
        elif batch_idx + 1 > self.warmup:
            self._sync(pl_module)
            self.stop = time.perf_counter()
            self.batches += 1


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--size", choices=sorted(PROFILES), default=None, help="profile (default: small on cpu, full on cuda)")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="images per model per batch")
    parser.add_argument("--steps", type=int, default=None, help="timed batches (4 optimizer steps each)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed batches first (compilation, cuDNN autotuning)")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per batch")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (Lightning precision bf16-mixed)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile G and D (penalty batches stay eager)")
    parser.add_argument(
        "--fused-adam", action=argparse.BooleanOptionalAction, default=None, help="model.fused_adam (default: the family's)"
    )
    parser.add_argument("--n", type=int, default=1000, help="N whose automatic DiffAugment probability is used")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    prof = dict(PROFILES[args.size or ("full" if device.type == "cuda" else "small")])
    for key in ("image_size", "batch_size", "steps", "warmup"):
        if getattr(args, key) is not None:
            prof[key] = getattr(args, key)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    model = {k: prof[k] for k in MODEL_KEYS}
    pair = GANPair(
        **model,
        accumulate=args.accumulate,
        aug_prob=auto_aug_prob(args.n),
        channels_last=args.channels_last,
        compile=args.compile,
        **({} if args.fused_adam is None else {"fused_adam": args.fused_adam}),
    )
    size = prof["image_size"]
    pools = [torch.rand(1024, 1, size, size, device=device) ** 3 for _ in range(2)]  # resident training images
    batches = prof["warmup"] + prof["steps"]
    timer = Timer(prof["warmup"])
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision="bf16-mixed" if args.bf16 else "32-true",
        max_steps=4 * batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=50,
        callbacks=[timer],
    )
    trainer.fit(pair, train_dataloaders=ResidentBatches(pools[0], pools[1], prof["batch_size"], batches))
    assert timer.start is not None and timer.stop is not None and timer.batches == prof["steps"]
    seconds = (timer.stop - timer.start) / timer.batches
    counts = pair.parameter_counts()
    result = {
        "benchmark": "gan",
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        **prof,
        "accumulate": args.accumulate,
        "generator_parameters": counts["generator"],
        "discriminator_parameters": counts["discriminator"],
        "bf16": args.bf16,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "options": {
            "channels_last": args.channels_last,
            "fused_adam": bool(trainer.optimizers[0].defaults.get("fused")),
            "compile": args.compile,
        },
        "aug_prob": round(pair.aug_prob, 4),
        "global_step": trainer.global_step,
        "seconds_per_batch": round(seconds, 4),
        "pair_img_per_s": round(2 * prof["batch_size"] / seconds, 2),
        "per_model_img_per_s": round(prof["batch_size"] / seconds, 2),
        "peak_memory_mib": round(peak_memory_mib(device), 1),
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "ru_maxrss (whole process)",
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
