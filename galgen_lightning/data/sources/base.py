"""Where galaxy images come from: a source gives ``(count, H, W)`` float32 images in [0, 1].

A source is a small class with three methods, chosen in the config as
``data.source: {class_path: ..., init_args: ...}``:

- ``available()``: how many images the source can give (an upper bound before de-duplication);
- ``load(count, image_size)``: the first ``count`` images, resized to ``image_size``;
- ``describe()``: a dict naming the source and its parameters (written to the run manifest).

``load`` must be deterministic: the same arguments give the same images in the same order.
"""

from __future__ import annotations

import hashlib

import numpy as np

from galgen_lightning.errors import GalgenError


def resize(images: np.ndarray, image_size: int, name: str) -> np.ndarray:
    """Centre-crop images ``(n, h, w)`` to a square and area-average it down to ``image_size`` (never up).

    The averaging windows are those of ``torch.nn.functional.interpolate(mode="area")``
    (adaptive average pooling), computed with numpy so that worker processes need no torch.

    Args:
        images: ``(n, h, w)`` array (any real dtype).
        image_size: target side.
        name: what to call the images in an error message (file or source name).

    Returns:
        ``(n, image_size, image_size)`` float32.
    """
    h, w = images.shape[-2:]
    if min(h, w) < image_size:
        raise GalgenError(f"{name}: images are {h}x{w}, smaller than data.image_size={image_size}")
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    images = images[:, top : top + side, left : left + side]
    if side == image_size:
        return np.array(images, dtype=np.float32)  # a copy: never a view of the caller's (cached) array
    return _area_pool(_area_pool(np.asarray(images, dtype=np.float64), image_size, axis=1), image_size, axis=2).astype(np.float32)


def _area_pool(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Adaptive average pooling of ``x`` along ``axis`` to ``size`` bins (torch's window bounds)."""
    n = x.shape[axis]
    i = np.arange(size)
    start, stop = (i * n) // size, -(-((i + 1) * n) // size)
    sums = np.cumsum(x, axis=axis)
    sums = np.concatenate([np.zeros_like(np.take(sums, [0], axis=axis)), sums], axis=axis)
    shape = [1] * x.ndim
    shape[axis] = size
    return (np.take(sums, stop, axis=axis) - np.take(sums, start, axis=axis)) / (stop - start).reshape(shape)


MAX_ZERO_FRACTION = 0.3
"""A cutout with more zero pixels (in a band) than this share is dropped, as the paper's source
pipeline does (the readers and the Hubble XDF stamps alike)."""


class GalaxySource:
    """Base class of image sources (see the module docstring)."""

    def available(self) -> int:
        """Upper bound on the number of images :meth:`load` can return."""
        raise NotImplementedError

    def load(self, count: int, image_size: int) -> np.ndarray:
        """The first ``count`` images, ``(count, image_size, image_size)`` float32 in [0, 1]."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Name and parameters, for the manifest and the cache key."""
        raise NotImplementedError

    def label(self, info: dict | None = None) -> str:
        """The source's kind and where it reads from, for messages (``info``: its ``describe()``)."""
        info = self.describe() if info is None else info
        kind = info.get("source", type(self).__name__)
        where = info.get("directory") or info.get("path")
        return f"{kind} {where}" if where else str(kind)


def content_hash(image: np.ndarray) -> str:
    """SHA-1 of an image's float32 bytes: equal hashes mean equal pixels."""
    return hashlib.sha1(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest()
