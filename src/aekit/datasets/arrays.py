"""Arrays: ``.npy`` / ``.npz`` files and arrays in memory (``from_arrays``), read with one set of rules.

A 2-D array (N, D) is a table; (N, H, W), (N, H, W, C) with C in {1, 3, 4} and (N, C, H, W) with C in
{1, 3} are images (channels-first wins when both fit), uint8 or numbers in [0, 1]. NaN/Inf are
rejected; labels are encoded by ``_encode_labels``.
"""

from __future__ import annotations

import lzma
import math
import os
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..arraylike import to_numpy
from ..errors import AekitError, ConfigError, DataError
from .config import DataConfig
from .dataset import Dataset
from .source import _check_budget, _check_finite, _encode_labels, _open_regular, _preview, _reason, _Source
from .splitting import _assemble, _one_class
from .storage import Mapping, chunk_rows

__all__ = ["KINDS", "from_arrays", "LABELS_SUFFIX", "MAPPED_BYTES_PER_SAMPLE", "labels_path", "read_samples",
           "check_arrays", "columns_path", "columns_document"]

KINDS = ("auto", "table", "image")


def from_arrays(
    x,
    y=None,
    *,
    kind: str = "auto",
    name: str = "arrays",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
    stats: dict | None = None,
    normal_class: int | str | None = None,
    feature_names: list[str] | None = None,
    shuffle: bool = True,
) -> Dataset:
    """A :class:`Dataset` from arrays in memory, without writing a file.

    ``x``: a numpy array, a torch tensor (any dtype or device; copied to the CPU), nested lists, or
    anything ``np.asarray`` takes (a pandas DataFrame: its column names become ``feature_names``).
    It is read with the rules of a .npy file: (N, D) is a table, (N, H, W), (N, H, W, C) or (N, C, H, W)
    are images (uint8, or numbers in [0, 1]). ``kind="table"`` / ``"image"`` insist on one of the two.
    ``y``: one class label per sample (integers or strings), or None. The split options are those of
    ``load``; ``name`` becomes ``Dataset.name`` and names the data in error messages. The dataset's
    ``spec`` has ``name_or_path=None``: ``load(spec)`` cannot re-read arrays, pass them again.
    ``shuffle=False`` keeps the rows in x's order (with no validation or test part: x's rows as given).
    Raises DataError for unusable data and ConfigError for bad options.

    Parameters
    ----------
    x : array-like of shape (N, D), (N, H, W), (N, H, W, C) or (N, C, H, W)
        The samples: a table or images (uint8, or numbers in [0, 1]).
    y : array-like of shape (N,), optional
        One class label per sample (integers or strings).
    kind : {"auto", "table", "image"}, default="auto"
        What x holds; "auto" decides from its shape.
    name : str, default="arrays"
        ``Dataset.name``, naming the data in messages.
    val_fraction, test_fraction : float, default=0.1, 0.2
        Sizes of the validation and test splits.
    seed : int, default=0
        Seed of the split's permutation.
    limit : int, optional
        Keep the first ``limit`` samples of the permutation.
    stats : dict, optional
        ``{"mean": [...], "std": [...]}``: standardize a table with these instead of the training split's.
    normal_class : int or str, optional
        One-class training: keep only this class (an index or a class name in any case) in train and val.
    feature_names : list of str, optional
        A table's column names (a DataFrame's by default).
    shuffle : bool, default=True
        Permute the rows before splitting.

    Returns
    -------
    Dataset
    """
    spec = DataConfig(name_or_path=None, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                      limit=limit, stats=stats, shuffle=shuffle)
    if kind not in KINDS:
        raise ConfigError(f"kind: expected one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"name: expected a non-empty string that names the dataset, got {name!r}")
    if feature_names is None and getattr(x, "columns", None) is not None:  # a pandas DataFrame
        feature_names = [str(c) for c in x.columns]
    check_arrays(x, name)
    x = _as_array(x, name, "x")
    if (kind == "table" and x.ndim != 2) or (kind == "image" and x.ndim not in (3, 4)):
        want = ("a 2-D array (N, D)" if kind == "table"
                else "a 3-D array (N, H, W) or a 4-D array (N, H, W, C) or (N, C, H, W)")
        raise ConfigError(f"{name}: kind={kind!r} needs {want}, but x has shape {x.shape}")
    src = _array_source(x, None if y is None else _as_array(y, name, "y"), name=name, what=name, owner=name)
    if feature_names is not None:
        src.feature_names = _check_feature_names(feature_names, src)
    ds = _assemble(src, spec)
    return ds if normal_class is None else _one_class(ds, src, spec, normal_class)


def read_samples(x, *, kind: str = "auto", name: str = "X") -> np.ndarray:
    """The samples of ``x`` read by the rules of ``from_arrays`` (those of a .npy file), in x's row order and
    without building a Dataset: a table (N, D) as float64; images as (N, C, H, W), uint8 or float32 in [0, 1].
    ``kind``: "table" / "image" insist on one of the two. NaN/Inf, values beyond float32's range, images
    outside [0, 1] and shapes that are neither are one DataError naming ``name`` (and the first bad value)."""
    if kind not in KINDS:
        raise ConfigError(f"kind: expected one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    x = _as_array(x, name, "x")
    if (kind == "table" and x.ndim != 2) or (kind == "image" and x.ndim not in (3, 4)):
        want = ("a 2-D array (N, D)" if kind == "table"
                else "a 3-D array (N, H, W) or a 4-D array (N, H, W, C) or (N, C, H, W)")
        raise DataError(f"{name}: {want} is expected, but it has shape {x.shape}")
    return _array_source(x, None, name=name, what=name, owner=name).x


IN_MEMORY_BYTES = {"table": 12, "image": 4}  # per value: a table's float64 copy and float32 tensors; images' float32


def check_arrays(x, what: str = "X", copies: int = 1) -> None:
    """A DataError, before anything is copied, when ``copies`` datasets built from the array ``x`` (as
    ``from_arrays`` builds them: a table's float64 copy and float32 tensors, images' float32 tensors, 8-bit images'
    uint8 copy) would exceed the memory budget (``max_data_bytes``). ``from_arrays`` checks one copy; a caller that
    makes several (the Detector: its training data and the rows it scores) names how many."""
    shape = tuple(getattr(x, "shape", ()) or ())
    if len(shape) < 2:
        return
    dtype = getattr(x, "dtype", None)
    per = 1 if str(dtype) in ("uint8", "torch.uint8") and len(shape) in (3, 4) else \
        IN_MEMORY_BYTES["table" if len(shape) == 2 else "image"]
    _check_budget(what, copies * math.prod(shape) * per,
                  f"{'' if copies == 1 else f'{copies} datasets of '}an array of shape {shape} ({dtype})")


def _as_array(a, what: str, role: str) -> np.ndarray:
    """A numpy array on the CPU from an array, a tensor (any device), nested lists, ... (no copy if possible)."""
    return to_numpy(a, f"{what}: {role}")


def _check_feature_names(names, src: _Source) -> list[str]:
    if src.kind != "table":
        raise ConfigError(f"feature_names: {src.what} holds images of shape {src.x.shape[1:]}; only tables "
                          "(2-D x) have feature names: leave feature_names unset")
    d = src.x.shape[1]
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or len(names) != d \
            or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"feature_names: expected a list of {d} column names (strings), one per column of "
                          f"{src.what}, got {names!r}")
    return list(names)


LABELS_SUFFIX = ".labels.npy"  # a .npy file's labels, beside it: data.npy -> data.labels.npy (aekit pack writes it)
MAPPED_BYTES_PER_SAMPLE = 24  # a memory-mapped array's resident index: the split permutation, split rows, a batch order


COLUMNS_SUFFIX = ".columns.json"  # a packed table's column names, beside it: data.npy -> data.columns.json
MAX_COLUMNS_BYTES = 64 * 2**20  # a columns file holds names: far below this


def labels_path(p: Path) -> Path:
    """Where the labels of the .npy file ``p`` are looked for: ``data.npy`` -> ``data.labels.npy``."""
    return p.with_name(p.name[: -len(p.suffix)] + LABELS_SUFFIX)


def columns_path(p: Path) -> Path:
    """Where the column names of the .npy table ``p`` are kept: ``data.npy`` -> ``data.columns.json``."""
    return p.with_name(p.name[: -len(p.suffix)] + COLUMNS_SUFFIX)


def columns_document(names: list[str], source: str) -> dict:
    """What ``aekit pack`` writes to ``columns_path``: the column names of the table, in the file's order, and
    what the values are (the source's own numbers: nothing is standardized before training)."""
    return {"format": "aekit table columns 1", "columns": list(names), "source": source,
            "values": "as in the source table, in its own units (standardized only when loaded for training)"}


def _read_columns(p: Path, d: int) -> list[str]:
    """The column names kept beside the .npy table ``p`` of ``d`` columns (``columns_path``), checked."""
    import json

    cp = columns_path(p)
    f, size = _open_regular(cp)
    with f:
        if size > MAX_COLUMNS_BYTES:
            raise DataError(f"{cp}: {size} bytes, far more than column names take; it is not aekit's columns file: "
                            "remove it or pack the table again")
        raw = f.read(size)
    try:
        doc = json.loads(raw.decode("utf-8"))
        names = doc["columns"]
        ok = isinstance(names, list) and all(isinstance(n, str) for n in names)
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError):
        ok = False
    if not ok:
        raise DataError(f"{cp}: not an aekit columns file ({{\"columns\": [names...]}}); remove it or pack the "
                        "table again")
    if len(names) != d or len(set(names)) != d:
        raise DataError(f"{cp}: {len(names)} column names ({len(set(names))} distinct) for a table of {d} columns in "
                        f"{p.name}; the two files do not belong together: pack the table again")
    return names


def _select_columns(src: _Source, features, p: Path) -> _Source:
    """The columns ``features`` (names kept beside a packed .npy table) of ``src``, in that order."""
    names = src.feature_names
    if src.kind != "table" or names is None:
        raise ConfigError(f"features does not apply to {p}: only a table with column names (a CSV/TSV file, or a "
                          f".npy file packed from one, with its {COLUMNS_SUFFIX} beside it) has named columns; "
                          "remove the option")
    index = {n: i for i, n in enumerate(names)}
    unknown = [f for f in features if f not in index]
    if unknown:
        raise DataError(f"{p}: feature column(s) {_preview(unknown, 20)} not found (--features); the columns are: "
                        f"{_preview(names, 20)}")
    cols = [index[f] for f in features]
    if cols == list(range(len(names))):
        return src
    _check_budget(str(p), len(src.x) * len(cols) * 8, f"the {len(cols)} chosen columns of {len(src.x)} rows")
    x = np.empty((len(src.x), len(cols)), np.float64)
    step = chunk_rows(src.x)
    for a in range(0, len(src.x), step):  # read in chunks of rows: a memory-mapped file is never read whole
        x[a:a + step] = src.x[a:a + step][:, cols]
    src.x, src.mapping, src.feature_names = x, None, list(features)
    return src


def _load_array_file(p: Path, features=None) -> _Source:
    """A .npy file (one array, memory-mapped; labels from ``labels_path(p)`` when it exists) or .npz file
    (``x`` and optional ``y``, read into memory), read only after its headers.

    The shape and dtype in each array's header (and, in a .npz, each member's decompressed size) are
    checked against the memory budget before any data is read; numpy allocates what a header
    announces, so a lying header would otherwise decide how much memory is taken. A memory-mapped array
    takes no memory of its own: its budget is its index (``MAPPED_BYTES_PER_SAMPLE`` per sample), and its
    length is checked against the file's before it is mapped. A .npy table packed from a CSV has its column
    names beside it (``columns_path``): they become the feature names, and ``features`` picks columns by name.
    """
    is_npy = p.suffix.lower() == ".npy"
    mapping = y = None
    f, size = _open_regular(p)
    with f:
        try:
            head = f.read(6)
            magic = b"\x93NUMPY" if is_npy else b"PK"
            if not head.startswith(magic):
                raise DataError(
                    f"{p}: not a {p.suffix} file (it does not start with the {'NumPy' if is_npy else 'zip'} magic "
                    f"bytes); write it with {'np.save' if is_npy else 'np.savez'}, or give the file its real "
                    "extension"
                )
            f.seek(0)
            if is_npy:
                xkey = None
                shape, dtype, fortran = _npy_header(f, str(p), fortran=True)
                n = shape[0] if shape else 1
                _check_budget(str(p), n * MAPPED_BYTES_PER_SAMPLE,
                              f"an array of shape {shape} {dtype} (memory-mapped: its index of "
                              f"{MAPPED_BYTES_PER_SAMPLE} bytes per sample is held in memory)")
                offset = f.tell()
                _check_length(size - offset, shape, dtype, str(p))
                if math.prod(shape) == 0 or not shape:  # nothing to map; refused below with its reason
                    f.seek(0)
                    x = np.lib.format.read_array(f, allow_pickle=False)
                else:  # mapped from the descriptor checked above (a path could be swapped meanwhile)
                    x = np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
                    mapping = Mapping(x, str(p), fd=os.dup(f.fileno()), offset=offset)
            else:
                xkey, x, y = _read_npz(f, p)
        except AekitError:  # DataError, and ConfigError for a bad AEKIT_MAX_DATA_BYTES (both are ValueErrors)
            raise
        except _HEADER_ERRORS as e:  # numpy's header parser and zipfile raise many kinds on damaged input
            if isinstance(e, ValueError) and "pickle" in str(e).lower():
                raise _pickled(p) from e
            raise DataError(f"{p}: not a valid {p.suffix} file ({_reason(e)}); save it again with numpy") from e
        except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, lzma.LZMAError) as e:
            raise DataError(f"{p}: not a valid or complete {p.suffix} file ({_reason(e)}); save it again with "
                            "numpy") from e
    owner = str(p)
    if is_npy and labels_path(p).exists():
        owner = str(labels_path(p))
        y = _read_npy_in_memory(labels_path(p), per_value=8)
    what = f"{p}" if xkey in (None, "x") else f"{p} (array {xkey!r})"
    src = _array_source(x, y, name=p.name, what=what, owner=owner, mapping=mapping)
    if is_npy and src.kind == "table" and os.path.lexists(columns_path(p)):
        src.feature_names = _read_columns(p, src.x.shape[1])
    return src if features is None else _select_columns(src, features, p)


def _read_npy_in_memory(p: Path, per_value: int) -> np.ndarray:
    """A small .npy file (labels) read into memory, with the checks of ``_load_array_file``."""
    f, size = _open_regular(p)
    with f:
        try:
            if not f.read(6).startswith(b"\x93NUMPY"):
                raise DataError(f"{p}: not a .npy file (it does not start with the NumPy magic bytes); write the "
                                "labels with np.save, or remove the file")
            f.seek(0)
            shape, dtype = _npy_header(f, str(p))
            _check_budget(str(p), _array_bytes(shape, dtype, per_value), f"an array of shape {shape} {dtype}")
            _check_length(size - f.tell(), shape, dtype, str(p))
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
        except AekitError:
            raise
        except _HEADER_ERRORS as e:
            if isinstance(e, ValueError) and "pickle" in str(e).lower():
                raise _pickled(p) from e
            raise DataError(f"{p}: not a valid .npy file ({_reason(e)}); save it again with numpy") from e
        except (OSError, EOFError) as e:
            raise DataError(f"{p}: not a valid or complete .npy file ({_reason(e)}); save it again with numpy") from e


# what a damaged header or zip archive raises besides OSError/EOFError/BadZipFile: ValueError (most),
# tokenize.TokenError and SyntaxError from numpy's header repair, the rest from deep nesting, huge
# numbers, unsupported zip features (NotImplementedError) and encrypted members (RuntimeError)
_HEADER_ERRORS = (ValueError, TypeError, SyntaxError, tokenize.TokenError, OverflowError, RecursionError,
                  MemoryError, NotImplementedError, RuntimeError, struct.error, IndexError)


_MAX_NPY_HEADER = 65536  # bytes; numpy refuses header text beyond 10000 characters


def _npy_header(f, what: str, fortran: bool = False):
    """(shape, dtype) from the .npy header at ``f``'s position, which ends at the start of the data
    (with ``fortran``: (shape, dtype, fortran_order))."""
    version = np.lib.format.read_magic(f)
    length_bytes = 2 if version == (1, 0) else 4
    length = int.from_bytes(f.read(length_bytes), "little")
    if length > _MAX_NPY_HEADER:  # numpy would read it all before refusing it
        raise DataError(f"{what}: the header announces {length} bytes of header text (numpy writes a few hundred); "
                        "the file is damaged: save it again with numpy")
    f.seek(f.tell() - length_bytes)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(f)  # a version (3, 0) header is UTF-8: the same layout as (2, 0)
    if dtype.hasobject:
        raise _pickled(what)
    if any(d < 0 for d in shape):
        raise DataError(f"{what}: the header announces the shape {shape}, with a negative size; the file is "
                        "damaged: save it again with numpy")
    return (shape, dtype, bool(fortran_order)) if fortran else (shape, dtype)


def _array_bytes(shape, dtype: np.dtype, per_value: int) -> int:
    """The array's raw bytes plus ``per_value`` bytes per value (its float32 tensor, or int64 labels)."""
    n = math.prod(shape)
    return n * (dtype.itemsize + per_value)


_TABLE_TRANSIENT = 8  # bytes per value on top: the finiteness masks of the splits, chunk buffers, the allocator


def _table_peak_bytes(shape, dtype: np.dtype) -> int:
    """The peak memory of reading a table (N, D) of a .npz into a dataset: the raw array and its float64 copy
    (none when it is float64 already), then that copy and the float32 split tensors, plus ``_TABLE_TRANSIENT``.
    Measured (ru_maxrss, 1M x 50 float32 and 500k x 50 float64): 17.8 and 17.6 bytes per value; 20 budgeted.
    (It was 8 and 12, for peaks of 20: a member estimated at 5.0 GiB peaked at 12.3 GiB.)"""
    n = math.prod(shape)
    raw = 0 if dtype == np.float64 else dtype.itemsize
    return n * (max(raw + 8, 8 + 4) + _TABLE_TRANSIENT)


def _check_length(have: int, shape, dtype: np.dtype, what: str) -> None:
    need = math.prod(shape) * dtype.itemsize
    if have < need:
        raise DataError(f"{what}: the header announces an array of shape {shape} {dtype} = {need} bytes but "
                        f"{have} follow: the file is truncated; save it again with numpy")


def _read_npz(f, p: Path) -> tuple[str, np.ndarray, np.ndarray | None]:
    """(key of x, x, y or None) from the zip archive ``f``; headers and sizes first, then the data."""
    with zipfile.ZipFile(f) as z:
        names = z.namelist()
        keys = [n[:-4] if n.endswith(".npy") else n for n in names]  # as np.load(...).files names them
        if "x" in keys:
            xkey = "x"
        elif len(keys) == 1:
            xkey = keys[0]
        else:
            raise DataError(
                f"{p}: expected an array named 'x' (and optionally 'y' for labels), found "
                f"{'no arrays' if not keys else 'keys ' + _preview(keys, 20)}; "
                "save it with np.savez(path, x=features, y=labels)"
            )
        wanted = {"x": xkey, "y": "y"} if xkey == "x" and "y" in keys else {"x": xkey}
        members = {role: key if key in names else names[keys.index(key)] for role, key in wanted.items()}
        sizes = []
        for role, name in members.items():
            what = f"{p} (array {wanted[role]!r})"
            info = z.getinfo(name)
            _check_budget(str(p), info.file_size,
                          f"array {wanted[role]!r} (member {name!r}, {info.file_size} bytes decompressed)")
            with z.open(name) as m:
                if m.read(6) != b"\x93NUMPY":
                    raise DataError(f"{what}: the member {name!r} is not a .npy array; save the arrays with "
                                    "np.savez(path, x=features, y=labels)")
                m.seek(0)
                shape, dtype = _npy_header(m, what)
                # float32 tensors (8-bit images: uint8 copies, see storage.ByteStore), int64 labels
                per_value = (1 if dtype == np.uint8 and len(shape) in (3, 4) else 4) if role == "x" else 8
                nbytes = _array_bytes(shape, dtype, per_value)
                if role == "x" and len(shape) == 2:  # a table: _table_peak_bytes
                    nbytes = _table_peak_bytes(shape, dtype)
                sizes.append((nbytes, f"{wanted[role]!r} of shape {shape} {dtype}"))
                _check_budget(str(p), sum(n for n, _ in sizes),
                              f"the array{'s' if len(sizes) > 1 else ''} {' and '.join(h for _, h in sizes)}")
                _check_length(info.file_size - m.tell(), shape, dtype, what)
        arrays = {}
        for role, name in members.items():
            with z.open(name) as m:
                arrays[role] = np.lib.format.read_array(m, allow_pickle=False)
    return xkey, arrays["x"], arrays.get("y")


def _pickled(what) -> DataError:
    return DataError(
        f"{what}: holds Python objects (pickled data), which aekit does not load for safety; save "
        "numeric arrays (and labels as integers or fixed-width strings: np.asarray(y, dtype=str))"
    )


def _array_source(x, y, *, name: str, what: str, owner: str, mapping: Mapping | None = None) -> _Source:
    """Interpret an array x (N, ...) and optional labels y (N,) as a table or images.

    The rules of .npy files, shared with ``from_arrays``: a 2-D array is a table (float64), 3-D and 4-D
    arrays are images (see ``_image_array``); NaN/Inf are rejected. ``what`` names x in messages,
    ``owner`` names the holder of y. With ``mapping`` (x memory-mapped), x is checked in chunks and kept as
    it is (its dtype; images as an (N, C, H, W) view): the stores convert each batch.
    """
    if mapping is None:
        x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what}: expected numbers, got an array of dtype {x.dtype}; convert it to float "
                        "or uint8 first")
    if x.ndim == 0 or len(x) == 0:
        raise DataError(f"{what}: the array has no samples (shape {x.shape}); the dataset is empty")
    if x.ndim == 2:
        if x.shape[1] == 0:
            raise DataError(f"{what}: the table has 0 columns (shape {x.shape}); the dataset is empty")
        table = x if mapping is not None else x.astype(np.float64, copy=False)
        _check_finite(table, what, table=True, mapping=mapping)
        src = _Source(name=name, what=what, kind="table", x=table, mapping=mapping)
    elif x.ndim in (3, 4):
        src = _Source(name=name, what=what, kind="image", x=_image_array(x, what, mapping), mapping=mapping)
    else:
        raise DataError(
            f"{what}: cannot tell what an array of shape {x.shape} holds; expected (N, D) for a table, "
            "(N, H, W) or (N, H, W, C) with C in 1/3/4 or (N, C, H, W) with C in 1/3 for images"
            + ("; for a single feature reshape it to (N, 1)" if x.ndim == 1 else "")
        )
    if y is not None:
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{owner}: labels 'y' have shape {y.shape} but 'x' has {len(x)} samples; expected "
                            f"y of shape ({len(x)},), one class label per sample")
        src.y, src.class_names = _encode_labels(y, f"{owner} (array 'y')")
    return src


def _image_array(x: np.ndarray, what: str, mapping: Mapping | None = None) -> np.ndarray:
    """(N, H, W) / (N, H, W, C) / (N, C, H, W) -> (N, C, H, W), uint8 or float32 in [0, 1].

    With ``mapping``: the values are checked in chunks and the result is a view of x in its own dtype."""
    _check_finite(x, what, table=False, mapping=mapping)  # positions in the user's layout
    if x.ndim == 3:
        x = x[:, None]
    elif x.shape[1] in (1, 3):  # channels first wins when both layouts fit
        pass
    elif x.shape[3] in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2) if mapping is not None else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    else:
        raise DataError(
            f"{what}: an image array of shape {x.shape} has no channel axis of size 1/3/4 in last place "
            "or 1/3 in second place; expected (N, H, W), (N, H, W, C) or (N, C, H, W); for a table "
            "reshape it to 2-D (N, D)"
        )
    if min(x.shape[1:]) == 0:
        raise DataError(f"{what}: images of shape {x.shape[1:]} hold no pixels; the dataset is empty")
    if x.dtype == np.uint8:
        return x
    lo, hi = _value_range(x, mapping)
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            f"{what}: image values must lie in [0, 1] but range from {lo:g} to {hi:g}; scale them to "
            "[0, 1] (e.g. divide 8-bit pixels by 255, or save them as uint8), or pass a 2-D (N, D) "
            "array to treat the data as a table (standardized per feature)"
        )
    return x if mapping is not None else x.astype(np.float32)


def _value_range(x: np.ndarray, mapping: Mapping | None) -> tuple[float, float]:
    """(min, max) of x, read in chunks of rows when it is memory-mapped."""
    if mapping is None:
        return float(x.min()), float(x.max())
    lo, hi = math.inf, -math.inf
    step = chunk_rows(x)
    for a in range(0, len(x), step):
        c = x[a:a + step]
        lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
        mapping.touched(c.size * c.dtype.itemsize)
    return lo, hi
