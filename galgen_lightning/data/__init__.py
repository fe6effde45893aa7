"""Galaxy image sources and the paired, non-overlapping DataModule."""

from galgen_lightning.data.datamodule import GalaxyPairDataModule, TiledPairs
from galgen_lightning.data.sources import ArrayFile, FitsCutouts, GalaxySource, HubbleDeepField, ImageFolder, SyntheticGalaxies

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
