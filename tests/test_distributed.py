"""Several processes on this CPU with gloo: 2 ranks follow 1 rank, resume after kill -9, two rendezvoused
"machines", sharded evaluation (aekit.distributed, the trainer and the metrics under torch.distributed).

Tolerances. A 2-rank step sums each rank's gradient (a GEMM over its half of the batch, scaled by its share)
where one process sums all rows in one GEMM: the same terms added in another order, so each gradient differs
by a few float32 roundings (~1e-7 relative), and Adam carries that into the weights. Over the 36 steps of
two epochs on digits the largest weight difference measured is 3e-8 (weights of order 0.1-0.5) and the
epoch losses agree to 1e-7 relative: the tests allow 1e-6 absolute on weights and 1e-6 relative on losses,
ten times more, and far below what a wrong weighting (a batch counted twice, a share ignored) moves them.
Where no float sum is reordered the tests ask for equality: a 2-rank run against a one-process replay of
its documented semantics (the same shares, the same per-rank noise streams: x + y is y + x for two ranks),
a resumed run on the same ranks (bit-identical), and sharded evaluation (gathered, never re-added).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import aekit
from aekit import distributed, files, metrics, optim, registry, trainer
from aekit import run as run_files
from aekit.config import TrainConfig
from aekit.errors import ConfigError, TrainingDiverged
from aekit.likelihoods import bernoulli_sample
from aekit.models.ae import AE
from hostile import wait_for_epochs

TORCHRUN = Path(sys.executable).parent / "torchrun"
WEIGHT_ATOL, LOSS_RTOL = 1e-6, 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NanOnRank1(AE):
    """An AE whose loss turns NaN on rank 1 alone after 20 steps (in the second epoch at batch 73)."""

    name = "nan_on_rank_1"

    def forward(self, x, y=None):
        out = super().forward(x, y)
        if self.training and distributed.rank() == 1:
            self.steps = getattr(self, "steps", 0) + 1
            if self.steps > 20:
                out.loss = out.loss * float("nan")
        return out


def _model(ds, name: str, **kw):
    if name == NanOnRank1.name:
        return NanOnRank1(registry.get("ae").Config.from_dict(registry.data_options("ae", ds) | {"latent_dim": 4}))
    if name == "aae":
        kw.setdefault("disc_steps", 2)  # 4 update phases per batch, of the 3 kinds
    return registry.build_for(name, ds, latent_dim=4, hidden=[16], seed=0, **kw)


def _numpy_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# 2 ranks with torch.multiprocessing: the library path (aekit.fit, aekit.evaluate under torch.distributed)


def _writes_under(root: str):
    """An audit hook recording every file this process creates or opens for writing under ``root``."""
    seen: list[str] = []

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = os.fsdecode(args[0]), args[1], args[2] if len(args) > 2 else 0
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or \
                (mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing and os.path.abspath(path).startswith(root):
                seen.append(path)
        elif event in ("os.mkdir", "os.rename", "os.replace", "os.remove") and args:
            if os.path.abspath(os.fsdecode(args[0])).startswith(root):
                seen.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    return seen


def _worker(rank: int, world: int, port: int, jobs: list[dict], root: str, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    writes = _writes_under(root) if rank else []
    ds = aekit.datasets.load("digits")
    out, ok = [], False
    try:
        for job in jobs:
            model = _model(ds, job["model"])
            if job.get("eval"):
                out.append(metrics.evaluate(model, ds, job["split"], iw_samples=20, normal_class=0, shard=True))
                continue
            try:
                res = trainer.fit(model, ds, TrainConfig(**job["train"]), out_dir=job.get("out"),
                                  resume=job.get("resume", False), quiet=True)
            except TrainingDiverged as e:
                out.append(str(e))
                continue
            out.append((_numpy_state(res.model), res.history, res.best_epoch))
        ok = True
    finally:
        distributed.cleanup(wait=ok)
    queue.put((rank, out, list(writes)))


def _spawn(world: int, jobs: list[dict], root: Path) -> dict[int, tuple]:
    """Run ``jobs`` on ``world`` ranks; {rank: (results, files written under root)}."""
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, jobs, str(root), queue)) for r in range(world)]
    for p in procs:
        p.start()
    got = {}
    for _ in procs:
        rank, res, writes = queue.get(timeout=300)
        got[rank] = (res, writes)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got


def _one_process(ds, job: dict):
    model = _model(ds, job["model"])
    res = trainer.fit(model, ds, TrainConfig(**job["train"]), out_dir=job.get("out"),
                      resume=job.get("resume", False), quiet=True)
    return _numpy_state(res.model), res.history, res.best_epoch


def _replay(ds, name: str, cfg: TrainConfig, world: int):
    """What ``world`` ranks compute, in one process, from the trainer's documented semantics: the shared
    permutation (and dynamic binarization of the global batch), rows r::world for rank r, rank r's model noise
    from the global RNG seeded with rank_seed(seed, r, epoch) at each epoch, each phase's gradient the sum
    over ranks of share/rows x the rank's own gradient. Returns (weights, per-epoch training loss)."""
    model = _model(ds, name)
    cfg = cfg.resolved_for(ds.x_train.shape[0])
    x, y = ds.x_train, ds.y_train
    groups = model.param_groups()
    opts = {g: optim.make(p, cfg.lr * model.lr_scales().get(g, 1.0), cfg.weight_decay, torch.device("cpu"))
            for g, p in groups.items()}
    losses = []
    with torch.random.fork_rng():
        gen = torch.Generator().manual_seed(cfg.seed)
        for epoch in range(cfg.epochs):
            model.set_progress(epoch, cfg.epochs)
            model.train()
            streams = []
            for r in range(world):
                torch.manual_seed(distributed.rank_seed(cfg.seed, r, epoch))
                streams.append(torch.get_rng_state())
            perm = torch.randperm(x.shape[0], generator=gen)
            sums = [torch.zeros(()) for _ in range(world)]
            for s in range(math.ceil(x.shape[0] / cfg.batch_size)):
                batch = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                xg = bernoulli_sample(x[batch], gen) if cfg.binarize == "dynamic" else x[batch]
                for i, (group, objective) in enumerate(model.update_phases()):
                    total = None
                    for r in range(world):
                        torch.set_rng_state(streams[r])
                        model.zero_grad(set_to_none=True)
                        res = objective(xg[r::world], y[batch][r::world])
                        res.loss.backward()
                        streams[r] = torch.get_rng_state()
                        share = xg[r::world].shape[0]
                        grads = [None if p.grad is None else p.grad * (share / batch.shape[0]) for p in groups[group]]
                        total = grads if total is None else [a if b is None else a + b for a, b in zip(total, grads)]
                        if i == 0:
                            sums[r] = sums[r] + res.loss.detach().float() * share
                    for p, g in zip(groups[group], total):
                        p.grad = g
                    opts[group].step()
            losses.append(sum(sums[1:], sums[0]).item() / x.shape[0])
    return _numpy_state(model), losses


def _assert_close(a: dict, b: dict, atol: float = 0.0):
    assert a.keys() == b.keys()
    for k in a:
        diff = float(np.abs(a[k] - b[k]).max()) if a[k].size else 0.0
        assert diff <= atol, f"{k}: differs by {diff:.3g} (allowed {atol:g})"


def test_two_ranks_follow_one_rank_and_rank_1_writes_nothing(digits, tmp_path):
    """One spawn of 2 gloo ranks runs every job; the parent computes the references."""
    fresh = tmp_path / "one_rank_run"  # a 1-rank run of 2 epochs, resumed below on 2 ranks to 4
    trainer.fit(_model(digits, "ae"), digits, TrainConfig(epochs=2, batch_size=73), out_dir=fresh, quiet=True)
    jobs = [
        dict(model="ae", train=dict(epochs=2, batch_size=73)),  # shares of 37/36 rows, a last batch of 17
        dict(model="ae", train=dict(epochs=2, batch_size=419)),  # a last batch of 1 row: rank 1 has none
        dict(model="aae", train=dict(epochs=2, batch_size=73)),  # 4 update phases per batch, prior noise
        dict(model="vae", train=dict(epochs=2, batch_size=73, binarize="dynamic")),  # sampling noise
        dict(model="ae", train=dict(epochs=2, batch_size=73, seed=3), out=str(tmp_path / "two_rank_run")),
        dict(model="ae", train=dict(epochs=4, batch_size=73), out=str(fresh), resume=True),
        dict(model="vae", eval=True, split="train"),  # 1258 rows: two blocks of the likelihood and scores
        dict(model=NanOnRank1.name, train=dict(epochs=3, batch_size=73), out=str(tmp_path / "diverged")),
    ]
    got = _spawn(2, jobs, tmp_path)
    res0, res1 = got[0][0], got[1][0]
    assert got[1][1] == [], f"rank 1 wrote files: {got[1][1]}"
    for a, b in zip(res0[:6], res1[:6]):  # every rank ends with the same weights and history (but its own times)
        _assert_close(a[0], b[0])
        assert [{**h, "seconds": 0} for h in a[1]] == [{**h, "seconds": 0} for h in b[1]]
    assert res0[6] == res1[6]
    # a NaN on rank 1 alone: both ranks stop in the same epoch, rank 0 records it
    assert res0[7] == res1[7] and "the training loss became NaN/Inf in epoch 2" in res0[7]
    assert json.loads((tmp_path / "diverged" / run_files.SUMMARY).read_text())["stopped"] == "diverged"

    for job, (w2, h2, _) in zip(jobs[:2], res0[:2]):  # deterministic models: 2 ranks = 1 rank
        w1, h1, _ = _one_process(digits, job)
        _assert_close(w1, w2, WEIGHT_ATOL)
        for e1, e2 in zip(h1, h2, strict=True):
            for part in ("train", "val"):
                assert e2[part]["loss"] == pytest.approx(e1[part]["loss"], rel=LOSS_RTOL)
    for job, (w2, h2, _) in zip(jobs[2:4], res0[2:4]):  # with noise: 2 ranks = their one-process replay
        w, losses = _replay(digits, job["model"], TrainConfig(**job["train"]), 2)
        _assert_close(w, w2)
        assert [h["train"]["loss"] for h in h2] == pytest.approx(losses, rel=1e-12)

    written = tmp_path / "two_rank_run"  # rank 0 wrote a complete run; the weights are those returned
    assert aekit.Run.open(written).summary["epochs_run"] == 2
    _assert_close(_numpy_state(aekit.load(written)), res0[4][0])
    # a 1-rank run resumed on 2 ranks ends where the 1-rank run of 4 epochs ends (up to float order)
    w1, h1, _ = _one_process(digits, dict(model="ae", train=dict(epochs=4, batch_size=73)))
    _assert_close(w1, res0[5][0], WEIGHT_ATOL)
    assert [h["val"]["loss"] for h in res0[5][1]] == pytest.approx([h["val"]["loss"] for h in h1], rel=LOSS_RTOL)
    # and a 2-rank run resumed in one process ends there too
    resumed = trainer.fit(_model(digits, "ae"), digits, TrainConfig(epochs=4, batch_size=73, seed=3),
                          out_dir=written, resume=True, quiet=True)
    w1, _, _ = _one_process(digits, dict(model="ae", train=dict(epochs=4, batch_size=73, seed=3)))
    _assert_close(w1, _numpy_state(resumed.model), WEIGHT_ATOL)

    # sharded evaluation on 2 ranks = one process (likelihood blocks, anomaly scores, then the rest)
    one = metrics.evaluate(_model(digits, "vae"), digits, "train", iw_samples=20, normal_class=0)
    assert res0[6] == one
    assert {"iw_log_likelihood_nats", "anomaly_auroc_neg_elbo", "probe_linear_accuracy"} <= set(one)


# --------------------------------------------------------------------------------------------------
# Units and errors (one process)


def test_rank_seeds_differ_by_rank_and_epoch_and_fit_torch():
    seeds = {distributed.rank_seed(0, r, e) for r in range(4) for e in range(50)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)
    assert distributed.rank_seed(2**64 - 1, 0, 0) == distributed.rank_seed(-1, 0, 0)
    torch.Generator().manual_seed(max(seeds))


def test_blocks_are_seeded_apart_and_block_0_keeps_the_seed(digits):
    """A split of at most CHUNK_ROWS rows is estimated as before; larger splits in seeded blocks."""
    from aekit import bounds

    model = _model(digits, "vae")
    assert metrics.chunk_seed(7, 0) == 7 and metrics.chunk_seed(7, 1) != metrics.chunk_seed(7, 2)
    small = metrics.likelihood_metrics(model, digits, "test", iw_samples=10)
    assert small == bounds.likelihood_metrics(model, digits, "test", 10, 1)
    big = metrics.likelihood_metrics(model, digits, "train", iw_samples=10)  # 1258 rows: two blocks
    whole = bounds.likelihood_metrics(model, digits, "train", 10, 1)  # one stream: another draw, same law
    assert big.keys() == whole.keys()
    assert big["iw_log_likelihood_nats"] == pytest.approx(whole["iw_log_likelihood_nats"], rel=2e-3)
    scores = metrics.anomaly_scores(model, digits.x_train)
    first = metrics.anomaly_scores(model, digits.x_train[:1024])
    assert torch.equal(scores["neg_elbo"][:1024], first["neg_elbo"])
    assert not torch.equal(scores["neg_elbo"][1024:], metrics.anomaly_scores(model, digits.x_train[1024:])["neg_elbo"])


def test_gradient_buckets_split_by_size_dtype_and_device():
    ts = [torch.zeros(10), torch.zeros(10), torch.zeros(5, dtype=torch.float64), torch.zeros(100)]
    sizes = [[t.numel() for t in b] for b in distributed._buckets(ts, limit=79)]
    assert sizes == [[10], [10], [5], [100]]
    assert [[t.numel() for t in b] for b in distributed._buckets(ts, limit=10**6)] == [[10, 10], [5], [100]]


def test_without_torchrun_nothing_changes(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert not distributed.init_from_env() and not distributed.active()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    assert distributed.device_for("cuda:1") == torch.device("cuda:1")  # one process: the device as given
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: no process group either
    assert not distributed.init_from_env()
    t = torch.ones(3)
    assert distributed.agree(lambda: 5) == 5 and distributed.sum_(t) is t and distributed.all_true(True)


def test_too_few_rows_for_the_ranks_is_a_clear_error():
    with pytest.raises(ConfigError, match="--batch-size 2 is smaller than the 4 ranks"):
        trainer._check_shares(TrainConfig(batch_size=2), 100, 4)
    with pytest.raises(ConfigError, match="has 3 examples, fewer than the 4 ranks"):
        trainer._check_shares(TrainConfig(batch_size=8), 3, 4)


@pytest.mark.parametrize("env, message", [
    (dict(RANK="0", WORLD_SIZE="two"), "WORLD_SIZE='two' is not a whole number"),
    (dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0"), "torch.distributed could not start from the environment"),
])
def test_a_broken_launch_environment_is_one_line(cli, monkeypatch, tmp_path, env, message):
    for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, out, err = cli("train", "ae", "--epochs", "1", "--out", tmp_path / "run", "--quiet")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------------
# torchrun: the command line on several processes (slow: each launch starts Python and torch anew)


def _torchrun(*args, env=None, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([str(TORCHRUN), *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _pids_of_ranks(parent: int) -> dict[int, int]:
    """{rank: pid} of the worker processes a torchrun process started (read from /proc)."""
    ranks = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            env = dict(e.split(b"=", 1) for e in (p / "environ").read_bytes().split(b"\0") if b"=" in e)
        except (OSError, ValueError, IndexError):
            continue
        if b"RANK" in env:
            ranks[int(env[b"RANK"])] = int(p.name)
    return ranks


def _same_tensors(a: Path, b: Path) -> bool:
    ta, tb = files.load_tensors(a, 2**30)[0], files.load_tensors(b, 2**30)[0]
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.slow
def test_kill_9_of_one_rank_then_resume_ends_bit_identical(tmp_path):
    """torchrun, 2 ranks, a model with noise and dynamic binarization: rank 1 is killed with SIGKILL mid-run
    (torchrun then stops rank 0); --resume on 2 ranks ends bit-identical to an uninterrupted 2-rank run,
    and on 1 rank it finishes."""
    args = ["--nproc-per-node", "2", "-m", "aekit", "train", "dae", "--epochs", "12", "--batch-size", "32",
            "--latent-dim", "4", "--hidden", "16", "--seed", "5", "--binarize", "dynamic", "--quiet",
            "--checkpoint-every-epochs", "2"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    done = _torchrun(*args, "--out", ref)
    assert done.wait(timeout=300) == 0, done.stderr.read()[-2000:]
    proc = _torchrun(*args, "--out", run)
    wait_for_epochs(run, 3, timeout=240)
    os.kill(_pids_of_ranks(proc.pid)[1], signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    epochs = len((run / "metrics.jsonl").read_text().splitlines())
    assert 3 <= epochs < 12, f"the run was not interrupted mid-way ({epochs} epochs)"
    assert aekit.Run.open(run).load_checkpoint().epoch >= 2  # resumed from a checkpoint, not from the start
    other = tmp_path / "other"  # the same interrupted run, resumed on 1 rank below
    shutil.copytree(run, other)

    resumed = _torchrun("--nproc-per-node", "2", "-m", "aekit", "train", "--resume", run, "--quiet")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    for f in (run_files.WEIGHTS, run_files.CHECKPOINT):
        assert _same_tensors(ref / f, run / f), f
    assert (ref / run_files.METRICS).read_text().count("\n") == (run / run_files.METRICS).read_text().count("\n")

    one = subprocess.run([sys.executable, "-m", "aekit", "train", "--resume", other, "--quiet"],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    summary = json.loads((other / run_files.SUMMARY).read_text())
    assert summary["epochs_run"] == 12 and summary["stopped"] == "completed"


@pytest.mark.slow
def test_two_machines_rendezvous_and_rank_0_writes_the_run(tmp_path):
    """Two torchrun launches of one process each, rendezvousing on 127.0.0.1 as two machines would."""
    port = _free_port()
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
              f"127.0.0.1:{port}", "--rdzv-id", "aekit-test"]
    train = ["-m", "aekit", "train", "ae", "--epochs", "2", "--latent-dim", "4", "--hidden", "16", "--quiet",
             "--out", tmp_path / "run"]
    nodes = [_torchrun(*common, "--node-rank", str(i), *train, cwd=tmp_path) for i in (0, 1)]
    outs = [(n.wait(timeout=300), *n.communicate()) for n in nodes]
    assert [o[0] for o in outs] == [0, 0], [o[2][-2000:] for o in outs]
    assert sum("run saved in" in o[1] for o in outs) == 1  # rank 0 alone reports (and writes)
    run = aekit.Run.open(tmp_path / "run")
    assert run.summary["epochs_run"] == 2 and len(run.history) == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        [".aekit-lock.json", ".aekit-run.json", "checkpoint.safetensors", "config.json", "metrics.jsonl",
         "model.safetensors", "summary.json"])


@pytest.mark.slow
def test_eval_under_torchrun_equals_one_process(tmp_path):
    """`aekit eval --json` on 2 ranks prints what one process prints, likelihood and AUROC included, and
    rank 0 alone prints and writes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "vae"
    subprocess.run([sys.executable, "-m", "aekit", "train", "vae", "--epochs", "2", "--latent-dim", "4",
                    "--hidden", "16", "--quiet", "--out", run], env=env, check=True, capture_output=True)
    args = ["eval", run, "--eval-iw-samples", "50", "--split", "train", "--normal-class", "3", "--json"]
    one = subprocess.run([sys.executable, "-m", "aekit", *args], env=env, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr
    two = _torchrun("--nproc-per-node", "2", "-m", "aekit", *args)
    out, err = two.communicate(timeout=300)
    assert two.returncode == 0, err[-2000:]
    assert json.loads(out) == json.loads(one.stdout)  # one JSON document: rank 1 printed nothing
    assert "iw_log_likelihood_nats" in json.loads(out) and "anomaly_auroc_neg_elbo" in json.loads(out)
