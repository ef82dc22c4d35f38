"""Helpers of the hostile-condition tests: a time limit for reads that could block (tests/adversarial/),
waiting for a training process to be mid-run before it is killed (test_trainer.py, test_distributed.py), and
the check that a command failed with one line (exit 2, no traceback)."""

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


def one_line(code, err, *fragments):
    """A command's failure as aekit promises it: exit status 2 and one line on stderr, holding ``fragments``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
