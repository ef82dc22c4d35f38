"""README's anomaly recipe, as a new user runs it, on scikit-learn's breast-cancer table (issue 18).

`aekit train ae --dataset rows.csv --label-column kind --normal-class normal --contamination 0.05`, then
`aekit score` on rows the detector never saw, then `aekit calibrate --fpr 0.05` on other held-out normal rows.
The threshold must hold on unseen benign rows before calibration (the joint score's statistics once came from
rows the network had memorized, and 100% of unseen benign rows were flagged).
"""

from __future__ import annotations

import csv
import io

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score


def write_csv(path, X, names, kinds=None):
    head = list(names) + ([] if kinds is None else ["kind"])
    lines = [",".join(head)] + [",".join(f"{v:.6g}" for v in row) + ("" if kinds is None else f",{kinds[i]}")
                                for i, row in enumerate(X)]
    path.write_text("\n".join(lines) + "\n")


def scores_of(path):
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return np.array([float(r["score"]) for r in rows]), np.array([int(r["is_outlier"]) for r in rows])


def test_readme_recipe_on_breast_cancer(cli, tmp_path):
    data = load_breast_cancer()
    X, benign = data.data, data.target == 1  # 357 benign (normal), 212 malignant
    names = [n.replace(" ", "_") for n in data.feature_names]
    rng = np.random.default_rng(0)
    b, m = rng.permutation(np.flatnonzero(benign)), rng.permutation(np.flatnonzero(~benign))
    train_b, cal_b, new_b = b[:215], b[215:285], b[285:]  # 215 normal rows: ~150 in the training split
    train_m, new_m = m[:12], m[12:]  # a few anomalies in the file too (--normal-class leaves them out of training)
    rows = np.r_[train_b, train_m]
    write_csv(tmp_path / "rows.csv", X[rows], names, ["normal"] * len(train_b) + ["malignant"] * len(train_m))
    write_csv(tmp_path / "calibration.csv", X[cal_b], names)
    write_csv(tmp_path / "new.csv", X[np.r_[new_b, new_m]], names)
    is_new_benign = np.r_[np.ones(len(new_b), bool), np.zeros(len(new_m), bool)]

    code, out, err = cli("train", "ae", "--dataset", tmp_path / "rows.csv", "--label-column", "kind",
                         "--normal-class", "normal", "--contamination", "0.05", "--quiet", "--out", tmp_path / "run")
    assert code == 0, err
    code, out, err = cli("score", tmp_path / "run", tmp_path / "new.csv", "--out", tmp_path / "before.csv")
    assert code == 0, err
    scores, flagged = scores_of(tmp_path / "before.csv")
    auroc = roc_auc_score(~is_new_benign, scores)
    before = flagged[is_new_benign].mean()
    code, out, err = cli("calibrate", tmp_path / "run", "--normal", tmp_path / "calibration.csv", "--fpr", "0.05")
    assert code == 0, err
    code, out, err = cli("score", tmp_path / "run", tmp_path / "new.csv", "--out", tmp_path / "after.csv")
    assert code == 0, err
    _, flagged = scores_of(tmp_path / "after.csv")
    after = flagged[is_new_benign].mean()
    print(f"breast cancer recipe: AUROC {auroc:.3f}, unseen benign flagged {before:.3f} before calibration, "
          f"{after:.3f} after")
    # issue 18's bounds. --normal-class makes the Detector's novelty=True (selection rounds 9 and 10 of
    # benchmarks/README.md: ~250 steps a member, untrimmed statistics); the figures are README's.
    assert before <= 0.15 and after <= 0.12 and auroc >= 0.95, (auroc, before, after)
