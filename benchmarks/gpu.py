"""The GPU path, measured: aekit beside pythae on one GPU, and DDP across the visible GPUs. Not a test.

    python benchmarks/gpu.py                          # on a CUDA machine: every part, within --budget-s (300 s)
    python benchmarks/gpu.py --device cpu --quick     # every part for a few steps on the CPU (not GPU figures)
    python benchmarks/gpu.py --parts vae,nll --repeats 5 --data DIR --pythae-python PY --json out.json

Parts (the protocol of benchmarks/run.py, on one device):

- ``vae``: one epoch of the VAE over the 60k Fashion-MNIST training images, MLP 784-512-(16+16) / 16-512-784,
  Bernoulli decoder, batch 128, Adam lr 1e-3. aekit: ``aekit.fit`` with TrainConfig(amp="none") and
  TrainConfig(amp="bf16") (bfloat16 autocast: not the same arithmetic, an info row), the trainer's own
  seconds per epoch (the training pass, ended by a device sync). pythae 0.1.2: its VAE (same MLP) trained by
  its BaseTrainer on the same device, ``train_step`` timed. The first epoch of every run is a warm-up (CUDA
  context, cuBLAS handles, allocator); the figure of a run is the median of the later ones. Target: aekit fp32
  at least 10x pythae's throughput.
- ``nll``: the K=1000 importance-sampled log-likelihood of one model (the fp32 VAE just trained by aekit, its
  weights copied into pythae's networks): aekit ``VAE.log_likelihood`` over the first 2000 test images,
  pythae ``VAE.get_nll(n_samples=1000, batch_size=100)`` over the first 200; images per second, after a
  warm-up call. Target: at least 10x. An info row shows aekit with ``chunk_size=65536`` decoder rows per call
  (the default chunk is sized for CPU caches). The mean estimates over the same first images check that both
  compute the same thing.
- ``conv``: one epoch of aekit's conv VAE (stride-2 channels 32,64; same batch and optimizer). No peer.
- ``ddp``: ``aekit train vae`` (the MLP above) in one process and under torchrun with one process per visible
  GPU (``--nproc-per-node N``, NCCL), each rank with batch 128 (global batch 128 x N); seconds per epoch of
  rank 0 from each run's metrics.jsonl (median after the first epoch) and the speed-up. Skipped with a message
  when fewer than 2 GPUs are visible. With ``--device cpu`` it runs 2 processes with gloo.

Every measurement is a subprocess that prints one ``BENCH_RESULT`` line, run through benchmarks/run.py's
machinery (``run_task``: sides in alternation, aekit then pythae, in rounds; medians and [min..max] over rounds;
ratios taken per round). pythae is optional: it is run by the first interpreter that imports it, of
``--pythae-python``, this one, and (``--device cpu`` only: its torch is the CPU build) the environment
benchmarks/run.py installs in benchmarks/.venvs/pythae; otherwise its rows say why they are empty. Nothing
is downloaded. Without Fashion-MNIST's IDX files in ``--data`` the script writes seeded uniform uint8 images of
the same shape to a temporary folder and says so: timings hold, ELBO and likelihood values are then not
Fashion-MNIST's. ``--quick`` runs every part on a few hundred images for two epochs: it checks the script,
it measures nothing. With ``--device cpu`` the table says that its figures are not GPU figures and judges no
target.

The side scripts run in pythae's interpreter too, so this file imports only the standard library, torch and
benchmarks/peers/_common.py at module level (aekit is imported inside the aekit side and the main process).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(HERE))
import run as harness  # noqa: E402  (benchmarks/run.py: Side, Row, Task, run_task, summarize, spread, ...)
import torch  # noqa: E402
from _common import FASHION_MNIST_DIR, Timer, emit, fashion_mnist, median, setup, stdout_to_stderr  # noqa: E402

BATCH = 128
NET = {"hidden": [512], "latent_dim": 16}
CONV = {"arch": "conv", "hidden": [32, 64], "latent_dim": 16}
GPU_CHUNK = 2**16  # decoder rows per call in the nll info row (65 images x 1000 samples)
TARGET = 10.0  # the targets on one GPU: VAE epoch and likelihood, aekit / pythae throughput
IDX_NAMES = {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
             ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte"}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each part does: the full protocol, or a few steps (``--quick``)."""

    limit: int | None  # training images (None: all 60k) and test images loaded
    epochs: int  # aekit MLP VAE epochs per run (the first is a warm-up)
    conv_epochs: int
    pythae_epochs: int
    nll_n: int  # aekit's test images for the likelihood
    nll_n_peer: int  # pythae's (the first of aekit's)
    k: int  # importance samples
    ddp_epochs: int
    repeats: int
    synthetic: tuple[int, int]  # train, test images of the synthetic stand-in
    timeout: float  # per side, seconds


FULL = Sizes(limit=None, epochs=3, conv_epochs=2, pythae_epochs=2, nll_n=2000, nll_n_peer=200, k=1000,
             ddp_epochs=3, repeats=3, synthetic=(60000, 10000), timeout=600.0)
# pythae's get_nll uses max(K, its batch of 100) samples: K=100 keeps both sides on the same K
QUICK = Sizes(limit=256, epochs=2, conv_epochs=2, pythae_epochs=2, nll_n=8, nll_n_peer=4, k=100, ddp_epochs=2,
              repeats=1, synthetic=(512, 256), timeout=180.0)


# --------------------------------------------------------------------------------------------------
# Data


def missing_idx(folder: Path) -> list[str]:
    """The Fashion-MNIST IDX files (gzipped or not, as _common reads them) that ``folder`` lacks."""
    return [n for n in IDX_NAMES.values() if not (folder / n).is_file() and not (folder / (n + ".gz")).is_file()]


def write_synthetic(folder: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """Seeded uniform uint8 images (N, 28, 28) and labels 0-9 as the four IDX files of Fashion-MNIST."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        for kind, dims, high in (("images", (n, 28, 28), 256), ("labels", (n,), 10)):
            data = torch.randint(0, high, dims, generator=g, dtype=torch.uint8)
            magic = 0x0800 | len(dims)
            header = struct.pack(">I" + "I" * len(dims), magic, *dims)
            (folder / IDX_NAMES[(split, kind)]).write_bytes(header + data.numpy().tobytes())


def test_images(folder: str, n: int) -> torch.Tensor:
    """The first ``n`` official test images as float32 (N, 1, 28, 28) in [0, 1]: what both sides evaluate."""
    return fashion_mnist(folder)["x_test"][:n]


def _device(name: str) -> torch.device:
    dev = torch.device(name)
    return torch.device("cuda", torch.cuda.current_device()) if dev.type == "cuda" and dev.index is None else dev


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_mib(dev: torch.device) -> dict:
    """{"peak_device_mib": the peak of memory torch allocated on the GPU} (nothing on other devices)."""
    return {"peak_device_mib": torch.cuda.max_memory_allocated(dev) / 2**20} if dev.type == "cuda" else {}


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return "Apple MPS"
    return harness.cpu_model()


def epoch_figures(secs: list[float], n: int) -> dict:
    """Seconds per epoch of a run: the median after the first (warm-up) epoch, when there is more than one."""
    timed = secs[1:] or secs
    s = median(timed)
    return {"seconds_per_epoch": s, "images_per_second": n / s, "epoch_seconds": secs}


# --------------------------------------------------------------------------------------------------
# aekit's side


def side_aekit(args) -> None:
    import aekit
    from aekit.config import resolve_device

    dev = _device(resolve_device(args.device))
    parts = set(args.parts.split(","))
    ds = aekit.datasets.load("fashion-mnist", data_dir=args.data, val_fraction=0.0, limit=args.limit)
    n = len(ds.x_train)
    x_test = test_images(args.data, args.limit or 10000).to(dev)  # the test split (first --limit images)
    out = {"device": str(dev), "device_name": device_name(dev), "torch": torch.__version__,
           "cuda": torch.version.cuda, "aekit": aekit.__version__, "n_train": n,
           "float32_matmul_precision": torch.get_float32_matmul_precision()}

    def train(prefix: str, model_opts: dict, epochs: int, amp: str = "none"):
        model = aekit.build("vae", dataset=ds, seed=args.seed, **model_opts)
        cfg = aekit.TrainConfig(epochs=epochs, batch_size=BATCH, lr=1e-3, seed=args.seed, device=args.device,
                                amp=amp)
        _reset_peak(dev)
        res = aekit.fit(model, ds, cfg, quiet=True)
        out.update({f"{prefix}_{k}": v for k, v in {**epoch_figures([h["seconds"] for h in res.history], n),
                                                     **_peak_mib(dev)}.items()})
        out[f"{prefix}_recorded_device"] = res.config.device
        g = torch.Generator(device=dev).manual_seed(args.seed + 100)
        with torch.no_grad():
            elbo = torch.cat([model.elbo(xb, generator=g)["elbo"] for xb in x_test.split(1000)])
        out[f"{prefix}_test_elbo"] = elbo.mean().item()
        return model

    if parts & {"vae", "nll"}:
        model = train("vae", NET, args.epochs)
        if args.save_weights:
            torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, args.save_weights)
        if "vae" in parts:
            train("bf16", NET, args.epochs, amp="bf16")
        if "nll" in parts:
            x = x_test[: args.nll_n]
            for key, chunk in (("nll", None), ("nll_chunk", GPU_CHUNK)):
                g = torch.Generator(device=dev).manual_seed(args.seed)
                with torch.no_grad():
                    model.log_likelihood(x[:2], k=args.k, chunk_size=chunk, generator=g)  # warm-up
                    _sync(dev)
                    _reset_peak(dev)
                    with Timer() as t:
                        ll = model.log_likelihood(x, k=args.k, chunk_size=chunk, generator=g)
                        _sync(dev)
                out.update({f"{key}_images_per_second": x.shape[0] / t.seconds, f"{key}_seconds": t.seconds,
                            f"{key}_mean_log_likelihood": ll.mean().item(),
                            f"{key}_mean_log_likelihood_first": ll[: args.nll_n_peer].mean().item(),
                            **{f"{key}_{k}": v for k, v in _peak_mib(dev).items()}})
            out.update({"nll_n": int(x.shape[0]), "nll_k": args.k})
    if "conv" in parts:
        train("conv", CONV, args.conv_epochs)
    emit(out)


# --------------------------------------------------------------------------------------------------
# pythae's side (runs in whichever interpreter has pythae)


def side_pythae(args) -> None:
    from pythae.data.preprocessors import DataProcessor
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae_side import build_vae, load_aekit_weights, test_elbo

    dev = _device(args.device)
    if dev.type not in ("cpu", "cuda"):
        raise SystemExit(f"pythae's trainer runs on cpu or cuda only, not {dev}")
    data = fashion_mnist(args.data)
    x_train = data["x_train"][: args.limit] if args.limit else data["x_train"]
    x_test = data["x_test"][: args.limit or 10000].to(dev)  # the test split (first --limit images), as aekit's
    out = {"device": str(dev), "torch": torch.__version__, "n_train": int(x_train.shape[0])}
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # pythae's trainer moves everything to "cuda", the current device
    if "vae" in args.parts.split(","):
        model = build_vae()
        proc = DataProcessor()
        train_dataset = proc.to_dataset(proc.process_data(x_train))
        with tempfile.TemporaryDirectory() as tmp, stdout_to_stderr():
            cfg = BaseTrainerConfig(output_dir=tmp, per_device_train_batch_size=BATCH,
                                    per_device_eval_batch_size=1000, num_epochs=args.epochs, learning_rate=1e-3,
                                    seed=args.seed, no_cuda=dev.type != "cuda")
            trainer = BaseTrainer(model=model, train_dataset=train_dataset, eval_dataset=None, training_config=cfg)
            trainer.prepare_training()
            _reset_peak(dev)
            secs = []
            for epoch in range(1, args.epochs + 1):
                with Timer() as t:
                    trainer.train_step(epoch)  # ends with loss.item(): the device has finished
                secs.append(t.seconds)
        out.update({f"vae_{k}": v for k, v in {**epoch_figures(secs, int(x_train.shape[0])), **_peak_mib(dev)}.items()})
        out["vae_test_elbo"] = test_elbo(trainer.model, x_test)
    if "nll" in args.parts.split(",") and args.weights:
        model = build_vae()
        load_aekit_weights(model, args.weights)
        model.to(dev).eval()
        x = x_test[: args.nll_n_peer]
        with stdout_to_stderr(), torch.no_grad():
            model.get_nll(x[:1], n_samples=args.k, batch_size=100)  # warm-up
            with Timer() as t:
                ll = model.get_nll(x, n_samples=args.k, batch_size=100)  # .item() per image: synced
        out.update({"nll_images_per_second": x.shape[0] / t.seconds, "nll_seconds": t.seconds,
                    "nll_mean_log_likelihood": float(ll), "nll_n": int(x.shape[0]), "nll_k": args.k})
    emit(out)


# --------------------------------------------------------------------------------------------------
# DDP: `aekit train` in one process and under torchrun


def aekit_command() -> list[str]:
    """How to start aekit's command line with this interpreter: ``-m aekit`` where aekit has a __main__,
    else its console script (both work under torchrun)."""
    if importlib.util.find_spec("aekit.__main__") is not None:
        return ["-m", "aekit"]
    script = Path(sys.executable).with_name("aekit")
    return [str(script)] if script.exists() else ["-m", "aekit.cli"]


def side_ddp(args) -> None:
    import aekit

    dev = args.device
    out = {"device": dev, "nproc": args.nproc}
    with tempfile.TemporaryDirectory(prefix="aekit-gpu-ddp-") as tmp:
        for key, n in (("one", 1), ("ddp", args.nproc)):
            run_dir = Path(tmp) / key
            argv = [*aekit_command(), "train", "vae", "--dataset", "fashion-mnist", "--data-dir", args.data,
                    "--val-fraction", "0", "--hidden", "512", "--latent-dim", "16", "--batch-size", str(BATCH * n),
                    "--epochs", str(args.epochs), "--seed", str(args.seed), "--device", dev, "--quiet",
                    "--out", str(run_dir)]
            if args.limit:
                argv += ["--limit", str(args.limit)]
            if dev == "cpu":
                argv += ["--threads", "1"]
            launcher = [] if n == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
            cmd = [sys.executable, *launcher, *argv]
            print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
            with Timer() as t:
                p = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, timeout=args.timeout)
            if p.returncode != 0:
                raise SystemExit(f"{' '.join(cmd[:6])} ... exited with {p.returncode}")
            run = aekit.Run.open(run_dir)
            hist = run.history
            if not hist:
                raise SystemExit(f"{run_dir}: the run recorded no epoch")
            n_train = len(run.dataset().x_train)
            out.update({f"{key}_{k}": v for k, v in epoch_figures([h["seconds"] for h in hist], n_train).items()})
            out.update({f"{key}_wall_seconds": t.seconds, f"{key}_final_train_loss": hist[-1]["train"]["loss"],
                        f"{key}_recorded_device": run.train.device, f"{key}_global_batch": BATCH * n})
    out["speedup"] = out["one_seconds_per_epoch"] / out["ddp_seconds_per_epoch"]
    emit(out)


# --------------------------------------------------------------------------------------------------
# The harness


def find_pythae(device: str, explicit: str | None) -> tuple[Path | None, str]:
    """An interpreter that imports pythae and can use ``device`` (CUDA for a GPU run), or (None, why not)."""
    candidates = [Path(explicit)] if explicit else [Path(sys.executable)]
    if not explicit and device == "cpu":
        candidates.append(harness.VENVS / "pythae" / "bin" / "python")  # benchmarks/run.py's, CPU torch
    code = "import json, pythae, torch; print(json.dumps([torch.__version__, torch.cuda.is_available()]))"
    why = []
    for py in candidates:
        if not py.exists():
            why.append(f"{py}: no such interpreter")
            continue
        try:
            p = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            why.append(f"{py}: {e}")
            continue
        if p.returncode != 0:
            last = [ln for ln in p.stderr.splitlines() if ln.strip()][-1:] or [f"exit {p.returncode}"]
            why.append(f"{py}: {last[0][:120]}")
            continue
        torch_version, cuda = json.loads(p.stdout.strip().splitlines()[-1])
        if device != "cpu" and not cuda:
            why.append(f"{py}: pythae imports, but its torch {torch_version} sees no CUDA device")
            continue
        return py, "ok"
    return None, ("pythae cannot run here (" + "; ".join(why) + "). Install it into this environment "
                  "(`pip install pythae==0.1.2`, which needs the internet) or pass --pythae-python PY")


def build_task(a: argparse.Namespace, sz: Sizes, data: str, weights: str, parts: list[str]) -> harness.Task:
    common = ["--device", a.device, "--data", data, "--seed", str(a.seed), "--parts", ",".join(parts),
              "--nll-n", str(sz.nll_n), "--nll-n-peer", str(sz.nll_n_peer), "--k", str(sz.k)]
    if sz.limit:
        common += ["--limit", str(sz.limit)]
    sides = [harness.Side("aekit", "aekit", ["gpu.py", "side", "aekit", *common, "--epochs", str(sz.epochs),
                                             "--conv-epochs", str(sz.conv_epochs), "--save-weights", weights],
                          sz.timeout),
             harness.Side("pythae", "pythae", ["gpu.py", "side", "pythae", *common, "--epochs", str(sz.pythae_epochs),
                                               "--weights", weights], sz.timeout)]
    R = harness.Row
    at_least = (lambda r: r >= TARGET)  # noqa: E731
    n_peer = sz.nll_n_peer
    rows = []
    if "vae" in parts:
        rows += [
            R("VAE epoch 784-512-16, batch 128, fp32: s/epoch (ratio: aekit/pythae throughput)", "aekit",
              "vae_seconds_per_epoch", "pythae", "vae_seconds_per_epoch", "b/a", f">= {TARGET:g}x", at_least),
            R("aekit fp32 VAE epoch, images/s", "aekit", "vae_images_per_second", ratio="", fmt="{:.0f}"),
            R("info: aekit amp=bf16 (bfloat16 autocast), s/epoch (ratio: pythae fp32 / aekit bf16)", "aekit",
              "bf16_seconds_per_epoch", "pythae", "vae_seconds_per_epoch", "b/a"),
            R("test ELBO after the same epochs, nats (diff aekit fp32 - pythae)", "aekit", "vae_test_elbo", "pythae",
              "vae_test_elbo", "a-b", fmt="{:.2f}"),
            R("info: test ELBO with amp=bf16, nats (diff aekit bf16 - aekit fp32)", "aekit", "bf16_test_elbo",
              "aekit", "vae_test_elbo", "a-b", fmt="{:.2f}"),
            R("peak GPU memory of training, MiB (ratio aekit/pythae)", "aekit", "vae_peak_device_mib", "pythae",
              "vae_peak_device_mib", "a/b", fmt="{:.0f}"),
        ]
    if "nll" in parts:
        rows += [
            R(f"IS log-likelihood K={sz.k}: images/s (ratio aekit/pythae get_nll)", "aekit", "nll_images_per_second",
              "pythae", "nll_images_per_second", "a/b", f">= {TARGET:g}x", at_least, fmt="{:.1f}"),
            R(f"info: aekit log_likelihood(chunk_size={GPU_CHUNK}), images/s (ratio to the default chunk)", "aekit",
              "nll_chunk_images_per_second", "aekit", "nll_images_per_second", "a/b", fmt="{:.1f}"),
            R(f"mean log-likelihood of the same model, first {n_peer} test images, nats (diff aekit - pythae)",
              "aekit", "nll_mean_log_likelihood_first", "pythae", "nll_mean_log_likelihood", "a-b", fmt="{:.2f}"),
        ]
    if "conv" in parts:
        rows += [R("conv VAE epoch (channels 32,64), s/epoch", "aekit", "conv_seconds_per_epoch", ratio=""),
                 R("conv VAE epoch, images/s", "aekit", "conv_images_per_second", ratio="", fmt="{:.0f}")]
    return harness.Task("gpu", "aekit beside pythae on one device", __doc__, sides, rows, sz.repeats)


def ddp_task(a, sz: Sizes, data: str, nproc: int) -> harness.Task:
    argv = ["gpu.py", "side", "ddp", "--device", "auto" if a.device != "cpu" else "cpu", "--data", data,
            "--seed", str(a.seed), "--nproc", str(nproc), "--epochs", str(sz.ddp_epochs),
            "--timeout", str(sz.timeout)]
    if sz.limit:
        argv += ["--limit", str(sz.limit)]
    R = harness.Row
    rows = [R(f"DDP: VAE epoch, {nproc} processes (batch 128 per rank) vs 1, s/epoch (speed-up; ideal {nproc}x)",
              "ddp", "ddp_seconds_per_epoch", "ddp", "one_seconds_per_epoch", "b/a"),
            R(f"DDP: final training loss, {nproc} ranks (global batch {BATCH * nproc}) - 1 process (batch {BATCH})",
              "ddp", "ddp_final_train_loss", "ddp", "one_final_train_loss", "a-b", fmt="{:.2f}")]
    return harness.Task("ddp", "aekit train under torchrun", __doc__,
                        [harness.Side("ddp", "aekit", argv, 2 * sz.timeout + 60)], rows, 1)


def table(results: dict, skipped: dict[str, str], judge: bool) -> list[str]:
    head = ["figure", "aekit", "pythae / reference", "ratio", "target", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results.values():
        for d in res.get("rows", []):
            if d["b_values"]:
                b = harness.spread(d["b_values"], d["fmt"])
            else:
                b = next((f"{d['b']}: {what}" for what, where in (("skipped", res["skipped"]),
                                                                  ("failed", res["failed"])) if d["b"] in where), "-")
            status = d["status"] if judge else ("not judged (not a GPU run)" if d["target"] else "")
            a = harness.spread(d["a_values"], d["fmt"]) if d["a_values"] else (
                "failed" if d["a"] in res["failed"] else "-")
            lines.append(f"| {d['label']} | {a} | {b} | {harness.ratio_text(d)} | {d['target']} | {status} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (figures that are not GPU "
                                                    "figures; with --quick: a check of the script)")
    p.add_argument("--quick", action="store_true", help="every part on a few hundred images, 2 epochs, 1 round")
    p.add_argument("--parts", default="vae,nll,conv,ddp", help="comma-separated: vae, nll, conv, ddp")
    p.add_argument("--data", default=FASHION_MNIST_DIR, help="folder of Fashion-MNIST's IDX files (default "
                   f"{FASHION_MNIST_DIR}); missing: seeded synthetic uint8 images of the same shape, said so")
    p.add_argument("--repeats", type=int, help="rounds (default 3; --quick: 1)")
    p.add_argument("--budget-s", type=float, default=300.0, help="start no round that would end after this many "
                   "seconds (the first round always runs; default 300)")
    p.add_argument("--pythae-python", help="an interpreter that imports pythae (and, for cuda, a CUDA torch)")
    p.add_argument("--no-pythae", action="store_true", help="leave pythae out")
    p.add_argument("--nproc", type=int, help="DDP processes (default: every visible GPU; cpu: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results to this new file (an existing file is left alone)")
    a = p.parse_args(argv)
    parts = [s.strip() for s in a.parts.split(",") if s.strip()]
    unknown = sorted(set(parts) - {"vae", "nll", "conv", "ddp"})
    if unknown or not parts:
        p.error(f"unknown part(s) {', '.join(unknown) or '(none given)'}; choose from vae, nll, conv, ddp")
    try:
        dev = torch.device(a.device)
    except RuntimeError:
        p.error(f"--device {a.device}: not a torch device; use cuda, cuda:N or cpu")
    if dev.type not in ("cpu", "cuda"):
        p.error(f"--device {a.device}: this benchmark runs on cuda or cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {a.device}: this torch sees no CUDA device; use --device cpu --quick to check the script")
    if a.json and Path(a.json).exists():
        p.error(f"--json {a.json} exists; choose a new file (nothing was overwritten)")
    sz = QUICK if a.quick else FULL
    sz = dataclasses.replace(sz, repeats=a.repeats or sz.repeats)
    on_gpu = dev.type == "cuda"
    t_start = time.perf_counter()

    tmp = Path(tempfile.mkdtemp(prefix="aekit-gpu-bench-"))
    try:
        notes = []
        data = Path(a.data)
        missing = missing_idx(data)
        if missing:
            data = tmp / "synthetic-fashion-mnist"
            write_synthetic(data, *sz.synthetic, seed=a.seed)
            notes.append(f"data: SYNTHETIC uint8 images of Fashion-MNIST's shape ({sz.synthetic[0]} + "
                         f"{sz.synthetic[1]} images 28x28, seeded uniform noise) because {a.data} lacks "
                         f"{', '.join(missing)}: timings hold, ELBO and likelihood values are not Fashion-MNIST's")
        else:
            notes.append(f"data: Fashion-MNIST from {data}")
        if sz.limit:
            notes.append(f"--quick: {sz.limit} training images, {sz.epochs} epochs, K={sz.k}, {sz.repeats} round(s): "
                         "a check of the script, not a measurement")

        pythons: dict[str, Path | None] = {"aekit": Path(sys.executable)}
        skipped: dict[str, str] = {}
        if a.no_pythae:
            pythons["pythae"], skipped["pythae"] = None, "left out (--no-pythae)"
        elif {"vae", "nll"} & set(parts):
            pythons["pythae"], why = find_pythae(a.device, a.pythae_python)
            if pythons["pythae"] is None:
                skipped["pythae"] = why
        if pythons.get("pythae"):
            versions = harness.peer_versions(pythons["pythae"])
            notes.append(f"pythae {versions.get('pythae', '?')} (torch {versions.get('torch', '?')}) in "
                         f"{pythons['pythae']}")
        elif "pythae" in skipped:
            notes.append(f"pythae: skipped: {skipped['pythae']}")
        print("\n".join(notes), flush=True)

        results = {}
        one = [x for x in parts if x != "ddp"]
        if one:
            task = build_task(a, sz, str(data), str(tmp / "vae_weights.pt"), one)
            merged = None
            for r in range(sz.repeats):
                print(f"== round {r + 1} of {sz.repeats}: {', '.join(one)}", flush=True)
                t0 = time.perf_counter()
                res = harness.run_task(task, pythons, skipped, 1)
                if merged is None:
                    merged = res
                else:
                    merged["rounds"] += res["rounds"]
                    merged["failed"].update(res["failed"])
                took = time.perf_counter() - t0
                left = a.budget_s - (time.perf_counter() - t_start)
                if r + 1 < sz.repeats and took > left:
                    notes.append(f"stopped after {r + 1} round(s) of {sz.repeats} to stay within --budget-s "
                                 f"{a.budget_s:g} (a round took {took:.0f} s)")
                    break
            merged["rows"] = harness.summarize(task, merged)
            results["gpu"] = merged
        if "ddp" in parts:
            nproc = a.nproc or (torch.cuda.device_count() if on_gpu else 2)
            if nproc < 2:
                notes.append(f"ddp: skipped: {nproc} GPU visible; DDP needs 2 or more (CUDA_VISIBLE_DEVICES, "
                             "--nproc)")
            elif importlib.util.find_spec("aekit.distributed") is None:
                notes.append("ddp: skipped: this aekit has no distributed training (aekit.distributed)")
            else:
                task = ddp_task(a, sz, str(data), nproc)
                res = harness.run_task(task, pythons, skipped, 1)
                res["rows"] = harness.summarize(task, res)
                results["ddp"] = res

        first = next((r[s] for res in results.values() for r in res["rounds"] for s in r), {})
        recorded = {k: v for res in results.values() for r in res["rounds"][:1] for side in r.values()
                    for k, v in side.items() if k.endswith("_recorded_device")}
        if recorded:
            notes.append("device recorded in aekit's run config (TrainConfig.device after resolved_for; DDP: rank "
                         "0's): " + ", ".join(f"{k.removesuffix('_recorded_device')} {v}" for k, v in recorded.items()))
        name = first.get("device_name") or (torch.cuda.get_device_name(dev) if on_gpu else harness.cpu_model())
        header = (f"## aekit on {name} ({first.get('device', a.device)})\n\n"
                  f"{time.strftime('%Y-%m-%d %H:%M')}, python {platform.python_version()}, torch {torch.__version__}"
                  f"{f', CUDA {torch.version.cuda}' if on_gpu else ''}, aekit {first.get('aekit', '?')}, "
                  f"{time.perf_counter() - t_start:.0f} s in all; medians over rounds [min..max], ratios per round. "
                  f"Command: python benchmarks/gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}")
        warning = ("NOT GPU FIGURES: this run used the CPU (--device cpu); the targets are about a CUDA GPU and are "
                   "not judged." if not on_gpu else "")
        lines = ["", header, ""] + ([warning, ""] if warning else []) + [f"- {n}" for n in notes] + [""]
        lines += table(results, skipped, judge=on_gpu and not a.quick)
        if warning:
            lines += ["", warning]
        print("\n".join(lines), flush=True)
        if a.json:
            report = {"header": header, "notes": notes, "gpu": on_gpu, "quick": a.quick, "device_name": name,
                      "results": results}
            with open(a.json, "x") as f:
                json.dump(report, f, indent=1, default=str)
        failed = {k: v for res in results.values() for k, v in res["failed"].items()}
        for side, why in failed.items():
            print(f"FAILED {side}: {why}", file=sys.stderr)
        return 1 if failed else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def side_main(argv) -> None:
    p = argparse.ArgumentParser(prog="gpu.py side")
    p.add_argument("which", choices=("aekit", "pythae", "ddp"))
    p.add_argument("--device", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--parts", default="vae,nll,conv")
    p.add_argument("--limit", type=int)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--conv-epochs", type=int, default=2)
    p.add_argument("--nll-n", type=int, default=2000)
    p.add_argument("--nll-n-peer", type=int, default=200)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--save-weights")
    p.add_argument("--weights")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    setup(args.seed)
    {"aekit": side_aekit, "pythae": side_pythae, "ddp": side_ddp}[args.which](args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "side":
        side_main(sys.argv[2:])
    else:
        sys.exit(main())
