"""``galgen sweep --plan``: what a sweep costs, per run and in total, before it runs.

The cost of one run is its profile (epochs x steps of ``batch`` images per model, validation
every epoch, the evaluation callbacks every ``every_n_epochs`` and at the last epoch) divided by
a throughput: measured (``--throughput FILE``, the JSON a ``benchmarks/bench_*.py`` script prints,
or ``gpu_checks.sh``'s ``results.jsonl``) or built in (the design notes' H200 reference figures,
labelled as such). Runs are independent: on K GPUs they are dealt longest first, one run per GPU
at a time (DDP inside one run is not modelled).
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from galgen_lightning.data.datamodule import epoch_length
from galgen_lightning.errors import GalgenError
from galgen_lightning.evaluation import TESTS
from galgen_lightning.evaluation.base import SamplingTest

# The design notes' reference figures on one H200 (64 px, their own training loops, one model).
H200_REFERENCE = {
    "diffusion": "U-Net denoiser 5,798 img/s fp32 batch 512, 8,078 img/s bf16 + channels_last",
    "glow": "Glow 49 img/s at batch 16, 200 at batch 64 (0.32 s per step: overhead bound)",
    "gan": "light-weight GAN 67 img/s at batch 10x4, 109 at batch 64",
}
STATMORPH_S_PER_IMAGE = 0.5  # per CPU core (design notes)
CPU_CORES_PER_RUN = 8  # assumed for the morphology test's process pool
DIFFUSION_SAMPLER_STEPS = 150  # assumed typical sampler steps per sample (bounded by max_steps)


@dataclass
class Throughput:
    """Images per second per model of the pair's training step (one step trains both models on
    ``batch`` images each), sampler evaluations per second (diffusion), and where they come from."""

    train: float
    sampler: float | None
    source: str


def builtin_throughput(family: str, batch: int, bf16_channels_last: bool) -> Throughput:
    """The H200 reference figures of the design notes, as a pair's rate (one model's rate / 2)."""
    if family == "diffusion":
        one = 8078.0 if bf16_channels_last else 5798.0
        return Throughput(
            one / 2, 3 * one, f"built-in H200 reference (design notes: {H200_REFERENCE['diffusion']}), not measured"
        )
    if family == "glow":
        return Throughput(
            batch / 0.32 / 2, None, f"built-in H200 reference (design notes: {H200_REFERENCE['glow']}), not measured"
        )
    if family == "gan":
        one = 67.0 if batch <= 40 else 109.0
        return Throughput(one / 2, None, f"built-in H200 reference (design notes: {H200_REFERENCE['gan']}), not measured")
    raise GalgenError(f"sweep --plan: no built-in throughput for {family!r}")


def _json_objects(text: str) -> list[dict]:
    """Every JSON object in ``text`` (one object, several, pretty-printed or JSON lines)."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while True:
        i = text.find("{", i)
        if i < 0:
            return out
        try:
            obj, end = decoder.raw_decode(text, i)
        except ValueError:
            i += 1
            continue
        if isinstance(obj, dict):
            out.append(obj)
        i = end


def read_throughput(path: str, family: str) -> Throughput:
    """The training (and sampler) rate of ``family`` from a benchmark result file.

    Understood: ``bench_fit.py`` (the real fit loop, preferred), ``bench_diffusion.py``,
    ``bench_glow.py`` and ``bench_gan.py`` output; the fastest ``bench_fit.py`` entry of the
    family is used, else the fastest other one.
    """
    try:
        objects = _json_objects(Path(path).read_text())
    except OSError as e:
        raise GalgenError(f"sweep --plan: cannot read --throughput {path}: {e}") from e
    train: list[tuple[float, str]] = []
    sampler: list[float] = []
    for o in objects:
        kind = o.get("benchmark") or ("glow" if "n_flow" in o else None)
        where = f"{path}: {o.get('device', '?')}, batch {o.get('batch_size', '?')}"
        if kind == "fit_loop" and o.get("family", "diffusion") == family and _rate(o.get("fit_device_img_per_s_per_model")):
            train.append((_rate(o["fit_device_img_per_s_per_model"]), f"{where}, galgen fit loop (bench_fit.py)"))
        elif kind == family == "diffusion" and _rate(o.get("train_img_per_s_per_model")):
            train.append((_rate(o["train_img_per_s_per_model"]), f"{where}, bare step (bench_diffusion.py)"))
            if _rate(o.get("sampler_evaluations_per_s")):
                sampler.append(_rate(o["sampler_evaluations_per_s"]))
        elif kind == family == "glow" and _rate(o.get("images_per_s_per_model")):
            rate = _rate(o["images_per_s_per_model"]) / (1 if o.get("models", "pair") == "pair" else 2)
            train.append((rate, f"{where}, bench_glow.py"))
        elif kind == family == "gan" and _rate(o.get("per_model_img_per_s")):
            train.append((_rate(o["per_model_img_per_s"]), f"{where}, bench_gan.py"))
    if not train:
        raise GalgenError(f"sweep --plan: no {family} training throughput in {path} (expected benchmarks/bench_*.py output)")
    loop = [t for t in train if "bench_fit" in t[1]]  # the real loop, when measured, over a bare step
    rate, where = max(loop or train)
    return Throughput(rate, max(sampler) if sampler else None, f"measured ({where})")


@dataclass
class RunProfile:
    """What one run does: ``epochs`` of ``steps_per_epoch`` steps of ``batch`` images per model."""

    batch: int
    epochs: int
    steps_per_epoch: int
    n_val: int
    sampler_steps: int
    tests: list[tuple[str, int, int, int]] = field(default_factory=list)  # (name, every, samples, real)

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def events(self, every: int) -> int:
        """Epochs at which a test with ``every_n_epochs = every`` runs (its multiples and the last)."""
        every = max(every, 1)
        return self.epochs // every + (1 if self.epochs % every else 0)


def default_n_samples(test: str) -> int:
    """A test's ``n_samples`` when a configuration does not say: that test class's own default."""
    cls = {t.__name__: t for t in TESTS}.get(test, SamplingTest)
    parameter = inspect.signature(cls).parameters.get("n_samples")
    if parameter is None or parameter.default is inspect.Parameter.empty:  # it takes n_samples through **kwargs
        parameter = inspect.signature(SamplingTest).parameters["n_samples"]
    return int(parameter.default)


def _optimizer_steps_per_batch(fit: dict) -> int:
    """``PairModule.optimizer_steps_per_batch`` of the family the parsed config names (1 if unknown)."""
    import importlib

    path = str((fit.get("model") or {}).get("class_path") or "")
    try:
        module, name = path.rsplit(".", 1)
        return int(getattr(getattr(importlib.import_module(module), name), "optimizer_steps_per_batch", 1))
    except (ValueError, ImportError, AttributeError):
        return 1


def _rate(value) -> float | None:
    """A throughput figure of a benchmark file: a positive finite number, else None (left out)."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        return None
    return rate if math.isfinite(rate) and rate > 0 else None


def run_profile(fit: dict, n: int) -> RunProfile:
    """The profile of the run with N = ``n`` from the parsed ``galgen fit`` configuration (the
    profile's configs and ``--fit_args``, every default filled in by the parser)."""
    data, trainer = fit.get("data") or {}, fit.get("trainer") or {}
    model = (fit.get("model") or {}).get("init_args") or {}
    batch = int(data["batch_size"])
    per_epoch = epoch_length(n, batch, data.get("samples_per_epoch"))
    steps_per_epoch = per_epoch // batch if per_epoch >= batch else 1
    max_epochs = int(trainer.get("max_epochs") or 0)
    max_epochs = max_epochs if max_epochs > 0 else None  # -1: no epoch limit (max_steps decides)
    max_steps = int(trainer.get("max_steps") or -1)
    if max_steps > 0:  # max_steps counts optimizer steps: 4 per batch for the GAN
        batches = math.ceil(max_steps / _optimizer_steps_per_batch(fit))
        epochs = math.ceil(batches / steps_per_epoch)
        epochs = min(epochs, max_epochs) if max_epochs else epochs
    else:
        epochs = max_epochs or 1000  # Lightning's default when max_epochs and max_steps are unset
    tests = []
    named = [fit.get(test.name) for test in TESTS]  # the tests under their own keys (two_models: ...)
    for cb in [*(trainer.get("callbacks") or []), *named]:
        if not isinstance(cb, dict):
            continue
        name = str(cb.get("class_path", "")).rsplit(".", 1)[-1]
        init = cb.get("init_args") or {}
        if name.endswith("Test"):
            every = init.get("every_n_epochs") or 1
            tests.append((name, int(every), int(init.get("n_samples") or default_n_samples(name)), int(init.get("n_real") or 0)))
    sampler_steps = min(int(model.get("max_steps") or 1000), DIFFUSION_SAMPLER_STEPS)
    return RunProfile(batch, epochs, steps_per_epoch, int(data["n_val"]), sampler_steps, tests)


def run_seconds(family: str, prof: RunProfile, rate: Throughput) -> tuple[float, float]:
    """``(training, evaluation)`` seconds of one run.

    One training image of one model costs ``1 / (2 rate)`` s; a forward pass a third of that.
    Validation: both models on ``n_val`` images every epoch. A sample costs one forward pass
    (Glow, GAN) or ``sampler_steps`` denoiser evaluations (diffusion); the morphology test adds
    statmorph on every sample and real image.
    """
    train = prof.steps * prof.batch / rate.train
    forward = 1.0 / (2 * rate.train) / 3
    evals = rate.sampler if rate.sampler else 1.0 / forward
    sample = prof.sampler_steps / evals if family == "diffusion" else forward
    evaluation = prof.epochs * 2 * prof.n_val * forward
    for name, every, samples, real in prof.tests:
        k = prof.events(every)
        if name in ("TwoModelsTest", "DiscriminatorTest", "InversionTest"):
            evaluation += k * 2 * samples * (sample + 2 * forward)
        elif name == "MorphologyTest":
            evaluation += k * (2 * samples * sample + (2 * samples + real) * STATMORPH_S_PER_IMAGE / CPU_CORES_PER_RUN)
        elif name == "DenoisingTest":
            evaluation += k * 64 * forward  # a few images at a few noise levels
    return train, evaluation


def deal(seconds: list[float], slots: int) -> float:
    """Wall time of independent jobs dealt longest first onto ``slots`` workers."""
    loads = [0.0] * max(slots, 1)
    for s in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += s
    return max(loads) if loads else 0.0


def duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def plan_cost(family: str, fit: dict, plans: list, rate: Throughput, gpus: int, where: str) -> dict:
    """Print the projected cost of ``plans`` (``RunPlan`` of the sweep) and return it as a dict."""
    rows, todo = [], []
    print(f"[sweep] plan: {len(plans)} runs on {where}", flush=True)
    print(f"[sweep] throughput: {rate.train:,.0f} training img/s per model of the pair", end="")
    print(f", sampler {rate.sampler:,.0f} evaluations/s" if rate.sampler else "", end="")
    print(f"; {rate.source}", flush=True)
    header = (
        f"  {'run':34s} {'N':>8s} {'action':>6s} {'epochs':>6s} {'steps':>9s} {'batch':>5s} "
        f"{'train':>9s} {'eval':>9s} {'total':>9s}"
    )
    print(header)
    for p in plans:
        prof = run_profile(fit, p.n)
        train, evaluation = run_seconds(family, prof, rate)
        total = 0.0 if p.action == "skip" else train + evaluation
        if p.action != "skip":
            todo.append(total)
        rows.append(
            {
                "run": p.folder.name,
                "n": p.n,
                "seed": p.seed,
                "action": p.action,
                "epochs": prof.epochs,
                "steps": prof.steps,
                "batch": prof.batch,
                "train_s": round(train, 1),
                "eval_s": round(evaluation, 1),
                "total_s": round(total, 1),
            }
        )
        print(
            f"  {p.folder.name:34s} {p.n:>8,} {p.action:>6s} {prof.epochs:>6,} {prof.steps:>9,} {prof.batch:>5} "
            f"{duration(train):>9s} {duration(evaluation):>9s} {duration(total):>9s}"
        )
    gpu_seconds = sum(todo)
    wall = deal(todo, gpus)
    print(
        f"[sweep] total: {len(todo)} runs to train, {gpu_seconds / 3600:,.1f} GPU-hours; wall time {duration(wall)} "
        f"on {gpus} GPU{'s' if gpus != 1 else ''} (one run per GPU, longest first; resumed runs counted in full)",
        flush=True,
    )
    print(
        "[sweep] assumptions: a step trains both models on `batch` images each; a forward pass costs a third of a "
        f"training step; a diffusion sample takes {DIFFUSION_SAMPLER_STEPS} sampler steps (at most model max_steps); "
        f"statmorph {STATMORPH_S_PER_IMAGE} s per image on {CPU_CORES_PER_RUN} cores; data loading and checkpoints free",
        flush=True,
    )
    return {"runs": rows, "gpus": gpus, "gpu_hours": gpu_seconds / 3600, "wall_s": wall, "throughput": rate.__dict__}
