"""Galaxy image sources and the paired, non-overlapping DataModule."""

from galgen_lightning.data.datamodule import GalaxyPairDataModule, TiledPairs
from galgen_lightning.data.hxdf import HubbleDeepField
from galgen_lightning.data.readers import ArrayFile, FitsCutouts, ImageFolder
from galgen_lightning.data.sources import GalaxySource, SyntheticGalaxies

__all__ = [
    "ArrayFile",
    "FitsCutouts",
    "GalaxyPairDataModule",
    "GalaxySource",
    "HubbleDeepField",
    "ImageFolder",
    "SyntheticGalaxies",
    "TiledPairs",
]
