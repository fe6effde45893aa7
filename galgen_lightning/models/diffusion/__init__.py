"""Diffusion family: the bias-free U-Net denoiser and sampler (``network``) and the pair (``module``)."""

from galgen_lightning.models.diffusion.module import VAL_SEED, DiffusionPair
from galgen_lightning.models.diffusion.network import NORMS, BiasFreeBatchNorm, BiasFreeUNet, conv_norm_relu, sample_denoiser

__all__ = ["NORMS", "VAL_SEED", "BiasFreeBatchNorm", "BiasFreeUNet", "DiffusionPair", "conv_norm_relu", "sample_denoiser"]
