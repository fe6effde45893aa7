"""The two-models cosine-similarity test, calibrated, with its threshold-free twin.

For the same seeds, model A and model B each draw samples from the same noise. Then:

- **A vs B**: ``cos(A_i, B_i)``. Generalizing models agree (they learned one distribution);
  memorizing models each copy their own, disjoint, training set and disagree.
- **nearest training image**: for each sample, its highest similarity to any image of its own
  model's subset (optionally over the 8 flips/rotations), and to the *other* subset.
- **memorization rate under the two-models null**: the other subset comes from the same
  distribution and the model never saw it, so a sample's nearest other-subset similarity is what
  its own-subset one would be without memorization, whatever the samples' quality. The
  threshold is the ``quantile`` (default 99th percentile) of the samples' other-subset nearest
  similarities; the rate is the share of samples whose own-subset nearest exceeds it. The
  held-out-real calibration (held-out galaxies' nearest-training similarity) is the second
  reading, ``memorization_rate_heldout``.
- **own minus other**: the gap per noise index (A's and B's averaged) and a one-sided Wilcoxon
  p-value, with no threshold.
- **shared-noise agreement** (``agreement_kappa``), **realism** (``realism_outside_*``) and
  **variety** (``repeat_share``: samples nearer another sample of their model than real
  galaxies come to one another, :mod:`galgen_lightning.evaluation.variety`): see
  :mod:`galgen_lightning.evaluation.statistics`.

The statistics themselves live in :mod:`galgen_lightning.evaluation.statistics`; the label is
decided by :mod:`galgen_lightning.evaluation.verdict`.
Samples the family marks invalid (diverged, step limit, non-finite) are counted and left out.
Both the mean-removed cosine (default, used for the figures) and the plain cosine are reported.
Each evaluation also draws the galleries of the most and least memorized samples
(:mod:`galgen_lightning.evaluation.gallery`) and logs its parts' times: ``sampling_seconds``
and ``search_seconds`` (the nearest-neighbour searches), beside ``seconds``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch

from galgen_lightning.errors import require
from galgen_lightning.evaluation import gallery
from galgen_lightning.evaluation.base import SamplingTest, mosaic
from galgen_lightning.evaluation.statistics import two_models_evidence
from galgen_lightning.evaluation.variety import REPEAT_QUANTILE, sibling_arrays
from galgen_lightning.metrics import nearest_similarity, paired_cosine, summarize, top_similarities
from galgen_lightning.models.base import MODELS

SEARCHES = 6
TOP_K = 16
"""Most similar images kept per sample in each subset (``own_top_<m>``, ``other_top_<m>``): what
the re-split test (:func:`~galgen_lightning.evaluation.statistics.resplit_test`) re-assigns."""
"""Nearest-neighbour searches of one :func:`two_models_statistics` call (own, other, held-out; per model)."""


def two_models_statistics(
    samples,
    subsets: dict[str, torch.Tensor],
    mean_removed: bool = True,
    transforms: bool = True,
    quantile: float = 0.99,
    line: float = 0.95,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """All numbers of the test, from samples and the three subsets (a pure function).

    Args:
        samples: :class:`~galgen_lightning.models.base.PairSamples`.
        subsets: ``{"a": A images, "b": B images, "val": held-out images}``.
        mean_removed: centre each image before the cosine.
        transforms: match training images under the 8 flips/rotations too.
        quantile: calibration quantile of the held-out reference distribution.
        line: the fixed similarity line whose exceedance is also reported (0.95 in the paper).
        progress: called with 1 after each of the :data:`SEARCHES` nearest-neighbour searches.

    Returns:
        ``(scalars, arrays)``: scalars for the logger, arrays for the ``.npz`` file.
    """
    kw = dict(mean_removed=mean_removed, transforms=transforms)
    arrays: dict[str, np.ndarray] = {}
    both = samples.both_ok
    arrays["a_vs_b"] = paired_cosine(samples.a[both], samples.b[both], mean_removed).numpy()
    ref = []
    tick = progress or (lambda _: None)
    for which in MODELS:
        ok = samples.ok(which)
        x = samples[which][ok]
        for side, subset in (("own", subsets[which]), ("other", subsets[gallery.OTHER[which]])):
            top, top_idx = top_similarities(x, subset, TOP_K, **kw)  # the nearest first
            tick(1)
            arrays[f"{side}_{which}"], arrays[f"{side}_index_{which}"] = top[:, 0].numpy(), top_idx[:, 0].numpy()
            arrays[f"{side}_top_{which}"], arrays[f"{side}_top_index_{which}"] = top.numpy(), top_idx.numpy()
        arrays[f"sample_index_{which}"] = torch.nonzero(ok).flatten().numpy()
        ref.append(nearest_similarity(subsets["val"], subsets[which], **kw)[0].numpy())
        tick(1)
    arrays["heldout"] = np.concatenate(ref)
    arrays["subset_sizes"] = np.array([len(subsets[m]) for m in MODELS], dtype=np.int64)
    arrays["heldout_pixel_std"] = subsets["val"].flatten(1).float().std(dim=1).numpy()
    arrays["pair_index"] = torch.nonzero(both).flatten().numpy()
    arrays.update(sibling_arrays(samples, subsets["val"], mean_removed))
    own_all = np.concatenate([arrays["own_a"], arrays["own_b"]])

    scalars: dict[str, float] = {}
    for key, value in summarize(arrays["a_vs_b"], line).items():
        scalars[f"a_vs_b_{key}"] = value
    for key, value in summarize(own_all, line).items():
        scalars[f"nearest_own_{key}"] = value
    # the calibrated statistics, paired by noise index (point values; the judge adds intervals)
    evidence_arrays = {**arrays, "samples_a": samples.a.numpy(), "samples_b": samples.b.numpy()}
    numbers, _, _ = two_models_evidence(evidence_arrays, quantile, n_boot=0, rng=np.random.default_rng(0))
    scalars.update({k: v for k, v in numbers.items() if k not in ("quantile", "chance")})
    scalars["heldout_pixel_std_median"] = float(np.median(arrays["heldout_pixel_std"]))
    for which in MODELS:
        x = samples[which][samples.ok(which)]
        scalars[f"pixel_std_median_{which}"] = float(x.flatten(1).float().std(dim=1).median()) if len(x) else float("nan")
    for which in MODELS:
        scalars[f"valid_{which}"] = float(samples.ok(which).sum())
        info = dict(samples.info.get(which, {}))
        if "steps_sum" in info:
            steps = info.pop("steps_sum")
            info["steps_mean"] = steps / info["finished"] if info.get("finished") else float("nan")
        for key, value in info.items():
            scalars[f"{key}_{which}"] = value
    return scalars, arrays


class TwoModelsTest(SamplingTest):
    """Per-epoch two-models cosine-similarity test (see the module docstring).

    Args:
        transforms: match training images under their 8 flips/rotations too.
        quantile: calibration quantile of the held-out distribution for the memorization rate.
        line: fixed similarity line also reported (the paper's 0.95).
        grid: samples shown in the sample grid.
        gallery_k: samples in each gallery (the most and the least memorized).
        **kwargs: :class:`SamplingTest`'s ``every_n_epochs``, ``n_samples``, ``seed`` and
            ``batch_size``.
    """

    name = "two_models"
    requires = ("generate",)
    fits = "every family"

    def __init__(
        self,
        transforms: bool = True,
        quantile: float = 0.99,
        line: float = 0.95,
        grid: int = 8,
        gallery_k: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require(0 < quantile < 1, "TwoModelsTest.quantile", "in (0, 1)", quantile)
        require(-1 <= line <= 1, "TwoModelsTest.line", "a cosine similarity, in [-1, 1]", line)
        require(grid >= 1, "TwoModelsTest.grid", "positive", grid)
        require(gallery_k >= 1, "TwoModelsTest.gallery_k", "positive", gallery_k)
        self.transforms = transforms
        self.quantile = quantile
        self.line = line
        self.grid = grid
        self.gallery_k = gallery_k

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        subsets = {s: dm.subset_images(s) for s in ("a", "b", "val")}
        samples = self.draw(trainer, pl_module)
        with self.timed("search"), self.bar(trainer, 2 * SEARCHES, "nearest-neighbour search", "search") as bar:
            scalars, arrays = two_models_statistics(samples, subsets, True, self.transforms, self.quantile, self.line, bar.update)
            plain, plain_arrays = two_models_statistics(
                samples, subsets, False, self.transforms, self.quantile, self.line, bar.update
            )
        selection = gallery.gallery_selection(arrays, self.gallery_k)
        scalars.update(
            {f"plain/{k}": v for k, v in plain.items() if k.startswith(("a_vs_b", "nearest", "heldout", "memorization", "gap"))}
        )
        arrays.update({f"plain_{k}": v for k, v in plain_arrays.items()})
        arrays["samples_a"], arrays["samples_b"] = samples.a.numpy(), samples.b.numpy()
        arrays["ok_a"], arrays["ok_b"] = samples.ok_a.numpy(), samples.ok_b.numpy()
        arrays.update(selection)
        self.save_arrays(trainer, arrays)  # arrays first: a logged record always has its arrays
        self.log_scalars(trainer, scalars)
        kinds = ("a_vs_b", "own_a", "own_b", "other_a", "other_b", "heldout", "sibling_a", "sibling_b", "heldout_sibling")
        self.log_histograms(trainer, {k: arrays[k] for k in kinds})
        self.save_figure(trainer, self.histogram_figure(arrays, scalars), "histograms")
        self.save_image(trainer, self.grid_image(samples, subsets, arrays), "samples", tag="_grid")
        for kind in gallery.KINDS:
            triples = gallery.gallery_triples(samples, subsets, selection, kind)
            self.save_figure(
                trainer, gallery.gallery_figure(triples, selection, kind), f"gallery_{kind}", tag=f"_gallery_{kind}", log=False
            )
            if triples:
                self.log_images(
                    trainer, f"gallery_{kind}", [gallery.strip(t) for t in triples], gallery.captions(selection, kind)
                )

    def histogram_figure(self, arrays: dict[str, np.ndarray], scalars: dict[str, float]):
        """Left: A vs B similarity. Middle: nearest-training similarity, own, other and held-out.
        Right: variety, each sample's nearest other sample of its model against held-out galaxies'."""
        from galgen_lightning.plotting import pyplot

        plt = pyplot()

        fig, (left, right, variety) = plt.subplots(1, 3, figsize=(16, 3.8))
        finite = [v for v in arrays.values() if v.dtype.kind == "f" and v.size and np.isfinite(v).any()]
        low = min(0.0, min(float(np.nanmin(v)) for v in finite)) if finite else 0.0
        bins = np.linspace(max(low, -1.0), 1.0, 51)
        left.hist(
            arrays["a_vs_b"],
            bins=bins,
            color="tab:purple",
            alpha=0.8,
            label=f"A vs B, same noise (median {scalars['a_vs_b_median']:.3f})",
        )
        left.axvline(self.line, color="k", ls=":", lw=1, label=f"fixed line {self.line:g}")
        left.set_title("samples of A and B from the same noise")
        left.set_xlabel("cosine similarity of A's and B's sample (mean removed)")
        left.set_ylabel("count of sample pairs")
        left.legend(fontsize=7, loc="upper left")
        own = np.concatenate([arrays["own_a"], arrays["own_b"]])
        other = np.concatenate([arrays["other_a"], arrays["other_b"]])
        curves = (
            (own, f"sample vs own training subset (memorized {scalars['memorization_rate']:.2f})", "tab:red"),
            (other, f"sample vs other training subset (own - other {scalars['gap_median']:+.3f})", "tab:blue"),
            (arrays["heldout"], "held-out real image vs training subset", "tab:gray"),
        )
        for values, label, color in curves:
            values = values[np.isfinite(values)]
            if len(values):  # no usable sample: no curve (a density of nothing is undefined)
                right.hist(values, bins=bins, alpha=0.5, density=True, label=label, color=color)
        lines = (("", "k", "--", "samples vs other subset"), ("_heldout", "tab:gray", ":", "held-out"))
        for suffix, color, style, of in lines:
            quantile = scalars[f"memorization_threshold{suffix}"]
            right.axvline(quantile, color=color, ls=style, lw=1, label=f"{self.quantile:.0%} quantile of {of}")
        right.set_title("nearest training image of each sample")
        right.set_xlabel("cosine similarity to nearest training image (mean removed)")
        right.set_ylabel("probability density")
        right.legend(fontsize=7, loc="upper left")
        self.variety_panel(variety, arrays, scalars, bins)
        fig.tight_layout()
        return fig

    @staticmethod
    def variety_panel(ax, arrays: dict[str, np.ndarray], scalars: dict[str, float], bins: np.ndarray) -> None:
        """Each sample's nearest other sample of its model, and each held-out galaxy's nearest other
        held-out galaxy, with the repeat threshold (:mod:`~galgen_lightning.evaluation.variety`)."""
        if "sibling_block" not in arrays:  # arrays written before galgen measured variety
            ax.set_axis_off()
            return
        curves = (
            (np.concatenate([arrays["sibling_a"], arrays["sibling_b"]]), "sample vs other samples of its model", "tab:orange"),
            (arrays["heldout_sibling"], "held-out real image vs other held-out images", "tab:gray"),
        )
        for values, label, color in curves:
            values = values[np.isfinite(values)]
            if len(values):
                ax.hist(values, bins=bins, alpha=0.5, density=True, label=label, color=color)
        threshold = scalars.get("repeat_threshold", float("nan"))
        if np.isfinite(threshold):
            share = scalars["repeat_share"]
            label = f"{REPEAT_QUANTILE:.0%} quantile of held-out (repeat share {share:.2f})"
            ax.axvline(threshold, color="k", ls="--", lw=1, label=label)
        block = int(arrays["sibling_block"][0])
        ax.set_title(f"variety: nearest other image, blocks of {block}" if block else "variety: too few images")
        ax.set_xlabel("cosine similarity to nearest other image (mean removed)")
        ax.set_ylabel("probability density")
        ax.legend(fontsize=7, loc="upper left")

    def grid_image(self, samples, subsets: dict[str, torch.Tensor], arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Rows: A's samples, B's samples (same seeds), A's and B's nearest training images."""
        k = min(self.grid, len(samples.a))
        rows = [samples.a[:k], samples.b[:k]]
        for which in MODELS:
            nearest = torch.zeros_like(samples.a[:k])
            pos = {int(s): i for i, s in enumerate(arrays[f"sample_index_{which}"])}
            for j in range(k):
                if j in pos:
                    nearest[j] = subsets[which][int(arrays[f"own_index_{which}"][pos[j]])]
            rows.append(nearest)
        return mosaic(rows)
