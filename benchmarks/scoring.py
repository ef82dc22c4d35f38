"""Scoring cost: the Detector's input preprocessing before and after aekit.scoring, and the Scorer per request.

    PYTHONPATH=src python benchmarks/scoring.py [--rows 200000] [--repeats 5]

Measures, as the median of ``--repeats`` runs in one process (CPU, torch's default threads):

- preprocessing of a (rows, 8) float64 table into model units: the old path of detector.py (``_tensor``: a whole
  ``datasets.from_arrays`` Dataset with the row numbers as class labels, rebuilt on every call, re-created here
  verbatim for the comparison) against ``Preprocess.prepare`` + ``Preprocess`` (the checks of
  ``datasets.read_samples``, then (x - mean) / std in float64);
- ``Detector.decision_function`` on the whole table (preprocessing + the model + the joint score), and the
  old path re-created (``_tensor``, a pass for the codes and another for the reconstructions, the joint score in
  numpy; the same numbers to 1e-9, checked);
- ``Scorer.score`` per request of 1 and 1000 rows (what a server calls), built once.

Writes benchmarks/RESULTS_scoring.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from aekit import Detector  # noqa: E402
from aekit.datasets import from_arrays  # noqa: E402
from aekit.scoring import Preprocess  # noqa: E402


def legacy_tensor(arr: np.ndarray, stats: dict) -> torch.Tensor:
    """detector.py's ``_tensor`` before aekit.scoring: a Dataset per call, row numbers as labels."""
    ds = from_arrays(arr, np.arange(len(arr)), kind="table", name="X", val_fraction=0.0, test_fraction=0.0,
                     stats=stats)
    x = torch.empty_like(ds.x_train)
    x[ds.y_train] = ds.x_train
    return x


def legacy_decision_function(det, arr: np.ndarray) -> np.ndarray:
    """detector.py's decision_function before aekit.scoring, for one member and the joint score: ``_tensor``,
    then metrics.codes and metrics.reconstructions (two passes) and the numpy joint score."""
    from aekit.scoring import codes_and_residuals

    x = legacy_tensor(arr, det.data_spec_.stats)
    return det.joint_[0].score(*codes_and_residuals(det.models_[0], x))


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS_scoring.md")))
    args = ap.parse_args()
    load = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.rows, 8)) * np.arange(1, 9) + 10.0
    det = Detector(random_state=0, epochs=1, hidden=(16,), latent_dim=4, batch_size=1024).fit(X[:5000])
    stats = det.data_spec_.stats
    pre = Preprocess("table", (8,), stats, torch.float32)
    old, new = legacy_tensor(X, stats), pre(pre.prepare(X))
    assert torch.equal(old, new), "the two preprocessing paths must give the same tensor"
    scorer = det.scorer()
    np.testing.assert_allclose(legacy_decision_function(det, X), det.decision_function(X), rtol=1e-9)
    rows = {
        "preprocessing, old (`_tensor`: a Dataset per call)": median_seconds(lambda: legacy_tensor(X, stats),
                                                                             args.repeats),
        "preprocessing, new (`Preprocess.prepare` + `Preprocess`)": median_seconds(lambda: pre(pre.prepare(X)),
                                                                                  args.repeats),
        "`Detector.decision_function`, old path (re-created)": median_seconds(
            lambda: legacy_decision_function(det, X), args.repeats),
        "`Detector.decision_function` (whole table)": median_seconds(lambda: det.decision_function(X), args.repeats),
        "`Scorer.score`, 1 row per call": median_seconds(lambda: scorer.score(X[:1]), 50),
        "`Scorer.score`, 1000 rows per call": median_seconds(lambda: scorer.score(X[:1000]), 20),
    }
    lines = [
        "# Scoring cost (benchmarks/scoring.py)", "",
        f"`PYTHONPATH=src python benchmarks/scoring.py --rows {args.rows} --repeats {args.repeats}`; "
        f"a ({args.rows}, 8) float64 table, a one-member Detector (D-16-4, joint score); torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}; load average {load:.1f} when it started (a shared machine: "
        "compare rows of one run, not runs); median seconds per call. The two preprocessing paths give the same "
        "tensor (checked); the old and new decision_function agree to 1e-9 relative (checked).", "",
        "| what | seconds |", "|---|---:|",
        *[f"| {k} | {v:.4f} |" for k, v in rows.items()], "",
        f"Preprocessing speed-up: {rows[next(iter(rows))] / list(rows.values())[1]:.1f}x.", "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
