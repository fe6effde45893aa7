"""Evaluation callbacks of the two-models test, and the run-directory bookkeeping."""

from galgen_lightning.callbacks.common import EvalCallback, run_dir, to_uint8
from galgen_lightning.callbacks.denoising import DenoisingTest
from galgen_lightning.callbacks.discriminator import DiscriminatorTest
from galgen_lightning.callbacks.inversion import InversionTest
from galgen_lightning.callbacks.morphology import MorphologyTest
from galgen_lightning.callbacks.rundir import RunDirectory
from galgen_lightning.callbacks.two_models import TwoModelsTest

__all__ = ["DenoisingTest", "DiscriminatorTest", "EvalCallback", "InversionTest", "MorphologyTest", "RunDirectory", "TwoModelsTest", "run_dir", "to_uint8"]
