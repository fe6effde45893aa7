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
    assert torch.equal(head.a, first.a[:3]) and head.info == {}  # counters cover all 8: not passed on
    test.samples(pair, 8, seed=1)  # another seed: new samples
    assert pair.calls == 2
    test.samples(pair, 16, seed=1)  # more than cached: new samples
    assert pair.calls == 3
    test.on_validation_epoch_start(None, pair)  # the next evaluation (new weights)
    test.samples(pair, 16, seed=1)
    assert pair.calls == 4
