"""Throughput of the diffusion pair: training images/s per model and sampler evaluations/s.

Prints one JSON object. Two profiles:
- ``--size small`` (CPU): 32 px, 3-block U-Net of width 16, batch 32;
- ``--size full`` (GPU): the paper's 64 px, 7.66 M-parameter U-Net, batch 512.

The training loop is galgen's own ``DiffusionPair.training_step`` (both models per step) with the
data resident on the device; the sampler is ``DiffusionPair.generate`` run for a fixed number
of steps (stopping disabled) on a batch of samples, each with its own noise stream. On one H200
the reference does 5,798 training img/s (fp32, batch 512) and 368 sampler evaluations/s (one
image at a time).

    python benchmarks/bench_diffusion.py --device cpu --size small
    python benchmarks/bench_diffusion.py --device cuda --size full --bf16 --channels-last
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
from _timing import peak_memory_mb, sync  # benchmarks/_timing.py

from galgen_lightning.models.diffusion import DiffusionPair

PROFILES = {
    "small": dict(image_size=32, blocks=3, width=16, batch_size=32, sample_batch=32, train_steps=10, sample_steps=10),
    "full": dict(image_size=64, blocks=3, width=64, batch_size=512, sample_batch=512, train_steps=50, sample_steps=50),
}






def bench_training(pair: DiffusionPair, data: torch.Tensor, batch: int, steps: int, bf16: bool, warmup: int = 3) -> float:
    """Images per second per model of the pair's training step (forward, backward, Adam)."""
    device = data.device
    opt = torch.optim.Adam(pair.parameters(), lr=1e-3)

    def step() -> None:
        ia = torch.randint(0, len(data), (batch,), device=device)
        ib = torch.randint(0, len(data), (batch,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = pair.training_step({"a": data[ia], "b": data[ib]}, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - t)


def bench_sampler(pair: DiffusionPair, batch: int, steps: int) -> float:
    """Denoiser evaluations per second of the batched sampler (one model)."""
    pair.hparams.sigma_final = 0.0  # never stop: time a fixed number of steps
    pair.hparams.max_steps = steps
    pair.hparams.check_every = steps
    idx = torch.arange(batch, device=pair.device)
    pair.eval()
    with torch.no_grad():
        pair.hparams.max_steps = 2
        pair.generate("a", idx, 0)  # warm-up
        pair.hparams.max_steps = steps
        sync(pair.device)
        t = time.perf_counter()
        pair.generate("a", idx, 0)
        sync(pair.device)
    return batch * (steps + 1) / (time.perf_counter() - t)


def main() -> None:
    warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step outside a Trainer
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=sorted(PROFILES), default="small")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--sample-steps", type=int, default=None)
    parser.add_argument("--sample-batch", type=int, default=None)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for training (the sampler uses bf16 on CUDA)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the two U-Nets")
    args = parser.parse_args()

    prof = dict(PROFILES[args.size])
    for key in ("batch_size", "train_steps", "sample_steps", "sample_batch"):
        if getattr(args, key) is not None:
            prof[key] = getattr(args, key)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    pair = DiffusionPair(
        image_size=prof["image_size"], blocks=prof["blocks"], width=prof["width"], channels_last=args.channels_last
    ).to(device)
    if args.compile:
        pair.model_a = torch.compile(pair.model_a)
        pair.model_b = torch.compile(pair.model_b)
    data = torch.rand(2048, 1, prof["image_size"], prof["image_size"], device=device)
    train = bench_training(pair, data, prof["batch_size"], prof["train_steps"], args.bf16)
    sampler = bench_sampler(pair, prof["sample_batch"], prof["sample_steps"])
    result = {
        "benchmark": "diffusion",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        **prof,
        "parameters_per_model": sum(p.numel() for p in pair.model_a.parameters()),
        "bf16": args.bf16,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "train_img_per_s_per_model": round(train, 2),
        "train_img_per_s_pair": round(2 * train, 2),
        "sampler_evaluations_per_s": round(sampler, 2),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
