"""Figures: which apply to which model and data, and that each one draws something."""

import io
import os
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

import aekit
from aekit import plots


def _png_stats(png: bytes) -> tuple[int, float]:
    """(distinct colours, share of non-white pixels) of a PNG."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int32)
    colours = len(np.unique((a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]))
    return colours, float((a.min(-1) < 250).mean())


@pytest.fixture(scope="module")
def fitted(digits):
    out = {}
    for name, opts in [("ae", {}), ("dae", {}), ("vae", {"latent_dim": 2}), ("cvae", {}),
                       ("aae", {"prior": "mixture", "supervised": True})]:
        m = aekit.build(name, dataset=digits, seed=0, hidden=[32], **({"latent_dim": 3} | opts))
        r = aekit.fit(m, digits, aekit.TrainConfig(epochs=2), quiet=True)
        out[name] = (m, r.history)
    return out


EXPECTED = {
    "ae": ["curves", "reconstructions", "latent", "interpolation"],
    "dae": ["curves", "reconstructions", "latent", "interpolation"],
    "vae": ["curves", "reconstructions", "samples", "latent", "manifold", "interpolation"],
    "cvae": ["curves", "reconstructions", "samples", "class_samples", "latent", "interpolation"],
    "aae": ["curves", "reconstructions", "samples", "class_samples", "latent", "interpolation"],
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_figures_that_apply(fitted, digits, name):
    m, hist = fitted[name]
    figs = list(plots.run_figures(m, digits, hist))
    assert [f[0] for f in figs] == EXPECTED[name]
    for fname, caption, fig in figs:
        assert caption
        colours, ink = _png_stats(plots.to_png(fig))
        assert colours > 16 and ink > 0.02, (fname, colours, ink)
    assert not plt.get_fignums()  # no figure was registered with pyplot


def test_denoising_figure_has_three_rows(fitted, digits):
    m, _ = fitted["dae"]
    figs = {n: (c, f) for n, c, f in plots.run_figures(m, digits)}
    caption, fig = figs["reconstructions"]
    assert "noisy" in caption
    img = fig.axes[0].images[0].get_array()
    assert img.shape[0] > 3 * 8 and img.shape[0] < 4 * 8  # three rows of 8-pixel images with thin gaps
    assert [t.get_text() for t in fig.axes[0].texts] == ["clean", "noisy", "denoised"]
    m, _ = fitted["ae"]
    fig = dict((n, f) for n, _, f in plots.run_figures(m, digits))["reconstructions"]
    assert fig.axes[0].images[0].get_array().shape[0] < 3 * 8


def test_denoising_figure_rows_are_the_models_own(fitted, digits):
    """The noisy row is the model's corruption with the seeded generator, the last row its reconstruction."""
    m, _ = fitted["dae"]
    x = digits.x_test[:4]
    caption, rows = m.reconstruction_rows(x, generator=torch.Generator().manual_seed(5))
    noisy = m.corrupt(x, generator=torch.Generator().manual_seed(5))
    assert "noisy" in caption and list(rows) == ["clean", "noisy", "denoised"]
    assert torch.equal(rows["noisy"], noisy) and torch.equal(rows["clean"], x)
    m.eval()
    with torch.no_grad():
        assert torch.equal(rows["denoised"], m.reconstruct(noisy))


def test_class_samples_rows_are_classes(fitted, digits):
    m, _ = fitted["cvae"]
    fig = dict((n, f) for n, _, f in plots.run_figures(m, digits))["class_samples"]
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels == digits.class_names


def test_save_run_figures_writes_pngs(fitted, digits, tmp_path):
    m, hist = fitted["vae"]
    written = plots.save_run_figures(m, digits, tmp_path, hist)
    assert set(written) == set(EXPECTED["vae"])
    for path, _ in written.values():
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert not plt.get_fignums()


def test_tables_keep_scatter_and_curves(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", x=rng.normal(size=(150, 6)), y=rng.integers(0, 3, 150))
    ds = aekit.datasets.load(str(tmp_path / "t.npz"))
    m = aekit.build("vae", dataset=ds, seed=0, latent_dim=2, hidden=[16])
    r = aekit.fit(m, ds, aekit.TrainConfig(epochs=2), quiet=True)
    names = [n for n, _, f in plots.run_figures(m, ds, r.history)]
    assert names == ["curves", "latent"]


@pytest.mark.parametrize("k", [1, 2, 5])
def test_latent_scatter_any_code_size(k):
    z = torch.randn(60, k)
    for y in (None, torch.arange(60) % 3):
        fig = plots.latent_scatter(z, y, ["a", "b", "c"])
        colours, ink = _png_stats(plots.to_png(fig))
        assert colours > 10 and ink > 0.01


def test_training_curves_train_and_val_terms():
    hist = [{"epoch": e, "train": {"loss": 5.0 / e, "recon": 4.0 / e, "disc": 0.7},
             "val": {"loss": 5.5 / e, "recon": 4.5 / e}} for e in range(1, 6)]
    fig = plots.training_curves(hist)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["loss", "recon", "disc"]
    lines = {ax.get_title(): len(ax.get_lines()) for ax in fig.axes if ax.get_title()}
    assert lines == {"loss": 2, "recon": 2, "disc": 1}


def test_mosaic_layout():
    a, b = np.zeros((2, 3)), np.full((2, 3), 0.5)
    m = plots.mosaic([[a, b], [b]], pad=1)
    assert m.shape == (2 * 3 + 1, 2 * 4 + 1)
    assert (m[1:3, 1:4] == 0).all() and (m[1:3, 5:8] == 0.5).all() and (m[4:6, 1:4] == 0.5).all()
    assert (m[4:6, 5:8] == 1).all() and (m[0] == 1).all()  # the missing tile and the border are white


def test_figures_are_not_registered_with_pyplot(fitted, digits):
    """Making every figure (without saving or closing any) leaves pyplot's figure list empty."""
    before = plt.get_fignums()
    for name in EXPECTED:
        m, hist = fitted[name]
        figs = list(plots.run_figures(m, digits, hist))
        assert figs
    figs += [plots.latent_scatter(torch.randn(20, 3)), plots.image_grid(digits.x_test[:5]),
             plots.reconstructions(digits.x_test[:3], digits.x_test[:3])]
    assert plt.get_fignums() == before == []


@pytest.mark.parametrize("backend", ["svg", "pdf"])
def test_importing_plots_keeps_the_callers_backend(backend):
    code = ("import matplotlib, aekit.plots, torch; "
            "png = aekit.plots.to_png(aekit.plots.image_grid(torch.rand(4, 1, 8, 8))); "
            "print(matplotlib.get_backend(), png[:4] == b'\\x89PNG')")
    env = {**os.environ, "MPLBACKEND": backend}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [backend, "True"]
