"""The anomaly workflow on the command line: train (--contamination), calibrate, score new rows."""

import csv
import io

import numpy as np
import pytest

from aekit.scoring import Scorer
from hostile import one_line

FAST = ["--epochs", "30", "--latent-dim", "2", "--hidden", "16", "--quiet"]


def table(rows: np.ndarray, names, label=None) -> str:
    head = list(names) + ([] if label is None else ["kind"])
    body = [",".join(f"{v:.5f}" for v in r) + ("" if label is None else f",{label[i]}") for i, r in enumerate(rows)]
    return "\n".join([",".join(head), *body]) + "\n"


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """A one-class run on a table in very different units, plus held-out normal rows and new rows."""
    from aekit.cli import main

    d = tmp_path_factory.mktemp("score")
    rng = np.random.default_rng(0)
    scale, shift = np.array([1.0, 10.0, 100.0, 0.1]), np.array([0.0, 5.0, -50.0, 1.0])

    def normal(n):
        z = rng.normal(size=(n, 2))
        return np.c_[z, z @ [[1.0, 0.5], [0.3, -1.0]]] * scale + shift  # 2-dimensional structure in 4 columns

    train = np.concatenate([normal(400), rng.normal(size=(40, 4)) * scale * 4 + shift])
    (d / "train.csv").write_text(table(train, "abcd", ["normal"] * 400 + ["odd"] * 40))
    (d / "held_out.csv").write_text(table(normal(300), "abcd"))
    new = np.concatenate([normal(50), rng.normal(size=(10, 4)) * scale * 4 + shift])
    (d / "new.csv").write_text(table(new[:, [2, 0, 3, 1]], "cadb"))  # the columns in another order, no label
    code = main(["train", "ae", "--dataset", str(d / "train.csv"), "--label-column", "kind", "--normal-class",
                 "normal", *FAST, "--contamination", "0.05", "--out", str(d / "run")])
    assert code == 0
    return d


def read_scores(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_train_with_contamination_sets_a_threshold_and_score_flags_the_outliers(cli, workflow):
    # the joint score's statistics come from the training rows, as in fit
    assert Scorer.from_run(workflow / "run").score_name == "joint"
    code, out, err = cli("score", workflow / "run", workflow / "new.csv")
    assert code == 0, err
    rows = read_scores(out)
    assert list(rows[0]) == ["id", "score", "is_outlier"] and [r["id"] for r in rows] == [str(i) for i in range(60)]
    scores = np.array([float(r["score"]) for r in rows])
    auroc = np.mean(scores[50:, None] > scores[None, :50])  # the planted outliers score above the normal rows
    assert auroc > 0.9 and np.sum(scores[50:] > np.median(scores[:50])) >= 9
    assert sum(int(r["is_outlier"]) for r in rows[50:]) >= 8


def test_normal_class_is_the_detectors_novelty(cli, workflow, tmp_path):
    """--normal-class: the training rows are known to be normal, the Detector's novelty=True (its one-class
    budget); without it the same file is a contaminated table, novelty=False."""
    import aekit

    assert aekit.Detector.load(workflow / "run").get_params()["novelty"] is True
    code, out, err = cli("train", "ae", "--dataset", workflow / "train.csv", "--label-column", "kind", *FAST,
                         "--contamination", "0.1", "--out", tmp_path / "all")
    assert code == 0, err
    assert aekit.Detector.load(tmp_path / "all").get_params()["novelty"] is False


def test_the_command_line_fits_the_python_detector(cli, workflow, tmp_path):
    """One detector whatever the door (issue 18): the run `aekit train --normal-class ... --contamination` writes
    is Detector(novelty=True, contamination=...) fitted on the run's training rows, with the one-class budget
    (no --epochs here), score for score (up to float rounding: the two fits may use other thread counts)."""
    import aekit

    code, out, err = cli("train", "ae", "--dataset", workflow / "train.csv", "--label-column", "kind",
                         "--normal-class", "normal", "--latent-dim", "2", "--hidden", "16", "--quiet",
                         "--contamination", "0.05", "--out", tmp_path / "run")
    assert code == 0, err
    ds = aekit.Run.open(tmp_path / "run").dataset()
    rows = ds.to_user_units(ds.x_train).numpy()
    theirs = aekit.Detector.load(tmp_path / "run")
    new = np.loadtxt(workflow / "held_out.csv", delimiter=",", skiprows=1, dtype=np.float32)
    got = theirs.decision_function(new)
    for novelty in (True, False):
        ours = aekit.Detector(contamination=0.05, random_state=0, novelty=novelty, latent_dim=2, hidden=(16,))
        ours.fit(rows)
        gap = np.abs(got - ours.decision_function(new)).max() / np.ptp(got)  # 2e-5 with novelty, 0.8 without
        assert (gap < 1e-3) == novelty and (ours.threshold_ == pytest.approx(theirs.threshold_, rel=1e-3)) == novelty


def test_calibrate_then_score_writes_p_values(cli, workflow, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(workflow / "run", run)
    code, out, err = cli("calibrate", run, "--normal", workflow / "held_out.csv", "--fpr", "0.05")
    assert code == 0 and "calibrated" in out, err
    code, out, err = cli("score", run, workflow / "new.csv", "--out", tmp_path / "s.csv")
    assert code == 0 and "60 examples" in out, err
    rows = read_scores((tmp_path / "s.csv").read_text())
    assert list(rows[0]) == ["id", "score", "p_value", "is_outlier"]
    p = np.array([float(r["p_value"]) for r in rows])
    assert np.all((p > 0) & (p <= 1)) and np.sum(p[50:] < np.median(p[:50])) >= 9
    code, out, err = cli("calibrate", run, "--normal", workflow / "held_out.csv", "--fpr", "0.001")
    one_line(code, err, "too few", "999")  # 300 rows cannot bound a rate of 0.001


def test_columns_that_do_not_match_are_named(cli, workflow, tmp_path):
    text = (workflow / "new.csv").read_text().splitlines()
    (tmp_path / "missing.csv").write_text("\n".join(",".join(r.split(",")[:3]) for r in text) + "\n")
    one_line(*cli("score", workflow / "run", tmp_path / "missing.csv")[::2], "missing 'b'")
    (tmp_path / "extra.csv").write_text("\n".join(r + ("," + ("e" if i == 0 else "1")) for i, r in enumerate(text)))
    one_line(*cli("score", workflow / "run", tmp_path / "extra.csv")[::2], "not in the training table 'e'")


def test_bad_rows_and_files_are_one_line(cli, workflow, tmp_path):
    text = (workflow / "new.csv").read_text().splitlines()
    text[3] = "nan,1,2,3"
    (tmp_path / "nan.csv").write_text("\n".join(text) + "\n")
    one_line(*cli("score", workflow / "run", tmp_path / "nan.csv")[::2], "NaN")
    (tmp_path / "empty.csv").write_text("")
    one_line(*cli("score", workflow / "run", tmp_path / "empty.csv")[::2], "empty")
    one_line(*cli("score", workflow / "run", tmp_path / "none.csv")[::2], "none.csv")


def test_score_images_without_a_threshold_and_with_one(cli, tmp_path, digits):
    code, _, err = cli("train", "ae", "--normal-class", "0", "--epochs", "3", "--latent-dim", "4", "--hidden", "32",
                       "--quiet", "--out", tmp_path / "r")
    assert code == 0, err
    np.save(tmp_path / "x.npy", digits.x_test[:20, 0].numpy())
    code, out, err = cli("score", tmp_path / "r", tmp_path / "x.npy")
    assert code == 0, err
    rows = read_scores(out)
    assert len(rows) == 20 and list(rows[0]) == ["id", "score"]
    code, out, err = cli("score", tmp_path / "r", tmp_path / "x.npy", "--out", tmp_path / "s.csv")
    assert code == 0 and "no threshold yet" in out, err


def test_eval_reports_the_auroc_of_the_score_that_score_writes(cli, workflow):
    """`aekit eval` adds anomaly_auroc_score: the AUROC of the Scorer's score (here the joint score that
    `train --contamination` fitted), checked against scikit-learn on the scores of the Detector API."""
    import json

    from sklearn.metrics import roc_auc_score

    import aekit

    code, out, err = cli("eval", workflow / "run", "--json")
    assert code == 0, err
    res = json.loads(out)
    run = aekit.Run.open(workflow / "run")
    ds = run.dataset()
    det = aekit.Detector.load(run.path)
    x = ds.to_user_units(ds.x_test).double().numpy()
    y = (ds.y_test != ds.class_names.index("normal")).numpy()
    assert det.anomaly_score_ == "joint"
    assert res["anomaly_auroc_score"] == pytest.approx(roc_auc_score(y, det.decision_function(x)), abs=2e-3)
    assert res["anomaly_auroc_score"] != res["anomaly_auroc_recon_error"]  # another score than the plain error
    assert 0 < res["anomaly_ap_score"] <= 1


def test_calibrate_scores_a_block_at_a_time_and_matches_the_detector(cli, workflow, tmp_path, monkeypatch):
    """`aekit calibrate` keeps only scores (bounded memory on a large file): in blocks of 1024 rows it sets the
    same threshold and calibration scores as Detector.calibrate on all the rows at once."""
    import shutil

    from aekit import cli as cli_module
    from aekit.detector import Detector

    rng = np.random.default_rng(3)
    held = rng.normal(size=(2500, 4)) * [1.0, 10.0, 100.0, 0.1] + [0.0, 5.0, -50.0, 1.0]
    (tmp_path / "held.csv").write_text(table(held, "abcd"))
    run = tmp_path / "run"
    shutil.copytree(workflow / "run", run)
    monkeypatch.setattr(cli_module, "SCORE_BYTES", 4 * 4 * 1024)  # 1024 rows of 4 columns: 3 blocks
    assert [hi - lo for lo, hi in cli_module.score_blocks(cli_module.new_rows(cli_module.Run.open(run),
                                                                              str(tmp_path / "held.csv"))[0])] \
        == [1024, 1024, 452]
    code, out, err = cli("calibrate", run, "--normal", tmp_path / "held.csv", "--fpr", "0.05")
    assert code == 0 and "2500 normal examples" in out, err
    as_written = np.loadtxt(tmp_path / "held.csv", delimiter=",", skiprows=1)  # the CSV's 5 decimals
    ref = Detector.load(workflow / "run").calibrate(as_written, fpr=0.05)
    got = Detector.load(run)
    assert got.threshold_ == pytest.approx(ref.threshold_, rel=1e-6)
    # float32 rows read two ways (the CSV whole, or in blocks): the residual model's smallest variance weighs
    # their rounding up to 1e3 times
    np.testing.assert_allclose(got.calibration_scores_, ref.calibration_scores_, rtol=1e-5, atol=1e-5)
