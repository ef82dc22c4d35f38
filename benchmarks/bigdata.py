"""Data larger than memory, measured: a memory-mapped .npy of several GB trained with bounded resident memory,
and the memory-mapped epoch against the in-memory one on data that fits.

    python benchmarks/bigdata.py                       # both parts: a 6 GB file, then Fashion-MNIST A B A B
    python benchmarks/bigdata.py --gb 6 --keep --dir /tmp/big     # keep the generated file
    python benchmarks/bigdata.py --only big|speed      # one part
    python benchmarks/bigdata.py --steps 2000          # the big part: a fixed number of steps, not an epoch

big    Generates DIR/fmnist-augmented.npy (uint8 (N, 1, 28, 28), N = GB * 1e9 / 784, default N = 7.65M:
       6.0 GB) and its labels, from the 60k Fashion-MNIST training images: copy k of the set is shifted by
       (k % 5 - 2, k // 5 % 5 - 2) pixels (np.roll) and mirrored left-right when k // 25 is odd. Free disk is
       checked first; the files are deleted at the end unless --keep. Then one subprocess loads the file
       (memory-mapped: 98% train, 1% val, 1% test) and trains an AE (784-64-16, batch 512, 1 thread) with
       aekit.fit for one epoch over the whole training split (or --steps N: a fixed number of steps of
       the trainer's own loop over a permutation of the whole split, when an epoch takes too long); the
       subprocess reports its peak resident memory (VmHWM of /proc/self/status and ru_maxrss: the whole
       process, imports, index, model and file pages included). Target: under 2 GB.
speed  Fashion-MNIST's 60k training images (90% train, 10% val), the VAE 784-512-16 (Bernoulli, batch
       128, 1 thread): one epoch of aekit.fit from the same images held three ways, in alternation A B C A
       B C ... for --rounds rounds: float32 tensors in memory (how aekit held every dataset before: the
       baseline), uint8 in memory (ByteStore) and a memory-mapped .npy (MappedStore, written by
       aekit.datasets.pack from the IDX files). Figure: the trainer's epoch seconds (training pass only),
       median over rounds, and the median of the per-round ratio to the baseline. Target: memory-mapped
       <= 1.2x in-memory.

Prints a table and writes benchmarks/RESULTS_bigdata.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
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


def peak_rss() -> dict:
    """Peak resident memory of this process: VmHWM (/proc) and ru_maxrss, in MiB."""
    out = {"ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:", "RssFile:", "RssAnon:")):
                key, value = line.split(":")
                out[key.lower() + "_mib"] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


# --------------------------------------------------------------------------------------------------
# big: generate, then train in a subprocess


def generate(path: Path, n: int) -> float:
    """Write n augmented Fashion-MNIST images (uint8 (n, 1, 28, 28)) and their labels; seconds taken."""
    from aekit.datasets.idx import _read_idx
    from aekit.files import new_file

    t0 = time.perf_counter()
    base = _read_idx(IMAGES, "images")                                    # (60000, 28, 28) uint8
    labels = _read_idx(FMNIST / "train-labels-idx1-ubyte.gz", "labels")
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
    return time.perf_counter() - t0


def train_child(path: str, steps: int | None, batch_size: int) -> dict:
    """In the subprocess: load memory-mapped, train, report time and peak memory."""
    import torch

    import aekit
    from aekit import trainer

    t0 = time.perf_counter()
    ds = aekit.datasets.load(path, val_fraction=0.01, test_fraction=0.01)
    load_s = time.perf_counter() - t0
    model = aekit.build("ae", dataset=ds, latent_dim=16, hidden=[64], seed=0)  # small: the data is the subject
    info = {"n_file": len(ds.x_train) + len(ds.x_val) + len(ds.x_test), "n_train": len(ds.x_train),
            "store": type(ds.x_train).__name__, "resident_bytes": ds.resident_bytes, "load_s": load_s}
    t0 = time.perf_counter()
    if steps is None:
        res = aekit.fit(model, ds, aekit.TrainConfig(epochs=1, batch_size=batch_size, seed=0, threads=1, patience=0),
                        quiet=True)
        info.update(mode="aekit.fit, 1 epoch", steps=math.ceil(len(ds.x_train) / batch_size),
                    train_loss=res.history[-1]["train"]["loss"], val_loss=res.history[-1]["val"]["loss"],
                    epoch_s=res.history[-1]["seconds"])
    else:  # the trainer's loop, cut after `steps` batches of a permutation of the whole training split
        torch.set_num_threads(1)
        opt = trainer._make_optimizer(model.parameters(), aekit.TrainConfig(), torch.device("cpu"), 1e-3)
        gen = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(ds.x_train), generator=gen)
        stride = max(1, len(ds.x_train) // (steps * batch_size))  # spread the steps over the whole file
        loss = None
        for s in range(steps):
            a = s * stride * batch_size
            idx = perm[a:a + batch_size]
            loss = model(ds.x_train[idx]).loss
            model.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        info.update(mode=f"{steps} steps of the trainer's loop, spread over the whole permutation", steps=steps,
                    train_loss=float(loss), epoch_s=None)
    info["train_s"] = time.perf_counter() - t0
    info.update(peak_rss())
    return info


def run_big(args) -> dict:
    n = int(args.gb * 1e9) // ROW
    need = n * ROW + n * 8
    folder = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
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
    try:
        gen_s = generate(path, n)
        print(f"big: generated in {gen_s:.0f} s; training in a subprocess", flush=True)
        cmd = [sys.executable, __file__, "--child", str(path), "--batch-size", str(args.batch_size)]
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"bigdata: the training subprocess failed:\n{out.stderr[-3000:]}")
        child = json.loads(out.stdout.strip().splitlines()[-1])
        child.update(gen_s=gen_s, wall_s=time.perf_counter() - t0, file_bytes=path.stat().st_size)
        return child
    finally:
        if not args.keep:
            for q in (path, labels):
                q.unlink(missing_ok=True)


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


def report(big: dict | None, speed: dict | None, command: str) -> list[str]:
    md = ["# Data larger than memory", "",
          f"Generated by `{command}` (benchmarks/bigdata.py; its docstring says what is measured) on "
          f"{time.strftime('%Y-%m-%d %H:%M')}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores shared with other work, Python {platform.python_version()}.", ""]
    if big:
        ok = big["vmhwm_mib"] < 2048
        md += [f"## Training from a {big['file_bytes'] / 1e9:.1f} GB memory-mapped .npy", "",
               "| figure | value |", "|---|---|",
               f"| file | {big['file_bytes'] / 1e9:.2f} GB uint8, {big['n_file']:,} images of 1x28x28 "
               f"(generated in {big['gen_s']:.0f} s) |",
               f"| store of the training split | {big['store']}, {big['n_train']:,} rows; "
               f"dataset resident: {big['resident_bytes'] / 2**20:,.0f} MiB (index and labels) |",
               f"| loading (header, labels, split) | {big['load_s']:.1f} s |",
               f"| training | {big['mode']}: {big['steps']:,} steps of 512 in {big['train_s']:.0f} s"
               + (f" (epoch {big['epoch_s']:.0f} s)" if big.get("epoch_s") else "") + " |",
               f"| loss after it | train {big['train_loss']:.2f}"
               + (f", val {big['val_loss']:.2f}" if big.get("val_loss") is not None else "") + " |",
               f"| peak resident memory (VmHWM) | {fmt_mib(big['vmhwm_mib'])} "
               f"(ru_maxrss {fmt_mib(big['ru_maxrss_mib'])}; "
               f"target < 2048 MiB: {'MET' if ok else 'MISSED'}) |",
               f"| resident at the end: anonymous / file pages | {fmt_mib(big.get('rssanon_mib'))} / "
               f"{fmt_mib(big.get('rssfile_mib'))} |", ""]
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
    p.add_argument("--only", choices=["big", "speed"])
    p.add_argument("--gb", type=float, default=6.0, help="size of the generated file, in GB (1e9 bytes)")
    p.add_argument("--dir", help="folder for the generated file (default: the temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the generated file")
    p.add_argument("--steps", type=int, help="big: train this many steps instead of one epoch")
    p.add_argument("--batch-size", type=int, default=512, help="big: batch size")
    p.add_argument("--rounds", type=int, default=5, help="speed: rounds of A B C")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS_bigdata.md as it is")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(train_child(args.child, args.steps, args.batch_size)))
        return 0
    if not IMAGES.exists():
        raise SystemExit(f"bigdata: {IMAGES} not found: apt-get install dataset-fashion-mnist")
    command = "python benchmarks/bigdata.py " + " ".join(argv if argv is not None else sys.argv[1:])
    big = run_big(args) if args.only in (None, "big") else None
    speed = run_speed(args) if args.only in (None, "speed") else None
    md = report(big, speed, command.strip())
    print("\n".join(md))
    if not args.no_write:
        (HERE / "RESULTS_bigdata.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
