"""Light-weight GAN family of the two-models test: the networks and the Lightning pair.

``galgen_lightning.models.gan.GANPair`` is the class the configs name; ``network`` holds the generator,
the discriminator, the losses and DiffAugment as small pure pieces.
"""

from galgen_lightning.models.gan.module import GANPair, LightweightGAN, discriminator_objective, head_scores
from galgen_lightning.models.gan.network import (
    Discriminator,
    Generator,
    auto_aug_prob,
    diff_augment,
    generator_loss,
    gradient_penalty,
    hinge_loss,
    hinge_per_sample,
)

__all__ = [
    "Discriminator",
    "GANPair",
    "Generator",
    "LightweightGAN",
    "auto_aug_prob",
    "diff_augment",
    "discriminator_objective",
    "generator_loss",
    "gradient_penalty",
    "head_scores",
    "hinge_loss",
    "hinge_per_sample",
]
