"""``pack``: an image folder, a CSV/TSV table, an IDX file (with its labels file) or a .npz archive becomes one
``.npy`` file, written once, that ``load`` then memory-maps: data larger than memory trains from it.

- 8-bit images -> uint8 (N, C, H, W); tables -> float32 (N, D) (the precision aekit computes in; column names
  are not kept: a .npy file has none); float images of a .npz -> float32 (N, C, H, W).
- Labels -> ``DATA.labels.npy`` beside ``DATA.npy`` (``arrays.labels_path``), the label of each sample as the
  source names it (class subfolder names, the label column's values as text, IDX digits as integers), so that
  loading the pair gives the classes that loading the source gives. A .npz is not the output format: its
  members are zip entries, which cannot be memory-mapped.

Nothing is overwritten: an existing output (or labels file) is refused before anything is read, and each
file is written through a temporary file that is linked into place only once complete (``files.new_file``).
An image folder is streamed one image at a time (its memory does not grow with the folder); tables, IDX files
and .npz archives are read whole, within the memory budget, as ``load`` reads them.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..files import new_file
from .arrays import _load_array_file, labels_path
from .idx import _read_idx
from .images import _chw, _decode, _folder_plan
from .source import _encode_labels, _only_for, _size
from .tables import TABLE_DELIMITERS, _load_table_file

__all__ = ["Packed", "pack"]


@dataclass(frozen=True)
class Packed:
    """What ``pack`` wrote."""

    path: str                      # the .npy file of samples
    labels_path: str | None        # its labels, or None for unlabeled data
    shape: tuple[int, ...]         # (N, C, H, W) or (N, D)
    dtype: str                     # "uint8" or "float32"
    classes: list[str] | None      # the distinct labels, sorted as aekit numbers the classes

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def size_text(self) -> str:
        """``nbytes`` for people: '1.5 KiB'."""
        return _size(self.nbytes)


def pack(source: str | os.PathLike, out: str | os.PathLike, *, label_column: str | None = None,
         features: list[str] | None = None) -> Packed:
    """Write ``source`` as the .npy file ``out`` (and ``out``'s labels file); see the module docstring.

    ``source``: an image folder (one subfolder per class gives labels), a .csv/.tsv/.txt table
    (``label_column``, ``features`` as for ``load``), an IDX images file such as train-images-idx3-ubyte[.gz]
    (its labels file, train-labels-idx1-ubyte[.gz], is taken from beside it when present) or a .npz archive.
    Raises ConfigError for a bad ``out`` (not .npy, or an existing file), DataError for unusable input, RunError
    when the files cannot be written.
    """
    out = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
    if out.suffix.lower() != ".npy":
        raise ConfigError(f"--out: expected a path ending in .npy (the one format aekit memory-maps), got {out}")
    labels_out = labels_path(out)
    for q in (out, labels_out):
        if os.path.lexists(q):
            raise ConfigError(f"{q}: exists; aekit pack never overwrites a file: remove it (and {labels_out.name} "
                              "beside it) or choose another --out")
    src = Path(os.path.abspath(os.path.expanduser(os.fspath(source))))
    if not src.exists():
        raise DataError(f"{src}: no such file or folder; check the path (it is read relative to {os.getcwd()})")
    if src.is_dir():
        _only_for(f"image folder {src}", label_column=label_column, features=features)
        return _pack_folder(src, out, labels_out)
    suffix, name = src.suffix.lower(), src.name.lower()
    if suffix in TABLE_DELIMITERS:
        return _pack_table(src, out, labels_out, label_column, features)
    _only_for(str(src), label_column=label_column, features=features)
    if "idx3-ubyte" in name:
        return _pack_idx(src, out, labels_out)
    if suffix == ".npz":
        return _pack_npz(src, out, labels_out)
    if suffix == ".npy":
        raise ConfigError(f"{src}: is already a .npy file, which aekit memory-maps as it is: pass it to "
                          f"--dataset directly (its labels go in {labels_path(src).name}, if any)")
    raise DataError(f"{src}: aekit pack reads an image folder, a .csv/.tsv/.txt table, an IDX images file "
                    f"(*-images-idx3-ubyte[.gz]) or a .npz archive, not {suffix or 'a file without extension'!r}")


def _pack_folder(folder: Path, out: Path, labels_out: Path) -> Packed:
    files, labeled, (w, h), channels = _folder_plan(folder)  # every header first: one size, readable images
    shape = (len(files), channels, h, w)

    def blocks():
        for rel in files:
            yield _chw(_decode(folder, files[0], (w, h), rel), channels, folder / rel)

    labels = np.array([r.parts[0] for r in files], dtype=str) if labeled else None
    return _write(out, labels_out, shape, np.uint8, blocks(), labels)


def _pack_table(p: Path, out: Path, labels_out: Path, label_column, features) -> Packed:
    src = _load_table_file(p, TABLE_DELIMITERS[p.suffix.lower()], label_column,
                           None if features is None else list(features))
    x = src.x.astype(np.float32)  # finite and within float32's range: checked by the reader
    labels = None if src.y is None else np.array(src.class_names, dtype=str)[src.y]
    return _write(out, labels_out, x.shape, np.float32, [x], labels)


def _pack_idx(p: Path, out: Path, labels_out: Path) -> Packed:
    x = _read_idx(p, "images")
    if x.ndim != 3 or len(x) == 0:
        raise DataError(f"{p}: an IDX images file holds (N, H, W) images, this one {x.shape}; pass the images file")
    partner = _idx_labels_file(p)
    labels = None
    if partner is not None:
        labels = _read_idx(partner, "labels").astype(np.int64)
        if labels.shape != (len(x),):
            raise DataError(f"{partner}: {labels.size} labels for {len(x)} images in {p.name}; the two files must "
                            "have the same count: they are from different datasets or one is damaged")
    return _write(out, labels_out, (len(x), 1, *x.shape[1:]), np.uint8, [x[:, None]], labels)


def _idx_labels_file(p: Path) -> Path | None:
    """train-images-idx3-ubyte[.gz] -> the train-labels-idx1-ubyte[.gz] beside it, if there is one."""
    stem = p.name[:-3] if p.name.endswith(".gz") else p.name
    stem = stem.replace("images", "labels").replace("idx3", "idx1")
    return next((p.with_name(stem + gz) for gz in ("", ".gz") if p.with_name(stem + gz).exists()), None)


def _pack_npz(p: Path, out: Path, labels_out: Path) -> Packed:
    src = _load_array_file(p)
    x = src.x if src.x.dtype == np.uint8 else src.x.astype(np.float32)
    labels = None if src.y is None else np.array(src.class_names, dtype=str)[src.y]
    return _write(out, labels_out, x.shape, x.dtype, [x], labels)


def _write(out: Path, labels_out: Path, shape, dtype, blocks, labels: np.ndarray | None) -> Packed:
    """The labels file (when there are labels), then the samples, streamed block by block into ``out``."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    need = int(np.prod(shape)) * dtype.itemsize + (0 if labels is None else labels.nbytes)
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if need > free:
        raise DataError(f"{out.parent}: the packed data needs {_size(need)} but the disk has {_size(free)} free; "
                        "free some space or choose another --out")
    classes = None
    if labels is not None:
        _, classes = _encode_labels(labels, str(labels_out))
        with new_file(labels_out) as f:
            np.lib.format.write_array(f, labels, allow_pickle=False)
    try:
        with new_file(out) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
            written = 0
            for b in blocks:
                b = np.ascontiguousarray(b, dtype=dtype)
                f.write(memoryview(b).cast("B"))
                written += b.shape[0] if b.ndim == len(shape) else 1
            if written != shape[0]:  # a folder whose files changed while it was read
                raise DataError(f"{out}: {written} samples were read, {shape[0]} expected; pack again")
    except BaseException:
        if labels is not None:
            labels_out.unlink(missing_ok=True)  # written above by this call: its pair was not
        raise
    return Packed(str(out), None if labels is None else str(labels_out), shape, dtype.name, classes)
