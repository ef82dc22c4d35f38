"""Small tables, measured end to end: the wall time of the whole `aekit train` command against the training
seconds it reports, for this tree against another checkout (issue 21, point 2).

    python benchmarks/smallrun.py                          # 3 rounds, this tree against /work/main
    python benchmarks/smallrun.py --rounds 5 --before /path/to/other/src
    python benchmarks/smallrun.py --no-before              # this tree only
    python benchmarks/smallrun.py --nice -10               # a shared machine (as root): less load distortion

Data: two CSV files made from scikit-learn's bundled tables (no download), each with its class as a
"target" column: wine (178 rows, 13 features) and the first 455 rows of breast_cancer (30 features).
Command: `python -m aekit train ae --dataset FILE.csv --label-column target --quiet --out DIR`, the automatic
budget (500 epochs at most, early stopping after 10 without improvement), one thread (OMP_NUM_THREADS=1).

Each measurement is one process: wall seconds from start to exit (imports, data loading, training, the
evaluation at the end and every file written), beside the training seconds the run records (the sum of the
epochs' "seconds" in RUN/metrics.jsonl: the training passes alone). "after" runs this tree's src/, "before"
the code in --before (default /work/main/src, the code before this change), via PYTHONPATH, in alternation
A B A B ... for --rounds rounds. Figures: medians over rounds. Target: wall <= 2 x training seconds + 3 s.

Prints a table and writes benchmarks/RESULTS_smallrun.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
AFTER = HERE.parent / "src"
TARGET = "wall <= 2 x training seconds + 3 s"


def make_tables(folder: Path) -> dict[str, Path]:
    """The two CSV files, written with the standard library from sklearn's bundled data."""
    import csv

    from sklearn.datasets import load_breast_cancer, load_wine

    out = {}
    for name, loader, rows in (("wine", load_wine, None), ("breast_cancer_455", load_breast_cancer, 455)):
        bunch = loader()
        x, y = bunch.data[:rows], bunch.target[:rows]
        path = folder / f"{name}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([str(c).replace(" ", "_") for c in bunch.feature_names] + ["target"])
            for row, label in zip(x, y):
                w.writerow([f"{v:.6g}" for v in row] + [int(label)])
        out[name] = path
    return out


def measure(src: Path, table: Path, out: Path, nice: int = 0) -> dict:
    """One `aekit train` process with ``src`` first on PYTHONPATH: wall seconds and what the run records."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    cmd = (["nice", "-n", str(nice)] if nice else []) + [
        sys.executable, "-m", "aekit", "train", "ae", "--dataset", str(table), "--label-column", "target", "--quiet",
        "--out", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out.parent)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = sum(h["seconds"] for h in lines)
    return {"wall": wall, "train": train, "cpu": cpu, "epochs": len(lines), "overhead": wall - train,
            "within_target": wall <= 2 * train + 3}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--before", default="/work/main/src", help="src/ folder of the code before the change")
    p.add_argument("--before-label", default="", help="what the --before code is (written into the results)")
    p.add_argument("--after-label", default="", help="what this tree changes (written into the results)")
    p.add_argument("--no-before", action="store_true", help="measure this tree only")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--nice", type=int, default=0, help="run each measured process at this nice value (e.g. -10 "
                   "on a shared machine, as root: the others' load then distorts less)")
    args = p.parse_args(argv)
    sides = {"after": AFTER} if args.no_before else {"before": Path(args.before), "after": AFTER}
    results: dict[str, dict[str, list[dict]]] = {}
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tables = make_tables(Path(tmp))
        for r in range(args.rounds):
            for name, table in tables.items():
                for side, src in sides.items():  # alternation: before, after, before, after, ...
                    res = measure(src, table, Path(tmp) / f"{name}-{side}-{r}", args.nice)
                    results.setdefault(name, {}).setdefault(side, []).append(res)
                    print(f"round {r + 1} {name:18s} {side:6s} wall {res['wall']:6.2f} s  "
                          f"training {res['train']:6.2f} s  cpu {res['cpu']:6.2f} s  ({res['epochs']} epochs)",
                          flush=True)
    load_after = os.getloadavg()
    rows = []
    for name, by_side in results.items():
        for side, runs in by_side.items():
            wall = statistics.median(r["wall"] for r in runs)
            train = statistics.median(r["train"] for r in runs)
            rows.append({"table": name, "side": side, "wall": wall, "train": train,
                         "cpu": statistics.median(r["cpu"] for r in runs),
                         "epochs": statistics.median(r["epochs"] for r in runs), "limit": 2 * train + 3,
                         "ok": wall <= 2 * train + 3, "walls": [round(r["wall"], 2) for r in runs]})
    header = ("| table | code | wall s (median) | training s (median) | process CPU s | epochs | limit 2 x train + 3 s "
              "| within | walls per round |")
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['table']} | {r['side']} | {r['wall']:.2f} | {r['train']:.2f} | {r['cpu']:.2f} | "
                     f"{r['epochs']:g} | "
                     f"{r['limit']:.2f} | {'yes' if r['ok'] else 'no'} | {', '.join(map(str, r['walls']))} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        nice = f" --nice {args.nice}" if args.nice else ""
        before = "" if args.no_before else f" --before {args.before}"
        before_side = str(sides.get("before", "(not measured)"))
        before_side += f" ({args.before_label})" if args.before_label else ""
        after_side = "this tree's src/" + (f" ({args.after_label})" if args.after_label else "")
        md = f"""# Small tables: wall time of `aekit train` against its training seconds

Generated by `python benchmarks/smallrun.py --rounds {args.rounds}{nice}{before}`
(see its docstring for the protocol).
Target: {TARGET}. "before": {before_side}; "after": {after_side}.

Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; load average
{load[0]:.1f} at the start and {load_after[0]:.1f} at the end (a shared machine: figures vary with it){
f'; the measured processes ran at nice {args.nice}' if args.nice else ''}.

{table}

Wall: the whole process (interpreter start, imports, data loading, training, the evaluation at the end and
every file written); training: the sum of the epochs' "seconds" in metrics.jsonl (the training passes alone);
process CPU: user + system seconds of the process (getrusage of the child), less sensitive to the machine's
load than wall seconds. Training seconds are wall-clock figures too: they grow with the machine's load.
"""
        (HERE / "RESULTS_smallrun.md").write_text(md)
    return 0 if all(r["ok"] for r in rows if r["side"] == "after") else 1


if __name__ == "__main__":
    raise SystemExit(main())
