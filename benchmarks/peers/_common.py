"""Helpers shared by every side script of the benchmarks (aekit's and the peers').

Standard library + torch only, so the same file runs in aekit's environment and in every peer's virtual
environment. A side script is one subprocess: it sets the thread count, does its work, and prints exactly
one result line ``BENCH_RESULT {json}`` on stdout, with the peak resident memory of the process added.
Anything a library prints on stdout (progress bars, banners) is sent to stderr, which the harness logs.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import resource
import struct
import sys
import time
from pathlib import Path

import torch

FASHION_MNIST_DIR = os.environ.get("AEKIT_BENCH_FMNIST", "/usr/share/datasets/fashion-mnist")
THREADS = int(os.environ.get("AEKIT_BENCH_THREADS", "2"))
RESULT_PREFIX = "BENCH_RESULT "

_real_stdout = sys.stdout


def setup(seed: int = 0) -> None:
    """The same compute budget for every side: THREADS intra-op threads (2 by default), a fixed seed."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)


def _read_idx(path: Path) -> torch.Tensor:
    """One IDX file of unsigned bytes (gzipped or not) -> uint8 tensor (N, H, W) or (N,)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {magic:#x})")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    buf = bytearray(data[4 + 4 * ndim :])
    return torch.frombuffer(buf, dtype=torch.uint8).view(*dims).clone()


def fashion_mnist(folder: str | os.PathLike = FASHION_MNIST_DIR) -> dict[str, torch.Tensor]:
    """The official Fashion-MNIST split, read from the IDX files: all 60k training images, 10k test images.

    x_*: float32 (N, 1, 28, 28) in [0, 1] (bytes / 255); y_*: int64 (N,).
    """
    folder = Path(folder)
    out = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        for kind, key in (("images", "x"), ("labels", "y")):
            name = f"{stem}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
            path = folder / (name + ".gz") if (folder / (name + ".gz")).exists() else folder / name
            t = _read_idx(path)
            out[f"{key}_{split}"] = (t.float().div_(255).unsqueeze(1) if kind == "images" else t.long())
    return out


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (getrusage ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(result: dict) -> None:
    """Print the one result line, with peak RSS, torch version and thread count added."""
    result = dict(result)
    result.setdefault("peak_rss_mib", round(peak_rss_mib(), 1))
    result.setdefault("torch", torch.__version__)
    result.setdefault("threads", torch.get_num_threads())
    _real_stdout.write("\n" + RESULT_PREFIX + json.dumps(result) + "\n")
    _real_stdout.flush()


@contextlib.contextmanager
def stdout_to_stderr():
    """Send what libraries print on stdout (progress lines) to stderr, so stdout holds only the result."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds`` (perf_counter wall time)."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if not n:
        return float("nan")
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])
