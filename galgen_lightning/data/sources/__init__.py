"""Where galaxy images come from: one module per source, all :class:`GalaxySource` subclasses.

- :mod:`.base`: the contract (:class:`GalaxySource`), :func:`resize`, :func:`content_hash`;
- :mod:`.synthetic`: :class:`SyntheticGalaxies`, the rendered default set (renderer:
  :mod:`galgen_lightning.data.synthetic`);
- :mod:`.reader`: :class:`~.reader.CachedReader`, the readers' conversion, rejections and report;
- :mod:`.fits`, :mod:`.images`, :mod:`.arrays`: :class:`FitsCutouts`, :class:`ImageFolder`,
  :class:`ArrayFile`;
- :mod:`.hxdf`: :class:`HubbleDeepField`, stamps from the Hubble XDF image of scikit-image.

Derived images are kept in the one data cache, :mod:`galgen_lightning.data.cache`.
"""

from galgen_lightning.data.sources.arrays import ArrayFile
from galgen_lightning.data.sources.base import GalaxySource, content_hash, resize
from galgen_lightning.data.sources.fits import FitsCutouts
from galgen_lightning.data.sources.hxdf import HubbleDeepField
from galgen_lightning.data.sources.images import ImageFolder
from galgen_lightning.data.sources.synthetic import SyntheticGalaxies

__all__ = [
    "ArrayFile",
    "FitsCutouts",
    "GalaxySource",
    "HubbleDeepField",
    "ImageFolder",
    "SyntheticGalaxies",
    "content_hash",
    "resize",
]
