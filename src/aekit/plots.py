"""Figures as ``matplotlib.figure.Figure`` objects, made without pyplot.

Nothing here touches matplotlib's global state: no backend is chosen on import, no figure is registered
with pyplot (so none has to be closed, and a caller's own backend and figures are left alone). PNG
bytes come from ``Figure.savefig``, which renders with Agg whatever the caller's backend.

The functions at the top draw given tensors; ``run_figures`` decides which figures apply to a model
and dataset from what the model declares (``model.capabilities``: ``generative``, ``uses_labels``;
``latent_dim``; its own ``reconstruction_rows``, e.g. a denoising family's clean / noisy / denoised rows)
and the kind of data, never from the model's name, and ``save_run_figures`` writes them as PNG files.
Tables get the latent scatter and the training curves; the image figures are skipped for them.
"""

from __future__ import annotations

import math

import matplotlib
import matplotlib.ticker
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["mosaic", "image_rows", "image_grid", "reconstructions", "class_grid", "latent_manifold", "latent_scatter",
           "training_curves", "run_figures", "save_run_figures", "to_png", "save"]


def _to_hwc(img: Tensor) -> np.ndarray:
    a = img.detach().float().cpu().clamp(0, 1).numpy()
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def mosaic(rows: list[list[np.ndarray]], pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """Tile images (each (H, W) or (H, W, C), values in [0,1], all the same shape) row by row into one
    array, with ``pad`` pixels of ``fill`` between and around them; short rows are padded with ``fill``."""
    first = rows[0][0]
    h, w = first.shape[:2]
    ncols = max(len(r) for r in rows)
    shape = (len(rows) * (h + pad) + pad, ncols * (w + pad) + pad) + first.shape[2:]
    out = np.full(shape, fill, dtype=np.float32)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y0, x0 = pad + i * (h + pad), pad + j * (w + pad)
            out[y0 : y0 + h, x0 : x0 + w] = img
    return out


def _show_mosaic(rows: list[list[np.ndarray]], row_labels: list[str] | None, scale: float):
    """One Axes showing the mosaic of ``rows`` (one imshow: fast for many small images)."""
    h, w = rows[0][0].shape[:2]
    ncols = max(len(r) for r in rows)
    pad = max(1, round(max(h, w) / 14))
    m = mosaic(rows, pad=pad)
    # labels readable where the figure is shown shrunk (a comparison table cell is ~520 px wide): a font
    # about a quarter of a row's height, and room for the longest label
    fontsize = 18 * scale
    label_w = (max(map(len, row_labels)) * 0.6 * fontsize / 72 + 0.15) if row_labels else 0.0
    fig = Figure(figsize=(ncols * scale + label_w, len(rows) * scale * h / w + 0.1))
    ax = fig.add_axes((label_w / fig.get_figwidth(), 0, 1 - label_w / fig.get_figwidth(), 1))
    ax.imshow(m, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    if row_labels:
        for i, lab in enumerate(row_labels):
            ax.text(-pad, pad + i * (h + pad) + h / 2, lab, ha="right", va="center", fontsize=fontsize)
    return fig


def image_rows(rows: list[Tensor], row_labels: list[str] | None = None, scale: float = 0.9):
    """A grid figure: one row per tensor of images (n, C, H, W), all with the same n."""
    return _show_mosaic([[_to_hwc(im) for im in imgs] for imgs in rows], row_labels, scale)


def image_grid(imgs: Tensor, ncols: int = 8, scale: float = 0.9):
    """Images (n, C, H, W) in a grid of ``ncols`` columns."""
    tiles = [_to_hwc(im) for im in imgs]
    rows = [tiles[i : i + ncols] for i in range(0, len(tiles), ncols)] or [[np.ones((1, 1), np.float32)]]
    return _show_mosaic(rows, None, scale)


def reconstructions(x: Tensor, x_hat: Tensor):
    """Inputs (top row) above their reconstructions (bottom row). x, x_hat: (n, C, H, W)."""
    return image_rows([x, x_hat], ["input", "output"])


def class_grid(rows: list[Tensor], class_names: list[str]):
    """Class-conditional samples: one row of images (n, C, H, W) per class, labelled by its name."""
    return image_rows(rows, [str(c)[:14] for c in class_names])


def latent_manifold(imgs: Tensor, grid0: np.ndarray, grid1: np.ndarray):
    """Decoded 2-D latent grid: imgs (n1 * n0, C, H, W) in row-major order, row i at z_1 = grid1[i]
    (drawn bottom to top), column j at z_0 = grid0[j]; one mosaic with the code values on the axes."""
    n0, n1 = len(grid0), len(grid1)
    h, w = imgs.shape[2:]
    tiles = [_to_hwc(im) for im in imgs]
    rows = [tiles[i * n0 : (i + 1) * n0] for i in range(n1)][::-1]
    pad = max(1, round(max(h, w) / 14))
    m = mosaic(rows, pad=pad)
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    ax.imshow(m, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(pad + np.arange(n0) * (w + pad) + w / 2 - 0.5, [f"{v:.2g}" for v in grid0], fontsize=7,
                  rotation=90)
    ax.set_yticks(pad + np.arange(n1) * (h + pad) + h / 2 - 0.5, [f"{v:.2g}" for v in grid1[::-1]], fontsize=7)
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    fig.tight_layout()
    return fig


def latent_scatter(z: Tensor, y: Tensor | None = None, class_names: list[str] | None = None, seed: int = 0):
    """Codes z (N, K) as points, coloured by label y (N,) when given.

    K = 2: the codes themselves; K > 2: their first two principal components (scikit-learn PCA);
    K = 1: the code against a small vertical jitter.
    """
    zn = z.detach().float().cpu().numpy()
    k = zn.shape[1]
    if k > 2:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed).fit(zn)
        pts = pca.transform(zn)
        ev = pca.explained_variance_ratio_
        xlabel, ylabel = f"PC1 ({ev[0]:.0%} of variance)", f"PC2 ({ev[1]:.0%})"
    elif k == 2:
        pts, xlabel, ylabel = zn, "z[0]", "z[1]"
    else:
        jitter = np.random.default_rng(seed).uniform(-0.4, 0.4, size=len(zn))
        pts = np.stack([zn[:, 0], jitter], 1)
        xlabel, ylabel = "z[0]", "(jitter)"
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    if y is None:
        ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.7, color="tab:blue", linewidths=0)
    else:
        yn = y.detach().cpu().numpy()
        classes = np.unique(yn)
        cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for i, c in enumerate(classes):
            sel = yn == c
            name = class_names[int(c)] if class_names and int(c) < len(class_names) else str(int(c))
            ax.scatter(pts[sel, 0], pts[sel, 1], s=6, alpha=0.8, color=cmap(i % cmap.N), label=str(name)[:20],
                       linewidths=0)
        if len(classes) <= 20:
            ax.legend(fontsize=7, markerscale=2.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def training_curves(history: list[dict]):
    """One panel per logged term (loss, recon, kl, ...): train (solid) and validation (dashed) per epoch.

    ``history``: the records of metrics.jsonl, {"epoch", "train": {term: value}, "val": {term: value}}.
    """
    terms: list[str] = []
    for rec in history:
        for part in ("train", "val"):
            for t in rec.get(part) or {}:
                if t not in terms:
                    terms.append(t)
    if "loss" in terms:
        terms.remove("loss")
        terms.insert(0, "loss")
    n = max(1, len(terms))
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, term in zip(axes.flat, terms):
        for part, style in (("train", "-"), ("val", "--")):
            pts = [(r["epoch"], r[part][term]) for r in history
                   if term in (r.get(part) or {}) and r[part][term] is not None and math.isfinite(r[part][term])]
            if pts:
                e, v = zip(*pts)
                ax.plot(e, v, style, marker="." if len(pts) < 30 else None, label=part)
        ax.set_title(term, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if not terms:
        axes.flat[0].text(0.5, 0.5, "no training history", ha="center", va="center")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Which figures apply to a run


def _pick(x: Tensor, y: Tensor | None, n: int) -> tuple[Tensor, Tensor | None]:
    """The first n examples, one per class in turn when labelled (so a row shows every class)."""
    if y is None or n >= len(y):
        return x[:n], (None if y is None else y[:n])
    order = []
    classes = torch.unique(y).tolist()
    pools = {c: (y == c).nonzero().flatten().tolist() for c in classes}
    i = 0
    while len(order) < n and any(pools.values()):
        c = classes[i % len(classes)]
        if pools[c]:
            order.append(pools[c].pop(0))
        i += 1
    idx = torch.tensor(order)
    return x[idx], y[idx]


@torch.no_grad()
def run_figures(model, dataset, history: list[dict] | None = None, *, n: int = 10, seed: int = 0,  # noqa: C901
                split: str = "test"):
    """Yield (name, caption, Figure) for every figure that applies; the caller saves each.

    Names: curves, reconstructions, samples, class_samples, latent, manifold, interpolation. The split is read
    a few rows at a time (a store is never copied whole); the latent figure of a split of more than
    ``metrics.SAMPLE_ROWS`` rows shows the codes of a seeded subset of that many, and says so.
    """
    from . import metrics
    from .reference import subsample

    # the model's training flag is left alone: nothing drawn here depends on it (see aekit.models.base)
    dev = model.device
    x, y = metrics.split_rows(dataset, split)
    uses_labels = model.capabilities.uses_labels
    y_cond = y if uses_labels else None
    image = dataset.kind == "image"
    g = torch.Generator(device=dev).manual_seed(seed)

    if history:
        yield "curves", "Training curves: each logged term, train (solid) and validation (dashed)", \
            training_curves(history)

    if image and x.shape[0]:
        xs, ys = _pick(x, y, n)
        yc = ys.to(dev) if uses_labels and ys is not None else None
        caption, rows = model.reconstruction_rows(xs.to(dev), yc,
                                                  generator=torch.Generator(device=dev).manual_seed(seed))
        yield "reconstructions", caption, image_rows([r.cpu() for r in rows.values()], list(rows))

    k = dataset.num_classes
    if image and model.capabilities.generative:
        m = 4 * n
        ys_ = None
        if uses_labels and k:
            ys_ = torch.randint(0, k, (m,), generator=torch.Generator().manual_seed(seed)).to(dev)
        s = model.sample(m, y=ys_, generator=g).cpu()
        yield "samples", "Random samples from the prior" + (" (random labels)" if ys_ is not None else ""), \
            image_grid(s, ncols=n)
        if ys_ is not None:
            shown = list(range(min(k, 20)))
            rows = [model.sample(n, y=torch.full((n,), c, dtype=torch.long, device=dev), generator=g).cpu()
                    for c in shown]
            names = [dataset.class_names[c] if dataset.class_names else str(c) for c in shown]
            yield "class_samples", "Class-conditional samples: one row per class", class_grid(rows, names)

    if x.shape[0]:
        xl, yl, part = x, y, ""
        if len(x) > metrics.SAMPLE_ROWS:
            idx = subsample(len(x), metrics.SAMPLE_ROWS, seed)
            xl, yl, part = x[idx], (None if y is None else y[idx]), f" (a seeded sample of {len(idx):,} of {len(x):,})"
        z = metrics.codes(model, xl, None if y_cond is None else yl)
        kind = "the codes" if z.shape[1] <= 2 else "the first two principal components of the codes"
        yield "latent", f"Latent space: {kind} of the {split} split{part}" + (", coloured by label" if y is not None
                                                                              else ""), \
            latent_scatter(z, yl, dataset.class_names, seed=seed)

    if image and model.capabilities.generative and model.latent_dim == 2:
        grid = 12
        p = model.prior_sample(10000, generator=torch.Generator(device=dev).manual_seed(seed)).cpu().double()
        qs = torch.linspace(0.05, 0.95, grid, dtype=torch.float64)
        g0, g1 = torch.quantile(p[:, 0], qs).numpy(), torch.quantile(p[:, 1], qs).numpy()
        zz = torch.tensor([[a, b] for b in g1 for a in g0], dtype=torch.float32, device=dev)
        yl, what = None, ""
        if uses_labels and k:
            yl = torch.zeros(zz.shape[0], dtype=torch.long, device=dev)
            what = f", for class {dataset.class_names[0] if dataset.class_names else 0}"
        imgs = model.decode(zz, yl).cpu()
        yield "manifold", "Decoded latent manifold: a grid of the prior's 5%..95% quantiles in each code " \
            f"dimension{what}", latent_manifold(imgs, g0, g1)

    if image and x.shape[0] >= 2:
        i0, i1 = 0, 1
        if y is not None:
            same = uses_labels  # label-using decoders: interpolate style within one class
            cand = ((y == y[0]) if same else (y != y[0])).nonzero().flatten()
            cand = cand[cand != 0]
            if len(cand):
                i1 = int(cand[0])
        pair = x[[i0, i1]]
        ypair = None if y_cond is None else y_cond[[i0, i0]]
        z2 = metrics.codes(model, pair, ypair).to(dev)
        t = torch.linspace(0, 1, n, device=dev).unsqueeze(1)
        zs = (1 - t) * z2[0] + t * z2[1]
        yi = None if ypair is None else torch.full((n,), int(ypair[0]), dtype=torch.long, device=dev)
        imgs = model.decode(zs, yi).cpu()
        row = torch.cat([pair[:1].cpu(), imgs, pair[1:].cpu()])
        yield "interpolation", f"Interpolation between two {split} inputs (shown at both ends): decoded " \
            "points on the line between their codes", \
            image_rows([row], None)


def save_run_figures(model, dataset, out_dir, history: list[dict] | None = None, *, n: int = 10,
                     seed: int = 0, split: str = "test") -> dict[str, tuple[str, str]]:
    """Write every figure of ``run_figures`` to out_dir/<name>.png; returns {name: (path, caption)}."""
    from pathlib import Path

    out = {}
    for name, caption, fig in run_figures(model, dataset, history, n=n, seed=seed, split=split):
        path = Path(out_dir) / f"{name}.png"
        save(fig, path)
        out[name] = (str(path), caption)
    return out


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a figure."""
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save(fig: Figure, path) -> None:
    """Save a figure to PNG atomically."""
    from .files import atomic_write_bytes

    atomic_write_bytes(path, to_png(fig))
