"""Tests of aekit.Detector: PyOD's detector API on aekit's autoencoders, as a scikit-learn estimator.

Small data and few epochs throughout; every fit is seeded (random_state) and offline.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import erf
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import aekit
from aekit import DataError, Detector
from aekit.detector import NotCalibratedError
from detector_state import rewrite_state

FAST = dict(epochs=15, hidden=(32,), batch_size=64)


def table(n: int, seed: int, d: int = 8) -> np.ndarray:
    """Normal rows: a 3-dimensional linear structure in d columns, plus noise, in the user's units."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(123).normal(size=(3, d))  # the same structure for every seed
    return rng.normal(size=(n, 3)) @ basis + 0.1 * rng.normal(size=(n, d)) + 10.0 + np.arange(d)


def outliers(n: int, seed: int, d: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 10.0 + np.arange(d) + 3.0 * rng.normal(size=(n, d))


@pytest.fixture(scope="module")
def planted():
    """(X, y, fitted detector): 570 normal rows and 30 planted outliers, in shuffled order."""
    X = np.vstack([table(570, 0), outliers(30, 1)])
    y = np.r_[np.zeros(570), np.ones(30)]
    order = np.random.default_rng(2).permutation(len(X))
    X, y = X[order], y[order]
    return X, y, Detector(contamination=0.05, random_state=0, folds=1, **FAST).fit(X)  # one member (its math)


class FrameLike:
    """What a pandas DataFrame offers to an array consumer: named columns and __array__ (no pandas here)."""

    def __init__(self, values, columns):
        self.values, self.columns = np.asarray(values), list(columns)

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)


# --- the detector API -------------------------------------------------------------------------------------


def test_planted_outliers_are_found(planted):
    X, y, det = planted
    assert det.decision_scores_.shape == (len(X),) and det.decision_scores_.dtype == np.float64
    assert roc_auc_score(y, det.decision_scores_) > 0.9
    scores = det.decision_function(X)
    np.testing.assert_allclose(scores, det.decision_scores_, rtol=1e-6)
    assert roc_auc_score(y, scores) > 0.9
    # PyOD: the threshold is the (1 - contamination) percentile of the training scores
    assert det.threshold_ == pytest.approx(np.percentile(det.decision_scores_, 95))
    np.testing.assert_array_equal(det.labels_, (det.decision_scores_ > det.threshold_).astype(int))
    assert abs(det.labels_.mean() - 0.05) <= 1 / len(X)
    labels = det.predict(X)
    assert labels.dtype.kind == "i" and set(np.unique(labels)) == {0, 1}
    np.testing.assert_array_equal(labels, det.labels_)
    assert det.n_features_in_ == 8 and det.feature_names_ == [f"f{i}" for i in range(8)]
    assert det.anomaly_score_ == "joint" and det.kind_ == "table"


def test_predict_proba_and_confidence_follow_pyod(planted):
    X, _, det = planted
    train = det.decision_scores_
    s = det.decision_function(X[:50])
    lin = det.predict_proba(X[:50])
    assert lin.shape == (50, 2)
    np.testing.assert_allclose(lin[:, 1], np.clip((s - train.min()) / (train.max() - train.min()), 0, 1))
    np.testing.assert_allclose(lin.sum(1), 1.0)
    uni = det.predict_proba(X[:50], method="unify")
    np.testing.assert_allclose(uni[:, 1], np.clip(erf((s - train.mean()) / (train.std() * math.sqrt(2))), 0, 1))
    with pytest.raises(ValueError, match="'linear' or 'unify'"):
        det.predict_proba(X[:5], method="softmax")
    # ExCeeD as PyOD computes it, one sample at a time
    n = len(train)
    p = np.array([(1 + np.count_nonzero(train <= v)) / (2 + n) for v in s])
    conf = 1 - stats.binom.cdf(n - int(n * det.contamination), n, p)
    conf = np.where(s > det.threshold_, conf, 1 - conf)
    np.testing.assert_allclose(det.predict_confidence(X[:50]), conf)
    labels, confidence = det.predict(X[:50], return_confidence=True)
    np.testing.assert_array_equal(labels, det.predict(X[:50]))
    np.testing.assert_allclose(confidence, conf)


def test_inputs_of_every_kind_give_the_same_scores(planted):
    X, _, det = planted
    X = X[:40]
    want = det.decision_function(X)
    for same in (X.tolist(), torch.from_numpy(X), FrameLike(X, [f"c{i}" for i in range(8)]), np.asfortranarray(X),
                 X[::-1][::-1], tuple(map(tuple, X))):
        np.testing.assert_array_equal(det.decision_function(same), want)
    x32 = X.astype(np.float32)  # float32 input: the same scores as its float64 values
    np.testing.assert_array_equal(det.decision_function(torch.from_numpy(x32)),
                                  det.decision_function(x32.astype(np.float64)))
    # a row's score does not depend on the rows scored with it (float32 rounding aside)
    one_by_one = np.concatenate([det.decision_function(X[i : i + 1]) for i in range(len(X))])
    np.testing.assert_allclose(one_by_one, want, rtol=1e-5)
    np.testing.assert_allclose(det.decision_function(X[::-1]), want[::-1], rtol=1e-5)


def test_dataframe_columns_become_feature_names():
    X = table(200, 3, d=4)
    frame = FrameLike(X, ["a", "b", "c", "d"])
    det = Detector(random_state=0, **{**FAST, "epochs": 2}).fit(frame)
    assert det.feature_names_ == ["a", "b", "c", "d"] and list(det.feature_names_in_) == ["a", "b", "c", "d"]
    assert det.explain(frame)["feature_names"] == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(det.decision_function(X), det.decision_function(frame))
    with pytest.raises(DataError, match=r"X has the columns 'a', 'x', 'c', 'd', but the detector was fitted on "
                                        r"'a', 'b', 'c', 'd'"):
        det.decision_function(FrameLike(X, ["a", "x", "c", "d"]))


def test_images_one_digit_normal_the_others_anomalous(digits, tmp_path):
    normal = digits.x_train[digits.y_train == 0]  # torch tensor (N, 1, 8, 8) in [0, 1]
    det = Detector(random_state=0, epochs=30, batch_size=32).fit(normal)
    assert (det.kind_, det.input_shape_, det.n_features_in_) == ("image", (1, 8, 8), 64)
    scores = det.decision_function(digits.x_test)
    assert roc_auc_score((digits.y_test != 0).numpy(), scores) > 0.85
    # (N, H, W) and uint8 images are read as the same images
    x = digits.x_test[:20]
    as_uint8 = (x * 255).round().to(torch.uint8)
    np.testing.assert_array_equal(det.decision_function(x[:, 0].numpy()), det.decision_function(x))
    np.testing.assert_allclose(det.decision_function(as_uint8), det.decision_function(as_uint8.float() / 255),
                               rtol=1e-6)
    maps = det.explain(x, png=tmp_path / "maps.png")
    assert maps["maps"].shape == (20, 8, 8) and maps["reconstruction"].shape == (20, 1, 8, 8)
    # the parts sum to the members' mean raw score (cross-fitted: 2 members, whose normalized scores are averaged)
    raw = det.scorer().raw_model_units(det._model_input(x)).mean(0).numpy()
    np.testing.assert_allclose(maps["maps"].sum(axis=(1, 2)) + maps.get("code_distance", 0.0), raw, rtol=1e-5)
    assert (tmp_path / "maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DataError, match=r"images of shape \(1, 6, 6\), but the detector was fitted on images of "
                                        r"shape \(1, 8, 8\)"):
        det.decision_function(np.zeros((3, 6, 6)))
    with pytest.raises(DataError, match=r"fitted on images of shape \(1, 8, 8\)"):
        det.decision_function(np.zeros((3, 64)))


def test_explain_splits_the_score_by_feature(planted):
    X, _, det = planted
    out = det.explain(X[:30])
    assert out["contributions"].shape == (30, 8) and out["feature_names"] == det.feature_names_
    np.testing.assert_allclose(out["contributions"].sum(1) + out["code_distance"], det.decision_function(X[:30]),
                               rtol=1e-5)
    std = np.asarray(det.data_spec_.stats["std"])
    # with the diagonal residual model the joint score's parts are squared errors in units of each feature's own
    # typical error (the default's residual model: tests/test_residual_model.py)
    flat = Detector(random_state=0, residual_rank=0, folds=1, **FAST).fit(X)
    parts = flat.explain(X[:30])
    sigma = flat.joint_[0].sigma
    np.testing.assert_allclose(parts["contributions_user_units"], parts["contributions"] * sigma**2 * std**2)
    # the reconstruction is in the user's units: its squared error there is contributions_user_units
    np.testing.assert_allclose((X[:30] - out["reconstruction"]) ** 2, out["contributions_user_units"], rtol=1e-3,
                               atol=1e-6)
    with pytest.raises(ValueError, match="images"):
        det.explain(X[:3], png="x.png")


# --- calibration ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated_setup():
    det = Detector(random_state=0, **{**FAST, "epochs": 5}).fit(table(500, 10))
    return det, table(2000, 11), table(5000, 12)


@pytest.mark.parametrize("fpr", [0.05, 0.01])
def test_calibrated_false_positive_rate_is_the_target(calibrated_setup, fpr):
    det, cal, test = calibrated_setup
    det = pickle.loads(pickle.dumps(det)).calibrate(cal, fpr=fpr)
    n = len(cal)
    k = math.ceil((n + 1) * (1 - fpr) - 1e-9)
    assert det.threshold_ == np.sort(det.decision_function(cal))[k - 1]
    assert det.calibration_scores_.shape == (n,)
    observed = det.predict(test).mean()
    # sampling error of the test points and of the calibration set
    sd = math.sqrt(fpr * (1 - fpr) * (1 / len(test) + 1 / n))
    assert abs(observed - fpr) < 3 * sd, (observed, fpr, sd)
    # p-values of normal data are uniform; predict flags exactly those with p <= fpr
    p = det.predict_pvalue(test)
    assert p.min() >= 1 / (n + 1) and p.max() <= 1
    assert stats.kstest(p, "uniform").pvalue > 0.001
    np.testing.assert_array_equal((p <= fpr).astype(int), det.predict(test))
    # anomalies get small p-values
    assert np.median(det.predict_pvalue(outliers(200, 13))) < 0.01


def test_calibration_errors(calibrated_setup):
    det, cal, _ = calibrated_setup
    det = clone(det).fit(cal[:300])
    with pytest.raises(NotCalibratedError, match=r"call calibrate\(X_normal, fpr=\.\.\.\) first"):
        det.predict_pvalue(cal[:5])
    with pytest.raises(DataError, match="50 normal sample.* too few .* at least 99 are needed"):
        det.calibrate(cal[:50], fpr=0.01)
    det.calibrate(cal[:99], fpr=0.01)  # exactly enough: the threshold is the largest score
    assert det.threshold_ == det.calibration_scores_.max()
    with pytest.raises(ValueError, match=r"calibrate\(fpr=1.5\): expected a number in \(0, 1\)"):
        det.calibrate(cal, fpr=1.5)
    det.fit(cal[:100])  # a new fit forgets the calibration
    assert det.threshold_ == pytest.approx(np.percentile(det.decision_scores_, 90))
    with pytest.raises(NotCalibratedError):
        det.predict_pvalue(cal[:5])


# --- bad input ---------------------------------------------------------------------------------------------


def test_bad_input_is_one_clear_error(planted):
    X, _, det = planted
    with pytest.raises(DataError, match="X has 5 features, but Detector is expecting 8 features as input"):
        det.predict(X[:, :5])
    bad = X[:10].copy()
    bad[3, 2] = np.nan
    with pytest.raises(DataError, match=r"non-finite.*first at row 3, column 2"):
        det.decision_function(bad)
    bad[3, 2] = np.inf
    with pytest.raises(DataError, match=r"first at row 3"):
        Detector(**FAST).fit(bad)
    with pytest.raises(DataError, match="no samples"):
        det.decision_function(np.empty((0, 8)))
    with pytest.raises(DataError, match="no samples"):
        Detector().fit([])
    with pytest.raises(DataError, match="Reshape your data"):
        det.predict(X[0])
    with pytest.raises(TypeError, match="sparse"):
        import scipy.sparse

        det.predict(scipy.sparse.csr_matrix(X[:3]))


@pytest.mark.parametrize("params, match", [
    (dict(model="cvae"), r"model='cvae'\) needs class labels.*choose one of ae, dae, sae, cae, vae, iwae, aae"),
    (dict(model="aae", model_options={"prior": "mixture", "supervised": True}), "needs class labels"),
    (dict(model="nope"), "unknown model 'nope'"),
    (dict(contamination=0.7), r"contamination=0.7\): expected a number in \(0, 0.5\]"),
    (dict(contamination=0), r"contamination=0\)"),
    (dict(anomaly_score="neg_elbo"), "needs a probabilistic model"),
    (dict(anomaly_score="likelihood"), "choose one of 'auto', 'joint', 'recon_error', 'neg_elbo'"),
    (dict(model_options={"latent_dim": 3}), r"'latent_dim' is set by Detector\(latent_dim=...\)"),
    (dict(model_options={"noise": "mask"}), "unknown option.*noise"),
    (dict(n_estimators=0), r"n_estimators=0\): expected an integer >= 1"),
    (dict(epochs=2.5), r"epochs=2.5\): expected an integer >= 1 or None"),
    (dict(lr=-1.0), "lr"),
    (dict(preprocessing="robust"), "choose one of 'standard', 'minmax', 'none'"),
    (dict(novelty="yes"), r"novelty='yes'\): expected True or False"),
    (dict(folds=9), r"folds=9\): X has 40 distinct rows, too few for 9 folds .* or folds <= 8"),
    (dict(folds=10**9), r"too few for 1000000000 folds"),  # refused before a seed per member is drawn
])
def test_bad_parameters_are_refused_by_fit(params, match):
    det = Detector(**{**FAST, "epochs": 1, **params})
    with pytest.raises(ValueError, match=match):
        det.fit(table(40, 0))


def test_model_options_reach_the_family():
    det = Detector(model="dae", model_options={"noise": "mask", "noise_level": 0.2}, random_state=0,
                   **{**FAST, "epochs": 2}).fit(table(100, 0))
    cfg = det.models_[0].config
    assert (cfg.noise, cfg.noise_level, cfg.hidden, cfg.latent_dim) == ("mask", 0.2, (32,), 4)  # 8 features // 2
    vae = Detector(model="vae", random_state=0, **{**FAST, "epochs": 2}).fit(table(100, 0))
    assert vae.anomaly_score_ == "joint"  # "auto" is the joint score for every family
    np.testing.assert_array_equal(vae.decision_function(table(20, 1)), vae.decision_function(table(20, 1)))


def test_default_budget_and_preprocessing():
    X = table(300, 4)
    det = Detector(random_state=0).fit(X)  # a table: ~100 steps in <= 10 epochs, no early stopping, best epoch kept
    # cross-fitted: 2 members, each on one fold (150 rows: 135 to train, 2 steps per epoch: 10 epochs, 20 steps)
    assert len(det.models_) == 2 and det.normalization_.shape == (2, 2)
    assert det.neighbors_ == 0 and det.references_ is None  # the neighbour term is an option (round 2)
    assert det.train_config_.epochs == 10 and det.train_config_.patience == 0
    cfg = det.models_[0].config
    assert len(det.history_) == 10 and (cfg.latent_dim, cfg.hidden) == (4, (64, 64))  # code: 8 features // 2
    # novelty=True (rows known to be normal, round 9): ~250 steps, no epoch cap; the same rows otherwise
    novel = Detector(random_state=0, novelty=True).fit(X)
    assert novel.train_config_.epochs == 125 and len(novel.models_) == 2 and novel.get_params()["novelty"]
    mid = Detector(random_state=0, hidden=(8,)).fit(table(6000, 4))  # 2700 rows to train a member: 22 steps
    assert mid.train_config_.epochs == 5  # an epoch, round(100 / 22) < 10
    assert Detector(random_state=0, hidden=(8,), novelty=True, **{"epochs": 3}).fit(
        table(600, 4)).train_config_.epochs == 3  # an explicit epochs wins
    assert det.anomaly_score_ == "joint"
    big = Detector(random_state=0, hidden=(8,), latent_dim=2).fit(table(30000, 4))  # 211 steps per epoch
    assert big.train_config_.epochs == 1
    mm = Detector(preprocessing="minmax", random_state=0, **{**FAST, "epochs": 1}).fit(X)
    np.testing.assert_allclose(mm.data_spec_.stats["mean"], X.min(0), rtol=1e-6)
    np.testing.assert_allclose(mm.data_spec_.stats["std"], X.max(0) - X.min(0), rtol=1e-6)
    tiny = Detector(random_state=0, **{**FAST, "epochs": 1}).fit(X[:5])  # too few rows for a validation part
    assert tiny.data_spec_.val_fraction == 0.0 and tiny.decision_scores_.shape == (5,)


def test_ensemble_and_robust_training(planted):
    X, y, _ = planted
    ens = Detector(n_estimators=3, folds=1, contamination=0.05, random_state=0, anomaly_score="recon_error",
                   **{**FAST, "epochs": 8}).fit(X)  # folds=1: every member on every row
    assert len(ens.models_) == 3 and ens.normalization_.shape == (3, 2)
    assert roc_auc_score(y, ens.decision_scores_) > 0.9
    # each member's training scores, normalized by their median and IQR, averaged
    raw = np.stack([aekit.metrics.anomaly_scores(m, ens._model_input(X))["recon_error"].double().numpy()
                    for m in ens.models_])
    q1, med, q3 = np.percentile(raw, [25, 50, 75], axis=1)
    np.testing.assert_allclose(ens.decision_scores_, ((raw - med[:, None]) / (q3 - q1)[:, None]).mean(0),
                               rtol=1e-5, atol=1e-6)
    rob = Detector(robust=True, contamination=0.05, random_state=0, **{**FAST, "epochs": 8}).fit(X)
    assert roc_auc_score(y, rob.decision_scores_) > 0.9
    assert rob.decision_scores_.shape == (len(X),)
    assert rob.data_spec_.stats != ens.data_spec_.stats  # statistics of the rows that were kept


def test_cross_fitting_scores_each_training_row_with_the_member_that_did_not_train_on_it(tmp_path):
    n = 3 * (aekit.adapt.INNER_MAX_DISTINCT + 1)  # folds large enough for in-sample statistics (no inner folds)
    X = table(n, 3)
    X = np.vstack([X, X[:40]])  # duplicated rows, as ADBench's resampling of small sets makes them
    det = Detector(random_state=0, folds=3, neighbors=0, **{**FAST, "epochs": 3}).fit(X)
    assert len(det.models_) == 3 and len(det.joint_) == 3
    folds = aekit.adapt.fold_ids(X, 3, det.seeds_[0])
    np.testing.assert_array_equal(folds[:40], folds[n:])  # a row and its copies share a fold
    assert sorted(np.bincount(folds[:n])) == [n // 3] * 3
    x = det._model_input(X)
    member = []
    for k, (model, js) in enumerate(zip(det.models_, det.joint_)):
        z = aekit.metrics.codes(model, x).double().numpy()
        r = (x - aekit.metrics.reconstructions(model, x)).double().numpy()
        d = z - js.mu  # the residual model's own term is checked in tests/test_residual_model.py
        raw = np.einsum("ij,jk,ik->i", d, js.prec, d) + js.residual_terms(r, z).sum(1)
        member.append((raw - det.normalization_[k, 0]) / det.normalization_[k, 1])
        # the training rows of fold k are scored by member k alone, with statistics fitted on fold k
        np.testing.assert_allclose(det.decision_scores_[folds == k], member[k][folds == k], rtol=1e-5, atol=1e-6)
        med = np.median(raw[folds == k])
        assert abs(med - det.normalization_[k, 0]) < 1e-6 * max(1.0, abs(med))
    np.testing.assert_allclose(det.decision_function(X), np.mean(member, axis=0), rtol=1e-5, atol=1e-6)
    back = Detector.load(det.save(tmp_path / "det"))
    np.testing.assert_array_equal(back.decision_function(X[:20]), det.decision_function(X[:20]))


def test_the_neighbour_term_against_scikit_learn(tmp_path):
    """neighbors=k: each member adds the distance of a row's code to the k-th nearest code of the rows it trained
    on (scikit-learn's NearestNeighbors here), normalized by median and IQR over its held-out fold."""
    from sklearn.neighbors import NearestNeighbors

    X = table(2 * aekit.adapt.INNER_MAX_DISTINCT + 10, 5)  # folds without inner folds (in-sample statistics)
    X = np.vstack([X, X[:30]])  # duplicated rows stay in one fold
    det = Detector(random_state=0, folds=2, neighbors=7, **{**FAST, "epochs": 3}).fit(X)
    folds = aekit.adapt.fold_ids(X, 2, det.seeds_[0])
    x = det._model_input(X)
    rows, train_scores = [], np.zeros(len(X))
    for k, (model, js) in enumerate(zip(det.models_, det.joint_)):
        z = aekit.metrics.codes(model, x).double().numpy()
        r = (x - aekit.metrics.reconstructions(model, x)).double().numpy()
        d = z - js.mu
        joint = np.einsum("ij,jk,ik->i", d, js.prec, d) + js.residual_terms(r, z).sum(1)
        seen = folds != k
        np.testing.assert_allclose(det.references_[k], z[seen], rtol=1e-6, atol=1e-7)
        knn = NearestNeighbors(n_neighbors=7).fit(z[seen]).kneighbors(z)[0][:, -1]
        for j, raw in enumerate((joint, knn)):
            med, iqr = det.normalization_[2 * k + j]
            q1, q2, q3 = np.percentile(raw[~seen], [25, 50, 75])
            assert abs(med - q2) < 1e-6 * max(1.0, abs(q2)) and abs(iqr - (q3 - q1)) < 1e-6 * max(1.0, iqr)
            rows.append((raw - med) / iqr)
        train_scores[~seen] = (rows[-2][~seen] + rows[-1][~seen]) / 2
    np.testing.assert_allclose(det.decision_scores_, train_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(det.decision_function(X), np.mean(rows, axis=0), rtol=1e-5, atol=1e-6)
    back = Detector.load(det.save(tmp_path / "det"))
    assert back.neighbors_ == 7
    np.testing.assert_array_equal(back.decision_function(X[:20]), det.decision_function(X[:20]))
    for kw in ({"model": "vae", "anomaly_score": "neg_elbo"}, {"anomaly_score": "recon_error"}, {"robust": True}):
        other = Detector(random_state=0, neighbors=4, **{**FAST, "epochs": 2}, **kw).fit(X)  # every score has it
        assert other.normalization_.shape == (4, 2) and np.isfinite(other.decision_function(X[:10])).all(), kw
    with pytest.raises(aekit.errors.ConfigError, match="needs cross-fitting"):
        Detector(folds=1, neighbors=5, **{**FAST, "epochs": 1}).fit(X)
    for bad in (-1, 2.5, True, "auto", 1001):
        with pytest.raises(aekit.errors.ConfigError, match="neighbors"):
            Detector(neighbors=bad).fit(X)


def test_the_threshold_holds_on_unseen_rows_of_a_tiny_table():
    """90 rows of 13 features: with the statistics of the rows the network trained on (folds=1; 150 steps, the
    budget of issue 18's report) the contamination threshold flags most unseen normal rows; with the defaults
    (cross-fitted), about the contamination."""
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(13, 13))
    train, new = rng.normal(size=(90, 13)) @ mix, rng.normal(size=(400, 13)) @ mix
    old = Detector(folds=1, latent_dim=16, epochs=150, contamination=0.05, random_state=0).fit(train)
    det = Detector(contamination=0.05, random_state=0).fit(train)
    assert len(det.models_) == 2 and old.predict(new).mean() > 0.2  # 4x the contamination
    assert det.predict(new).mean() < 0.15


def test_on_a_small_fold_each_training_row_is_scored_by_statistics_fitted_without_it():
    """A fold of at most INNER_FOLDS distinct rows: each training row's score (decision_scores_, the threshold's
    rows) comes from joint statistics fitted on the fold's other distinct rows (leave one out: a row's copies
    left out with it); the normalization and new rows' scores from statistics of the whole fold."""
    k = aekit.adapt.INNER_FOLDS
    X = table(2 * k, 4)
    X = np.vstack([X, X[:6], X[:3]])  # copies
    det = Detector(random_state=0, folds=2, **{**FAST, "epochs": 3}).fit(X)
    folds = aekit.adapt.fold_ids(X, 2, det.seeds_[0])
    x = det._model_input(X)
    _, ids = np.unique(X, axis=0, return_inverse=True)
    ids = ids.reshape(-1)
    for f, (model, js) in enumerate(zip(det.models_, det.joint_)):
        fold = np.flatnonzero(folds == f)
        z = aekit.metrics.codes(model, x[fold]).double().numpy()
        r = (x[fold] - aekit.metrics.reconstructions(model, x[fold])).double().numpy()
        med, iqr = det.normalization_[f]
        assert abs(np.median(js.score(z, r)) - med) < 1e-6 * max(1.0, abs(med))  # the whole fold's statistics
        for i, row in enumerate(fold):
            without = ids[fold] != ids[row]
            loo = aekit.scoring.JointStats.fit(z[without], r[without], floor=1e-3, rank=det.residual_rank_,
                                               regression=js.regression)  # the fold's own decision
            expected = (loo.score(z[i:i + 1], r[i:i + 1])[0] - med) / iqr
            assert det.decision_scores_[row] == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_inner_folds_with_the_neighbour_term_and_robust_training():
    """On small folds the out-of-sample joint term sits beside the neighbour term (unchanged: its references are
    the member's training rows), and robust=True drops rows by those scores."""
    X = table(40, 6)
    for kw in ({"neighbors": 3}, {"robust": True, "contamination": 0.1}):
        det = Detector(random_state=0, **{**FAST, "epochs": 2}, **kw).fit(X)
        assert len(det.models_) == 2 and np.isfinite(det.decision_scores_).all() and np.isfinite(det.threshold_)
        assert det.normalization_.shape == ((4 if "neighbors" in kw else 2), 2)
        assert np.isfinite(det.decision_function(table(5, 7))).all()


def test_inner_folds_and_out_of_fold():
    inner, top = aekit.adapt.inner_folds, aekit.adapt.INNER_MAX_DISTINCT
    assert [inner(1), inner(2), inner(7), inner(top), inner(top + 1)] == [1, 2, 7, aekit.adapt.INNER_FOLDS, 1]
    rows = np.repeat(np.arange(12.0), 3)[:, None]  # 12 distinct rows, 3 copies each
    # fit on a mask, score the other rows: here the largest value fitted on, which never is a test row's copy
    folds = aekit.adapt.fold_ids(rows, 4, 0)
    out = aekit.adapt.out_of_fold(folds, lambda fit, test: np.full(test.sum(), rows[fit].max()))
    for i in range(len(rows)):
        assert out[i] == rows[folds != folds[i]].max()
        assert rows[i, 0] not in rows[folds != folds[i], 0]


def test_distinct_ids_are_np_uniques_inverse():
    """adapt.distinct_ids (hashes, then a column-by-column sort of the tied rows) numbers rows as np.unique(axis=0)
    does, so the folds are the same: ties over many columns, copies, -0.0 beside 0.0, float32 and float64, images;
    anything else (integers, a non-finite value) goes to np.unique itself."""
    rng = np.random.default_rng(0)

    def ref(a):
        return np.unique(a.reshape(len(a), -1), axis=0, return_inverse=True)[1].reshape(-1)

    cases = []
    for _ in range(60):
        n, d = int(rng.integers(2, 80)), int(rng.integers(1, 14))
        binary = (rng.random((n, d)) < rng.uniform(0.02, 0.5)).astype(rng.choice([np.float32, np.float64]))
        binary[rng.random((n, d)) < 0.1] *= -0.0  # some -0.0: equal to 0.0
        normal = rng.normal(size=(n, d))
        cases += [binary, np.vstack([normal, normal[: n // 2], -0.0 * normal[:3]])[rng.permutation(n + n // 2 + 3)]]
    cases += [np.asfortranarray(cases[0]), cases[1][:, ::-1], cases[2].astype(np.float16)]  # views, half floats
    cases += [rng.integers(0, 3, size=(40, 3)), np.array([[0.0, np.inf], [1.0, 2.0], [0.0, np.inf]]),
              (rng.random((30, 1, 4, 4)) < 0.1).astype(np.float32), np.zeros((1, 3)), np.ones((5, 1))]
    for a in cases:
        assert (aekit.adapt.distinct_ids(a) == ref(a)).all(), a
        assert aekit.adapt.n_distinct(a) == len(np.unique(a.reshape(len(a), -1), axis=0))
    # rows of 0s and 1s over many columns (InternetAds) share no hash, so they never take np.unique's slow path
    wide = (rng.random((400, 300)) < 0.05).astype(np.float64)
    wide = np.vstack([wide, wide[:50]])
    for a in (wide, wide.astype(np.float32)):
        assert aekit.adapt._equal_rows(a)[0] is not None
        assert (aekit.adapt.distinct_ids(a) == ref(a)).all()


def test_cross_fitting_from_ten_distinct_rows():
    """folds="auto": 2 folds from 2 x MIN_FOLD_ROWS distinct rows (copies count once), 1 below; on 12 rows the
    cross-fitted threshold flags far fewer unseen normal rows than one member's (which scores rows it trained on)."""
    n_folds, least = aekit.adapt.n_folds, 2 * aekit.adapt.MIN_FOLD_ROWS
    assert least == 10
    rows = np.arange(30.0).reshape(-1, 1)
    assert n_folds("auto", rows[:least], "table") == 2 and n_folds("auto", rows[:least - 1], "table") == 1
    assert n_folds("auto", np.vstack([rows[:least - 1]] * 3), "table") == 1 and n_folds(3, rows[:2], "table") == 3
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(4, 4))
    flagged = {1: [], "auto": []}
    for seed in range(6):
        train, new = rng.normal(size=(12, 4)) @ mix, rng.normal(size=(1000, 4)) @ mix
        for folds in flagged:
            det = Detector(contamination=0.05, random_state=seed, folds=folds).fit(train)
            assert len(det.models_) == (1 if folds == 1 else 2)
            flagged[folds].append(det.predict(new).mean())
    assert np.mean(flagged["auto"]) < 0.1 and np.mean(flagged[1]) > 2 * np.mean(flagged["auto"]), flagged
    # (0.04 and 0.19 here)
    with pytest.warns(UserWarning, match=r"X has 9 distinct rows, too few to cross-fit .*Detector.calibrate"):
        Detector(**{**FAST, "epochs": 1}).fit(np.vstack([train[:9], train[:3]]))  # (copies count once)


def test_the_threshold_holds_on_unseen_rows_of_smaller_tables():
    """25-40 rows: with each training row's statistics fitted on the fold's other rows (adapt.inner_folds), the
    contamination threshold flags about the contamination of unseen normal rows; with in-sample statistics it
    flagged 8-17% of them here (10-25% on ADBench's small sets; benchmarks/README.md)."""
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(13, 13)) / 4
    rows = rng.normal(size=(3000, 13)) @ mix
    flagged = []
    for n, seed in ((25, 0), (40, 1), (40, 2), (40, 3)):
        order = np.random.default_rng(100 + seed).permutation(len(rows))
        det = Detector(contamination=0.05, random_state=seed).fit(rows[order[:n]])
        flagged.append(det.predict(rows[order[n:]]).mean())
    assert np.mean(flagged) < 0.08 and max(flagged) < 0.12, flagged


# --- randomness and the scikit-learn contract --------------------------------------------------------------


def test_random_state():
    X = table(150, 5)
    kw = {**FAST, "epochs": 2}
    a, b = Detector(**kw).fit(X), Detector(**kw).fit(X)
    assert not np.allclose(a.decision_scores_, b.decision_scores_)  # None: a new draw every fit (pyod #750)
    c, d = Detector(random_state=7, **kw).fit(X), Detector(random_state=7, **kw).fit(X)
    np.testing.assert_array_equal(c.decision_scores_, d.decision_scores_)
    assert c.get_params()["random_state"] == 7
    e = Detector(random_state=np.random.RandomState(7), **kw).fit(X)
    f = Detector(random_state=np.random.RandomState(7), **kw).fit(X)
    np.testing.assert_array_equal(e.decision_scores_, f.decision_scores_)
    # the same estimator refitted: an int repeats, None does not
    np.testing.assert_array_equal(c.fit(X).decision_scores_, d.decision_scores_)
    assert not np.allclose(a.fit(X).decision_scores_, b.decision_scores_)


def test_params_clone_and_pickle(planted):
    X, _, det = planted
    params = det.get_params()
    assert params["contamination"] == 0.05 and params["hidden"] == (32,) and params["model"] == "ae"
    fresh = clone(det)
    assert fresh.get_params() == params and not hasattr(fresh, "models_")
    fresh.set_params(latent_dim=3, model_options={"activation": "tanh"})
    assert fresh.latent_dim == 3 and det.latent_dim is None
    unfitted = Detector(contamination=5.0)  # __init__ only stores: the check comes with fit
    assert unfitted.contamination == 5.0
    with pytest.raises(Exception, match="not fitted"):
        unfitted.predict(X)
    again = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(again.decision_function(X[:20]), det.decision_function(X[:20]))
    assert again.threshold_ == det.threshold_


def test_pipeline_and_grid_search(planted):
    X, y, _ = planted
    pipe = Pipeline([("scale", StandardScaler()), ("det", Detector(random_state=0, **{**FAST, "epochs": 5}))])
    pipe.fit(X)
    assert roc_auc_score(y, pipe.decision_function(X)) > 0.9
    assert pipe.predict(X).shape == (len(X),)
    search = GridSearchCV(Detector(random_state=0, **{**FAST, "epochs": 3}), {"latent_dim": [2, 3]},
                          scoring="roc_auc", cv=KFold(2, shuffle=True, random_state=0))
    search.fit(X, y)  # y only feeds the scorer; the detector ignores it
    assert search.best_params_["latent_dim"] in (2, 3) and search.best_score_ > 0.85


# --- persistence ---------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(planted, tmp_path, cli):
    X, y, det = planted
    det = pickle.loads(pickle.dumps(det)).calibrate(table(300, 20), fpr=0.02)
    path = det.save(tmp_path / "det")
    back = Detector.load(path)
    np.testing.assert_array_equal(back.decision_function(X), det.decision_function(X))
    np.testing.assert_array_equal(back.decision_scores_, det.decision_scores_)
    np.testing.assert_array_equal(back.calibration_scores_, det.calibration_scores_)
    np.testing.assert_array_equal(back.labels_, det.labels_)
    assert back.threshold_ == det.threshold_ and back.get_params() == det.get_params()
    np.testing.assert_array_equal(back.predict_pvalue(X[:50]), det.predict_pvalue(X[:50]))
    np.testing.assert_allclose(back.predict_confidence(X[:50]), det.predict_confidence(X[:50]))
    # an aekit run: Run.open reads it, and `aekit eval` evaluates it on data in the same columns
    run = aekit.Run.open(path)
    assert run.model_name == "ae" and run.data.stats == det.data_spec_.stats
    assert aekit.Run.why_not_removable(path) is None  # nothing in it but aekit's own files
    np.save(tmp_path / "new.npy", X)
    code, out, err = cli("eval", path, "--dataset", tmp_path / "new.npy", "--json")
    assert code == 0, err
    assert "mse" in out


def test_save_and_load_an_ensemble(tmp_path):
    X = table(200, 6)
    det = Detector(n_estimators=2, random_state=0, **{**FAST, "epochs": 2}).fit(X)
    back = Detector.load(det.save(tmp_path / "ens"))
    assert len(back.models_) == 4  # 2 members on each of the 2 folds
    np.testing.assert_array_equal(back.decision_function(X), det.decision_function(X))
    np.testing.assert_array_equal(back.normalization_, det.normalization_)
    assert back.threshold_ == det.threshold_


def test_load_a_plain_run_of_aekit_train(tmp_path, cli):
    X = table(300, 7)
    np.save(tmp_path / "data.npy", X)
    code, _, err = cli("train", "ae", "--dataset", tmp_path / "data.npy", "--epochs", 2, "--latent-dim", 2,
                       "--out", tmp_path / "run")
    assert code == 0, err
    det = Detector.load(tmp_path / "run")
    run = aekit.Run.open(tmp_path / "run")
    model, ds = run.model(), run.dataset()
    want = aekit.metrics.anomaly_scores(model, ds.x_test)["recon_error"].numpy()
    user_rows = ds.to_user_units(ds.x_test).double().numpy()  # the rows as the user has them
    np.testing.assert_allclose(det.decision_function(user_rows), want, rtol=1e-4, atol=1e-5)
    assert det.threshold_ is None and det.decision_scores_ is None
    with pytest.raises(NotCalibratedError, match=r"no threshold.*calibrate\(X_normal, fpr=\.\.\.\)"):
        det.predict(X)
    det.calibrate(table(200, 8), fpr=0.05)
    assert det.predict(X).shape == (300,)
    assert det.predict_proba(X[:4]).shape == (4, 2)
    with pytest.raises(aekit.RunError, match="not empty"):
        det.save(tmp_path / "run")


def test_a_damaged_detector_state_is_one_run_error(tmp_path):
    det = Detector(n_estimators=2, random_state=0, **{**FAST, "epochs": 1}).fit(table(100, 9))
    path = det.save(tmp_path / "det")
    good = (path / "detector.safetensors").read_bytes()
    for change in ({"score": "magic"}, {"n_members": 3}, {"threshold_from": "calibration"}, {"params": "x"},
                   {"normalization": None}, {"n_decision_scores": 7}, {"params": {"colour": 1}},
                   {"n_calibration_scores": 10**15}, {"n_members": 10**15}, {"n_members": "many"},
                   {"neighbors": 3}, {"neighbors": -1, "n_references": [5, 5, 5, 5]},
                   {"neighbors": 3, "n_references": [10**15] * 4}):
        (path / "detector.safetensors").write_bytes(good)
        rewrite_state(path, change)
        with pytest.raises(aekit.RunError, match="detector"):
            Detector.load(path)
    # the neighbour term: reference codes that do not match what the state announces
    det = Detector(random_state=0, neighbors=3, **{**FAST, "epochs": 1}).fit(table(100, 9))
    path = det.save(tmp_path / "knn")
    good = (path / "detector.safetensors").read_bytes()
    from safetensors.torch import load_file

    tensors = load_file(path / "detector.safetensors")
    for change, damaged in (({"n_references": [len(det.references_[0]) + 1, len(det.references_[1])]}, None),
                            (None, {**tensors, "reference1": tensors["reference1"][:, :1].contiguous()}),
                            (None, {k: v for k, v in tensors.items() if k != "reference0"}),
                            (None, {**tensors, "reference0": tensors["reference0"] * float("nan")})):
        (path / "detector.safetensors").write_bytes(good)
        rewrite_state(path, change, damaged)
        with pytest.raises(aekit.RunError, match="reference codes"):
            Detector.load(path)


# --- the joint score ---------------------------------------------------------------------------------------


def test_joint_score_is_minus_two_log_likelihood(planted):
    """score(x) = -2 log p(x) + const under code ~ N(mu, S), x | code ~ N(g(code) + sigma * (m + A'(code - mu)),
    Sigma) with Sigma = diag(sigma) C diag(sigma), C the residual model (rank q: V diag(lam) V' + noise (I - V V');
    q = 0: the identity, and no code regression A): checked against scipy's densities with the fitted statistics,
    for the default and q = 0."""
    from scipy.stats import multivariate_normal

    from aekit.scoring import codes_and_residuals

    X, _, det = planted
    flat = Detector(contamination=0.05, random_state=0, folds=1, residual_rank=0, **FAST).fit(X)
    for d in (det, flat):
        stats = d.joint_[0]
        z, r = codes_and_residuals(d.models_[0], d._model_input(X[:40]))
        v = stats.basis
        c = v @ np.diag(stats.lam) @ v.T + stats.noise * (np.eye(len(stats.sigma)) - v @ v.T)
        cov = np.diag(stats.sigma) @ c @ np.diag(stats.sigma)
        shift = stats.sigma * ((z - stats.mu) @ stats.coef) if stats.regression else 0.0
        logp = multivariate_normal(stats.mu, np.linalg.pinv(stats.prec), allow_singular=True).logpdf(z) + \
            multivariate_normal(stats.sigma * stats.rmean, cov).logpdf(r - shift)
        scores = d.decision_function(X[:40])
        np.testing.assert_allclose(scores - scores[0], -2.0 * (logp - logp[0]), rtol=1e-6, atol=1e-6)
    assert det.joint_[0].rank == 7 and flat.joint_[0].rank == 0  # the default on 8 features: min(8, D - 1)
    assert det.joint_[0].regression and not flat.joint_[0].regression


def test_joint_statistics_resist_contamination():
    """The statistics refitted on the lowest-scoring 80% ignore a 10% cluster of far outliers."""
    from aekit.scoring import JointStats

    rng = np.random.default_rng(0)
    z = np.vstack([rng.normal(size=(900, 3)), rng.normal(size=(100, 3)) + 12.0])
    r = np.vstack([0.1 * rng.normal(size=(900, 5)), 3.0 * rng.normal(size=(100, 5))])
    plain, robust = JointStats.estimate(z, r, 1e-3), JointStats.fit(z, r)
    assert np.abs(plain.mu).max() > 1.0 and np.abs(robust.mu).max() < 0.15
    assert plain.sigma.min() > 0.5 and robust.sigma.max() < 0.12
    s = robust.score(z, r)
    assert s[900:].min() > s[:900].max()


def test_damaged_joint_statistics_are_one_run_error(planted, tmp_path):
    from safetensors.torch import load_file

    _, _, det = planted
    path = det.save(tmp_path / "det")
    tensors = load_file(path / "detector.safetensors")
    for name, value in (("joint0/sigma", None), ("joint0/prec", torch.zeros(3, 3, dtype=torch.float64)),
                        ("joint0/sigma", -torch.ones(8, dtype=torch.float64))):
        bad = {k: v for k, v in tensors.items() if k != name}
        if value is not None:
            bad[name] = value
        rewrite_state(path, tensors=bad)
        with pytest.raises(aekit.RunError, match="joint score's statistics"):
            Detector.load(path)


def test_novelty_statistics_are_untrimmed_and_the_threshold_still_holds():
    """novelty=True (round 10) fits a table's joint statistics once on every row; those fit the tails of their own
    fold, so every held-out fold scores its own rows out of (inner) fold, and the threshold holds on unseen normal
    rows: about 5% flagged here (15% with the untrimmed statistics' in-sample scores on these 100-row folds)."""
    stats = aekit.scoring.JointStats
    rng = np.random.default_rng(0)
    z, r = rng.normal(size=(200, 3)), rng.normal(size=(200, 5))
    z[:10] += 8.0  # a tail the trimmed refits drop, the untrimmed fit keeps
    np.testing.assert_allclose(stats.fit(z, r, refits=0).mu, z.mean(0))
    assert not np.allclose(stats.fit(z, r).mu, z.mean(0))
    assert aekit.adapt.inner_folds(400, math.inf) == aekit.adapt.INNER_FOLDS and aekit.adapt.inner_folds(400) == 1
    mix = rng.normal(size=(20, 20))
    flagged = []
    for seed in range(3):
        train, new = rng.normal(size=(200, 20)) @ mix, rng.normal(size=(2000, 20)) @ mix
        det = Detector(contamination=0.05, random_state=seed, novelty=True, hidden=(16,)).fit(train)
        flagged.append(det.predict(new).mean())
    assert 0.01 < np.mean(flagged) < 0.09, flagged
