"""Helpers of the hostile-condition tests: a time limit for reads that could block (tests/adversarial/), and
waiting for a training process to be mid-run before it is killed (test_trainer.py, test_distributed.py)."""

import contextlib
import signal
import time
from pathlib import Path


class Hang(Exception):
    """Raised inside a ``time_limit`` block that ran too long."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise Hang when the block runs longer than ``seconds`` (a read that blocks or never ends)."""
    if not hasattr(signal, "setitimer"):  # pragma: no cover - POSIX only
        yield
        return

    def on_alarm(signum, frame):
        raise Hang(f"still running after {seconds}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def wait_for_epochs(run_dir: Path, epochs: int, timeout: float) -> None:
    """Return once ``run_dir``/metrics.jsonl has at least ``epochs`` lines, or after ``timeout`` seconds (the
    caller asserts what it needs about how far the run got)."""
    deadline = time.time() + timeout
    metrics = Path(run_dir) / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= epochs:
            return
        time.sleep(0.005)
