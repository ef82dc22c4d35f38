"""``DataConfig``: the options of ``datasets.load`` as a frozen config (JSON, CLI, ``Dataset.spec``).

``validate`` holds the option checks of ``load``; the checks that need the data (``stats`` against
the number of features, options that a source does not use) stay with the sources.
"""

from __future__ import annotations

import collections
import math
import os
from dataclasses import dataclass

import numpy as np

from ..config import ConfigBase, check_seed, opt
from ..errors import ConfigError

__all__ = ["DataConfig"]


@dataclass(frozen=True)
class DataConfig(ConfigBase):
    """Which data to load and how to split it: the keyword arguments of ``datasets.load``.

    ``Dataset.spec`` is the DataConfig that rebuilds its tensors exactly: ``load(ds.spec)``.
    """

    name_or_path: str | None = opt(
        "digits", "built-in dataset (digits, fashion-mnist, mnist) or path to a .npy/.npz/.csv/.tsv/.txt file "
        "or an image folder (None only in the spec of a dataset made from in-memory arrays)", flag="dataset")
    data_dir: str | None = opt(None, "folder of the IDX files (fashion-mnist, mnist)")
    label_column: str | None = opt(None, "CSV/TSV: the column of class labels")
    features: tuple[str, ...] | None = opt(None, "CSV/TSV: the feature columns (default: every column but the label)")
    val_fraction: float = opt(0.1, "fraction of the samples in the validation split")
    test_fraction: float = opt(0.2, "fraction of the samples in the test split (not for fashion-mnist/mnist)")
    seed: int = opt(0, "seed of the split permutation", flag="split-seed")
    limit: int | None = opt(None, "keep the first LIMIT samples of each source split after shuffling")
    stats: dict | None = opt(
        None, "table standardization statistics {'mean': [...], 'std': [...]}; set from the training split",
        cli=False)
    normal_class: int | str | None = opt(
        None, "anomaly detection: the normal class, an index or a class name in any case; one-class training keeps "
              "only its examples in train and val")
    shuffle: bool = opt(True, "permute the samples (with the split seed) before splitting; --no-shuffle keeps the "
                              "source's order: the splits are consecutive blocks (scoring new data row by row)")

    def validate(self) -> None:
        val_fraction, test_fraction = _check_fractions(self.val_fraction, self.test_fraction)
        seed = check_seed(_check_int("seed", self.seed, minimum=None), "seed")
        limit = None if self.limit is None else _check_int("limit", self.limit, minimum=1)
        features = _check_features(self.features)
        if self.label_column is not None and not isinstance(self.label_column, str):
            raise ConfigError(f"label_column: expected a column name (a string), got {self.label_column!r}")
        name = None if self.name_or_path is None else _check_name(self.name_or_path)
        data_dir = self.data_dir
        if isinstance(data_dir, os.PathLike):
            data_dir = os.fspath(data_dir)
        normalized = {
            "name_or_path": name, "data_dir": data_dir, "features": None if features is None else tuple(features),
            "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed, "limit": limit,
        }
        for k, v in normalized.items():  # resolved once, so the saved config holds plain JSON types
            object.__setattr__(self, k, v)


def _check_name(name_or_path) -> str:
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ConfigError(f"dataset: expected a built-in name or a path, got {name_or_path!r}")
    return name_or_path


def _check_fractions(val_fraction, test_fraction) -> tuple[float, float]:
    out = []
    for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                or not math.isfinite(float(v)) or not 0.0 <= float(v) < 1.0:
            raise ConfigError(f"{name}: expected a number in [0, 1) (a fraction of the samples), got {v!r}")
        out.append(float(v))
    if out[0] + out[1] >= 1.0:
        raise ConfigError(
            f"val_fraction + test_fraction must be below 1 so that samples are left for training; "
            f"got {out[0]} + {out[1]}; lower one of them"
        )
    return out[0], out[1]


def _check_int(name, v, minimum):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ConfigError(f"{name}: expected an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {v}")
    return int(v)


def _check_features(features):
    if features is None:
        return None
    if isinstance(features, str) or not isinstance(features, (list, tuple)) \
            or not all(isinstance(f, str) for f in features):
        raise ConfigError(
            f"features: expected a list of column names such as ['a', 'b'], got {features!r}"
        )
    if not features:
        raise ConfigError("features: the list of feature columns is empty; name at least one column, "
                          "or leave features unset to use every column but the label")
    counts = collections.Counter(features)  # linear: a table may have 100k columns
    dups = sorted(f for f, k in counts.items() if k > 1)
    if dups:
        raise ConfigError(f"features: column(s) listed twice: {', '.join(dups)}; list each column once")
    return list(features)

