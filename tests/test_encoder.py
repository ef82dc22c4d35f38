"""aekit.Encoder, the scikit-learn transformer: its contract (check_estimator), a Pipeline in GridSearchCV, and
what transform / inverse_transform give."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

import aekit
from aekit.errors import ConfigError, DataError

TINY = dict(epochs=2, latent_dim=2, batch_size=32, model_options={"hidden": [8]})

# check name -> why it may fail; a listed check that passes counts as passed (non-strict). Both pass on this
# machine's CPU; they are listed because they compare float32 results at 1e-7 absolute, by chance of rounding.
EXPECTED = {
    "check_methods_subset_invariance":
        "float32 arithmetic: the matrix products of one row and of a batch of rows may round differently (BLAS "
        "blocks them by batch size), so a code can differ by ~1e-7 relative where the check allows 1e-7 "
        "absolute; test_transform_and_inverse_transform checks the invariance at rtol 1e-5",
    "check_methods_sample_order_invariance":
        "the same float32 rounding: the rows of a reordered batch may meet other blockings in the matrix products",
}


@parametrize_with_checks([aekit.Encoder(**TINY), aekit.Encoder(model="ae", **TINY)],
                         expected_failed_checks=lambda est: EXPECTED)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits_xy():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data[:400].astype(np.float64), d.target[:400]


def test_pipeline_in_grid_search(digits_xy):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    X, y = digits_xy
    pipe = Pipeline([("ae", aekit.Encoder(model="vae", epochs=3, random_state=0)),
                     ("clf", LogisticRegression(max_iter=300))])
    search = GridSearchCV(pipe, {"ae__latent_dim": [2, 8]}, cv=2).fit(X, y)
    assert search.best_params_["ae__latent_dim"] in (2, 8)
    assert search.best_score_ > 0.3  # ten classes: chance is 0.1
    assert search.best_estimator_.named_steps["ae"].transform(X[:5]).shape == (5, search.best_params_["ae__latent_dim"])


def test_transform_and_inverse_transform(digits_xy):
    X, _ = digits_xy
    enc = aekit.Encoder(model="ae", latent_dim=16, epochs=20, random_state=0).fit(X)
    z = enc.transform(X)
    assert z.shape == (len(X), 16) and z.dtype == np.float64
    assert enc.transform(X.astype(np.float32)).dtype == np.float32
    np.testing.assert_allclose(enc.transform(X[:7]), z[:7], rtol=1e-5, atol=1e-6)  # one row does not need the others
    # the codes are the model's, on X scaled with the training statistics
    x = torch.as_tensor((X - enc.data_spec_.stats["mean"]) / np.asarray(enc.data_spec_.stats["std"]),
                        dtype=torch.float32)
    np.testing.assert_allclose(z, enc.model_.encode(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    back = enc.inverse_transform(z)
    assert back.shape == X.shape
    # reconstructions in X's units (0..16): far better than the mean image
    assert ((back - X) ** 2).mean() < 0.5 * ((X - X.mean(0)) ** 2).mean()
    assert list(enc.get_feature_names_out()) == [f"encoder{i}" for i in range(16)]


def test_images_and_custom_networks():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    rng = np.random.default_rng(0)
    images = rng.random((24, 3, 64, 64), dtype=np.float32)
    enc = aekit.Encoder(model="vae", latent_dim=4, epochs=1, random_state=0, encoder="custom_nets:ConvEncoder",
                        encoder_args={"width": 4}, decoder="custom_nets:ConvDecoder").fit(images)
    assert enc.transform(images).shape == (24, 4)
    assert enc.inverse_transform(enc.transform(images[:3])).shape == (3, 3, 64, 64)


@pytest.mark.parametrize("params, message", [
    ({"model": "cvae"}, "needs class labels"),
    ({"model": "nope"}, "unknown model 'nope'"),
    ({"model_options": {"latent_dim": 3}}, "set by Encoder(latent_dim=...)"),
    ({"latent_dim": 0}, "latent_dim=0 must be >= 1"),
    ({"model_options": {"beta": -1}}, "beta=-1"),
])
def test_bad_parameters_are_one_line(digits_xy, params, message):
    with pytest.raises(ConfigError) as e:
        aekit.Encoder(**{**TINY, **params}).fit(digits_xy[0][:50])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_other_data_is_refused(digits_xy):
    X, _ = digits_xy
    enc = aekit.Encoder(**TINY).fit(X[:60])
    with pytest.raises(DataError, match="X has 3 features, but Encoder is expecting 64 features"):
        enc.transform(X[:5, :3])
    with pytest.raises(DataError, match="expecting 2 features as input"):
        enc.inverse_transform(np.zeros((3, 5)))
