"""Streaming evaluation: every metric reads a store (memory-mapped or uint8) a block at a time and gives the
numbers of the whole-array path; nothing materializes a whole float32 split."""

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import aekit
from aekit import metrics, plots
from aekit.datasets.storage import MappedStore, Store, as_tensor
from aekit.likelihoods import binarize_static, binarizer


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Digits as 8-bit images in a memory-mapped .npy file (test split of 1078 rows: more than one CHUNK_ROWS
    block) and the same dataset with every split a float32 tensor."""
    d = load_digits()
    folder = tmp_path_factory.mktemp("stream")
    np.save(folder / "digits.npy", (d.images * 15).astype(np.uint8))
    np.save(folder / "digits.labels.npy", d.target.astype(np.int64))
    mapped = aekit.datasets.load(str(folder / "digits.npy"), val_fraction=0.1, test_fraction=0.6, seed=0)
    assert isinstance(mapped.x_test, MappedStore) and len(mapped.x_test) > metrics.CHUNK_ROWS
    whole = dataclasses.replace(mapped, **{f"x_{k}": as_tensor(getattr(mapped, f"x_{k}"))
                                           for k in ("train", "val", "test")})
    return mapped, whole


@pytest.fixture
def no_materialize(monkeypatch):
    """A store's whole-split float32 tensor is a failure; small blocks and subsamples force every path."""
    def refuse(self):
        raise AssertionError(f"a whole {self.what} split was materialized")

    monkeypatch.setattr(Store, "materialize", refuse)
    monkeypatch.setattr(metrics, "BLOCK_ROWS", 100)
    monkeypatch.setattr(metrics, "SAMPLE_ROWS", 500)


def close(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), k


@pytest.mark.parametrize("family", ["ae", "vae", "dae", "sae", "cvae"])
def test_evaluate_streams_and_matches_the_whole_array_path(stores, family, monkeypatch):
    mapped, whole = stores
    model = aekit.build(family, dataset=mapped, seed=0, latent_dim=3, hidden=[16])
    opts = dict(iw_samples=3, normal_class=0, anomalies=as_tensor(mapped.x_val)[:40])
    monkeypatch.setattr(metrics, "SAMPLE_ROWS", 500)
    want = metrics.evaluate(model, whole, **opts)  # one block of BLOCK_ROWS: the whole-array formulas
    with monkeypatch.context() as m:
        m.setattr(Store, "materialize", lambda self: (_ for _ in ()).throw(AssertionError("materialized")))
        m.setattr(metrics, "BLOCK_ROWS", 100)
        got = metrics.evaluate(model, mapped, **{**opts, "anomalies": mapped.x_val.subset(np.arange(40))})
    close(got, want)
    assert got["representation_samples"] == 500
    if model.capabilities.diagnostics and family != "vae":
        assert got["diagnostic_samples"] == 500


def test_reconstruction_metrics_blocks_equal_the_whole_split_formulas(stores, no_materialize):
    mapped, whole = stores
    model = aekit.build("ae", dataset=mapped, seed=0, latent_dim=3, hidden=[16])
    x = whole.x_test
    x_hat = metrics.reconstructions(model, x)
    want = {"mse": metrics.mse(x, x_hat), "sse_per_example": metrics.sse_per_example(x, x_hat).mean().item(),
            "psnr_db": metrics.psnr(x, x_hat),
            "bce_nats": metrics.bce(x, model.decode_params(model.encode(x)).detach())}  # bce takes the logits
    close(metrics.reconstruction_metrics(model, mapped), want)


def test_table_column_errors_in_blocks(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 5)) * [1, 10, 100, 1e3, 1e-3] + [0, 5, -50, 1e4, 2]
    ds = aekit.datasets.from_arrays(x, val_fraction=0.0, test_fraction=0.5, seed=0)
    model = aekit.build("ae", dataset=ds, seed=0, latent_dim=2, hidden=[8])
    want = metrics.reconstruction_metrics(model, ds)
    x_t = ds.x_test
    assert metrics.column_errors(ds, x_t, metrics.reconstructions(model, x_t)).items() <= want.items()
    monkeypatch.setattr(metrics, "BLOCK_ROWS", 7)
    close(metrics.reconstruction_metrics(model, ds), want)
    # r2 and the column rmse against numpy, in the user's units
    xu = ds.to_user_units(x_t).double().numpy()
    hu = ds.to_user_units(metrics.reconstructions(model, x_t)).double().numpy()
    err2, var = ((hu - xu) ** 2).mean(0), xu.var(0)
    assert want["r2"] == pytest.approx(float(np.mean(1 - err2 / var)), rel=1e-9)


def test_anomaly_scores_of_a_store_equal_those_of_its_tensor(stores, no_materialize):
    mapped, whole = stores
    model = aekit.build("vae", dataset=mapped, seed=0, latent_dim=3, hidden=[16])
    got = metrics.anomaly_scores(model, mapped.x_test, seed=3)
    want = metrics.anomaly_scores(model, whole.x_test, seed=3)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_codes_of_a_store_stream(stores, no_materialize):
    mapped, whole = stores
    model = aekit.build("ae", dataset=mapped, seed=0, latent_dim=3, hidden=[16])
    assert torch.equal(metrics.codes(model, mapped.x_test), metrics.codes(model, whole.x_test))


def test_static_binarization_in_blocks_is_the_whole_one():
    x = torch.rand(3001, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    step = binarizer(7, "cpu")
    assert torch.equal(torch.cat([step(x[i:i + 1000]) for i in range(0, len(x), 1000)]), binarize_static(x, 7))


def test_binarized_likelihood_streams(stores, no_materialize, monkeypatch):
    mapped, whole = stores
    model = aekit.build("vae", dataset=mapped, seed=0, latent_dim=3, hidden=[16])
    got = metrics.likelihood_metrics(model, mapped, iw_samples=2, binarize_seed=5)
    monkeypatch.undo()
    close(got, metrics.likelihood_metrics(model, whole, iw_samples=2, binarize_seed=5))


def test_run_figures_stream(stores, no_materialize):
    mapped, _ = stores
    model = aekit.build("vae", dataset=mapped, seed=0, latent_dim=2, hidden=[16])
    names = [name for name, _, _ in plots.run_figures(model, mapped, None, n=4)]
    assert {"reconstructions", "latent", "interpolation", "samples", "manifold"} <= set(names)
