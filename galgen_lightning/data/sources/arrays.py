"""Images from one array file: ``.npy`` (memory-mapped), ``.npz`` or HDF5."""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galgen_lightning.data.cache import Chunk
from galgen_lightning.data.sources.base import resize
from galgen_lightning.data.sources.reader import NAN, CachedReader, Result
from galgen_lightning.errors import GalgenError, first_line, install_hint

ARRAY_SUFFIXES = (".npy", ".npz", ".h5", ".hdf5", ".hdf")
_LAYOUTS = "(N, H, W), (N, 1, H, W), (N, H, W, 1), (N, H, W, 3) or (N, 3, H, W)"


def array_layout(shape: tuple[int, ...]) -> str | None:
    """``"nhw"``, ``"nchw"`` or ``"nhwc"`` for a supported shape (1 or 3 channels), else ``None``."""
    if len(shape) == 3:
        return "nhw"
    if len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3):
        return "nchw"
    if len(shape) == 4 and shape[3] in (1, 3):
        return "nhwc"
    return None


def rows_to_gray(block: np.ndarray, layout: str) -> np.ndarray:
    """Rows of an array in ``layout`` to ``(n, H, W)`` float64 in [0, 1] scale: uint8 / 255,
    uint16 / 65535, other types as they are; channels averaged (as the Lupton grayscale)."""
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(block.dtype.newbyteorder("="), 1.0)
    x = np.asarray(block, dtype=np.float64)
    if layout == "nchw":
        x = x.mean(axis=1)
    elif layout == "nhwc":
        x = x.mean(axis=3)
    return x / scale if scale != 1.0 else x


@dataclass(frozen=True)
class ArrayHeader:
    """Shape and dtype of an array that was not read."""

    shape: tuple[int, ...]
    dtype: np.dtype


def _npz_header(path: Path, pick: Callable[[list[str], str], str]) -> ArrayHeader | None:
    """Shape and dtype of the ``.npz`` member that ``pick`` chooses, read from its header only
    (``None`` when the file cannot be read that way: the caller loads it and reports)."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            name = pick(members, "array")
            with zf.open(f"{name}.npy") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    return None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
    return ArrayHeader(tuple(shape), np.dtype(dtype))


class ArrayFile(CachedReader):
    """Images from an array file: ``.npy``, ``.npz`` or HDF5 (``.h5``, ``.hdf5``).

    Shapes ``(N, H, W)``, ``(N, 1, H, W)``, ``(N, H, W, 1)``, ``(N, H, W, 3)`` or
    ``(N, 3, H, W)``; uint8 (divided by 255), uint16 (divided by 65535) or float with values in
    [0, 1]. Colour images become the mean of their channels. Images with NaN or infinite pixels
    are rejected and counted. Each image is centre-cropped to a square and area-averaged to
    ``image_size``; the result is cached (``.npy`` files are memory-mapped, so a large file is
    read a chunk at a time).

    Args:
        path: the array file.
        key: the array's name inside an ``.npz`` or HDF5 file (default: ``images``, or the only
            array in the file).
        cache_dir: where converted images are kept (default: ``$GALGEN_CACHE_DIR`` or
            ``~/.cache/galgen``).
        chunk: images per cached file.
    """

    kind = "array"
    unit = "image"
    option = "data.source.path"
    parallel = False

    def __init__(self, path: str, key: str | None = None, cache_dir: str | None = None, chunk: int = 4096) -> None:
        super().__init__(cache_dir=cache_dir, workers=1, chunk=chunk)
        self.path = self.location = Path(path).expanduser()
        self.key = key
        self._shape: tuple[int, ...] | None = None
        self._dtype: str | None = None
        self._array: Any = None

    # ---------------------------------------------------------------- opening
    @contextmanager
    def _open(self, header_only: bool = False) -> Iterator[Any]:
        """The array (memory-mapped ``.npy``, loaded ``.npz`` member or HDF5 dataset), checked;
        with ``header_only``, an ``.npz`` member may come as its shape and dtype only."""
        p, opt = self.path, self.option
        if not p.exists():
            raise GalgenError(f"{opt}: {p} does not exist")
        suffix = p.suffix.lower()
        if suffix not in ARRAY_SUFFIXES:
            raise GalgenError(f"{opt}: {p} is not a .npy, .npz or HDF5 (.h5, .hdf5) file")
        if suffix == ".npy":
            try:
                arr = np.load(p, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise GalgenError(f"{opt}: {p} is not a readable .npy array ({first_line(e, 160, with_type=True)})") from None
            yield self._checked(arr)
        elif suffix == ".npz":
            header = _npz_header(p, self._pick) if header_only else None
            if header is not None:
                yield self._checked(header)
                return
            try:
                with np.load(p, allow_pickle=False) as z:
                    name = self._pick(list(z.files), "array")
                    arr = z[name]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise GalgenError(f"{opt}: {p} is not a readable .npz file ({first_line(e, 160, with_type=True)})") from None
            yield self._checked(arr)
        else:
            try:
                import h5py
            except ImportError:
                raise GalgenError(f"{opt}: reading {p} needs h5py ({install_hint('h5py')})") from None
            try:
                f = h5py.File(p, "r")
            except OSError as e:
                raise GalgenError(f"{opt}: {p} is not a readable HDF5 file ({first_line(e, 160, with_type=True)})") from None
            with f:
                names: list[str] = []
                f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
                yield self._checked(f[self._pick(names, "dataset")])

    def _pick(self, names: list[str], what: str) -> str:
        if self.key is not None:
            if self.key not in names:
                raise GalgenError(
                    f"data.source.key: {self.path} has no {what} {self.key!r} (it has {', '.join(names) or 'none'})"
                )
            return self.key
        if "images" in names:
            return "images"
        if len(names) == 1:
            return names[0]
        raise GalgenError(
            f"data.source.key: {self.path} holds {len(names)} {what}s ({', '.join(names[:8])}); name one with data.source.key"
        )

    def _checked(self, arr: Any) -> Any:
        shape, dtype = tuple(arr.shape), np.dtype(arr.dtype)
        if array_layout(shape) is None:
            raise GalgenError(f"{self.option}: {self.path} has shape {shape}; expected {_LAYOUTS}")
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or np.issubdtype(dtype, np.complexfloating):
            raise GalgenError(f"{self.option}: {self.path} holds {dtype} values; expected uint8, uint16 or float")
        if shape[0] == 0:
            raise GalgenError(f"{self.option}: {self.path} holds no images (shape {shape})")
        self._shape, self._dtype = shape, str(dtype)
        return arr

    # ---------------------------------------------------------------- the reader hooks
    def _params(self) -> dict:
        return {"path": str(self.path.resolve()), "key": self.key}

    def _scan(self) -> tuple[list[str], list[Any], dict]:
        with self._open(header_only=True):
            pass
        assert self._shape is not None
        st = self.path.stat()
        fingerprint = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "shape": list(self._shape), "dtype": self._dtype}
        n = self._shape[0]
        return [f"row {i}" for i in range(n)], list(range(n)), fingerprint

    def _check_image_size(self, image_size: int) -> None:
        self._listing()
        assert self._shape is not None
        layout = array_layout(self._shape)
        h, w = self._shape[2:4] if layout == "nchw" else self._shape[1:3]
        if min(h, w) < image_size:
            raise GalgenError(f"{self.option}: {self.path}: images are {h}x{w}, smaller than data.image_size={image_size}")

    def _converter(self, image_size: int) -> Callable[[list[Any]], list[Result]]:
        return functools.partial(self._convert_rows, image_size)

    def _piece_size(self, workers: int) -> int:
        return self.chunk  # in-process and vectorised: one task per chunk

    def _convert(
        self, run: list[int], bounds: list[tuple[int, int]], inputs: list[Any], image_size: int, folder: Path
    ) -> Iterator[tuple[int, Chunk]]:
        with self._open() as arr:
            self._array = arr
            try:
                yield from super()._convert(run, bounds, inputs, image_size, folder)
            finally:
                self._array = None

    def _convert_rows(self, image_size: int, rows: list[int]) -> list[Result]:
        """Convert rows (consecutive indices) of the open array, vectorised."""
        assert self._shape is not None
        block = rows_to_gray(np.asarray(self._array[rows[0] : rows[-1] + 1]), array_layout(self._shape) or "nhw")
        finite = np.isfinite(block).all(axis=(1, 2))
        good = block[finite]
        if len(good) and (good.min() < 0 or good.max() > 1):
            raise GalgenError(
                f"{self.option}: {self.path} has values in [{good.min():g}, {good.max():g}] (rows {rows[0]}-{rows[-1]}); "
                "expected [0, 1] for float arrays, or uint8 / uint16"
            )
        images = iter(resize(good, image_size, str(self.path)) if len(good) else [])
        out: list[Result] = []
        for row_finite, row in zip(finite, block):
            if row_finite:
                out.append((next(images), "", ""))
            else:
                out.append((None, NAN, f"{int((~np.isfinite(row)).sum())} NaN or infinite pixels"))
        return out

    def _display(self, name: str) -> str:
        return f"{self.path} {name}"
