"""Built-in sources: scikit-learn's digits, and Fashion-MNIST / MNIST from IDX files (gzipped or not)."""

from __future__ import annotations

import importlib.util
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .source import _check_budget, _open_regular, _Source

__all__ = ["BUILTIN_NAMES", "FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "available"]

BUILTIN_NAMES = ("digits", "fashion-mnist", "mnist")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # read here by available() and the loader
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

_IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


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
            hit = (next((folder / n for n in names if (folder / n).is_file()), None)
                   or next((folder / n for n in names if (folder / n).exists()), None))  # the reader says what it is
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

    Checks the magic number, the header and that the data length equals the product of the dims, and
    refuses data beyond the memory budget (``source.max_data_bytes``) before reading it. A gzipped
    file is inflated in chunks, never past what its header announces: a gzip bomb stops there.
    """
    path = Path(path)
    f, size = _open_regular(path)
    with f:
        try:
            if f.read(2) == b"\x1f\x8b":
                f.seek(0)
                out = _gunzip_idx(f, path, kind)
                header = _idx_header(out, path, kind)
                data = np.frombuffer(out, dtype=np.uint8, offset=len(header.raw))
            else:
                f.seek(0)
                header = _idx_header(f.read(_MAX_HEADER), path, kind)
                have = size - len(header.raw)
                if have != math.prod(header.dims):
                    raise _length_error(path, header, have)
                data = np.empty(_idx_budget(header, path, kind), dtype=np.uint8)
                f.seek(len(header.raw))
                data = data[:f.readinto(memoryview(data))]  # shorter if the file shrank meanwhile
        except OSError as e:
            raise DataError(f"{path}: cannot read the file ({e.strerror or e}); check its permissions") from e
    if len(data) != math.prod(header.dims):
        raise _length_error(path, header, len(data))
    return data.reshape(header.dims)


_MAX_HEADER = 4 + 4 * 255  # the magic number (its last byte counts the dims), then one big-endian u32 per dim
_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Header:
    raw: bytes              # the header's bytes
    dims: tuple[int, ...]   # the shape it announces


def _idx_header(raw, path: Path, kind: str) -> _Header:
    """The header at the start of ``raw`` (bytes of the decompressed stream), checked; DataError otherwise."""
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
    return _Header(bytes(raw[:header]), dims)


def _idx_budget(header: _Header, path: Path, kind: str) -> int:
    """The data length the header announces, in bytes, once it is known to fit the memory budget."""
    need = math.prod(header.dims)
    per_value = 1 if kind == "images" else 8  # the splits' uint8 copies (storage.ByteStore), int64 labels
    _check_budget(str(path), need * (1 + per_value), f"the header's {'x'.join(map(str, header.dims))} {kind}")
    return need


def _length_error(path: Path, header: _Header, have: int | None) -> DataError:
    """The data after the header is not as long as the header announces (``have`` None: longer)."""
    need = math.prod(header.dims)
    what = "the file is truncated" if have is not None and have < need else "the file has extra bytes at the end"
    return DataError(
        f"{path}: the header announces {'x'.join(map(str, header.dims))} = {need} bytes of data but "
        f"{'more' if have is None else have} follow: {what}; download it again"
    )


def _gunzip_idx(f, path: Path, kind: str) -> bytearray:
    """The decompressed IDX stream of the gzip file ``f``, inflated in bounded chunks.

    The header comes first; once it is known, the output may not exceed header + announced data (and
    the data must fit the budget): more is a DataError, without inflating the rest. Like
    ``gzip.decompress``, concatenated members are one stream and zero padding after a member is skipped.
    """
    out = bytearray()
    header, limit = None, _MAX_HEADER  # the most output allowed: the header alone until it is known
    d = zlib.decompressobj(wbits=31)   # gzip wrapper: checks the CRC and length of each member
    data, at_end = b"", False
    try:
        while True:
            if not data and not at_end:
                data = f.read(_CHUNK)
                at_end = not data
            if d.eof:
                data = data.lstrip(b"\0")
                if not data:
                    if at_end:
                        break
                    continue
                d = zlib.decompressobj(wbits=31)  # another member
            chunk = d.decompress(data, limit + 1 - len(out))  # never 0 (which would mean no limit)
            data = d.unused_data if d.eof else d.unconsumed_tail
            if not chunk and not data and at_end and not d.eof:
                break  # the input is spent inside a member
            out += chunk
            if header is None and len(out) >= 4 and len(out) >= 4 + 4 * out[3]:
                header = _idx_header(out, path, kind)
                limit = len(header.raw) + _idx_budget(header, path, kind)
            if len(out) > limit:
                raise _length_error(path, header, None)
    except zlib.error as e:
        raise _gzip_error(path, e) from e
    if not d.eof:
        raise _gzip_error(path, "the stream ends inside the compressed data")
    return out


def _gzip_error(path: Path, reason) -> DataError:
    return DataError(f"{path}: the gzip data is damaged or cut short ({reason}); download the file again "
                     "(or gunzip a good copy)")
