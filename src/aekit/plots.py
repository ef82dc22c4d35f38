"""Figures as matplotlib Figure objects (headless: Agg backend; never plt.show())."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import Tensor  # noqa: E402


def _to_hwc(img: Tensor) -> np.ndarray:
    a = img.detach().float().cpu().clamp(0, 1).numpy()
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def image_rows(rows: list[Tensor], row_labels: list[str] | None = None, scale: float = 0.9):
    """A grid figure: one row per tensor of images (n, C, H, W), all with the same n."""
    n = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * scale, len(rows) * scale + 0.2), squeeze=False)
    for r, imgs in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(_to_hwc(imgs[c]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0 and row_labels:
                ax.set_ylabel(row_labels[r], fontsize=8)
    fig.tight_layout(pad=0.2)
    return fig


def image_grid(imgs: Tensor, ncols: int = 8, scale: float = 0.9):
    """Images (n, C, H, W) in a grid of ``ncols`` columns."""
    n = imgs.shape[0]
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale, nrows * scale), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
        if i < n:
            ax.imshow(_to_hwc(imgs[i]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    fig.tight_layout(pad=0.1)
    return fig


def reconstructions(x: Tensor, x_hat: Tensor):
    """Inputs (top row) above their reconstructions (bottom row). x, x_hat: (n, C, H, W)."""
    return image_rows([x, x_hat], ["input", "output"])


def save(fig, path) -> None:
    """Save a figure to PNG atomically and close it."""
    import io as _io

    from .io import atomic_write_bytes

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
