"""Splitting, conversion, standardization: a ``_Source`` of numpy arrays becomes a ``Dataset``."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .config import DataConfig
from .dataset import Dataset
from .source import CHUNK_BYTES, _clip, _Source
from .storage import ByteStore, MappedStore, take_rows

__all__: list[str] = []


def _round(n: int, fraction: float) -> int:
    return int(math.floor(n * fraction + 0.5 + 1e-9))


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    n_val, n_test = _round(n, val_fraction), _round(n, test_fraction)
    return n - n_val - n_test, n_val, n_test


def _sizes_ok(n, val_fraction, test_fraction) -> bool:
    n_train, n_val, n_test = _split_sizes(n, val_fraction, test_fraction)
    return n_train >= 1 and (n_val >= 1 or val_fraction == 0) and (n_test >= 1 or test_fraction == 0)


def _checked_sizes(n: int, val_fraction: float, test_fraction: float, what: str, limit) -> tuple[int, int, int]:
    if _sizes_ok(n, val_fraction, test_fraction):
        return _split_sizes(n, val_fraction, test_fraction)
    n_train, n_val, n_test = _split_sizes(n, val_fraction, test_fraction)
    empty = [s for s, k, f in (("train", n_train, 1), ("val", n_val, val_fraction), ("test", n_test, test_fraction))
             if k < 1 and f > 0]
    need = max([1, *(int(0.5 / f) - 1 for f in (val_fraction, test_fraction) if f > 0)])
    while not _sizes_ok(need, val_fraction, test_fraction) and need < 10**7:
        need += 1
    fix = "raise --limit" if limit is not None and limit < need else "use more data"
    fractions = [f"{k}={v}" for k, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)) if v > 0]
    raise DataError(
        f"{what}: {n} sample(s) are too few for {' and '.join(fractions) or 'training'}: "
        f"the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} would be empty; at least {need} "
        f"samples are needed ({fix}), or set the fraction of an unwanted split to 0"
    )


def _assemble(src: _Source, spec: DataConfig, fit_class: int | None = None) -> Dataset:
    """Split ``src`` with the options of ``spec``; the Dataset's spec is ``spec`` with the table statistics.

    ``fit_class``: fit a table's statistics on the training rows of this class only (one-class training:
    the rows the model trains on), when it has any.

    What each split holds: 8-bit images a ``ByteStore`` (uint8), a memory-mapped source a ``MappedStore``
    (the rows of the split, nothing copied), everything else a float32 tensor.
    """
    val_fraction, test_fraction, limit, stats = spec.val_fraction, spec.test_fraction, spec.limit, spec.stats
    g = torch.Generator().manual_seed(spec.seed)
    perm = torch.randperm(len(src.x), generator=g).numpy() if spec.shuffle else np.arange(len(src.x))
    if limit is not None:
        perm = perm[:limit]
    if src.x_test is None:
        n_train, n_val, _ = _checked_sizes(len(perm), val_fraction, test_fraction, src.what, limit)
        idx = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}
        source = dict.fromkeys(idx, src.x)
        ys = {k: (None if src.y is None else src.y[i]) for k, i in idx.items()}
    else:
        # fixed test split: validation is the last val_fraction of the permuted training set
        n_train, n_val, _ = _checked_sizes(len(perm), val_fraction, 0.0, src.what, limit)
        if limit is not None:
            test_idx = (torch.randperm(len(src.x_test), generator=g).numpy() if spec.shuffle
                        else np.arange(len(src.x_test)))[:limit]
        else:
            test_idx = np.arange(len(src.x_test))
        idx = {"train": perm[:n_train], "val": perm[n_train:], "test": test_idx}
        source = {"train": src.x, "val": src.x, "test": src.x_test}
        ys = {"train": src.y[perm[:n_train]], "val": src.y[perm[n_train:]], "test": src.y_test[test_idx]}
    mapping = src.mapping

    def what(k):
        return f"{src.what} ({k} split)"

    mean = std = spec_stats = None
    if src.kind == "image":
        if mapping is not None:
            tensors = {k: MappedStore(mapping, source[k], i, what(k)) for k, i in idx.items()}
        elif src.x.dtype == np.uint8:
            tensors = {k: ByteStore(torch.from_numpy(np.ascontiguousarray(source[k][i])), what(k))
                       for k, i in idx.items()}
        else:
            tensors = {k: _image_tensor(source[k][i]) for k, i in idx.items()}
    else:
        d = src.x.shape[1]
        if stats is None:
            rows = idx["train"]
            if fit_class is not None and (ys["train"] == fit_class).any():
                rows = rows[ys["train"] == fit_class]
            m64, s64 = _column_stats(src.x, rows, mapping)
            mean = torch.from_numpy(m64.astype(np.float32))
            std32 = s64.astype(np.float32)
            # constant columns: float64 rounding leaves a tiny nonzero std; treat it as zero
            std32[(s64 <= 1e-12 * np.abs(m64)) | (std32 == 0) | ~np.isfinite(std32)] = 1.0
            std = torch.from_numpy(std32)
        else:
            mean, std = _check_stats(stats, d, src.what)
        m, s = mean.double().numpy(), std.double().numpy()
        if mapping is not None:
            for k, i in idx.items():
                _check_standardized_extremes(src.x, i, m, s, k, src, std, stats is not None, mapping)
            tensors = {k: MappedStore(mapping, src.x, i, what(k), mean=m, std=s) for k, i in idx.items()}
        else:
            tensors = {k: _standardized(source[k], i, m, s) for k, i in idx.items()}
            for k, t in tensors.items():
                _check_standardized(t, k, src, std, given=stats is not None)
        spec_stats = {"mean": mean.tolist(), "std": std.tolist()}
    labels = {k: (None if v is None else torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)))
              for k, v in ys.items()}
    shape = tuple(int(s) for s in src.x.shape[1:])
    return Dataset(
        name=src.name, kind=src.kind, shape=shape,
        x_train=tensors["train"], x_val=tensors["val"], x_test=tensors["test"],
        y_train=labels["train"], y_val=labels["val"], y_test=labels["test"],
        num_classes=0 if src.class_names is None else len(src.class_names),
        class_names=None if src.class_names is None else list(src.class_names),
        feature_names=None if src.feature_names is None else list(src.feature_names),
        mean=mean, std=std, spec=dataclasses.replace(spec, stats=spec_stats), fixed_test=src.x_test is not None,
    )


def _standardized(x: np.ndarray, rows: np.ndarray, m: np.ndarray, s: np.ndarray) -> torch.Tensor:
    """float32 ``(x[rows] - m) / s`` (computed in float64, as numpy would), a chunk of rows at a time: the peak
    is the float32 result, not float64 copies of the split. Overflows are reported by the caller."""
    out = np.empty((len(rows), x.shape[1]), np.float32)
    step = max(1, CHUNK_BYTES // (8 * max(1, x.shape[1])))
    with np.errstate(over="ignore"):
        for a in range(0, len(rows), step):
            out[a:a + step] = (x[rows[a:a + step]] - m) / s
    return torch.from_numpy(out)


def _column_stats(x: np.ndarray, rows: np.ndarray, mapping=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std (float64, (D,)) of the rows ``rows`` of the table x (N, D), in that order.

    Up to ``CHUNK_BYTES`` of float64 rows: numpy's ``mean`` / ``std`` of those rows. Beyond: the same
    two-pass formula over chunks of rows (the chunk sums added in order), so that a memory-mapped table and
    the same table in memory give the same bits either way.
    """
    step = max(1, CHUNK_BYTES // (8 * x.shape[1]))
    if len(rows) <= step:
        t = take_rows(x, rows, mapping, out=np.empty((len(rows), x.shape[1]), np.float64))
        return t.mean(axis=0), t.std(axis=0)
    buf = np.empty((step, x.shape[1]), np.float64)
    total = np.zeros(x.shape[1], np.float64)
    for a in range(0, len(rows), step):
        r = rows[a:a + step]
        total += take_rows(x, r, mapping, out=buf[:len(r)]).sum(axis=0)
    mean = total / len(rows)
    sq = np.zeros(x.shape[1], np.float64)
    for a in range(0, len(rows), step):
        r = rows[a:a + step]
        sq += ((take_rows(x, r, mapping, out=buf[:len(r)]) - mean) ** 2).sum(axis=0)
    return mean, np.sqrt(sq / len(rows))


def _check_standardized_extremes(x, rows, m, s, split: str, src: _Source, std, given: bool, mapping) -> None:
    """``_check_standardized`` for a memory-mapped table, from each column's extremes over ``rows`` (the
    standardization is monotonic in each column): the first column whose standardized extremes overflow."""
    if not len(rows):
        return
    lo = np.full(x.shape[1], np.inf)
    hi = np.full(x.shape[1], -np.inf)
    step = max(1, CHUNK_BYTES // (8 * x.shape[1]))
    buf = np.empty((step, x.shape[1]), np.float64)
    for a in range(0, len(rows), step):
        r = np.sort(rows[a:a + step])
        c = take_rows(x, r, mapping, out=buf[:len(r)])
        lo, hi = np.minimum(lo, c.min(axis=0)), np.maximum(hi, c.max(axis=0))
    with np.errstate(over="ignore"):
        ext = np.stack([((lo - m) / s).astype(np.float32), ((hi - m) / s).astype(np.float32)])
    _check_standardized(torch.from_numpy(ext), split, src, std, given)


def _check_standardized(t: torch.Tensor, split: str, src: _Source, std: torch.Tensor, given: bool) -> None:
    """DataError when standardized values (N, D) overflow float32: a std tiny next to a column's values."""
    bad = ~torch.isfinite(t)
    if not bad.any():
        return
    c = int(bad.nonzero()[0, 1])
    column = repr(_clip(src.feature_names[c])) if src.feature_names else f"{c} (0-based)"
    fix = ("pass stats whose std fits the data" if given
           else "rescale the column (e.g. multiply it by a constant) or drop it")
    raise DataError(
        f"{src.what}: standardizing gives values beyond float32's range in the {split} split, first in column "
        f"{column}: its std ({float(std[c]):.3g}) is tiny next to its values; {fix}"
    )


def _image_tensor(a: np.ndarray) -> torch.Tensor:
    """(N, C, H, W) uint8 or float in [0, 1] -> contiguous float32 in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if t.dtype == torch.uint8:
        return t.to(torch.float32).div_(255.0)
    return t.to(torch.float32)


def _check_stats(stats, d: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(stats, dict) or set(stats) != {"mean", "std"}:
        got = sorted(stats) if isinstance(stats, dict) else type(stats).__name__
        raise ConfigError(f"stats: expected {{'mean': [...], 'std': [...]}} with {d} values each, got {got}")
    out = []
    for key in ("mean", "std"):
        try:
            v = np.asarray(stats[key], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"stats: {key!r} must be a list of {d} numbers ({e})") from e
        if v.shape != (d,):
            raise ConfigError(f"stats: {key!r} has {v.size} values but {what} has {d} features; use the "
                              "statistics of a dataset with the same columns")
        if not np.isfinite(v).all() or (key == "std" and (v <= 0).any()):
            raise ConfigError(f"stats: {key!r} must hold finite numbers{' > 0' if key == 'std' else ''}")
        out.append(torch.from_numpy(v.astype(np.float32)))
    return out[0], out[1]


def _one_class(ds: Dataset, src: _Source, spec: DataConfig, normal_class) -> Dataset:
    """``ds`` restricted to ``normal_class`` (``Dataset.subset_class``); a table whose statistics were fitted
    here is standardized again with those of the normal class's training rows, the rows the model trains on
    (fitted on every class, anomalies included, they would skew the scale: the breast-cancer table's mean
    radius is 14.02 over all rows and 12.09 over the benign ones)."""
    sub = ds.subset_class(normal_class)
    if ds.kind != "table" or spec.stats is not None:
        return sub
    k = sub.spec.normal_class
    return _assemble(src, spec, fit_class=k).subset_class(k)
