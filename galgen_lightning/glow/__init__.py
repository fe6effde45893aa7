"""Glow family: the multi-scale flow (``network``) and its Lightning pair (``pair``)."""

from galgen_lightning.glow.network import FlowOutput, Glow, latent_shapes
from galgen_lightning.glow.pair import GlowPair, bits_per_dim, dequantize, to_image

__all__ = ["FlowOutput", "Glow", "GlowPair", "bits_per_dim", "dequantize", "latent_shapes", "to_image"]
