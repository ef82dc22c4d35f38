"""Datasets: every source becomes one ``Dataset`` of float32 samples, split into train / val / test.

Sources (``load(name_or_path, ...)``, or ``load(config)`` with a :class:`DataConfig`):

- ``"digits"``: scikit-learn's bundled 8x8 digits (1797 images, offline). Pixels 0..16 are divided
  by 16, so values lie in [0, 1]; shape (1, 8, 8); 10 classes.
- ``"fashion-mnist"`` / ``"mnist"``: IDX files (gzipped or not) read from ``data_dir``; for
  fashion-mnist the default folder is ``FASHION_MNIST_DIR`` (Debian's ``dataset-fashion-mnist``).
  Pixels are uint8 / 255; shape (1, 28, 28); 10 classes. The official 60k/10k train/test split is
  kept; the validation split is the *last* ``val_fraction`` of a seeded permutation of the official
  training set, and ``test_fraction`` does not apply.
- a ``.npy`` file (one array, memory-mapped; labels from ``DATA.labels.npy`` beside ``DATA.npy`` when it
  exists) or ``.npz`` file (``x`` and optional ``y``): a 2-D array (N, D) is a table; (N, H, W),
  (N, H, W, C) with C in {1, 3, 4} or (N, C, H, W) with C in {1, 3} are images (when both 4-D layouts
  fit, channels-first wins). Image arrays are uint8 (divided by 255) or
  numbers already in [0, 1].
- a ``.csv`` / ``.tsv`` file (``.txt``: delimiter sniffed) with a header row: a table.
- a folder of ``.png`` / ``.jpg`` / ``.jpeg`` images: one class per subfolder when there are
  subfolders with images (labels are the subfolder names), else unlabeled. Hidden files and folders
  (names starting with ``.``) are skipped.
- arrays in memory: ``from_arrays(x, y)`` (numpy arrays, torch tensors, nested lists, a pandas
  DataFrame) reads ``x`` with the rules of a ``.npy`` file, without writing one.

Built-in names win over paths: to load a folder called ``digits`` write ``./digits``.

Storage (``storage``). 8-bit images (IDX files, PNG/JPEG folders, uint8 arrays) are held as uint8
(``ByteStore``: a quarter of float32's memory) and a ``.npy`` file is memory-mapped (``MappedStore``: a split
is the file's rows it owns, nothing is read until a batch is); both give float32 batches, bit for bit the
values a float32 tensor would hold. ``Dataset.split(name)`` materializes a store's split (within the memory
budget) for whole-split uses. ``pack(source, "data.npy")`` (``aekit pack``) writes an image folder, a table,
an IDX pair or a .npz archive as such a .npy file with its labels beside it.

Splits. Sources without a fixed test split are split with one seeded permutation
(``torch.Generator().manual_seed(seed)``): after ``limit`` keeps the first samples of the permutation,
the first part is train, then ``round(n * val_fraction)`` samples of validation, then
``round(n * test_fraction)`` samples of test (round half up). A fraction of 0 gives an empty split; a
positive fraction that would give an empty split is an error that says how many samples are needed.

Tables are standardized with the mean and std (population std; zero std replaced by 1) of the train
split; ``stats={"mean": [...], "std": [...]}`` forces given statistics. ``Dataset.spec`` is the frozen
:class:`DataConfig` that rebuilds the same tensors with ``load(ds.spec)`` (absolute paths, for tables
the statistics, the normal class of ``subset_class``); ``spec.to_dict()`` is plain JSON and
``DataConfig.from_dict`` reads it back, so a trained run can re-read its data exactly. A dataset made
by ``from_arrays`` has ``spec.name_or_path = None``: pass its arrays again. Loading never writes to
the user's files.

Hostile or broken files. Only regular files are read (a FIFO, a device such as a link to /dev/zero,
or a folder in place of a file is a DataError naming it). Sizes are checked from headers before
anything is allocated: what stays in memory (the float32 tensors or uint8 copies, plus the raw
(decompressed) bytes of an array, IDX file, table or image folder; for a memory-mapped .npy file its index,
24 bytes per sample) may not exceed ``max_data_bytes()``: the environment variable
``AEKIT_MAX_DATA_BYTES`` (bytes), else half of the machine's memory. Gzipped IDX files are inflated in
bounded chunks, never past what their header announces. Values beyond float32's range are rejected
like NaN/Inf, and messages quote at most 20 names of a file, each cut to 40 characters.

Layout: ``config`` (DataConfig and the option checks), ``dataset`` (Dataset), ``source`` (the
``_Source`` seam, shared helpers, the regular-file and memory-budget guards), one module per source
(``idx``, ``arrays``, ``tables``, ``images``), ``splitting`` (split sizes, permutation, standardization),
``storage`` (the stores) and ``pack``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path

from ..errors import DataError
from .arrays import _load_array_file, check_arrays, columns_path, from_arrays, read_samples
from .config import DataConfig, _check_name
from .dataset import Dataset
from .idx import BUILTIN_NAMES, FASHION_MNIST_DIR, _load_digits, _load_idx_dataset, available
from .images import IMAGE_SUFFIXES, _load_image_folder, image_files
from .pack import Packed, pack
from .source import _only_for, _Source, max_data_bytes, preview, size_text
from .splitting import _assemble, _one_class
from .storage import ByteStore, MappedStore, Store
from .tables import TABLE_DELIMITERS, _load_table_file

__all__ = ["Dataset", "DataConfig", "load", "from_arrays", "available", "max_data_bytes", "image_files",
           "BUILTIN_NAMES", "FASHION_MNIST_DIR", "pack", "Packed", "columns_path", "check_arrays",
           "Store", "ByteStore", "MappedStore", "read_samples", "preview", "size_text"]

ACCEPTED = ".npy, .npz, .csv, .tsv or .txt file, or a folder of .png/.jpg/.jpeg images"


def load(name_or_path: str | os.PathLike | DataConfig = "digits", **options) -> Dataset:
    """Load a built-in dataset or a file/folder into a :class:`Dataset` (see the module docstring).

    ``name_or_path``: a built-in name, a path, or a :class:`DataConfig` (such as a ``Dataset.spec``,
    or ``DataConfig.from_dict`` of a saved one). ``options`` are the other fields of DataConfig, as
    keyword arguments; with a DataConfig they replace its fields (``load(ds.spec, limit=50)``):

    ``data_dir``: folder of IDX files (fashion-mnist, mnist). ``label_column`` / ``features``:
    CSV/TSV columns. ``val_fraction`` / ``test_fraction``: split sizes. ``seed``: the split
    permutation. ``limit``: keep the first ``limit`` samples of each source split after shuffling.
    ``stats``: ``{"mean": [...], "std": [...]}`` to standardize a table with given statistics.
    ``normal_class``: keep only this class in train and val (one-class training; see subset_class).

    Options are checked as given (a string is not read as a number; ``DataConfig.from_dict`` does
    that for JSON and command-line text). The result's ``spec`` rebuilds it: ``load(ds.spec)``.
    Raises DataError for unusable data (and for a config of in-memory arrays, which cannot be
    re-read), ConfigError for bad options (or a bad AEKIT_MAX_DATA_BYTES), TypeError for an unknown option.

    Parameters
    ----------
    name_or_path : str, os.PathLike or DataConfig, default="digits"
        A built-in name ("digits", "fashion-mnist", "mnist"), a file or folder, or a DataConfig.
    **options
        The other fields of ``DataConfig`` (``help(aekit.DataConfig)`` lists them): ``val_fraction``,
        ``test_fraction``, ``seed``, ``limit``, ``label_column``, ``features``, ``stats``, ``normal_class``, ...

    Returns
    -------
    Dataset
        The samples, split into train / val / test; ``spec`` rebuilds them.
    """
    max_data_bytes()  # a bad AEKIT_MAX_DATA_BYTES is a ConfigError even where no file is read
    unknown = sorted(set(options) - set(DataConfig.field_names()))
    if unknown:
        raise TypeError(f"load() got unknown option(s) {', '.join(unknown)}; valid options are: "
                        f"{', '.join(DataConfig.field_names()[1:])}")
    if isinstance(name_or_path, DataConfig):
        cfg = dataclasses.replace(name_or_path, **options)
        if cfg.name_or_path is None:
            raise DataError(
                "this dataset was made from in-memory arrays (datasets.from_arrays) and cannot be re-read "
                "from its config; pass the arrays to datasets.from_arrays again"
            )
    else:
        cfg = DataConfig(name_or_path=_check_name(name_or_path), **options)

    data_dir = cfg.data_dir
    key = cfg.name_or_path.strip().lower().replace("_", "-")
    if key in BUILTIN_NAMES:
        _only_for(key, label_column=cfg.label_column, features=cfg.features)
        if key == "digits":
            _only_for(key, data_dir=data_dir)
            src = _load_digits()
        else:
            data_dir = None if data_dir is None else os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
            src = _load_idx_dataset(key, data_dir)
        spec_name = key
    else:
        path = os.path.abspath(os.path.expanduser(cfg.name_or_path))
        src = _load_path(cfg.name_or_path, path, label_column=cfg.label_column, features=cfg.features,
                         data_dir=data_dir)
        spec_name = path

    # a table's columns by name, even when they were all taken by default: new data is matched against them
    features = cfg.features if cfg.features is not None or not src.feature_names else tuple(src.feature_names)
    spec = dataclasses.replace(cfg, name_or_path=spec_name, data_dir=data_dir, normal_class=None, features=features)
    ds = _assemble(src, spec)
    return ds if cfg.normal_class is None else _one_class(ds, src, spec, cfg.normal_class)


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
        _only_for(f"{p}", label_column=label_column, data_dir=data_dir)
        if suffix == ".npz":
            _only_for(f"{p}", features=features)
        return _load_array_file(p, features=None if features is None else list(features))
    raise DataError(
        f"{p}: unsupported file type {suffix or '(no extension)'!r}; aekit reads a {ACCEPTED}. "
        "Convert the data to one of these (e.g. np.save('data.npy', array))"
    )
