"""The ``galgen fit`` training loop against the bare training step: how much the loop costs.

Prints one JSON object. Both sides train the same diffusion pair on the same batch size:

- ``bare``: ``DiffusionPair.training_step`` + backward + Adam on device-resident data (random
  indices), nothing else: what ``benchmarks/bench_diffusion.py`` times;
- ``fit``: a Lightning ``Trainer.fit`` on :class:`GalaxyPairDataModule` as ``galgen fit`` runs it
  (the DataModule's loader, the module's optimizer and scheduler, ``self.log`` every step,
  gradient clipping off as in the configs), with logging, checkpointing, the progress bar and the
  evaluation callbacks off and no validation; timed from batch ``warmup`` to the last batch.

``loader=device`` is the default DataModule loader (batches gathered on the device),
``loader=dataset`` the per-item ``DataLoader`` over ``TiledPairs``; both are timed (``--loaders``).
The ratio is fit / bare images per second (1.0: the loop costs nothing). Sides alternate
``--repeats`` times and the best of each is kept (other processes on a shared CPU only slow a
measurement down).

The pair's GPU-path options (docs/gpu.md) apply to both sides: ``--channels-last``,
``--fused-adam``/``--no-fused-adam`` (neither: the family's default, the foreach Adam) and
``--compile`` (the U-Nets of the training step).

    python benchmarks/bench_fit.py --device cpu --size small           # 32 px, width 16, batch 32
    python benchmarks/bench_fit.py --device cuda --size full --bf16    # the paper's U-Net, batch 512
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import lightning as L
import numpy as np
import torch
from _timing import peak_memory_mb, sync  # benchmarks/_timing.py

from galgen_lightning.data import GalaxyPairDataModule
from galgen_lightning.data.sources.base import GalaxySource
from galgen_lightning.models.diffusion import DiffusionPair

PROFILES = {
    "small": dict(image_size=32, blocks=3, width=16, batch_size=32, n=512, steps=12, warmup=3),
    "full": dict(image_size=64, blocks=3, width=64, batch_size=512, n=4096, steps=60, warmup=10),
}
OPTIONS = ("channels_last", "fused_adam", "compile")


class SmoothRandom(GalaxySource):
    """Distinct smooth random images in [0, 1] made in memory (no renderer, no cache, no files)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed = size, seed

    def available(self) -> int:
        return self.size

    def load(self, count: int, image_size: int) -> np.ndarray:
        g = torch.Generator().manual_seed(self.seed)
        x = torch.rand(count, 1, image_size // 4, image_size // 4, generator=g)
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        return x[:, 0].clamp(0, 1).numpy()

    def describe(self) -> dict:
        return {"source": "smooth-random", "size": self.size}


def make_pair(prof: dict, options: dict[str, bool | None]) -> DiffusionPair:
    torch.manual_seed(0)
    chosen = {key: value for key, value in options.items() if value is not None}  # None: the family's default
    return DiffusionPair(image_size=prof["image_size"], blocks=prof["blocks"], width=prof["width"], **chosen)


def bare(prof: dict, device: torch.device, bf16: bool, options: dict[str, bool]) -> float:
    """Images per second per model of the bare step on device-resident data (the pair's own optimizer)."""
    pair = make_pair(prof, options).to(device)
    if options["compile"]:
        pair.compile_for_training()  # what ``compile: true`` does at fit start
    data = torch.rand(2 * prof["n"], 1, prof["image_size"], prof["image_size"], device=device)
    opt = pair.configure_optimizers()["optimizer"]
    batch = prof["batch_size"]

    def step() -> None:
        ia = torch.randint(0, len(data), (batch,), device=device)
        ib = torch.randint(0, len(data), (batch,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = pair.training_step({"a": data[ia], "b": data[ib]}, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(prof["warmup"]):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(prof["steps"]):
        step()
    sync(device)
    return batch * prof["steps"] / (time.perf_counter() - t)


class StepTimer(L.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.batches = warmup, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.batches += 1
            sync(pl_module.device)
            self.end = time.perf_counter()


def fit(prof: dict, device: torch.device, bf16: bool, options: dict[str, bool], loader: str, workers: int) -> float:
    """Images per second per model of ``Trainer.fit`` as ``galgen fit`` runs it (timed batches only)."""
    batches = prof["warmup"] + prof["steps"]
    dm = GalaxyPairDataModule(
        SmoothRandom(2 * prof["n"] + 64 + 64),
        image_size=prof["image_size"],
        n=prof["n"],
        n_val=64,
        batch_size=prof["batch_size"],
        samples_per_epoch=batches * prof["batch_size"],
        loader=loader,
        num_workers=workers,
        dedup_threshold=1.0,  # distinct by construction; the split is not what is timed
    )
    timer = StepTimer(prof["warmup"])
    trainer = L.Trainer(
        accelerator=device.type,
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision="bf16-mixed" if bf16 else "32-true",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(make_pair(prof, options), datamodule=dm)
    return prof["batch_size"] * timer.batches / (timer.end - timer.start)


def main() -> None:
    warnings.filterwarnings("ignore", message=".*self.log.*")  # the bare step logs outside a Trainer
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=sorted(PROFILES), default="small")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="alternating measurements of each side; the best is kept")
    parser.add_argument("--loaders", default="device,dataset", help="DataModule loaders to time, comma-separated")
    parser.add_argument("--workers", type=int, default=0, help="num_workers of the dataset loader")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (Trainer precision bf16-mixed)")
    parser.add_argument("--channels-last", action="store_true", help="model.channels_last")
    parser.add_argument(
        "--fused-adam", action=argparse.BooleanOptionalAction, default=None, help="model.fused_adam (default: the family's)"
    )
    parser.add_argument("--compile", action="store_true", help="model.compile: torch.compile the U-Nets of the training step")
    args = parser.parse_args()
    options = {key: getattr(args, key) for key in OPTIONS}

    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    prof = dict(PROFILES[args.size])
    if args.batch_size is not None:
        prof["batch_size"] = args.batch_size
    if args.steps is not None:
        prof["steps"] = args.steps
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    loaders = [x.strip() for x in args.loaders.split(",") if x.strip()]
    best: dict[str, float] = {}
    for _ in range(max(args.repeats, 1)):
        best["bare"] = max(best.get("bare", 0.0), bare(prof, device, args.bf16, options))
        for loader in loaders:
            value = fit(prof, device, args.bf16, options, loader, args.workers)
            best[f"fit_{loader}"] = max(best.get(f"fit_{loader}", 0.0), value)
    result = {
        "benchmark": "fit_loop",
        "family": "diffusion",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        **prof,
        "bf16": args.bf16,
        "options": options,
        "repeats": args.repeats,
        "bare_img_per_s_per_model": round(best["bare"], 2),
        **{f"fit_{ld}_img_per_s_per_model": round(best[f"fit_{ld}"], 2) for ld in loaders},
        **{f"ratio_{ld}": round(best[f"fit_{ld}"] / best["bare"], 3) for ld in loaders},
        "peak_memory_mb": round(peak_memory_mb(device), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
