"""The seam between sources and splitting: ``_Source``, and the helpers every source shares.

Each source module (idx, arrays, tables, images) returns a ``_Source`` of numpy arrays; splitting
turns it into a ``Dataset``. Shared here: label encoding, the NaN/Inf and float32-range check,
previews of names in messages, the error for options that a source does not use, and the guards
every reader puts in front of a file: ``_open_regular`` (regular files only: a FIFO would block, a
device never ends) and ``_check_budget`` against ``max_data_bytes()`` (sizes announced by headers are
refused before anything is allocated).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["CHUNK_BYTES", "max_data_bytes"]


@dataclass
class _Source:
    name: str                         # Dataset.name
    what: str                         # how errors name the source (a path or a dataset name)
    kind: str                         # "image" | "table"
    x: np.ndarray                     # images (N, C, H, W) uint8 or float in [0, 1]; tables (N, D) float64
    y: np.ndarray | None = None       # int64 (N,)
    class_names: list[str] | None = None
    feature_names: list[str] | None = None
    feature_where: object = None      # callable(row, col) -> str, for CSV positions in messages
    x_test: np.ndarray | None = None  # a fixed test split (IDX)
    y_test: np.ndarray | None = None
    mapping: object = None            # storage.Mapping when x is (a view of) a memory-mapped file


def _only_for(what: str, **options):
    """ConfigError for options that the source ``what`` does not use (silently ignoring would mislead)."""
    uses = {"label_column": "CSV/TSV files", "features": "CSV/TSV files", "data_dir": "fashion-mnist and mnist"}
    for k, v in options.items():
        if v is not None:
            raise ConfigError(
                f"{k} does not apply to {what}: it is only used for {uses[k]}; remove the option"
            )


def _encode_labels(y: np.ndarray, what: str, where=None) -> tuple[np.ndarray, list[str]]:
    """Map the sorted unique label values to 0..K-1; class names are the values as strings.

    Numeric-looking strings sort by value ("2" before "10"). Strings come as a str or bytes array, or
    (from tables) an object array of str, which holds long labels without a fixed-width copy.
    """
    if y.dtype.kind == "S":
        y = np.char.decode(y, "utf-8", errors="replace")
    strings = y.dtype.kind == "O" and all(isinstance(v, str) for v in y.flat)  # tables: no fixed-width copy
    if y.dtype.kind == "U" or strings:
        y = np.char.strip(y) if not strings else np.array([v.strip() for v in y.reshape(-1)], dtype=object)
        empty = np.flatnonzero(y == "")
        if empty.size:
            pos = where(int(empty[0])) if where is not None else f"index {int(empty[0])}"
            raise DataError(f"{what}: {empty.size} empty label(s), first at {pos}; every "
                            "sample needs a label: fill them in or drop those samples")
        uniq, inv = np.unique(y, return_inverse=True)
        try:
            values = uniq.astype(np.float64)
            numeric = bool(np.isfinite(values).all())
        except ValueError:
            numeric = False
        if numeric:
            order = np.argsort(values, kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            uniq, inv = uniq[order], rank[inv]
        return inv.astype(np.int64).reshape(-1), [str(u) for u in uniq]
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if bad.size:
            raise DataError(f"{what}: labels must be class values (integers or strings), but index "
                            f"{int(bad[0])} holds {y[bad[0]]!r}; for regression targets leave 'y' out")
        y = y.astype(np.int64)
    elif y.dtype.kind not in "biu":
        raise DataError(f"{what}: labels of dtype {y.dtype} are not supported; use integers or strings")
    uniq, inv = np.unique(y, return_inverse=True)
    return inv.astype(np.int64).reshape(-1), [str(u.item()) for u in uniq]


def _check_finite(x: np.ndarray, what: str, *, table: bool, where=None, mapping=None) -> None:
    """DataError naming the count and the first position of NaN/Inf values, if any; likewise for values
    whose magnitude is beyond float32's finite range (finite in float64, they would become inf in the
    float32 tensors aekit builds).

    Read in chunks of rows (a memory-mapped file is never read whole; ``mapping`` releases its pages)."""
    if x.dtype.kind != "f" or x.size == 0:
        return
    check_big = x.dtype.itemsize > 4
    big = np.finfo(np.float32).max
    row_bytes = max(1, x.size // len(x) * x.dtype.itemsize)
    step = max(1, CHUNK_BYTES // row_bytes)
    count = n_nan = n_big = 0
    first = first_big = None
    for a in range(0, len(x), step):
        c = x[a:a + step]
        bad = ~np.isfinite(c)
        k = int(bad.sum())
        if k:
            count += k
            n_nan += int(np.isnan(c).sum())
            if first is None:
                first = _first(bad, a)
        if check_big and not count:
            with np.errstate(invalid="ignore"):
                huge = (c > big) | (c < -big)
            k = int(huge.sum())
            if k:
                n_big += k
                if first_big is None:
                    first_big = _first(huge, a)
        if mapping is not None:
            mapping.touched(c.nbytes)
    if count:
        fix = ("remove those rows or fill the values (e.g. with the column's mean)" if table
               else "remove those images or replace the values")
        raise DataError(
            f"{what}: {count} non-finite value(s) ({n_nan} NaN, {count - n_nan} Inf), first at "
            f"{_position(first, table, where)}; {fix} before loading"
        )
    if n_big:
        fix = ("rescale the column (e.g. divide it by a constant) or remove those rows" if table
               else "scale the images to [0, 1]")
        raise DataError(
            f"{what}: {n_big} value(s) beyond float32's range (magnitude above {big:.2g}), "
            f"first at {_position(first_big, table, where)}; aekit computes in float32: {fix} before loading"
        )


CHUNK_BYTES = 32 * 2**20  # bytes of rows read at once by whole-array passes (checks, statistics, materialize)


def _first(bad: np.ndarray, offset: int) -> tuple[int, ...]:
    """The index of the first True of ``bad`` (a chunk of rows starting at row ``offset``)."""
    first = np.unravel_index(int(np.flatnonzero(bad.reshape(-1))[0]), bad.shape)
    return (int(first[0]) + offset, *(int(i) for i in first[1:]))


def _position(first: tuple[int, ...], table: bool, where) -> str:
    """The position ``first`` as messages name it: ``where(row, col)``, a table cell or an image index."""
    if where is not None:
        return where(int(first[0]), int(first[1]))
    if table:
        return f"row {int(first[0])}, column {int(first[1])} (0-based)"
    return f"sample {int(first[0])}, index {tuple(int(i) for i in first)} (0-based)"


def _preview(items, n: int = 10, *, width: int = 40, quote: bool = True) -> str:
    """At most ``n`` items, each cut to ``width`` characters: a message never dumps a file's contents."""
    items = list(items)
    text = ", ".join(repr(_clip(i, width)) if quote and isinstance(i, str) else _clip(str(i), width)
                     for i in items[:n])
    return text + (f", ... ({len(items)} in all)" if len(items) > n else "")


preview = _preview  # the public names, for messages outside this package


def _clip(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[:width] + "..."


def _reason(e: BaseException, width: int = 200) -> str:
    """An exception's text on one line and at most ``width`` characters, for ``(reason)`` in messages."""
    return _clip(" ".join(str(e).split()) or type(e).__name__, width)


# --------------------------------------------------------------------------------------------------
# guards in front of every file: regular files only, and a memory budget

_FALLBACK_BUDGET = 4 * 2**30  # where the machine's memory cannot be asked (no os.sysconf)


def max_data_bytes() -> int:
    """The most bytes a dataset may take in memory, checked from headers before anything is read.

    ``AEKIT_MAX_DATA_BYTES`` (a whole number of bytes) when set, else half of this machine's physical
    memory (4 GiB where that is unknown). A bad value of the variable is a ConfigError.
    """
    text = os.environ.get("AEKIT_MAX_DATA_BYTES", "").strip()
    if text:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise ConfigError(
                f"AEKIT_MAX_DATA_BYTES: expected a positive whole number of bytes (e.g. 8000000000 for 8 GB), "
                f"got {_clip(text)!r}; fix or unset the environment variable"
            )
        return value
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        total = 0
    return total // 2 if total > 0 else _FALLBACK_BUDGET


def _check_budget(what: str, nbytes: int, how: str) -> None:
    """DataError when ``how`` (the data, as its header describes it) would take more than the budget.

    ``nbytes`` is what the data takes in memory: the float32 tensors aekit builds plus the raw
    (decompressed) bytes it reads them from.
    """
    limit = max_data_bytes()
    if nbytes <= limit:
        return
    source = ("AEKIT_MAX_DATA_BYTES" if os.environ.get("AEKIT_MAX_DATA_BYTES", "").strip()
              else "half of this machine's memory; AEKIT_MAX_DATA_BYTES sets another")
    raise DataError(
        f"{what}: {how} would take {_size(nbytes)} in memory, more than the limit of {_size(limit)} ({source}); "
        "load a smaller part of the data, or raise AEKIT_MAX_DATA_BYTES on a machine with the memory"
    )


def _size(n: int) -> str:
    """1536 -> '1.5 KiB'; any int (a hostile header may announce 10**100 bytes, beyond a float)."""
    if n < 1024:
        return f"{n} B"
    for power, unit in enumerate(("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"), start=1):
        if n < 1024 ** (power + 1):
            return f"{n / 1024**power:.1f} {unit}"
    return "more than 1024 EiB"


size_text = _size


_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"))


def _open_regular(path) -> tuple:
    """(binary file, size in bytes) of a regular file, or DataError naming what else ``path`` is.

    Checked before opening (opening a FIFO blocks until a writer comes; a device such as /dev/zero
    never ends), and again on the open descriptor, opened without blocking, in case the path changed
    in between.
    """
    try:
        st = os.stat(path)
        _require_regular(path, st.st_mode)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e}); check its permissions") from e
    try:
        st = os.fstat(fd)
        _require_regular(path, st.st_mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _require_regular(path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _NOT_REGULAR if test(mode)), "a special file")
    link = f", through a link to {os.path.realpath(path)}" if os.path.islink(path) else ""
    raise DataError(f"{path}: is not a regular file ({kind}{link}); aekit reads data only from regular files: "
                    "put the data file itself at this path")
