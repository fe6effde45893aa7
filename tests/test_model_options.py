"""Every option of every family is checked when the pair is built.

A bad value is a one-line error naming the option (``model.gp_weight must be non-negative (0: no
penalty), got -1.0``) before training starts, never a traceback at the first step, nor a value
taken silently (``small_size: 0`` used to mean the default; ``fmap_max: 0`` built one-channel
networks).
"""

from __future__ import annotations

import math

import pytest
from support import declared_options

from galgen_lightning.errors import GalgenError
from galgen_lightning.models.base import PairModule
from galgen_lightning.models.diffusion import DiffusionPair
from galgen_lightning.models.gan import GANPair
from galgen_lightning.models.glow import GlowPair

SMALL = {
    DiffusionPair: {"image_size": 16, "blocks": 2, "width": 4},
    GlowPair: {"image_size": 16, "n_flow": 1, "n_block": 2, "hidden": 4},
    GANPair: {"image_size": 16, "latent_dim": 8, "fmap_max": 8, "fmap_inverse_coef": 6, "attn_sizes": []},
}
"""Small pairs (built in milliseconds); each row below changes one option."""

BAD = [
    # (family, option, bad value, what the message says)
    (PairModule, "image_size", 0, "at least 1"),
    (PairModule, "channels", 0, "at least 1"),
    (PairModule, "sample_batch_size", 0, "at least 1"),
    (PairModule, "max_bad_steps", 0, "positive"),
    (PairModule, "max_loss_ratio", 1.0, "above 1 (or null)"),
    (DiffusionPair, "blocks", 0, "at least 1"),
    (DiffusionPair, "width", 0, "at least 1"),
    (DiffusionPair, "lr", 0.0, "positive"),
    (DiffusionPair, "lr", math.nan, "positive"),
    (DiffusionPair, "lr_halving_epochs", 0, "at least 1"),
    (DiffusionPair, "sigma_max", -1.0, "positive"),
    (DiffusionPair, "sigma0", 0.0, "positive"),
    (DiffusionPair, "sigma_final", -0.1, "non-negative"),
    (DiffusionPair, "h0", math.inf, "positive"),
    (DiffusionPair, "beta", 1.5, "in (0, 1]"),
    (DiffusionPair, "max_steps", 0, "at least 1"),
    (DiffusionPair, "check_every", 0, "at least 1"),
    (DiffusionPair, "norm", "layer", "one of reference, rms"),
    (GlowPair, "n_flow", 0, "at least 1"),
    (GlowPair, "n_block", 0, "at least 1"),
    (GlowPair, "hidden", 0, "at least 1"),
    (GlowPair, "n_bits", 9, "in 1..8"),
    (GlowPair, "lr", -1.0, "positive"),
    (GlowPair, "temperature", 0.0, "positive"),
    (GlowPair, "compile_mode", "fast", "one of default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs (or null)"),
    (GANPair, "image_size", 24, "a power of two >= 16 (data.image_size)"),
    (GANPair, "latent_dim", 0, "at least 1"),
    (GANPair, "fmap_max", 0, "at least 1"),
    (GANPair, "fmap_inverse_coef", -1, "non-negative"),
    (GANPair, "attn_sizes", [33], "powers of two from 4 to the image side 16"),
    (GANPair, "attn_sizes", [32], "powers of two from 4 to the image side 16"),
    (GANPair, "attn_heads", 0, "at least 1"),
    (GANPair, "attn_dim_head", 0, "at least 1"),
    (GANPair, "small_size", 0, "in 1..16 (or null)"),
    (GANPair, "small_width", 0, "at least 1"),
    (GANPair, "decoder_upsamples", 0, "at least 1"),
    (GANPair, "lr", 0.0, "positive"),
    (GANPair, "betas", [0.5, 1.5], "two numbers in [0, 1)"),
    (GANPair, "accumulate", 0, "at least 1"),
    (GANPair, "gp_weight", -1.0, "non-negative (0: no penalty)"),
    (GANPair, "gp_every", 0, "at least 1"),
    (GANPair, "aug_prob", 1.5, "in [0, 1] (or null)"),
    (GANPair, "aug_types", ["rotation"], "from translation, cutout"),
    (GANPair, "ema_beta", 2.0, "in [0, 1]"),
    (GANPair, "ema_every", 0, "at least 1"),
    (GANPair, "ema_start", -1, "non-negative"),
]

FREE = {"channels_last", "compile", "check_grads", "fused_adam", "affine", "sampler_graph"}
"""Switches: any value of their type suits (a device that cannot honour one says so when it is used)."""


def options(family: type) -> dict[str, type]:
    """The options of ``family``, PairModule's included, each with the class that declares it."""
    return declared_options(family, PairModule)


def shown(value) -> str:
    """How the message shows a value (``repr``; an option jsonargparse hands over as a list)."""
    return repr(list(value) if isinstance(value, tuple) else value)


@pytest.mark.parametrize(("family", "option", "value", "rule"), BAD, ids=lambda v: getattr(v, "__name__", str(v)))
def test_a_bad_option_is_one_line_naming_it(family, option, value, rule):
    for cls in SMALL if family is PairModule else (family,):
        with pytest.raises(GalgenError) as caught:
            cls(**{**SMALL[cls], option: value})
        assert str(caught.value) == f"model.{option} must be {rule}, got {shown(value)}"


def test_every_option_of_every_family_is_checked():
    """A new option with a range must come with its check (and a row in BAD): none is left out.
    A PairModule row is tried on every family (a family may declare the option again with its
    own default, as diffusion's ``max_loss_ratio``)."""
    for family in SMALL:
        unchecked = [
            name
            for name, owner in options(family).items()
            if name not in FREE and not any(o == name and f in (family, owner, PairModule) for f, o, _, _ in BAD)
        ]
        assert not unchecked, f"{family.__name__}: no bad value tried for {sorted(unchecked)}"


@pytest.mark.parametrize("family", list(SMALL), ids=lambda f: f.__name__)
def test_edges_are_accepted(family):
    edges = {"sigma_final": 0.0, "beta": 1.0, "n_bits": 8, "gp_weight": 0.0, "aug_prob": 0.0, "ema_beta": 0.0, "ema_start": 0}
    family(**SMALL[family], **{k: v for k, v in edges.items() if k in options(family)})
