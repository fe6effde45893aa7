"""Throughput of the diffusion pair: training images/s per model and sampler evaluations/s.

Prints one JSON line per measured option set. Two profiles:
- ``--size small`` (CPU): 32 px, 3-block U-Net of width 16, batch 32;
- ``--size full`` (GPU): the paper's 64 px, 7.66 M-parameter U-Net, batch 512.

The training loop is galgen's own ``DiffusionPair.training_step`` (both models per step) with the
data resident on the device and the pair's own optimizer (``configure_optimizers``); the sampler
is ``DiffusionPair.generate`` run for a fixed number of steps (stopping disabled) on a batch of
samples, each with its own noise stream. On one H200 the reference does 5,798 training img/s
(fp32, batch 512) and 368 sampler evaluations/s (one image at a time).

The GPU-path options of the pair (docs/gpu.md) are flags: ``--channels-last``,
``--fused-adam``/``--no-fused-adam`` (neither: the family's default, the foreach Adam), ``--compile``
(the training step's U-Nets) and ``--sampler-graph``
(CUDA only: the sampler step's denoiser as a CUDA graph; the line also gives the largest
difference of its samples from the eager sampler's). ``--bf16`` runs training and sampling
under bf16 autocast, what ``trainer.precision: bf16-mixed`` gives. ``--variants`` measures
several option sets in one process, each on top of the flags, one line each:

    python benchmarks/bench_diffusion.py --device cpu --size small
    python benchmarks/bench_diffusion.py --device cuda --size full --bf16 --variants base,channels_last,fused_adam
    python benchmarks/bench_diffusion.py --device cuda --size full --bf16 --sampler-graph
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings

import torch
from _timing import peak_memory_mb, reset_peak_memory, sync  # benchmarks/_timing.py

from galgen_lightning.errors import GalgenError
from galgen_lightning.models.diffusion import DiffusionPair

PROFILES = {
    "small": dict(image_size=32, blocks=3, width=16, batch_size=32, sample_batch=32, train_steps=10, sample_steps=10),
    "full": dict(image_size=64, blocks=3, width=64, batch_size=512, sample_batch=512, train_steps=50, sample_steps=50),
}
OPTIONS = ("channels_last", "fused_adam", "compile", "sampler_graph")
VARIANTS = {"base": {}, **{name: {name: True} for name in OPTIONS}}
"""Named option sets of ``--variants``: ``base`` (the flags alone) or one option switched on."""


def bench_training(
    pair: DiffusionPair, opt: torch.optim.Optimizer, data: torch.Tensor, batch: int, steps: int, bf16: bool, warmup: int = 3
) -> float:
    """Images per second per model of the pair's training step (forward, backward, the pair's Adam)."""
    device = data.device

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


def _run_sampler(pair: DiffusionPair, idx: torch.Tensor, steps: int, bf16: bool) -> torch.Tensor:
    pair.hparams.max_steps = steps
    with torch.no_grad(), torch.autocast(pair.device.type, dtype=torch.bfloat16, enabled=bf16):
        return pair.generate("a", idx, 0)[0]


def bench_sampler(pair: DiffusionPair, batch: int, steps: int, bf16: bool) -> float:
    """Denoiser evaluations per second of the batched sampler (one model)."""
    pair.hparams.sigma_final = 0.0  # never stop: time a fixed number of steps
    pair.hparams.check_every = steps
    idx = torch.arange(batch, device=pair.device)
    pair.eval()
    _run_sampler(pair, idx, 3, bf16)  # warm-up (and the graph's capture under sampler_graph)
    sync(pair.device)
    t = time.perf_counter()
    _run_sampler(pair, idx, steps, bf16)
    sync(pair.device)
    return batch * (steps + 1) / (time.perf_counter() - t)


def graph_difference(pair: DiffusionPair, batch: int, steps: int, bf16: bool) -> float:
    """Largest difference between the graph sampler's samples and the eager sampler's."""
    idx = torch.arange(batch, device=pair.device)
    graph = _run_sampler(pair, idx, steps, bf16)
    pair.hparams.sampler_graph = False
    try:
        eager = _run_sampler(pair, idx, steps, bf16)
    finally:
        pair.hparams.sampler_graph = True
    return float((graph - eager).abs().max())


def measure(prof: dict, device: torch.device, bf16: bool, options: dict[str, bool | None]) -> dict:
    """One JSON record: training and sampler throughput of a pair built with ``options``
    (``fused_adam: None``: the family's default; the record gives what the optimizer used)."""
    torch.manual_seed(0)
    reset_peak_memory(device)
    chosen = {key: value for key, value in options.items() if value is not None}
    pair = DiffusionPair(image_size=prof["image_size"], blocks=prof["blocks"], width=prof["width"], **chosen).to(device)
    if options["compile"]:
        pair.compile_for_training()  # what ``compile: true`` does at fit start
    opt = pair.configure_optimizers()["optimizer"]
    data = torch.rand(2048, 1, prof["image_size"], prof["image_size"], device=device)
    t0 = time.perf_counter()
    train = bench_training(pair, opt, data, prof["batch_size"], prof["train_steps"], bf16)
    sampler = bench_sampler(pair, prof["sample_batch"], prof["sample_steps"], bf16)
    result = {
        "benchmark": "diffusion",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        **prof,
        "parameters_per_model": sum(p.numel() for p in pair.model_a.parameters()),
        "bf16": bf16,
        "options": {**options, "fused_adam": bool(opt.defaults.get("fused"))},
        "train_img_per_s_per_model": round(train, 2),
        "train_img_per_s_pair": round(2 * train, 2),
        "sampler_evaluations_per_s": round(sampler, 2),
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
    }
    if options["sampler_graph"]:
        result["sampler_graph_max_abs_diff"] = graph_difference(
            pair, prof["sample_batch"], 5, bf16
        )  # the timed shape: no recompilation
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step outside a Trainer
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=sorted(PROFILES), default="small")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--sample-steps", type=int, default=None)
    parser.add_argument("--sample-batch", type=int, default=None)
    parser.add_argument(
        "--bf16", action="store_true", help="bf16 autocast for training and sampling (trainer precision bf16-mixed)"
    )
    parser.add_argument("--channels-last", action="store_true", help="model.channels_last")
    parser.add_argument(
        "--fused-adam", action=argparse.BooleanOptionalAction, default=None, help="model.fused_adam (default: the family's)"
    )
    parser.add_argument("--compile", action="store_true", help="model.compile: torch.compile the two U-Nets for training")
    parser.add_argument("--sampler-graph", action="store_true", help="model.sampler_graph: the sampler step as a CUDA graph")
    parser.add_argument("--variants", default="base", help=f"option sets to measure, comma-separated, from {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)

    prof = dict(PROFILES[args.size])
    for key in ("batch_size", "train_steps", "sample_steps", "sample_batch"):
        if getattr(args, key) is not None:
            prof[key] = getattr(args, key)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    results = []
    for name in names:
        options = {key: VARIANTS[name].get(key, getattr(args, key)) for key in OPTIONS}
        try:
            result = measure(prof, device, args.bf16, options)
        except GalgenError as e:
            print(f"bench_diffusion: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        print(json.dumps({"variant": name, **result}), flush=True)
        results.append(result)
        with contextlib.suppress(Exception):
            torch._dynamo.reset()  # the next variant compiles afresh
    return results


if __name__ == "__main__":
    main()
