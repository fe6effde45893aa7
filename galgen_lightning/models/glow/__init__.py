"""Glow family: the multi-scale flow (``network``) and its Lightning pair (``module``)."""

from galgen_lightning.models.glow.module import GlowPair, bits_per_dim, dequantize, to_image
from galgen_lightning.models.glow.network import FlowOutput, Glow, latent_shapes

__all__ = ["FlowOutput", "Glow", "GlowPair", "bits_per_dim", "dequantize", "latent_shapes", "to_image"]
