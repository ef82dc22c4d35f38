"""Helpers of the `aekit serve` tests: tiny runs to serve and a real server in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
FAST = ["--epochs", "2", "--latent-dim", "2", "--hidden", "16", "--quiet"]


def table_text(rows: np.ndarray, names, label=None, sep=",") -> str:
    head = list(names) + ([] if label is None else ["kind"])
    body = [sep.join(f"{v:.5f}" for v in r) + ("" if label is None else f"{sep}{label[i]}") for i, r in enumerate(rows)]
    return "\n".join([sep.join(head), *body]) + "\n"


def make_table_runs(d: Path, main) -> dict:
    """A table run in very different units (columns a, b, c, d, a label column), trained 2 epochs with
    --contamination, a calibrated copy, held-out rows and new rows (columns in another order)."""
    rng = np.random.default_rng(0)
    scale, shift = np.array([1.0, 10.0, 100.0, 0.1]), np.array([0.0, 5.0, -50.0, 1.0])

    def normal(n):
        z = rng.normal(size=(n, 2))
        return np.c_[z, z @ [[1.0, 0.5], [0.3, -1.0]]] * scale + shift

    train = np.concatenate([normal(300), rng.normal(size=(30, 4)) * scale * 4 + shift])
    (d / "train.csv").write_text(table_text(train, "abcd", ["normal"] * 300 + ["odd"] * 30))
    (d / "held_out.csv").write_text(table_text(normal(200), "abcd"))
    new = np.concatenate([normal(20), rng.normal(size=(5, 4)) * scale * 4 + shift])
    (d / "new.csv").write_text(table_text(new[:, [2, 0, 3, 1]], "cadb"))
    assert main(["train", "ae", "--dataset", str(d / "train.csv"), "--label-column", "kind", "--normal-class",
                 "normal", *FAST, "--contamination", "0.05", "--out", str(d / "run")]) == 0
    import shutil

    shutil.copytree(d / "run", d / "calibrated")
    assert main(["calibrate", str(d / "calibrated"), "--normal", str(d / "held_out.csv"), "--fpr", "0.05"]) == 0
    return {"dir": d, "run": d / "run", "calibrated": d / "calibrated", "new": new}


def make_image_run(d: Path, main) -> Path:
    """A VAE on digits (8x8 images), 1 epoch, with a threshold."""
    out = d / "vae"
    assert main(["train", "vae", "--dataset", "digits", "--epochs", "1", "--latent-dim", "2", "--quiet",
                 "--contamination", "0.1", "--out", str(out)]) == 0
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m aekit serve RUN` in a subprocess on a free loopback port, until stop()."""

    def __init__(self, run, *extra, timeout: float = 120):
        self.run, self.port = Path(run), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen([sys.executable, "-m", "aekit", "serve", str(run), "--port", str(self.port),
                                      *map(str, extra)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"aekit serve exited with {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                if get(self.url + "/v2/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("aekit serve did not become ready")
            time.sleep(0.2)

    def stop(self) -> tuple[int, str, str]:
        """Ctrl-C (SIGINT), as a user stops it: (exit status, stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, self.proc.stdout.read(), self.proc.stderr.read()


def _call(req) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get(url: str) -> tuple[int, bytes]:
    return _call(urllib.request.Request(url))


def post(url: str, body: bytes | dict, content_type: str = "application/json") -> tuple[int, bytes]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    return _call(urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type}))


def v2_request(x: np.ndarray, datatype: str = "FP32", outputs=None, **extra) -> dict:
    req = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}],
           **extra}
    if outputs is not None:
        req["outputs"] = [{"name": n} for n in outputs]
    return req


def outputs_of(res: dict) -> dict[str, np.ndarray]:
    """A v2 response's outputs as arrays of their shape."""
    kinds = {"FP64": np.float64, "FP32": np.float32, "BOOL": bool}
    return {o["name"]: np.asarray(o["data"], dtype=kinds[o["datatype"]]).reshape(o["shape"]) for o in res["outputs"]}
