"""The joint score's code histogram (scoring.JointStats with ``edges`` and ``logdens``): the code term as -2 sum_k
log h_k(z_k), h_k a histogram density of code value k. Checked against numpy's own histogram, through the Scorer's
graph, explain, a saved state and ONNX."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import aekit.scoring as scoring
from aekit import Detector
from aekit.scoring import JointStats, codes_and_residuals, histogram_terms
from detector_state import each_damage_fails, rewrite_state, round_trip

FAST = dict(epochs=2, hidden=(32,), batch_size=64)


def clusters(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Rows of two well separated clusters (codes of two modes)."""
    rng = np.random.RandomState(seed)
    return np.vstack([rng.randn(n // 2, d), rng.randn(n - n // 2, d) + 5.0])


def numpy_density(col: np.ndarray, at: float, bins: int) -> float:
    """The histogram density of ``at`` by np.histogram over col's range, with one more count per bin."""
    counts, edges = np.histogram(col, bins=bins, range=(col.min(), col.max()))
    j = min(max(int(np.searchsorted(edges, at, side="right")) - 1, 0), bins - 1)
    return (counts[j] + 1) / (len(col) + bins) / (edges[1] - edges[0])


def test_the_code_term_is_the_histogram_density_of_each_code_value():
    rng = np.random.RandomState(0)
    z = np.c_[rng.randn(400), rng.exponential(size=400), np.r_[rng.randn(200), rng.randn(200) + 6]]
    r = rng.randn(400, 5)
    st = JointStats.fit(z, r, refits=0, histogram=True)
    bins = max(scoring.HISTOGRAM_MIN_BINS, math.isqrt(400))
    assert st.histogram and st.edges.shape == (3, bins + 1) and st.logdens.shape == (3, bins)
    at = z[rng.choice(400, 30, replace=False)] * 0.999  # inside every range (away from the edges' ties)
    want = np.array([-2 * sum(math.log(numpy_density(z[:, k], a[k], bins)) for k in range(3)) for a in at])
    np.testing.assert_allclose(st.code_distance(at), want, rtol=1e-10)
    # the residual term is the diagonal model's, as without the histogram: only the code term changed
    plain = JointStats.fit(z, r, refits=0, histogram=False)
    np.testing.assert_allclose(st.score(at, r[:30]) - st.code_distance(at),
                               plain.score(at, r[:30]) - plain.code_distance(at), rtol=1e-12)
    # every density of a histogram integrates to 1 over its range
    widths = np.diff(st.edges, axis=1)
    np.testing.assert_allclose((np.exp(st.logdens) * widths).sum(1), 1.0, rtol=1e-12)


def test_a_code_outside_the_range_gets_the_emptiest_bin_and_a_gaussian_tail():
    z = np.linspace(0.0, 1.0, 101)[:, None]  # one code value, 101 rows on [0, 1]
    st = JointStats.fit(z, np.zeros((101, 2)) + np.linspace(0, 1, 101)[:, None], refits=0, histogram=True)
    bins = st.logdens.shape[1]
    width = 1.0 / bins
    low = -2 * (st.logdens.min() - math.log(2.0))
    for beyond in (0.5, 3.0):
        out = np.array([[1.0 + beyond * width], [0.0 - beyond * width]])
        np.testing.assert_allclose(st.code_distance(out), low + beyond**2, rtol=1e-10)
    # farther is never less likely, and the boundary rows are inside (their bins' densities)
    far = st.code_distance(np.array([[1.0 + 10 * width], [1.0 + 20 * width]]))
    assert far[1] > far[0] > low
    np.testing.assert_allclose(st.code_distance(np.array([[1.0]])), -2 * st.logdens[0, -1], rtol=1e-12)


def test_numpy_and_torch_compute_the_same_terms():
    rng = np.random.RandomState(1)
    z = rng.randn(300, 4) * [1.0, 0.1, 5.0, 1.0]
    st = JointStats.fit(z, rng.randn(300, 3), refits=0, histogram=True)
    at = np.vstack([z[:40], z[:10] * 4.0])  # some outside the ranges
    want = histogram_terms(at, st.edges, st.logdens)
    got = histogram_terms(torch.as_tensor(at), torch.as_tensor(st.edges), torch.as_tensor(st.logdens)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_a_constant_code_value_keeps_finite_scores():
    rng = np.random.RandomState(2)
    z = np.c_[rng.randn(200), np.full(200, 3.0)]
    st = JointStats.fit(z, rng.randn(200, 4), refits=0, histogram=True)
    assert (np.diff(st.edges, axis=1) > 0).all()
    assert np.isfinite(st.code_distance(np.c_[rng.randn(5), np.full(5, 3.5)])).all()


def fitted(monkeypatch, X, **kw):
    monkeypatch.setattr(scoring, "JOINT_CODE_HISTOGRAM", True)
    return Detector(random_state=0, **{**FAST, **kw}).fit(X)


def test_the_detector_tables_get_the_histogram_and_images_do_not(monkeypatch):
    X = clusters(300, 8)
    det = fitted(monkeypatch, X)
    assert [st.histogram for st in det.joint_] == [True, True]
    # the Scorer's graph, the numpy statistics and explain agree
    one = fitted(monkeypatch, X, folds=1)
    st = one.joint_[0]
    z, r = codes_and_residuals(one.models_[0], one.scorer().model_input(X[:40]))
    np.testing.assert_allclose(one.decision_function(X[:40]), st.score(z, r), rtol=1e-9)
    out = one.explain(X[:40])
    np.testing.assert_allclose(out["contributions"].sum(1) + out["code_distance"], one.decision_function(X[:40]),
                               rtol=1e-6)
    monkeypatch.setattr(scoring, "JOINT_CODE_HISTOGRAM", False)
    assert not any(s.histogram for s in Detector(random_state=0, **FAST).fit(X).joint_)
    monkeypatch.setattr(scoring, "JOINT_CODE_HISTOGRAM", True)
    images = np.random.RandomState(3).rand(60, 8, 8).astype(np.float32)
    assert not any(s.histogram for s in Detector(random_state=0, epochs=1).fit(images).joint_)


def test_a_saved_histogram_round_trips_and_damage_is_one_run_error(monkeypatch, tmp_path):
    X = clusters(200, 6, seed=4)
    back = round_trip(fitted(monkeypatch, X), tmp_path / "det", X)
    assert [st.histogram for st in back.joint_] == [True, True]
    path = tmp_path / "det"
    tensors = load_file(path / "detector.safetensors")
    bins = tensors["joint0/logdens"].shape[1]
    flipped = tensors["joint0/edges"].flip(1).contiguous()
    each_damage_fails(path, [({"code_histograms": [bins]}, None), ({"code_histograms": [bins, True]}, None),
                             ({"code_histograms": [bins, -1]}, None), ({"code_histograms": "yes"}, None),
                             ({"code_histograms": [bins + 1, bins]}, None),
                             (None, {k: v for k, v in tensors.items() if k != "joint1/edges"}),
                             (None, {k: v for k, v in tensors.items() if k != "joint0/logdens"}),
                             (None, {**tensors, "joint0/logdens": tensors["joint0/logdens"][:, :-1].contiguous()}),
                             (None, {**tensors, "joint0/edges": flipped}),
                             (None, {**tensors, "joint0/logdens": tensors["joint0/logdens"] * float("nan")})])
    # a state written before the histogram (format 6, no code_histograms) is read without it
    monkeypatch.setattr(scoring, "JOINT_CODE_HISTOGRAM", False)
    plain = Detector(random_state=0, **FAST).fit(X)
    old = plain.save(tmp_path / "old")
    rewrite_state(old, {"format": 6}, remove=("code_histograms",))
    again = Detector.load(old)
    assert not any(st.histogram for st in again.joint_)
    np.testing.assert_array_equal(again.decision_function(X[:25]), plain.decision_function(X[:25]))


def test_the_exported_scorer_keeps_the_histogram(monkeypatch, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    X = clusters(300, 8, seed=5)
    det = fitted(monkeypatch, X)
    assert all(st.histogram for st in det.joint_)
    det.export(tmp_path / "exp")
    sess = ort.InferenceSession(str(tmp_path / "exp" / "scorer.onnx"), providers=["CPUExecutionProvider"])
    x = np.vstack([X[:50], X[:10] + 8.0])  # codes outside the histograms' ranges too
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], det.decision_function(x), rtol=1e-5, atol=1e-8)
