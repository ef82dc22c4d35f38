"""ADBench's unsupervised protocol, aekit side by side with pyod. Not part of the test suite.

    python benchmarks/adbench.py DATA_DIR [DATA_DIR ...] [--seeds 1,2,3] [--methods aekit,iforest,...] [--sets A,B]

Each DATA_DIR is a folder of ADBench-format ``.npz`` files (``X`` (n, d) features, ``y`` (n,) with 1 =
anomaly), e.g. a copy of ADBench's ``adbench/datasets/Classical`` folder; aekit bundles none of them. Each
folder is a *domain* (``adbench`` -> "tables", ``adbench-embeddings`` -> "embeddings", else the folder's
name), summarized on its own: mean AUROC, mean rank, sets above IForest, the worst set against IForest and
against the best baseline there, seconds and their ratio to pyod AutoEncoder's.

Reuse, so that a full run stays affordable on a small machine: pyod AutoEncoder's and VAE's results (~10 and
~30 s per (set, seed)) are taken from the previous RESULTS_adbench.json where it has them (``--reuse``; same
seeds, and the split fingerprints are checked against this run's other methods), and every pyod result is
cached in ``benchmarks/.cache/adbench-results`` (same method, set, seeds and pyod release; ``--no-cache``
reruns them). RESULTS_adbench.md says which methods were measured in the run and which were reused.

The protocol is ADBench's (Minqi824/ADBench, ``datasets/data_generator.py`` and ``run.py``, unsupervised
setting), reproduced here call for call so that numpy's global random stream is consumed in the same order:

- seeds 1, 2, 3; for each, ``np.random.seed(seed)`` (and ``random.seed``, ``torch.manual_seed``);
- a set under 1000 rows is resampled with replacement to 1000 rows (after re-seeding), one over 10000 rows
  is subsampled without replacement to 10000 (after re-seeding);
- ``train_test_split(X, y, test_size=0.3, shuffle=True, stratify=y)`` with numpy's global random state;
- ``MinMaxScaler`` fitted on the train split, applied to both;
- the labels of the train split are hidden (unsupervised): every detector is fitted on the contaminated
  train split with its default settings, after ``np.random.seed(seed)`` again (ADBench's ``PYOD.fit``);
- test AUROC (``roc_auc_score``), averaged over the seeds; fit and score wall times per (set, seed).

aekit's methods: ``aekit`` (``aekit.Detector()`` with the defaults of the commit measured: the configuration
this benchmark selected, see benchmarks/README.md) and ``aekit-ae`` (the plain autoencoder with the library's
defaults, reconstruction error as the score).

Every (method, set) is one subprocess that runs all seeds and prints one ``BENCH_RESULT {json}`` line, as the
other benchmarks' side scripts do: aekit's methods run in this interpreter's environment (this file with
``--side``), pyod's in ``benchmarks/.venvs/pyod-adbench`` (torch 2.13.0, then the pinned pyod), created on
first use. Each subprocess uses 1 torch / BLAS thread; ``--jobs 2`` runs two at once (faster, noisier
times). Methods of one set run back to back, so the load of a shared machine falls on all of them alike.

Results: a per-set table, the mean AUROC, the mean rank (rank 1 = best on a set, ties averaged) and the mean
fit+score seconds per (set, seed) of each method, printed and written to ``benchmarks/RESULTS_adbench.md``
and ``benchmarks/RESULTS_adbench.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
LOGS = HERE / ".cache" / "logs" / "adbench"
RESULTS_JSON = HERE / "RESULTS_adbench.json"
RESULTS_MD = HERE / "RESULTS_adbench.md"
RESULT_PREFIX = "BENCH_RESULT "
TORCH_PIN = "torch==2.13.0"
PYOD_VENV = "pyod-adbench"
# pyod's deep detectors import tqdm without declaring it
PYOD_REQS = ["pyod==3.6.7", "tqdm", "safetensors>=0.4"]  # safetensors: aekit itself, which adbench_select.py and
# novelty_seconds.py import from src/ in this environment (PYTHONPATH=src) beside pyod
SEEDS = (1, 2, 3)
N_MIN, N_MAX, TEST_SIZE = 1000, 10000, 0.3


# --------------------------------------------------------------------------------------------------
# The protocol (numpy + scikit-learn only: it runs in every environment)


def _set_seed(seed: int) -> None:
    """ADBench's Utils.set_seed without TensorFlow: numpy's and Python's global generators (and torch's)."""
    np.random.seed(seed)
    random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def load_set(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as d:
        return np.asarray(d["X"]), np.asarray(d["y"])


def protocol_split(X: np.ndarray, y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """ADBench's DataGenerator.generator(la=0.0, at_least_one_labeled=True) for a classical set and ``seed``.

    Returns X_train, X_test (float64, min-max scaled with the train split's range), y_train (all 0: the
    labels are hidden), y_test, and y_train_true (the hidden labels; only for describing the data).

    A subsample left with fewer than 2 rows of a class (smtp: 30 anomalies in 95156 rows, about 3 in a
    subsample of 10000) cannot be split stratified; it is drawn again from seed + 1000003 x attempt (a case
    ADBench's code does not handle; every seed that drew 2 or more is the ADBench split).
    """
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import MinMaxScaler

    X0, y0 = X, y
    for attempt in range(100):
        draw = seed + 1000003 * attempt
        X, y = X0, y0
        _set_seed(draw)
        if len(y) < N_MIN:
            _set_seed(draw)
            idx = np.random.choice(np.arange(len(y)), N_MIN, replace=True)
            X, y = X[idx], y[idx]
        if len(y) > N_MAX:
            _set_seed(draw)
            idx = np.random.choice(np.arange(len(y)), N_MAX, replace=False)
            X, y = X[idx], y[idx]
        if np.unique(y, return_counts=True)[1].min() >= 2:
            break
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=TEST_SIZE, shuffle=True, stratify=y)
    scaler = MinMaxScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    return {"X_train": X_train, "X_test": X_test, "y_train": np.zeros_like(y_train), "y_test": y_test,
            "y_train_true": y_train}


def split_fingerprint(split: dict[str, np.ndarray]) -> str:
    """A short digest of a split, so that every side can show it scored the very same data."""
    import hashlib

    h = hashlib.sha1()
    for k in ("X_train", "X_test", "y_test"):
        h.update(np.ascontiguousarray(split[k], dtype=np.float64).tobytes())
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# aekit's side


def plain_ae_scores(X_train: np.ndarray, X_test: np.ndarray, seed: int) -> np.ndarray:
    """aekit's plain autoencoder with the library's defaults: ``build("ae")`` (MLP D-256-16-256-D, ReLU, Gaussian
    likelihood for tables), ``TrainConfig(epochs=20, batch 128, Adam 1e-3)``, 10% of the train split held out
    for the best-epoch choice, inputs standardized with the train split's mean and std; the score is the
    reconstruction error (sum of squares over the standardized features)."""
    import torch

    import aekit

    ds = aekit.datasets.from_arrays(X_train, kind="table", val_fraction=0.1, test_fraction=0.0, seed=seed)
    model = aekit.build("ae", dataset=ds, seed=seed)
    aekit.fit(model, ds, aekit.TrainConfig(epochs=20, seed=seed), quiet=True)
    x = ((torch.from_numpy(X_test).float() - ds.mean) / ds.std).float()
    return aekit.metrics.anomaly_scores(model, x)["recon_error"].numpy()


def aekit_side(method: str, set_path: str, seeds: list[int]) -> None:
    sys.path.insert(0, str(HERE / "peers"))
    import torch
    from _common import Timer, emit, stdout_to_stderr

    torch.set_num_threads(1)
    from sklearn.metrics import roc_auc_score

    import aekit

    X, y = load_set(set_path)
    runs, which = [], None
    for seed in seeds:
        d = protocol_split(X, y, seed)
        _set_seed(seed)
        with stdout_to_stderr():
            if method == "aekit":
                which = "aekit.Detector() with its defaults, random_state=seed"
                det = aekit.Detector(random_state=seed)
                with Timer() as tf:
                    det.fit(d["X_train"])
                with Timer() as ts:
                    scores = np.asarray(det.decision_function(d["X_test"]), dtype=np.float64)
            elif method == "aekit-ae":
                which = "plain ae with aekit's defaults (reconstruction error)"
                with Timer() as tf:  # training and scoring are one call here: all of it counts as fit
                    scores = plain_ae_scores(d["X_train"], d["X_test"], seed)
                ts = Timer()
                ts.seconds = 0.0
            else:
                raise SystemExit(f"unknown aekit method {method!r}")
        runs.append({"seed": seed, "auroc": float(roc_auc_score(d["y_test"], scores)), "fit_seconds": tf.seconds,
                     "score_seconds": ts.seconds, "split": split_fingerprint(d)})
    emit({"method": method, "set": Path(set_path).stem, "runs": runs, "aekit": aekit.__version__, "detector": which})


# --------------------------------------------------------------------------------------------------
# The harness

AEKIT_METHODS = ("aekit", "aekit-ae")
# pyod's detectors that ADBench's unsupervised table D4 lists, run with their defaults (ADBench's PYOD.fit)
PYOD_METHODS = ("iforest", "ecod", "pca", "mcd", "knn", "cblof", "hbos", "copod", "lof", "pyod-ae", "pyod-vae")
METHODS = AEKIT_METHODS + PYOD_METHODS
BASELINES = PYOD_METHODS  # "the best baseline on a set": the best of these there
LABELS = {"aekit": "aekit.Detector()", "aekit-ae": "aekit plain ae",
          "iforest": "pyod IForest", "ecod": "pyod ECOD", "pca": "pyod PCA", "mcd": "pyod MCD", "knn": "pyod KNN",
          "cblof": "pyod CBLOF", "hbos": "pyod HBOS", "copod": "pyod COPOD", "lof": "pyod LOF",
          "pyod-ae": "pyod AutoEncoder", "pyod-vae": "pyod VAE"}
# a data folder's domain: its name in the report (the folder's own name when it is not listed here)
DOMAIN_NAMES = {"adbench": "tables", "adbench-embeddings": "embeddings"}
CACHE = HERE / ".cache" / "adbench-results"  # results per (method, domain, set, seeds): reused, not rerun


def domain_of(folder: Path) -> str:
    return DOMAIN_NAMES.get(folder.resolve().name, folder.resolve().name)


def ensure_pyod() -> tuple[Path | None, str]:
    """benchmarks/.venvs/pyod-adbench's python, created on first use (benchmarks/run.py's installer: torch
    2.13.0 first, then the pinned pyod)."""
    sys.path.insert(0, str(HERE))
    from run import ensure_venv  # the main harness, beside this script

    return ensure_venv(VENVS / PYOD_VENV, PYOD_REQS, "pyod", LOGS / "install-pyod.log")


def versions(py: Path, names: list[str]) -> dict[str, str]:
    code = "import importlib.metadata as m, json, sys; print(json.dumps({d: m.version(d) for d in sys.argv[1:]}))"
    p = subprocess.run([str(py), "-c", code, *names], capture_output=True, text=True)
    return json.loads(p.stdout) if p.returncode == 0 else {}


def side_env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[k] = "1"
    env["AEKIT_BENCH_THREADS"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_one(method: str, set_path: Path, seeds: list[int], pyod_py: Path | None, timeout: float) -> dict:
    if method in AEKIT_METHODS:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--side", method, str(set_path)]
    else:
        cmd = [str(pyod_py), str(HERE / "peers" / "pyod_adbench_side.py"), method, str(set_path)]
    cmd += ["--seeds", ",".join(map(str, seeds))]
    LOGS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(LOGS / f"{set_path.stem}.{method}.log", "w") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=side_env(), timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s", "wall_seconds": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    for ln in p.stdout.splitlines():
        if ln.startswith(RESULT_PREFIX):
            res = json.loads(ln[len(RESULT_PREFIX):])
            res["wall_seconds"] = wall
            return res
    return {"error": f"exit status {p.returncode}, no result line (see {LOGS / f'{set_path.stem}.{method}.log'})",
            "wall_seconds": wall}


def _cache_file(method: str, domain: str, set_name: str, seeds: list[int]) -> Path:
    return CACHE / method / f"{domain}__{set_name}__seeds{'-'.join(map(str, seeds))}.json"


def _version_key(method: str, pyod_version: str, commit: str) -> tuple[str, str]:
    """What a cached result must match: pyod's release for pyod's methods; for aekit's, the aekit commit
    measured (never a checkout with uncommitted changes)."""
    return ("aekit_commit", commit) if method in AEKIT_METHODS else ("pyod", pyod_version)


_TREES: dict[str, str] = {}


def _src_tree(rev: str) -> str:
    """The git tree of src/ at ``rev``: two commits with the same one measure the same aekit."""
    if rev not in _TREES:
        p = subprocess.run(["git", "rev-parse", f"{rev}:src"], cwd=HERE, capture_output=True, text=True)
        _TREES[rev] = p.stdout.strip() if p.returncode == 0 else f"?{rev}"
    return _TREES[rev]


def _src_changes(rev: str) -> str:
    """The files of src/ that differ between ``rev`` and the working tree ("" when none)."""
    p = subprocess.run(["git", "diff", "--name-only", rev, "--", "../src"], cwd=HERE, capture_output=True, text=True)
    return ", ".join(p.stdout.split()) if p.returncode == 0 else "?"


def cached(method: str, domain: str, set_name: str, seeds: list[int], pyod_version: str, commit: str,
           any_commit: bool = False) -> dict | None:
    """A result of an earlier run of this harness (same method, set, seeds, and pyod release, or for aekit's
    methods a commit with the same src/ as this clean checkout; with ``any_commit``, any commit, and the result
    says which files of src/ have changed since)."""
    f = _cache_file(method, domain, set_name, seeds)
    key, want = _version_key(method, pyod_version, commit)
    if not f.exists() or ("+" in want and not any_commit):
        return None
    r = json.loads(f.read_text())
    if [x["seed"] for x in r.get("runs", [])] != seeds:
        return None
    if key == "pyod":
        return r if r.get(key) == want else None
    if r.get(key) is None:
        return None
    if _src_tree(r[key]) == _src_tree(want.split("+")[0]) and "+" not in want:
        return r
    if not any_commit:
        return None
    return {**r, "reused": f"measured at aekit commit {r[key]} (src/ changed since in: "
                          f"{_src_changes(r[key]) or 'nothing'})"}


def store(method: str, domain: str, set_name: str, seeds: list[int], result: dict, commit: str) -> None:
    if "error" in result or not result.get("runs") or (method in AEKIT_METHODS and "+" in commit):
        return
    if method in AEKIT_METHODS:
        result = {**result, "aekit_commit": commit}
    f = _cache_file(method, domain, set_name, seeds)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(result) + "\n")


def reusable(previous: dict | None, methods: list[str], seeds: list[int]) -> dict:
    """{(domain, set, method): result} from the RESULTS_adbench.json of an earlier run, for ``methods`` (the slow
    pyod AutoEncoder and VAE by default): same protocol, same seeds; the split fingerprints are checked by
    ``summarize`` against the other methods' of this run. Reads the format with domains and the older one
    (one folder: the tables)."""
    if not previous or previous.get("meta", {}).get("seeds") != seeds:
        return {}
    meta, raw = previous["meta"], previous["raw"]
    if "domains" not in meta:
        raw = {"tables": raw}
    where = f"reused from RESULTS_adbench.json of {meta.get('date', '?')} (aekit commit {meta.get('aekit_commit')})"
    out = {}
    for domain, sets in raw.items():
        for set_name, by_method in sets.items():
            for m in methods:
                r = by_method.get(m)
                if r and r.get("runs") and "error" not in r:
                    out[(domain, set_name, m)] = {**r, "reused": r.get("reused", where)}
    return out


def mean_ranks(table: dict[str, dict[str, float]], methods: list[str]) -> dict[str, float]:
    """Mean over sets of each method's rank on the set (1 = highest AUROC; ties share the mean rank)."""
    from scipy.stats import rankdata

    ranks = {m: [] for m in methods}
    for row in table.values():  # among the methods with a result on the set
        there = [m for m in methods if np.isfinite(row.get(m, np.nan))]
        r = rankdata([-row[m] for m in there])
        for m, v in zip(there, r):
            ranks[m].append(float(v))
    return {m: float(np.mean(v)) if v else float("nan") for m, v in ranks.items()}


def worst_losses(table: dict[str, dict[str, float]], methods: list[str], sets: list[str]) -> dict:
    """Per method, the largest loss on any set against IForest and against the best baseline there (the best
    of the pyod methods other than itself): {"iforest": [points, set], "best": [points, set, baseline]}."""
    out = {}
    for m in methods:
        vs_if, vs_best = [-np.inf, None], [-np.inf, None, None]
        for s in sets:
            row = {k: v for k, v in table[s].items() if np.isfinite(v)}
            if m not in row:
                continue
            if "iforest" in row and m != "iforest" and row["iforest"] - row[m] > vs_if[0]:
                vs_if = [row["iforest"] - row[m], s]
            others = [b for b in BASELINES if b in row and b != m]
            if others:
                b = max(others, key=lambda k: row[k])
                if row[b] - row[m] > vs_best[0]:
                    vs_best = [row[b] - row[m], s, b]
        out[m] = {"iforest": vs_if if vs_if[1] else None, "best": vs_best if vs_best[1] else None}
    return out


def summarize(results: dict[str, dict[str, dict]], methods: list[str], sets: list[str]) -> dict:
    """One domain: per-set mean AUROC (x100) over seeds, means over sets, mean ranks, the worst set against
    IForest and against the best baseline, mean seconds per (set, seed) and their ratio to pyod AutoEncoder's, and
    the seconds of the later fits of a subprocess (every seed after its first, whose fit also pays the one-off costs
    of a fresh process: pyod's first AutoEncoder fit takes seconds more than its next ones) with their ratio to pyod
    AutoEncoder's set by set."""
    table, secs, problems = {}, {m: [] for m in methods}, []
    later = {m: {} for m in methods}  # set -> median seconds of the fits after a subprocess's first
    for s in sets:
        table[s] = {}
        prints = {}
        for m in methods:
            r = results[s].get(m, {})
            if "error" in r or not r.get("runs"):
                table[s][m] = float("nan")
                problems.append(f"{s} / {m}: {r.get('error', 'no result')}")
                continue
            a = [x["auroc"] for x in r["runs"]]
            table[s][m] = 100.0 * float(np.mean(a)) if all(np.isfinite(a)) else float("nan")
            secs[m] += [x["fit_seconds"] + x["score_seconds"] for x in r["runs"]]
            if len(r["runs"]) > 1:
                later[m][s] = float(np.median([x["fit_seconds"] + x["score_seconds"] for x in r["runs"][1:]]))
            for x in r["runs"]:
                prints.setdefault(x["seed"], set()).add(x["split"])
            for x in r["runs"]:
                if x.get("nonfinite"):
                    problems.append(f"{s} / {m} seed {x['seed']}: {x['nonfinite']} non-finite scores ({x['note']})")
        for seed, fp in prints.items():
            if len(fp) > 1:
                problems.append(f"{s} seed {seed}: the methods saw different splits ({sorted(fp)})")
    # the sets where every method without gaps has a result; a method with gaps (pyod's MCD where it did not finish
    # in time) is averaged, ranked and compared over the sets it has, and says how many
    have = {m: [s for s in sets if np.isfinite(table[s][m])] for m in methods}
    most = max(len(v) for v in have.values())
    full = [m for m in methods if len(have[m]) == most]
    complete = [s for s in sets if all(np.isfinite(table[s][m]) for m in full)]
    on = {m: [s for s in complete if np.isfinite(table[s][m])] for m in methods}
    mean_auroc = {m: float(np.mean([table[s][m] for s in on[m]])) if on[m] else float("nan") for m in methods}
    iforest_on = {m: float(np.mean([table[s]["iforest"] for s in on[m]])) if on[m] and "iforest" in methods
                  else float("nan") for m in methods}
    mean_seconds = {m: float(np.mean(v)) if v else float("nan") for m, v in secs.items()}
    ae = mean_seconds.get("pyod-ae", float("nan"))
    later_ratio = {}
    for m in methods:  # set by set against pyod AutoEncoder's later fits: (median over sets, (worst ratio, set))
        ratios = {x: later[m][x] / later["pyod-ae"][x] for x in later[m] if later.get("pyod-ae", {}).get(x)}
        worst = max(ratios, key=ratios.get) if ratios else None
        later_ratio[m] = (float(np.median(list(ratios.values()))), (ratios[worst], worst)) if ratios else None
    base = [m for m in methods if m in BASELINES]
    bests = [max(v) for v in ([table[s][b] for b in base if np.isfinite(table[s][b])] for s in complete) if v]
    best_per_set = float(np.mean(bests)) if bests else float("nan")
    return {"table": table, "complete_sets": complete, "mean_auroc": mean_auroc, "n_sets": {m: len(on[m]) for m in
                                                                                             methods},
            "iforest_on_same_sets": iforest_on, "mean_rank": mean_ranks({s: table[s] for s in complete}, methods),
            "worst": worst_losses(table, methods, complete), "mean_seconds": mean_seconds,
            "seconds_vs_pyod_ae": {m: v / ae if np.isfinite(ae) and ae > 0 else float("nan")
                                   for m, v in mean_seconds.items()},
            "later_seconds": {m: float(np.mean(list(v.values()))) if v else float("nan") for m, v in later.items()},
            "later_vs_pyod_ae": later_ratio,
            "wins_vs_iforest": {m: sum(table[s][m] > table[s]["iforest"] for s in on[m])
                                for m in methods if "iforest" in methods},
            "best_baseline_per_set": best_per_set, "problems": problems}


def cpu_model() -> str:
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = ln.partition(":")
            if k.strip() == "model name":
                return f"{v.strip()}, {os.cpu_count()} logical CPUs"
    except OSError:
        pass
    return f"{platform.processor() or 'unknown CPU'}, {os.cpu_count()} logical CPUs"


def code_version() -> str:
    """The aekit commit measured (benchmarks/run.py's: "+changes" when src/ differs from it)."""
    sys.path.insert(0, str(HERE))
    from run import code_version as of_harness  # the main harness, beside this script

    return of_harness()


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def _pts(v: float) -> str:
    return f"{v:+.1f}" if np.isfinite(v) else "-"


def render(summaries: dict[str, dict], methods: list[str], meta: dict) -> str:
    heads = [LABELS.get(m, m) for m in methods]
    lines = ["# ADBench, unsupervised protocol: aekit side by side with pyod", "",
             "Generated by `python benchmarks/adbench.py` (see its docstring for the protocol). Test AUROC x100, "
             f"mean over seeds {meta['seeds']}; rank 1 = best on a set; seconds = fit + score per (set, seed), "
             "measured inside each method's own subprocess (1 thread each). Each data folder is a domain, "
             "reported on its own.", "",
             f"- command: `{meta['command']}`",
             f"- date: {meta['date']}; wall time of the whole run: {meta['wall_minutes']:.1f} min "
             f"({meta['jobs']} subprocess(es) at a time)",
             f"- aekit: commit {meta['aekit_commit']}; {meta['aekit_detector']}",
             f"- pyod: {meta['pyod_versions']} in benchmarks/.venvs/{PYOD_VENV} ({TORCH_PIN} installed first, "
             f"then {' '.join(PYOD_REQS)}); pyod's detectors with their default settings, as ADBench runs them",
             f"- machine: {meta['machine']}; Python {meta['python']}; load average {meta['load_start']} at the "
             f"start, {meta['load_end']} at the end (the machine is shared: seconds are noisy, compare within a "
             "row of sets run back to back)",
             "- data: " + "; ".join(f"{d['name']}: {d['n_sets']} sets from `{d['dir']}`" for d in meta["domains"]),
             f"- measured in this run: {', '.join(meta['ran']) or 'nothing'}; reused: "
             + ("; ".join(f"{k}: {v}" for k, v in meta["reused"].items()) or "nothing"), ""]
    for domain, s in summaries.items():
        n = len(s["complete_sets"])
        lines += [f"## {domain}: summary over {n} sets", "",
                  "| method | mean AUROC | vs IForest | mean rank | sets above IForest | worst loss vs IForest (set) "
                  "| worst loss vs best baseline (set, baseline) | seconds | x pyod AutoEncoder | seconds, later fits "
                  "| x pyod AutoEncoder, later fits: median set (worst set) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for m, h in zip(methods, heads):
            w = s["worst"][m]
            wi = f"{w['iforest'][0]:.1f} ({w['iforest'][1]})" if w["iforest"] else "-"
            wb = f"{w['best'][0]:.1f} ({w['best'][1]}, {LABELS.get(w['best'][2], w['best'][2])})" if w["best"] \
                else "-"
            d_if = s["mean_auroc"][m] - s["mean_auroc"].get("iforest", float("nan"))
            d_if = s["mean_auroc"][m] - s["iforest_on_same_sets"][m]
            wins = f"{s['wins_vs_iforest'][m]} of {s['n_sets'][m]}" if m != "iforest" and s.get("wins_vs_iforest") \
                else "-"
            gaps = f" ({s['n_sets'][m]} sets)" if s["n_sets"][m] < n else ""
            lr = s.get("later_vs_pyod_ae", {}).get(m)
            lr = f"{lr[0]:.2f} ({lr[1][0]:.2f}, {lr[1][1]})" if lr else "-"
            ls = s.get("later_seconds", {}).get(m, float("nan"))
            lines.append(f"| {h} | {s['mean_auroc'][m]:.2f}{gaps} | {_pts(d_if) if m != 'iforest' else '-'} | "
                         f"{s['mean_rank'][m]:.2f} | {wins} | {wi} | {wb} | {s['mean_seconds'][m]:.2f} | "
                         f"{s['seconds_vs_pyod_ae'][m]:.2f} | {ls:.2f} | {lr} |")
        lines += ["", "Seconds: the mean over sets and seeds of fit + score; later fits: over the seeds after the "
                  "first of each subprocess (the first also pays a fresh process's one-off costs), the median per "
                  "set, and its ratio to pyod AutoEncoder's set by set (a ratio between two methods means most when "
                  "both were measured in this run: see 'measured in this run' above).", "",
                  f"Means over the {n} sets where every method without gaps has a result (a method with fewer "
                  "sets is averaged, ranked and compared with IForest over its own). The best baseline of each set "
                  f"(the best pyod method there, chosen with the test labels: an oracle) averages "
                  f"{s['best_baseline_per_set']:.2f}.", ""]
    for domain, s in summaries.items():
        lines += [f"## {domain}: per set", "", "| set | " + " | ".join(heads) + " |", "|---" * (len(methods) + 1)
                  + "|"]
        for name, row in s["table"].items():
            best = max((v for v in row.values() if np.isfinite(v)), default=float("nan"))
            cells = [f"**{row[m]:.1f}**" if np.isfinite(row[m]) and row[m] == best else
                     (f"{row[m]:.1f}" if np.isfinite(row[m]) else "-") for m in methods]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    problems = [f"{d}: {p}" for d, s in summaries.items() for p in s["problems"]]
    if problems:
        lines += ["## Notes", ""] + [f"- {p}" for p in problems]
    if meta.get("notes"):
        lines += ["", "## About the methods", ""] + [f"- {n}" for n in meta["notes"]]
    return "\n".join(lines) + "\n"


def print_table(summary: dict, methods: list[str]) -> None:
    w = 9
    print(f"{'set':22}" + "".join(f"{m[:w]:>{w + 1}}" for m in methods))
    for name, row in summary["table"].items():
        print(f"{name[:22]:22}" + "".join(f"{row[m]:{w + 1}.1f}" for m in methods))
    for key, fmt in (("mean_auroc", "{:.2f}"), ("mean_rank", "{:.2f}"), ("mean_seconds", "{:.2f}"),
                     ("seconds_vs_pyod_ae", "{:.2f}")):
        print(f"{key[:22]:22}" + "".join(f"{fmt.format(summary[key][m]):>{w + 1}}" for m in methods))


NOTES = [
    "aekit.Detector(): aekit's detector class with the defaults of the commit measured (issue 18, chosen by "
    "benchmarks/adbench_select.py: RESULTS_adbench_select.md): 2 cross-fitted members, each an ae D-64-64-k-64-64-D "
    "(k = min(16, D // 2, rows of a fold // 6)) trained ~100 Adam steps on one half of the distinct rows of the "
    "standardized train split; each member's joint-score statistics (Mahalanobis distance of the code + squared "
    "residuals in units of each feature's typical residual, refitted 3 times on the 80% lowest) and its median/IQR "
    "come from the half it did not train on; a test row gets the mean of the members' normalized scores.",
    "aekit plain ae: `aekit.build('ae')` and `aekit.TrainConfig()` defaults (MLP D-256-16-256-D, 20 epochs), "
    "standardized inputs, reconstruction error as the score; its training and scoring are one call, counted "
    "as fit.",
    "pyod's PCA with its defaults weights each component by 1/explained-variance ratio; on sets with constant "
    "columns (after subsampling) some ratios are exactly 0 and every score is +inf: every test example ties "
    "(AUROC 0.5). The side ranks scores (+inf above every finite score) rather than failing; the count of "
    "non-finite scores is listed in the notes.",
    "Seconds of reused results are those of the run that measured them (the header says which and when); this "
    "machine is shared and its load varies several-fold between runs, so a ratio of seconds is only exact between "
    "methods measured in the same run: `--results adbench_timing` runs a few sets back to back for that "
    "(RESULTS_adbench_timing.md).",
    "pyod's AutoEncoder and VAE default to random_state=42 (the same initial weights at every seed), as in "
    "ADBench; only verbose=0 is passed.",
]


def method_timeouts(text: str) -> dict[str, float]:
    """{method: seconds} from ``--method-timeout``'s "METHOD=SECONDS,..." (a ValueError naming what is wrong)."""
    limits = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        method, _, seconds = item.partition("=")
        if method not in METHODS:
            raise ValueError(f"--method-timeout: {method!r} is not a method ({', '.join(METHODS)}); "
                             "write METHOD=SECONDS")
        try:
            limits[method] = float(seconds)
        except ValueError:
            limits[method] = math.nan
        if not (math.isfinite(limits[method]) and limits[method] > 0):
            raise ValueError(f"--method-timeout: {item!r} needs a positive number of seconds, e.g. {method}=90")
    return limits


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir", nargs="+", help="folder(s) of ADBench-format .npz files (X, y); each is a domain")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--sets", default="", help="comma-separated set names (file stems); default: every .npz")
    p.add_argument("--jobs", type=int, default=1, help="subprocesses at a time (default 1)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per subprocess")
    p.add_argument("--method-timeout", default="", metavar="METHOD=SECONDS,...",
                   help="a shorter limit for these methods' subprocesses, e.g. mcd=90: pyod's MCD does not finish on "
                   "InternetAds' 1555 columns or the 512-768-dimensional embeddings within 10 minutes; a method past "
                   "its limit has no result on that set (with --reuse of the method: only the sets it has none for "
                   "are run, so the limit touches only those)")
    p.add_argument("--reuse", default="pyod-ae,pyod-vae,aekit-ae",
                   help="methods whose results are taken from the RESULTS_adbench.json of an earlier run where it "
                   "has them (same seeds; the split fingerprints are checked); '' reruns everything "
                   "(default: pyod-ae,pyod-vae,aekit-ae: ~10, ~30 and ~3 s per (set, seed); aekit-ae is the plain "
                   "autoencoder with the library's defaults, which the detector's changes do not touch)")
    p.add_argument("--reuse-only", action="store_true", help="never run the --reuse methods: where no earlier "
                   "result exists (e.g. a new domain) they are reported as not measured")
    p.add_argument("--cached-only", action="store_true", help="run nothing: report what the caches and --reuse hold "
                   "(the rest as not measured; aekit's results of any commit, naming the files of src/ changed since), "
                   "e.g. to write the report of runs made piecewise")
    p.add_argument("--no-cache", action="store_true", help="rerun pyod's methods even where benchmarks/.cache "
                   "holds their result for the same set, seeds and pyod release")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS_adbench.* as they are")
    p.add_argument("--results", default="adbench", help="write benchmarks/RESULTS_<this>.md and .json (default "
                   "adbench; e.g. adbench_timing for a same-load timing comparison on a few sets)")
    p.add_argument("--side", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    try:
        limits = method_timeouts(args.method_timeout)
    except ValueError as e:
        p.error(str(e))
    if args.side:
        aekit_side(args.side, args.data_dir[0], seeds)
        return 0

    def number_first(f):
        head = f.stem.split("_")[0]
        return (int(head) if head.isdigit() else 10**9, f.stem)

    domains = {}  # name -> (folder, files)
    for folder in map(Path, args.data_dir):
        files = sorted(folder.glob("*.npz"), key=number_first)
        if args.sets:
            files = [f for f in files if f.stem in args.sets.split(",")]
        if files:
            domains[domain_of(folder)] = (folder, files)
    if not domains:
        print(f"no .npz files{' matching --sets' if args.sets else ''} in {', '.join(args.data_dir)}",
              file=sys.stderr)
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        print(f"unknown method(s) {', '.join(bad)}; expected some of {', '.join(METHODS)}", file=sys.stderr)
        return 2
    LOGS.mkdir(parents=True, exist_ok=True)
    pyod_py, pyod_versions = None, {}
    if any(m in PYOD_METHODS for m in methods):
        pyod_py, why = ensure_pyod()
        if pyod_py is None:
            print(f"[setup] pyod skipped: {why}", flush=True)
            methods = [m for m in methods if m not in PYOD_METHODS]
        else:
            pyod_versions = versions(pyod_py, ["pyod", "torch", "scikit-learn", "numpy"])
    commit = code_version()
    previous = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else None
    reuse = reusable(previous, [m for m in args.reuse.split(",") if m in methods], seeds)
    load_start, t0 = loadavg(), time.perf_counter()
    results = {d: {f.stem: {} for f in files} for d, (_, files) in domains.items()}
    ran, reused = set(), {}
    pairs = []  # one (set, method) pair per subprocess; a set's methods back to back, sets in order of the files
    for d, (_, files) in domains.items():
        for f in files:
            for m in methods:
                got = reuse.get((d, f.stem, m))
                if got is None and not args.no_cache:
                    got = cached(m, d, f.stem, seeds, pyod_versions.get("pyod", "?"), commit, args.cached_only)
                    if got is not None:
                        what = f"aekit commit {commit}" if m in AEKIT_METHODS else f"pyod {got.get('pyod')}"
                        got = {**got, "reused": got.get("reused", f"cached by an earlier run of this harness "
                                                        f"(benchmarks/.cache; {what})")}
                if got is not None:
                    results[d][f.stem][m] = got
                    reused.setdefault(m, set()).add(got["reused"])
                elif args.cached_only or (args.reuse_only and m in args.reuse.split(",")):
                    results[d][f.stem][m] = {"error": "not measured in time: no earlier result and "
                                             + ("--cached-only" if args.cached_only else "--reuse-only")}
                else:
                    pairs.append((d, f, m))

    def work(pair):
        d, f, m = pair
        r = run_one(m, f, seeds, pyod_py, limits.get(m, args.timeout))
        results[d][f.stem][m] = r
        store(m, d, f.stem, seeds, r, commit)
        ran.add(m)
        aucs = " ".join(f"{x['auroc'] * 100:.1f}" for x in r.get("runs", []))
        secs = sum(x["fit_seconds"] + x["score_seconds"] for x in r.get("runs", []))
        print(f"  {d[:10]:10} {f.stem:22} {m:10} {r.get('error') or f'AUROC {aucs}  ({secs:.1f} s fit+score)'}",
              flush=True)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        list(ex.map(work, pairs))
    wall = time.perf_counter() - t0
    summaries = {}
    for d, (_, files) in domains.items():
        summaries[d] = summarize(results[d], methods, [f.stem for f in files])
        print(f"\n== {d}")
        print_table(summaries[d], methods)
        for pr in summaries[d]["problems"]:
            print("note:", pr)
    detector = "; ".join(f"{m}: " + next((r["detector"] for dom in results.values() for by in dom.values()
                                           for mm, r in by.items() if mm == m and r.get("detector")), "no result")
                         for m in methods if m in AEKIT_METHODS) or "not run"
    meta = {"command": "python benchmarks/adbench.py " + shlex.join(sys.argv[1:] if argv is None else argv),
            "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "wall_minutes": wall / 60, "jobs": args.jobs,
            "aekit_commit": commit, "aekit_detector": detector,
            "pyod_versions": ", ".join(f"{k} {v}" for k, v in pyod_versions.items()) or "not run",
            "machine": cpu_model(), "python": platform.python_version(), "load_start": load_start,
            "load_end": loadavg(), "seeds": seeds,
            "domains": [{"name": d, "dir": str(folder), "n_sets": len(files)}
                        for d, (folder, files) in domains.items()],
            "ran": sorted(ran, key=methods.index),
            "reused": {m: " / ".join(sorted(v)) for m, v in reused.items()}, "notes": NOTES}
    print(f"\nwall time {wall / 60:.1f} min")
    if not args.no_write:
        md, js = HERE / f"RESULTS_{args.results}.md", HERE / f"RESULTS_{args.results}.json"
        md.write_text(render(summaries, methods, meta))
        js.write_text(json.dumps({"meta": meta, "methods": methods, "summary": summaries,
                                  "raw": results}, indent=1, default=float) + "\n")
        print(f"wrote {md.relative_to(HERE.parent)} and {js.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
