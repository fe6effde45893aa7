"""The tests of one evaluation share one set of samples; a new evaluation samples again."""

from __future__ import annotations

import torch

from galgen_lightning.evaluation.base import EvalCallback
from galgen_lightning.models.base import PairSamples


class _Pair(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def sample(self, n: int, seed: int, batch_size: int | None = None, progress=None) -> PairSamples:
        self.calls += 1
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 1, 4, 4, generator=g)
        ok = torch.ones(n, dtype=torch.bool)
        return PairSamples(x, x + 1, ok, ok, {"a": {"diverged": 0.0}})


def test_same_evaluation_reuses_samples_and_a_new_one_does_not():
    pair, test = _Pair(), EvalCallback()
    test.on_validation_epoch_start(None, pair)
    first = test.samples(pair, 8, seed=0)
    again = test.samples(pair, 8, seed=0)
    head = test.samples(pair, 3, seed=0)
    assert pair.calls == 1 and again is first
    assert torch.equal(head.a, first.a[:3]) and head.info == {}  # a per-batch counter cannot be split: left out
    test.samples(pair, 8, seed=1)  # another seed: new samples
    assert pair.calls == 2
    test.samples(pair, 16, seed=1)  # more than cached: new samples
    assert pair.calls == 3
    test.on_validation_epoch_start(None, pair)  # the next evaluation (new weights)
    test.samples(pair, 16, seed=1)
    assert pair.calls == 4


def test_fewer_samples_keep_their_diagnostics_and_float64_networks_sample():
    """A later test asking for fewer samples gets the counters of those samples (a diffusion pair
    counts step-limit hits per sample); and a pair in float64 (``precision: 64-true``) samples."""
    from galgen_lightning.models.diffusion import DiffusionPair

    torch.manual_seed(0)
    pair = DiffusionPair(blocks=1, width=4, image_size=8, max_steps=3, check_every=1, sigma_final=0.5)
    test = EvalCallback()
    test.on_validation_epoch_start(None, pair)
    first = test.samples(pair, 6, seed=0)
    head = test.samples(pair, 4, seed=0)
    fresh = pair.sample(4, seed=0)
    assert torch.equal(head.a, fresh.a) and head.info == fresh.info
    assert set(head.info["a"]) == {"diverged", "step_limit", "stalled", "steps_sum", "finished"}
    assert sum(head.info["a"][k] for k in ("diverged", "step_limit", "stalled", "finished")) == 4
    assert first.info["a"]["finished"] + first.info["a"]["step_limit"] <= 6
    double = pair.double().sample(4, seed=0)
    assert double.a.dtype == torch.float32 and torch.allclose(double.a, fresh.a, atol=1e-4)


def test_a_family_without_generate_is_a_one_line_error_at_setup():
    """``PairModule.generate`` is a placeholder: a family that does not override it cannot sample."""
    import pytest

    from galgen_lightning.errors import GalgenError
    from galgen_lightning.evaluation import DenoisingTest, TwoModelsTest
    from galgen_lightning.models.base import PairModule
    from galgen_lightning.models.glow import GlowPair

    with pytest.raises(GalgenError, match=r"TwoModelsTest needs a family with generate .*; PairModule has none"):
        TwoModelsTest.check_family(PairModule)
    TwoModelsTest.check_family(GlowPair)
    with pytest.raises(GalgenError, match=r"DenoisingTest.images must be in \[1, 100\]"):
        DenoisingTest(images=101)
