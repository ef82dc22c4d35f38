"""Image folders: ``.png`` / ``.jpg`` / ``.jpeg`` files, one class per subfolder or unlabeled."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .source import _encode_labels, _Source

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = {"1", "L"}
_COLOR_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "LA", "CMYK", "YCbCr", "LAB", "HSV"}


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
