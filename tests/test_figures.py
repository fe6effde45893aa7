"""Paper-ready figures: labelled axes, legends, no run state in titles, PNG >= 150 dpi with a PDF beside it;
and the discriminator test's multi-line W&B chart."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from galgen_lightning.evaluation import DenoisingTest, DiscriminatorTest, InversionTest, TwoModelsTest, gallery
from galgen_lightning.evaluation.base import EvalCallback
from galgen_lightning.evaluation.denoising import psnr_curves
from galgen_lightning.evaluation.discriminator import CURVES, LABELS, VAL_CURVES, discriminator_statistics, mean_series
from galgen_lightning.evaluation.inversion import DISTANCES
from galgen_lightning.evaluation.morphology_image import VARIABLES, Measurement
from galgen_lightning.evaluation.morphology_measure import table
from galgen_lightning.evaluation.morphology_stats import morphology_figure, morphology_statistics
from galgen_lightning.evaluation.two_models import two_models_statistics
from galgen_lightning.models.base import PairSamples


def _two_models():
    g = torch.Generator().manual_seed(0)
    subsets = {s: torch.rand(n, 1, 8, 8, generator=g) for s, n in (("a", 6), ("b", 6), ("val", 12))}
    ok = torch.ones(10, dtype=torch.bool)
    samples = PairSamples(subsets["a"][torch.arange(10) % 6], torch.rand(10, 1, 8, 8, generator=g), ok, ok)
    scalars, arrays = two_models_statistics(samples, subsets)
    return samples, subsets, scalars, arrays


def _histogram_figure():
    _, _, scalars, arrays = _two_models()
    return TwoModelsTest().histogram_figure(arrays, scalars)


def _gallery_figure():
    samples, subsets, _, arrays = _two_models()
    sel = gallery.gallery_selection(arrays, 3)
    return gallery.gallery_figure(gallery.gallery_triples(samples, subsets, sel, "most"), sel, "most")


class _Smooth:
    def denoise(self, which, y):
        return torch.nn.functional.avg_pool2d(y, 3, stride=1, padding=1, count_include_pad=False)


def _denoising_figure():
    g = torch.Generator().manual_seed(0)
    images = {name: torch.rand(2, 1, 8, 8, generator=g) for name in ("train_a", "train_b", "val")}
    return DenoisingTest().figure(psnr_curves(_Smooth(), images, [0.05, 0.1]))


def _losses(rng):
    losses = {c: rng.normal(2.0, 0.3, 32) for c in (*CURVES, *VAL_CURVES)}
    losses["score_da_train"] = rng.normal(0, 1, 32)
    return losses


def _discriminator_figure():
    rng = np.random.default_rng(0)
    losses = _losses(rng)
    scalars = discriminator_statistics(losses)
    history = [{"epoch": e, **discriminator_statistics(_losses(rng))} for e in range(3)]
    return DiscriminatorTest().figure(losses, scalars, history)


def _inversion_figure():
    rng = np.random.default_rng(0)
    arrays = {f"from_a/{key}_{k}": rng.normal(size=50) for key in ("z", "za", "zb") for k in range(2)}
    stats = {"a": {"w1": [{name: 0.01 for name in DISTANCES} for _ in range(2)], "max_err": [1e-5, 1e-5]}}
    return InversionTest().figure(arrays, stats, "a", [(4, 4, 4), (8, 2, 2)])


def _morphology_figure():
    rng = np.random.default_rng(0)
    groups = {}
    for name in ("real_a", "real_b", "val", "sample_a", "sample_b"):
        rows = [Measurement({v: float(rng.normal(2, 0.5)) for v in VARIABLES}, flag=0) for _ in range(12)]
        groups[name] = table(rows)
    scalars, arrays = morphology_statistics(groups)
    return morphology_figure(arrays, scalars)


FIGURES = {
    "two_models histograms": _histogram_figure,
    "two_models gallery": _gallery_figure,
    "denoising": _denoising_figure,
    "discriminator": _discriminator_figure,
    "inversion": _inversion_figure,
    "morphology": _morphology_figure,
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_every_panel_says_what_it_shows(name):
    import matplotlib.pyplot as plt

    fig = FIGURES[name]()
    try:
        panels = [ax for ax in fig.axes if ax.axison]  # a text panel (the morphology counts) has no axes
        assert panels
        for ax in panels:
            assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), (name, ax.get_title())
        if name != "two_models gallery":  # image panels: their labels are the captions
            legends = [ax.get_legend() for ax in panels if ax.get_legend() is not None]  # panels of one kind may share one
            assert legends and all(t.get_text().strip() for legend in legends for t in legend.get_texts()), name
        titles = [ax.get_title() for ax in fig.axes] + [fig._suptitle.get_text() if fig._suptitle else ""]
        assert not any(re.search(r"(epoch|step)\s*\d", t.lower()) for t in titles), titles  # no run state in titles
    finally:
        plt.close(fig)


def test_save_figure_writes_png_at_150_dpi_and_a_pdf(tmp_path):
    from PIL import Image

    trainer = SimpleNamespace(default_root_dir=str(tmp_path), current_epoch=3, global_step=7, loggers=[])
    path = EvalCallback().save_figure(trainer, _histogram_figure(), "histograms", tag="_x")
    assert path == tmp_path / "eval" / "eval" / "epoch_0003_x.png"
    with Image.open(path) as image:
        assert min(image.info["dpi"]) >= 149.9
    pdf = path.with_suffix(".pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_mean_series_per_curve_over_epochs():
    history = [
        {"epoch": 0, "da_ga_mean": 2.5, "db_gb_mean": 1.0, "da_val_mean": None},
        {"epoch": 1, "da_ga_mean": 2.2, "db_gb_mean": float("nan"), "da_val_mean": 2.4},
        {"epoch": 1, "da_ga_mean": 2.1, "db_gb_mean": 1.5, "da_val_mean": 2.3},  # the same epoch again (a resume): the last wins
        {"epoch": 3, "da_ga_mean": 2.0},
    ]
    xs, ys, keys = mean_series(history)
    assert keys == [LABELS["da_ga"], LABELS["db_gb"], LABELS["da_val"]]
    assert xs == [[0, 1, 3], [0, 1], [1]] and ys == [[2.5, 2.1, 2.0], [1.0, 1.5], [2.3]]
    assert mean_series([]) == ([], [], [])


class _Run:
    def __init__(self) -> None:
        self.logged: list[dict] = []

    def log(self, data: dict) -> None:
        self.logged.append(data)


def test_chart_goes_to_wandb_as_one_line_series_per_epoch():
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(offline=True)
    logger._experiment = _Run()  # no W&B run: the logger hands its calls to this recorder
    trainer = SimpleNamespace(loggers=[logger], current_epoch=1, global_step=40)
    history = [{"epoch": e, **{f"{c}_mean": 2.0 + e + i / 10 for i, c in enumerate((*CURVES, *VAL_CURVES))}} for e in (0, 1)]
    DiscriminatorTest().log_chart(trainer, history)
    (logged,) = logger._experiment.logged
    assert logged["epoch"] == 1 and logged["trainer/global_step"] == 40
    chart = logged["discriminator/hinge_means"]
    assert chart.table.columns == ["step", "lineKey", "lineVal"]
    assert len(chart.table.data) == 2 * 6 and [0, LABELS["da_ga"], 2.0] in chart.table.data
    assert all(" " not in key and "." not in key for key in logged)
