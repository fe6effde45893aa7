"""The discriminator test of GAN pairs (the paper's Section 3.3.5, Figures 14 and 16).

The hinge loss of a GAN converges to 2 when generator and discriminator are both optimal
(Lim & Ye 2017, Theorem 3.1): the discriminator can no longer tell generated images from real
ones. With two models trained on disjoint subsets and fed the same latents ``z_k``, each
discriminator is asked about its own generator *and* the other model's generator. Per sample
``k``, with the sign convention of the reference (real images are pushed down, generated ones up)::

    L(D_i; G_j, train)_k = relu(1 + D_i(x_k)) + relu(1 - D_i(G_j(z_k)))

where ``x_k`` is the ``k``-th image drawn from discriminator ``i``'s *own* training subset and
``D`` is the main (1x1) head without augmentation. The four curves are
``L(D_A; G_A)``, ``L(D_A; G_B)``, ``L(D_B; G_B)`` and ``L(D_B; G_A)``. A converged, consistent
pair shows all four distributions on top of each other with mean 2. Optionally a fifth kind of
curve replaces the training image by a held-out one, ``L(D_i; G_i, val)``: when it sits above
``L(D_i; G_i, train)`` the discriminator has learned its training images (over-fitting).

The paper's equation (22) did not survive text extraction; this is our reading of it from the
surrounding text and the hinge loss (equation 8). Only the main head is used by default
(``head="both"`` averages both heads, which also scores 2 for a discriminator that outputs 0).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import lightning as L
import numpy as np
import torch
from scipy.stats import wasserstein_distance

from galgen_lightning.errors import require
from galgen_lightning.evaluation.base import SamplingTest, run_dir
from galgen_lightning.models.base import MODELS
from galgen_lightning.models.gan.network import hinge_per_sample
from galgen_lightning.rundir import RunDir

CURVES = ("da_ga", "da_gb", "db_gb", "db_ga")
VAL_CURVES = ("da_val", "db_val")
LABELS = {
    "da_ga": "L(D_A; G_A, train A)",
    "da_gb": "L(D_A; G_B, train A)",
    "db_gb": "L(D_B; G_B, train B)",
    "db_ga": "L(D_B; G_A, train B)",
    "da_val": "L(D_A; G_A, held-out)",
    "db_val": "L(D_B; G_B, held-out)",
}
MONITORED = ("score", "max_w1", "max_mean_dev", "max_mean_gap")
TARGET = 2.0
CHART_KEY = "hinge_means"
"""W&B key (under ``discriminator/``) of the multi-line chart of the curves' means over the epochs."""


def draw(images: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` images in a seeded random order, cycling through the set when ``n`` exceeds it."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images[order[torch.arange(n) % len(images)]]


@torch.no_grad()
def discriminator_losses(
    pair,
    reals: dict[str, torch.Tensor],
    n: int,
    seed: int = 0,
    head: str = "main",
    ema: bool = False,
    batch_size: int = 256,
    val: bool = True,
) -> dict[str, np.ndarray]:
    """Per-sample losses of the four-way test, and the raw discriminator scores behind them.

    Args:
        pair: a GAN pair with ``fake_images(which, indices, seed, ema)`` and
            ``discriminator_scores(which, images, head)``.
        reals: ``{"a": A's images, "b": B's images}`` and, for the held-out curves, ``"val"``.
        n: samples (latents) per model.
        seed: latent seed; training images are drawn with the same seed for A and B, so
            swapping the models and their subsets swaps the curves exactly.
        head: discriminator head, ``"main"``, ``"small"`` or ``"both"``.
        ema: score the EMA generators (default: the live ones, which the discriminators were
            trained against).
        batch_size: samples per forward batch (results do not depend on it).
        val: also compute the held-out curves ``da_val`` and ``db_val``.

    Returns:
        ``{curve: (n,) losses}`` for :data:`CURVES` (and :data:`VAL_CURVES`), plus raw scores
        ``score_d<i>_train``, ``score_d<i>_val`` and ``score_d<i>_g<j>``.
    """
    was_training = pair.training
    pair.eval()
    try:
        device = pair.device
        fakes: dict[str, torch.Tensor] = {}
        for g in MODELS:
            parts = [
                pair.fake_images(g, torch.arange(s, min(n, s + batch_size), device=device), seed, ema).cpu()
                for s in range(0, n, batch_size)
            ]
            fakes[g] = torch.cat(parts)
        real = {d: draw(reals[d], n, seed) for d in MODELS}
        if val and "val" in reals:
            real["val"] = draw(reals["val"], n, seed + 1)

        def score(d: str, images: torch.Tensor) -> torch.Tensor:
            return torch.cat(
                [pair.discriminator_scores(d, images[s : s + batch_size], head).cpu() for s in range(0, n, batch_size)]
            )

        out: dict[str, np.ndarray] = {}
        for d in MODELS:
            s_train = score(d, real[d])
            out[f"score_d{d}_train"] = s_train.numpy()
            for g in MODELS:
                s_fake = score(d, fakes[g])
                out[f"score_d{d}_g{g}"] = s_fake.numpy()
                out[f"d{d}_g{g}"] = hinge_per_sample(s_train, s_fake).numpy()
            if "val" in real:
                s_val = score(d, real["val"])
                out[f"score_d{d}_val"] = s_val.numpy()
                out[f"d{d}_val"] = hinge_per_sample(s_val, torch.from_numpy(out[f"score_d{d}_g{d}"])).numpy()
        return out
    finally:
        pair.train(was_training)


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x)]


def curve_style(curve: str) -> tuple[str, str]:
    """Colour and line of a curve (``d<x>_<y>``) in every figure: red for G_A's samples, blue
    for G_B's, black for held-out images; solid for D_A, dashed for D_B."""
    seen = curve.split("_", 1)[1]
    return {"ga": "tab:red", "gb": "tab:blue"}.get(seen, "k"), "-" if curve.startswith("da") else "--"


def loss_bins(losses: dict[str, np.ndarray], curves: tuple[str, ...] = CURVES + VAL_CURVES) -> np.ndarray:
    """The 40 histogram bins of the loss figures: from 0 (or below) to past ``TARGET``'s double,
    4, or the 99.5th percentile of the losses when larger."""
    values = np.concatenate([_finite(losses[c]) for c in curves if c in losses] or [np.zeros(0)])
    if not values.size:
        return np.linspace(0.0, 2 * TARGET, 41)
    return np.linspace(min(0.0, float(values.min())), max(2 * TARGET, float(np.percentile(values, 99.5))), 41)


def curves_panel(ax, losses: dict[str, np.ndarray], title: str) -> None:
    """The four curves' loss distributions on one axes, with the line at ``TARGET`` (the
    report's panels of Figures 14 and 16)."""
    bins = loss_bins(losses, CURVES)
    for c in CURVES:
        if c in losses:
            color, ls = curve_style(c)
            v = _finite(losses[c])
            label = f"{LABELS[c]}: {v.mean():.2f}" if v.size else LABELS[c]
            ax.hist(v, bins=bins, histtype="step", color=color, ls=ls, lw=1.3, label=label)
    ax.axvline(TARGET, color="k", ls=":", lw=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("per-sample hinge loss (dimensionless)", fontsize=8)
    ax.set_ylabel("samples (count)", fontsize=8)


def discriminator_statistics(losses: dict[str, np.ndarray], target: float = TARGET) -> dict[str, float]:
    """Means, spreads and convergence numbers of the four-way test (a pure function).

    Args:
        losses: the output of :func:`discriminator_losses` (at least the four :data:`CURVES`).
        target: the loss of a discriminator that cannot tell (2).

    Returns:
        ``<curve>_mean``, ``<curve>_std``, ``<curve>_median`` (and ``<curve>_nonfinite``) per
        curve; ``w1_<c1>__<c2>`` for the six pairs of the four curves; and the convergence
        numbers: ``max_w1`` (largest 1-Wasserstein distance between two of the four curves),
        ``max_mean_gap`` (largest difference of their means), ``max_mean_dev`` (largest
        ``|mean - 2|``) and ``score = max(max_w1, max_mean_dev)`` (0 for a perfect pair; watch it
        fall). With held-out curves: ``overfit_<m> = mean L(D_m; G_m, val) - mean L(D_m; G_m,
        train)`` (positive when D_m scores its own training images as more real than unseen
        ones). Raw score means ``score_d<i>_<what>_mean`` are passed through.
    """
    stats: dict[str, float] = {}
    values = {k: _finite(losses[k]) for k in (*CURVES, *VAL_CURVES) if k in losses}
    for key, v in values.items():
        stats[f"{key}_mean"] = float(v.mean()) if v.size else float("nan")
        stats[f"{key}_std"] = float(v.std()) if v.size else float("nan")
        stats[f"{key}_median"] = float(np.median(v)) if v.size else float("nan")
        stats[f"{key}_nonfinite"] = float(np.size(losses[key]) - v.size)
    w1s, gaps = [], []
    for c1, c2 in combinations(CURVES, 2):
        a, b = values[c1], values[c2]
        w1 = float(wasserstein_distance(a, b)) if a.size and b.size else float("nan")
        stats[f"w1_{c1}__{c2}"] = w1
        w1s.append(w1)
        gaps.append(abs(stats[f"{c1}_mean"] - stats[f"{c2}_mean"]))
    stats["max_w1"] = float(np.max(w1s))
    stats["max_mean_gap"] = float(np.max(gaps))
    # np.max, not max: a curve with no finite loss (NaN mean) makes them NaN, whatever its place
    stats["max_mean_dev"] = float(np.max([abs(stats[f"{c}_mean"] - target) for c in CURVES]))
    stats["score"] = float(np.max([stats["max_w1"], stats["max_mean_dev"]]))
    for m in MODELS:
        if f"d{m}_val" in values:
            stats[f"overfit_{m}"] = stats[f"d{m}_val_mean"] - stats[f"d{m}_g{m}_mean"]
    for key, v in losses.items():
        if key.startswith("score_"):
            f = _finite(v)
            stats[f"{key}_mean"] = float(f.mean()) if f.size else float("nan")
    return stats


class DiscriminatorTest(SamplingTest):
    """Per-epoch four-way discriminator test of a GAN pair (see the module docstring).

    Each run writes ``<run>/eval/discriminator/epoch_XXXX.npz`` (per-sample losses and scores)
    and ``.png`` (the figure), appends the scalars to ``<run>/metrics.jsonl``, logs them as
    ``discriminator/<key>`` and the distributions as W&B histograms. ``discriminator/score``,
    ``max_w1``, ``max_mean_dev`` and ``max_mean_gap`` are also put where ``ModelCheckpoint`` and
    ``EarlyStopping`` look (``monitor: discriminator/score``, ``mode: min``) on every rank.

    Args:
        n_samples: latents per model (and training images per discriminator).
        head: discriminator head scored, ``"main"`` (default), ``"small"`` or ``"both"``.
        ema: score the EMA generators instead of the live ones.
        val: add the held-out curves ``L(D_i; G_i, val)``.
        **kwargs: :class:`SamplingTest`'s ``every_n_epochs`` (a monitor needs the key at every
            validation it checks: keep it at 1, or match the checkpoint's interval), ``seed``
            (of the latents and of the draw of training images) and ``batch_size``.
    """

    name = "discriminator"
    requires = ("fake_images", "discriminator_scores")
    fits = "GAN pairs"

    def __init__(self, n_samples: int = 256, head: str = "main", ema: bool = False, val: bool = True, **kwargs: Any) -> None:
        super().__init__(n_samples=n_samples, **kwargs)
        require(head in ("main", "small", "both"), "DiscriminatorTest.head", "'main', 'small' or 'both'", head)
        self.head = head
        self.ema = ema
        self.val = val
        self._monitored: dict[str, float] = {}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        due = self._due(trainer)
        self._monitored = {}
        if trainer.is_global_zero and due:
            self.run_timed(trainer, pl_module)
        if not due:
            return
        values = trainer.strategy.broadcast(self._monitored, src=0) if trainer.world_size > 1 else self._monitored
        for key, value in (values or {}).items():
            pl_module.log(f"{self.name}/{key}", float(value), logger=False, on_step=False, on_epoch=True, batch_size=1)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        reals = {s: dm.subset_images(s) for s in (*MODELS, "val")}
        batch_size = self.generation_batch(pl_module)
        losses = discriminator_losses(pl_module, reals, self.n_samples, self.seed, self.head, self.ema, batch_size, self.val)
        scalars = discriminator_statistics(losses)
        self._monitored = {k: scalars[k] for k in MONITORED}
        self.save_arrays(trainer, losses)  # arrays first: a logged record always has its arrays
        self.log_scalars(trainer, scalars)
        self.log_histograms(trainer, {k: v for k, v in losses.items() if k in CURVES or k in VAL_CURVES})
        history = self._history(trainer)
        self.log_chart(trainer, history)
        self.save_figure(trainer, self.figure(losses, scalars, history), "losses")

    def log_chart(self, trainer: L.Trainer, history: list[dict]) -> None:
        """The means of the curves over the epochs so far as one W&B multi-line chart
        (``discriminator/hinge_means``); the same numbers are also logged as scalars."""
        from lightning.pytorch.loggers import WandbLogger

        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not loggers:
            return
        import wandb

        xs, ys, keys = mean_series(history)
        if not keys:
            return
        chart = wandb.plot.line_series(xs=xs, ys=ys, keys=keys, title="mean per-sample hinge loss of each curve", xname="epoch")
        for logger in loggers:
            logger.experiment.log(
                {f"{self.name}/{CHART_KEY}": chart, "epoch": trainer.current_epoch, "trainer/global_step": trainer.global_step}
            )

    @staticmethod
    def _history(trainer: L.Trainer) -> list[dict]:
        """Earlier records of this test in ``<run>/metrics.jsonl`` (survives resumes)."""
        return RunDir(run_dir(trainer)).records(DiscriminatorTest.name)

    def figure(self, losses: dict[str, np.ndarray], scalars: dict[str, float], history: list[dict]):
        """Like the paper's Figure 14: the loss distributions seen by D_A and by D_B, plus the
        means of the four curves over the epochs so far (they should meet at 2)."""
        from galgen_lightning.plotting import pyplot

        plt = pyplot()

        bins = loss_bins(losses)
        fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
        for ax, d in zip(axes[:2], MODELS):
            own, other = f"d{d}_g{d}", f"d{d}_g{'b' if d == 'a' else 'a'}"
            for key, style in ((own, "stepfilled"), (other, "step")):
                ax.hist(
                    _finite(losses[key]),
                    bins=bins,
                    histtype=style,
                    alpha=0.45 if style == "stepfilled" else 1.0,
                    lw=1.5,
                    color=curve_style(key)[0],
                    label=f"{LABELS[key]}: {scalars[key + '_mean']:.3f} ± {scalars[key + '_std']:.3f}",
                )
            if f"d{d}_val" in losses:
                key = f"d{d}_val"
                color, ls = curve_style(key)
                ax.hist(
                    _finite(losses[key]),
                    bins=bins,
                    histtype="step",
                    ls=ls,
                    color=color,
                    label=f"{LABELS[key]}: {scalars[key + '_mean']:.3f}",
                )
            ax.axvline(TARGET, color="k", ls=":", lw=1, label=f"{TARGET:g}: the discriminator cannot tell")
            ax.set_title(f"discriminator {d.upper()}")
            ax.set_xlabel("per-sample hinge loss")
            ax.set_ylabel("count of samples")
            ax.legend(fontsize=7, loc="upper left")
        ax = axes[2]
        xs, ys, keys = mean_series(history, CURVES)
        for key, x, y in zip(keys, xs, ys):
            curve = next(c for c in CURVES if LABELS[c] == key)
            color, ls = curve_style(curve)
            ax.plot(x, y, ls, marker="o", ms=3, color=color, label=key)
        ax.axhline(TARGET, color="k", ls=":", lw=1, label=f"{TARGET:g}: the discriminator cannot tell")
        ax.plot([], [], " ", label=f"now: max W1 {scalars['max_w1']:.3f}, max |mean - 2| {scalars['max_mean_dev']:.3f}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean hinge loss")
        ax.set_title("means of the four curves over the epochs")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig


def mean_series(
    history: list[dict], curves: tuple[str, ...] = (*CURVES, *VAL_CURVES)
) -> tuple[list[list[int]], list[list[float]], list[str]]:
    """Per curve, the epochs and its mean loss at each, from this test's ``metrics.jsonl`` records.

    Args:
        history: the records (``epoch`` and ``<curve>_mean``; a later record of an epoch, as after
            a resume, replaces an earlier one).
        curves: which curves (default: the four and the held-out ones).

    Returns:
        ``(xs, ys, keys)`` for ``wandb.plot.line_series``: one list of epochs and one of means per
        curve that has any finite value, named by :data:`LABELS`.
    """
    by_epoch: dict[int, dict] = {}
    for record in history:
        if record.get("epoch") is not None:
            by_epoch[int(record["epoch"])] = record
    xs, ys, keys = [], [], []
    for curve in curves:
        points = [(e, float(r[f"{curve}_mean"])) for e, r in sorted(by_epoch.items()) if r.get(f"{curve}_mean") is not None]
        points = [(e, v) for e, v in points if np.isfinite(v)]
        if points:
            xs.append([e for e, _ in points])
            ys.append([v for _, v in points])
            keys.append(LABELS[curve])
    return xs, ys, keys
