"""pyod's side of the benchmarks; runs in benchmarks/.venvs/pyod (pyod 3.6.7 from PyPI).

    python pyod_side.py anomaly [--normal-class 0] [--seed 0]

One-class anomaly detection on Fashion-MNIST: pyod.models.auto_encoder.AutoEncoder with its defaults
(hidden_neuron_list [64, 32], batch norm, dropout 0.2, 10 epochs, batch 32, Adam lr 1e-3, weight decay 1e-5,
standardized inputs), fitted on the 6000 training images of the normal class (flattened to 784 features,
values in [0, 1]), then decision_function on the 10k test images; AUROC with anomaly = class != normal.
The fitting time is the wall time of AutoEncoder.fit (which also scores the training data, as pyod does).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, emit, fashion_mnist, setup, stdout_to_stderr  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("task", choices=("anomaly",))
    p.add_argument("--normal-class", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    setup(args.seed)

    from pyod.models.auto_encoder import AutoEncoder
    from sklearn.metrics import roc_auc_score

    data = fashion_mnist()
    keep = data["y_train"] == args.normal_class
    x_train = data["x_train"][keep].reshape(-1, 784).numpy()
    x_test = data["x_test"].reshape(-1, 784).numpy()
    is_anomaly = (data["y_test"] != args.normal_class).numpy()
    with stdout_to_stderr():
        det = AutoEncoder(random_state=args.seed, verbose=0)
        with Timer() as t:
            det.fit(x_train)
        with Timer() as ts:
            scores = det.decision_function(x_test)
    emit({"fit_seconds": t.seconds, "score_seconds": ts.seconds, "auroc": float(roc_auc_score(is_anomaly, scores)),
          "n_train": int(x_train.shape[0]), "n_test": int(x_test.shape[0])})


if __name__ == "__main__":
    main()
