"""`galgen report` on a fake sweep written by hand in the callbacks' formats, checked in a real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from support import run_cli

QUANTILE = 0.99
S = 100  # samples per model in the fake runs
DISTANCES = ("z_za", "z_zb", "za_zb", "za_normal", "zb_normal", "z_normal")


def _write_run(
    folder: Path, model: dict, n: int, image_size: int, state: str = "complete", callbacks: list | None = None
) -> None:
    """A run directory as galgen writes it: the tests under their keys (``callbacks``: an older
    run's list in ``trainer.callbacks`` instead)."""
    folder.mkdir(parents=True)
    two_models = {"class_path": "galgen_lightning.evaluation.TwoModelsTest", "init_args": {"quantile": QUANTILE, "n_samples": S}}
    config = {"model": model, "data": {"n": n, "image_size": image_size, "seed": 0, "n_val": 100}}
    config |= {"trainer": {"callbacks": callbacks}} if callbacks else {"trainer": {"callbacks": []}, "two_models": two_models}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "manifest.json").write_text(json.dumps({"n": n, "image_size": image_size, "seed": 0}))
    (folder / "status.json").write_text(json.dumps({"state": state, "epoch": 4}))


def test_a_run_reads_a_tests_options_from_its_key_or_from_an_older_callback_list(tmp_path):
    from galgen_lightning.rundir import load_run

    _write_run(tmp_path / "new", DIFFUSION, 4, 16)
    older = [{"class_path": "galgen_lightning.evaluation.TwoModelsTest", "init_args": {"quantile": 0.9}}]
    _write_run(tmp_path / "old", DIFFUSION, 4, 16, callbacks=older)
    assert load_run(tmp_path / "new").callback_args("TwoModelsTest") == {"quantile": QUANTILE, "n_samples": S}
    assert load_run(tmp_path / "old").callback_args("TwoModelsTest") == {"quantile": 0.9}
    assert load_run(tmp_path / "new").callback_args("InversionTest") == {}


def _append(folder: Path, record: dict) -> None:
    with (folder / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def _save(folder: Path, test: str, epoch: int, arrays: dict) -> None:
    path = folder / "eval" / test / f"epoch_{epoch:04d}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def _gallery(folder: Path, epoch: int, arrays: dict, k: int = 4) -> None:
    """The galleries in the two-models callback's naming contract: ``epoch_XXXX_gallery_most|least``
    as PNG with a PDF of the same stem, the shown indices (and their similarities) in the epoch's npz."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gap = arrays["own_a"] - arrays["other_a"]
    order = np.argsort(gap)
    for kind, idx in (("most", order[::-1][:k]), ("least", order[:k])):
        arrays[f"gallery_{kind}_idx"] = idx
        arrays[f"gallery_{kind}_own"], arrays[f"gallery_{kind}_other"] = arrays["own_a"][idx], arrays["other_a"][idx]
        fig, axes = plt.subplots(3, k, figsize=(k, 3))
        for j, i in enumerate(idx):
            for r, image in enumerate((arrays["samples_a"][i, 0], arrays["samples_b"][i, 0], arrays["samples_a"][i, 0] * 0.9)):
                axes[r, j].imshow(image, cmap="gray")
                axes[r, j].set_axis_off()
            axes[0, j].set_title(f"own {arrays['own_a'][i]:.2f}", fontsize=6)
        stem = folder / "eval" / "two_models" / f"epoch_{epoch:04d}_gallery_{kind}"
        fig.savefig(stem.with_suffix(".png"), dpi=150)
        fig.savefig(stem.with_suffix(".pdf"))
        plt.close(fig)


def _two_models(
    folder: Path,
    rate: float,
    a_vs_b: float,
    gap: float,
    rng: np.random.Generator,
    epoch: int = 4,
    faint: bool = False,
    gallery: bool = False,
) -> None:
    """Per-sample arrays in the callback's format: a share ``rate`` of copies (own similarity near 1,
    the other subset as far as for real galaxies), samples sharing ``a_vs_b`` of their noise-driven
    content between A and B, and faint samples when ``faint``."""
    heldout = rng.uniform(0.5, 0.8, 200).astype(np.float32)  # [val vs A, val vs B]
    arrays = {"heldout": heldout, "heldout_pixel_std": rng.normal(0.2, 0.02, 100).astype(np.float32)}
    base = rng.normal(size=(S, 64))
    for w in "ab":
        k = int(round(rate * S))
        other = rng.uniform(0.55, 0.75, S)
        own = np.concatenate([rng.uniform(0.95, 0.99, k), rng.uniform(0.55, 0.75, S - k) + gap])  # exchangeable with other
        arrays[f"own_{w}"], arrays[f"other_{w}"] = own.astype(np.float32), other.astype(np.float32)
        arrays[f"own_index_{w}"] = np.zeros(S, np.int64)
        arrays[f"sample_index_{w}"] = np.arange(S)
        x = a_vs_b * base + (1 - a_vs_b) * rng.normal(size=(S, 64))
        x = x / x.std(axis=1, keepdims=True) * rng.normal(0.2, 0.02, (S, 1)) * (0.02 if faint else 1.0)
        arrays[f"samples_{w}"] = (x + 0.5).reshape(S, 1, 8, 8).astype(np.float32)
        arrays[f"ok_{w}"] = np.ones(S, bool)
    ua = arrays["samples_a"].reshape(S, -1) - arrays["samples_a"].reshape(S, -1).mean(1, keepdims=True)
    ub = arrays["samples_b"].reshape(S, -1) - arrays["samples_b"].reshape(S, -1).mean(1, keepdims=True)
    arrays["a_vs_b"] = (ua * ub).sum(1) / np.linalg.norm(ua, axis=1) / np.linalg.norm(ub, axis=1)
    arrays["plain_a_vs_b"], arrays["plain_heldout"] = arrays["a_vs_b"], heldout
    for w in "ab":
        arrays[f"plain_own_{w}"], arrays[f"plain_other_{w}"] = arrays[f"own_{w}"], arrays[f"other_{w}"]
    if gallery:
        (folder / "eval" / "two_models").mkdir(parents=True, exist_ok=True)
        _gallery(folder, epoch, arrays)
    _save(folder, "two_models", epoch, arrays)
    from galgen_lightning.evaluation.statistics import two_models_evidence

    numbers, _, _ = two_models_evidence(arrays, QUANTILE, n_boot=0)
    record = {"epoch": epoch, "step": 100, "test": "two_models", "a_vs_b_median": float(np.median(arrays["a_vs_b"]))}
    record.update({k: v for k, v in numbers.items() if np.isfinite(v)})
    record.update(
        {
            "plain/memorization_rate": numbers["memorization_rate"],
            "plain/memorization_threshold": numbers["memorization_threshold"],
        }
    )
    _append(folder, record)


DIFFUSION = {"class_path": "galgen_lightning.models.diffusion.DiffusionPair", "init_args": {"blocks": 2, "width": 4}}
SMALL = {10: (0.9, 0.0, 0.1), 100: (0.7, 0.3, 0.05), 1000: (0.0, 0.9, 0.0)}
"""N -> (memorization rate, A-vs-B sharing, own-other gap) of the fake diffusion runs."""


def small_sweep(root: Path, ns: tuple[int, ...] = (10, 100, 1000), seed: int = 0) -> Path:
    """A sweep folder of complete fake diffusion runs (two-models results only) at ``ns``."""
    rng = np.random.default_rng(seed)
    for n in ns:
        run = root / f"diffusion-small-n{n}-seed0"
        _write_run(run, DIFFUSION, n, 16)
        _two_models(run, *SMALL[n], rng)
    return root


@pytest.fixture(scope="module")
def fake_sweep(tmp_path_factory) -> Path:
    """Diffusion over N = 10, 100, 1000 (+ an unfinished N = 10000), one Glow and one GAN run, morphology on one run."""
    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    diffusion = DIFFUSION
    for n, rate, ab, gap, state in (
        (10, 0.9, 0.0, 0.1, "complete"),
        (100, 0.7, 0.3, 0.05, "complete"),
        (1000, 0.0, 0.9, 0.0, "complete"),
        (10000, 0.0, 0.9, 0.0, "running"),
    ):
        run = root / f"diffusion-small-n{n}-seed0"
        _write_run(run, diffusion, n, 16, state)
        _two_models(run, rate, ab, gap, rng, gallery=n in (10, 1000))
        x = np.linspace(5, 35, 6).astype(np.float32)
        curves = {f"psnr_in_{i}": x for i in ("train_a", "train_b", "val")}
        curves.update({f"psnr_out_{w}_{i}": x + 5 for w in "ab" for i in ("train_a", "train_b", "val")})
        _save(run, "denoising", 4, curves)
        _append(run, {"epoch": 4, "step": 100, "test": "denoising", "gain_a_val": 5.0})
    # the morphology callback's format: <group>/<variable> (NaN where a fit failed), <group>/used, flags, strings
    variables = ("concentration", "asymmetry", "smoothness", "gini", "m20")
    groups = ("real_a", "real_b", "val", "sample_a", "sample_b")
    morph = {"variables": np.array(variables), "groups": np.array(groups), "max_flag": np.array(1)}
    for g in groups:
        for i, v in enumerate(variables):
            morph[f"{g}/{v}"] = rng.normal(1 + i, 0.3, 30)
        morph[f"{g}/used"], morph[f"{g}/flag"] = np.ones(30, bool), np.zeros(30, int)
        morph[f"{g}/reason"], morph[f"{g}/sky"] = np.array([""] * 30), np.zeros(30)
    for v in variables:
        morph[f"sample_a/{v}"][:3] = np.nan  # three failed fits
    morph["sample_a/used"][:5] = False  # and two flagged ones: left out
    morph["sample_a/reason"][:3] = "no_source"
    _save(root / "diffusion-small-n100-seed0", "morphology", 4, morph)
    record = {"epoch": 4, "step": 100, "test": "morphology", "sample_a/used": 25.0, "sample_a/n": 30.0}
    record.update(
        {f"{c}/{v}_{k}": 0.1 for c in ("sample_a_vs_real_a", "real_a_vs_val") for v in variables for k in ("w1", "ks", "ks_p")}
    )
    _append(root / "diffusion-small-n100-seed0", record)
    validate = root / "diffusion-small-n1000-seed0" / "validate-20261128-120000"  # morphology added later by galgen validate
    _save(validate, "morphology", 4, morph)
    _append(validate, record)

    glow = root / "glow-small-n10-seed0"
    _write_run(
        glow,
        {"class_path": "galgen_lightning.models.glow.GlowPair", "init_args": {"n_flow": 1, "n_block": 2, "hidden": 8}},
        10,
        16,
    )
    _two_models(glow, 0.0, 0.9, 0.0, rng, faint=True)
    record = {"epoch": 4, "step": 100, "test": "inversion"}
    arrays = {}
    for d in "ab":
        for k in range(2):
            for name in DISTANCES:
                record[f"from_{d}/level{k}/w1_{name}"] = 0.05 if name != "z_za" else 1e-6
            record[f"from_{d}/level{k}/max_err"] = 1e-5
            z = rng.normal(size=500).astype(np.float32)
            arrays.update(
                {f"from_{d}/z_{k}": z, f"from_{d}/za_{k}": z, f"from_{d}/zb_{k}": rng.normal(size=500).astype(np.float32)}
            )
    _append(glow, record)
    _save(glow, "inversion", 4, arrays)

    gan = root / "gan-small-n10-seed0"
    gan_model = {
        "class_path": "galgen_lightning.models.gan.GANPair",
        "init_args": {
            "latent_dim": 16,
            "fmap_max": 16,
            "fmap_inverse_coef": 6,
            "attn_sizes": [],
            "small_width": 8,
            "decoder_upsamples": 2,
        },
    }
    _write_run(gan, gan_model, 10, 32)
    _two_models(gan, 0.0, 0.1, 0.0, rng)
    for epoch in range(3):
        losses = {
            c: rng.normal(2 + 0.5 * (2 - epoch) * (i - 1.5), 0.2, 64).astype(np.float32)
            for i, c in enumerate(("da_ga", "da_gb", "db_gb", "db_ga"))
        }
        _save(gan, "discriminator", epoch, losses)
        _append(
            gan,
            {
                "epoch": epoch,
                "step": epoch * 10,
                "test": "discriminator",
                "score": 1.0 / (epoch + 1),
                "max_w1": 0.5,
                "max_mean_dev": 0.2,
                "overfit_a": 0.1,
                "overfit_b": 0.0,
            },
        )
    return root


@pytest.fixture(scope="module")
def built(fake_sweep, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    assert run_cli(["report", str(fake_sweep), "--out", str(out), "--bootstrap", "200"]) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_report_summary_verdicts_and_n_star(built):
    out, summary = built
    groups = summary["groups"]
    assert set(groups) == {"diffusion (16 px)", "glow (16 px)", "gan (32 px)"}
    diff = groups["diffusion (16 px)"]
    runs = {r["n"]: r for r in diff["runs"]}
    assert runs[10]["verdict"] == "memorizes" and runs[100]["verdict"] == "memorizes"
    assert runs[1000]["verdict"] == "generalizes", runs[1000]["evidence"]
    assert runs[10000]["verdict"].endswith("(run running)") and not runs[10000]["complete"]
    lo, hi = runs[10]["memorization_rate_ci"]
    assert lo <= runs[10]["memorization_rate"] <= hi and hi - lo > 0
    # the rate falls through 0.5 between N=100 (0.7) and N=1000 (about chance): log-linear, 10**2.3 ~ 200
    n_star = diff["n_star"]
    assert n_star["bracketed"] and 150 < n_star["n_star"] < 260
    assert n_star["ci"][0] < n_star["n_star"] < n_star["ci"][1]
    assert all(c["ok"] for c in diff["checks"])
    assert runs[10]["parameters"]["model"] > 0 and runs[10]["pixels"] == 10 * 16 * 16
    assert runs[10]["pixels_per_parameter"] == pytest.approx(10 * 256 / runs[10]["parameters"]["model"])
    assert groups["gan (32 px)"]["runs"][0]["parameters"].get("generator", 0) > 0
    glow = groups["glow (16 px)"]
    assert not glow["n_star"]["bracketed"]  # one N only: nothing to bracket, said so
    assert "not bracketed" in glow["n_star"]["statement"]
    # faded samples are never called generalization, even when A and B agree
    assert glow["runs"][0]["verdict"] == "poor samples" and "unlike any real galaxy" in glow["runs"][0]["evidence"]
    assert glow["runs"][0]["agreement_kappa"] > 0.5
    assert not diff["notes"]


def test_the_checks_use_the_run_the_figures_show(tmp_path):
    """One run per N for the transition checks and the figures alike: a complete seed before an
    unfinished lower seed (the checks once took the lowest seed and dropped that N)."""
    root = small_sweep(tmp_path / "sweep", ns=(1000,))
    rng = np.random.default_rng(1)
    for seed, state in ((0, "running"), (1, "complete")):
        run = root / f"diffusion-small-n10-seed{seed}"
        _write_run(run, DIFFUSION, 10, 16, state=state)
        (run / "manifest.json").write_text(json.dumps({"n": 10, "image_size": 16, "seed": seed}))
        _two_models(run, *SMALL[10], rng)
    assert run_cli(["report", str(root), "--bootstrap", "0", "--wandb", "false"]) == 0
    group = json.loads((root / "report" / "summary.json").read_text())["groups"]["diffusion (16 px)"]
    checks = {c["check"]: c for c in group["checks"]}
    assert "at least two complete runs over N" not in checks
    assert "N=10:" in checks["the smallest N memorizes (the judge's label)"]["detail"]


def test_report_files_and_html(built):
    out, _ = built
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    for prefix in (
        "summary_diffusion",
        "two_models_diffusion",
        "denoising_diffusion",
        "inversion_glow",
        "discriminator_epochs_gan",
        "discriminator_n_gan",
        "morphology_diffusion",
    ):
        assert any(f.startswith(prefix) for f in figures), (prefix, figures)
    assert not any(f.startswith(("morphology_glow", "morphology_gan")) for f in figures)  # only where the test ran
    page = (out / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(figures)
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "(run running)" in page and 'class="incomplete"' in page
    assert "N=1,000" in page.split("Morphology distributions")[1]  # from the run's galgen validate folder
    assert "W1(z, z_B)" in page and (out / "inversion_table_glow-16-px.csv").exists()
    assert "1 incomplete run(s) left out: N=10000 running" in page
    assert "sample_a vs real_a" in page and "real_a vs val" in page  # the morphology test's distances
    assert (out / "summary.csv").read_text().count("\n") == 7


def test_report_figures_have_pdfs_dpi_and_galleries(built):
    """Every figure has a PDF beside it and a PDF link on the page; the report's own figures are
    at least 150 dpi; the two-models galleries (most and least memorized) of the runs that wrote
    them are collected with their PDFs."""
    from PIL import Image

    out, _ = built
    pngs = sorted((out / "figures").glob("*.png"))
    page = (out / "index.html").read_text()
    for png in pngs:
        assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-", png
        assert f'href="figures/{png.stem}.pdf">PDF</a>' in page, png.name
    own = [p for p in pngs if not p.name.startswith("gallery_")]
    assert own and all(Image.open(p).info["dpi"][0] >= 149.9 for p in own)
    galleries = sorted(p.name for p in pngs if p.name.startswith("gallery_"))
    assert len(galleries) == 4, galleries  # most and least, for N = 10 and N = 1000
    assert {g.split("_")[1] for g in galleries} == {"most", "least"}
    section = page.split("Two-models galleries")[1].split("<h2>")[0]
    assert section.count("<img") == 4 and "the 4 samples most memorized" in section and "N=1,000" in section


def test_sweep_table_files(built):
    out, summary = built
    from galgen_lightning.report.table import COLUMNS

    table = json.loads((out / "sweep_table.json").read_text())
    assert table["columns"] == list(COLUMNS)
    rows = {(r["family"], r["n"]): r for r in table["rows"]}
    assert len(table["rows"]) == 6 and rows[("diffusion", 10)]["label"] == "memorizes"
    assert rows[("diffusion", 1000)]["label"] == "generalizes" and rows[("diffusion", 10000)]["state"] == "running"
    r10 = rows[("diffusion", 10)]
    assert r10["memorization_rate_low"] <= r10["memorization_rate"] <= r10["memorization_rate_high"]
    assert r10["agreement_kappa_low"] <= r10["agreement_kappa"] <= r10["agreement_kappa_high"]
    reported = {r["n"]: r for r in summary["groups"]["diffusion (16 px)"]["runs"]}
    assert r10["memorization_rate"] == pytest.approx(reported[10]["memorization_rate"])
    lines = (out / "sweep_table.csv").read_text().splitlines()
    assert lines[0].split(",") == list(COLUMNS) and len(lines) == 7


def test_report_escapes_what_it_shows(tmp_path):
    """Text from run directories (here a folder name) is escaped in the page, never markup."""
    root = small_sweep(tmp_path / "x<i>&y", ns=(10,))
    assert run_cli(["report", str(root), "--bootstrap", "0"]) == 0
    page = (root / "report" / "index.html").read_text()
    assert "x<i>&y" not in page and "x&lt;i&gt;&amp;y" in page


@pytest.mark.cli  # a whole galgen command: make test, not make test-fast
def test_report_of_a_sweep_logs_it_to_wandb(tmp_path, monkeypatch):
    """``galgen report`` of a sweep hands its table and N* to ``log_sweep``; of one run, or with
    ``--wandb false``, it does not."""
    from galgen_lightning import wandb_utils

    calls = []
    monkeypatch.setattr(wandb_utils, "log_sweep", lambda *args: calls.append(args) or "abcd1234")
    root = small_sweep(tmp_path / "sweep")
    assert run_cli(["report", str(root), "--bootstrap", "0"]) == 0
    ((sweep, rows, folder, summary),) = calls
    assert sweep == root and folder == root / "report" and [r["n"] for r in rows] == [10, 100, 1000]
    assert 100 < summary["n_star/diffusion-16-px"] < 1000
    assert run_cli(["report", str(root / "diffusion-small-n10-seed0"), "--bootstrap", "0"]) == 0
    assert run_cli(["report", str(root), "--bootstrap", "0", "--wandb", "false"]) == 0
    assert len(calls) == 1


def test_report_of_one_run(fake_sweep, tmp_path):
    assert (
        run_cli(["report", str(fake_sweep / "diffusion-small-n10-seed0"), "--out", str(tmp_path / "r"), "--bootstrap", "0"]) == 0
    )
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    (run,) = summary["groups"]["diffusion (16 px)"]["runs"]
    assert run["verdict"] == "memorizes (point values, no intervals)" and run.get("memorization_rate_ci") is None


@pytest.mark.parametrize("case", ["missing", "empty", "no_metrics"])
def test_report_bad_input_is_one_line(tmp_path, capsys, case):
    path = tmp_path / "x"
    if case != "missing":
        path.mkdir()
    if case == "no_metrics":
        (path / "status.json").write_text(json.dumps({"state": "failed"}))
    assert run_cli(["report", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("galgen: error: report:") and str(path) in err[0]


def _chromium() -> str | None:
    for name in (os.environ.get("GALGEN_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


PROBE = """<script>window.addEventListener('load', function () {
  var out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({
    images: Array.prototype.map.call(document.images, function (i) { \
return [i.complete, i.naturalWidth, i.naturalHeight, i.dataset.file]; }),
    pdfs: Array.prototype.map.call(document.querySelectorAll('a.pdf'), function (a) { \
return [a.getAttribute('href'), a.textContent]; })
  });
  document.body.appendChild(out);
});</script>"""


def test_report_renders_in_headless_chromium(built, tmp_path):
    """Every figure decodes in a real browser (the galleries among them), each has its PDF link,
    and the page is not blank."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium (make test installs Debian's chromium with apt-get)")
    out, _ = built
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    page = out / "index.html"
    probe = out / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    )
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert match, dom.stderr[-2000:]
    probed = json.loads(match.group(1))
    images, pdfs = probed["images"], probed["pdfs"]
    assert len(images) == len(list((out / "figures").glob("*.png"))) > 0
    assert all(complete and width > 0 and height > 0 for complete, width, height, _ in images), images
    shown = [file for *_, file in images]
    assert (
        sum(f.startswith("figures/gallery_most_") for f in shown) == 2
        and sum(f.startswith("figures/gallery_least_") for f in shown) == 2
    )
    assert sorted(href for href, _ in pdfs) == sorted(f[: -len(".png")] + ".pdf" for f in shown)
    assert all(text == "PDF" and (out / href).is_file() for href, text in pdfs)

    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, "--window-size=1280,2400", "--hide-scrollbars", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[0] >= 2000 and pixels.std() > 0.05
    assert (pixels.mean(axis=2) < 0.9).mean() > 0.02  # text and figures, not an empty white page


def test_summary_figure_with_no_finite_value(tmp_path):
    """A sweep whose every sample diverged (all statistics NaN) still gets its summary figure."""
    from galgen_lightning.report.figures import FigureWriter, fig_summary

    nan = float("nan")
    rows = [{"n": n, "complete": True, "memorization_rate": nan, "gap_median": nan, "a_vs_b_median": nan} for n in (4, 32, 256)]
    fig = fig_summary(rows, "diffusion (16 px)", {}, FigureWriter(tmp_path))
    assert fig is not None and fig.path.is_file() and fig.path.with_suffix(".pdf").is_file()


def test_tables_quote_csv_cells_and_draw_markdown():
    from galgen_lightning.tables import csv_text, markdown_text

    assert csv_text(["a", "b"], [["1,5", 'say "x"']]) == 'a,b\r\n"1,5","say ""x"""\r\n'
    assert markdown_text(["a", "b"], [[1, 2]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n"


def _summary(folder: Path, out: Path, *args: str) -> dict:
    assert run_cli(["report", str(folder), "--out", str(out), "--wandb", "false", *args]) == 0
    return json.loads((out / "summary.json").read_text())


def test_a_runs_intervals_do_not_depend_on_the_other_runs_of_the_folder(tmp_path):
    """Each run's bootstrap has its own generator: the same run gives the same intervals in a
    report of itself, in a report of its sweep, and in its verdict.json (seed 0)."""
    from galgen_lightning.evaluation.verdict import judge_run

    root = small_sweep(tmp_path / "sweep")
    run = root / "diffusion-small-n100-seed0"
    (alone,) = _summary(run, tmp_path / "one", "--bootstrap", "200")["groups"]["diffusion (16 px)"]["runs"]
    swept = {r["run"]: r for r in _summary(root, tmp_path / "all", "--bootstrap", "200")["groups"]["diffusion (16 px)"]["runs"]}
    key = "memorization_rate_ci"
    assert alone[key] == swept[run.name][key] and alone["agreement_kappa_ci"] == swept[run.name]["agreement_kappa_ci"]
    assert list(judge_run(run, 200).intervals["memorization_rate"]) == alone[key]


def test_the_run_seed_is_seed_everything_when_a_sweep_pins_the_split(tmp_path):
    from galgen_lightning.rundir import load_run

    run = tmp_path / "diffusion-small-n10-seed3-data7"
    _write_run(run, DIFFUSION, 10, 16)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["seed_everything"], config["data"]["seed"] = 3, 7
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert load_run(run).seed == 3


def test_damaged_files_are_left_out_with_a_warning_not_a_traceback(tmp_path, capsys):
    """A copy cut short (npz), a stray JSON value and a bad epoch in metrics.jsonl."""
    root = small_sweep(tmp_path / "sweep", ns=(10, 100))
    npz = root / "diffusion-small-n10-seed0" / "eval" / "two_models" / "epoch_0004.npz"
    npz.write_bytes(npz.read_bytes()[:3000])
    with (root / "diffusion-small-n100-seed0" / "metrics.jsonl").open("a") as f:
        f.write('null\n{"test": "two_models", "epoch": "x"}\n')
    rows = {r["run"]: r for r in _summary(root, tmp_path / "r", "--bootstrap", "0")["groups"]["diffusion (16 px)"]["runs"]}
    err = capsys.readouterr().err
    assert f"{npz} is unreadable" in err and "Traceback" not in err
    assert rows["diffusion-small-n10-seed0"]["verdict"].startswith("inconclusive")
    assert rows["diffusion-small-n100-seed0"]["verdict"] != "inconclusive"


def test_a_record_whose_arrays_are_missing_judges_the_epoch_it_reads(tmp_path):
    from galgen_lightning.evaluation.verdict import judge_run

    run = small_sweep(tmp_path / "sweep", ns=(1000,)) / "diffusion-small-n1000-seed0"
    _append(run, {"epoch": 9, "step": 200, "test": "two_models", "memorization_rate": 0.99})  # killed before its npz
    v = judge_run(run, 0)
    assert v.epoch == 4 and "the arrays of epoch 9 are missing: epoch 4 judged" in v.reasons


def test_n_star_names_the_pair_it_interpolates_and_the_runs_it_leaves_out(tmp_path):
    from galgen_lightning.report.stats import estimate_n_star

    wavy = estimate_n_star([(10, 0.9, None), (100, 0.3, None), (1000, 0.8, None), (10000, 0.1, None)])
    assert "between N=10 and N=100" in wavy["statement"] and wavy["n_star"] < 100
    root = small_sweep(tmp_path / "sweep")
    second = root / "diffusion-small-n10-seed1"  # a second seed at N=10 with no valid sample
    shutil.copytree(root / "diffusion-small-n10-seed0", second)
    npz = second / "eval" / "two_models" / "epoch_0004.npz"
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    for w in "ab":  # the callback keeps the similarities of valid samples only
        arrays[f"ok_{w}"][:] = False
        for key in (f"own_{w}", f"other_{w}", f"sample_index_{w}", f"own_index_{w}", f"plain_own_{w}", f"plain_other_{w}"):
            arrays[key] = arrays[key][:0]
    arrays["a_vs_b"] = arrays["plain_a_vs_b"] = arrays["a_vs_b"][:0]
    np.savez(npz, **arrays)
    config = yaml.safe_load((second / "config.yaml").read_text())
    config["seed_everything"] = 1
    (second / "config.yaml").write_text(yaml.safe_dump(config))
    group = _summary(root, tmp_path / "r", "--bootstrap", "100")["groups"]["diffusion (16 px)"]
    statement = group["n_star"]["statement"]
    assert "1 run(s) without a memorization rate left out: N=10 seed 1" in statement
    assert group["n_star"]["n_star"] is not None  # N=10 still counts, from seed 0


def test_results_only_in_a_validate_folder_are_reported_with_that_folders_options(tmp_path):
    """``fit`` ran without tests and ``galgen validate`` added the two-models test (quantile 0.9):
    the run is reported (page, summary, sweep table) and judged with the validate run's options."""
    from galgen_lightning.evaluation.verdict import judge_run
    from galgen_lightning.report.table import sweep_rows

    root = tmp_path / "sweep"
    rng = np.random.default_rng(5)
    for n, (rate, ab, gap) in ((10, SMALL[10]), (1000, SMALL[1000])):
        run = root / f"diffusion-small-n{n}-seed0"
        _write_run(run, DIFFUSION, n, 16)
        config = yaml.safe_load((run / "config.yaml").read_text())
        config.pop("two_models")
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        validate = run / "validate-20261130-120000"
        _write_run(validate, DIFFUSION, n, 16)
        config["two_models"] = {"class_path": "galgen_lightning.evaluation.TwoModelsTest", "init_args": {"quantile": 0.9}}
        (validate / "config.yaml").write_text(yaml.safe_dump(config))
        _two_models(validate, rate, ab, gap, rng)
    run = root / "diffusion-small-n10-seed0"
    assert judge_run(run, 0).numbers["quantile"] == 0.9
    summary = _summary(run, tmp_path / "one", "--bootstrap", "0")
    assert summary["groups"]["diffusion (16 px)"]["runs"][0]["verdict"] == "memorizes (point values, no intervals)"
    _summary(root, tmp_path / "all", "--bootstrap", "0")
    table = (tmp_path / "all" / "sweep_table.csv").read_text()
    assert "diffusion-small-n10-seed0" in table and "diffusion-small-n1000-seed0" in table
    assert [r["run"] for r in sweep_rows(root, n_boot=0)] == ["diffusion-small-n10-seed0", "diffusion-small-n1000-seed0"]


def test_every_reader_uses_the_epoch_judged(tmp_path):
    """The last record's arrays are missing (a copy cut short): the row's numbers, the table and
    the judge all take the epoch whose arrays exist, never a mix of two epochs."""
    root = tmp_path / "sweep"
    rng = np.random.default_rng(6)
    run = root / "diffusion-small-n10-seed0"
    _write_run(run, DIFFUSION, 10, 16)
    _two_models(run, 0.9, 0.0, 0.1, rng, epoch=2)
    _two_models(run, 0.0, 0.9, 0.0, rng, epoch=4)
    (run / "eval" / "two_models" / "epoch_0004.npz").unlink()
    (row,) = _summary(root, tmp_path / "r", "--bootstrap", "0")["groups"]["diffusion (16 px)"]["runs"]
    records = {r["epoch"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    assert row["epoch"] == 2 and row["a_vs_b_median"] == records[2]["a_vs_b_median"]
    table = (tmp_path / "r" / "sweep_table.json").read_text()
    assert '"epoch": 2' in table


def test_galleries_of_runs_whose_names_slug_alike_do_not_collide(tmp_path):
    root = tmp_path / "sweep"
    rng = np.random.default_rng(7)
    for name, n in (("运行十", 10), ("运行千", 1000)):
        _write_run(root / name, DIFFUSION, n, 16)
        _two_models(root / name, *SMALL[n], rng, gallery=True)
    _summary(root, tmp_path / "r", "--bootstrap", "0")
    pngs = sorted((tmp_path / "r").rglob("gallery_most_*.png"))
    assert len(pngs) == 2 and pngs[0].read_bytes() != pngs[1].read_bytes()
