"""pyod's side of the ADBench benchmark; runs in benchmarks/.venvs/pyod-adbench (pyod 3.6.7 from PyPI).

    python pyod_adbench_side.py METHOD SET.npz [--seeds 1,2,3]

METHOD is one of iforest, ecod, pca, mcd, knn, cblof, hbos, copod, lof, pyod-ae, pyod-vae. For each seed:
the split of ADBench's unsupervised
protocol (``benchmarks/adbench.py``'s ``protocol_split``, imported from there so both sides read the same
code), then, as ADBench's ``PYOD.fit`` does, ``np.random.seed(seed)`` and the detector built with its
default settings (only ``verbose=0`` is passed to the deep ones: no progress lines, same model), fitted on
the contaminated train split, ``decision_function`` on the test split. pyod's AutoEncoder and VAE default to
``random_state=42`` and so start from the same weights at every seed, as in ADBench.

Prints one ``BENCH_RESULT {json}`` line: per seed the test AUROC, fit and score seconds, and the split's
fingerprint (aekit's side prints the same fingerprint for the same set and seed). Non-finite scores (pyod's
PCA gives +inf to every example of a set with constant columns) are ranked, +inf above every finite score,
and counted in the result rather than failing the run.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import Timer, emit, stdout_to_stderr  # noqa: E402

# pyod's detectors with their default settings, as ADBench's baseline/PyOD.py builds them (class and module)
CLASSES = {"iforest": ("iforest", "IForest"), "ecod": ("ecod", "ECOD"), "pca": ("pca", "PCA"),
           "mcd": ("mcd", "MCD"), "knn": ("knn", "KNN"), "cblof": ("cblof", "CBLOF"), "hbos": ("hbos", "HBOS"),
           "copod": ("copod", "COPOD"), "lof": ("lof", "LOF"), "pyod-ae": ("auto_encoder", "AutoEncoder"),
           "pyod-vae": ("vae", "VAE")}


def make(method: str):
    import importlib

    if method not in CLASSES:
        raise SystemExit(f"unknown method {method!r}; expected one of {', '.join(CLASSES)}")
    module, name = CLASSES[method]
    cls = getattr(importlib.import_module(f"pyod.models.{module}"), name)
    return cls(verbose=0) if method in ("pyod-ae", "pyod-vae") else cls()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("method")
    p.add_argument("set")
    p.add_argument("--seeds", default="1,2,3")
    args = p.parse_args()

    import torch
    torch.set_num_threads(1)
    import numpy as np
    from adbench import _set_seed, load_set, protocol_split, split_fingerprint
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    X, y = load_set(args.set)
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        d = protocol_split(X, y, seed)
        _set_seed(seed)
        with stdout_to_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            det = make(args.method)
            with Timer() as tf:
                det.fit(d["X_train"])
            with Timer() as ts:
                scores = det.decision_function(d["X_test"])
        run = {"seed": seed, "fit_seconds": tf.seconds, "score_seconds": ts.seconds, "split": split_fingerprint(d)}
        scores = np.asarray(scores, dtype=np.float64)
        bad = ~np.isfinite(scores)
        if bad.any():  # rank them: +inf above every finite score, ties share their rank; NaN cannot be ranked
            run.update(nonfinite=int(bad.sum()), note=f"{int(np.isposinf(scores).sum())} +inf, "
                       f"{int(np.isneginf(scores).sum())} -inf, {int(np.isnan(scores).sum())} NaN of {scores.size}")
            scores = rankdata(scores) if not np.isnan(scores).any() else None
        run["auroc"] = float(roc_auc_score(d["y_test"], scores)) if scores is not None else float("nan")
        runs.append(run)
    import importlib.metadata as md
    emit({"method": args.method, "set": Path(args.set).stem, "runs": runs, "pyod": md.version("pyod")})


if __name__ == "__main__":
    main()
