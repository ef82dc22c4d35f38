"""Side-by-side benchmarks of aekit against its peers. Not part of the test suite.

    python benchmarks/run.py [--quick] [--only TASK[,TASK...]] [--repeats N] [--no-write]

Every measurement is one subprocess (aekit's scripts run in this interpreter's environment, each peer's in
its own virtual environment under benchmarks/.venvs/, created here on first use by pip from PyPI: torch
2.13.0 first, then the peer). A task runs its sides in alternation, A B A B ..., for several rounds in the
same process tree, so that the noise of a shared machine falls on both sides alike; each round gives one
figure per side and one paired ratio, and the table shows medians with the [min-max] spread over rounds.
Every side script prints one JSON line (figures plus its peak RSS from getrusage). A peer that cannot be
installed or fails is reported as skipped or failed with the reason, never replaced by a guess.

Other processes may share the machine: before each run the harness waits (up to --wait-quiet seconds) for
the CPUs to be idle, and the share of CPU that other processes used during each run is recorded and shown
per row. A 2-thread torch run loses several times over whenever another process takes a core (its OpenMP
threads spin at barriers); --omp-wait-policy passive makes that loss small but costs ~1.7x on a quiet
machine, so it is off by default.

Results are written to benchmarks/results.json (raw figures of every round) and benchmarks/RESULTS.md
(the table with date, CPU and torch version); ``--only`` updates just the tasks it runs.
Logs of every subprocess (its stderr) go to benchmarks/.cache/logs/.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
CACHE = HERE / ".cache"
LOGS = CACHE / "logs"
RESULTS_JSON = HERE / "results.json"
RESULTS_MD = HERE / "RESULTS.md"
HISTORY = HERE / "history.jsonl"  # one line per target row and full run: the run-to-run table of RESULTS.md
RESULT_PREFIX = "BENCH_RESULT "
TORCH_PIN = "torch==2.13.0"
THREADS = 2

# Peers: venv name -> (pip requirements after torch, import name). Versions are pinned: the side scripts
# in peers/ were written against these releases' APIs (read from their installed source).
PEERS = {
    "pythae": (["pythae==0.1.2"], "pythae"),
    "autoencoders": (["autoencoders==0.6.8"], "autoencoders"),
    # pyod's deep-learning detectors import tqdm without declaring it as a dependency
    "pyod": (["pyod==3.6.7", "tqdm"], "pyod"),
}


# --------------------------------------------------------------------------------------------------
# Peer environments


def _run_pip(py: Path, args: list[str], log) -> tuple[bool, str]:
    cmd = [str(py), "-m", "pip", "install", "--quiet", *args]
    log.write(f"$ {shlex.join(cmd)}\n")
    log.flush()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write(p.stdout)
    lines = [ln for ln in p.stdout.splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
    return p.returncode == 0, (lines[-1] if lines else f"pip exited with {p.returncode}")


def ensure_peer(name: str) -> tuple[Path | None, str]:
    """The peer's venv python, creating the venv if needed; (None, reason) when it cannot be installed."""
    reqs, module = PEERS[name]
    return ensure_venv(VENVS / name, reqs, module, LOGS / f"install-{name}.log")


def ensure_venv(venv: Path, reqs: list[str], module: str, log_path: Path) -> tuple[Path | None, str]:
    """``venv``'s python with TORCH_PIN then ``reqs`` installed (created on first use, reused while its marker
    names the same requirements); (None, reason) when it cannot be installed. The install log goes to
    ``log_path``."""
    py = venv / "bin" / "python"
    marker = venv / ".bench-installed"
    want = "\n".join([TORCH_PIN, *reqs])
    if py.exists() and marker.exists() and marker.read_text() == want:
        return py, "ok"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        print(f"[setup] installing {' '.join(reqs)} into {venv.relative_to(HERE.parent)} ...", flush=True)
        if not py.exists():
            p = subprocess.run([sys.executable, "-m", "venv", str(venv)], stdout=log, stderr=subprocess.STDOUT)
            if p.returncode != 0 or not py.exists():
                return None, f"could not create the virtual environment (python -m venv exited {p.returncode})"
        # torch first and pinned, so the peer's own torch requirement is already met (no CUDA build)
        ok, why = _run_pip(py, [TORCH_PIN], log)
        if not ok:
            return None, f"pip install {TORCH_PIN} failed: {why}"
        ok, why = _run_pip(py, reqs, log)
        if not ok:
            return None, f"pip install {' '.join(reqs)} failed: {why}"
        p = subprocess.run([str(py), "-c", f"import {module}"], stdout=log, stderr=subprocess.STDOUT)
        if p.returncode != 0:
            return None, f"installed, but `import {module}` fails (see {log_path})"
        check = subprocess.run([str(py), "-c", "import torch; print(torch.__version__)"],
                               capture_output=True, text=True)
        if not check.stdout.startswith(TORCH_PIN.split("==")[1]):
            return None, f"the peer replaced torch with {check.stdout.strip() or '?'}; not comparable"
    marker.write_text(want)
    return py, "ok"


def peer_versions(py: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({d: m.version(d) for d in sys.argv[1:]}))")
    names = ["torch"] + [r.split("==")[0] for reqs, _ in PEERS.values() for r in reqs]
    out = {}
    for n in names:
        p = subprocess.run([str(py), "-c", code, n], capture_output=True, text=True)
        if p.returncode == 0:
            out.update(json.loads(p.stdout))
    return out


# --------------------------------------------------------------------------------------------------
# Tasks


@dataclass
class Side:
    name: str  # "aekit", "pythae", "floor", ...
    env: str  # "aekit" or a peer name
    argv: list[str]  # script and arguments, relative to benchmarks/; "{round}" becomes the round index
    timeout: float = 3600.0


@dataclass
class Row:
    """One line of the table: figure ``key`` of side ``a`` (aekit) against side ``b`` (a peer or a reference)."""

    label: str
    a: str
    key_a: str
    b: str | None = None
    key_b: str | None = None
    ratio: str = "b/a"  # "b/a", "a/b", "a-b" (a difference) or "" (none)
    target: str = ""
    check: object = None  # function(median ratio or a value) -> bool
    check_on: str = "ratio"  # "ratio" or "a" (the aekit figure alone)
    fmt: str = "{:.3g}"


@dataclass
class Task:
    name: str
    title: str
    measures: str  # what exactly is measured, for RESULTS.md
    sides: list[Side]
    rows: list[Row]
    repeats: int = 3
    prepare: list[Side] = field(default_factory=list)  # run once before the rounds


def aekit_side(*args) -> list[str]:
    return ["aekit_side.py", *map(str, args)]


def peer_side(script: str, *args) -> list[str]:
    return [f"peers/{script}", *map(str, args)]


def autoencoders_epoch_task(family: str, title: str, measures: str, epochs: int, quick: bool) -> Task:
    """A training epoch of ``family`` against the `autoencoders` package's, with the >= 1.3x target."""
    return Task(
        family, title, measures,
        [Side("aekit", "aekit", aekit_side("train", family, "--epochs", epochs)),
         Side("autoencoders", "autoencoders", peer_side("autoencoders_side.py", family, "--epochs", epochs))],
        [Row(f"{family.upper()} epoch, s/epoch (ratio autoencoders/aekit)", "aekit", "seconds_per_epoch",
             "autoencoders", "seconds_per_epoch", "b/a", ">= 1.3x", lambda r: r >= 1.3)],
        repeats=3 if quick else 5)


def build_tasks(quick: bool) -> dict[str, Task]:
    q = quick
    ep_vae = 1 if q else 3
    ep_ae = 1 if q else 2
    weights = str(CACHE / "vae_nll_weights.pt")
    n_ll_peer, n_ll_aekit = (100, 1000) if q else (200, 2000)
    n_full = 500 if q else 10000
    tasks = [
        Task(
            "vae", "VAE training epoch, Bernoulli decoder (vs pythae, vs the FLOP floor)",
            f"One epoch over the 60k Fashion-MNIST training images, MLP 784-512-(16+16) / 16-512-784, batch 128, "
            f"Adam lr 1e-3, {THREADS} threads. aekit: aekit.fit, the trainer's per-epoch seconds (training pass "
            f"only). pythae 0.1.2: VAE(reconstruction_loss='bce') with its default MLP of the same shape, "
            f"BaseTrainer.train_step timed. {ep_vae} epoch(s) per run; the figure of a run is its median epoch. "
            "Test ELBO: single-sample ELBO (closed-form KL) averaged over the 10k test images after those epochs; "
            "round i trains with seed i on every side, so the ELBO rows show the spread over seeds (the "
            "seeds of two libraries give different initializations: compare medians, not pairs). "
            "Floor: the matmul FLOPs of one epoch (forward 2*in*out per layer and example = 1.655 MFLOP; backward "
            "counted as 2x forward: 3 x 1.655 MFLOP x 60000 = 297.9 GFLOP; the exact backward, without the input "
            "gradient of the first layer, gives 249.7 GFLOP) divided by the float32 rate of torch.mm measured "
            "in the same round on the very matmul shapes of a training step (best of 5). Peak RSS: ru_maxrss of "
            "the whole training process (import, data loading, training, evaluation). Info rows: the same aekit "
            "run with TrainConfig(amp='bf16') (bfloat16 matmuls under autocast; not the same arithmetic, so no "
            "target applies).",
            [Side("aekit", "aekit", aekit_side("train", "vae", "--epochs", ep_vae, "--seed", "{round}")),
             Side("pythae", "pythae", peer_side("pythae_side.py", "vae", "--epochs", ep_vae, "--seed", "{round}")),
             Side("floor", "aekit", aekit_side("floor", "--net", "vae")),
             Side("aekit-bf16", "aekit", aekit_side("train", "vae", "--epochs", ep_vae, "--amp", "bf16",
                                                   "--seed", "{round}"))],
            [Row("VAE epoch, s/epoch (ratio: pythae/aekit throughput)", "aekit", "seconds_per_epoch",
                 "pythae", "seconds_per_epoch", "b/a", ">= 2.2x", lambda r: r >= 2.2),
             Row("VAE test ELBO after the same epochs, nats (diff aekit-pythae)", "aekit", "test_elbo",
                 "pythae", "test_elbo", "a-b", "same or better (>= -1 nat)", lambda d: d >= -1.0, fmt="{:.2f}"),
             Row("VAE epoch vs FLOP floor (3x fwd), s (ratio aekit/floor)", "aekit", "seconds_per_epoch",
                 "floor", "seconds_per_epoch", "a/b", "<= 1.5x", lambda r: r <= 1.5),
             Row("VAE epoch vs exact-matmul floor, s (ratio aekit/floor)", "aekit", "seconds_per_epoch",
                 "floor", "seconds_per_epoch_exact", "a/b"),
             Row("matmul rate of the floor, GFLOP/s", "floor", "gflops_per_second", ratio=""),
             Row("peak RSS of the training process, MiB (ratio aekit/pythae)", "aekit", "peak_rss_mib",
                 "pythae", "peak_rss_mib", "a/b", "<= 1.0x (not above pythae)", lambda r: r <= 1.0, fmt="{:.0f}"),
             Row("info: aekit with TrainConfig(amp='bf16') (bfloat16 matmuls: not the same arithmetic), s/epoch "
                 "(ratio pythae/aekit-bf16)", "aekit-bf16", "seconds_per_epoch", "pythae", "seconds_per_epoch",
                 "b/a"),
             Row("info: test ELBO with amp='bf16', nats (diff aekit-bf16 - pythae)", "aekit-bf16", "test_elbo",
                 "pythae", "test_elbo", "a-b", fmt="{:.2f}")],
            repeats=3 if q else 5),
        Task(
            "nll", "Importance-sampled test log-likelihood, K=1000 (vs pythae get_nll)",
            "log p(x) ~ logsumexp_k log w_k - log K with K=1000 samples of q(z|x) per test image, for one VAE "
            "(784-512-16, trained 1 epoch by aekit; pythae's networks get the same weights). aekit: "
            f"VAE.log_likelihood over the first {n_ll_aekit} test images; pythae: VAE.get_nll(n_samples=1000, "
            f"batch_size=100) under torch.no_grad() over the first {n_ll_peer}. Figure: images per second. The "
            "mean estimates over the same first images are shown as a check that both compute the same thing "
            "(pythae's decoder emits sigmoid probabilities and clamps log at -100; aekit works from logits).",
            [Side("aekit", "aekit", aekit_side("nll", "--weights", weights, "--n", n_ll_aekit, "--k", 1000,
                                               "--compare-n", n_ll_peer)),
             Side("pythae", "pythae", peer_side("pythae_side.py", "nll", "--weights", weights, "--n", n_ll_peer,
                                                "--k", 1000))],
            [Row("IS log-likelihood K=1000, images/s (ratio aekit/pythae)", "aekit", "images_per_second",
                 "pythae", "images_per_second", "a/b", ">= 5x", lambda r: r >= 5.0),
             Row(f"mean log-likelihood of the same model, first {n_ll_peer} test images, nats (diff)", "aekit",
                 "mean_log_likelihood_first", "pythae", "mean_log_likelihood", "a-b", fmt="{:.2f}")],
            repeats=3 if q else 5,
            prepare=[Side("prepare", "aekit", aekit_side("nll-prepare", "--out", weights, "--epochs", 1))]),
        Task(
            "full_ll", "Full test-set log-likelihood, K=5000, 10k images",
            "aekit VAE.log_likelihood with K=5000 over the 10k test images (batches of 1000 images) of the VAE "
            f"of the nll task; wall time. {'Quick mode: the first 500 images, time scaled by 20.' if q else ''}",
            [Side("aekit", "aekit", aekit_side("full-ll", "--weights", weights, "--n", n_full, "--k", 5000))],
            [Row("test LL K=5000 over 10k images, seconds" + (" (extrapolated from 500)" if q else ""),
                 "aekit", "seconds_for_10k", ratio="", target="< 600 s", check=lambda v: v < 600, check_on="a",
                 fmt="{:.0f}")],
            repeats=1,
            prepare=[Side("prepare", "aekit", aekit_side("nll-prepare", "--out", weights, "--epochs", 1))]),
        Task(
            "cae", "Contractive AE epoch (vs autoencoders; vs aekit's plain AE)",
            f"One epoch, MLP 784-512-16 (ReLU hidden, linear code), batch 128, Adam 1e-3. aekit: CAE "
            "(contraction 0.1; exact ||J||_F^2 from the closed form of regularizers.encoder_jacobian_sq_norm) and "
            "the plain AE of the same net, both through aekit.fit. autoencoders 0.6.8: its CAE "
            "(contractive_weight 0.1, one autograd.grad per code unit) through AETrainer.train_epoch. "
            f"{ep_ae} epoch(s) per run. aekit-proj: the same CAE with CAEConfig(jacobian='projection'), the "
            "opt-in unbiased random-projection estimate of ||J||_F^2 (4 Gaussian input-side projections per "
            "batch); its penalty is noisy, so the table also shows, for both, the exact ||J||_F^2 and the "
            "reconstruction loss on 2000 test images after training.",
            [Side("aekit-ae", "aekit", aekit_side("train", "ae", "--epochs", ep_ae)),
             Side("aekit", "aekit", aekit_side("train", "cae", "--epochs", ep_ae)),
             Side("aekit-proj", "aekit", aekit_side("train", "cae-proj", "--epochs", ep_ae)),
             Side("autoencoders", "autoencoders", peer_side("autoencoders_side.py", "cae", "--epochs", 1))],
            [Row("CAE epoch, s/epoch (ratio autoencoders/aekit)", "aekit", "seconds_per_epoch",
                 "autoencoders", "seconds_per_epoch", "b/a"),
             Row("aekit CAE epoch (exact penalty, the default) vs aekit AE epoch, s (ratio cae/ae)", "aekit",
                 "seconds_per_epoch", "aekit-ae", "seconds_per_epoch", "a/b", "<= 1.5x", lambda r: r <= 1.5),
             Row("aekit CAE epoch with jacobian='projection' vs aekit AE epoch, s (ratio cae-proj/ae)",
                 "aekit-proj", "seconds_per_epoch", "aekit-ae", "seconds_per_epoch", "a/b", "<= 1.5x",
                 lambda r: r <= 1.5),
             Row("test ||J||_F^2 (exact) after training: projection vs exact penalty (ratio proj/exact)",
                 "aekit-proj", "test_jacobian_sq_norm", "aekit", "test_jacobian_sq_norm", "a/b", fmt="{:.2f}"),
             Row("test reconstruction loss (nats): projection vs exact penalty (diff proj-exact)",
                 "aekit-proj", "test_recon", "aekit", "test_recon", "a-b", fmt="{:.2f}")],
            repeats=3),
        autoencoders_epoch_task(
            "dae", "Denoising AE epoch (vs autoencoders)",
            "One epoch, MLP 784-512-16, batch 128, Adam 1e-3, Gaussian corruption std 0.3 on both sides. "
            "aekit: DAE through aekit.fit (Bernoulli likelihood from logits, the default for images); "
            "autoencoders 0.6.8: DenoisingAutoencoderModel (MSE) through AETrainer.train_epoch.", ep_ae, q),
        autoencoders_epoch_task(
            "sae", "Sparse AE epoch (vs autoencoders)",
            "One epoch, MLP 784-512-16 (linear code), batch 128, Adam 1e-3, L1 activity penalty 1e-3 on the "
            "code on both sides. aekit: SAE through aekit.fit; autoencoders 0.6.8: SparseAutoencoderModel "
            "through AETrainer.train_epoch.", ep_ae, q),
        Task(
            "anomaly", "One-class anomaly detection, Fashion-MNIST class 0 normal (vs pyod AutoEncoder)",
            "Fit on the 6000 training images of class 0 (T-shirt/top), score the 10k test images, AUROC with "
            "anomaly = any other class. pyod 3.6.7: AutoEncoder() with its defaults, fit + decision_function. "
            "aekit: the model and score of aekit_side.ANOMALY, aekit.fit + aekit.metrics.anomaly_scores. "
            "Fitting time: the wall time of the fit call.",
            [Side("aekit", "aekit", aekit_side("anomaly")),
             Side("pyod", "pyod", peer_side("pyod_side.py", "anomaly"))],
            [Row("AUROC (diff aekit-pyod)", "aekit", "auroc", "pyod", "auroc", "a-b", "higher", lambda d: d > 0,
                 fmt="{:.4f}"),
             Row("fitting time, s (ratio pyod/aekit)", "aekit", "fit_seconds", "pyod", "fit_seconds", "b/a",
                 "less (> 1x)", lambda r: r > 1.0)],
            repeats=3 if q else 5),
    ]
    return {t.name: t for t in tasks}


# --------------------------------------------------------------------------------------------------
# Running


OMP_WAIT_POLICY = "default"  # set by main() from --omp-wait-policy


def side_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS),
                "AEKIT_BENCH_THREADS": str(THREADS), "PYTHONUNBUFFERED": "1"})
    if OMP_WAIT_POLICY == "default":
        env.pop("OMP_WAIT_POLICY", None)
    else:
        env["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY.upper()
    env.pop("PYTHONPATH", None)
    return env


def _cpu_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine since boot (all CPUs, from /proc/stat)."""
    try:
        f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan")
    v = [int(x) for x in f]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def machine_busy(window: float = 1.0) -> float:
    """Share of the machine's CPUs busy over ``window`` seconds while the harness waits (0..1)."""
    b0, t0 = _cpu_busy_seconds(), time.perf_counter()
    time.sleep(window)
    return (_cpu_busy_seconds() - b0) / ((time.perf_counter() - t0) * (os.cpu_count() or 1))


def wait_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to max_wait s) until other processes leave the machine mostly idle; returns the busy share."""
    t0 = time.perf_counter()
    busy = machine_busy()
    announced = False
    while busy > threshold and time.perf_counter() - t0 < max_wait:
        if not announced:
            print(f"    (machine {busy:.0%} busy with other processes; waiting up to {max_wait:.0f} s)", flush=True)
            announced = True
        time.sleep(4.0)
        busy = machine_busy()
    return busy


def run_side(side: Side, python: Path, log_name: str, max_wait: float = 0.0) -> dict:
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{log_name}.log"
    cmd = [str(python), str(HERE / side.argv[0]), *side.argv[1:]]
    busy_before = wait_quiet(max_wait) if max_wait > 0 else None
    busy0, ours0 = _cpu_busy_seconds(), _children_cpu_seconds()
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=HERE, env=side_env(),
                               timeout=side.timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {side.timeout:.0f} s (log: {log_path})"}
        log.write("\n--- stdout ---\n" + p.stdout)
    wall = time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if p.returncode != 0 or not lines:
        tail = ""
        try:
            tail = [ln for ln in log_path.read_text().splitlines() if ln.strip()][-1][:200]
        except (OSError, IndexError):
            pass
        return {"error": f"exit {p.returncode}: {tail} (log: {log_path.relative_to(HERE.parent)})"}
    res = json.loads(lines[-1][len(RESULT_PREFIX):])
    res["wall_seconds"] = wall
    # CPU time used by everything else on the machine during this run, as a share of all CPUs: the noise
    others = (_cpu_busy_seconds() - busy0) - (_children_cpu_seconds() - ours0)
    res["others_cpu_share"] = max(0.0, others / (wall * (os.cpu_count() or 1)))
    if busy_before is not None:
        res["busy_before"] = busy_before
    return res


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return float("nan") if not n else (xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2]))


def ratio_of(kind: str, a: float, b: float) -> float | None:
    if a is None or b is None:
        return None
    if kind == "b/a":
        return b / a if a else None
    if kind == "a/b":
        return a / b if b else None
    if kind == "a-b":
        return a - b
    return None


PREPARED: set[tuple[str, ...]] = set()  # prepare steps already run in this invocation


def run_task(task: Task, pythons: dict[str, Path | None], skipped: dict[str, str], repeats: int | None,
             max_wait: float = 0.0) -> dict:
    n_rounds = repeats or task.repeats
    out = {"task": task.name, "title": task.title, "measures": task.measures, "rounds": [], "skipped": {},
           "failed": {}}
    for s in task.prepare:
        if tuple(s.argv) in PREPARED:  # e.g. the VAE weights of the nll task, reused by full_ll
            continue
        print(f"[{task.name}] prepare: {' '.join(s.argv)}", flush=True)
        r = run_side(s, pythons["aekit"], f"{task.name}-prepare")
        if "error" in r:
            out["failed"]["prepare"] = r["error"]
            print(f"[{task.name}] prepare failed: {r['error']}", flush=True)
            return out
        PREPARED.add(tuple(s.argv))
    active = []
    for s in task.sides:
        if pythons.get(s.env) is None:
            out["skipped"][s.name] = skipped.get(s.env, "not installed")
        else:
            active.append(s)
    for r in range(n_rounds):
        rnd = {}
        for s in active:  # alternation: A B (C) in every round, the rounds back to back
            if s.name in out["failed"]:
                continue
            s_r = dataclasses.replace(s, argv=[a.replace("{round}", str(r)) for a in s.argv])  # e.g. seeds
            res = run_side(s_r, pythons[s.env], f"{task.name}-{s.name}-{r + 1}", max_wait)
            if "error" in res:
                out["failed"][s.name] = res["error"]
                print(f"[{task.name}] round {r + 1} {s.name}: FAILED {res['error']}", flush=True)
                continue
            rnd[s.name] = res
            brief = {k: v for k, v in res.items() if isinstance(v, (int, float)) and k not in ("threads",)}
            print(f"[{task.name}] round {r + 1}/{n_rounds} {s.name}: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in list(brief.items())[:5])
                  + f" (others' CPU {res['others_cpu_share']:.0%})", flush=True)
        out["rounds"].append(rnd)
    out["rows"] = summarize(task, out)
    return out


def summarize(task: Task, out: dict) -> list[dict]:
    rows = []
    for row in task.rows:
        a_vals = [r[row.a].get(row.key_a) for r in out["rounds"] if row.a in r]
        b_vals = [r[row.b].get(row.key_b) for r in out["rounds"] if row.b and row.b in r]
        ratios = [ratio_of(row.ratio, r[row.a].get(row.key_a), r[row.b].get(row.key_b))
                  for r in out["rounds"] if row.b and row.a in r and row.b in r]
        a_vals = [v for v in a_vals if v is not None]
        b_vals = [v for v in b_vals if v is not None]
        ratios = [v for v in ratios if v is not None]
        noise = [r[s].get("others_cpu_share") for r in out["rounds"] for s in (row.a, row.b) if s and s in r]
        d = {"label": row.label, "a": row.a, "b": row.b, "ratio_kind": row.ratio, "target": row.target,
             "fmt": row.fmt, "a_values": a_vals, "b_values": b_vals, "ratios": ratios, "status": "",
             "others_cpu": [v for v in noise if v is not None]}
        probe = median(ratios) if row.check_on == "ratio" and ratios else (median(a_vals) if a_vals else None)
        if row.check is not None:
            if probe is None or (isinstance(probe, float) and math.isnan(probe)):
                missing = [s for s in (row.a, row.b) if s and (s in out["skipped"] or s in out["failed"])]
                d["status"] = "n/a (" + ", ".join(
                    f"{s} {'skipped' if s in out['skipped'] else 'failed'}" for s in missing) + ")" if missing \
                    else "n/a"
            else:
                d["status"] = "MET" if row.check(probe) else "MISSED"
        rows.append(d)
    return rows


# --------------------------------------------------------------------------------------------------
# Reporting


def spread(vals: list[float], fmt: str) -> str:
    if not vals:
        return "-"
    m = fmt.format(median(vals))
    if len(vals) == 1:
        return m
    return f"{m} [{fmt.format(min(vals))}..{fmt.format(max(vals))}]"


def ratio_text(d: dict) -> str:
    if not d["ratios"]:
        return "-"
    if d["ratio_kind"] == "a-b":
        return spread(d["ratios"], "{:+.2f}" if "4f" not in d["fmt"] else "{:+.4f}")
    return spread(d["ratios"], "{:.2f}") + "x"


def table_lines(results: dict, tasks_order: list[str]) -> list[str]:
    head = ["task", "figure", "aekit", "peer / reference", "ratio", "target", "status", "others' CPU, median (max)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in tasks_order:
        res = results.get(name)
        if not res:
            continue
        if "rows" not in res:
            lines.append(f"| {name} | (not run: {json.dumps(res.get('failed'))}) | | | | | | |")
            continue
        for d in res["rows"]:
            peer = "-"
            if d["b"]:
                if d["b"] in res.get("skipped", {}):
                    peer = f"{d['b']}: skipped ({res['skipped'][d['b']]})"
                elif d["b"] in res.get("failed", {}):
                    peer = f"{d['b']}: failed"
                else:
                    peer = f"{d['b']}: {spread(d['b_values'], d['fmt'])}"
            a = spread(d["a_values"], d["fmt"]) if d["a_values"] else (
                "failed" if d["a"] in res.get("failed", {}) else "-")
            a = a if d["a"] == "aekit" else f"{d['a']}: {a}"
            oc = d.get("others_cpu") or []
            noise = f"{median(oc):.0%} (max {max(oc):.0%})" if oc else "-"
            lines.append(f"| {name} | {d['label']} | {a} | {peer} | {ratio_text(d)} | {d['target']} | "
                         f"{d['status']} | {noise} |")
    return lines


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def cpu_model() -> str:
    model, fam, mod = "unknown CPU", "", ""
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = ln.partition(":")
            k, v = k.strip(), v.strip()
            if k == "model name" and model == "unknown CPU":
                model = v
            elif k == "cpu family" and not fam:
                fam = v
            elif k == "model" and not mod:
                mod = v
    except OSError:
        pass
    return f"{model} (family {fam} model {mod}), {os.cpu_count()} logical CPUs"


def code_version() -> str:
    """The aekit code measured: the git commit, with "+changes" when the working tree differs from it."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "../src"], cwd=HERE, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (rev or "?") + ("+changes" if dirty else "")


def append_history(task: str, res: dict) -> None:
    """Record the medians of every row with a target (full runs only) in benchmarks/history.jsonl."""
    if res.get("mode") != "full" or "rows" not in res:
        return
    with open(HISTORY, "a") as f:
        for d in res["rows"]:
            if not d["target"]:
                continue
            rec = {"date": res["date"], "code": code_version(), "task": task, "label": d["label"],
                   "target": d["target"], "status": d["status"], "rounds": len(d["ratios"]) or len(d["a_values"]),
                   "ratio": median(d["ratios"]) if d["ratios"] else None,
                   "a": median(d["a_values"]) if d["a_values"] else None, "ratio_kind": d["ratio_kind"]}
            f.write(json.dumps(rec, sort_keys=True) + "\n")


def _history_value(rec: dict) -> float:
    """The figure a history record is judged on: its median ratio, or its aekit figure when it has none."""
    return rec["ratio"] if rec.get("ratio") is not None else rec["a"]


def _history_figure(rec: dict, kind: str) -> str:
    v = rec["value"] if "value" in rec else _history_value(rec)
    return {"a-b": f"{v:+.2f}", "": f"{v:.3g}"}.get(kind, f"{v:.2f}x")


def history_lines() -> list[str]:
    """The run-to-run table: every recorded full run of every target row, and the median over runs."""
    if not HISTORY.exists():
        return []
    rows: dict[tuple[str, str], list[dict]] = {}
    for ln in HISTORY.read_text().splitlines():
        if ln.strip():
            r = json.loads(ln)
            rows.setdefault((r["task"], r["label"]), []).append(r)
    out = ["## Run to run", "",
           "This machine is shared and its speed drifts by up to 1.5x between minutes, so one run's medians "
           "can flip a status. Every full run of a row with a target is recorded in benchmarks/history.jsonl; "
           "the last column is the median over all recorded runs. [code]: the aekit commit measured (runs "
           "before a change to the measured code path are not comparable to runs after it).", "",
           "| task | figure | target | runs: date [code], median (status) | median over runs |",
           "|---|---|---|---|---|"]
    for (task, label), recs in rows.items():
        kind = recs[-1]["ratio_kind"]
        runs = "; ".join(f"{r['date']} [{r.get('code', '?')}]: {_history_figure(r, kind)} ({r['status'] or '-'})"
                         for r in recs)
        out.append(f"| {task} | {label} | {recs[-1]['target']} | {runs} | "
                   f"{_history_figure({'value': median([_history_value(r) for r in recs])}, kind)} |")
    return out + [""]


def write_results(results: dict, meta: dict, tasks: dict[str, Task]) -> None:
    RESULTS_JSON.write_text(json.dumps({"meta": meta, "tasks": results}, indent=1, sort_keys=True) + "\n")
    order = [n for n in tasks if n in results]
    md = ["# aekit benchmarks", "",
          "Generated by `python benchmarks/run.py` (see benchmarks/run.py and its side scripts). Figures are "
          "medians over rounds run in alternation (aekit, peer, aekit, peer, ...), with [min..max] over the "
          "rounds; ratios are paired per round. Each figure comes from its own subprocess "
          f"({THREADS} torch threads).", ""]
    md += [f"- last run: {meta['date']}  `{meta['command']}`",
           f"- machine: {meta['cpu']}; Python {meta['python']}; torch {meta['torch']}",
           f"- peers: {meta.get('peers_text', '-')}",
           f"- machine load (other processes share it): {meta.get('load_average', '?')}; every side ran with "
           f"OMP_WAIT_POLICY={meta.get('omp_wait_policy', '?')}, {THREADS} threads", ""]
    dates = {n: results[n].get("date") for n in order}
    if len(set(dates.values())) > 1:
        md += ["Tasks from earlier runs: " + ", ".join(
            f"{n} ({d}, {results[n].get('mode')}, OMP_WAIT_POLICY={results[n].get('omp_wait_policy', '?')})"
            for n, d in dates.items() if d != meta["date"]), ""]
    md += table_lines(results, order) + [""]
    md += history_lines()
    md += ["## What each task measures", ""]
    for n in order:
        md += [f"**{n}** — {results[n]['title']}. {results[n]['measures']}", ""]
        sk = results[n].get("skipped") or {}
        fl = results[n].get("failed") or {}
        for s, why in sk.items():
            md += [f"- {s} skipped: {why}"]
        for s, why in fl.items():
            md += [f"- {s} failed: {why}"]
        if sk or fl:
            md += [""]
    RESULTS_MD.write_text("\n".join(md) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 epoch per run, 3 rounds, smaller evaluation sets")
    p.add_argument("--only", help="comma-separated task names")
    p.add_argument("--repeats", type=int, help="rounds per task (default: per task)")
    p.add_argument("--no-write", action="store_true", help="print the table only; leave RESULTS.md as it is")
    p.add_argument("--omp-wait-policy", choices=("default", "passive", "active"), default="default",
                   help="OMP_WAIT_POLICY of every side (default: leave it unset, as users run). passive keeps a "
                        "2-thread run from collapsing when other processes take a core, but makes a VAE epoch "
                        "~1.7x slower on a quiet machine")
    p.add_argument("--wait-quiet", type=float, default=120.0, metavar="S",
                   help="before each run, wait up to S seconds for other processes to leave the CPUs idle "
                        "(default 120; 0: never wait). The CPU share others used during each run is recorded")
    args = p.parse_args(argv)
    global OMP_WAIT_POLICY
    OMP_WAIT_POLICY = args.omp_wait_policy

    tasks = build_tasks(args.quick)
    names = list(tasks)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in tasks]
        if unknown:
            p.error(f"unknown task(s) {', '.join(unknown)}; tasks are: {', '.join(tasks)}")

    import torch

    needed = {s.env for n in names for s in tasks[n].sides} - {"aekit"}
    pythons: dict[str, Path | None] = {"aekit": Path(sys.executable)}
    skipped: dict[str, str] = {}
    for peer in sorted(needed):
        py, why = ensure_peer(peer)
        pythons[peer] = py
        if py is None:
            skipped[peer] = why
            print(f"[setup] peer {peer} skipped: {why}", flush=True)
    versions = {}
    for peer in sorted(PEERS):  # every installed peer, so RESULTS.md names the versions behind older rows too
        if pythons.get(peer) is None and peer not in skipped and (VENVS / peer / ".bench-installed").exists():
            pythons[peer] = VENVS / peer / "bin" / "python"
        if pythons.get(peer):
            v = peer_versions(pythons[peer])
            versions[peer] = {k: v[k] for k in v if k == "torch" or k in [r.split("==")[0] for r in PEERS[peer][0]]}
    peers_text = "; ".join(f"{k} " + ", ".join(f"{a} {b}" for a, b in v.items()) for k, v in versions.items())
    peers_text += "".join(f"; {k}: skipped ({why})" for k, why in skipped.items())

    date = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    mode = "quick" if args.quick else "full"
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    old = {}
    if RESULTS_JSON.exists():  # tasks not run now keep their last results (shown with their date)
        try:
            old = json.loads(RESULTS_JSON.read_text()).get("tasks", {})
        except (OSError, json.JSONDecodeError):
            old = {}
    results = {}
    load_start = load_average()
    t_all = time.perf_counter()

    def meta_now() -> dict:
        return {"date": date, "command": command, "cpu": cpu_model(), "python": platform.python_version(),
                "torch": torch.__version__, "peers": versions, "peers_text": peers_text or "-", "mode": mode,
                "load_average": f"{load_start} at the start, {load_average()} at the end (1-minute, "
                                f"{os.cpu_count()} CPUs)",
                "omp_wait_policy": OMP_WAIT_POLICY}

    for n in names:
        t0 = time.perf_counter()
        print(f"== {n}: {tasks[n].title}", flush=True)
        res = run_task(tasks[n], pythons, skipped, args.repeats, args.wait_quiet)
        res.update({"date": date, "mode": mode, "seconds": time.perf_counter() - t0,
                    "omp_wait_policy": OMP_WAIT_POLICY})
        results[n] = res
        if not args.no_write:  # after every task, so an interrupted run keeps what it measured
            append_history(n, res)
            write_results({**old, **results}, meta_now(), tasks)
    meta = meta_now()
    print(f"\n{meta['date']}  {meta['cpu']}  torch {meta['torch']}  ({mode}, "
          f"{time.perf_counter() - t_all:.0f} s; load average {meta['load_average']})\n")
    print("\n".join(table_lines(results, names)))
    if not args.no_write:
        print(f"\nwrote {RESULTS_MD.relative_to(HERE.parent)} and {RESULTS_JSON.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
