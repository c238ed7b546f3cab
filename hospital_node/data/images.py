"""A site's images over the memory-mapped integer cache: float32 batches on demand, never a copy
of the whole set. `SiteImages` is one site (or a subset of its rows); `UnionImages` chains
several sites (the centralized reference) without concatenating them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hospital_node.data.config import CACHE_DTYPE_NAMES
from hospital_node.devices import to_device

# Cache storage types and their full-scale value: stored q = round(v * max) for v in [0, 1],
# read back as q / max, so a cached pixel is within 0.5 / max of the decoded float.
CACHE_DTYPES: dict[str, np.dtype] = {name: np.dtype(name) for name in CACHE_DTYPE_NAMES}
IndexLike = int | slice | Sequence[int] | np.ndarray | torch.Tensor


def full_scale(dtype: np.dtype) -> float:
    """The stored value that means 1.0 (255 for uint8, 65535 for uint16)."""
    return float(np.iinfo(dtype).max)


def quantize(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float image in [0, 1] -> `dtype` values, rounded to nearest (values outside are clipped)."""
    scale = full_scale(dtype)
    return np.rint(np.clip(image, 0.0, 1.0) * scale).astype(dtype)


def dequantize(stored: np.ndarray) -> torch.Tensor:
    """Stored integer rows -> float32 tensor in [0, 1] (a new tensor; `stored` is not kept)."""
    values = stored.astype(np.float32)  # a new, writable array (the stored one may be a map)
    np.divide(values, np.float32(full_scale(stored.dtype)), out=values)
    return torch.from_numpy(values)


class ImageSource:
    """What training and evaluation read: `len`, `shape` [N, 1, S, S], `take(indices)` ->
    float32 [B, 1, S, S] in [0, 1], and tensor-style indexing (int, slice, index tensor).

    `to(device)` returns the same images delivering batches on `device`; nothing moves until a
    batch is taken, and then, on CUDA, from pinned memory with an asynchronous copy. `size()`
    mirrors torch.Tensor.size for code such as TensorDataset.
    """

    dtype = torch.float32  # of the batches handed out

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    # -- subclasses ------------------------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def _gather(self, indices: np.ndarray) -> torch.Tensor:
        """float32 [len(indices), 1, S, S] for valid, non-negative int64 indices."""
        raise NotImplementedError

    def _with_device(self, device: torch.device) -> ImageSource:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.image_shape))

    def size(self, dim: int | None = None) -> torch.Size | int:
        return self.shape if dim is None else self.shape[dim]

    def to(self, device: torch.device | str) -> ImageSource:
        device = torch.device(device)
        return self if device == self.device else self._with_device(device)

    def take(self, indices: IndexLike) -> torch.Tensor:
        """float32 [B, 1, S, S] in [0, 1] for the given rows (any order, repeats allowed)."""
        rows = self._normalise(indices)
        batch = self._gather(rows)
        return batch if self.device.type == "cpu" else to_device(batch, self.device)

    def __getitem__(self, index: IndexLike) -> torch.Tensor:
        if isinstance(index, int | np.integer):
            return self.take(np.array([int(index)]))[0]
        if isinstance(index, torch.Tensor) and index.ndim == 0:
            return self.take(np.array([int(index)]))[0]
        if isinstance(index, slice):
            picked = range(len(self))[index]
            return self.take(np.arange(picked.start, picked.stop, picked.step))
        return self.take(index)

    def select(self, indices: IndexLike) -> ImageSource:
        """The images at `indices` as a view (nothing read or copied until a batch is taken)."""
        return SelectedImages(self, self._normalise(indices), device=self.device)

    def materialize(self) -> torch.Tensor:
        """Every image as one float32 tensor: N x S x S x 4 bytes in memory. For small sets
        and tests only; training reads batches with `take`."""
        return self.take(np.arange(len(self)))

    def _normalise(self, indices: IndexLike) -> np.ndarray:
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        rows = np.asarray(indices)
        if rows.dtype == np.bool_:
            if rows.shape != (len(self),):
                raise IndexError(f"boolean mask of shape {rows.shape} for {len(self)} images")
            rows = np.flatnonzero(rows)
        if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
            raise IndexError(f"image indices must be a 1-D integer sequence, got {rows.dtype}")
        rows = rows.astype(np.int64, copy=False)
        n = len(self)
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"image index out of range for {n} images")
        return np.where(rows < 0, rows + n, rows)


class SiteImages(ImageSource):
    """Images [N, 1, S, S] stored as integers in `array` (usually a read-only np.memmap of the
    site cache); `rows`, when given, picks and orders rows of `array` (a subset: no copy)."""

    def __init__(
        self,
        array: np.ndarray,
        rows: np.ndarray | None = None,
        *,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(device)
        if array.ndim != 4 or array.shape[1] != 1 or array.dtype not in CACHE_DTYPES.values():
            raise ValueError(
                f"SiteImages needs a uint8/uint16 [N, 1, S, S] array, got {array.dtype} "
                f"{array.shape}"
            )
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
            if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= len(array))):
                raise ValueError("rows must be 1-D indices into array")
        self.array = array
        self.rows = rows

    @classmethod
    def from_float(cls, images: np.ndarray | torch.Tensor, dtype: str = "uint8") -> SiteImages:
        """In-memory images [N, 1, S, S] in [0, 1], quantized (for tests and tools)."""
        values = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        return cls(quantize(values, CACHE_DTYPES[dtype]))

    def __len__(self) -> int:
        return len(self.array) if self.rows is None else len(self.rows)

    def __repr__(self) -> str:
        view = "" if self.rows is None else f", {len(self.rows)} selected rows"
        return f"SiteImages({tuple(self.shape)}, stored {self.array.dtype}{view})"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.array.shape[1:])  # type: ignore[return-value]

    @property
    def storage(self) -> np.ndarray:
        """The stored integer array behind these images (shared by every subset of it)."""
        return self.array

    def _gather(self, indices: np.ndarray) -> torch.Tensor:
        rows = indices if self.rows is None else self.rows[indices]
        # A run of rows is one slice; otherwise fancy indexing reads just those rows.
        stored = self.array[rows[0] : rows[-1] + 1] if _is_run(rows) else self.array[rows]
        return dequantize(stored)

    def _with_device(self, device: torch.device) -> SiteImages:
        return SiteImages(self.array, self.rows, device=device)

    def __getstate__(self) -> dict:
        """Pickled as the file it maps (path, offset, rows), never as its pixels: a spawned
        DataLoader worker reopens the map instead of receiving a copy of the site."""
        root = self.array
        while isinstance(root.base, np.memmap):
            root = root.base
        if not isinstance(root, np.memmap) or root.filename is None:
            return {"array": self.array, "rows": self.rows, "device": str(self.device)}
        start = (self.array.ctypes.data - root.ctypes.data) // max(1, root[:1].nbytes)
        mapped = (root.filename, root.offset, root.shape, root.dtype.str)
        return {"mapped": mapped, "window": (start, len(self.array)), "rows": self.rows,
                "device": str(self.device)}  # fmt: skip

    def __setstate__(self, state: dict) -> None:
        array = state.get("array")
        if array is None:
            filename, offset, shape, dtype = state["mapped"]
            root = np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset,
                             shape=tuple(shape))  # fmt: skip
            start, length = state["window"]
            array = root[start : start + length]
        self.__init__(array, state["rows"], device=state["device"])

    def select(self, indices: IndexLike) -> SiteImages:
        """The images at `indices`, as a view over the same stored array (no pixels copied)."""
        picked = self._normalise(indices)
        rows = picked if self.rows is None else self.rows[picked]
        if self.rows is None and _is_run(rows):
            return SiteImages(self.array[rows[0] : rows[-1] + 1], device=self.device)
        return SiteImages(self.array, rows, device=self.device)


class UnionImages(ImageSource):
    """Several sites' images as one index space (site 0's rows first), without concatenation."""

    def __init__(
        self, parts: Sequence[ImageSource], *, device: torch.device | str | None = None
    ) -> None:
        super().__init__(device)
        parts = list(parts)
        if not parts:
            raise ValueError("UnionImages needs at least one image source")
        shapes = {p.image_shape for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"cannot join images of different sizes {sorted(shapes)}")
        self.parts = [p.to("cpu") for p in parts]
        self.offsets = np.cumsum([0, *(len(p) for p in parts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __repr__(self) -> str:
        return f"UnionImages({tuple(self.shape)}, {len(self.parts)} parts)"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.parts[0].image_shape

    def _gather(self, indices: np.ndarray) -> torch.Tensor:
        owner = np.searchsorted(self.offsets, indices, side="right") - 1
        out = torch.empty((len(indices), *self.image_shape), dtype=torch.float32)
        for part in np.unique(owner):
            where = np.flatnonzero(owner == part)
            local = indices[where] - self.offsets[part]
            out[torch.from_numpy(where)] = self.parts[part].take(local)
        return out

    def _with_device(self, device: torch.device) -> UnionImages:
        return UnionImages(self.parts, device=device)


class SelectedImages(ImageSource):
    """Rows `rows` of another image source, in that order (a view)."""

    def __init__(
        self, parent: ImageSource, rows: np.ndarray, *, device: torch.device | str | None = None
    ) -> None:
        super().__init__(device)
        self.parent = parent.to("cpu")
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.parent.image_shape

    def _gather(self, indices: np.ndarray) -> torch.Tensor:
        return self.parent.take(self.rows[indices])

    def _with_device(self, device: torch.device) -> SelectedImages:
        return SelectedImages(self.parent, self.rows, device=device)


def _is_run(rows: np.ndarray) -> bool:
    """True for a non-empty run of consecutive ascending indices (readable as one slice)."""
    if not rows.size or rows[-1] - rows[0] != rows.size - 1:
        return False
    return bool(np.all(np.diff(rows) == 1))


def union_images(parts: Sequence[ImageSource]) -> UnionImages:
    """One index space over several sites' images (the centralized reference's training set)."""
    return UnionImages(parts)
