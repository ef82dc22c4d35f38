"""Datasets: every source becomes one ``Dataset`` of float32 tensors in memory.

Sources (``load(name_or_path, ...)``):

- ``"digits"``: scikit-learn's bundled 8x8 digits (1797 images, offline). Pixels 0..16 are divided
  by 16, so values lie in [0, 1]; shape (1, 8, 8); 10 classes.
- ``"fashion-mnist"`` / ``"mnist"``: IDX files (gzipped or not) read from ``data_dir``; for
  fashion-mnist the default folder is ``FASHION_MNIST_DIR`` (Debian's ``dataset-fashion-mnist``).
  Pixels are uint8 / 255; shape (1, 28, 28); 10 classes. The official 60k/10k train/test split is
  kept; the validation split is the *last* ``val_fraction`` of a seeded permutation of the official
  training set, and ``test_fraction`` does not apply.
- a ``.npy`` file (one array) or ``.npz`` file (``x`` and optional ``y``): a 2-D array (N, D) is a
  table; (N, H, W), (N, H, W, C) with C in {1, 3, 4} or (N, C, H, W) with C in {1, 3} are images
  (when both 4-D layouts fit, channels-first wins). Image arrays are uint8 (divided by 255) or
  numbers already in [0, 1].
- a ``.csv`` / ``.tsv`` file (``.txt``: delimiter sniffed) with a header row: a table.
- a folder of ``.png`` / ``.jpg`` / ``.jpeg`` images: one class per subfolder when there are
  subfolders with images (labels are the subfolder names), else unlabeled. Hidden files and folders
  (names starting with ``.``) are skipped.

Built-in names win over paths: to load a folder called ``digits`` write ``./digits``.

Splits. Sources without a fixed test split are split with one seeded permutation
(``torch.Generator().manual_seed(seed)``): after ``limit`` keeps the first samples of the permutation,
the first part is train, then ``round(n * val_fraction)`` samples of validation, then
``round(n * test_fraction)`` samples of test (round half up). A fraction of 0 gives an empty split; a
positive fraction that would give an empty split is an error that says how many samples are needed.

Tables are standardized with the mean and std (population std; zero std replaced by 1) of the train
split; ``stats={"mean": [...], "std": [...]}`` forces given statistics. ``Dataset.spec`` holds the
keyword arguments of ``load`` that rebuild the same tensors (absolute paths, and for tables the
statistics), so a trained run can re-read its data exactly. Loading never writes to the user's files.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import gzip
import importlib.util
import io
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, DataError

__all__ = ["Dataset", "load", "available", "BUILTIN_NAMES", "FASHION_MNIST_DIR"]

BUILTIN_NAMES = ("digits", "fashion-mnist", "mnist")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t", ".txt": None}  # None: sniffed
ACCEPTED = ".npy, .npz, .csv, .tsv or .txt file, or a folder of .png/.jpg/.jpeg images"

_IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}
_GRAY_MODES = {"1", "L"}
_COLOR_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "LA", "CMYK", "YCbCr", "LAB", "HSV"}
_SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------------
# The Dataset


@dataclass(eq=False, repr=False)
class Dataset:
    """Tensors in memory for one data source, split into train / val / test.

    ``x_*`` are float32 (N, *shape); images lie in [0, 1] with shape (C, H, W), tables are
    standardized with ``mean`` / ``std`` of the train split and have shape (D,). ``y_*`` are int64
    (N,) class indices 0..num_classes-1, or None for unlabeled data; ``class_names[k]`` is the
    original label value of class k as a string.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    x_train: torch.Tensor
    x_val: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor | None
    y_val: torch.Tensor | None
    y_test: torch.Tensor | None
    num_classes: int
    class_names: list[str] | None
    feature_names: list[str] | None
    mean: torch.Tensor | None
    std: torch.Tensor | None
    spec: dict

    @property
    def dim(self) -> int:
        """Number of values per sample: prod(shape)."""
        return math.prod(self.shape)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x, y) of the split ``"train"``, ``"val"`` or ``"test"``; y is None when unlabeled."""
        if name not in _SPLITS:
            raise ConfigError(f"split: unknown split {name!r}; valid splits are: {', '.join(_SPLITS)}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def to_user_units(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the standardization of a table: x * std + mean, x of shape (..., D). Images: x."""
        if self.kind != "table" or self.mean is None or self.std is None:
            return x
        return x * self.std.to(device=x.device, dtype=x.dtype) + self.mean.to(device=x.device, dtype=x.dtype)

    def to(self, device) -> Dataset:
        """A copy whose tensors are all on ``device``."""
        moved = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                moved[f.name] = v.to(device)
        return dataclasses.replace(self, **moved)

    def subset_class(self, normal_class: int | str) -> Dataset:
        """Keep only samples of one class in train and val; test keeps every class.

        This is the one-class (anomaly detection) setting: train on ``normal_class``, test on all.
        ``normal_class`` is a class index or a class name. Labels keep their original indices.
        ``spec`` records the class index, so ``load(**spec)`` rebuilds this subset.
        """
        if self.y_train is None or self.class_names is None:
            raise DataError(
                f"{self.name}: subset_class({normal_class!r}) needs labels, but this dataset has none; "
                "give a label column (--label-column) for CSV files, a 'y' array in .npz files, "
                "or class subfolders in an image folder"
            )
        k = None
        if isinstance(normal_class, (int, np.integer)) and not isinstance(normal_class, bool):
            if 0 <= int(normal_class) < self.num_classes:
                k = int(normal_class)
        elif isinstance(normal_class, str):
            if normal_class in self.class_names:
                k = self.class_names.index(normal_class)
            elif normal_class.lstrip("-").isdigit() and 0 <= int(normal_class) < self.num_classes:
                k = int(normal_class)
        if k is None:
            raise DataError(
                f"{self.name}: normal class {normal_class!r} is not a class of this dataset; use an index "
                f"0..{self.num_classes - 1} or one of the class names: {_preview(self.class_names)}"
            )
        keep_train = self.y_train == k
        if not bool(keep_train.any()):
            raise DataError(
                f"{self.name}: class {k} ({self.class_names[k]!r}) has no samples in the train split; "
                "choose another normal class, or use more data (raise --limit)"
            )
        keep_val = self.y_val == k
        return dataclasses.replace(
            self,
            x_train=self.x_train[keep_train], y_train=self.y_train[keep_train],
            x_val=self.x_val[keep_val], y_val=self.y_val[keep_val],
            spec={**self.spec, "normal_class": k},
        )

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, kind={self.kind!r}, shape={self.shape}, "
            f"train={len(self.x_train)}, val={len(self.x_val)}, test={len(self.x_test)}, "
            f"num_classes={self.num_classes})"
        )


# --------------------------------------------------------------------------------------------------
# Public entry points


def load(
    name_or_path: str = "digits",
    *,
    data_dir: str | None = None,
    label_column: str | None = None,
    features: list[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
    stats: dict | None = None,
    normal_class: int | str | None = None,
) -> Dataset:
    """Load a built-in dataset or a file/folder into a :class:`Dataset` (see the module docstring).

    ``data_dir``: folder of IDX files (fashion-mnist, mnist). ``label_column`` / ``features``:
    CSV/TSV columns. ``val_fraction`` / ``test_fraction``: split sizes. ``seed``: the split
    permutation. ``limit``: keep the first ``limit`` samples of each source split after shuffling.
    ``stats``: ``{"mean": [...], "std": [...]}`` to standardize a table with given statistics.
    ``normal_class``: keep only this class in train and val (one-class training; see subset_class).
    Raises DataError for unusable data and ConfigError for bad options.
    """
    val_fraction, test_fraction = _check_fractions(val_fraction, test_fraction)
    seed = _check_int("seed", seed, minimum=None)
    limit = None if limit is None else _check_int("limit", limit, minimum=1)
    features = _check_features(features)
    if label_column is not None and not isinstance(label_column, str):
        raise ConfigError(f"label_column: expected a column name (a string), got {label_column!r}")
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ConfigError(f"dataset: expected a built-in name or a path, got {name_or_path!r}")

    key = name_or_path.strip().lower().replace("_", "-")
    if key in BUILTIN_NAMES:
        _only_for(key, label_column=label_column, features=features)
        if key == "digits":
            _only_for(key, data_dir=data_dir)
            src = _load_digits()
        else:
            data_dir = None if data_dir is None else os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
            src = _load_idx_dataset(key, data_dir)
        spec_name = key
    else:
        path = os.path.abspath(os.path.expanduser(name_or_path))
        src = _load_path(name_or_path, path, label_column=label_column, features=features, data_dir=data_dir)
        spec_name = path

    spec = {
        "name_or_path": spec_name,
        "data_dir": data_dir,
        "label_column": label_column,
        "features": None if features is None else list(features),
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "limit": limit,
        "stats": None,
    }
    ds = _assemble(src, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                   limit=limit, stats=stats, spec=spec)
    return ds if normal_class is None else ds.subset_class(normal_class)


def available() -> list[dict]:
    """One dict per built-in source: {"name", "kind", "status": "available"|"missing", "detail"}.

    Cheap: checks that files exist, never reads them. Paths (.npy/.npz/.csv/.tsv/.txt files and
    image folders) are always accepted by ``load`` and are not listed.
    """
    out = []
    if importlib.util.find_spec("sklearn") is not None:  # without importing it (slow)
        out.append({"name": "digits", "kind": "image", "status": "available",
                    "detail": "1797 8x8 grayscale digits, 10 classes, bundled with scikit-learn"})
    else:  # pragma: no cover - scikit-learn is a dependency
        out.append({"name": "digits", "kind": "image", "status": "missing",
                    "detail": "needs scikit-learn: pip install scikit-learn"})
    found, missing = _find_idx_files(Path(FASHION_MNIST_DIR))
    if not missing:
        out.append({"name": "fashion-mnist", "kind": "image", "status": "available",
                    "detail": f"60000 train + 10000 test 28x28 images, 10 classes, in {FASHION_MNIST_DIR}"})
    else:
        out.append({"name": "fashion-mnist", "kind": "image", "status": "missing",
                    "detail": f"IDX files not found in {FASHION_MNIST_DIR}: install them with "
                              "`sudo apt-get install dataset-fashion-mnist`, or pass --data-dir FOLDER"})
    out.append({"name": "mnist", "kind": "image", "status": "missing",
                "detail": "no system copy: download the four MNIST IDX files into a folder and pass "
                          "--data-dir FOLDER"})
    return out


# --------------------------------------------------------------------------------------------------
# Option checks


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
    dups = sorted({f for f in features if list(features).count(f) > 1})
    if dups:
        raise ConfigError(f"features: column(s) listed twice: {', '.join(dups)}; list each column once")
    return list(features)


def _only_for(what: str, **options):
    """ConfigError for options that the source ``what`` does not use (silently ignoring would mislead)."""
    uses = {"label_column": "CSV/TSV files", "features": "CSV/TSV files", "data_dir": "fashion-mnist and mnist"}
    for k, v in options.items():
        if v is not None:
            raise ConfigError(
                f"{k} does not apply to {what}: it is only used for {uses[k]}; remove the option"
            )


# --------------------------------------------------------------------------------------------------
# Sources: each returns a _Source of numpy arrays; _assemble splits and converts


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


def _load_digits() -> _Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (np.asarray(d.images, dtype=np.float32) / np.float32(16.0))[:, None]  # (1797, 1, 8, 8)
    y = np.asarray(d.target, dtype=np.int64)
    return _Source(name="digits", what="digits", kind="image", x=x, y=y,
                   class_names=[str(k) for k in range(10)])


def _idx_names(split: str, kind: str) -> list[str]:
    n = 3 if kind == "images" else 1
    stems = [f"{split}-{kind}-idx{n}-ubyte", f"{split}-{kind}.idx{n}-ubyte"]
    return [s + gz for s in stems for gz in ("", ".gz")]


def _find_idx_files(folder: Path) -> tuple[dict, list[str]]:
    """Map (split, kind) -> file for the four IDX files; and the canonical names of those missing."""
    found, missing = {}, []
    for split in ("train", "t10k"):
        for kind in ("images", "labels"):
            names = _idx_names(split, kind)
            hit = next((folder / n for n in names if (folder / n).is_file()), None)
            if hit is None:
                missing.append(names[0] + "[.gz]")
            else:
                found[(split, kind)] = hit
    return found, missing


def _load_idx_dataset(name: str, data_dir: str | None) -> _Source:
    if data_dir is None:
        if name == "mnist":
            raise DataError(
                "mnist: there is no system copy of MNIST on this machine; download the four IDX files "
                "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
                "t10k-labels-idx1-ubyte.gz) into a folder and pass it with --data-dir FOLDER "
                "(data_dir= in Python)"
            )
        data_dir = FASHION_MNIST_DIR
    folder = Path(data_dir)
    install = (" Install them with `sudo apt-get install dataset-fashion-mnist` (into "
               f"{FASHION_MNIST_DIR}), or pass --data-dir FOLDER with the files."
               if name == "fashion-mnist" else
               " Download them and pass --data-dir FOLDER (data_dir= in Python).")
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        expected = [_idx_names(s, k)[0] for s in ("train", "t10k") for k in ("images", "labels")]
        raise DataError(f"{name}: data folder {folder} {what}; it must hold the IDX files "
                        f"{', '.join(expected)} (optionally .gz).{install}")
    found, missing = _find_idx_files(folder)
    if missing:
        raise DataError(
            f"{name}: missing IDX file(s) in {folder}: {', '.join(missing)} (names like "
            f"train-images.idx3-ubyte are accepted too).{install}"
        )
    x_tr = _read_idx(found[("train", "images")], "images")
    y_tr = _read_idx(found[("train", "labels")], "labels")
    x_te = _read_idx(found[("t10k", "images")], "images")
    y_te = _read_idx(found[("t10k", "labels")], "labels")
    for xs, ys, split in ((x_tr, y_tr, "train"), (x_te, y_te, "t10k")):
        fx, fy = found[(split, "images")], found[(split, "labels")]
        if len(xs) == 0:
            raise DataError(f"{fx}: the IDX file holds 0 images; download it again")
        if len(ys) != len(xs):
            raise DataError(
                f"{fy}: {len(ys)} labels for {len(xs)} images in {fx.name}; the two files must have the "
                "same count: they are from different datasets or one is damaged; download both again"
            )
        bad = np.flatnonzero(ys > 9)
        if bad.size:
            raise DataError(
                f"{fy}: label {int(ys[bad[0]])} at index {int(bad[0])} ({bad.size} such); {name} labels "
                "are 0..9: the file is damaged or not a label file; download it again"
            )
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(
            f"{name}: train images are {x_tr.shape[1]}x{x_tr.shape[2]} but test images are "
            f"{x_te.shape[1]}x{x_te.shape[2]} ({found[('train', 'images')]}, {found[('t10k', 'images')]}); "
            "the files come from different datasets"
        )
    names = FASHION_MNIST_CLASSES if name == "fashion-mnist" else [str(k) for k in range(10)]
    return _Source(name=name, what=name, kind="image", x=x_tr[:, None], y=y_tr.astype(np.int64),
                   class_names=list(names), x_test=x_te[:, None], y_test=y_te.astype(np.int64))


def _read_idx(path: Path, kind: str) -> np.ndarray:
    """Read one IDX file (gzipped or raw) of unsigned bytes: images (N, H, W) or labels (N,), uint8.

    Checks the magic number, the header and that the data length equals the product of the dims.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e}); check its permissions") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(
                f"{path}: the gzip data is damaged or cut short ({e}); download the file again "
                "(or gunzip a good copy)"
            ) from e
    expected = _IDX_MAGIC[kind]
    if len(raw) < 4:
        raise DataError(f"{path}: only {len(raw)} bytes, too short for an IDX header; the file is truncated, "
                        "download it again")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected:
        other = next((k for k, m in _IDX_MAGIC.items() if m == magic), None)
        hint = (f" It looks like an IDX {other} file: are the images and labels files swapped?"
                if other else " It is not an IDX file of unsigned bytes, or it is damaged; download it again.")
        raise DataError(
            f"{path}: bad magic number 0x{magic:08x} for an IDX {kind} file (expected 0x{expected:08x}).{hint}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: the IDX header is cut short ({len(raw)} bytes, expected {header}); "
                        "the file is truncated, download it again")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    need = math.prod(dims)
    have = len(raw) - header
    if have != need:
        shape = "x".join(map(str, dims))
        what = "the file is truncated" if have < need else "the file has extra bytes at the end"
        raise DataError(
            f"{path}: the header announces {shape} = {need} bytes of data but {have} follow: {what}; "
            "download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=need, offset=header).reshape(dims)


def _load_path(original: str, path: str, *, label_column, features, data_dir) -> _Source:
    p = Path(path)
    if not p.exists():
        suffix = p.suffix.lower()
        looks_like_path = (os.sep in original or "/" in original or original.startswith((".", "~"))
                           or suffix in (".npy", ".npz", *TABLE_DELIMITERS, *IMAGE_SUFFIXES))
        if looks_like_path:
            raise DataError(f"{p}: no such file or folder; check the path (it is read relative to "
                            f"{os.getcwd()})")
        close = difflib.get_close_matches(original.lower(), BUILTIN_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(
            f"unknown dataset {original!r}: it is neither a built-in dataset ({', '.join(BUILTIN_NAMES)}) "
            f"nor an existing file or folder (looked in {os.getcwd()}).{hint} Pass a built-in name or a "
            f"path to a {ACCEPTED}."
        )
    if p.is_dir():
        _only_for(f"image folder {p}", label_column=label_column, features=features, data_dir=data_dir)
        return _load_image_folder(p)
    suffix = p.suffix.lower()
    if suffix in TABLE_DELIMITERS:
        _only_for(f"{p}", data_dir=data_dir)
        return _load_table_file(p, TABLE_DELIMITERS[suffix], label_column, features)
    if suffix in (".npy", ".npz"):
        _only_for(f"{p}", label_column=label_column, features=features, data_dir=data_dir)
        return _load_array_file(p)
    raise DataError(
        f"{p}: unsupported file type {suffix or '(no extension)'!r}; aekit reads a {ACCEPTED}. "
        "Convert the data to one of these (e.g. np.save('data.npy', array))"
    )


# --- arrays -----------------------------------------------------------------------------------------


def _load_array_file(p: Path) -> _Source:
    y = None
    is_npy = p.suffix.lower() == ".npy"
    try:
        with open(p, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DataError(f"{p}: cannot read the file ({e.strerror or e}); check its permissions") from e
    magic = b"\x93NUMPY" if is_npy else b"PK"
    if not head.startswith(magic):
        raise DataError(
            f"{p}: not a {p.suffix} file (it does not start with the {'NumPy' if is_npy else 'zip'} magic "
            f"bytes); write it with {'np.save' if is_npy else 'np.savez'}, or give the file its real extension"
        )
    try:
        if is_npy:
            x = np.load(p, allow_pickle=False)
            xkey = None
        else:
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.keys())
                if "x" in keys:
                    xkey = "x"
                elif len(keys) == 1:
                    xkey = keys[0]
                else:
                    raise DataError(
                        f"{p}: expected an array named 'x' (and optionally 'y' for labels), found "
                        f"{'no arrays' if not keys else 'keys ' + ', '.join(repr(k) for k in keys)}; "
                        "save it with np.savez(path, x=features, y=labels)"
                    )
                x = z[xkey]
                if "y" in keys and xkey == "x":
                    y = z["y"]
    except DataError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise DataError(
                f"{p}: holds Python objects (pickled data), which aekit does not load for safety; save "
                "numeric arrays (and labels as integers or fixed-width strings: np.asarray(y, dtype=str))"
            ) from e
        raise DataError(f"{p}: not a valid {p.suffix} file ({e}); save it again with numpy") from e
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{p}: not a valid or complete {p.suffix} file ({e}); save it again with numpy") from e

    what = f"{p}" if xkey in (None, "x") else f"{p} (array {xkey!r})"
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what}: expected numbers, got an array of dtype {x.dtype}; convert it to float "
                        "or uint8 first")
    if x.ndim == 0 or len(x) == 0:
        raise DataError(f"{what}: the array has no samples (shape {x.shape}); the dataset is empty")
    if x.ndim == 2:
        if x.shape[1] == 0:
            raise DataError(f"{what}: the table has 0 columns (shape {x.shape}); the dataset is empty")
        table = x.astype(np.float64)
        _check_finite(table, what, table=True)
        src = _Source(name=p.name, what=what, kind="table", x=table)
    elif x.ndim in (3, 4):
        src = _Source(name=p.name, what=what, kind="image", x=_image_array(x, what))
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
            raise DataError(f"{p}: labels 'y' have shape {y.shape} but 'x' has {len(x)} samples; expected "
                            f"y of shape ({len(x)},), one class label per sample")
        src.y, src.class_names = _encode_labels(y, f"{p} (array 'y')")
    return src


def _image_array(x: np.ndarray, what: str) -> np.ndarray:
    """(N, H, W) / (N, H, W, C) / (N, C, H, W) -> (N, C, H, W), uint8 or float32 in [0, 1]."""
    _check_finite(x, what, table=False)  # positions in the user's layout
    if x.ndim == 3:
        x = x[:, None]
    elif x.shape[1] in (1, 3):  # channels first wins when both layouts fit
        pass
    elif x.shape[3] in (1, 3, 4):
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
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
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            f"{what}: image values must lie in [0, 1] but range from {lo:g} to {hi:g}; scale them to "
            "[0, 1] (e.g. divide 8-bit pixels by 255, or save them as uint8), or pass a 2-D (N, D) "
            "array to treat the data as a table (standardized per feature)"
        )
    return x.astype(np.float32)


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


# --- CSV / TSV --------------------------------------------------------------------------------------


def _load_table_file(p: Path, delimiter: str | None, label_column: str | None,
                     features: list[str] | None) -> _Source:
    try:
        with open(p, encoding="utf-8-sig") as f:  # universal newlines: \r\n and \r become \n
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8") from e
    except OSError as e:
        raise DataError(f"{p}: cannot read the file ({e.strerror or e}); check its permissions") from e
    if not text.strip():
        raise DataError(f"{p}: the file is empty; a table needs a header line with column names, then one "
                        "line per sample: check that you passed the right file")
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:65536], delimiters=",\t;|").delimiter
        except csv.Error as e:
            raise DataError(f"{p}: cannot detect the column delimiter (tried , tab ; |); rename the file "
                            "to .csv (comma-separated) or .tsv (tab-separated)") from e
    try:
        header = next(r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r)
    except csv.Error as e:
        raise DataError(f"{p}: not valid delimited text ({e}); check quoting and line endings") from e
    header = [h.strip() for h in header]
    ncol = len(header)
    if all(_is_number(h) for h in header):
        raise DataError(
            f"{p}: the first line ({_preview(header)}) looks like data, but a header line with column names "
            f"is required; add one such as {delimiter.join(f'x{i}' for i in range(min(ncol, 3)))}"
            f"{'...' if ncol > 3 else ''}"
        )
    seen, dups = set(), set()
    for h in header:
        if h and h in seen:
            dups.add(h)
        seen.add(h)
    if dups:
        raise DataError(f"{p}: column name(s) appear more than once in the header: {', '.join(sorted(dups))}; "
                        "rename them so each column has a unique name")
    if label_column is not None and label_column not in header:
        raise DataError(
            f"{p}: label column {label_column!r} not found (--label-column); the columns are: "
            f"{_preview(header, 50)}"
        )
    if features is None:
        chosen = [h for h in header if h != label_column]
        unnamed = [i for i, h in enumerate(header) if not h and h != label_column]
        if unnamed:
            raise DataError(
                f"{p}: column {unnamed[0] + 1} has no name in the header (a saved row index?); name it, or "
                "pick the feature columns with --features"
            )
    else:
        unknown = [f for f in features if f not in header]
        if unknown:
            raise DataError(f"{p}: feature column(s) {', '.join(map(repr, unknown))} not found (--features); "
                            f"the columns are: {_preview(header, 50)}")
        if label_column is not None and label_column in features:
            raise ConfigError(f"features: the label column {label_column!r} is also listed as a feature; "
                              "remove it from --features")
        chosen = list(features)
    if not chosen:
        raise DataError(f"{p}: no feature columns left besides the label column {label_column!r}; the table "
                        "needs at least one feature column")
    index = {h: i for i, h in enumerate(header)}
    cols = [index[c] for c in chosen]
    lab = None if label_column is None else index[label_column]

    parsed = _parse_table_fast(text, delimiter, ncol, cols, lab) if '"' not in text else None
    if parsed is None:  # quoted fields, or something is wrong: the csv module finds and names it
        parsed = _parse_table_slow(p, text, delimiter, header, chosen, cols, lab)
    x, labels = parsed

    def where(r, c):
        return f"line {_line_of(text, delimiter, r)} (data row {r + 1}), column {chosen[c]!r}"

    _check_finite(x, str(p), table=True, where=where)
    src = _Source(name=p.name, what=str(p), kind="table", x=x, feature_names=chosen)
    if labels is not None:
        src.y, src.class_names = _encode_labels(
            labels, f"{p} (label column {label_column!r})",
            where=lambda r: f"line {_line_of(text, delimiter, r)} (data row {r + 1})",
        )
    return src


def _parse_table_fast(text, delimiter, ncol, cols, lab):
    """Numbers (N, len(cols)) float64 and labels (N,) str with numpy's C reader, or None.

    Only for text without quotes, so that every delimiter separates fields. Returns None whenever
    anything is off (ragged lines, a bad number): ``_parse_table_slow`` then names the problem.
    """
    b = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    newlines = np.flatnonzero(b == 10)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(b)]))
    cum = np.concatenate(([0], np.cumsum(b == ord(delimiter))))
    fields = cum[ends] - cum[starts] + 1
    nonblank = np.flatnonzero(ends > starts)
    if len(nonblank) < 2 or (fields[nonblank] != ncol).any():
        return None
    skip = int(nonblank[0]) + 1  # physical lines up to and including the header
    n = len(nonblank) - 1
    common = dict(delimiter=delimiter, skiprows=skip, comments=None, quotechar=None)
    try:
        x = np.loadtxt(io.StringIO(text), usecols=cols, dtype=np.float64, ndmin=2, **common)
        labels = None
        if lab is not None:
            labels = np.loadtxt(io.StringIO(text), usecols=[lab], dtype=str, ndmin=1, **common)
    except ValueError:
        return None
    if x.shape != (n, len(cols)) or (labels is not None and labels.shape != (n,)):
        return None  # e.g. whitespace-only lines, which the csv module keeps as data
    return x, labels


def _parse_table_slow(p, text, delimiter, header, chosen, cols, lab):
    """Same result as ``_parse_table_fast`` with the csv module, raising DataError at the first problem."""
    try:
        data = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r][1:]
    except csv.Error as e:
        raise DataError(f"{p}: not valid delimited text ({e}); check quoting and line endings") from e
    ncol = len(header)
    if not data:
        raise DataError(f"{p}: the file has a header but no data rows; the dataset is empty")
    lengths = np.fromiter(map(len, data), dtype=np.int64, count=len(data))
    ragged = np.flatnonzero(lengths != ncol)
    if ragged.size:
        r = int(ragged[0])
        raise DataError(
            f"{p}: line {_line_of(text, delimiter, r)} has {int(lengths[r])} fields but the header has {ncol} "
            f"({ragged.size} such line(s)); every line needs one value per column (check for a stray or "
            "missing delimiter, or quote fields that contain it)"
        )
    columns = list(zip(*data, strict=True))  # one tuple of strings per column
    x = np.empty((len(data), len(cols)), dtype=np.float64)
    for j, (name, c) in enumerate(zip(chosen, cols, strict=True)):
        col = columns[c]
        try:
            x[:, j] = np.array(col, dtype=np.float64)
        except ValueError:
            r, value = next((i, v) for i, v in enumerate(col) if not _is_number(v))
            problem = ("an empty value (missing data)" if not value.strip()
                       else f"the non-numeric value {value!r}")
            raise DataError(
                f"{p}: column {name!r} has {problem} at line {_line_of(text, delimiter, r)} (data row {r + 1}); "
                f"feature columns must be numbers: exclude the column with --features, use it as the label "
                f"with --label-column {name}, or fix the value"
            ) from None
    labels = None if lab is None else np.array(columns[lab], dtype=str)
    return x, labels


def _line_of(text: str, delimiter: str, data_row: int) -> int:
    """1-based line of the file where data row ``data_row`` (0-based, after the header) ends.

    Only used for error messages: re-reads the text with the csv module.
    """
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    seen = -1
    for r in reader:
        if r:
            if seen == data_row:
                return reader.line_num
            seen += 1
    return reader.line_num


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _preview(items, n: int = 10) -> str:
    items = list(items)
    text = ", ".join(repr(i) if isinstance(i, str) else str(i) for i in items[:n])
    return text + (f", ... ({len(items)} in all)" if len(items) > n else "")


# --- image folders ----------------------------------------------------------------------------------


def _load_image_folder(folder: Path) -> _Source:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in names:
            if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES:
                files.append(Path(root, n).relative_to(folder))
    files.sort(key=lambda r: r.as_posix())
    if not files:
        others = sorted({q.suffix.lower() for q in folder.rglob("*") if q.is_file() and q.suffix})
        hint = ""
        if any("ubyte" in q.name for q in folder.iterdir() if q.is_file()):
            hint = " It holds IDX files: load them with 'fashion-mnist' or 'mnist' and --data-dir instead."
        elif others:
            hint = f" It holds {', '.join(others[:8])} files: pass a data file's path instead of the folder."
        raise DataError(f"{folder}: no .png/.jpg/.jpeg images found in this folder or its subfolders; the "
                        f"dataset is empty.{hint}")
    top = [r for r in files if len(r.parts) == 1]
    nested = [r for r in files if len(r.parts) > 1]
    if top and nested:
        raise DataError(
            f"{folder}: has images both at the top level ({top[0]}) and in subfolders ({nested[0]}); for "
            "labeled data put every image in a subfolder named after its class, for unlabeled data "
            "point at a folder without class subfolders"
        )
    labeled = bool(nested)

    from PIL import Image, UnidentifiedImageError

    arrays, gray = [], []
    first_size = None
    for rel in files:
        path = folder / rel
        try:
            with Image.open(path) as im:
                im.load()
                mode = im.mode
                size = im.size
                if mode in _GRAY_MODES:
                    arr = np.asarray(im.convert("L"))
                elif mode in _COLOR_MODES:
                    if mode == "P" and "transparency" in im.info:
                        im = im.convert("RGBA")  # the palette's alpha, else Pillow warns
                    arr = np.asarray(im.convert("RGB"))
                else:
                    kind = "16-bit or floating point pixels" if mode.startswith(("I", "F")) else "unusual mode"
                    raise DataError(
                        f"{path}: image mode {mode!r} ({kind}) is not supported; save the image with 8-bit "
                        "pixels (grayscale L or RGB)"
                    )
        except DataError:
            raise
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"{path}: cannot read the image ({e}); the file is damaged or not an image; "
                            "remove or replace it") from e
        if first_size is None:
            first_size = (files[0], size)
        elif size != first_size[1]:
            (w0, h0), (w1, h1) = first_size[1], size
            raise DataError(
                f"{folder}: images have different sizes: {first_size[0]} is {w0}x{h0} but {rel} is {w1}x{h1} "
                "(width x height); resize them all to one size first (e.g. with Pillow's Image.resize)"
            )
        arrays.append(arr)
        gray.append(arr.ndim == 2)
    if all(gray):
        x = np.stack(arrays)[:, None]  # (N, 1, H, W)
    else:
        # L -> RGB replicates the gray value in all three channels, which is what Pillow would do
        x = np.stack([np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in arrays])
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (N, 3, H, W)
    src = _Source(name=folder.name, what=str(folder), kind="image", x=x)
    if labeled:
        src.y, src.class_names = _encode_labels(np.array([r.parts[0] for r in files], dtype=str), str(folder))
    return src


# --------------------------------------------------------------------------------------------------
# Splitting, conversion, standardization


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


def _assemble(src: _Source, *, val_fraction, test_fraction, seed, limit, stats, spec) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(src.x), generator=g).numpy()
    if limit is not None:
        perm = perm[:limit]
    if src.x_test is None:
        n_train, n_val, _ = _checked_sizes(len(perm), val_fraction, test_fraction, src.what, limit)
        idx = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}
        xs = {k: src.x[i] for k, i in idx.items()}
        ys = {k: (None if src.y is None else src.y[i]) for k, i in idx.items()}
    else:
        # fixed test split: validation is the last val_fraction of the permuted training set
        n_train, n_val, _ = _checked_sizes(len(perm), val_fraction, 0.0, src.what, limit)
        if limit is not None:
            test_idx = torch.randperm(len(src.x_test), generator=g).numpy()[:limit]
        else:
            test_idx = np.arange(len(src.x_test))
        xs = {"train": src.x[perm[:n_train]], "val": src.x[perm[n_train:]], "test": src.x_test[test_idx]}
        ys = {"train": src.y[perm[:n_train]], "val": src.y[perm[n_train:]], "test": src.y_test[test_idx]}

    mean = std = None
    if src.kind == "image":
        tensors = {k: _image_tensor(v) for k, v in xs.items()}
    else:
        d = src.x.shape[1]
        if stats is None:
            train = xs["train"]
            m64 = train.mean(axis=0)
            s64 = train.std(axis=0)
            mean = torch.from_numpy(m64.astype(np.float32))
            std32 = s64.astype(np.float32)
            # constant columns: float64 rounding leaves a tiny nonzero std; treat it as zero
            std32[(s64 <= 1e-12 * np.abs(m64)) | (std32 == 0) | ~np.isfinite(std32)] = 1.0
            std = torch.from_numpy(std32)
        else:
            mean, std = _check_stats(stats, d, src.what)
        m, s = mean.double().numpy(), std.double().numpy()
        tensors = {k: torch.from_numpy(((v - m) / s).astype(np.float32)) for k, v in xs.items()}
        spec["stats"] = {"mean": mean.tolist(), "std": std.tolist()}
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
        mean=mean, std=std, spec=spec,
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
