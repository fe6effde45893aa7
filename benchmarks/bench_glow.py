"""Training throughput and peak memory of the Glow pair (or one Glow), printed as JSON.

It runs the pair's own training step (``GlowPair.training_step``: both models' bits/dim, the
one host synchronisation of the non-finite check, then backward, the gradient check of
``on_before_optimizer_step`` and Adam), without Lightning's loop around it, on random images
that stay on the device. The first step (ActNorm data initialisation) and ``--warmup`` more
are not timed.

Examples:
    python benchmarks/bench_glow.py --device cpu --image-size 16 --n-flow 4 --n-block 3 --hidden 64
    python benchmarks/bench_glow.py --device cuda --batch-size 16            # the paper's model
    python benchmarks/bench_glow.py --device cuda --batch-size 64 --compile  # CUDA graphs
    python benchmarks/bench_glow.py --device cuda --batch-size 64 --no-fused-adam --channels-last

The pair's GPU-path options (docs/gpu.md) are flags: ``--channels-last``, ``--compile`` (with
``--compile-mode``) and ``--fused-adam``/``--no-fused-adam`` (neither: the family's default,
fused on CUDA only).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import time
import warnings

import torch
from _timing import sync  # benchmarks/_timing.py

from galgen_lightning.models.glow import GlowPair


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {
            "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_memory_kind": "torch.cuda.max_memory_allocated",
        }
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_memory_mib": kib / 1024, "peak_memory_kind": "ru_maxrss (whole process)"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="images per model per step")
    parser.add_argument("--n-flow", type=int, default=32)
    parser.add_argument("--n-block", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--affine", action="store_true", help="affine coupling (default additive)")
    parser.add_argument(
        "--models",
        choices=["pair", "one"],
        default="pair",
        help="train A and B (as galgen does) or only A (as the reference loop)",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps after the initialisation step (compilation happens here)"
    )
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile both flows")
    parser.add_argument("--channels-last", action="store_true", help="model.channels_last")
    parser.add_argument(
        "--fused-adam", action=argparse.BooleanOptionalAction, default=None, help="model.fused_adam (default: the family's)"
    )
    parser.add_argument("--compile-mode", default="reduce-overhead", help="torch.compile mode (reduce-overhead: CUDA graphs)")
    parser.add_argument(
        "--compile-scope",
        choices=["step", "model"],
        default="step",
        help="compile each step of flow (identical steps share one graph: short compilation) or the whole flow",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*self.log.*")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    options = {"channels_last": args.channels_last, **({} if args.fused_adam is None else {"fused_adam": args.fused_adam})}
    pair = GlowPair(
        n_flow=args.n_flow, n_block=args.n_block, hidden=args.hidden, affine=args.affine, image_size=args.image_size, **options
    ).to(device)
    pair.train()
    n_params = sum(p.numel() for p in pair.model_a.parameters())
    models = ("a", "b") if args.models == "pair" else ("a",)
    params = [p for w in models for p in pair.model(w).parameters()]
    opt = pair.make_adam(params, lr=pair.hparams.lr)  # as GlowPair.configure_optimizers
    pool = torch.rand(8, args.batch_size, 1, args.image_size, args.image_size, device=device)  # resident data

    def step(i: int) -> None:
        x = pool[i % len(pool)]
        batch = {"a": x, "b": pool[(i + 1) % len(pool)]}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            if args.models == "pair":
                loss = pair.training_step(batch, i)  # includes the non-finite check (one sync)
            else:
                bpd, _ = pair.bits_per_dim("a", x)
                loss = bpd.mean()
        if loss is not None:
            loss.backward()
        if args.models == "pair":
            pair.on_before_optimizer_step(opt)  # gradient check
            pair.guard.end_step(pair)  # count skipped updates
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)  # ActNorm data initialisation, eager
    if args.compile:
        for w in models:
            if args.compile_scope == "model":
                setattr(pair, f"model_{w}", torch.compile(pair.model(w), mode=args.compile_mode))
        if args.compile_scope == "step":
            pair.compile_steps(args.compile_mode)  # what GlowPair(compile_mode=...) does in training
    t0 = time.perf_counter()
    for i in range(1, 1 + args.warmup):
        step(i)
    sync(device)
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(1 + args.warmup, 1 + args.warmup + args.steps):
        t = time.perf_counter()
        step(i)
        sync(device)
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    images = args.batch_size * len(models)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "n_flow": args.n_flow,
        "n_block": args.n_block,
        "hidden": args.hidden,
        "affine": args.affine,
        "models": args.models,
        "params_per_model": n_params,
        "bf16": args.bf16,
        "compile": f"{args.compile_scope}:{args.compile_mode}" if args.compile else False,
        "options": {
            "channels_last": args.channels_last,
            "fused_adam": bool(opt.defaults.get("fused")),
            "compile": f"{args.compile_scope}:{args.compile_mode}" if args.compile else False,
        },
        "steps": args.steps,
        "warmup_s": round(warmup_s, 3),
        "step_s_median": round(median, 5),
        "step_s_mean": round(statistics.mean(times), 5),
        "images_per_s": round(images / median, 2),
        "images_per_s_per_model": round(args.batch_size / median, 2),
        "skipped_steps": dict(pair.skipped),
        **peak_memory(device),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
