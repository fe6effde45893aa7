"""Morphology with statmorph: known profiles, failures counted, distances, and the CLI callback."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support import CONFIGS, read_jsonl, run_cli

from galgen_lightning.evaluation import morphology_image, morphology_stats
from galgen_lightning.evaluation import morphology_measure as M

pytest.importorskip("statmorph")
pytest.importorskip("photutils")


def sersic_stamp(n: float, size: int = 32, noise: float = 0.01, seed: int = 0) -> np.ndarray:
    """A centred, slightly elliptical Sersic profile (peak 0.8) plus Gaussian noise."""
    from astropy.modeling.models import Sersic2D

    y, x = np.mgrid[:size, :size]
    profile = Sersic2D(amplitude=1.0, r_eff=size / 8, n=n, x_0=(size - 1) / 2, y_0=(size - 1) / 2, ellip=0.2, theta=0.5)(x, y)
    return 0.8 * profile / profile.max() + np.random.default_rng(seed).normal(0.0, noise, (size, size))


def fake_table(values: dict[str, list[float]], flags: list[int], reasons: list[str]) -> dict[str, np.ndarray]:
    measurements = [
        M.Measurement({v: values[v][i] for v in M.VARIABLES}, flag=flags[i], reason=reasons[i]) for i in range(len(flags))
    ]
    return M.table(measurements, max_flag=1)


@pytest.mark.cli  # a process pool of fresh workers (7 s): make test, not make test-fast
def test_sersic_n4_is_more_concentrated_than_n1_in_parallel():
    images = np.stack([sersic_stamp(n, seed=s) for n in (1.0, 4.0) for s in (0, 1)])
    with M.WorkerPool(2) as pool:
        tables = M.measure_groups({"n1": (images[:2], None), "n4": (images[2:], [True, True])}, pool=pool)
        again = M.measure_images(images[3:], pool=pool)  # the pool outlives a call
    n1, n4 = tables["n1"], tables["n4"]
    for table in (n1, n4):
        assert list(table["reason"]) == ["", ""] and table["used"].all(), table["message"]
    assert n4["concentration"].min() > n1["concentration"].max() + 0.5  # de Vaucouleurs vs exponential: ~3.7 vs ~2.7 here
    assert 2.3 < n1["concentration"].mean() < 3.1
    assert n4["gini"].min() > n1["gini"].max()
    # the pool gives exactly what one process gives
    assert again["concentration"][0] == n4["concentration"][1]
    assert M.measure_image(images[3]).values["concentration"] == pytest.approx(n4["concentration"][1], rel=1e-12)


def test_blank_noise_and_broken_images_are_counted_failures():
    rng = np.random.default_rng(0)
    noise = [rng.normal(0.0, 0.05, (32, 32)) for _ in range(4)]
    images = np.stack([np.zeros((32, 32)), np.full((32, 32), 0.3), *noise, np.full((32, 32), np.nan), sersic_stamp(1.0)])
    valid = np.ones(len(images), dtype=bool)
    valid[-1] = False  # a sample its model marked invalid is counted, never measured
    table = M.measure_images(images, valid=valid, workers=1)
    assert list(table["reason"]) == ["blank", "blank", *["no_source"] * 4, "nonfinite", "invalid_sample"]
    assert (table["flag"] == -1).all() and not table["used"].any()
    assert np.isnan(table["concentration"]).all()
    counts = M.counts(table)
    assert counts["n"] == 8 and counts["failed"] == 8 and counts["measured"] == counts["used"] == 0
    assert counts["failed_blank"] == 2 and counts["failed_no_source"] == 4 and counts["failed_nonfinite"] == 1
    assert counts["failed_invalid_sample"] == 1 and sum(counts[f"failed_{r}"] for r in M.FAILURES) == 8


def test_a_segmentation_crash_is_a_counted_failure(monkeypatch):
    def broken(*args, **kwargs):
        raise MemoryError("no room")

    monkeypatch.setattr(morphology_image, "segment", broken)
    result = M.measure_image(sersic_stamp(1.0))
    assert result.reason == "segmentation_error" and "MemoryError: no room" in result.message


def test_lupton_clipped_noise_is_not_used():
    """Sky noise clipped at zero (an empty Lupton stamp) is not a galaxy: it fails or is flagged."""
    rng = np.random.default_rng(1)
    images = np.clip(rng.normal(0.0, 0.05, (6, 32, 32)), 0.0, None)
    table = M.measure_images(images, workers=1)
    assert not table["used"].any()


def test_main_label_prefers_the_centre_then_the_nearest_segment():
    segmap = np.zeros((9, 9), dtype=int)
    segmap[0:3, 0:3] = 1
    segmap[3:6, 3:6] = 2
    segmap[5:7, 6:9] = 3
    assert M.main_label(segmap) == 2
    segmap[segmap == 2] = 0
    assert M.main_label(segmap) == 3  # its (5, 6) is nearer to (4, 4) than (2, 2)
    assert M.main_label(np.zeros((8, 8), dtype=int)) == 0


def test_faint_segments_are_dropped():
    image = np.zeros((10, 10))
    segmap = np.zeros((10, 10), dtype=int)
    image[1:3, 1:3], segmap[1:3, 1:3] = 1.0, 1  # S/N 4 / (0.1 * 2) = 20
    image[6:8, 6:8], segmap[6:8, 6:8] = 0.2, 2  # S/N 4
    kept = M.drop_faint_segments(image, segmap, sigma=0.1, min_snr=10)
    assert set(np.unique(kept)) == {0, 1}
    assert M.drop_faint_segments(image, segmap, sigma=0.1, min_snr=50) is None


def test_compare_matches_scipy():
    from scipy.stats import ks_2samp, wasserstein_distance

    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, 200), rng.normal(0.3, 1.2, 150)
    out = M.compare(np.append(x, np.nan), y)
    assert out["w1"] == pytest.approx(wasserstein_distance(x, y), rel=1e-12)
    ks = ks_2samp(x, y)
    assert out["ks"] == pytest.approx(ks.statistic, rel=1e-12) and out["ks_p"] == pytest.approx(ks.pvalue, rel=1e-12)
    assert M.compare(x, x)["w1"] == 0.0 and M.compare(x, x)["ks_p"] == pytest.approx(1.0)
    assert all(np.isnan(v) for v in M.compare(x, [1.0]).values())


def test_statistics_count_flagged_and_use_only_good_fits(tmp_path):
    values = {v: [1.0, 2.0, 3.0, float("nan")] for v in M.VARIABLES}
    real = fake_table(values, flags=[0, 1, 2, -1], reasons=["", "", "", "no_source"])
    samples = fake_table({v: [1.5, 2.5, 9.0, 9.0] for v in M.VARIABLES}, flags=[0, 0, 0, 4], reasons=["", "", "", "catastrophic"])
    groups = {"real_a": real, "real_b": real, "val": real, "sample_a": samples, "sample_b": samples}
    scalars, arrays = M.morphology_statistics(groups, max_flag=1)
    assert scalars["real_a/n"] == 4 and scalars["real_a/measured"] == 3 and scalars["real_a/failed"] == 1
    assert scalars["real_a/flagged"] == 1 and scalars["real_a/suspect"] == 1 and scalars["real_a/used"] == 2
    assert scalars["real_a/failed_no_source"] == 1 and scalars["sample_a/failed_catastrophic"] == 1
    assert scalars["real_a/concentration_median"] == 1.5  # the flagged 3.0 is left out
    w1 = scalars["sample_a_vs_real_a/gini_w1"]
    from scipy.stats import wasserstein_distance

    assert w1 == pytest.approx(wasserstein_distance([1.5, 2.5, 9.0], [1.0, 2.0]))
    assert scalars["sample_a_vs_sample_b/m20_w1"] == 0.0
    for x, y in M.COMPARISONS:
        for v in M.VARIABLES:
            assert {f"{x}_vs_{y}/{v}_{k}" for k in ("w1", "ks", "ks_p")} <= scalars.keys()
    # every per-group .npz key is documented in the statistics module's docstring (galgen report reads them)
    doc = morphology_stats.__doc__
    for key in arrays:
        suffix = key.split("/", 1)[1] if "/" in key else key
        documented = f"<group>/{suffix}" if "/" in key else f"``{key}``"
        assert documented in doc or (suffix in M.VARIABLES and "<group>/<variable>" in doc), key
    path = tmp_path / "m.npz"
    np.savez_compressed(path, **arrays)
    loaded = np.load(path)  # strings are stored as unicode arrays: no pickle needed
    assert list(loaded["real_a/reason"]) == ["", "", "", "no_source"] and list(loaded["variables"]) == list(M.VARIABLES)
    fig = M.morphology_figure(arrays, scalars)
    fig.savefig(tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 10_000


def test_options_are_checked():
    with pytest.raises(ValueError, match="threshold"):
        M.MorphologyOptions(threshold=0)
    with pytest.raises(ValueError, match="workers"):
        M.measure_images(np.zeros((2, 16, 16)), workers=0)
    with pytest.raises(ValueError, match="valid"):
        M.measure_images(np.zeros((2, 16, 16)), valid=[True])
    assert M.MorphologyOptions().resolved(64) == {"n_pixels": 5, "border": 8, "skybox_size": 16}
    assert M.MorphologyOptions().resolved(16) == {"n_pixels": 3, "border": 2, "skybox_size": 8}


def test_callback_without_statmorph_stops_at_setup(monkeypatch):
    from galgen_lightning.errors import GalgenError
    from galgen_lightning.evaluation import MorphologyTest
    from galgen_lightning.evaluation import morphology as callback_module

    callback = MorphologyTest(n_samples=4)
    callback.setup(None, None, "fit")  # installed here: nothing happens
    monkeypatch.setattr(callback_module, "missing_dependencies", lambda: ["statmorph"])
    with pytest.raises(GalgenError, match=r"pip install 'galgen\[morphology\]'"):
        callback.setup(None, None, "fit")
    with pytest.raises(GalgenError, match=r"^MorphologyTest.n_samples must be positive, got 0$"):
        MorphologyTest(n_samples=0)


@pytest.mark.cli  # a whole galgen command: make test, not make test-fast
def test_cli_fit_with_morphology_callback_writes_npz_and_metrics(tmp_path, tiny_source_args):
    """16 px stamps are enough to segment and measure (docs/morphology.md); 4 images per group."""
    run = tmp_path / "run"
    args = [
        "fit",
        f"--config={CONFIGS / 'diffusion.yaml'}",
        f"--config={CONFIGS / 'quick' / 'diffusion.yaml'}",
        *tiny_source_args,
    ]
    args += ["--data.n=8", "--data.n_val=32", "--data.batch_size=8", "--model.init_args.blocks=2", "--model.init_args.width=8"]
    args += ["--model.init_args.max_steps=20", "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={run}"]
    args += ["--morphology=MorphologyTest", "--morphology.n_samples=4", "--morphology.n_real=4", "--morphology.workers=2"]
    assert run_cli(args) == 0
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["test"] == "morphology"]
    assert len(rows) == 1
    row = rows[0]
    arrays = np.load(run / "eval" / "morphology" / "epoch_0000.npz")
    for group in M.GROUPS:
        assert row[f"{group}/n"] == 4
        assert row[f"{group}/measured"] + row[f"{group}/failed"] == 4
        assert row[f"{group}/failed"] == sum(row[f"{group}/failed_{r}"] for r in M.FAILURES)
        for key in (*M.VARIABLES, "flag", "reason", "used", "index", "message", "sky", "sky_sigma"):
            assert arrays[f"{group}/{key}"].shape == (4,)
    assert row["real_a/used"] >= 2  # real 16 px galaxies are measurable
    assert row["real_a_vs_val/concentration_w1"] is not None
    assert row["seconds"] >= row["morphology_seconds"] > 0 and row["sampling_seconds"] >= 0  # the parts are timed
    assert (run / "eval" / "morphology" / "epoch_0000.png").stat().st_size > 10_000
    assert json.loads((run / "status.json").read_text())["state"] == "complete"


def test_one_rule_says_which_values_count():
    """The callback's statistics, its figure and the report's figure read values through one rule."""
    from galgen_lightning.evaluation.morphology_stats import is_used, usable

    flag = np.array([0, 1, 2, 0, -1])
    used = is_used(np.array([True, True, True, False, True]), flag, max_flag=1)
    assert used.tolist() == [True, True, False, False, False]
    values = np.array([0.5, np.nan, 0.7, 0.8, -99.0])
    assert usable(values, used).tolist() == [0.5]  # used, finite
    assert usable(values).tolist() == [0.5, 0.7, 0.8]  # a file without "used": finite, not -99
