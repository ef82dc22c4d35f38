"""Image folders: ``.png`` / ``.jpg`` / ``.jpeg`` files, one class per subfolder or unlabeled."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from ..errors import AekitError, DataError
from .source import _check_budget, _encode_labels, _open_regular, _reason, _Source
from .tables import TABLE_DELIMITERS

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
    labeled = bool(nested)

    # first the headers (sizes, modes): the whole folder is checked against the budget before decoding
    meta = []
    for rel in files:
        with _image(folder / rel) as im:
            meta.append((im.size, im.mode))
        _check_same_size(folder, files[0], meta[0][0], rel, meta[-1][0])
    (w, h), n_gray = meta[0][0], sum(mode in _GRAY_MODES for _, mode in meta)
    channels = 1 if n_gray == len(meta) else 3
    _check_budget(str(folder), len(files) * w * h * channels * (1 + 4),  # 8-bit pixels, float32 tensors
                  f"{len(files)} images of {w}x{h} pixels ({'gray' if channels == 1 else 'RGB'})")

    arrays, gray = [], []
    for rel in files:
        path = folder / rel
        with _image(path) as im:
            _check_same_size(folder, files[0], meta[0][0], rel, im.size)  # in case the file changed meanwhile
            im.load()
            mode = im.mode
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


@contextlib.contextmanager
def _image(path: Path):
    """The opened (not yet decoded) image of a regular file; a damaged one, in the block too, is a DataError."""
    from PIL import Image, UnidentifiedImageError

    f, _ = _open_regular(path)
    try:
        with f, Image.open(f, formats=_FORMATS) as im:
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
