"""Image folders: ``.png`` / ``.jpg`` / ``.jpeg`` files, one class per subfolder or unlabeled."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import AekitError, DataError
from .source import _check_budget, _encode_labels, _open_regular, _reason, _Source
from .tables import TABLE_DELIMITERS

__all__ = ["IMAGE_SUFFIXES", "image_files"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_FORMATS = ("PNG", "JPEG")  # what the suffixes promise: Pillow's other decoders (EPS runs Ghostscript) stay shut
_GRAY_MODES = {"1", "L"}
_COLOR_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "LA", "CMYK", "YCbCr", "LAB", "HSV"}


def image_files(folder: str | Path) -> list[Path]:
    """The images of a folder in the order aekit reads them (sorted relative paths; hidden files skipped)."""
    folder = Path(folder)
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in names:
            if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES:
                files.append(Path(root, n).relative_to(folder))
    files.sort(key=lambda r: r.as_posix())
    return files


def _load_image_folder(folder: Path) -> _Source:
    files, labeled, (w, h), channels = _folder_plan(folder)
    # 8-bit pixels: the decoded images, their stacked array and the splits' uint8 copies (storage.ByteStore)
    _check_budget(str(folder), len(files) * w * h * channels * 3,
                  f"{len(files)} images of {w}x{h} pixels ({'gray' if channels == 1 else 'RGB'})")
    arrays = [_decode(folder, files[0], (w, h), rel) for rel in files]
    if all(a.ndim == 2 for a in arrays):
        x = np.stack(arrays)[:, None]  # (N, 1, H, W)
    else:
        x = np.stack([_chw(a, 3, folder / rel) for a, rel in zip(arrays, files, strict=True)])  # (N, 3, H, W)
    src = _Source(name=folder.name, what=str(folder), kind="image", x=x)
    if labeled:
        src.y, src.class_names = _folder_labels(folder, files)
    return src


def _folder_labels(folder: Path, files: list[Path]) -> tuple[np.ndarray, list[str]]:
    return _encode_labels(np.array([r.parts[0] for r in files], dtype=str), str(folder))


def _folder_plan(folder: Path) -> tuple[list[Path], bool, tuple[int, int], int]:
    """(the image files, labeled by subfolder?, (width, height), channels: 1 when all are gray, else 3), from
    the files' headers:
    the whole folder is checked (one size, readable images) before anything is decoded."""
    files = image_files(folder)
    if not files:
        others = sorted({q.suffix.lower() for q in folder.rglob("*") if q.is_file() and q.suffix})
        hint = ""
        if folder.suffix.lower() in (".npy", ".npz", *TABLE_DELIMITERS):
            hint = (f" Its name ends in {folder.suffix}, but it is a folder, not a {folder.suffix.lower()} file: "
                    "pass the path of the data file itself.")
        elif any("ubyte" in q.name for q in folder.iterdir() if q.is_file()):
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
    meta = []
    for rel in files:
        with _image(folder / rel) as im:
            meta.append((im.size, im.mode))
        _check_same_size(folder, files[0], meta[0][0], rel, meta[-1][0])
    n_gray = sum(mode in _GRAY_MODES for _, mode in meta)
    return files, bool(nested), meta[0][0], 1 if n_gray == len(meta) else 3


def _decode(folder: Path, first: Path, size, rel: Path) -> np.ndarray:
    """The pixels of one image: (H, W) uint8 for gray images, (H, W, 3) for color ones."""
    path = folder / rel
    with _image(path) as im:
        _check_same_size(folder, first, size, rel, im.size)  # in case the file changed meanwhile
        im.load()
        mode = im.mode
        if mode in _GRAY_MODES:
            return np.asarray(im.convert("L"))
        if mode in _COLOR_MODES:
            if mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")  # the palette's alpha, else Pillow warns
            return np.asarray(im.convert("RGB"))
        kind = "16-bit or floating point pixels" if mode.startswith(("I", "F")) else "unusual mode"
        raise DataError(
            f"{path}: image mode {mode!r} ({kind}) is not supported; save the image with 8-bit "
            "pixels (grayscale L or RGB)"
        )


def _chw(a: np.ndarray, channels: int, path: Path) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 -> (C, H, W); a gray image in a color folder has its value in all three
    channels (what Pillow's L -> RGB gives)."""
    if channels == 1:
        if a.ndim != 2:
            raise DataError(f"{path}: the image changed while it was read (now in color); read the folder again")
        return a[None]
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return a.transpose(2, 0, 1)


@contextlib.contextmanager
def _image(path: Path):
    """The opened (not yet decoded) image of a regular file; a damaged one, in the block too, is a DataError."""
    from PIL import Image, UnidentifiedImageError

    f, _ = _open_regular(path)
    try:
        # Pillow's own warnings (a large image's DecompressionBombWarning) would print before aekit's line: the
        # memory budget, checked from the headers, is what decides about large images
        with f, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f, formats=_FORMATS) as im:
                yield im
    except AekitError:
        raise
    except UnidentifiedImageError as e:
        raise DataError(f"{path}: cannot read the image (not a PNG or JPEG image); the file is damaged or not an "
                        "image; remove or replace it") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: cannot read the image ({_reason(e)}); the file is damaged or not an image; "
                        "remove or replace it") from e


def _check_same_size(folder: Path, first: Path, first_size, rel: Path, size) -> None:
    if size != first_size:
        (w0, h0), (w1, h1) = first_size, size
        raise DataError(
            f"{folder}: images have different sizes: {first} is {w0}x{h0} but {rel} is {w1}x{h1} "
            "(width x height); resize them all to one size first (e.g. with Pillow's Image.resize)"
        )
