"""aekit.scoring.Scorer: one module from raw rows to (score, p_value, is_outlier), the one every consumer uses."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import aekit
from aekit import ConfigError, DataError, Detector
from aekit.scoring import Scorer


def table(n: int, seed: int, d: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 2)) @ np.random.default_rng(1).normal(size=(2, d)) + 0.1 * rng.normal(size=(n, d))
            ) * 10.0 + 3.0


@pytest.fixture(scope="module")
def det():
    d = Detector(n_estimators=2, random_state=0, epochs=3, hidden=(8,), latent_dim=2).fit(table(300, 0))
    return d.calibrate(table(200, 1), fpr=0.05)


def test_the_module_and_the_numpy_api_give_the_detectors_numbers(det, tmp_path):
    X = table(50, 2)
    sc = det.scorer()
    out = sc.score(X)
    np.testing.assert_array_equal(out.score, det.decision_function(X))
    np.testing.assert_array_equal(out.p_value, det.predict_pvalue(X))
    np.testing.assert_array_equal(out.is_outlier, det.predict(X).astype(bool))
    with torch.no_grad():
        s, p, o = sc(torch.from_numpy(X))  # the module itself: one batch
    np.testing.assert_allclose(s.numpy(), out.score, rtol=1e-12)
    np.testing.assert_array_equal(o.numpy(), out.is_outlier)
    # p-values as predict_pvalue's definition says, counted independently
    cal = det.calibration_scores_
    np.testing.assert_array_equal(out.p_value, [(1 + np.sum(cal >= v)) / (len(cal) + 1) for v in out.score])
    back = Scorer.from_run(det.save(tmp_path / "d"))
    again = back.score(X)
    for a, b in zip(again, out):
        np.testing.assert_array_equal(a, b)
    assert (back.threshold_from, back.flag_rate, back.feature_names) == ("calibration", 0.05, det.feature_names_)


def test_a_plain_run_has_no_p_values_and_no_decisions(tmp_path, cli):
    np.save(tmp_path / "t.npy", table(200, 3))
    code, _, err = cli("train", "ae", "--dataset", tmp_path / "t.npy", "--epochs", 1, "--latent-dim", 2,
                       "--hidden", 8, "--quiet", "--out", tmp_path / "run")
    assert code == 0, err
    sc = Scorer.from_run(tmp_path / "run")
    out = sc.score(table(10, 4))
    assert sc.score_name == "recon_error" and out.p_value is None and out.is_outlier is None
    with torch.no_grad():
        _, p, o = sc(torch.from_numpy(table(4, 4)))
    assert torch.isnan(p).all() and not o.any()  # the module: NaN p-values, nothing flagged without a threshold
    ds = aekit.Run.open(tmp_path / "run").dataset()
    want = aekit.metrics.anomaly_scores(aekit.load(tmp_path / "run"), ds.x_test)["recon_error"].double().numpy()
    np.testing.assert_allclose(sc.score_model_units(ds.x_test), want, rtol=1e-12)


def test_codes_and_reconstructions_in_the_users_units(det):
    sc, X = det.scorer(), table(20, 5)
    z = sc.encode(X)
    assert z.shape == (20, 2)
    np.testing.assert_allclose(sc.decode(z), sc.reconstruct(X), rtol=1e-5, atol=1e-6)
    std, mean = np.asarray(det.data_spec_.stats["std"]), np.asarray(det.data_spec_.stats["mean"])
    first = det.models_[0].reconstruct(sc.model_input(X)).detach().double().numpy()
    np.testing.assert_allclose(sc.reconstruct(X), first * std + mean, rtol=1e-6)


def test_bad_rows_are_one_line(det):
    sc = det.scorer()
    with pytest.raises(DataError, match="X has 3 features, but the scorer is expecting 5"):
        sc.score(table(4, 0)[:, :3])
    bad = table(4, 0)
    bad[2, 1] = np.inf
    with pytest.raises(DataError, match="first at row 2, column 1"):
        sc.score(bad)
    with pytest.raises(ConfigError, match="score: choose one of"):
        Scorer(det.models_, kind="table", stats=None, score="likelihood")


def test_several_threads_share_one_scorer(det):
    sc, X = det.scorer(), table(300, 6)
    want = sc.score(X).score
    got, errors = [None] * 4, []

    def work(i):
        try:
            for _ in range(5):
                got[i] = sc.score(X).score
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for g in got:
        np.testing.assert_array_equal(g, want)
