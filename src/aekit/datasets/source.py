"""The seam between sources and splitting: ``_Source``, and the helpers every source shares.

Each source module (idx, arrays, tables, images) returns a ``_Source`` of numpy arrays; splitting
turns it into a ``Dataset``. Shared here: label encoding, the NaN/Inf check, previews of names in
messages, and the error for options that a source does not use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError


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

    Numeric-looking strings sort by value ("2" before "10").
    """
    if y.dtype.kind == "S":
        y = np.char.decode(y, "utf-8", errors="replace")
    if y.dtype.kind == "U":
        y = np.char.strip(y)
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


def _check_finite(x: np.ndarray, what: str, *, table: bool, where=None) -> None:
    """DataError naming the count and the first position of NaN/Inf values, if any."""
    if x.dtype.kind != "f":
        return
    bad = ~np.isfinite(x)
    count = int(bad.sum())
    if not count:
        return
    first = np.unravel_index(int(np.flatnonzero(bad.reshape(-1))[0]), x.shape)
    if where is not None:
        pos = where(int(first[0]), int(first[1]))
    elif table:
        pos = f"row {int(first[0])}, column {int(first[1])} (0-based)"
    else:
        pos = f"sample {int(first[0])}, index {tuple(int(i) for i in first)} (0-based)"
    n_nan = int(np.isnan(x).sum())
    fix = ("remove those rows or fill the values (e.g. with the column's mean)" if table
           else "remove those images or replace the values")
    raise DataError(
        f"{what}: {count} non-finite value(s) ({n_nan} NaN, {count - n_nan} Inf), first at {pos}; "
        f"{fix} before loading"
    )


def _preview(items, n: int = 10) -> str:
    items = list(items)
    text = ", ".join(repr(i) if isinstance(i, str) else str(i) for i in items[:n])
    return text + (f", ... ({len(items)} in all)" if len(items) > n else "")
