"""Diffusion family: the bias-free U-Net denoiser and sampler (``network``) and the pair (``module``)."""

from galgen_lightning.models.base import VAL_SEED
from galgen_lightning.models.diffusion.module import DiffusionPair
from galgen_lightning.models.diffusion.network import (
    NORMS,
    BiasFreeBatchNorm,
    BiasFreeUNet,
    SamplerSettings,
    conv_norm_relu,
    sample_denoiser,
)

__all__ = [
    "NORMS",
    "VAL_SEED",
    "BiasFreeBatchNorm",
    "BiasFreeUNet",
    "DiffusionPair",
    "SamplerSettings",
    "conv_norm_relu",
    "sample_denoiser",
]
