"""``pack``: an image folder, a CSV/TSV table, an IDX file (with its labels file) or a .npz archive becomes one
``.npy`` file, written once, that ``load`` then memory-maps: data larger than memory trains from it.

- 8-bit images -> uint8 (N, C, H, W); tables -> float32 (N, D) (the precision aekit computes in), their column
  names in ``DATA.columns.json`` beside it (``arrays.columns_path``; loading gives them back as the feature
  names, so new rows are matched by name as for the CSV); float images of a .npz -> float32 (N, C, H, W).
- Labels -> ``DATA.labels.npy`` beside ``DATA.npy`` (``arrays.labels_path``), the label of each sample as the
  source names it (class subfolder names, the label column's values as text, IDX digits as integers), so that
  loading the pair gives the classes that loading the source gives. A .npz is not the output format: its
  members are zip entries, which cannot be memory-mapped.

Nothing is overwritten: an existing output (or labels or columns file) is refused before anything is read.
Every file is written as a temporary first and all are published together at the end (linked into place, the
data file last), under a lock file beside the output that records what has been published: a pack killed at
any moment leaves no file that blocks the re-run, which removes the files the killed pack had published (its
data file never among them) and its temporaries.
An image folder is streamed one image at a time (its memory does not grow with the folder); tables, IDX files
and .npz archives are read whole, within the memory budget, as ``load`` reads them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..files import fsync_dir, lock_file
from .arrays import _load_array_file, columns_document, columns_path, labels_path
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
    columns_path: str | None = None  # a table's column names (DATA.columns.json), or None

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
    anc = out.parent
    while not os.path.lexists(anc) and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"--out {out}: {anc} is a file, so nothing can be created below it; choose another path")
    labels_out = labels_path(out)
    if os.path.lexists(_journal(out)):  # a pack was killed here: undo what it left (_claim), then check
        _release(out, _claim(out))
    _refuse_existing(out)
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
    return _write(out, labels_out, x.shape, np.float32, [x], labels, columns_document(src.feature_names, p.name))


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


def _refuse_existing(out: Path) -> None:
    for q in (out, labels_path(out), columns_path(out)):
        if os.path.lexists(q):
            raise ConfigError(f"{q}: exists; aekit pack never overwrites a file: remove it (and the labels and "
                              f"columns files beside it, {labels_path(out).name} and {columns_path(out).name}) or "
                              "choose another --out")


def _journal(out: Path) -> Path:
    return out.with_name(f".{out.name}.aekit-pack")


def _temporary(q: Path) -> Path:
    return q.with_name(f".{q.name}.aekit-pack.tmp")


def _claim(out: Path) -> int:
    """Lock ``out``'s journal (one pack writes ``out`` at a time) and undo what a killed pack left: the files its
    journal says it published (never the data file: it is published last, and with it the journal goes) and its
    temporaries. Returns the journal's fd."""
    journal = _journal(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out.parent}: cannot create the folder ({e.strerror or e}); choose another --out") from None
    fd, who = lock_file(journal, write_pid=False)  # what a killed pack recorded is read first
    if fd is None:
        raise ConfigError(f"{out}: another aekit pack ({who}) is writing it; wait for it to end or choose another "
                          "--out")
    try:
        raw = os.pread(fd, 1 << 16, 0).decode("utf-8", "replace").strip()
        try:
            published = json.loads(raw).get("published", []) if raw else []
        except (ValueError, AttributeError):
            published = []
        if not os.path.lexists(out):
            for name in published:
                if isinstance(name, str) and name in (labels_path(out).name, columns_path(out).name):
                    (out.parent / name).unlink(missing_ok=True)
        for q in (out, labels_path(out), columns_path(out)):
            _temporary(q).unlink(missing_ok=True)
        _record(fd, [])
    except BaseException:
        os.close(fd)
        raise
    return fd


def _record(fd: int, published: list[str]) -> None:
    """Write the journal: the names published so far (fsync'ed before the next file is published)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "published": published}).encode(), 0)
    os.fsync(fd)


def _release(out: Path, fd: int) -> None:
    _journal(out).unlink(missing_ok=True)
    os.close(fd)


def _write(out: Path, labels_out: Path, shape, dtype, blocks, labels: np.ndarray | None,  # noqa: C901
           columns: dict | None = None) -> Packed:
    """The samples (streamed block by block), their labels and column names, each as a temporary file, then
    published together: the sidecars first, the data file last (see the module docstring)."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    need = int(np.prod(shape)) * dtype.itemsize + (0 if labels is None else labels.nbytes)
    fd = _claim(out)
    try:
        _refuse_existing(out)  # again, under the lock
        free = shutil.disk_usage(out.parent).free
        if need > free:
            raise DataError(f"{out.parent}: the packed data needs {_size(need)} but the disk has {_size(free)} "
                            "free; free some space or choose another --out")
        classes = None
        staged = []  # (temporary, final path), the data file last
        if labels is not None:
            _, classes = _encode_labels(labels, str(labels_out))
            with _staged(labels_out) as f:
                np.lib.format.write_array(f, labels, allow_pickle=False)
            staged.append(labels_out)
        if columns is not None:
            with _staged(columns_path(out)) as f:
                f.write((json.dumps(columns, indent=1) + "\n").encode("utf-8"))
            staged.append(columns_path(out))
        with _staged(out) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
            written = 0
            for b in blocks:
                b = np.ascontiguousarray(b, dtype=dtype)
                f.write(memoryview(b).cast("B"))
                written += b.shape[0] if b.ndim == len(shape) else 1
            if written != shape[0]:  # a folder whose files changed while it was read
                raise DataError(f"{out}: {written} samples were read, {shape[0]} expected; pack again")
        staged.append(out)
        published: list[str] = []
        try:
            for q in staged:
                if q != out:
                    _record(fd, published + [q.name])  # before it appears: a kill after the link is undone
                os.link(_temporary(q), q)
                published.append(q.name)
                _temporary(q).unlink()
        except FileExistsError as e:
            for name in published:
                (out.parent / name).unlink(missing_ok=True)
            raise ConfigError(f"{e.filename}: a file appeared there while aekit pack wrote; it was left as it is "
                              "and nothing was written: remove it or choose another --out") from None
        except OSError as e:
            for name in published:
                (out.parent / name).unlink(missing_ok=True)
            raise DataError(f"{out}: cannot write ({e.strerror or e}); check the folder and the free space") from None
        fsync_dir(out.parent)
    except BaseException:
        for q in (out, labels_out, columns_path(out)):
            _temporary(q).unlink(missing_ok=True)
        _release(out, fd)
        raise
    _release(out, fd)
    return Packed(str(out), None if labels is None else str(labels_out), shape, dtype.name, classes,
                  None if columns is None else str(columns_path(out)))


@contextlib.contextmanager
def _staged(q: Path):
    """The temporary file of ``q`` to write (fsync'ed, with the mode ``open()`` gives), under the journal's lock."""
    tmp = _temporary(q)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise DataError(f"{q}: cannot write ({e.strerror or e}); check the folder and the free space") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{q}: cannot write ({e.strerror or e}); check the folder and the free space") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
