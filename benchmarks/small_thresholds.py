"""Does the contamination threshold hold on unseen normal rows of small tables? ``aekit.Detector()`` with
its defaults, trained on n normal rows at ``contamination=0.05``, then the share of *unseen* normal rows of the
same table above its threshold (the target: about 5%) and the AUROC of unseen normal rows against anomalies,
now and as before the small-table rules (``aekit.adapt.inner_folds``: a small held-out fold scores its own rows
with statistics fitted on its other rows; ``aekit.adapt.MIN_FOLD_ROWS``: cross-fitting from 10 distinct rows).

    python benchmarks/small_thresholds.py                               # the shared ADBench folder
    python benchmarks/small_thresholds.py --adbench /path/to/adbench --reps 4

Tables: two synthetic Gaussian tables (13 and 3 correlated columns; their anomalies: each column drawn
independently from the normal rows, ADBench's "dependency" type), scikit-learn's breast-cancer table (benign
normal, malignant anomalous) and ADBench's small sets in ``--adbench`` (label 0 normal, 1 anomalous). For each
table, n normal training rows and the other normal rows as unseen rows, ``--reps`` random draws (the same draws
for both variants, which run one after the other on each draw, in one process). The variant "before" is the
same detector with ``aekit.adapt.INNER_MAX_DISTINCT = 0`` (statistics fitted on a fold score that fold's own
rows) and ``aekit.adapt.MIN_FOLD_ROWS = 10`` (one member, no cross-fitting, below 20 distinct rows); "novelty"
is today's detector told that its training rows are normal (``Detector(novelty=True)``, what ``aekit train
--normal-class`` fits: the one-class budget of selection round 9). Writes
benchmarks/RESULTS_small_thresholds.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIZES = (10, 15, 25, 40, 60, 100, 150, 250)
ADBENCH_SETS = ("14_glass", "15_Hepatitis", "18_Ionosphere", "21_Lymphography", "29_Pima", "39_vertebral",
                "41_Waveform", "47_yeast")
VARIANTS = ("before", "now", "novelty")
BEFORE = {"INNER_MAX_DISTINCT": 0, "MIN_FOLD_ROWS": 10}


def dependency_anomalies(normal: np.ndarray, n: int, rng) -> np.ndarray:
    """Each column drawn independently from the normal rows' values: the marginals kept, the dependence broken."""
    return np.stack([rng.choice(normal[:, j], n) for j in range(normal.shape[1])], axis=1)


def tables(adbench: Path | None):
    """(name, normal rows, anomalous rows) of each table."""
    from sklearn.datasets import load_breast_cancer

    rng = np.random.default_rng(0)
    for d in (13, 3):
        normal = rng.normal(size=(3000, d)) @ (rng.normal(size=(d, d)) / 4)
        yield f"gauss{d}", normal, dependency_anomalies(normal, 300, rng)
    bc = load_breast_cancer()
    yield "breast-cancer", bc.data[bc.target == 1], bc.data[bc.target == 0]
    for name in ADBENCH_SETS if adbench else ():
        path = adbench / f"{name}.npz"
        if path.exists():
            d = np.load(path)
            yield name, d["X"][d["y"] == 0], d["X"][d["y"] == 1]


def run(train: np.ndarray, unseen: np.ndarray, anomalies: np.ndarray, seed: int, variant: str) -> tuple[float, float]:
    """(% of unseen normal rows above the threshold, AUROC x100 of unseen normal rows against anomalies)."""
    from sklearn.metrics import roc_auc_score

    import aekit
    from aekit import adapt

    saved = {k: getattr(adapt, k) for k in BEFORE}
    if variant == "before":
        for k, v in BEFORE.items():
            setattr(adapt, k, v)
    try:
        det = aekit.Detector(contamination=0.05, random_state=seed, novelty=variant == "novelty").fit(train)
    finally:
        for k, v in saved.items():
            setattr(adapt, k, v)
    s = det.decision_function(np.concatenate([unseen, anomalies]))
    y = np.r_[np.zeros(len(unseen)), np.ones(len(anomalies))]
    return 100.0 * float((s[:len(unseen)] > det.threshold_).mean()), 100.0 * roc_auc_score(y, s)


def summary(rows: list[dict], lo: int, hi: int) -> dict:
    sel = [r for r in rows if lo <= r["n"] <= hi]
    out = {"cases": len(sel)}
    for v in VARIANTS:
        vals = [r[v] for r in sel]
        out[v] = {"mean": statistics.mean(vals), "max": max(vals), "min": min(vals),
                  "dev": statistics.mean(abs(x - 5.0) for x in vals), "over15": sum(x > 15 for x in vals),
                  "auroc": statistics.mean(r[f"auroc {v}"] for r in sel)}
    return out


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adbench", default="/work/shared/data/adbench", help="ADBench's .npz folder ('' for none)")
    p.add_argument("--reps", type=int, default=4, help="random draws per (table, n)")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    adbench = Path(args.adbench) if args.adbench else None
    rows, t0 = [], time.time()
    for name, normal, anomalies in tables(adbench):
        for n in SIZES:
            if len(normal) < n + 40:
                continue
            got = {v: [] for v in VARIANTS}
            for rep in range(args.reps):
                order = np.random.default_rng(100 + rep).permutation(len(normal))
                for v in VARIANTS:
                    got[v].append(run(normal[order[:n]], normal[order[n:]], anomalies, rep, v))
            rows.append({"table": name, "n": n, **{v: statistics.mean(f for f, _ in got[v]) for v in VARIANTS},
                         **{f"auroc {v}": statistics.mean(a for _, a in got[v]) for v in VARIANTS}})
            print(f"{name:16s} n={n:4d} " + "  ".join(f"{v}: {rows[-1][v]:5.1f}% flagged, AUROC "
                                                       f"{rows[-1]['auroc ' + v]:5.1f}" for v in VARIANTS), flush=True)
    lines = ["# Contamination thresholds on small tables", "",
             "Generated by `python benchmarks/small_thresholds.py` (see its docstring). `aekit.Detector()` with its "
             "defaults, `contamination=0.05`, trained on n normal rows; flagged = the share of unseen normal rows of "
             f"the same table above the threshold (target about 5%), AUROC x100 of unseen normal rows against the "
             f"table's anomalies, means over {args.reps} draws. `before`: a held-out fold's statistics score that "
             "fold's own rows, and one member without cross-fitting below 20 distinct rows; `now`: the defaults "
             "(`aekit.adapt.inner_folds`, `aekit.adapt.MIN_FOLD_ROWS`); `novelty`: the same with "
             "`novelty=True` (the rows are known to be normal: `aekit train --normal-class`).", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M')}; wall time {(time.time() - t0) / 60:.1f} min; ADBench folder: "
             f"{adbench or 'none'}", "",
             "| n | cases | variant | flagged: mean | worst (max) | min | mean distance to 5 | cases above 15% | "
             "AUROC |", "|---|---|---|---|---|---|---|---|---|"]
    for lo, hi in ((10, 15), (25, 60), (100, 150), (250, 250)):
        sm = summary(rows, lo, hi)
        for v in VARIANTS:
            f = sm[v]
            lines.append(f"| {lo}-{hi} | {sm['cases']} | {v} | {f['mean']:.1f} | {f['max']:.1f} | {f['min']:.1f} | "
                         f"{f['dev']:.1f} | {f['over15']} | {f['auroc']:.1f} |")
    lines += ["", "| table | n | flagged " + " | flagged ".join(VARIANTS) + " | AUROC " + " | AUROC ".join(VARIANTS)
              + " |", "|---|---|" + "---|" * (2 * len(VARIANTS))]
    lines += [f"| {r['table']} | {r['n']} | " + " | ".join(f"{r[v]:.1f}" for v in VARIANTS) + " | "
              + " | ".join(f"{r['auroc ' + v]:.1f}" for v in VARIANTS) + " |" for r in rows]
    md = "\n".join(lines) + "\n"
    print(md)
    if not args.no_write:
        (HERE / "RESULTS_small_thresholds.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
