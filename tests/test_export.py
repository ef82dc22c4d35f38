"""aekit export / Detector.export: ONNX graphs that give PyTorch's numbers in onnxruntime.

Comparison: every float output within 1e-5 relative of PyTorch's, with an absolute slack of 1e-6 times the
output's largest magnitude (at least 1) for values near zero: float32 keeps ~6e-8 of the *largest* terms of a
sum, so a code or residual close to 0 carries an error relative to the scale of the layer, not to itself.
is_outlier must be identical. The data are real: scikit-learn's digits (images, every family, both
architectures) and a table with a planted structure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import aekit  # noqa: E402
from aekit import Detector, registry, scoring  # noqa: E402
from aekit.export import DecoderGraph, EncoderGraph, export_onnx  # noqa: E402

FAMILIES = ["ae", "dae", "sae", "cae", "vae", "iwae", "cvae", "aae"]


def close(got, want):
    want = np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    if want.dtype == np.bool_:
        np.testing.assert_array_equal(got, want)
        return
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    scale = max(1.0, float(np.abs(want[finite]).max(initial=0.0)))
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-6 * scale)


def run_graph(path: Path, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def family_scorer(digits, family: str, arch: str, smooth: int = 1) -> scoring.Scorer:
    """A tiny model of ``family`` trained one epoch on digits, as a Scorer with the joint score fitted on the
    training images (residual images smoothed over ``smooth``), a threshold and a calibration table from the
    validation images."""
    opts = {"latent_dim": 4, "hidden": [16] if arch == "mlp" else [4, 8], "arch": arch}
    if family == "aae":
        opts["disc_hidden"] = [8]
    model = registry.build_for(family, digits, seed=0, **opts)
    aekit.fit(model, digits, aekit.TrainConfig(epochs=1, batch_size=128, seed=0), quiet=True)
    model.eval()
    y_train = digits.y_train if model.capabilities.conditional else None
    y_val = digits.y_val if model.capabilities.conditional else None
    joint = scoring.fit_joint([model], digits.x_train, "image", y_train, smooth=smooth)
    sc = scoring.Scorer([model], kind="image", stats=None, score="joint", joint=joint, smooth=smooth)
    cal = np.sort(sc.score_model_units(digits.x_val, y_val))
    k = int(0.9 * len(cal))  # a threshold between two calibration scores: no row of the data ties with it
    return scoring.Scorer([model], kind="image", stats=None, score="joint", joint=joint,
                          threshold=(cal[k - 1] + cal[k]) / 2, calibration=cal, flag_rate=0.1,
                          threshold_from="calibration", smooth=smooth)


def check_family(digits, family, arch, tmp_path, smooth: int = 1):
    sc = family_scorer(digits, family, arch, smooth)
    info = export_onnx(sc, tmp_path / "out", model_name=family)
    assert {k: g["checked_with_onnxruntime"] for k, g in info["graphs"].items()} == dict.fromkeys(
        ("scorer", "encoder", "decoder"), True)
    x = digits.x_test[:200]  # real images the model never saw, in a batch size the trace never saw
    y = digits.y_test[:200] if sc.conditional else None
    feeds = {"x": x.numpy()} | ({} if y is None else {"y": y.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in sc(x, y)]
        z = EncoderGraph(sc)(x, y)
        rec = DecoderGraph(sc)(z, y)
    got = run_graph(tmp_path / "out" / "scorer.onnx", feeds)
    close(got[0], want[0])
    close(got[2], want[2])
    # a p-value counts the calibration scores >= the score: it steps where a row ties with one (digits holds
    # duplicate images), and there float rounding may fall on either side; elsewhere it must be the same
    tied = np.abs(want[0][:, None] - sc.calibration.numpy()[None, :]).min(1) <= 1e-6 * np.abs(want[0])
    assert tied.mean() <= 0.02
    close(got[1][~tied], want[1][~tied])
    assert 0 < want[2].sum() < len(x)  # the threshold flags some rows, not all: is_outlier is a real test
    close(run_graph(tmp_path / "out" / "encoder.onnx", feeds)[0], z.numpy())
    close(run_graph(tmp_path / "out" / "decoder.onnx", {"z": z.numpy()} | ({} if y is None else {"y": y.numpy()}))[0],
          rec.numpy())
    names = [i.name for i in ort.InferenceSession(str(tmp_path / "out" / "encoder.onnx")).get_inputs()]
    assert names == (["x", "y"] if family == "cvae" else ["x"])
    ops = {n.op_type for f in GRAPH_FILES for n in _onnx(tmp_path / "out" / f).graph.node}
    assert not ops & {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial"}


GRAPH_FILES = ["scorer.onnx", "encoder.onnx", "decoder.onnx"]


def _onnx(path):
    import onnx

    return onnx.load(str(path))


@pytest.mark.parametrize("family, arch, smooth", [("cvae", "conv", 1), ("vae", "mlp", 1), ("ae", "conv", 3)])
def test_families_match_pytorch(digits, family, arch, smooth, tmp_path):
    check_family(digits, family, arch, tmp_path, smooth)  # smooth 3: the residual images' window in the graph


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_and_architecture_matches_pytorch(digits, family, arch, tmp_path):
    check_family(digits, family, arch, tmp_path)


# --- a table: a Detector with two members, calibrated ------------------------------------------------------


def table(n: int, seed: int, d: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(123).normal(size=(2, d))
    rows = rng.normal(size=(n, 2)) @ basis + 0.1 * rng.normal(size=(n, d))
    return rows * np.arange(1, d + 1) + 100.0 * np.arange(d)


def test_detector_export_matches_detector(tmp_path):
    det = Detector(n_estimators=2, random_state=0, epochs=3, hidden=(16,), latent_dim=2, neighbors=5).fit(table(400, 0))
    det.calibrate(table(200, 1), fpr=0.05)
    info = det.export(tmp_path / "exp")
    assert sorted(os.listdir(tmp_path / "exp")) == ["decoder.onnx", "encoder.onnx", "export.json", "scorer.onnx"]
    assert json.loads((tmp_path / "exp" / "export.json").read_text()) == info
    assert info["threshold"] == det.threshold_ and info["calibration_fpr"] == 0.05
    assert info["members"] == len(det.models_) == 4  # 2 members in each of 2 folds (cross-fitting), each with the
    assert det.normalization_.shape == (8, 2)  # neighbour term: the graph holds the reference codes and top-k
    assert info["columns"] == [f"f{i}" for i in range(6)] and info["aekit_version"] == aekit.__version__
    assert info["graphs"]["scorer"]["inputs"] == [{"name": "x", "shape": ["batch", 6], "dtype": "float64",
                                                   "units": info["units"]}]
    rng = np.random.default_rng(2)
    x = np.vstack([table(300, 3), table(20, 4) + 5.0 * rng.normal(size=(20, 6)) * np.arange(1, 7)])
    score, p, out = run_graph(tmp_path / "exp" / "scorer.onnx", {"x": x})
    close(score, det.decision_function(x))
    close(p, det.predict_pvalue(x))
    np.testing.assert_array_equal(out, det.predict(x).astype(bool))
    assert 0 < out.sum() < len(x)
    # the decoder gives rows back in the table's own units
    (z,) = run_graph(tmp_path / "exp" / "encoder.onnx", {"x": x})
    (x_hat,) = run_graph(tmp_path / "exp" / "decoder.onnx", {"z": z})
    sc = det.scorer()
    with torch.no_grad():
        close(x_hat, DecoderGraph(sc)(torch.from_numpy(z)).numpy())
        first = det.models_[0].reconstruct(sc.model_input(x)).double().numpy()
    std, mean = np.asarray(det.data_spec_.stats["std"]), np.asarray(det.data_spec_.stats["mean"])
    np.testing.assert_allclose(x_hat, first * std + mean, rtol=1e-5, atol=1e-4)  # the user's units


def test_the_out_folder_is_never_overwritten(tmp_path, cli):
    det = Detector(random_state=0, epochs=1, hidden=(8,), latent_dim=2).fit(table(100, 0))
    run = det.save(tmp_path / "run")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    code, out, err = cli("export", run, "--out", tmp_path / "taken")
    assert code == 2 and "not empty" in err and len(err.strip().splitlines()) == 1, err
    assert os.listdir(tmp_path / "taken") == ["mine.txt"] and (tmp_path / "taken" / "mine.txt").read_text() == "keep"
    (tmp_path / "file").write_text("x")
    code, _, err = cli("export", run, "--out", tmp_path / "file")
    assert code == 2 and "is a file" in err and (tmp_path / "file").read_text() == "x"
    code, _, err = cli("export", run, "--format", "tflite", "--out", tmp_path / "new")
    assert code == 2 and "invalid choice" in err and not (tmp_path / "new").exists()


def test_a_sampling_score_gets_encoder_and_decoder_only(tmp_path, cli):
    np.save(tmp_path / "t.npy", table(200, 5))
    code, _, err = cli("train", "vae", "--dataset", tmp_path / "t.npy", "--epochs", 1, "--latent-dim", 2,
                       "--hidden", 8, "--quiet", "--out", tmp_path / "run")
    assert code == 0, err
    code, out, err = cli("export", tmp_path / "run", "--out", tmp_path / "exp")
    assert code == 0, err
    assert "no scorer graph" in err and "neg_elbo" in err
    assert sorted(os.listdir(tmp_path / "exp")) == ["decoder.onnx", "encoder.onnx", "export.json"]
    info = json.loads((tmp_path / "exp" / "export.json").read_text())
    assert "scorer" not in info["graphs"] and info["threshold"] is None


def test_missing_exporter_names_the_extra(tmp_path, cli, monkeypatch):
    det = Detector(random_state=0, epochs=1, hidden=(8,), latent_dim=2).fit(table(100, 0))
    run = det.save(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    code, _, err = cli("export", run, "--out", tmp_path / "exp")
    assert code == 2 and "pip install 'aekit[onnx]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "exp").exists()


# --- the exported scorer without torch: the same decisions as `aekit score` ------------------------------

NO_TORCH = textwrap.dedent("""
    import csv, json, sys
    sys.modules["torch"] = None  # any import of torch fails: onnxruntime and numpy alone
    import numpy as np
    import onnxruntime as ort
    folder, data = sys.argv[1], sys.argv[2]
    info = json.load(open(f"{folder}/export.json"))
    with open(data, newline="") as f:
        rows = list(csv.DictReader(f))
    x = np.array([[float(r[c]) for c in info["columns"]] for r in rows])  # columns matched by name
    session = ort.InferenceSession(f"{folder}/{info['graphs']['scorer']['file']}")
    score, p, out = session.run(None, {"x": x})
    print(json.dumps({"is_outlier": out.astype(int).tolist(), "score": score.tolist()}))
""")


def test_exported_scorer_without_torch_agrees_with_aekit_score(tmp_path, cli):
    rng = np.random.default_rng(0)
    names = ["temp", "load", "rpm", "volt", "flow", "hum"]
    train = table(500, 10)
    header = ",".join(names)
    (tmp_path / "train.csv").write_text(header + "\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in train))
    held = np.vstack([table(200, 11), table(15, 12) + 4.0 * rng.normal(size=(15, 6)) * np.arange(1, 7)])
    order = [3, 0, 5, 1, 4, 2]  # another column order: both sides match columns by name
    (tmp_path / "held.csv").write_text(",".join(names[i] for i in order) + "\n" + "\n".join(
        ",".join(f"{r[i]:.6f}" for i in order) for r in held))
    code, _, err = cli("train", "ae", "--dataset", tmp_path / "train.csv", "--epochs", 5, "--latent-dim", 2,
                       "--hidden", 16, "--quiet", "--contamination", "0.05", "--out", tmp_path / "run")
    assert code == 0, err
    code, _, err = cli("export", tmp_path / "run", "--out", tmp_path / "exp")
    assert code == 0 and not err, err
    code, _, err = cli("score", tmp_path / "run", tmp_path / "held.csv", "--out", tmp_path / "scores.csv")
    assert code == 0, err
    lines = (tmp_path / "scores.csv").read_text().splitlines()
    assert lines[0] == "id,score,is_outlier"
    want = [int(line.split(",")[2]) for line in lines[1:]]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not even aekit on the path
    res = subprocess.run([sys.executable, "-c", NO_TORCH, str(tmp_path / "exp"), str(tmp_path / "held.csv")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["is_outlier"] == want and 5 <= sum(want) < len(want)
    # `aekit score` reads a CSV into standardized float32 and back to float32 user units before scoring (cli's
    # _new_rows), the graph standardizes the CSV's float64 values once: scores agree to float32 rounding
    # (the cross-fitted default normalizes members' scores by median and IQR: scores near 0 need an absolute term;
    # the residual model's smallest variance weighs that rounding up to 1e3 times: still 1e-4 of an IQR)
    np.testing.assert_allclose(got["score"], [float(line.split(",")[1]) for line in lines[1:]], rtol=1e-4, atol=1e-4)
