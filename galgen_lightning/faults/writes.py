"""Checkpoints that cannot half-happen: :class:`AtomicCheckpointIO`.

It writes Lightning's checkpoints with :func:`galgen_lightning.files.atomic_write` (the one owner
of all-or-nothing files and of the line a failed write gives) and loads them with
``weights_only=True``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from galgen_lightning.errors import GalgenError
from galgen_lightning.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written all or nothing (the previous one stays until the new one is complete),
    a failed write one line naming the file; loaded with ``weights_only=True`` (tensors and plain
    containers only: no pickled code runs) and a broken or foreign file one line."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        import io

        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(path, buffer.getbuffer())

    def load_checkpoint(
        self, path, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # Lightning asks for weights_only=False when not told; galgen's checkpoints hold only
        # tensors and plain containers, so nothing pickled is executed (GALGEN_TRUST_CHECKPOINTS=1
        # restores full unpickling, for a checkpoint you made yourself that needs it)
        trusted = os.environ.get("GALGEN_TRUST_CHECKPOINTS") == "1"
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=bool(weights_only) if trusted else True)
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 (unpickling raises anything)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if "weights_only" in str(e) or "Weights only load failed" in str(e):
                first = "it holds objects other than tensors and plain containers, which galgen does not unpickle (weights_only)"
            raise GalgenError(f"--ckpt_path {path}: not a readable galgen checkpoint: {first[:300]}") from None
