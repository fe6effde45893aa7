"""Galaxy image sources and the paired, non-overlapping DataModule."""

from galgen_lightning.data.datamodule import GalaxyPairDataModule, TiledPairs
from galgen_lightning.data.sources import ArrayFile, GalaxySource, SyntheticGalaxies

__all__ = ["ArrayFile", "GalaxyPairDataModule", "GalaxySource", "SyntheticGalaxies", "TiledPairs"]
