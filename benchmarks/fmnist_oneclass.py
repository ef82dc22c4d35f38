"""Fashion-MNIST one-class anomaly detection: aekit's Detector beside pyod's AutoEncoder. Not a test.

    python benchmarks/fmnist_oneclass.py [--classes 0,1,...,9] [--seeds 0,1,2] [--methods aekit,aekit-recon,pyod-ae]

Each of the 10 classes is normal in turn: a detector is fitted on that class's 6000 training images of the
official split (read from the IDX files in /usr/share/datasets/fashion-mnist, or $AEKIT_BENCH_FMNIST) and scores
all 10000 test images; the other nine classes are the anomalies. Test AUROC per class, its mean over the
classes, and the fit+score seconds of each method, every method with its default settings:

- ``aekit``: ``aekit.Detector(random_state=seed)`` (images: the joint score, see src/aekit/detector.py);
- ``aekit-recon``: ``aekit.Detector(random_state=seed, anomaly_score="recon_error")``, the same model scored by
  its squared reconstruction error;
- ``pyod-ae``: pyod 3.6.7's ``AutoEncoder(random_state=seed)`` on the same pixels (benchmarks/peers/
  pyod_fmnist_side.py in benchmarks/.venvs/pyod-adbench, installed by benchmarks/adbench.py's machinery).

Every (method, class, seed) is one subprocess with one thread, its result cached in
benchmarks/.cache/fmnist-oneclass (keyed by method, class, seed and aekit's commit for aekit's methods), so an
interrupted run resumes; the table gives each class's mean over the seeds and each seed's mean over the
classes. Results are printed and written to benchmarks/RESULTS_fmnist_oneclass.md and .json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from adbench import LOGS, RESULT_PREFIX, code_version, cpu_model, ensure_pyod, loadavg, side_env, versions  # noqa: E402

RESULTS_MD = HERE / "RESULTS_fmnist_oneclass.md"
RESULTS_JSON = HERE / "RESULTS_fmnist_oneclass.json"
CACHE = HERE / ".cache" / "fmnist-oneclass"
METHODS = ("aekit", "aekit-recon", "pyod-ae")
LABELS = {"aekit": "aekit.Detector()", "aekit-recon": "aekit.Detector(anomaly_score='recon_error')",
          "pyod-ae": "pyod AutoEncoder()"}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]


def aekit_side(method: str, cls: int, seed: int) -> None:
    sys.path.insert(0, str(HERE / "peers"))
    import torch
    from _common import Timer, emit, fashion_mnist, stdout_to_stderr
    from sklearn.metrics import roc_auc_score

    import aekit

    torch.set_num_threads(1)
    data = fashion_mnist()
    x_train = data["x_train"][data["y_train"] == cls]
    kw = {"anomaly_score": "recon_error"} if method == "aekit-recon" else {}
    with stdout_to_stderr():
        det = aekit.Detector(random_state=seed, **kw)
        with Timer() as tf:
            det.fit(x_train)
        with Timer() as ts:
            scores = det.decision_function(data["x_test"])
    emit({"method": method, "class": cls, "auroc": float(roc_auc_score((data["y_test"] != cls).numpy(), scores)),
          "fit_seconds": tf.seconds, "score_seconds": ts.seconds, "score": det.anomaly_score_,
          "epochs": len(det.history_), "aekit": aekit.__version__})


def run_one(method: str, cls: int, seed: int, pyod_py: Path | None, timeout: float) -> dict:
    if method == "pyod-ae":
        cmd = [str(pyod_py), str(HERE / "peers" / "pyod_fmnist_side.py"), str(cls), "--seed", str(seed)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--side", method, str(cls), "--seed", str(seed)]
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"fmnist.{cls}.{method}.log"
    with open(log_path, "w") as log:
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=side_env(), timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
    for ln in p.stdout.splitlines():
        if ln.startswith(RESULT_PREFIX):
            return json.loads(ln[len(RESULT_PREFIX):])
    return {"error": f"exit status {p.returncode}, no result line (see {log_path})"}


def cached_run(method: str, cls: int, seed: int, pyod_py, timeout: float, commit: str) -> dict:
    """run_one's result, from the cache when this (method, class, seed) ran before (for aekit: at this commit)."""
    key = CACHE / method / f"{cls}__{seed}{'' if method == 'pyod-ae' else '__' + commit}.json"
    if key.exists():
        return {**json.loads(key.read_text()), "cached": True}
    r = run_one(method, cls, seed, pyod_py, timeout)
    if "auroc" in r:
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_text(json.dumps(r))
    return r


def seed_means(results: dict, methods: list[str], classes: list[int], seeds: list[int]) -> dict:
    """{method: {seed: mean AUROC x100 over the classes}} (NaN where a class has no result)."""
    out = {}
    for m in methods:
        out[m] = {}
        for s in seeds:
            vals = [results[c][m][s]["auroc"] for c in classes if "auroc" in results[c][m][s]]
            out[m][s] = 100 * float(np.mean(vals)) if len(vals) == len(classes) else float("nan")
    return out


def render(results: dict, methods: list[str], classes: list[int], meta: dict, seeds: list[int]) -> str:
    lines = ["# Fashion-MNIST one-class: aekit beside pyod", "",
             "Generated by `python benchmarks/fmnist_oneclass.py` (protocol in its docstring): each class normal in "
             "turn, trained on its 6000 training images, test AUROC x100 on all 10000 test images, mean over seeds "
             f"{seeds}; seconds = fit + score, one thread per method, methods of a class run back to back.", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}; wall {meta['wall_minutes']:.1f} min",
             f"- aekit: commit {meta['aekit_commit']}; pyod: {meta['pyod_versions']}",
             f"- machine: {meta['machine']}; load average {meta['load_start']} at the start, {meta['load_end']} at "
             "the end",
             "- reused from benchmarks/.cache (earlier runs of this script; their seconds were measured then, not "
             "side by side with this run's): " + (", ".join(
                 f"{m} {sum(r.get('cached', False) for c in classes for r in results[c][m].values())} of "
                 f"{len(classes) * len(seeds)}" for m in methods)), "",
             "| class | " + " | ".join(LABELS[m] for m in methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for c in classes:
        cells = []
        for m in methods:
            ok = [r["auroc"] for r in results[c][m].values() if "auroc" in r]
            cells.append(f"{100 * np.mean(ok):.2f}" if len(ok) == len(seeds) else "error")
        lines.append(f"| {c} {CLASS_NAMES[c]} | " + " | ".join(cells) + " |")
    per_seed = seed_means(results, methods, classes, seeds)
    means, secs = {}, {}
    for m in methods:
        means[m] = float(np.mean(list(per_seed[m].values())))
        ok = [r for c in classes for r in results[c][m].values() if "auroc" in r]
        secs[m] = float(np.median([r["fit_seconds"] + r["score_seconds"] for r in ok])) if ok else float("nan")
    lines.append("| **mean** | " + " | ".join(f"**{means[m]:.2f}**" for m in methods) + " |")
    for s in seeds:
        lines.append(f"| mean, seed {s} | " + " | ".join(f"{per_seed[m][s]:.2f}" for m in methods) + " |")
    lines.append("| median seconds | " + " | ".join(f"{secs[m]:.1f}" for m in methods) + " |")
    if "pyod-ae" in methods and "aekit" in methods:
        ratio = secs["aekit"] / secs["pyod-ae"]
        gap = means["aekit"] - means["pyod-ae"]
        lines += ["", f"aekit.Detector() minus pyod AutoEncoder: {gap:+.2f} AUROC points; time ratio (median "
                  f"seconds) {ratio:.2f}x."]
    errors = [f"{c} / {m} / seed {s}: {r['error']}" for c in classes for m in methods
              for s, r in results[c][m].items() if "error" in r]
    if errors:
        lines += ["", "Errors:", *[f"- {e}" for e in errors]]
    return "\n".join(lines) + "\n", means, secs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", default=",".join(map(str, range(10))))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # a side's seed
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--side", nargs=2, metavar=("METHOD", "CLASS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        aekit_side(args.side[0], int(args.side[1]), args.seed)
        return
    classes = [int(c) for c in args.classes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    commit = code_version()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    pyod_py = None
    LOGS.mkdir(parents=True, exist_ok=True)
    if "pyod-ae" in methods:
        pyod_py, why = ensure_pyod()
        if pyod_py is None:
            print(f"[skip] pyod-ae: {why}")
            methods.remove("pyod-ae")
    t0, load_start = time.time(), loadavg()
    results = {}
    for s in seeds:
        for c in classes:
            for m in methods:
                r = results.setdefault(c, {}).setdefault(m, {})[s] = cached_run(m, c, s, pyod_py, args.timeout, commit)
                took = r.get("fit_seconds", 0.0) + r.get("score_seconds", 0.0)
                print(f"seed {s} class {c} {m:12s} " + (f"AUROC {100 * r['auroc']:.2f}  {took:.1f} s" if "auroc" in r
                                                       else r["error"]), flush=True)
    meta = {"command": "python benchmarks/fmnist_oneclass.py " + " ".join(sys.argv[1:]),
            "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "wall_minutes": (time.time() - t0) / 60,
            "aekit_commit": commit, "machine": cpu_model(), "load_start": load_start, "load_end": loadavg(),
            "pyod_versions": versions(pyod_py, ["pyod", "torch"]) if pyod_py else "not run"}
    md, means, secs = render(results, methods, classes, meta, seeds)
    print(md)
    RESULTS_MD.write_text(md)
    RESULTS_JSON.write_text(json.dumps({"meta": meta, "seeds": seeds,
                                        "results": {str(c): r for c, r in results.items()},
                                        "mean_auroc": means, "median_seconds": secs}, indent=1))


if __name__ == "__main__":
    main()
