"""Stores: a split's samples held compactly, gathered into float32 tensors a batch at a time.

Two kinds hold what a float32 tensor would hold at a quarter of the memory, or none of it:

- ``ByteStore``: 8-bit images (IDX files, PNG/JPEG folders, uint8 arrays in memory) as a uint8 tensor
  (N, C, H, W). ``Dataset.to(device)`` moves the bytes; a batch is converted on that device with
  ``x.to(float32).div_(255)``, the very operations that converted whole datasets before, so every value
  is bit for bit the one a float32 dataset held (an elementwise, correctly rounded division).
- ``MappedStore``: rows of a memory-mapped ``.npy`` file (uint8 or float images, or a table), chosen by
  an index array (a split of the file is the file plus the rows it owns: nothing is copied). A batch's rows
  are sorted into file order and read with one ``preadv`` per run of consecutive rows (one read for a
  contiguous batch), put back in the batch's order, converted (uint8 on the device as above; float images and the
  standardization of tables on the host, in float64 like the in-memory path) into pinned memory when the
  device is CUDA, and copied with ``non_blocking=True``. The store stays on the host: ``to(device)``
  only says where batches go.

File pages a process has mapped count in its resident memory (RSS) until the kernel needs the memory
back, so a pass over a 6 GB file would show 6 GB resident on an idle machine, and a fault maps a whole
page-cache folio (up to 2 MiB) around the byte it needs. Rows are therefore read with ``os.preadv`` from the
descriptor the file was checked and mapped from (copies of the rows, nothing mapped), and whole-file passes
that read the mapping in order drop its pages from the process (``madvise(MADV_DONTNEED)``; they stay in the
page cache) every ``RELEASE_BYTES`` (see ``Mapping``).

A store answers ``shape``, ``len()``, ``dtype`` (float32: what a gather returns), ``device`` and
``store[idx]`` (int, slice, index or boolean mask: a float32 tensor on ``device``). Whole-split uses
(``Dataset.split``, torch functions such as ``torch.cat``, tensor methods, ``numpy()``) get
``materialize()``: the float32 tensor of every sample, refused with a DataError beyond the memory budget
(``source.max_data_bytes``). ``subset(rows)`` is a lazy subset (``Dataset.subset_class``).
"""

from __future__ import annotations

import math
import mmap
import operator
import os
import weakref

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from .source import CHUNK_BYTES, _check_budget

__all__ = ["RELEASE_BYTES", "Mapping", "take_rows", "chunk_rows", "Store", "ByteStore", "MappedStore", "as_tensor",
           "take"]

RELEASE_BYTES = 64 * 2**20  # file pages a whole-file pass may map before the mapping drops them from the process


class Mapping:
    """A memory-mapped ``.npy`` file: the array (``np.memmap``, in the file's layout), the descriptor it was
    mapped from, and the bookkeeping that bounds its resident pages. Shared by the stores of a file's splits.

    Rows are read in two ways. Whole-file passes (value checks) read slices of the array in file order and
    call ``touched(nbytes)``, which drops the pages past ``RELEASE_BYTES`` (``madvise(MADV_DONTNEED)``; the page
    cache keeps them). Rows in any order (batches, split statistics) are read with ``os.preadv`` from the
    descriptor, one call per run of consecutive rows, into the caller's buffer: nothing is mapped. A fault
    on a mapping maps the whole page-cache folio around it (up to 2 MiB; on kernel 6.18, 512 random
    784-byte rows of a 2 GB file mapped 770 MiB and took 6.1 ms), where ``preadv`` copies only the rows
    (1.0 ms).
    """

    def __init__(self, array: np.ndarray, what: str, fd: int | None = None, offset: int = 0):
        self.array = array
        self.what = what
        self._touched = 0
        self._mmap = getattr(array, "_mmap", None)  # np.memmap's own mmap object
        self.offset = int(offset)
        self.row_bytes = math.prod(array.shape[1:]) * array.dtype.itemsize
        self.fd = fd if fd is not None and hasattr(os, "preadv") and array.flags.c_contiguous else None
        if fd is not None:
            weakref.finalize(self, os.close, fd)

    def touched(self, nbytes: int) -> None:
        self._touched += int(nbytes)
        if self._touched >= RELEASE_BYTES:
            self.release()

    def release(self) -> None:
        """Drop the file's pages from this process (they stay in the page cache)."""
        self._touched = 0
        if self._mmap is not None and hasattr(self._mmap, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            try:
                self._mmap.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):  # a closed map, or a platform that refuses: only memory is at stake
                pass

    def read_rows(self, srt: np.ndarray, out: np.ndarray) -> None:
        """Rows ``srt`` (sorted, int64) of the file into ``out`` (len(srt), *array.shape[1:]) of its dtype."""
        if self.fd is None:  # Fortran order, or no preadv: through the mapping
            out[...] = self.array[srt]
            self.touched(len(srt) * (self.row_bytes + 2 * 2**20))
            return
        flat = memoryview(out.reshape(len(srt), -1).view(np.uint8)).cast("B")
        rb = self.row_bytes
        breaks = np.flatnonzero(np.diff(srt) != 1) + 1  # runs of consecutive rows: one read each
        starts = np.concatenate(([0], breaks)).tolist()
        ends = np.concatenate((breaks, [len(srt)])).tolist()
        first = srt[starts].tolist()
        for a, b, r in zip(starts, ends, first, strict=True):
            want = (b - a) * rb
            got = os.preadv(self.fd, [flat[a * rb:b * rb]], self.offset + r * rb)
            if got != want:  # the file shrank since it was checked
                raise DataError(f"{self.what}: rows {r}..{r + b - a - 1} could not be read ({got} of {want} bytes): "
                                "the file was truncated after it was opened; load it again")

    def as_view(self, raw: np.ndarray, view_shape: tuple[int, ...]) -> np.ndarray:
        """Rows in the file's layout -> the layout of the array's view: (N, H, W) gains a channel axis,
        (N, H, W, C) becomes (N, C, H, W), anything else is as it is."""
        if raw.ndim + 1 == len(view_shape):
            return raw[:, None]
        if tuple(raw.shape[1:]) != tuple(view_shape[1:]):
            return raw.transpose(0, 3, 1, 2)
        return raw


def take_rows(a: np.ndarray, rows: np.ndarray, mapping: Mapping | None = None, out: np.ndarray | None = None,
              ) -> np.ndarray:
    """``a[rows]`` (rows: int64 (n,) in any order), read in file order and put in the order of ``rows``.

    ``a`` is an array in memory, or (with ``mapping``) the mapping's array or a view of it in another layout
    (see ``Mapping.as_view``), whose rows are read with ``Mapping.read_rows``. ``out`` (n, *a.shape[1:]),
    of any dtype numpy casts to as ``astype`` does, receives the rows.
    """
    n = len(rows)
    if out is None:
        out = np.empty((n, *a.shape[1:]), dtype=a.dtype)
    if n == 0:
        return out
    if n == 1 or bool((rows[1:] > rows[:-1]).all()):  # already in file order (a slice of rows, no shuffle)
        order, srt = None, rows
    else:
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
    if mapping is not None:
        raw = np.empty((n, *mapping.array.shape[1:]), dtype=mapping.array.dtype)
        mapping.read_rows(srt, raw)
        block = mapping.as_view(raw, a.shape)
    else:
        lo, hi = int(srt[0]), int(srt[-1])
        contiguous = hi - lo + 1 == n and (n == 1 or bool((srt[1:] != srt[:-1]).all()))
        block = a[lo:hi + 1] if contiguous else a[srt]
    if order is None:
        out[...] = block
    else:
        out[order] = block
    return out


def chunk_rows(a: np.ndarray, row_bytes: int | None = None) -> int:
    """How many rows of ``a`` one chunk of a whole-file pass holds (at least 1)."""
    row_bytes = row_bytes if row_bytes is not None else max(1, math.prod(a.shape[1:]) * a.dtype.itemsize)
    return max(1, CHUNK_BYTES // max(1, row_bytes))


def _positions(key, n: int):
    """A slice, or int64 positions (a numpy array or a tensor on its device) of ``key`` into ``range(n)``."""
    if isinstance(key, slice):
        return slice(*key.indices(n))
    if isinstance(key, Tensor):
        if key.dtype == torch.bool:
            if key.shape != (n,):
                raise IndexError(f"a boolean mask of shape {tuple(key.shape)} for {n} samples")
            return key.nonzero().flatten()
        if key.is_floating_point() or key.is_complex():
            raise IndexError(f"tensors used as indices must be integer or boolean, got {key.dtype}")
        return key.reshape(-1).long()
    a = np.asarray(key)
    if a.dtype == bool:
        if a.shape != (n,):
            raise IndexError(f"a boolean mask of shape {a.shape} for {n} samples")
        return np.flatnonzero(a)
    if a.dtype.kind not in "iu":
        raise IndexError(f"arrays used as indices must be integer or boolean, got {a.dtype}")
    return a.reshape(-1).astype(np.int64)


def _check_range(pos, n: int) -> None:
    """An IndexError for a position outside [-n, n). Not for index tensors on an accelerator (the trainer's
    permutation on CUDA): reading their min and max would make the host wait for the device at every step,
    and torch's own indexing checks them there."""
    if isinstance(pos, slice) or len(pos) == 0 or (isinstance(pos, Tensor) and pos.device.type != "cpu"):
        return
    lo, hi = int(pos.min()), int(pos.max())
    if lo < -n or hi >= n:
        raise IndexError(f"index {hi if hi >= n else lo} is out of bounds for {n} samples")


class Store:
    """N samples of one split, held compactly; ``store[idx]`` is a float32 tensor on ``device``.

    Subclasses implement ``_gather(positions)``, ``subset``, ``to`` and ``resident_bytes``. Its own attribute
    names are none of a tensor's: any tensor attribute it lacks is the materialized tensor's.
    """

    dtype = torch.float32
    is_sparse = False
    requires_grad = False

    def __init__(self, n: int, sample_shape: tuple[int, ...], device, what: str):
        self._n = int(n)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.device = torch.device(device)
        self.what = what

    # --- what the training loop and evaluation need, at no cost
    @property
    def shape(self) -> torch.Size:
        return torch.Size((self._n, *self.sample_shape))

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)

    def dim(self) -> int:
        return self.ndim

    def size(self, d: int | None = None):
        return self.shape if d is None else self.shape[d]

    def numel(self) -> int:
        return math.prod(self.shape)

    def is_floating_point(self) -> bool:
        return True

    def is_complex(self) -> bool:
        return False

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, key) -> Tensor:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        if key is Ellipsis:
            key, rest = slice(None), (Ellipsis, *rest)
        if isinstance(key, Tensor) and key.ndim == 0 and not key.is_floating_point() and key.dtype != torch.bool:
            key = int(key)
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            i = int(key)
            if not -self._n <= i < self._n:
                raise IndexError(f"index {i} is out of bounds for {self._n} samples")
            i %= self._n
            out = self._gather(slice(i, i + 1))[0]
        else:
            pos = _positions(key, self._n)
            _check_range(pos, self._n)
            out = self._gather(pos)
            if rest:
                rest = (slice(None), *rest)
        return out[rest] if rest else out

    def _gather(self, pos) -> Tensor:
        raise NotImplementedError

    def subset(self, rows) -> Store:
        """The samples at ``rows`` (positions or a boolean mask) as a store of the same kind (a lazy subset)."""
        raise NotImplementedError

    def to(self, *args, **kwargs):
        """``to(device)``: the same store, its batches gathered onto ``device`` (a ByteStore moves its bytes
        there, a MappedStore stays on the host). Any other form (a dtype, a tensor) acts on ``materialize()``."""
        raise NotImplementedError

    @property
    def resident_bytes(self) -> int:
        raise NotImplementedError

    # --- whole-split uses
    def materialize(self) -> Tensor:
        """Every sample as one float32 tensor (N, *sample_shape) on ``device``, read in chunks; a DataError
        when it would exceed the memory budget."""
        nbytes = self.numel() * 4
        _check_budget(self.what, nbytes, f"{self._n} samples of shape {self.sample_shape} as one float32 tensor "
                      "(for whole-split uses: evaluation metrics, static binarization, torch functions)")
        out = torch.empty(self.shape, dtype=torch.float32, device=self.device)
        step = max(1, CHUNK_BYTES // max(1, math.prod(self.sample_shape) * 4))
        for a in range(0, self._n, step):
            out[a:a + step] = self._gather(slice(a, min(a + step, self._n)))
        return out

    def numpy(self, *, force: bool = False) -> np.ndarray:
        return self.materialize().cpu().numpy()

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype, copy=False)

    def __iter__(self):
        return iter(self.materialize())

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """A torch function given a store sees its float32 tensor (``materialize``)."""
        return func(*_materialized(args), **{k: _materialized(v) for k, v in (kwargs or {}).items()})

    def __getattr__(self, name: str):
        if name.startswith("_") or not hasattr(Tensor, name):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self.materialize(), name)  # a tensor method: on the whole split's float32 tensor

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.what}: {self._n} samples of shape {self.sample_shape}, float32 on "
                f"{self.device} when gathered, {self.resident_bytes} bytes held)")


def _device_only(args, kwargs) -> torch.device | None:
    """The device of ``to(device)`` / ``to(device=...)`` when that is all that is asked (a float32 store stays
    float32), else None."""
    if len(args) == 1 and not kwargs and isinstance(args[0], (str, torch.device, int)):
        return torch.device(args[0])
    if not args and set(kwargs) == {"device"} and kwargs["device"] is not None:
        return torch.device(kwargs["device"])
    if set(kwargs) <= {"device", "dtype"} and kwargs.get("dtype") in (None, torch.float32) and kwargs.get("device"):
        return torch.device(kwargs["device"]) if not args else None
    return None


def _materialized(a):
    if isinstance(a, Store):
        return a.materialize()
    if isinstance(a, (list, tuple)):
        return type(a)(_materialized(v) for v in a)
    return a


def _binary(op, reflected: bool = False):
    def method(self, other):
        return op(other, self.materialize()) if reflected else op(self.materialize(), other)
    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "pow", "mod", "matmul"):
    setattr(Store, f"__{_name}__", _binary(getattr(operator, _name)))
    setattr(Store, f"__r{_name}__", _binary(getattr(operator, _name), reflected=True))
for _name in ("lt", "le", "gt", "ge"):
    setattr(Store, f"__{_name}__", _binary(getattr(operator, _name)))
Store.__neg__ = lambda self: -self.materialize()
Store.__abs__ = lambda self: abs(self.materialize())


class ByteStore(Store):
    """8-bit images (N, C, H, W) held as a uint8 tensor ``u8``, on the device it was moved to; a gather returns
    ``u8[idx].to(float32).div_(255)``."""

    def __init__(self, data: Tensor, what: str):
        if data.dtype != torch.uint8:
            raise TypeError(f"ByteStore holds uint8 data, got {data.dtype}")
        super().__init__(data.shape[0], tuple(data.shape[1:]), data.device, what)
        self.u8 = data

    def _gather(self, pos) -> Tensor:
        if isinstance(pos, np.ndarray):
            pos = torch.from_numpy(pos)
        if isinstance(pos, Tensor):
            pos = pos.to(self.u8.device)
        return self.u8[pos].to(torch.float32).div_(255.0)

    def subset(self, rows) -> ByteStore:
        pos = _positions(rows, self._n)
        _check_range(pos, self._n)
        if isinstance(pos, np.ndarray):
            pos = torch.from_numpy(pos)
        if isinstance(pos, Tensor):
            pos = pos.to(self.u8.device)
        return ByteStore(self.u8[pos].contiguous(), self.what)

    def to(self, *args, **kwargs):
        device = _device_only(args, kwargs)
        if device is None:
            return self.materialize().to(*args, **kwargs)
        return ByteStore(self.u8.to(device), self.what)

    @property
    def resident_bytes(self) -> int:
        return self.u8.numel()


class MappedStore(Store):
    """Rows ``rows`` of a memory-mapped array: images (N, C, H, W) of any real dtype (uint8 is divided by 255,
    others are values in [0, 1]), or a table (N, D) standardized with ``mean`` / ``std`` (float64).

    ``view`` is the mapping's array seen as (N, C, H, W) or (N, D) (a view: (N, H, W) with a channel axis,
    (N, H, W, C) transposed); ``rows`` are int64 rows of it.
    """

    def __init__(self, mapping: Mapping, view: np.ndarray, rows: np.ndarray, what: str, *, mean=None, std=None,
                 device="cpu"):
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        super().__init__(len(rows), tuple(view.shape[1:]), device, what)
        self.mapping, self.array, self.rows = mapping, view, rows
        self.center = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.scale = None if std is None else np.asarray(std, dtype=np.float64)

    @property
    def is_table(self) -> bool:
        return self.center is not None

    def _gather(self, pos) -> Tensor:
        if isinstance(pos, Tensor):
            pos = pos.cpu().numpy()  # host indices: the rows are read here
        rows = self.rows[pos]
        n = len(rows)
        pin = self.device.type == "cuda" and torch.cuda.is_available()
        u8 = self.array.dtype == np.uint8 and not self.is_table
        host = torch.empty((n, *self.sample_shape), dtype=torch.uint8 if u8 else torch.float32, pin_memory=pin)
        if self.is_table:
            block = take_rows(self.array, rows, self.mapping, out=np.empty((n, *self.sample_shape), np.float64))
            with np.errstate(over="ignore"):  # checked when the dataset was assembled
                host.numpy()[...] = (block - self.center) / self.scale  # as the in-memory path: float64, then float32
        else:
            take_rows(self.array, rows, self.mapping, out=host.numpy())
        t = host.to(self.device, non_blocking=pin) if self.device.type != "cpu" else host
        return t.to(torch.float32).div_(255.0) if u8 else t

    def subset(self, rows) -> MappedStore:
        pos = _positions(rows, self._n)
        _check_range(pos, self._n)
        if isinstance(pos, Tensor):
            pos = pos.cpu().numpy()
        return MappedStore(self.mapping, self.array, self.rows[pos], self.what, mean=self.center, std=self.scale,
                           device=self.device)

    def to(self, *args, **kwargs):
        device = _device_only(args, kwargs)
        if device is None:
            return self.materialize().to(*args, **kwargs)
        return MappedStore(self.mapping, self.array, self.rows, self.what, mean=self.center, std=self.scale,
                           device=device)

    @property
    def resident_bytes(self) -> int:
        return self.rows.nbytes


def as_tensor(x) -> Tensor:
    """A tensor as it is; a store's float32 tensor (``Store.materialize``)."""
    return x.materialize() if isinstance(x, Store) else x


def take(x, rows):
    """``x[rows]`` for a tensor; a lazy subset for a store."""
    return x.subset(rows) if isinstance(x, Store) else x[rows]
