"""What Python users hold (numpy arrays, lists, tensors of any dtype on any device) -> the model's tensors,
and the results back in the kind they gave.

The public model methods (``encode``, ``decode``, ``reconstruct``; the VAE family's ``elbo`` and
``log_likelihood``; see models/base.py) and ``aekit.metrics.codes`` / ``reconstructions`` /
``anomaly_scores`` follow these rules:

==========================  =======================  =======================  ============================
input x (or z)              result                   autograd                 result dtype
==========================  =======================  =======================  ============================
tensor of the model's       tensor (the family's     as torch's grad mode     the model's
dtype on its device         own method, untouched)   says: the training path
other tensor                tensor on x's device     as torch's grad mode     x's if floating, else the
                                                     says (casts included)    model's
numpy array                 numpy array              none                     x's if floating, else the
                                                                              model's
list, tuple, other          numpy array              none                     the model's
array-likes
==========================  =======================  =======================  ============================

A tensor is the PyTorch path: one call, differentiable like any ``nn.Module`` (wrap it in
``torch.no_grad()`` or use ``aekit.metrics.codes`` for detached, batched results). Arrays and lists are
converted once, ``BATCH_ROWS`` rows at a time, to the model's dtype and device, and run without autograd, so
memory stays bounded for any N. The metrics functions run every kind in batches without autograd.

Integers and booleans are exact values converted to float: nothing is rescaled (uint8 0..255 stays
0..255; a model whose data are in [0, 1] refuses such integers, see models/base.py). Labels ``y``, one per
row: integers -> int64, floats (condition vectors) -> the model's dtype, on the model's device.
Complex, string and object data, and ragged lists, are one DataError line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from .errors import DataError

__all__ = ["BATCH_ROWS", "Result", "as_array", "to_numpy", "sample_rows", "integer_extent", "to_model",
           "labels_to_model", "call_converted", "map_rows"]

BATCH_ROWS = 1024  # rows per model call when arrays are processed in batches (read at call time)

Result = Tensor | dict[str, Tensor]


def as_array(x, what: str = "the data") -> Tensor | np.ndarray:
    """A tensor as it is, anything else as a numpy array of real numbers; a DataError for other contents."""
    x = x.materialize() if _is_store(x) else x  # a datasets Store: its tensor
    if isinstance(x, Tensor):
        if x.is_complex():
            raise DataError(f"{what} must hold real numbers, got a {x.dtype} tensor")
        return x
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise DataError(f"{what} could not be read as an array of numbers ({str(e).splitlines()[0]}); "
                        "give a numpy array, a tensor or a list of rows of equal length") from None
    if a.dtype.kind not in "fiub":
        raise DataError(f"{what} must hold real numbers (float, int or bool), got an array of dtype {a.dtype}")
    return a


def to_numpy(a, what: str = "the data") -> np.ndarray:
    """A numpy array on the CPU from a numpy array, a tensor (any dtype, layout or device; detached), nested lists
    or anything ``np.asarray`` takes (a pandas DataFrame), without a copy where possible. bfloat16 and float8
    tensors become float32 (numpy has no such dtype); an object array of strings becomes a string array. A
    DataError (one line) for ragged lists."""
    if isinstance(a, Tensor):
        if a.device.type == "meta":
            raise DataError(f"{what} is a tensor on the meta device, which has a shape but no values; pass a tensor "
                            "that holds the data")
        t = a.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        t = t.cpu().resolve_conj().resolve_neg()
        if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
            t = t.to(torch.float32)
        try:
            return t.numpy()
        except (TypeError, RuntimeError) as e:
            raise DataError(f"{what} is a tensor of dtype {t.dtype}, which numpy cannot hold ({e}); convert it to "
                            "float32, int64 or uint8 first") from None
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as e:
        raise DataError(f"{what} is not one rectangular array ({str(e).splitlines()[0]}); give every sample the "
                        "same shape, e.g. pad or resize them first") from None
    if arr.dtype == object and arr.size and all(isinstance(v, str) for v in arr.flat):
        arr = arr.astype(str)  # e.g. a pandas column of strings
    return arr


def sample_rows(X, what: str = "X") -> tuple[np.ndarray, list[str] | None]:
    """Samples as scikit-learn estimators take them: (a numpy array of real numbers with the samples first, a
    DataFrame's column names or None).

    The errors scikit-learn's estimator checks expect, each one line: a sparse matrix (TypeError: pass
    X.toarray()), complex numbers, a 1-D array ("Reshape your data"), no samples, no features (DataError, a
    ValueError). Numbers held as Python objects are converted to float64. What the rows hold (a table or images,
    NaN/Inf) is for ``aekit.datasets.from_arrays`` to check.
    """
    if callable(getattr(X, "toarray", None)) and hasattr(X, "nnz"):  # scipy.sparse, without importing it
        raise TypeError(f"{what} is a sparse matrix; aekit needs dense data: pass {what}.toarray()")
    if isinstance(X, (Mapping, set, frozenset, str, bytes)):
        raise DataError(f"{what} is a {type(X).__name__}, not rows of numbers; pass a 2-D array (N, D), a DataFrame, "
                        f"a tensor or images (for a dict of columns: pandas.DataFrame({what}))")
    columns = getattr(X, "columns", None)
    columns = None if columns is None else [str(c) for c in columns]
    arr = to_numpy(X, what)
    if arr.dtype.kind == "c":
        raise DataError(f"{what}: Complex data not supported (dtype {arr.dtype}); pass real numbers")
    if arr.dtype.kind == "O":  # numbers held as Python objects; a TypeError for other objects, as scikit-learn's
        try:
            arr = arr.astype(np.float64)
        except ValueError as e:  # text
            raise DataError(f"{what} holds text that is not a number ({e}); aekit needs numeric columns: drop or "
                            "encode the text columns") from None
    if arr.dtype.kind not in "fiub":
        raise DataError(f"{what} must hold real numbers (float, int or bool), got an array of dtype {arr.dtype}")
    if arr.ndim >= 1 and arr.shape[0] == 0:
        raise DataError(f"{what} holds no samples (shape {arr.shape}); pass at least one row")
    if arr.ndim < 2:
        raise DataError(f"{what} is a {arr.ndim}-D array of shape {arr.shape}, expected 2-D (N, D) rows or images; "
                        f"Reshape your data with {what}.reshape(-1, 1) for one feature or {what}.reshape(1, -1) for "
                        "one sample")
    if arr.ndim == 2 and arr.shape[1] == 0:
        raise DataError(f"{what} has 0 feature(s) (shape={arr.shape}) while a minimum of 1 is required.")
    return arr, columns


def integer_extent(a: Tensor | np.ndarray) -> tuple[int, int] | None:
    """(min, max) of integer or boolean data, None for floating data or no values."""
    if isinstance(a, Tensor) or _is_store(a):
        if a.is_floating_point() or a.numel() == 0:
            return None
    elif a.dtype.kind == "f" or a.size == 0:
        return None
    return int(a.min()), int(a.max())


def _host(a: np.ndarray, dtype) -> Tensor:
    """a as a CPU tensor of ``dtype`` (a numpy dtype), sharing its memory where it can."""
    h = np.ascontiguousarray(a, dtype=dtype)
    return torch.from_numpy(h if h.flags.writeable else h.copy())  # torch warns about read-only memory


def to_model(a: Tensor | np.ndarray, dtype: torch.dtype, device) -> Tensor:
    """Rows of data in the model's dtype on its device; one conversion on the host, one transfer."""
    if isinstance(a, Tensor):
        return a.to(device=device, dtype=dtype)
    return _host(a, np.float64 if dtype == torch.float64 else np.float32).to(device=device, dtype=dtype)


def labels_to_model(y: Tensor | np.ndarray | None, dtype: torch.dtype, device) -> Tensor | None:
    """Labels: integers (and booleans) -> int64, floats (condition vectors) -> dtype, on the device."""
    if y is None:
        return None
    floating = y.is_floating_point() if isinstance(y, Tensor) else y.dtype.kind == "f"
    if not floating:
        return (y if isinstance(y, Tensor) else _host(y, np.int64)).to(device=device, dtype=torch.int64)
    return to_model(y, dtype, device)


def _numpy_dtype(x, dtype: torch.dtype) -> np.dtype:
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        return x.dtype
    return np.dtype(np.float64 if dtype == torch.float64 else np.float16 if dtype == torch.float16 else np.float32)


def _to_numpy(t: Tensor, dtype: np.dtype) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.float()  # bfloat16 has no numpy dtype
    return t.numpy().astype(dtype, copy=False)


def _each(out: Result, fn: Callable) -> Result:
    return {k: fn(v) for k, v in out.items()} if isinstance(out, dict) else fn(out)


def _is_store(x) -> bool:
    """A datasets Store: samples held compactly, gathered into float32 tensors by ``x[rows]``."""
    return callable(getattr(type(x), "materialize", None))


def _checked_rows(x, y, keep_store: bool = False) -> tuple[Tensor | np.ndarray, Tensor | np.ndarray | None]:
    xa = x if keep_store and _is_store(x) else as_array(x)
    if xa.ndim == 0:
        raise DataError(f"expected a batch of samples, an array of shape (N, ...), got the single number {x!r}")
    ya = None if y is None else as_array(y, "the labels y")
    if ya is not None and (ya.ndim == 0 or ya.shape[0] != xa.shape[0]):
        raise DataError(f"the labels y have shape {tuple(ya.shape)} but the data has {xa.shape[0]} rows; "
                        "give one label (or condition vector) per row")
    return xa, ya


def call_converted(fn: Callable[[Tensor, Tensor | None], Result], x: Tensor, y, *, dtype: torch.dtype,
                   device, check: Callable | None = None) -> Result:
    """fn(x, y) for a tensor x of another dtype or device: one call, differentiable (torch's grad mode
    applies), the result (a tensor or a dict of tensors) on x's device in x's dtype if floating."""
    xa, ya = _checked_rows(x, y)
    if check is not None:
        check(xa)
    out_dtype = x.dtype if x.is_floating_point() else dtype
    out = fn(to_model(xa, dtype, device), labels_to_model(ya, dtype, device))
    return _each(out, lambda t: t.to(device=x.device, dtype=out_dtype))


def map_rows(fn: Callable[[Tensor, Tensor | None], Result], x, y=None, *, dtype: torch.dtype, device,
             batch_size: int | None = None, check: Callable | None = None) -> Result:
    """fn(xb, yb) over blocks of at most ``batch_size`` (default BATCH_ROWS) rows of x and y, without autograd.

    x: (N, ...) a tensor, numpy array, list or datasets Store (read a block at a time, never whole; the result
    is then a tensor on the store's device); fn gets each block in the model's ``dtype`` on ``device``
    and returns a tensor or a dict of tensors with N rows in all. The result is of x's kind (see the module
    docstring): a detached tensor on x's device, or numpy. ``check(x)`` runs once, before any model call.
    """
    xa, ya = _checked_rows(x, y, keep_store=True)
    if check is not None:
        check(xa)
    if isinstance(xa, Tensor) or _is_store(xa):  # a store: read a batch at a time (float32 on its device)
        out_dtype = xa.dtype if xa.is_floating_point() else dtype
        back = lambda t: t.detach().to(device=xa.device, dtype=out_dtype)  # noqa: E731
        cat = torch.cat
    else:
        np_dtype = _numpy_dtype(x, dtype)
        back = lambda t: _to_numpy(t, np_dtype)  # noqa: E731
        cat = np.concatenate
    step = batch_size or BATCH_ROWS
    outs = []
    with torch.no_grad():
        for i in range(0, max(xa.shape[0], 1), step):  # one call for no rows: the result keeps its shape
            rows = slice(i, i + step)
            yb = None if ya is None else labels_to_model(ya[rows], dtype, device)
            out = fn(to_model(xa[rows], dtype, device), yb)
            outs.append(_each(out, back))
    if len(outs) == 1:
        return outs[0]
    if isinstance(outs[0], dict):
        return {k: cat([o[k] for o in outs]) for k in outs[0]}
    return cat(outs)
