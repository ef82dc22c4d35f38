"""Helpers of the adversarial tests (tests/adversarial/): a time limit for reads that could block."""

import contextlib
import signal


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
