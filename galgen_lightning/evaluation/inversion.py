"""Inversion test of flow pairs (the paper's Section 3.3.4, Figure 10, Table 1).

Draw standardised latents ``z ~ N(0, I)`` at every level, decode them with model A,
``x = A^-1(z)``, and encode the image with both models: ``z_A = A(x)`` and ``z_B = B(x)``,
each standardised with its *own* model's learned prior, ``(z_k - mean_k) / std_k``. Then, per
level, the 1-Wasserstein distance between the pooled values of

- ``z`` and ``z_A``: ~0, the flow inverts (one to one: the scatter plot is the diagonal);
- ``z`` and ``z_B``: small when B assigns A's samples the same latent *distribution*
  (B is not expected to reproduce ``z`` one to one: the scatter is a cloud);
- ``z_A`` and ``z_B``;
- ``z_B`` and ``N(0, 1)`` (also ``z_A`` and ``z``), computed exactly from the normal CDF;
  ``W1(z, N)`` is the finite-sample floor the others should be read against.

The same is done the other way round, ``x = B^-1(z)``. Two models that learned one
distribution give ``W1(z, z_B)`` near the floor at every level.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from scipy import special
from scipy.stats import wasserstein_distance
from torch import Tensor, nn

from galgen_lightning.errors import require
from galgen_lightning.evaluation.base import SamplingTest
from galgen_lightning.models.base import MODELS
from galgen_lightning.noise import counter_normal
from galgen_lightning.tables import csv_text, fmt_g, markdown_text

# name -> (first, second) of each distance; "n" is the standard normal
DISTANCES = {
    "z_za": ("z", "za"),
    "z_zb": ("z", "zb"),
    "za_zb": ("za", "zb"),
    "za_normal": ("za", "n"),
    "zb_normal": ("zb", "n"),
    "z_normal": ("z", "n"),
}
LABELS = {"z": "z", "za": "z_A", "zb": "z_B", "n": "N(0,1)"}


def w1_standard_normal(values: np.ndarray | Tensor) -> float:
    """Exact 1-Wasserstein distance between the empirical distribution of ``values`` and N(0, 1).

    ``W1 = integral |F_n(t) - Phi(t)| dt``, integrated in closed form between consecutive order
    statistics with ``G(t) = t Phi(t) + phi(t)``, the antiderivative of ``Phi`` (no reference
    sample, no quadrature error). Non-finite values must be removed first.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = len(x)
    if n == 0:
        return float("nan")

    def g(t: np.ndarray) -> np.ndarray:
        return t * special.ndtr(t) + np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi)

    total = g(x[0]) + g(-x[-1])  # the two tails: F_n = 0 below x_1, 1 above x_n
    a, b = x[:-1], x[1:]
    c = np.arange(1, n) / n  # F_n on [x_i, x_{i+1}]
    t = np.clip(special.ndtri(c), a, b)  # where Phi crosses the level c, clipped to the interval
    ga, gb, gt = g(a), g(b), g(t)
    total += np.sum(c * (t - a) - (gt - ga) + (gb - gt) - c * (b - t))
    return float(total)


def w1(u: np.ndarray, v: np.ndarray | None) -> float:
    """``scipy.stats.wasserstein_distance(u, v)``, or against N(0, 1) when ``v`` is None."""
    if v is None:
        return w1_standard_normal(u)
    if u.size == 0 or v.size == 0:
        return float("nan")
    return float(wasserstein_distance(u.ravel(), v.ravel()))


@contextlib.contextmanager
def full_fp32(device: torch.device) -> Iterator[None]:
    """Turn off TF32 for CUDA convolutions and matmuls (on by default for cuDNN convs): the
    invertibility check ``z_A = z`` should measure the flow, not the arithmetic."""
    if device.type != "cuda":
        yield
        return
    backends = torch.backends
    try:
        old = (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
        backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = False
    except RuntimeError:  # flags set through the newer API: leave them alone
        yield
        return
    try:
        yield
    finally:
        backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = old


@torch.no_grad()
def inversion_statistics(
    model_a: nn.Module,
    model_b: nn.Module,
    z_levels: Sequence[Tensor],
    batch_size: int | None = None,
) -> dict:
    """Both directions of the inversion test, from standardised latents (a pure function).

    Args:
        model_a: flow A with ``reverse(latents, standardized=True)`` and a forward pass
            returning ``.eps`` (standardised per-level latents), e.g.
            :class:`~galgen_lightning.models.glow.Glow`.
        model_b: flow B, same architecture.
        z_levels: one ``(n, c_k, h_k, w_k)`` tensor of latents per level, on the models' device.
        batch_size: samples per pass (default: all at once).

    Returns:
        ``{"a": direction, "b": direction}``, direction ``"a"`` being ``x = A^-1(z)``. Each
        direction holds ``valid`` (``(n,)`` bool numpy: x, z_A, z_B all finite), ``z``,
        ``za``, ``zb`` (lists over levels of float32 numpy arrays of the valid samples),
        ``w1`` (a list over levels of ``{distance name: value}``, see :data:`DISTANCES`) and
        ``max_err`` (per level, max ``|z - z_own|``: the inversion error).
    """
    models = {"a": model_a, "b": model_b}
    n = len(z_levels[0])
    batch_size = batch_size or n
    device = z_levels[0].device
    modes = {w: m.training for w, m in models.items()}
    for m in models.values():
        m.eval()
    result = {}
    try:
        with full_fp32(device):
            for direction in MODELS:
                parts: dict[str, list[list[np.ndarray]]] = {k: [[] for _ in z_levels] for k in ("z", "za", "zb")}
                valid = []
                for start in range(0, n, batch_size):
                    z = [lv[start : start + batch_size] for lv in z_levels]
                    x = models[direction].reverse(list(z), standardized=True)
                    enc = {"za": models["a"](x).eps, "zb": models["b"](x).eps, "z": z}
                    ok = torch.isfinite(x).flatten(1).all(dim=1)
                    for lv in enc["za"] + enc["zb"]:
                        ok &= torch.isfinite(lv).flatten(1).all(dim=1)
                    valid.append(ok.cpu())
                    for key, levels in enc.items():
                        for k, lv in enumerate(levels):
                            parts[key][k].append(lv.float().cpu().numpy())
                ok = torch.cat(valid).numpy()
                values = {key: [np.concatenate(p)[ok] for p in parts[key]] for key in parts}
                own = "za" if direction == "a" else "zb"
                out = {"valid": ok, **values, "w1": [], "max_err": []}
                for k in range(len(z_levels)):
                    level = {key: values[key][k] for key in values}
                    level["n"] = None
                    out["w1"].append({name: w1(level[u], level[v]) for name, (u, v) in DISTANCES.items()})
                    err = np.abs(level["z"] - level[own])
                    out["max_err"].append(float(err.max()) if err.size else float("nan"))
                result[direction] = out
    finally:
        for w, m in models.items():
            m.train(modes[w])
    return result


def flat_scalars(stats: dict) -> dict[str, float]:
    """``from_<d>/level<k>/w1_<distance>``, ``from_<d>/level<k>/max_err`` and ``from_<d>/valid``."""
    scalars: dict[str, float] = {}
    for direction, out in stats.items():
        scalars[f"from_{direction}/valid"] = float(np.sum(out["valid"]))
        for k, level in enumerate(out["w1"]):
            for name, value in level.items():
                scalars[f"from_{direction}/level{k}/w1_{name}"] = value
            scalars[f"from_{direction}/level{k}/max_err"] = out["max_err"][k]
    return scalars


def table_rows(numbers: dict[str, Any], shapes: Sequence[tuple[int, ...]] | None = None) -> tuple[list[str], list[list[str]]]:
    """Table 1 of the paper, extended: one row per direction and level, one column per distance.

    The one owner of the table, for the callback's files and the report alike.

    Args:
        numbers: the test's numbers as logged (:func:`flat_scalars`, or a ``metrics.jsonl`` record).
        shapes: the latent shape of each level (a ``shape`` column when given).
    """
    distances = [f"W1({LABELS[u]}, {LABELS[v]})" for u, v in DISTANCES.values()]
    columns = ["x from", "level", *(["shape"] if shapes else []), *distances]
    rows = []
    for d in MODELS:
        levels = sorted({int(m.group(1)) for key in numbers for m in [re.match(rf"from_{d}/level(\d+)/", key)] if m})
        for k in levels:
            shape = ["x".join(map(str, shapes[k]))] if shapes else []
            w1 = [fmt_g(numbers.get(f"from_{d}/level{k}/w1_{name}")) for name in DISTANCES]
            rows.append([f"{d.upper()}^-1(z)", str(k), *shape, *w1, fmt_g(numbers.get(f"from_{d}/level{k}/max_err"))])
    return [*columns, "max|z - z_own|"], rows


class InversionTest(SamplingTest):
    """Per-epoch inversion test of a flow pair (see the module docstring).

    Needs a family whose models have ``reverse`` and whose module has ``latent_shapes``
    (:class:`~galgen_lightning.models.glow.GlowPair`); other families are skipped.

    Outputs, each due epoch: scalars ``inversion/from_<a|b>/level<k>/w1_<distance>`` (loggers
    and ``metrics.jsonl``); ``eval/inversion/epoch_XXXX.npz`` (a random subset of the values,
    the same positions in ``z``, ``z_A`` and ``z_B``, and the full distance matrix);
    ``epoch_XXXX_table.md`` / ``.csv`` (levels x distances, also a W&B table); and per direction
    ``epoch_XXXX_from_<a|b>.png`` (scatter of ``z_A`` and ``z_B`` against ``z``, and the density
    of the other model's latents against the N(0, 1) pdf, per level).

    Args:
        temperature: scale of ``z`` (1: the test of the paper, ``z ~ N(0, I)``).
        max_points: values per level and direction kept in the ``.npz`` file and the scatter plots.
        bins: histogram bins of the density plots.
        **kwargs: :class:`SamplingTest`'s ``every_n_epochs``, ``n_samples`` (decoded images per
            direction, each giving every level's latents), ``seed`` (level ``k`` is stream ``k``
            of ``counter_normal``) and ``batch_size`` (samples per pass).
    """

    name = "inversion"
    requires = ("latent_shapes",)
    fits = "normalizing flows such as Glow"

    def __init__(self, temperature: float = 1.0, max_points: int = 20000, bins: int = 60, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        require(0 < temperature < math.inf, "InversionTest.temperature", "positive", temperature)
        require(max_points >= 1, "InversionTest.max_points", "positive", max_points)
        require(bins >= 1, "InversionTest.bins", "positive", bins)
        self.temperature = temperature
        self.max_points = max_points
        self.bins = bins

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        shapes = pl_module.latent_shapes
        idx = torch.arange(self.n_samples, device=pl_module.device)
        z = [self.temperature * counter_normal(self.seed, idx, tuple(s), stream=k) for k, s in enumerate(shapes)]
        batch_size = self.generation_batch(pl_module)
        stats = inversion_statistics(pl_module.model_a, pl_module.model_b, z, batch_size)

        arrays = self.subsample(stats)
        arrays["distance_names"] = np.array(list(DISTANCES))
        for d in MODELS:
            arrays[f"w1_from_{d}"] = np.array([[lv[name] for name in DISTANCES] for lv in stats[d]["w1"]])
            arrays[f"valid_from_{d}"] = stats[d]["valid"]
        self.save_arrays(trainer, arrays)  # arrays first: a logged record always has its arrays
        self.log_scalars(trainer, flat_scalars(stats))
        other = {"a": "zb", "b": "za"}
        self.log_histograms(
            trainer,
            {f"from_{d}/level{k}/{other[d]}": arrays[f"from_{d}/{other[d]}_{k}"] for d in MODELS for k in range(len(shapes))},
        )

        columns, rows = table_rows(flat_scalars(stats), shapes)
        self.out_path(trainer, "_table.md").write_text(
            f"Inversion test, epoch {trainer.current_epoch}, step {trainer.global_step}, "
            f"{self.n_samples} samples, temperature {self.temperature}\n\n" + markdown_text(columns, rows)
        )
        self.out_path(trainer, "_table.csv").write_text(csv_text(columns, rows))
        for logger in trainer.loggers:
            if hasattr(logger, "log_table"):
                logger.log_table(key=f"{self.name}/table", columns=columns, data=rows, step=trainer.global_step)
        for d in MODELS:
            fig = self.figure(arrays, stats, d, shapes)
            self.save_figure(trainer, fig, f"from_{d}", tag=f"_from_{d}")

    def subsample(self, stats: dict) -> dict[str, np.ndarray]:
        """Up to ``max_points`` values per level and direction, the same positions in z, z_A, z_B."""
        rng = np.random.default_rng(self.seed)
        out = {}
        for d, res in stats.items():
            for k in range(len(res["z"])):
                size = res["z"][k].size
                pick = np.sort(rng.choice(size, min(size, self.max_points), replace=False)) if size else np.zeros(0, int)
                for key in ("z", "za", "zb"):
                    out[f"from_{d}/{key}_{k}"] = res[key][k].ravel()[pick]
        return out

    def figure(self, arrays: dict[str, np.ndarray], stats: dict, direction: str, shapes, epoch: int | None = None):
        """Top: ``z_A`` and ``z_B`` against ``z`` per level. Bottom: density of the other model's latents.

        Args:
            arrays: :meth:`subsample`'s values.
            stats: :func:`inversion_statistics`'s result (the distances in the legends).
            direction: ``"a"`` (``x = A^-1(z)``) or ``"b"``.
            shapes: the latent shape of each level.
            epoch: accepted for older callers and not drawn: a figure carries no run state.
        """
        from galgen_lightning.plotting import pyplot

        plt = pyplot()

        own, other = ("za", "zb") if direction == "a" else ("zb", "za")
        levels = len(shapes)
        fig, axes = plt.subplots(2, levels, figsize=(3.2 * levels, 6.4), squeeze=False)
        grid = np.linspace(-4.5, 4.5, 200)
        pdf = np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi)
        for k in range(levels):
            z = arrays[f"from_{direction}/z_{k}"]
            w = stats[direction]["w1"][k]
            ax = axes[0, k]
            for key, color in ((other, "tab:orange"), (own, "tab:blue")):
                ax.scatter(
                    z, arrays[f"from_{direction}/{key}_{k}"], s=1, alpha=0.3, color=color, label=LABELS[key], rasterized=True
                )
            ax.plot([-4.5, 4.5], [-4.5, 4.5], color="k", lw=0.5, label="identity")
            ax.set(xlim=(-4.5, 4.5), ylim=(-4.5, 4.5), title=f"level {k} {'x'.join(map(str, shapes[k]))}")
            ax.set_xlabel("drawn latent z (standard deviations)")
            ax.set_ylabel(f"latent of x = {direction.upper()}$^{{-1}}$(z), re-encoded (standard deviations)", fontsize=7)
            if k == 0:
                ax.legend(markerscale=8, loc="upper left", fontsize=8)
            ax = axes[1, k]
            values = arrays[f"from_{direction}/{other}_{k}"]
            values = values[np.abs(values) < 50]
            if values.size:
                ax.hist(
                    values, bins=self.bins, range=(-4.5, 4.5), density=True, color="tab:orange", alpha=0.6, label=LABELS[other]
                )
            ax.plot(grid, pdf, color="k", lw=1, label="N(0,1) density")
            name_other = f"{other}_normal"
            ax.plot([], [], " ", label=f"W1({LABELS[other]}, N)={w[name_other]:.3g}; floor W1(z, N)={w['z_normal']:.3g}")
            ax.set_title(f"level {k}: the other model's latents", fontsize=8)
            ax.set_xlabel(f"{LABELS[other]}, latent of the other model (standard deviations)", fontsize=7)
            ax.set_ylabel("probability density")
            ax.legend(fontsize=6)
        fig.suptitle(f"Inversion test, x = {direction.upper()}$^{{-1}}$(z)")
        fig.tight_layout()
        return fig
