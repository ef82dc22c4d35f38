"""The ``Dataset``: train / val / test samples (float32 tensors, or stores that gather float32 batches), with the
config that rebuilt them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .config import DataConfig
from .source import _preview
from .storage import Store, as_tensor, take

__all__ = ["Dataset"]

_SPLITS = ("train", "val", "test")


@dataclass(eq=False, repr=False)
class Dataset:
    """One data source, split into train / val / test.

    ``x_*`` hold float32 samples (N, *shape); images lie in [0, 1] with shape (C, H, W), tables are
    standardized with ``mean`` / ``std`` of the train split and have shape (D,). Each is a float32 tensor,
    or a :class:`~aekit.datasets.storage.Store` that holds the samples compactly (8-bit images as uint8,
    a memory-mapped .npy file as its rows) and returns float32 tensors: ``x[idx]`` gathers a batch, and
    ``split(name)`` (or ``x.materialize()``) gives the whole split's tensor. ``y_*`` are int64
    (N,) class indices 0..num_classes-1, or None for unlabeled data; ``class_names[k]`` is the
    original label value of class k as a string. ``spec`` is the :class:`DataConfig` that rebuilds
    exactly these tensors with ``datasets.load(spec)`` (absolute paths, the table statistics, the
    normal class); for a dataset made by ``from_arrays`` its ``name_or_path`` is None.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    x_train: torch.Tensor | Store
    x_val: torch.Tensor | Store
    x_test: torch.Tensor | Store
    y_train: torch.Tensor | None
    y_val: torch.Tensor | None
    y_test: torch.Tensor | None
    num_classes: int
    class_names: list[str] | None
    feature_names: list[str] | None
    mean: torch.Tensor | None
    std: torch.Tensor | None
    spec: DataConfig
    fixed_test: bool = False  # the source has its own test set (fashion-mnist, mnist): test_fraction does not apply

    @property
    def dim(self) -> int:
        """Number of values per sample: prod(shape)."""
        return math.prod(self.shape)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x, y) of the split ``"train"``, ``"val"`` or ``"test"``; y is None when unlabeled.

        x is the split's float32 tensor: a store is materialized (a DataError when it would exceed the memory
        budget; evaluate on a smaller part, e.g. ``limit``). For batches of a large split, index
        ``x_train`` / ``x_val`` / ``x_test`` instead."""
        if name not in _SPLITS:
            raise ConfigError(f"split: unknown split {name!r}; valid splits are: {', '.join(_SPLITS)}")
        return as_tensor(getattr(self, f"x_{name}")), getattr(self, f"y_{name}")

    @property
    def resident_bytes(self) -> int:
        """Bytes the samples and labels take in memory (a memory-mapped file counts only its row index)."""
        total = 0
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Store):
                total += v.resident_bytes
            elif isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
        return total

    def to_user_units(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the standardization of a table: x * std + mean, x of shape (..., D). Images: x.

        Computed in float64 and returned in x's dtype, unless that would overflow: a column whose values lie
        near float32's limit (say +-3e38) is returned in float64 rather than as inf."""
        if self.kind != "table" or self.mean is None or self.std is None:
            return x
        std, mean = self.std.to(device=x.device), self.mean.to(device=x.device)
        if x.dtype == torch.float64 or not x.is_floating_point():
            return x * std.to(x.dtype) + mean.to(x.dtype)
        wide = x.double() * std.double() + mean.double()
        narrow = wide.to(x.dtype)
        return narrow if bool(torch.isfinite(narrow).all()) or not bool(torch.isfinite(wide).all()) else wide

    def to(self, device) -> Dataset:
        """A copy whose tensors are all on ``device``; stores gather onto ``device`` (8-bit images move there
        as uint8, a memory-mapped file stays on the host)."""
        moved = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (torch.Tensor, Store)):
                moved[f.name] = v.to(device)
        return dataclasses.replace(self, **moved)

    def class_index(self, cls: int | str, what: str = "class") -> int:
        """The index of class ``cls``: the one place class names are looked up (``--normal-class``, ``--label``,
        ``normal_class=`` of the Python API alike).

        Parameters
        ----------
        cls : int or str
            A class index 0..num_classes-1, or a class name: its exact spelling first, then an index written as
            text ("3"), then the name in any case ("sneaker" for "Sneaker", when only one class matches).
        what : str, default="class"
            What ``cls`` is, for the message of the error.

        Returns
        -------
        int
            The class index.

        Raises
        ------
        DataError
            ``cls`` names no class of this dataset (the message lists the valid indices and names).
        """
        names = self.class_names or []
        if isinstance(cls, str):
            folded = [n for n in names if n.casefold() == cls.strip().casefold()]
            if cls in names:
                return names.index(cls)
            if cls.strip().isdigit() and int(cls) < self.num_classes:
                return int(cls)
            if len(folded) == 1:
                return names.index(folded[0])
        elif isinstance(cls, (int, np.integer)) and not isinstance(cls, bool) and 0 <= int(cls) < self.num_classes:
            return int(cls)
        raise DataError(
            f"{self.name}: {what} {cls!r} is not a class of this dataset; use an index "
            f"0..{max(self.num_classes - 1, 0)}"
            + (f" or one of the class names (any case): {_preview(names)}" if names else "")
        )

    def subset_class(self, normal_class: int | str) -> Dataset:
        """Keep only samples of one class in train and val; test keeps every class.

        This is the one-class (anomaly detection) setting: train on ``normal_class``, test on all.
        ``normal_class`` is a class index or a class name. Labels keep their original indices.
        ``spec.normal_class`` records the class index, so ``load(spec)`` rebuilds this subset.
        """
        if self.y_train is None or self.class_names is None:
            raise DataError(
                f"{self.name}: subset_class({normal_class!r}) needs labels, but this dataset has none; "
                "give a label column (--label-column) for CSV files, a 'y' array in .npz files, "
                "or class subfolders in an image folder"
            )
        k = self.class_index(normal_class, "normal class")
        keep_train = self.y_train == k
        if not bool(keep_train.any()):
            raise DataError(
                f"{self.name}: class {k} ({self.class_names[k]!r}) has no samples in the train split; "
                "choose another normal class, or use more data (raise --limit)"
            )
        keep_val = self.y_val == k
        return dataclasses.replace(
            self,
            x_train=take(self.x_train, keep_train), y_train=self.y_train[keep_train],
            x_val=take(self.x_val, keep_val), y_val=self.y_val[keep_val],
            spec=dataclasses.replace(self.spec, normal_class=k),
        )

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, kind={self.kind!r}, shape={self.shape}, "
            f"train={len(self.x_train)}, val={len(self.x_val)}, test={len(self.x_test)}, "
            f"num_classes={self.num_classes})"
        )
