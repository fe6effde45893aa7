"""Every option of every evaluation test is checked when the test is built.

A bad value is a one-line error naming the option (``TwoModelsTest.quantile must be in (0, 1),
got 1.5``) before training starts, not a traceback an epoch later, when the test first runs.
"""

from __future__ import annotations

import math

import pytest
from support import declared_options

from galgen_lightning.errors import GalgenError
from galgen_lightning.evaluation import (
    DenoisingTest,
    DiscriminatorTest,
    EvalCallback,
    InversionTest,
    MorphologyTest,
    TwoModelsTest,
)

TESTS = (TwoModelsTest, DenoisingTest, DiscriminatorTest, InversionTest, MorphologyTest)

BAD = [
    # (test, option, bad value, what the message says)
    (TwoModelsTest, "every_n_epochs", 0, "positive"),
    (TwoModelsTest, "n_samples", 0, "positive"),
    (TwoModelsTest, "batch_size", 0, "positive (or null)"),
    (TwoModelsTest, "quantile", 1.5, "in (0, 1)"),
    (TwoModelsTest, "quantile", 0.0, "in (0, 1)"),
    (TwoModelsTest, "quantile", math.nan, "in (0, 1)"),
    (TwoModelsTest, "line", 3.0, "a cosine similarity, in [-1, 1]"),
    (TwoModelsTest, "grid", 0, "positive"),
    (TwoModelsTest, "grid", -2, "positive"),
    (TwoModelsTest, "gallery_k", 0, "positive"),
    (DenoisingTest, "every_n_epochs", -1, "positive"),
    (DenoisingTest, "images", 0, "in [1, 100]"),
    (DenoisingTest, "sigmas", [], "1 to 1000 noise levels"),
    (DenoisingTest, "sigmas", [0.1, 0.0], "positive finite noise levels"),
    (DenoisingTest, "sigmas", [math.inf], "positive finite noise levels"),
    (DiscriminatorTest, "head", "mean", "'main', 'small' or 'both'"),
    (DiscriminatorTest, "n_samples", 0, "positive"),
    (InversionTest, "temperature", 0.0, "positive"),
    (InversionTest, "temperature", math.inf, "positive"),
    (InversionTest, "max_points", 0, "positive"),
    (InversionTest, "bins", 0, "positive"),
    (MorphologyTest, "n_samples", -1, "positive"),
    (MorphologyTest, "n_real", 0, "positive (or null)"),
    (MorphologyTest, "workers", 0, "positive (or null: all cores)"),
    (MorphologyTest, "bins", 0, "positive"),
]

FREE = {"seed", "transforms", "ema", "val", "deblend", "progress"}
"""Options any value of their type suits (seeds, switches)."""

CHECKED_ELSEWHERE = {"threshold", "smoothing", "min_snr", "skybox_size", "upsample", "max_flag"}
"""MorphologyTest's measurement options, checked by MorphologyOptions (test_morphology.py)."""


def options(test: type[EvalCallback]) -> dict[str, type]:
    """The options of ``test``, its bases' included, each with the class that declares it."""
    return declared_options(test, EvalCallback)


@pytest.mark.parametrize(("test", "option", "value", "rule"), BAD, ids=lambda v: getattr(v, "__name__", str(v)))
def test_a_bad_option_is_one_line_naming_it(test, option, value, rule):
    with pytest.raises(GalgenError) as caught:
        test(**{option: value})
    assert str(caught.value) == f"{test.__name__}.{option} must be {rule}, got {value!r}"


def test_every_numeric_option_is_checked():
    """A new option with a range must come with its check (and a row in BAD): none is left out.
    An option a base declares (``every_n_epochs``, ``n_samples``) is tried on one of its tests."""
    for test in TESTS:
        unchecked = [
            name
            for name, owner in options(test).items()
            if name not in FREE | CHECKED_ELSEWHERE and not any(o == name and issubclass(t, owner) for t, o, _, _ in BAD)
        ]
        assert not unchecked, f"{test.__name__}: no bad value tried for {sorted(unchecked)}"


@pytest.mark.parametrize("test", TESTS, ids=lambda t: t.__name__)
def test_defaults_and_edges_are_accepted(test):
    test()
    edges = {"quantile": 0.5, "line": -1.0, "grid": 1, "gallery_k": 1, "images": 100, "sigmas": [1e-3], "temperature": 1e-3}
    test(**{k: v for k, v in edges.items() if k in options(test)})
