"""The joint score's code regression (scoring.JointStats with ``coef``): the residual model's mean moves linearly
with the code. Checked against the closed form (the Mahalanobis distance of the codes and residuals together
under their sample covariance), through the Scorer's graph, explain, a saved state and ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import aekit.scoring as scoring
from aekit import Detector
from aekit.scoring import JointStats, codes_and_residuals
from detector_state import each_damage_fails, rewrite_state, round_trip

FAST = dict(epochs=15, hidden=(32,), batch_size=64)


def linked(n: int, k: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Codes (n, k) and residuals (n, d) that the codes partly predict, with correlated noise."""
    rng = np.random.RandomState(seed)
    z = rng.randn(n, k) @ rng.randn(k, k) + rng.randn(k)
    r = z @ rng.randn(k, d) + rng.randn(n, 2) @ rng.randn(2, d) + 0.3 * rng.randn(n, d) + rng.randn(d)
    return z, r


def joint_mahalanobis(z: np.ndarray, r: np.ndarray, at_z: np.ndarray, at_r: np.ndarray) -> np.ndarray:
    """The Mahalanobis distance of (z, r) rows under the sample mean and covariance of the training pairs."""
    f = np.concatenate([z, r], axis=1)
    g = np.concatenate([at_z, at_r], axis=1) - f.mean(0)
    return np.einsum("ij,jk,ik->i", g, np.linalg.inv(np.cov(f, rowvar=False)), g)


@pytest.mark.parametrize("n,k,d", [(600, 3, 6), (400, 2, 12)])
def test_with_every_factor_the_score_is_the_joint_mahalanobis_distance(monkeypatch, n, k, d):
    monkeypatch.setattr(scoring, "JOINT_RIDGE", 0.0)  # the code covariance as estimated
    z, r = linked(n, k, d)
    zt, rt = linked(50, k, d, seed=1)  # other rows (the same relation would not matter: any rows)
    st = JointStats.fit(z, r, rank=d - 1, refits=0, regression=True)
    assert st.regression and st.coef.shape == (k, d) and st.rank == d - 1
    want = joint_mahalanobis(z, r, zt, rt)
    np.testing.assert_allclose(st.score(zt, rt), want, rtol=1e-8)
    # without the regression the code and the residual count as independent: not the joint distance
    plain = JointStats.fit(z, r, rank=d - 1, refits=0, regression=False)
    assert not plain.regression
    assert np.abs(plain.score(zt, rt) - want).max() > 0.1 * np.abs(want).max()


def test_the_regression_is_the_default_and_needs_a_residual_model_and_rows():
    z, r = linked(500, 3, 8)
    assert scoring.JOINT_CODE_REGRESSION  # selection round 11 (benchmarks/README.md)
    assert JointStats.fit(z, r, rank=4).regression and not JointStats.fit(z, r, rank=4, regression=False).regression
    st = JointStats.fit(z, r, rank=4, regression=True)
    assert st.regression and np.all(st.sigma > 0)
    # rank 0 (the diagonal model) has no residual model, so no regression; nor does a fold of too few rows
    assert not JointStats.fit(z, r, rank=0, regression=True).regression
    assert not JointStats.fit(z[:4], r[:4], rank=2, regression=True).regression
    # the residual term needs the codes when it regresses on them
    with pytest.raises(ValueError, match="codes"):
        st.residual_terms(r)
    # a residual that the code predicts exactly: sigma about the regression is floored, the scores finite
    exact = z @ np.ones((3, 8))
    st = JointStats.fit(z, exact + 1e-12 * np.random.RandomState(0).randn(500, 8), rank=3, regression=True)
    assert np.isfinite(st.score(z, exact)).all()


def fitted(monkeypatch, X, **kw):
    monkeypatch.setattr(scoring, "JOINT_CODE_REGRESSION", True)
    return Detector(random_state=0, **{**FAST, **kw}).fit(X)


def test_the_scorer_graph_the_numpy_statistics_and_explain_agree(monkeypatch):
    X = linked(300, 3, 10, seed=2)[1]
    det = fitted(monkeypatch, X, folds=1, residual_rank=4)
    st = det.joint_[0]
    assert st.regression and st.rank == 4
    z, r = codes_and_residuals(det.models_[0], det.scorer().model_input(X[:40]))
    np.testing.assert_allclose(det.decision_function(X[:40]), st.score(z, r), rtol=1e-9)
    out = det.explain(X[:40])
    np.testing.assert_allclose(out["contributions"].sum(1) + out["code_distance"], det.decision_function(X[:40]),
                               rtol=1e-6)
    cross = fitted(monkeypatch, X, epochs=2)  # the default: cross-fitted, every member's statistics regressed
    assert [st.regression for st in cross.joint_] == [True, True]


def test_a_saved_regression_round_trips_and_damage_is_one_run_error(monkeypatch, tmp_path):
    X = linked(200, 3, 10, seed=4)[1]
    back = round_trip(fitted(monkeypatch, X, epochs=2, residual_rank=3), tmp_path / "det", X)
    assert [st.regression for st in back.joint_] == [True, True]
    path = tmp_path / "det"
    tensors = load_file(path / "detector.safetensors")
    each_damage_fails(path, [({"residual_regressions": [True]}, None), ({"residual_regressions": [1, 1]}, None),
                             ({"residual_regressions": "yes"}, None),
                             ({"residual_ranks": [0, 0], "residual_regressions": [True, True]}, None),
                             (None, {k: v for k, v in tensors.items() if k != "joint1/coef"}),
                             (None, {**tensors, "joint0/coef": tensors["joint0/coef"][:, :4].contiguous()}),
                             (None, {**tensors, "joint0/coef": tensors["joint0/coef"] * float("nan")})])
    # a state written before the regression (format 5, no residual_regressions) is read without it
    monkeypatch.setattr(scoring, "JOINT_CODE_REGRESSION", False)
    plain = Detector(random_state=0, residual_rank=3, **{**FAST, "epochs": 2}).fit(X)
    old = plain.save(tmp_path / "old")
    rewrite_state(old, {"format": 5}, remove=("residual_regressions",))
    back = Detector.load(old)
    assert [st.regression for st in back.joint_] == [False, False]
    np.testing.assert_array_equal(back.decision_function(X[:25]), plain.decision_function(X[:25]))


def test_the_exported_scorer_keeps_the_regression(monkeypatch, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    X = linked(300, 3, 8, seed=5)[1]
    det = fitted(monkeypatch, X, epochs=3)
    assert all(st.regression for st in det.joint_)
    det.export(tmp_path / "exp")
    sess = ort.InferenceSession(str(tmp_path / "exp" / "scorer.onnx"), providers=["CPUExecutionProvider"])
    x = np.vstack([X[:50], X[:10] + 3.0])
    score = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(score, det.decision_function(x), rtol=1e-5, atol=1e-8)
    with torch.no_grad():  # the graph and the numpy statistics agree on the same member
        z, r = codes_and_residuals(det.models_[0], det.scorer().model_input(x))
    assert np.isfinite(det.joint_[0].score(z, r)).all()


def test_the_rows_rule_counts_distinct_rows_per_coefficient(monkeypatch):
    from aekit import adapt

    rows = np.repeat(np.arange(20.0)[:, None], 3, axis=1)
    copies = np.vstack([rows] * 10)  # 200 rows, 20 distinct
    monkeypatch.setattr(adapt, "REGRESSION_ROWS_PER_COEF", 5)
    assert adapt.code_regression(rows, 3, 2) and not adapt.code_regression(rows, 4, 2)  # 20 >= 5 * 4, 20 < 5 * 5
    assert not adapt.code_regression(copies, 4, 2)  # copies of a row count once
    monkeypatch.setattr(adapt, "REGRESSION_ROWS_PER_COEF", 0)
    assert adapt.code_regression(rows[:2], 16, 2)  # 0: wherever JointStats can fit it
    assert not adapt.code_regression(rows, 1, 0)  # a diagonal model (rank 0) has no regression
    monkeypatch.setattr(scoring, "JOINT_CODE_REGRESSION", False)
    assert not adapt.code_regression(copies, 1, 2)
    # a detector whose folds are too small for the rule fits its members' statistics without the regression
    monkeypatch.setattr(scoring, "JOINT_CODE_REGRESSION", True)
    monkeypatch.setattr(adapt, "REGRESSION_ROWS_PER_COEF", 5)
    X = linked(60, 3, 10, seed=6)[1]
    small = Detector(random_state=0, latent_dim=4, **{**FAST, "epochs": 2}).fit(X)
    assert [st.regression for st in small.joint_] == [True, True]  # 30 >= 5 * (4 + 1)
    tiny = Detector(random_state=0, latent_dim=8, **{**FAST, "epochs": 2}).fit(X)  # 30 < 5 * 9
    assert [st.regression for st in tiny.joint_] == [False, False]
    assert np.isfinite(tiny.decision_scores_).all()


@pytest.mark.parametrize("n,p,m", [(350, 17, 9), (1000, 17, 512), (20, 20, 3)])
def test_least_squares_is_numpys_on_a_full_rank_design(n, p, m):
    """The QR path (a full-rank design, as the centred codes and an intercept are) gives lstsq's solution."""
    rng = np.random.RandomState(n)
    a = np.concatenate([rng.randn(n, p - 1) @ rng.randn(p - 1, p - 1), np.ones((n, 1))], axis=1)
    b = a @ rng.randn(p, m) + rng.randn(n, m)
    np.testing.assert_allclose(scoring.least_squares(a, b), np.linalg.lstsq(a, b, rcond=None)[0],
                               rtol=1e-9, atol=1e-11)


def test_least_squares_falls_back_to_the_minimum_norm_solution_on_a_rank_deficient_design():
    """A code value constant over the rows (a zero column once centred) or two equal code values: the QR cannot
    solve, and the minimum-norm solution (lstsq's) is taken, whose regression stays finite."""
    rng = np.random.RandomState(3)
    z = rng.randn(200, 4)
    z[:, 1] = 0.5  # constant: centred, a zero column
    z[:, 3] = z[:, 2]  # two equal values
    a = np.concatenate([z - z.mean(0), np.ones((200, 1))], axis=1)
    b = rng.randn(200, 7)
    np.testing.assert_allclose(scoring.least_squares(a, b), np.linalg.lstsq(a, b, rcond=None)[0], atol=1e-12)
    r = z[:, :1] @ rng.randn(1, 7) + 0.1 * rng.randn(200, 7)
    st = JointStats.fit(z, r, rank=3, refits=0, regression=True)
    assert st.regression and np.isfinite(st.coef).all() and np.isfinite(st.score(z, r)).all()
