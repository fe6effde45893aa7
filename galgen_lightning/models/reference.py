"""Reference families whose answer is known: they make the verdict testable without training.

Each is a :class:`~galgen_lightning.models.base.PairModule` behind the same ``sample(n, seed)``
contract as the real families, so it runs through the real callbacks and the real judge:

- :class:`OracleGeneralizer`: for noise index ``i``, A and B return *the same fresh* galaxy from
  the true distribution (the synthetic renderer at an index no split ever uses). The answer:
  *generalizes*.
- :class:`OracleMemorizer`: A returns an image of subset A, B one of subset B (chosen by the
  noise), optionally flipped or rotated and with a little noise. The answer: *memorizes*.
- :class:`OracleMixture`: a set share of the noise indices copy (as the memorizer), the rest
  generalize. The answer: *in transition*, with the share inside the rate's interval.
- :class:`NoisePair`: uniform noise images. The answer: *poor samples*.
- :class:`OracleCollapse`: for noise index ``i``, A and B return the same fresh galaxy out of a
  few (a collapse both models share: they agree and copy nothing). The answer: *poor samples*,
  by the repeat share of :mod:`~galgen_lightning.evaluation.variety`.

They train nothing (``galgen validate`` runs the tests on them directly) and need the built-in
synthetic source for the generalizer. docs/extending.md shows how to check a new test with them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from galgen_lightning.errors import GalgenError
from galgen_lightning.metrics import dihedral
from galgen_lightning.models.base import PairModule
from galgen_lightning.noise import counter_normal, counter_uniform

FRESH_OFFSET = 50_000_000
"""Synthetic galaxy numbers from here on are never part of a split (sources hold far fewer)."""
SEED_STRIDE = 1_000_000
"""Fresh galaxies of sampling seed ``s`` start at ``FRESH_OFFSET + s * SEED_STRIDE``."""


class _ReferencePair(PairModule):
    """Shared plumbing: nothing to train, the datamodule's subsets and source at hand.

    Args:
        image_size: side of the images (linked from ``data.image_size``).
        channels: image channels.
        sample_batch_size: samples per generation batch.
    """

    learns = False

    def __init__(self, image_size: int = 64, channels: int = 1, sample_batch_size: int = 64) -> None:
        super().__init__(image_size=image_size, channels=channels, sample_batch_size=sample_batch_size)
        self.model_a = nn.Identity()
        self.model_b = nn.Identity()
        self._unused = nn.Parameter(torch.zeros(1))  # an optimizer needs one parameter under `galgen fit`
        self._fresh: dict[tuple[int, int], Tensor] = {}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        return None

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self._unused], lr=0.0)

    def _datamodule(self):
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            raise GalgenError(f"{type(self).__name__} samples from the run's data: use it through galgen fit/validate")
        return dm

    def subset(self, which: str) -> Tensor:
        """Training images of subset ``which``."""
        return self._datamodule().subset_images(which)

    def fresh(self, indices: Tensor, seed: int) -> Tensor:
        """Fresh galaxies from the synthetic renderer for noise indices ``indices`` (cached per index)."""
        from galgen_lightning.data.sources import SyntheticGalaxies
        from galgen_lightning.data.synthetic import render_galaxy

        source = self._datamodule().source
        if not isinstance(source, SyntheticGalaxies):
            raise GalgenError(f"{type(self).__name__} draws fresh galaxies from the renderer: use data.source SyntheticGalaxies")
        rows = []
        for i in indices.tolist():
            key = (seed, i)
            if key not in self._fresh:
                number = FRESH_OFFSET + seed * SEED_STRIDE + i
                image = render_galaxy(number, source.seed, self.image_size, source.q, source.stretch)
                self._fresh[key] = torch.from_numpy(image)[None]
            rows.append(self._fresh[key])
        return torch.stack(rows).to(self.device)

    def copies(self, which: str, indices: Tensor, seed: int, noise: float, transforms: bool) -> Tensor:
        """For each noise index, an image of subset ``which`` chosen by the noise, maybe flipped, plus noise."""
        images = self.subset(which).to(self.device)
        u = counter_uniform(seed, indices, 2, stream=1 if which == "a" else 2)
        pick = (u[:, 0] * len(images)).long().clamp_max(len(images) - 1)
        out = images[pick].clone()
        if transforms:
            k = (u[:, 1] * 8).long().clamp_max(7)
            for row in range(len(out)):
                out[row] = dihedral(out[row])[int(k[row])]
        if noise > 0:
            out = out + noise * counter_normal(seed, indices, tuple(out.shape[1:]), stream=3 if which == "a" else 4).to(
                self.device
            )
        return out


class OracleMixture(_ReferencePair):
    """A set share of noise indices copy a training image of the model's own subset, the rest are
    fresh galaxies shared by A and B.

    Args:
        copy_share: probability that a noise index copies (0: the generalizer, 1: the memorizer).
        noise: standard deviation of the Gaussian noise added to a copy (images are in [0, 1]).
        transforms: copies are flipped or rotated at random (one of the 8 dihedral transforms).
        **kwargs: ``image_size`` (linked from ``data.image_size``), ``channels`` and
            ``sample_batch_size`` (see :class:`PairModule`).
    """

    def __init__(self, copy_share: float = 0.3, noise: float = 0.01, transforms: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 <= copy_share <= 1:
            raise ValueError(f"copy_share must be in [0, 1], got {copy_share}")
        if noise < 0:
            raise ValueError(f"noise must be non-negative, got {noise}")
        self.copy_share = copy_share
        self.noise = noise
        self.transforms = transforms

    def generate(self, which: str, indices: Tensor, seed: int) -> tuple[Tensor, Tensor, dict[str, float | Tensor]]:
        copy = counter_uniform(seed, indices, 1, stream=0)[:, 0].to(self.device) < self.copy_share
        out = torch.empty(len(indices), *self.image_shape, device=self.device)
        if copy.any():
            out[copy] = self.copies(which, indices[copy], seed, self.noise, self.transforms)
        if (~copy).any():
            out[~copy] = self.fresh(indices[~copy], seed)
        ok = torch.ones(len(indices), dtype=torch.bool, device=self.device)
        return out, ok, {"copies": copy.double()}


class OracleGeneralizer(OracleMixture):
    """A and B return the same fresh galaxy for the same noise: the answer is *generalizes*.

    Args:
        **kwargs: ``image_size`` (linked from ``data.image_size``), ``channels`` and
            ``sample_batch_size`` (see :class:`PairModule`).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(copy_share=0.0, noise=0.0, transforms=False, **kwargs)


class OracleMemorizer(OracleMixture):
    """Each model returns a training image of its own subset: the answer is *memorizes*.

    Args:
        noise: standard deviation of the Gaussian noise added to a copy.
        transforms: copies are flipped or rotated at random.
        **kwargs: ``image_size`` (linked from ``data.image_size``), ``channels`` and
            ``sample_batch_size`` (see :class:`PairModule`).
    """

    def __init__(self, noise: float = 0.01, transforms: bool = True, **kwargs: Any) -> None:
        super().__init__(copy_share=1.0, noise=noise, transforms=transforms, **kwargs)


class NoisePair(_ReferencePair):
    """Uniform noise in [0, 1] from the shared noise: the answer is *poor samples*.

    Args:
        image_size: side of the images (linked from ``data.image_size``).
        channels: image channels.
        sample_batch_size: samples per generation batch.
    """

    def generate(self, which: str, indices: Tensor, seed: int) -> tuple[Tensor, Tensor, dict[str, float | Tensor]]:
        u = counter_uniform(seed, indices, self.channels * self.image_size**2, stream=5 if which == "a" else 6)
        out = u.reshape(len(indices), *self.image_shape).to(self.device)
        return out, torch.ones(len(indices), dtype=torch.bool, device=self.device), {}


class OracleCollapse(_ReferencePair):
    """A and B return the same fresh galaxy out of ``modes`` for the same noise (chosen by the
    noise): a collapse both models share. The answer is *poor samples* (most samples repeat one
    another), not *generalizes*, although A and B agree and copy nothing.

    Args:
        modes: how many distinct galaxies the pair returns.
        **kwargs: ``image_size`` (linked from ``data.image_size``), ``channels`` and
            ``sample_batch_size`` (see :class:`PairModule`).
    """

    def __init__(self, modes: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if modes < 1:
            raise ValueError(f"modes must be at least 1, got {modes}")
        self.modes = modes

    def generate(self, which: str, indices: Tensor, seed: int) -> tuple[Tensor, Tensor, dict[str, float | Tensor]]:
        mode = (counter_uniform(seed, indices, 1, stream=7)[:, 0] * self.modes).long().clamp_max(self.modes - 1)
        out = self.fresh(mode, seed)
        return out, torch.ones(len(indices), dtype=torch.bool, device=self.device), {}
