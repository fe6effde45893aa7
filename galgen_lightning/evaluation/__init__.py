"""The evaluation of a pair: one module per test (its statistics, figures and Lightning callback),
the pure statistics of the two-models test (``statistics``), and the one judge (``verdict``).
Beside them: the two-models galleries (``gallery``), progress bars (``progress``), and the
morphology test's measurement (``morphology_image``, ``morphology_measure``) and statistics
(``morphology_stats``).

The callbacks the configs name: :class:`TwoModelsTest` (every family), :class:`DenoisingTest`
(diffusion), :class:`InversionTest` (Glow), :class:`DiscriminatorTest` (GAN) and
:class:`MorphologyTest` (any, needs statmorph).
"""

from galgen_lightning.evaluation.base import EvalCallback, run_dir, to_uint8
from galgen_lightning.evaluation.denoising import DenoisingTest
from galgen_lightning.evaluation.discriminator import DiscriminatorTest
from galgen_lightning.evaluation.inversion import InversionTest
from galgen_lightning.evaluation.morphology import MorphologyTest
from galgen_lightning.evaluation.two_models import TwoModelsTest

__all__ = [
    "DenoisingTest",
    "DiscriminatorTest",
    "EvalCallback",
    "InversionTest",
    "MorphologyTest",
    "TwoModelsTest",
    "run_dir",
    "to_uint8",
]
