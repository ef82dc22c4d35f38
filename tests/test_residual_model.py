"""The joint score's residual model (``aekit.scoring.JointStats`` with ``rank`` > 0): a probabilistic PCA of
the scaled residuals, checked against an explicit covariance, scikit-learn's PCA, the Scorer's graph, the saved
state and the Detector's parameter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.decomposition import PCA

import aekit
from aekit import Detector, adapt
from aekit.scoring import JOINT_NOISE_FLOOR, JointStats
from detector_state import each_damage_fails, rewrite_state, round_trip

FAST = dict(epochs=15, hidden=(32,), batch_size=64)


def correlated(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Codes (n, 3) and residuals (n, d) whose values move together (3 factors) plus noise."""
    rng = np.random.RandomState(seed)
    return rng.randn(n, 3), rng.randn(n, 3) @ rng.randn(3, d) + 0.3 * rng.randn(n, d)


def ppca_covariance(c: np.ndarray, q: int) -> np.ndarray:
    """The maximum-likelihood PPCA covariance of the centred rows c, written out (D, D)."""
    n, d = c.shape
    w, v = np.linalg.eigh(c.T @ c / (n - 1))
    w, v = w[::-1], v[:, ::-1]
    noise = max(w[q:].clip(0).sum() / (d - q), JOINT_NOISE_FLOOR)
    vq = v[:, :q]
    return vq @ np.diag(w[:q]) @ vq.T + noise * (np.eye(d) - vq @ vq.T)


@pytest.mark.parametrize("n,d,q", [(500, 6, 2), (300, 30, 8), (40, 100, 5),  # (40, 100): fewer rows than values
                                   (400, 120, 8), (90, 200, 6)])  # matrices above EIGH_SUBSET_FROM: scipy's solver
def test_the_residual_term_is_the_mahalanobis_distance_under_the_ppca_covariance(n, d, q):
    z, r = correlated(n, d)
    st = JointStats.estimate(z, r, 1e-3, q)
    assert st.rank == q and st.basis.shape == (d, q)
    c = r / st.sigma - st.rmean
    np.testing.assert_allclose(st.rmean, (r / st.sigma).mean(0), atol=1e-12)
    cov = ppca_covariance(c, q)
    want = np.einsum("ij,jk,ik->i", c, np.linalg.inv(cov), c)
    np.testing.assert_allclose(st.residual_terms(r).sum(1), want, rtol=1e-8)
    np.testing.assert_allclose(st.score(z, r), st.code_distance(z) + want, rtol=1e-8)


@pytest.mark.parametrize("distinct,copies,d", [(6, 5, 40), (8, 12, 150)])  # 96 rows: scipy's subset solver
def test_directions_without_variance_beyond_the_noise_are_dropped(distinct, copies, d):
    """Duplicated rows (fewer distinct rows than values, the Gram path): the model keeps only the directions whose
    variance exceeds the noise, its basis stays orthonormal, and the term is still the explicit covariance's."""
    z, r = correlated(distinct, d, seed=5)
    r, z = np.repeat(r, copies, axis=0), np.repeat(z, copies, axis=0)  # rank distinct - 1 after centring
    st = JointStats.estimate(z, r, 1e-3, 12)
    assert 1 <= st.rank <= distinct - 1
    np.testing.assert_allclose(st.basis.T @ st.basis, np.eye(st.rank), atol=1e-10)
    assert np.all(st.lam > st.noise)
    c = r / st.sigma - st.rmean
    v = st.basis
    cov = v @ np.diag(st.lam) @ v.T + st.noise * (np.eye(d) - v @ v.T)
    x = c[:4] + 0.1
    np.testing.assert_allclose(st.residual_terms(r[:4] + 0.1 * st.sigma).sum(1),
                               np.einsum("ij,jk,ik->i", x, np.linalg.inv(cov), x), rtol=1e-8)
    flat = JointStats.estimate(np.zeros((20, 2)), np.ones((20, 5)), 1e-3, 3)  # one distinct row
    assert flat.rank == 0 and np.isfinite(flat.residual_terms(np.ones((3, 5)))).all()


def test_the_residual_model_is_scikit_learns_ppca():
    """scikit-learn's PCA(q).get_precision() is the inverse of the same maximum-likelihood PPCA covariance."""
    z, r = correlated(400, 12, seed=1)
    st = JointStats.estimate(z, r, 1e-3, 4)
    c = r / st.sigma
    pca = PCA(n_components=4).fit(c)
    x = c - pca.mean_
    want = np.einsum("ij,jk,ik->i", x, pca.get_precision(), x)
    np.testing.assert_allclose(st.residual_terms(r).sum(1), want, rtol=1e-7)


def test_rank_zero_is_the_diagonal_model():
    z, r = correlated(200, 7)
    st = JointStats.fit(z, r, rank=0)
    assert st.rank == 0 and not st.rmean.any()
    np.testing.assert_array_equal(st.residual_terms(r), (r / st.sigma) ** 2)
    assert set(st.tensors("j/")) == {"j/mu", "j/prec", "j/sigma"}  # a rank-0 state is the format-3 state
    # the fit trims with the diagonal model; the residual model comes from the rows that trimming kept (without
    # the code regression, which rescales sigma: tests/test_code_regression.py)
    ranked = JointStats.fit(z, r, rank=3, regression=False)
    np.testing.assert_array_equal(ranked.sigma, st.sigma)
    np.testing.assert_array_equal(ranked.mu, st.mu)
    assert ranked.rank == 3 and np.all(ranked.lam >= ranked.noise) and ranked.noise >= JOINT_NOISE_FLOOR


def test_values_that_move_together_count_once():
    """A residual copied into 10 columns is one surprise under the residual model, ten under the diagonal one."""
    rng = np.random.RandomState(0)
    base = rng.randn(600, 1)
    r = np.hstack([base] * 10 + [rng.randn(600, 5)]) + 0.05 * rng.randn(600, 15)
    z = rng.randn(600, 2)
    diag, ranked = JointStats.fit(z, r, rank=0), JointStats.fit(z, r, rank=1, regression=False)
    odd = np.zeros((2, 15))
    odd[0, :10] = 3.0 * r[:, :10].std(0)  # the ten together, 3 sd: what the rows do, only larger
    odd[1, 0] = 3.0 * r[:, 0].std()  # one of the ten alone: never seen in training
    d_diag, d_ranked = diag.residual_terms(odd).sum(1), ranked.residual_terms(odd).sum(1)
    assert d_diag[0] > 5 * d_diag[1]  # the diagonal model finds the joint move 10x as surprising
    assert d_ranked[1] > 2 * d_ranked[0]  # the residual model: the broken dependency is the anomaly (the
    # trimmed fit narrows the shared direction, so the joint move still costs something)


def test_the_scorer_graph_the_numpy_statistics_and_explain_agree():
    X = correlated(300, 10, seed=2)[1] + 5.0
    det = Detector(random_state=0, folds=1, residual_rank=4, **FAST).fit(X)
    st = det.joint_[0]
    assert st.rank == 4 and det.residual_rank_ == 4
    x = det.scorer().model_input(X[:40])
    from aekit.scoring import codes_and_residuals

    z, r = codes_and_residuals(det.models_[0], x)
    np.testing.assert_allclose(det.decision_function(X[:40]), st.score(z, r), rtol=1e-9)
    out = det.explain(X[:40])
    np.testing.assert_allclose(out["contributions"].sum(1) + out["code_distance"], det.decision_function(X[:40]),
                               rtol=1e-6)


def test_the_default_and_its_limits(monkeypatch):
    X = correlated(200, 10, seed=3)[1]
    det = Detector(random_state=0, **{**FAST, "epochs": 2}).fit(X)  # a cross-fitted table: TABLE_RESIDUAL_RANK
    assert det.residual_rank_ == adapt.TABLE_RESIDUAL_RANK
    assert [st.rank for st in det.joint_] == [adapt.TABLE_RESIDUAL_RANK] * 2
    assert adapt.residual_rank("auto", "table", 3) == 2  # at most D - 1: some noise is left to estimate
    assert adapt.residual_rank("auto", "image", 784) == adapt.IMAGE_RESIDUAL_RANK
    assert adapt.residual_rank(50, "table", 10) == 9 and adapt.residual_rank(0, "table", 10) == 0
    tiny = Detector(random_state=0, residual_rank=5, **{**FAST, "epochs": 1}).fit(X[:, :3])
    assert all(st.rank == 2 for st in tiny.joint_)
    for bad in (-1, 2.5, True, "full", None):
        with pytest.raises(aekit.ConfigError, match="residual_rank"):
            Detector(residual_rank=bad).fit(X)


def test_a_saved_residual_model_round_trips_and_damage_is_one_run_error(tmp_path):
    X = correlated(200, 10, seed=4)[1]
    det = Detector(random_state=0, residual_rank=3, **{**FAST, "epochs": 2}).fit(X)
    back = round_trip(det, tmp_path / "det", X)
    assert [st.rank for st in back.joint_] == [3, 3] and back.residual_rank_ == 3
    path = tmp_path / "det"
    tensors = load_file(path / "detector.safetensors")
    each_damage_fails(path, [({"residual_ranks": [3, 4]}, None), ({"residual_ranks": [3]}, None),
                             ({"residual_ranks": [10, 10]}, None), ({"residual_ranks": [-1, 3]}, None),
                             ({"residual_ranks": "3"}, None),
                             (None, {k: v for k, v in tensors.items() if k != "joint1/basis"}),
                             (None, {**tensors, "joint0/lam": -tensors["joint0/lam"]}),
                             (None, {**tensors, "joint0/noise": torch.zeros(1, dtype=torch.float64)}),
                             (None, {**tensors, "joint1/rmean": tensors["joint1/rmean"] * float("nan")})])
    # a state written before the residual model (format 3, no residual_ranks) is read as the diagonal model
    flat = Detector(random_state=0, residual_rank=0, **{**FAST, "epochs": 2}).fit(X)
    old = flat.save(tmp_path / "old")
    rewrite_state(old, {"format": 3}, remove=("residual_ranks",))
    back = Detector.load(old)
    assert [st.rank for st in back.joint_] == [0, 0]
    np.testing.assert_array_equal(back.decision_function(X[:25]), flat.decision_function(X[:25]))
