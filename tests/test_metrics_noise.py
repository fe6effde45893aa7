"""Shared noise, similarities and statistics against direct numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from galgen_lightning.metrics import (
    dihedral,
    nearest_similarity,
    paired_cosine,
    psnr,
    summarize,
)
from galgen_lightning.noise import counter_normal


def test_noise_is_a_function_of_seed_index_and_stream():
    full = counter_normal(3, torch.arange(10), (1, 8, 8), stream=5)
    part = counter_normal(3, torch.tensor([7, 2]), (1, 8, 8), stream=5)
    assert torch.equal(part[0], full[7]) and torch.equal(part[1], full[2])
    assert not torch.equal(counter_normal(3, torch.arange(2), (1, 8, 8), stream=6), full[:2])
    assert not torch.equal(counter_normal(4, torch.arange(2), (1, 8, 8), stream=5), full[:2])
    assert not torch.equal(full[0], full[1])


def test_noise_is_standard_normal_and_uncorrelated():
    z = counter_normal(0, torch.arange(4000), (64,)).numpy()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(np.mean(z**4) - 3) < 0.1  # Gaussian kurtosis
    c = np.corrcoef(z[:, :8].T)
    assert np.abs(c - np.eye(8)).max() < 0.06
    steps = np.stack([counter_normal(0, torch.arange(2000), (4,), stream=t).numpy()[:, 0] for t in range(4)])
    assert np.abs(np.corrcoef(steps) - np.eye(4)).max() < 0.08


def _np_cos(a, b, centre):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    if centre:
        a, b = a - a.mean(), b - b.mean()
    return a @ b / np.linalg.norm(a) / np.linalg.norm(b)


@pytest.mark.parametrize("centre", [True, False])
def test_similarities_match_numpy(centre):
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 1, 6, 6, generator=g), torch.rand(5, 1, 6, 6, generator=g)
    ref = torch.rand(7, 1, 6, 6, generator=g)
    got = paired_cosine(a, b, centre).numpy()
    want = [_np_cos(a[i].numpy(), b[i].numpy(), centre) for i in range(5)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    sim, idx = nearest_similarity(a, ref, centre, chunk_size=3)
    table = np.array([[_np_cos(a[i].numpy(), ref[j].numpy(), centre) for j in range(7)] for i in range(5)])
    np.testing.assert_allclose(sim.numpy(), table.max(1), rtol=1e-5)
    np.testing.assert_array_equal(idx.numpy(), table.argmax(1))
    sim8, idx8 = nearest_similarity(a, ref, centre, transforms=True, chunk_size=4)
    views = dihedral(ref).numpy()
    table8 = np.array([[max(_np_cos(a[i].numpy(), views[k, j], centre) for k in range(8)) for j in range(7)] for i in range(5)])
    np.testing.assert_allclose(sim8.numpy(), table8.max(1), rtol=1e-5)
    np.testing.assert_array_equal(idx8.numpy(), table8.argmax(1))


def test_flipped_copy_is_found_only_with_transforms():
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(4, 1, 8, 8, generator=g)
    q = torch.rot90(ref[2:3], 1, dims=(-2, -1)).flip(-1)
    sim, idx = nearest_similarity(q, ref, transforms=True)
    assert sim.item() == pytest.approx(1.0, abs=1e-6) and idx.item() == 2
    assert nearest_similarity(q, ref, transforms=False)[0].item() < 0.9


def test_summarize():
    s = summarize(np.array([0.9, 0.96, 0.97, 0.5]))
    assert s["median"] == pytest.approx(0.93) and s["above_0p95"] == 0.5
    assert np.isnan(summarize(np.array([]))["median"])


def test_empty_and_constant_inputs_do_not_break():
    empty = torch.zeros(0, 1, 4, 4)
    assert paired_cosine(empty, empty).shape == (0,)
    assert nearest_similarity(empty, torch.rand(3, 1, 4, 4))[0].shape == (0,)
    flat = torch.ones(2, 1, 4, 4)
    assert torch.isfinite(paired_cosine(flat, flat)).all()


def test_psnr():
    x = torch.zeros(2, 1, 4, 4)
    y = x + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)
    np.testing.assert_allclose(psnr(y, x).numpy(), [20.0, 40.0], rtol=1e-5)
