"""Data larger than memory, measured: the whole commands `aekit train` (training and its evaluation), `aekit eval`
and `aekit score` on a large memory-mapped uint8 .npy, each with its peak resident memory.

    python benchmarks/bigdata.py                        # a 3 GB file (the issue's case)
    python benchmarks/bigdata.py --gb 0.5,3             # two sizes: peak memory against file size
    python benchmarks/bigdata.py --gb 0.25 --before /work/main/src   # also the commands of another tree
    python benchmarks/bigdata.py --keep --dir /tmp/big  # keep the generated file

big    For each size: generates DIR/fmnist-augmented.npy (uint8 (N, 1, 28, 28), N = GB * 1e9 / 784; 3 GB:
       3.83M images) and its labels from the 60k Fashion-MNIST training images, or where they are not installed
       from scikit-learn's digits enlarged to 28x28 (copy k of the set is shifted by
       (k % 5 - 2, k // 5 % 5 - 2) pixels (np.roll) and mirrored left-right when k // 25 is odd). Free disk is
       checked first; the files are deleted at the end unless --keep. Then three commands, each one process
       (`python -m aekit`), run one after the other:
         aekit train ae --dataset FILE --epochs 1 --hidden 64 --latent-dim 8 --batch-size 1024 --quiet --out RUN
         aekit eval RUN                       (the run's test split: 20% of the file; reconstruction,
                                               representation and diagnostic metrics)
         aekit score RUN FILE --out CSV       (every row of the file)
       Figure: each process's peak resident memory, ru_maxrss of its rusage (os.wait4: the whole process,
       imports, model, index, buffers and any file pages it mapped), and its wall time. Target: under 2 GiB each,
       and not growing with the file. With --before SRC the same commands also run with PYTHONPATH=SRC (the
       code before streaming evaluation) on the smallest size.
speed  Fashion-MNIST's 60k training images (90% train, 10% val), the VAE 784-512-16 (Bernoulli, batch
       128, 1 thread): one epoch of aekit.fit from the same images held three ways, in alternation A B C A
       B C ... for --rounds rounds: float32 tensors in memory (how aekit held every dataset before: the
       baseline), uint8 in memory (ByteStore) and a memory-mapped .npy (MappedStore, written by
       aekit.datasets.pack from the IDX files). Figure: the trainer's epoch seconds (training pass only),
       median over rounds, and the median of the per-round ratio to the baseline. Target: memory-mapped
       <= 1.2x in-memory. Not run by default (--only speed); RESULTS_bigdata.md keeps its last table.

Prints a table and writes benchmarks/RESULTS_bigdata.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FMNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGES = FMNIST / "train-images-idx3-ubyte.gz"
ROW = 28 * 28


# --------------------------------------------------------------------------------------------------
# big: generate, then train in a subprocess


def base_images() -> tuple[np.ndarray, np.ndarray, str]:
    """The images the big file repeats: Fashion-MNIST's 60k training images (uint8 (N, 28, 28)) and labels when
    the IDX files are here, else scikit-learn's 1797 digits (8x8, 0..16) scaled to 0..240 and enlarged 3x
    into 28x28 (nearest neighbour, 2 pixels of border)."""
    if IMAGES.exists():
        from aekit.datasets.idx import _read_idx

        return (_read_idx(IMAGES, "images"), _read_idx(FMNIST / "train-labels-idx1-ubyte.gz", "labels"),
                "Fashion-MNIST's 60k training images")
    from sklearn.datasets import load_digits

    d = load_digits()
    big = np.zeros((len(d.images), 28, 28), dtype=np.uint8)
    big[:, 2:26, 2:26] = np.kron(d.images * 15, np.ones((3, 3))).astype(np.uint8)
    return big, d.target, "scikit-learn's 1797 digits enlarged to 28x28 (no Fashion-MNIST here)"


def generate(path: Path, n: int) -> tuple[float, str]:
    """Write n augmented images (uint8 (n, 1, 28, 28)) and their labels; (seconds taken, what they repeat)."""
    from aekit.files import new_file

    t0 = time.perf_counter()
    base, labels, what = base_images()
    with new_file(path) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (n, 1, 28, 28)})
        written, k = 0, 0
        while written < n:
            dy, dx, flip = k % 5 - 2, k // 5 % 5 - 2, (k // 25) % 2 == 1
            block = np.roll(base, (dy, dx), axis=(1, 2))
            if flip:
                block = block[:, :, ::-1]
            block = np.ascontiguousarray(block[: n - written])
            f.write(memoryview(block).cast("B"))
            written += len(block)
            k += 1
    y = np.resize(labels.astype(np.int64), n)
    with new_file(path.with_name(path.stem + ".labels.npy")) as f:
        np.lib.format.write_array(f, y, allow_pickle=False)
    del base
    return time.perf_counter() - t0, what


TRAIN = ["--epochs", "1", "--hidden", "64", "--latent-dim", "8", "--batch-size", "1024", "--quiet"]


def measure(args: list[str], src: Path) -> dict:
    """Run ``python -m aekit ARGS`` with ``src`` first on PYTHONPATH: wall seconds, peak RSS (MiB), output."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "aekit", *args], env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"bigdata: `aekit {' '.join(args)}` failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"wall_s": wall, "peak_mib": usage.ru_maxrss / 1024, "stdout": stdout[-2000:]}


def commands(path: Path, work: Path, src: Path, tag: str) -> dict:
    """train, eval and score on ``path`` with the code in ``src``; the run and the scores go in ``work``."""
    run, scores = work / f"run-{tag}", work / f"scores-{tag}.csv"
    out = {}
    try:
        out["train"] = measure(["train", "ae", "--dataset", str(path), *TRAIN, "--out", str(run)], src)
        print(f"big [{tag}]: train {out['train']['wall_s']:.0f} s, {out['train']['peak_mib']:,.0f} MiB", flush=True)
        out["eval"] = measure(["eval", str(run)], src)
        print(f"big [{tag}]: eval {out['eval']['wall_s']:.0f} s, {out['eval']['peak_mib']:,.0f} MiB", flush=True)
        out["score"] = measure(["score", str(run), str(path), "--out", str(scores)], src)
        with open(scores, "rb") as f:
            out["score"]["rows"] = sum(1 for _ in f) - 1
        print(f"big [{tag}]: score {out['score']['wall_s']:.0f} s, {out['score']['peak_mib']:,.0f} MiB", flush=True)
    finally:
        shutil.rmtree(run, ignore_errors=True)
        scores.unlink(missing_ok=True)
    return out


def run_big(args) -> list[dict]:
    sizes = sorted(float(g) for g in str(args.gb).split(","))
    folder = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for gb in sizes:
        n = int(gb * 1e9) // ROW
        need = n * ROW + n * 8 + n * 40  # the file, its labels, the scores
        free = shutil.disk_usage(folder).free
        print(f"big: {n} images = {n * ROW / 1e9:.2f} GB in {folder} (free: {free / 1e9:.1f} GB)", flush=True)
        if need + 2 * 2**30 > free:
            raise SystemExit(f"bigdata: {folder} has {free / 1e9:.1f} GB free, {need / 1e9 + 2:.1f} GB are needed; "
                             "pass --dir on a larger disk or a smaller --gb")
        path = folder / "fmnist-augmented.npy"
        labels = path.with_name(path.stem + ".labels.npy")
        for q in (path, labels):
            if q.exists():
                raise SystemExit(f"bigdata: {q} exists; remove it first (this script never overwrites a file)")
        work = Path(tempfile.mkdtemp(prefix="aekit-bigdata-", dir=folder))
        try:
            gen_s, what = generate(path, n)
            print(f"big: generated in {gen_s:.0f} s from {what}", flush=True)
            res = {"gb": gb, "n": n, "file_bytes": path.stat().st_size, "gen_s": gen_s, "source": what,
                   "after": commands(path, work, HERE.parent / "src", "after")}
            if args.before and gb == sizes[0]:
                res["before"] = commands(path, work, Path(args.before), "before")
            results.append(res)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if not args.keep:
                for q in (path, labels):
                    q.unlink(missing_ok=True)
    return results


# --------------------------------------------------------------------------------------------------
# speed: memory-mapped vs in-memory epochs on Fashion-MNIST


def run_speed(args) -> dict:
    import torch

    import aekit
    from aekit.datasets.storage import as_tensor

    tmp = Path(tempfile.mkdtemp(prefix="aekit-bigdata-"))
    try:
        packed = aekit.datasets.pack(IMAGES, tmp / "fmnist.npy")
        opts = dict(val_fraction=0.1, test_fraction=0.0)
        mapped = aekit.datasets.load(packed.path, **opts)
        raw = np.load(packed.path)
        u8 = aekit.datasets.from_arrays(raw, np.load(packed.labels_path), **opts)
        f32 = dataclasses.replace(u8, **{f"x_{k}": as_tensor(getattr(u8, f"x_{k}")) for k in ("train", "val", "test")})
        del raw
        variants = {"in-memory float32": f32, "in-memory uint8": u8, "memory-mapped .npy": mapped}
        assert all(len(d.x_train) == len(f32.x_train) for d in variants.values())
        cfg = aekit.TrainConfig(epochs=1, batch_size=128, seed=0, threads=1, patience=0)

        def epoch(ds) -> float:
            model = aekit.build("vae", dataset=ds, latent_dim=16, hidden=[512], seed=0)
            return aekit.fit(model, ds, cfg, quiet=True).history[0]["seconds"]

        times = {k: [] for k in variants}
        epoch(mapped)  # warm-up: imports, the file in the page cache
        for r in range(args.rounds):
            for name, ds in variants.items():
                times[name].append(epoch(ds))
            print(f"speed: round {r + 1}/{args.rounds}: "
                  + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
        base = times["in-memory float32"]
        return {"n_train": len(f32.x_train), "times": times, "torch": torch.__version__,
                "ratios": {k: [b / a for a, b in zip(base, v, strict=True)] for k, v in times.items()}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------


def fmt_mib(x) -> str:
    return "-" if x is None else f"{x:,.0f} MiB"


def report(big: list[dict] | None, speed: dict | None, command: str, old_speed: list[str] | None = None) -> list[str]:
    md = ["# Data larger than memory", "",
          f"Generated by `{command}` (benchmarks/bigdata.py; its docstring says what is measured) on "
          f"{time.strftime('%Y-%m-%d %H:%M')}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores shared with other work, Python {platform.python_version()}.", ""]
    if big:
        md += ["## The whole commands on a large memory-mapped uint8 .npy", "",
               "`aekit train ae --dataset FILE " + " ".join(TRAIN) + " --out RUN` (training and the evaluation "
               "at its end), `aekit eval RUN` (the test split: 20% of the file) and `aekit score RUN FILE --out "
               "CSV` (every row), each one process; peak resident memory: ru_maxrss of the process (os.wait4). "
               f"Target: under 2048 MiB each, not growing with the file. The images: {big[0]['source']}, each copy "
               "shifted and mirrored (the docstring says how).", "",
               "| file | code | command | wall, s | peak RSS | target |", "|---|---|---|---|---|---|"]
        for r in big:
            what = f"{r['file_bytes'] / 1e9:.2f} GB, {r['n']:,} images"
            for code in ("after", "before"):
                if code not in r:
                    continue
                for cmd, m in r[code].items():
                    ok = "MET" if m["peak_mib"] < 2048 else "MISSED"
                    extra = f" ({m['rows']:,} rows)" if "rows" in m else ""
                    md.append(f"| {what} | {'this tree' if code == 'after' else 'before (--before)'} | "
                              f"`aekit {cmd}`{extra} | {m['wall_s']:.0f} | {fmt_mib(m['peak_mib'])} | {ok} |")
        md.append("")
        last = big[-1]["after"]["train"]["stdout"].strip().splitlines()
        md += ["What `aekit train` printed on the largest file:", "", "```", *last[-4:], "```", ""]
    if old_speed and not speed:
        md += old_speed
    if speed:
        base = "in-memory float32"
        md += ["## Memory-mapped vs in-memory epoch, Fashion-MNIST", "",
               f"VAE 784-512-16, batch 128, 1 thread, {speed['n_train']:,} training images, "
               f"{len(speed['times'][base])} rounds in alternation; epoch seconds of the trainer (median [min..max]); "
               "ratio: median of the "
               "per-round ratio to the float32 baseline (target for memory-mapped: <= 1.2x).", "",
               "| data held as | epoch, s | ratio to in-memory float32 |", "|---|---|---|"]
        for k, v in speed["times"].items():
            r = speed["ratios"][k]
            status = ""
            if k == "memory-mapped .npy":
                status = " (MET)" if statistics.median(r) <= 1.2 else " (MISSED)"
            md.append(f"| {k} | {statistics.median(v):.2f} [{min(v):.2f}..{max(v):.2f}] | "
                      f"{statistics.median(r):.3f}x [{min(r):.2f}..{max(r):.2f}]{status} |")
        md.append("")
    return md


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["big", "speed"], default="big")
    p.add_argument("--gb", default="3", help="size(s) of the generated file, in GB (1e9 bytes), comma-separated")
    p.add_argument("--dir", help="folder for the generated file (default: the temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the generated file")
    p.add_argument("--before", help="big: also run the commands with this src folder on PYTHONPATH (smallest size)")
    p.add_argument("--rounds", type=int, default=5, help="speed: rounds of A B C")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS_bigdata.md as it is")
    args = p.parse_args(argv)
    if args.only == "speed" and not IMAGES.exists():
        raise SystemExit(f"bigdata: {IMAGES} not found: apt-get install dataset-fashion-mnist")
    command = "python benchmarks/bigdata.py " + " ".join(argv if argv is not None else sys.argv[1:])
    big = run_big(args) if args.only == "big" else None
    speed = run_speed(args) if args.only == "speed" else None
    results = HERE / "RESULTS_bigdata.md"
    old = results.read_text().splitlines() if results.exists() else []
    head = "## Memory-mapped vs in-memory epoch"
    old_speed = None
    if any(line.startswith(head) for line in old):
        i = next(i for i, line in enumerate(old) if line.startswith(head))
        j = next((k for k in range(i + 1, len(old)) if old[k].startswith("## ")), len(old))
        old_speed = old[i:j] + ([""] if old[j - 1:j] != [""] else [])
        old_speed.insert(2, "(Measured by an earlier `python benchmarks/bigdata.py` run; rerun with --only speed.)")
        old_speed.insert(3, "")
    md = report(big, speed, command.strip(), old_speed)
    print("\n".join(md))
    if not args.no_write:
        results.write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
