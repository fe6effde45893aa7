"""Near-duplicate detection: every kind of copy caught, distinct images kept, prefix-stable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from galgen_lightning.data.dedup import Search, dihedral_views, duplicate_mask, nearest_earlier, pair_scores, spectrum_descriptors
from galgen_lightning.errors import GalgenError
from galgen_lightning.metrics import DIHEDRAL_NAMES


def _galaxies(n: int, side: int = 32, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """Elliptical Gaussian blobs (random centre, size, shape, angle) with a faint companion,
    plus noise: distinct images that look alike."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:side, :side].astype(np.float64)
    out = np.empty((n, side, side), dtype=np.float32)
    for i in range(n):
        img = np.zeros((side, side))
        for amp in (1.0, rng.uniform(0.1, 0.4)):
            cy, cx = rng.uniform(0.3 * side, 0.7 * side, 2) if amp == 1.0 else rng.uniform(0.1 * side, 0.9 * side, 2)
            a, b = rng.uniform(0.05, 0.15) * side, rng.uniform(0.03, 0.08) * side
            t = rng.uniform(0, np.pi)
            u = (x - cx) * np.cos(t) + (y - cy) * np.sin(t)
            v = -(x - cx) * np.sin(t) + (y - cy) * np.cos(t)
            img += amp * np.exp(-0.5 * ((u / a) ** 2 + (v / b) ** 2))
        out[i] = img + noise * rng.standard_normal((side, side))
    return out


def _noisy(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (img + 0.01 * float(img.max() - img.min()) * rng.standard_normal(img.shape)).astype(np.float32)


def _crop_shift(img: np.ndarray, dy: int, dx: int, other: np.ndarray) -> np.ndarray:
    out = np.roll(img, (dy, dx), axis=(0, 1))
    rows = slice(None, dy) if dy > 0 else slice(dy, None)
    cols = slice(None, dx) if dx > 0 else slice(dx, None)
    if dy:
        out[rows] = other[rows]
    if dx:
        out[:, cols] = other[:, cols]
    return out


def _copies(base: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One copy of a different image of ``base`` per kind."""
    views = dihedral_views(torch.from_numpy(base[20:27]))
    made = {"exact": base[0].copy(), "noise 1%": _noisy(base[1], rng)}
    for s in (1, 2, 3):
        made[f"roll {s}"] = np.roll(base[1 + s], (s, -s), axis=(0, 1))
        made[f"crop {s}"] = _crop_shift(base[4 + s], -s, s, base[30])
        made[f"crop {s} one axis"] = _crop_shift(base[7 + s], 0, -s, base[31])
    for t in range(1, 8):
        made[DIHEDRAL_NAMES[t]] = views[t - 1, t].numpy()
    made["all at once"] = _noisy(_crop_shift(np.rot90(base[11]).copy(), 2, -3, base[32]), rng)
    return made


def test_every_kind_of_copy_is_caught_and_originals_kept():
    rng = np.random.default_rng(1)
    base = _galaxies(64)
    made = _copies(base, rng)
    images = np.concatenate([base, np.stack(list(made.values()))])
    drop = duplicate_mask(images)
    assert not drop[: len(base)].any()
    missed = [kind for kind, d in zip(made, drop[len(base) :]) if not d]
    assert not missed


def test_copies_are_caught_among_many_lookalikes():
    rng = np.random.default_rng(2)
    base = _galaxies(400, seed=3)
    made = _copies(base, rng)
    images = np.concatenate([base, np.stack(list(made.values()))])
    score, index = nearest_earlier(images)
    assert (score[len(base) :] > 0.97).all()
    sources = [0, 1, 2, 5, 8, 3, 6, 9, 4, 7, 10, 20, 21, 22, 23, 24, 25, 26, 11]
    assert sorted(index[len(base) :].tolist()) == sorted(sources)


def test_distinct_lookalikes_are_kept():
    images = _galaxies(300, seed=4)
    drop = duplicate_mask(images)
    assert drop.sum() <= 3  # at most 1% of distinct images


def test_prefix_does_not_depend_on_later_images():
    rng = np.random.default_rng(5)
    base = _galaxies(80, seed=6)
    images = np.concatenate([base, np.stack(list(_copies(base, rng).values()))])
    images = images[rng.permutation(len(images))]
    full = duplicate_mask(images)
    assert full.any()
    for m in (1, 2, 17, 50, 81):
        assert np.array_equal(duplicate_mask(images[:m]), full[:m])
    # the scores themselves, to the last bit, also across block boundaries
    score, index = nearest_earlier(images, chunk=32, batch=8)
    for m in (2, 31, 32, 33, 65, 90):
        s_m, i_m = nearest_earlier(images[:m], chunk=32, batch=8)
        assert np.array_equal(s_m, score[:m]) and np.array_equal(i_m, index[:m])
    # the block sizes bound memory only: the default blocks give the same scores (of equally
    # scoring earlier images, another may be named)
    default_score, default_index = nearest_earlier(images)
    assert np.array_equal(default_score, score) and (default_index == index).mean() > 0.9


def test_the_reviewers_blob_set_keeps_one_of_each():
    # faint noise plus a Gaussian blob (peak 1, 1-3 px wide, centred within 4 px of the middle)
    rng = np.random.default_rng(7)
    n, side = 210, 32
    y, x = np.mgrid[:side, :side]
    cy, cx = rng.uniform(side / 2 - 4, side / 2 + 4, (2, n))
    width = rng.uniform(1, 3, n)
    distinct = np.exp(-((y - cy[:, None, None]) ** 2 + (x - cx[:, None, None]) ** 2) / (2 * width[:, None, None] ** 2))
    distinct = (distinct + 0.05 * rng.standard_normal((n, side, side))).astype(np.float32)
    src = rng.integers(n, size=90)
    copies = distinct[src].copy()
    copies[60:] = [_noisy(c, rng) for c in copies[60:]]
    group = np.concatenate([np.arange(n), src])
    order = rng.permutation(len(group))
    drop = duplicate_mask(np.concatenate([distinct, copies])[order])
    kept = np.bincount(group[order][~drop], minlength=n)
    assert (kept == 1).all()


def test_threshold_is_a_correlation():
    rng = np.random.default_rng(8)
    base = _galaxies(30, seed=9)
    noisy = (base[3] + 0.3 * base[3].std() * rng.standard_normal(base[3].shape)).astype(np.float32)
    images = np.concatenate([base, noisy[None], base[5][None]])
    score, index = nearest_earlier(images)
    expected = np.corrcoef(noisy.ravel(), base[3].ravel())[0, 1]  # unshifted, unflipped
    assert index[30] == 3 and score[30] == pytest.approx(expected, abs=0.01)
    assert duplicate_mask(images, threshold=score[30] - 0.01)[30]
    assert not duplicate_mask(images, threshold=score[30] + 0.01)[30]
    above_one = duplicate_mask(images, threshold=1.01)  # only exact copies: by content hash
    assert above_one.tolist() == [False] * 31 + [True]
    assert duplicate_mask(images, threshold=-1.0)[1:].all()


def test_pair_scores_match_a_direct_computation():
    rng = np.random.default_rng(10)
    for h, w, shift in ((9, 9, 1), (10, 13, 2)):
        x = torch.from_numpy(rng.random((4, h, w)).astype(np.float32))
        got = pair_scores(x, torch.tensor([0, 1]), torch.tensor([[2, 3], [3, -1]]), shift)
        for row, (q, cands) in enumerate(((0, (2, 3)), (1, (3, -1)))):
            for col, c in enumerate(cands):
                if c < 0:
                    assert got[row, col] == -np.inf
                    continue
                best = -1.0
                for view in dihedral_views(x[q][None])[0].numpy():
                    for dy in range(-shift, shift + 1):
                        for dx in range(-shift, shift + 1):
                            ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
                            a = view[max(0, dy) : min(h, h + dy), max(0, dx) : min(w, w + dx)]
                            best = max(best, np.corrcoef(a.ravel(), x[c].numpy()[ys, xs].ravel())[0, 1])
                assert got[row, col].item() == pytest.approx(best, abs=1e-4)


def test_views_and_descriptors():
    x = torch.from_numpy(_galaxies(2, side=16))
    views = dihedral_views(x)
    image = x[0].numpy()  # DIHEDRAL_NAMES: identity, rot90, rot180, rot270, flip_lr, antitranspose, flip_ud, transpose
    expected = [np.rot90(image, k) for k in range(4)] + [np.fliplr(image), np.rot90(image, 2).T, np.flipud(image), image.T]
    assert all(np.array_equal(v.numpy(), e) for v, e in zip(views[0], expected))
    d = spectrum_descriptors(views[0])
    assert torch.allclose(d @ d.T, torch.ones(8, 8), atol=1e-5)  # unchanged by flips and rotations
    assert dihedral_views(torch.zeros(3, 4, 6)).shape == (3, 4, 4, 6)


def test_small_and_odd_inputs():
    assert duplicate_mask(np.zeros((0, 8, 8), np.float32)).shape == (0,)
    assert duplicate_mask(np.ones((1, 8, 8), np.float32)).tolist() == [False]
    flat = np.ones((3, 8, 8), np.float32)
    flat[1] *= 2
    assert duplicate_mask(flat).tolist() == [False, False, True]  # constant images: only the exact copy
    rect = _galaxies(20, side=24)[:, :, :20]
    images = np.concatenate([rect, np.flipud(rect[4])[None]])
    assert duplicate_mask(images).tolist() == [False] * 20 + [True]
    with pytest.raises(ValueError, match="n, h, w"):
        nearest_earlier(np.zeros((2, 1, 8, 8), np.float32))


def test_split_reexports_the_function():
    from galgen_lightning.data import split

    assert split.duplicate_mask is duplicate_mask


@pytest.mark.parametrize(
    "bad", [dict(candidates=0), dict(spectrum_size=0), dict(max_shift=-1), dict(noise_floor=float("nan"))], ids=str
)
def test_a_search_setting_out_of_range_is_refused_when_made(bad):
    ((name, value),) = bad.items()
    with pytest.raises(GalgenError, match=rf"^Search.{name} must be .*, got {value}$"):
        Search(**bad)


@pytest.mark.parametrize("bad", [dict(chunk=0), dict(batch=0)], ids=str)
def test_a_block_size_below_one_is_refused(bad):
    with pytest.raises(GalgenError, match=rf"{next(iter(bad))} must be at least 1, got 0"):
        nearest_earlier(np.zeros((3, 8, 8), np.float32), **bad)
