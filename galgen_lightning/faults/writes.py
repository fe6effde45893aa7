"""Writes that cannot half-happen: atomic files and checkpoints, and one line for a failed write.

:func:`atomic_write_bytes` writes to a temporary file that replaces the old one only when
complete; :class:`AtomicCheckpointIO` does the same for Lightning's checkpoints and loads them
with ``weights_only=True``; :func:`write_error` turns a failed write into one line naming the path.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from galgen_lightning.errors import GalgenError

_WHY = {
    errno.ENOSPC: "no space left on the disk",
    getattr(errno, "EDQUOT", errno.ENOSPC): "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit, ulimit -f)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a file is in the way (not a directory)",
    errno.EEXIST: "a file is in the way",
}


def write_error(path: str | Path, error: OSError, what: str = "write") -> GalgenError:
    """One line for a failed write: the path and why."""
    why = _WHY.get(error.errno or 0) or error.strerror or type(error).__name__
    return GalgenError(f"cannot {what} {path}: {why}")


def make_dir(path: str | Path, what: str = "the run directory") -> Path:
    """``mkdir -p``, or a one-line :class:`GalgenError` naming the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e, f"create {what}") from None
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing (temporary file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass


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
        atomic_write_bytes(path, buffer.getbuffer())

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
