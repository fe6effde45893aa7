"""Light-weight GAN family of the two-models test: the networks and the Lightning pair.

``galgen_lightning.models.gan.GANPair`` is the class the configs name; ``network`` holds the generator,
the discriminator, the losses and DiffAugment as small pure pieces (import them from there).
"""

from galgen_lightning.models.gan.module import GANPair, LightweightGAN, discriminator_objective, head_scores
from galgen_lightning.models.gan.network import Discriminator, Generator, Plan

__all__ = ["Discriminator", "GANPair", "Generator", "LightweightGAN", "Plan", "discriminator_objective", "head_scores"]
