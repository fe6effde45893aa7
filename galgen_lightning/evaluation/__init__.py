"""The evaluation of a pair: one module per test (its statistics, figures and Lightning callback),
the pure statistics of the two-models test (``statistics``), and the one judge (``verdict``).
Beside them: the two-models galleries (``gallery``), progress bars (``progress``), and the
morphology test's measurement (``morphology_image``, ``morphology_measure``) and statistics
(``morphology_stats``).

The tests (:data:`TESTS`): :class:`TwoModelsTest` (every family), :class:`DenoisingTest`
(diffusion), :class:`InversionTest` (Glow), :class:`DiscriminatorTest` (GAN) and
:class:`MorphologyTest` (any, needs statmorph). A config turns each on under its own key, the
test's ``name`` (``two_models:``, ``denoising:``, ``inversion:``, ``discriminator:``,
``morphology:``; ``null``: off), so an overlay changes one option of one test without restating
a list (docs/cli.md).
"""

from galgen_lightning.evaluation.base import EvalCallback, SamplingTest, run_dir, to_uint8
from galgen_lightning.evaluation.denoising import DenoisingTest
from galgen_lightning.evaluation.discriminator import DiscriminatorTest
from galgen_lightning.evaluation.inversion import InversionTest
from galgen_lightning.evaluation.morphology import MorphologyTest
from galgen_lightning.evaluation.two_models import TwoModelsTest

TESTS: tuple[type[EvalCallback], ...] = (TwoModelsTest, DenoisingTest, InversionTest, DiscriminatorTest, MorphologyTest)
"""The tests a config turns on by name (their ``name``: the config key, the ``eval/`` folder and the metric prefix)."""

__all__ = [
    "TESTS",
    "DenoisingTest",
    "DiscriminatorTest",
    "EvalCallback",
    "InversionTest",
    "MorphologyTest",
    "SamplingTest",
    "TwoModelsTest",
    "run_dir",
    "to_uint8",
]
