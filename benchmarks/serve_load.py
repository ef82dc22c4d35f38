"""Load test of `aekit serve` on loopback: throughput, latency, correctness and memory under concurrent clients.

    python benchmarks/serve_load.py            # 16 clients, 30 s per case -> benchmarks/RESULTS_serve.md
    python benchmarks/serve_load.py --quick    # 3 s per case, to check the script (writes --out if given)

A detector is fitted on scikit-learn's digits as a table (64 columns; aekit's table defaults), calibrated on
held-out rows (so every output exists), saved, and served by `python -m aekit serve` in a subprocess. Each
case runs ``--clients`` concurrent clients (asyncio + httpx, one keep-alive connection each) for ``--seconds``,
each client posting Open Inference Protocol v2 requests back to back, cycling over a few different request
bodies. Every answer is checked: the first answer to each body against offline scoring of the same rows
(``Detector.load(run)``: decision_function, predict_pvalue, predict, the encoder's codes, explain; equal bit
for bit), every later answer byte for byte against that first one. A failed request is any non-200 answer,
a timeout or a connection error; a mismatch is an answer that differs. The server's resident memory
(VmRSS from /proc) is sampled every 0.25 s: after the warm-up, at the end, and its peak.

Cases: 1 row per request and 1000 rows per request with every output (the default request: scores,
p_values, is_outlier, codes, reconstructions, contributions), and 1000 rows asking only for scores,
p_values and is_outlier. Client and server share the machine's cores, so the figures are those of one box
doing both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
CASES = [("1 row, every output", 1, None), ("1000 rows, every output", 1000, None),
         ("1000 rows, scores + p_values + is_outlier", 1000, ["scores", "p_values", "is_outlier"])]
BODIES = 4  # different request bodies per case, cycled


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Sampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), rss_mib(self.pid)))
            self.stop.wait(0.25)


def fit_run(folder: Path) -> tuple[Path, np.ndarray]:
    from sklearn.datasets import load_digits

    from aekit import Detector

    x = load_digits().data.astype(np.float32)  # (1797, 64), values 0..16
    det = Detector(random_state=0).fit(x[:1500])
    det.calibrate(x[1500:], fpr=0.05)
    return det.save(folder / "digits-table"), x


def v2_body(x: np.ndarray, outputs) -> bytes:
    req = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    if outputs:
        req["outputs"] = [{"name": n} for n in outputs]
    return json.dumps(req).encode()


def offline_outputs(det, x: np.ndarray, outputs) -> dict[str, np.ndarray]:
    """What every output must be, from offline scoring of the same rows."""
    import torch

    explained = det.explain(x)
    with torch.no_grad():
        codes = det.models_[0].encode(det.model_input(x)).flatten(1).numpy()
    scores = det.decision_function(x)
    every = {"scores": scores, "p_values": det.predict_pvalue(x), "is_outlier": det.predict(x) == 1,
             "codes": codes, "reconstructions": explained["reconstruction"],
             "contributions": explained["contributions"]}
    return {n: every[n] for n in (outputs or every)}


def matches(answer: bytes, expected: dict[str, np.ndarray]) -> bool:
    kinds = {"FP64": np.float64, "FP32": np.float32, "BOOL": bool}
    got = {o["name"]: np.asarray(o["data"], dtype=kinds[o["datatype"]]).reshape(o["shape"])
           for o in json.loads(answer)["outputs"]}
    return list(got) == list(expected) and all(np.array_equal(got[k], expected[k]) for k in expected)


async def run_case(url: str, bodies: list[bytes], expected: list[dict], clients: int, seconds: float) -> dict:
    import httpx

    reference: list[bytes | None] = [None] * len(bodies)
    latencies, failed, mismatched, errors = [], 0, 0, []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        stop = time.monotonic() + seconds

        async def client(k: int):
            nonlocal failed, mismatched
            i = k
            while time.monotonic() < stop:
                j = i % len(bodies)
                i += 1
                t0 = time.perf_counter()
                try:
                    r = await http.post(url, content=bodies[j], headers={"Content-Type": "application/json"})
                except httpx.HTTPError as e:
                    failed += 1
                    errors.append(type(e).__name__)
                    continue
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    failed += 1
                    errors.append(f"{r.status_code} {r.text[:200]}")
                    continue
                if reference[j] is None:
                    if not matches(r.content, expected[j]):
                        mismatched += 1
                        continue
                    reference[j] = r.content
                elif r.content != reference[j]:
                    mismatched += 1

        t0 = time.monotonic()
        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.monotonic() - t0
    lat = np.asarray(latencies) * 1e3
    return {"requests": len(latencies) + sum(1 for e in errors if not e[:3].isdigit()), "elapsed": elapsed,
            "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "failed": failed, "mismatched": mismatched, "errors": sorted(set(errors))[:5],
            "checked": sum(r is not None for r in reference)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 s per case (a check of the script)")
    ap.add_argument("--seconds", type=float, help="seconds per case [default: 30, or 3 with --quick]")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients [default: 16]")
    ap.add_argument("--out", help="results file [default: benchmarks/RESULTS_serve.md; none with --quick]")
    args = ap.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 30.0)
    warmup = min(5.0, seconds)  # seconds of each case's requests before it is measured
    out = Path(args.out) if args.out else (None if args.quick else HERE / "RESULTS_serve.md")
    sys.path.insert(0, str(SRC))
    from aekit import Detector, __version__

    tmp = Path(tempfile.mkdtemp(prefix="aekit-serve-load-"))
    server = None
    try:
        t0 = time.monotonic()
        run, x = fit_run(tmp)
        print(f"fitted and calibrated a detector on digits (64 columns) in {time.monotonic() - t0:.1f} s", flush=True)
        det = Detector.load(run)
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        server = subprocess.Popen([sys.executable, "-m", "aekit", "serve", str(run), "--port", str(port)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        import httpx

        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"aekit serve did not start: {server.stderr.read()}") from None
                time.sleep(0.2)
        url = f"{base}/v2/models/{run.name}/infer"
        sampler = Sampler(server.pid)
        sampler.start()
        rows = []
        rng = np.random.default_rng(0)
        for title, n, outputs in CASES:
            starts = rng.integers(0, len(x) - n + 1, size=BODIES)
            batches = [x[s: s + n] for s in starts]
            bodies = [v2_body(b, outputs) for b in batches]
            expected = [offline_outputs(det, b, outputs) for b in batches]
            asyncio.run(run_case(url, bodies, expected, args.clients, warmup))
            before = rss_mib(server.pid)
            t_start = time.monotonic()
            res = asyncio.run(run_case(url, bodies, expected, args.clients, seconds))
            during = [(t, m) for t, m in sampler.samples if t >= t_start]
            quarters = [min(during, key=lambda s, q=q: abs(s[0] - t_start - q * res["elapsed"]))[1] if during
                        else float("nan") for q in (0.25, 0.5, 0.75)]
            res.update(title=title, rows=n, rss_before=before, rss_after=rss_mib(server.pid), rss_quarters=quarters,
                       rss_peak=max([m for _, m in during] + [before]),
                       body_kib=sum(map(len, bodies)) / len(bodies) / 1024)
            rows.append(res)
            print(f"{title}: {res['requests'] / res['elapsed']:.1f} req/s, p50 {res['p50']:.1f} ms, p99 "
                  f"{res['p99']:.1f} ms, {res['failed']} failed, {res['mismatched']} mismatched "
                  f"({res['checked']}/{len(bodies)} bodies checked against offline scoring), RSS "
                  f"{before:.0f} -> {res['rss_after']:.0f} MiB (peak {res['rss_peak']:.0f})", flush=True)
        sampler.stop.set()
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
        if server.returncode != 0:
            raise RuntimeError(f"aekit serve exited with {server.returncode}: {server.stderr.read()[-2000:]}")
        ok = all(r["failed"] == 0 and r["mismatched"] == 0 and r["checked"] == BODIES for r in rows)
        if out:
            out.write_text(report(rows, args, seconds, warmup, __version__))
            print(f"wrote {out}")
        return 0 if ok else 1
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def report(rows: list[dict], args, seconds: float, warmup: float, version: str) -> str:
    import torch

    load = os.getloadavg()
    lines = [
        "# `aekit serve` under load (benchmarks/serve_load.py)",
        "",
        f"`python benchmarks/serve_load.py{' --quick' if args.quick else ''}` — {args.clients} concurrent clients "
        f"(asyncio + httpx, keep-alive) on loopback, {seconds:g} s per case after a {warmup:g} s warm-up, {BODIES} "
        "different request bodies per case. The model: `Detector(random_state=0)` (table defaults: ae "
        "64-64-64-16, joint score) fitted on 1500 rows of scikit-learn's digits as a 64-column table and "
        "calibrated on the other 297 (fpr 0.05), served by `python -m aekit serve` (one uvicorn process; model "
        "calls one at a time).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared by client and server (and other work: "
        f"load average {load[0]:.1f} at the end), torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}, aekit {version}.",
        "",
        "| case | rows/request | body (KiB) | requests | requests/s | rows/s | p50 latency (ms) | p99 latency (ms) "
        "| failed | answers ≠ offline | server RSS at 0, ¼, ½, ¾ and the end of the case (peak), MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        rps = r["requests"] / r["elapsed"]
        lines.append(f"| {r['title']} | {r['rows']} | {r['body_kib']:.1f} | {r['requests']} | {rps:.1f} | "
                     f"{rps * r['rows']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['failed']} | {r['mismatched']} | "
                     f"{' → '.join(f'{m:.0f}' for m in [r['rss_before'], *r['rss_quarters'], r['rss_after']])} "
                     f"({r['rss_peak']:.0f}) |")
    failed = sum(r["failed"] for r in rows)
    mismatched = sum(r["mismatched"] for r in rows)
    growth = max(r["rss_after"] - r["rss_before"] for r in rows)
    settled = max(r["rss_after"] - r["rss_quarters"][0] for r in rows)
    lines += [
        "",
        f"Failed requests: {failed}. Answers that differ from offline scoring: {mismatched} (the first answer to "
        "each body is compared with `Detector.load(run)` on the same rows — decision_function, predict_pvalue, "
        "predict, the encoder's codes and explain — bit for bit; every later answer byte for byte with it). "
        f"Server resident memory, largest change over a case: {growth:+.1f} MiB from its start to its end, "
        f"{settled:+.1f} MiB from its first quarter to its end (the step between the 1-row and the 1000-row cases "
        "is the working set of the larger requests).",
        "",
    ]
    if any(r["errors"] for r in rows):
        lines += ["Errors seen: " + "; ".join(e for r in rows for e in r["errors"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
