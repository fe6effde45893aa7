"""Model families: one sub-package per family (``network.py`` the architecture, ``module.py`` the
Lightning pair of models A and B), on the shallow base of ``base.py``; ``reference.py`` holds the
reference families whose answer is known (docs/extending.md)."""

from galgen_lightning.models.base import MODELS, PairModule, PairSamples

__all__ = ["MODELS", "PairModule", "PairSamples"]
