"""pyod's side of the Fashion-MNIST one-class benchmark; runs in benchmarks/.venvs/pyod-adbench.

    python pyod_fmnist_side.py CLASS [--seed 0]

Trains pyod's ``AutoEncoder`` with its default settings (``verbose=0`` only; ``random_state=seed``) on the
training images of CLASS (flattened to 784 pixels in [0, 1], the same values aekit reads), scores all 10000
test images, and prints one ``BENCH_RESULT {json}`` line with the test AUROC (CLASS normal, the other nine
anomalous) and the fit and score seconds.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, emit, fashion_mnist, stdout_to_stderr  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cls", type=int)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(1)
    data = fashion_mnist()
    x_train = data["x_train"][data["y_train"] == args.cls].flatten(1).numpy()
    x_test, y_test = data["x_test"].flatten(1).numpy(), data["y_test"].numpy()
    np.random.seed(args.seed)
    with stdout_to_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pyod.models.auto_encoder import AutoEncoder

        det = AutoEncoder(verbose=0, random_state=args.seed)
        with Timer() as tf:
            det.fit(x_train)
        with Timer() as ts:
            scores = det.decision_function(x_test)
    emit({"method": "pyod-ae", "class": args.cls, "auroc": float(roc_auc_score(y_test != args.cls, scores)),
          "fit_seconds": tf.seconds, "score_seconds": ts.seconds})


if __name__ == "__main__":
    main()
