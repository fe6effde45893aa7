"""Checkpoints: written all or nothing, read without running pickled code, one line when unusable.

:class:`AtomicCheckpointIO` writes Lightning's checkpoints with
:func:`galgen_lightning.files.atomic_write` (the one owner of all-or-nothing files) and loads them
with ``weights_only=True``; :func:`load_checkpoint_file` does the same for ``galgen sample``.
:func:`checkpoint_file` and :func:`unreadable_checkpoint` are the one-line errors of a
``--ckpt_path`` that names no file, or a file that is no readable galgen checkpoint.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from galgen_lightning.errors import GalgenError, first_line
from galgen_lightning.files import atomic_write

TRUST = "GALGEN_TRUST_CHECKPOINTS"
"""Set to 1 to unpickle checkpoints fully (only for a checkpoint you made yourself that needs it)."""


def checkpoints_trusted() -> bool:
    """Whether checkpoints are unpickled fully (``TRUST``), not read ``weights_only``."""
    return os.environ.get(TRUST) == "1"


def checkpoint_file(ckpt: str | Path) -> Path:
    """The local file ``--ckpt_path`` names, or a one-line error: no such file, or a directory."""
    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise GalgenError(f"--ckpt_path {ckpt}: {'is a directory, not a checkpoint file' if path.is_dir() else 'no such file'}")
    return path


def unreadable_checkpoint(ckpt: str | Path, error: BaseException) -> GalgenError:
    """The one line for a ``--ckpt_path`` file that torch cannot load (broken, foreign, or holding code)."""
    text = str(error)
    if "GLOBAL" in text or "Unsupported global" in text:  # a pickled object: code would run to rebuild it
        why = "it holds objects other than tensors and plain containers, which galgen does not unpickle (weights_only)"
    elif "Weights only load failed" in text:  # torch's unpickler stopped on bytes that are no checkpoint
        found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        why = f"not a torch file ({found.group(1).strip()[:100] if found else 'the unpickler stopped'})"
    else:
        why = first_line(error, 300)
    return GalgenError(f"--ckpt_path {ckpt}: not a readable galgen checkpoint: {why}")


def load_checkpoint_file(ckpt: str | Path) -> Any:
    """``torch.load`` of a local checkpoint on the CPU (``weights_only`` unless trusted), errors in one line."""
    path = checkpoint_file(ckpt)
    try:
        return torch.load(path, map_location="cpu", weights_only=not checkpoints_trusted())
    except Exception as e:  # noqa: BLE001 (unpickling raises anything)
        raise unreadable_checkpoint(ckpt, e) from None


LIGHTNING_KEYS = ("pytorch-lightning_version", "state_dict")
"""What every checkpoint Lightning writes holds, and Lightning reads without checking."""


def check_lightning_checkpoint(ckpt: str | Path) -> Path:
    """The local file ``--ckpt_path`` names, if it is a checkpoint Lightning can resume or
    validate from; else one line (a weights file or a stripped checkpoint would stop Lightning
    with a ``KeyError`` traceback after the run directory was made). Memory-mapped: the weights
    are not read."""
    path = checkpoint_file(ckpt)
    try:
        content = torch.load(path, map_location="cpu", weights_only=not checkpoints_trusted(), mmap=True)
    except Exception as e:  # noqa: BLE001 (unpickling raises anything)
        raise unreadable_checkpoint(ckpt, e) from None
    missing = [key for key in LIGHTNING_KEYS if not isinstance(content, dict) or key not in content]
    if missing:
        raise GalgenError(
            f"--ckpt_path {ckpt}: not a Lightning checkpoint (no {missing[0]!r}): give one galgen fit wrote, "
            "e.g. runs/<run>/checkpoints/last.ckpt"
        )
    return path


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
        # tensors and plain containers, so nothing pickled is executed (unless TRUST is set)
        try:
            return super().load_checkpoint(
                path, map_location=map_location, weights_only=bool(weights_only) if checkpoints_trusted() else True
            )
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 (unpickling raises anything)
            raise unreadable_checkpoint(path, e) from None
