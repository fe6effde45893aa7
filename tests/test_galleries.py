"""Galleries of the most and least memorized samples, progress bars and the evaluation's timed parts."""

from __future__ import annotations

import json
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from support import quiet_trainer

from galgen_lightning.evaluation import TwoModelsTest, gallery
from galgen_lightning.evaluation.base import EvalCallback


def _arrays() -> dict[str, np.ndarray]:
    """Hand-made nearest-neighbour results: A's sample 3 is a copy, B's sample 5 the freshest."""
    return {
        "own_a": np.array([0.80, 0.99, 0.70]),
        "other_a": np.array([0.78, 0.60, 0.72]),
        "own_index_a": np.array([4, 1, 2]),
        "other_index_a": np.array([0, 3, 3]),
        "sample_index_a": np.array([0, 3, 4]),  # sample 1 and 2 of A were invalid
        "own_b": np.array([0.75, 0.50]),
        "other_b": np.array([0.70, 0.90]),
        "own_index_b": np.array([2, 2]),
        "other_index_b": np.array([1, 0]),
        "sample_index_b": np.array([1, 5]),
    }


def test_selection_ranks_a_and_b_together_by_own_minus_other():
    sel = gallery.gallery_selection(_arrays(), k=2)
    assert list(sel["gallery_most_idx"]) == [3, 1] and list(sel["gallery_most_model"]) == ["a", "b"]
    assert sel["gallery_most_gap"][0] == pytest.approx(0.39) and sel["gallery_most_own_index"][0] == 1
    assert list(sel["gallery_least_idx"]) == [5, 4] and list(sel["gallery_least_model"]) == ["b", "a"]
    assert sel["gallery_least_other_index"][0] == 0 and sel["gallery_least_gap"][0] == pytest.approx(-0.40)
    everything = gallery.gallery_selection(_arrays(), k=50)  # more than there are: all five, both ways
    assert len(everything["gallery_most_idx"]) == 5 and np.all(np.diff(everything["gallery_most_gap"]) <= 0)
    caption = gallery.captions(sel, "most")[0]
    assert caption.startswith("sample 3 of A") and "0.990" in caption and "0.600" in caption and "+0.390" in caption
    none_valid = {k: v[:0] for k, v in _arrays().items()}  # every sample diverged: empty galleries, still drawn
    empty = gallery.gallery_selection(none_valid, k=2)
    assert all(len(v) == 0 for v in empty.values())
    assert len(gallery.gallery_figure([], empty, "least").axes) == 3
    with pytest.raises(ValueError, match="k must be positive"):
        gallery.gallery_selection(_arrays(), k=0)


def test_gallery_rows_go_to_wandb_with_their_captions():
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    class _Run:
        def __init__(self) -> None:
            self.logged: list[dict] = []

        def log(self, data):
            self.logged.append(data)

    logger = WandbLogger(offline=True)
    logger._experiment = _Run()  # no W&B run: the logger hands its calls to this recorder
    trainer = SimpleNamespace(loggers=[logger], current_epoch=2, global_step=9)
    triples = [torch.rand(3, 1, 16, 16) for _ in range(2)]
    strips = [gallery.strip(t) for t in triples]
    assert strips[0].shape[0] >= 128 and strips[0].dtype == np.uint8
    TwoModelsTest().log_images(trainer, "gallery_most", strips, ["first", "second"])
    (logged,) = logger._experiment.logged
    assert logged["epoch"] == 2 and [image._caption for image in logged["two_models/gallery_most"]] == ["first", "second"]
    with pytest.raises(ValueError, match="captions"):
        TwoModelsTest().log_images(trainer, "gallery_most", strips, ["one"])


def test_best_view_undoes_a_flip():
    image = torch.rand(1, 8, 8)
    sample = image.flip(-1).rot90(1, dims=(-2, -1))
    assert torch.equal(gallery.best_view(image, sample), sample)


def _validate(tmp_path, progress: bool, *extra: L.Callback) -> tuple[L.Trainer, TwoModelsTest]:
    from galgen_lightning.data import GalaxyPairDataModule, SyntheticGalaxies
    from galgen_lightning.models.reference import OracleMemorizer

    dm = GalaxyPairDataModule(SyntheticGalaxies(size=300), image_size=16, n=16, n_val=32, batch_size=16)
    test = TwoModelsTest(n_samples=24, batch_size=8, gallery_k=4)
    trainer = quiet_trainer(default_root_dir=tmp_path, enable_progress_bar=progress, callbacks=[test, *extra])
    trainer.validate(OracleMemorizer(image_size=16), datamodule=dm)
    return trainer, test


def test_memorizer_gallery_shows_copies_and_the_parts_are_timed(tmp_path, capsys):
    _validate(tmp_path, progress=False)
    assert "two_models: sampling" not in capsys.readouterr().err  # enable_progress_bar=False: no bars
    folder = tmp_path / "eval" / "two_models"
    arrays = np.load(folder / "epoch_0000.npz")
    own, other = arrays["gallery_most_own"], arrays["gallery_most_other"]
    assert len(own) == 4 and np.all(own > 0.99) and np.all(own > other + 0.05)  # copies of their own subset
    assert np.all(arrays["gallery_least_gap"] <= arrays["gallery_most_gap"].min())
    for m, i, j in zip(arrays["gallery_most_model"], arrays["gallery_most_idx"], arrays["gallery_most_own_index"]):
        pos = list(arrays[f"sample_index_{m}"]).index(i)  # the indices are the test's own search results
        assert arrays[f"own_index_{m}"][pos] == j
    for tag in ("_gallery_most", "_gallery_least", ""):
        assert (folder / f"epoch_0000{tag}.png").stat().st_size > 5_000
        assert (folder / f"epoch_0000{tag}.pdf").is_file()
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record["seconds"] >= record["sampling_seconds"] + record["search_seconds"] > 0
    assert record["sampling_seconds"] > 0 and record["search_seconds"] > 0


@pytest.mark.cli  # a whole validation under a trainer, read from its terminal output: make test, not make test-fast
def test_bars_follow_the_trainer(tmp_path, capsys):
    _validate(tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "two_models: sampling A and B" in err and "two_models: nearest-neighbour search" in err


@pytest.mark.cli  # a whole validation under a trainer, read from its terminal output: make test, not make test-fast
def test_a_log_gets_one_line_and_no_bars(tmp_path, capsys):
    """Where stderr is a log, LineProgress stands for the bars: one line per validation run, no
    carriage returns, and the evaluation draws no bars of its own."""
    from galgen_lightning.evaluation.progress import LineProgress, bars_enabled, use_line_progress

    trainer, _ = _validate(tmp_path, True, LineProgress())
    assert isinstance(trainer.progress_bar_callback, LineProgress) and not bars_enabled(trainer)
    err = capsys.readouterr().err
    assert "\r" not in err and "two_models: sampling" not in err
    assert (
        [line for line in err.splitlines() if line.startswith("validation:")]
        == [line for line in err.splitlines() if line.startswith("validation: 2 batches in ")]
        != []
    )

    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    assert use_line_progress(None, [], Stream(False)) and use_line_progress(True, [], Stream(False))
    assert not use_line_progress(None, [], Stream(True))  # a terminal keeps Lightning's bar
    assert not use_line_progress(False, [], Stream(False))  # no progress at all
    assert not use_line_progress(None, ["lightning.pytorch.callbacks.RichProgressBar"], Stream(False))  # the user's own


def test_progress_counts_every_generated_batch():
    """``PairModule.sample`` reports each generated batch (A's, then B's) to ``progress``."""
    from galgen_lightning.models.reference import NoisePair

    pair, seen = NoisePair(image_size=4), []
    samples = EvalCallback.samples(pair, 10, seed=0, batch_size=4, progress=seen.append)
    assert seen == [4, 4, 2, 4, 4, 2]
    assert samples.a.shape == (10, 1, 4, 4)
