"""The selection of aekit.Detector()'s image default on validation data only (issue 18, point 6). Not a test.

    python benchmarks/fmnist_select.py [--candidates current,folds2,...] [--seed 0]

Protocol (benchmarks/README.md, "Selection for images"): Fashion-MNIST's *training* images only (the test
images judge only at the end, in benchmarks/fmnist_oneclass.py) and scikit-learn's digits. For each class c of
Fashion-MNIST: its 6000 training images permuted (numpy seed 0), 5000 fit the detector, the other 1000 are
the validation's normal images; 1000 images drawn from the other classes' training images are its anomalies.
For each digit d of digits (8 x 8 images scaled to [0, 1]): 80% of its images fit, the other 20% are normal, as
many images of the other digits are anomalies. A task's figure is the validation AUROC x100. The candidates
(CANDIDATES) are ranked per task; the choice is the best mean rank over the 20 tasks (ties: the better mean
AUROC on Fashion-MNIST). One thread, in this process; seconds = fit + score per task. Results are cached per
(candidate, task, seed) in benchmarks/.cache/fmnist-select; writes benchmarks/RESULTS_fmnist_select.md / .json
(``--results NAME``: RESULTS_NAME.md / .json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))
from adbench import code_version, cpu_model, loadavg  # noqa: E402

CACHE = HERE / ".cache" / "fmnist-select"
CANDIDATES = {  # name -> Detector parameters (fixed before the run: benchmarks/README.md)
    "current": {},
    "folds2": {"folds": 2},  # cross-fitting: 2 members, statistics from the fold each did not train on
    "ens2": {"n_estimators": 2, "folds": 1},  # 2 members on every image: the ensemble without the cross-fitting
    "latent16": {"latent_dim": 16},  # a smaller code than max(2, min(32, d // 4)) = 32
    # round 2 (benchmarks/README.md, "Selection for images, round 2"): folds2 plus the code-space neighbour term
    "folds2-knn10": {"folds": 2, "neighbors": 10},
    # round 3 (benchmarks/README.md, "Selection for images, round 3"): folds2 with the residual images smoothed
    # over a 3 x 3 window where the images' sides have at least 16 pixels (SMOOTH_RULES; digits' 8 x 8: none)
    "smooth3": {"folds": 2, "residual_smooth": "3 on sides >= 16"},
}
SMOOTH_RULES = {"3 on sides >= 16": (3, 16)}  # a residual_smooth given by the image size: (window, smallest side)
# round 4 (benchmarks/README.md, "Selection for images, round 4"): the default with half the optimizer steps
CANDIDATES["smooth3-750"] = dict(CANDIDATES["smooth3"])
# each candidate's detector.TARGET_STEPS: every candidate before round 5 ran with 1500 (round 5 made 750 the default)
STEPS = {**dict.fromkeys(CANDIDATES, 1500), "smooth3-750": 750}


def tasks(seed: int):
    """(name, x_fit, x_val, y_val) of every task; images float32 (n, 1, H, W) in [0, 1]."""
    from _common import fashion_mnist
    from sklearn.datasets import load_digits

    data = fashion_mnist()
    x, y = data["x_train"].numpy(), data["y_train"].numpy()
    for c in range(10):
        rng = np.random.RandomState(seed)
        own = rng.permutation(np.flatnonzero(y == c))
        other = rng.choice(np.flatnonzero(y != c), 1000, replace=False)
        yield (f"fmnist{c}", x[own[:5000]], np.concatenate([x[own[5000:]], x[other]]),
               np.r_[np.zeros(len(own) - 5000), np.ones(1000)])
    d = load_digits()
    xd, yd = (d.images / 16.0).astype(np.float32)[:, None], d.target
    for c in range(10):
        rng = np.random.RandomState(seed)
        own = rng.permutation(np.flatnonzero(yd == c))
        k = int(0.8 * len(own))
        other = rng.choice(np.flatnonzero(yd != c), len(own) - k, replace=False)
        yield f"digits{c}", xd[own[:k]], np.concatenate([xd[own[k:]], xd[other]]), np.r_[np.zeros(len(own) - k),
                                                                                          np.ones(len(other))]


def run(params: dict, x_fit, x_val, y_val, seed: int, steps: int | None = None) -> dict:
    from sklearn.metrics import roc_auc_score

    import aekit

    if params.get("residual_smooth") in SMOOTH_RULES:
        window, side = SMOOTH_RULES[params["residual_smooth"]]
        params = {**params, "residual_smooth": window if min(x_fit.shape[-2:]) >= side else 1}
    import aekit.detector as detmod

    default_steps = detmod.TARGET_STEPS
    detmod.TARGET_STEPS = steps or default_steps
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            det = aekit.Detector(random_state=seed, **params).fit(x_fit)
    finally:
        detmod.TARGET_STEPS = default_steps
        s = det.decision_function(x_val)
    return {"auroc": float(roc_auc_score(y_val, s)), "seconds": time.perf_counter() - t0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default="fmnist_select", help="write benchmarks/RESULTS_<this>.md and .json")
    args = p.parse_args()
    import torch
    from scipy.stats import rankdata

    torch.set_num_threads(1)
    cands = args.candidates.split(",")
    t0, load0 = time.perf_counter(), loadavg()
    res = {}
    for name, x_fit, x_val, y_val in tasks(args.seed):
        for m in cands:
            f = CACHE / m / f"{name}__{args.seed}.json"
            if f.exists():
                r = json.loads(f.read_text())
            else:
                r = run(CANDIDATES[m], x_fit, x_val, y_val, args.seed, STEPS.get(m))
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text(json.dumps(r))
            res.setdefault(name, {})[m] = r
            print(f"{name:9} {m:9} {100 * r['auroc']:6.2f} {r['seconds']:6.1f} s", flush=True)
    names = list(res)
    auc = np.array([[res[t][m]["auroc"] for m in cands] for t in names]) * 100
    ranks = np.array([rankdata(-row) for row in auc])
    fm = np.array([t.startswith("fmnist") for t in names])
    summary = {m: {"mean_rank": float(ranks[:, i].mean()), "fmnist": float(auc[fm, i].mean()),
                   "digits": float(auc[~fm, i].mean()),
                   "seconds_fmnist": float(np.median([res[t][m]["seconds"] for t in np.array(names)[fm]]))}
               for i, m in enumerate(cands)}
    choice = min(cands, key=lambda m: (summary[m]["mean_rank"], -summary[m]["fmnist"]))
    meta = {"command": "python benchmarks/fmnist_select.py " + " ".join(sys.argv[1:]), "seed": args.seed,
            "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "aekit_commit": code_version(),
            "machine": cpu_model(), "load": f"{load0} -> {loadavg()}",
            "wall_minutes": (time.perf_counter() - t0) / 60}
    L = ["# Selection of aekit.Detector()'s image default on validation data", "",
         "Generated by `benchmarks/fmnist_select.py` (protocol in its docstring and in benchmarks/README.md, "
         "\"Selection for images\"): validation AUROC x100 on Fashion-MNIST's training images and on digits; "
         "the test images are not used.", "",
         f"- command: `{meta['command']}`; date {meta['date']}; aekit {meta['aekit_commit']}; {meta['machine']}; "
         f"load {meta['load']}; {meta['wall_minutes']:.1f} min", "",
         "| candidate | Detector parameters | mean rank (20 tasks) | Fashion-MNIST validation | digits validation | "
         "median seconds (Fashion-MNIST) |", "|---|---|---|---|---|---|"]
    for m in cands:
        s = summary[m]
        L.append(f"| {m} | `{CANDIDATES[m]}` | {s['mean_rank']:.2f} | {s['fmnist']:.2f} | {s['digits']:.2f} | "
                 f"{s['seconds_fmnist']:.1f} |")
    L += ["", f"**Chosen: {choice}.**", "", "| task | " + " | ".join(cands) + " |", "|---" * (len(cands) + 1) + "|"]
    L += [f"| {t} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for t, row in zip(names, auc)]
    (HERE / f"RESULTS_{args.results}.md").write_text("\n".join(L) + "\n")
    (HERE / f"RESULTS_{args.results}.json").write_text(json.dumps({"meta": meta, "candidates": {m: CANDIDATES[m]
                                                     for m in cands}, "summary": summary, "choice": choice,
                                                     "results": res}, indent=1))
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
