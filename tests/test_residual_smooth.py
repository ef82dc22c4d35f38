"""Smoothed residual images in the image joint score (``Detector(residual_smooth=k)``,
``aekit.scoring.smooth_residuals``): the window mean against an explicit loop, the Detector's score against
numpy, explain, the saved state and its damage, the parameter's checks and its "auto" rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import aekit
from aekit import Detector, adapt, metrics
from aekit.scoring import smooth_residuals
from detector_state import rewrite_state

FAST = dict(epochs=2, batch_size=64, latent_dim=4)


def window_mean(r: np.ndarray, k: int) -> np.ndarray:
    """Each pixel of r (n, C, H, W) replaced by the mean of the pixels of its k x k window inside the image."""
    out = np.empty_like(r)
    h, w = r.shape[-2:]
    for i in range(h):
        for j in range(w):
            win = r[..., max(0, i - k // 2):i + k // 2 + 1, max(0, j - k // 2):j + k // 2 + 1]
            out[..., i, j] = win.mean(axis=(-2, -1))
    return out


def images(n: int, side: int = 16, seed: int = 0) -> np.ndarray:
    """Blobs at random places: normal images with structure, in [0, 1]."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:side, :side]
    cy, cx = rng.uniform(4, side - 4, size=(2, n))
    blob = np.exp(-((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) / 8.0)
    return np.clip(blob + 0.05 * rng.rand(n, side, side), 0, 1).astype(np.float32)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_the_window_mean_is_the_mean_of_the_pixels_inside_the_image(k):
    r = torch.from_numpy(np.random.RandomState(k).randn(2, 3, 7, 9))
    np.testing.assert_allclose(smooth_residuals(r, k).numpy(), window_mean(r.numpy(), k), rtol=1e-12)
    assert smooth_residuals(r, 1) is r


def test_the_detector_scores_the_smoothed_residuals():
    X = images(240)
    det = Detector(random_state=0, residual_smooth=3, **FAST).fit(X)
    assert det.residual_smooth_ == 3 and len(det.models_) == 2
    x = det._model_input(X[:30])
    raw = det.scorer().raw_model_units(x).numpy()
    for j, (m, st) in enumerate(zip(det.models_, det.joint_)):
        z = metrics.codes(m, x).flatten(1).double().numpy()
        r = (x - metrics.reconstructions(m, x)).numpy()
        want = st.code_distance(z) + ((window_mean(r, 3).reshape(30, -1) / st.sigma) ** 2).sum(1)
        np.testing.assert_allclose(raw[j], want, rtol=1e-5)
    # explain's parts are the smoothed residuals' (one member's parts and code term average to the raw scores')
    out = det.explain(X[:30])
    np.testing.assert_allclose(out["contributions"].reshape(30, -1).sum(1) + out["code_distance"], raw.mean(0),
                               rtol=1e-5)
    # and it changes the score: the same members without the window score otherwise
    plain = Detector(random_state=0, residual_smooth=1, **FAST).fit(X)
    assert plain.residual_smooth_ == 1
    assert not np.allclose(plain.decision_function(X[:30]), det.decision_function(X[:30]))


def test_the_auto_rule_and_bad_windows():
    assert adapt.residual_smooth("auto", "image", (1, 28, 28)) == adapt.IMAGE_RESIDUAL_SMOOTH
    assert adapt.residual_smooth("auto", "image", (3, 32, 32)) == adapt.IMAGE_RESIDUAL_SMOOTH
    assert adapt.residual_smooth("auto", "image", (1, 8, 8)) == 1  # digits: a 3 x 3 window is 3/8 of the side
    assert adapt.residual_smooth("auto", "table", (30,)) == 1
    assert adapt.residual_smooth(5, "image", (1, 16, 16)) == 5
    X = images(60, side=8)
    for bad in (2, 0, -3, True, 2.5, "wide", None):
        with pytest.raises(aekit.ConfigError, match="residual_smooth"):
            Detector(residual_smooth=bad).fit(X)
    with pytest.raises(aekit.ConfigError, match="wider than the 8 x 8 images"):
        Detector(residual_smooth=9, **FAST).fit(X)
    with pytest.raises(aekit.ConfigError, match="a table has no neighbouring values"):
        Detector(residual_smooth=3, **FAST).fit(np.random.RandomState(0).rand(60, 5))
    det = Detector(random_state=0, **FAST).fit(np.random.RandomState(0).rand(60, 5))
    assert det.residual_smooth_ == 1


def test_a_saved_window_round_trips_and_damage_is_one_run_error(tmp_path):
    X = images(200)
    det = Detector(random_state=0, residual_smooth=3, **FAST).fit(X)
    path = det.save(tmp_path / "det")
    back = Detector.load(path)
    assert back.residual_smooth_ == 3 and back.scorer().smooth == 3
    np.testing.assert_array_equal(back.decision_function(X[:25]), det.decision_function(X[:25]))
    file = path / "detector.safetensors"
    good = file.read_bytes()
    for bad in (2, 0, -1, 17, "3", True, 3.0):
        file.write_bytes(good)
        rewrite_state(path, {"residual_smooth": bad})
        with pytest.raises(aekit.RunError, match="residual_smooth"):
            Detector.load(path)
    # a state written before the window (format 4, no residual_smooth) scores its residuals as they are
    file.write_bytes(good)
    rewrite_state(path, {"format": 4, "residual_smooth": None})
    assert Detector.load(path).residual_smooth_ == 1
    # a table's state may not announce a window
    table = Detector(random_state=0, **FAST).fit(np.random.RandomState(0).rand(80, 6))
    tpath = table.save(tmp_path / "table")
    rewrite_state(tpath, {"residual_smooth": 3})
    with pytest.raises(aekit.RunError, match="residual_smooth"):
        Detector.load(tpath)


def test_the_command_line_scores_with_the_window(cli, tmp_path):
    """`aekit train --contamination` on 16 x 16 images fits the window "auto" gives, saves it, and `aekit score`
    gives the loaded Detector's scores."""
    np.save(tmp_path / "train.npy", images(200))
    np.save(tmp_path / "new.npy", images(30, seed=1))
    code, _, err = cli("train", "ae", "--dataset", tmp_path / "train.npy", "--contamination", "0.05", "--epochs", "2",
                       "--quiet", "--out", tmp_path / "run")
    assert code == 0, err
    det = Detector.load(tmp_path / "run")
    assert det.residual_smooth_ == adapt.IMAGE_RESIDUAL_SMOOTH == 3 and det.input_shape_ == (1, 16, 16)
    code, _, err = cli("score", tmp_path / "run", tmp_path / "new.npy", "--out", tmp_path / "s.csv")
    assert code == 0, err
    rows = (tmp_path / "s.csv").read_text().splitlines()[1:]
    scores = np.array([float(r.split(",")[1]) for r in rows])
    np.testing.assert_allclose(scores, det.decision_function(np.load(tmp_path / "new.npy")), rtol=1e-5, atol=1e-5)
