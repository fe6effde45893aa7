"""The denoising test's numbers on hand-made denoisers whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from galgen_lightning.evaluation.denoising import gain_scalars, psnr_curves

SIGMAS = [0.05, 0.1, 0.2]


class _Oracle:
    """``denoise(which, y)``: model ``which`` returns the nearest of its own images (a perfect memorizer)."""

    def __init__(self, sets: dict[str, torch.Tensor]) -> None:
        self.sets = sets

    def denoise(self, which: str, y: torch.Tensor) -> torch.Tensor:
        own = self.sets[which]
        d = torch.cdist(y.flatten(1), own.flatten(1))
        return own[d.argmin(dim=1)]


class _Same:
    """Both models apply the same smoothing: nothing separates A from B."""

    def denoise(self, which: str, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(y, 3, stride=1, padding=1, count_include_pad=False)


def _images(seed: int, count: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(count, 1, 8, 8, generator=g)


def test_curves_have_one_row_per_image_and_share_the_noise():
    images = {"train_a": _images(0), "train_b": _images(1, 3), "val": _images(2, 5)}
    curves = psnr_curves(_Same(), images, SIGMAS, seed=3)
    assert curves["psnr_in_train_a"].shape == (4, 3) and curves["psnr_out_b_val"].shape == (5, 3)
    # input PSNR falls as the noise grows (about -6 dB per doubling)
    steps = np.diff(curves["psnr_in_val"], axis=1)
    assert np.all(steps < -4) and np.all(steps > -8)
    again = psnr_curves(_Same(), images, SIGMAS, seed=3)
    assert np.array_equal(again["psnr_in_train_a"], curves["psnr_in_train_a"])


def test_a_memorizing_pair_scores_high_and_identical_models_score_zero():
    sets = {"a": _images(0), "b": _images(1)}
    images = {"train_a": sets["a"], "train_b": sets["b"], "val": _images(2)}
    memorizer = gain_scalars(psnr_curves(_Oracle(sets), images, SIGMAS))
    for which in ("a", "b"):
        assert memorizer[f"own_vs_other_{which}"] > 10  # exact recovery vs a wrong image
        assert memorizer[f"own_vs_val_{which}"] > 10
    same = gain_scalars(psnr_curves(_Same(), images, SIGMAS))
    assert same["own_vs_other_a"] == pytest.approx(0.0, abs=1e-9)
    assert same["own_vs_other_b"] == pytest.approx(0.0, abs=1e-9)
    assert same["gain_a_val"] == pytest.approx(same["gain_b_val"])
