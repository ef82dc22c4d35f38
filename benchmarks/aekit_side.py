"""aekit's side of the benchmarks: one subprocess per measurement, like the peers (see peers/_common.py).

    python benchmarks/aekit_side.py train {ae,dae,sae,cae,vae} --epochs 3 [--seed 0]
    python benchmarks/aekit_side.py floor [--net vae|ae]
    python benchmarks/aekit_side.py nll-prepare --out FILE [--epochs 1]
    python benchmarks/aekit_side.py nll --weights FILE --n 2000 --k 1000
    python benchmarks/aekit_side.py full-ll --weights FILE --n 10000 --k 5000
    python benchmarks/aekit_side.py anomaly [--epochs 20]

Every model is the MLP 784-512-16 of the benchmark protocol (hidden=[512], latent_dim=16, ReLU; the VAE's
encoder ends in 2x16 outputs for mean and log-variance), trained by aekit.fit (Adam lr 1e-3, batch 128)
on all 60k Fashion-MNIST training images loaded by aekit.datasets (val_fraction=0; the trainer's
validation set is a view of the first 2000 training images, as the peers select on training data).
The seconds of an epoch are the trainer's own (history[i]["seconds"]: the training pass only).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
import torch  # noqa: E402
from _common import Timer, emit, median, setup  # noqa: E402

NET = {"hidden": [512], "latent_dim": 16}
VARIANTS = {  # benchmark name -> (aekit family, its options)
    "ae": ("ae", {}),
    "dae": ("dae", {"noise": "gaussian", "noise_level": 0.3}),
    "sae": ("sae", {"sparsity": "l1", "sparsity_weight": 1e-3, "code_activation": "linear"}),
    "cae": ("cae", {"contraction": 0.1}),
    "cae-proj": ("cae", {"contraction": 0.1, "jacobian": "projection"}),  # the opt-in unbiased estimate
    "vae": ("vae", {}),
}
N_TRAIN = 60000
BATCH = 128


def fmnist_all_train():
    """aekit's Fashion-MNIST with all 60k training images in x_train; x_val a view of the first 2000."""
    import aekit

    ds = aekit.datasets.load("fashion-mnist", val_fraction=0.0)
    return dataclasses.replace(ds, x_val=ds.x_train[:2000], y_val=ds.y_train[:2000])


def cmd_train(args) -> None:
    import aekit

    ds = fmnist_all_train()
    family, options = VARIANTS[args.family]
    model = aekit.build(family, dataset=ds, **NET, **options)
    cfg = aekit.TrainConfig(epochs=args.epochs, batch_size=BATCH, lr=1e-3, seed=args.seed, amp=args.amp)
    res = aekit.fit(model, ds, cfg, quiet=True)
    secs = [h["seconds"] for h in res.history]
    out = {"seconds_per_epoch": median(secs), "epoch_seconds": secs, "n_train": int(ds.x_train.shape[0]),
           "train_loss": res.history[-1]["train"]["loss"]}
    if model.capabilities.probabilistic:
        model.eval()
        g = torch.Generator().manual_seed(args.seed + 100)
        with torch.no_grad():
            elbo = torch.cat([model.elbo(xb, generator=g)["elbo"] for xb in ds.x_test.split(1000)])
        out["test_elbo"] = elbo.mean().item()
    if family == "cae":  # what the penalty achieved, by the exact norm, on 2000 test images
        from aekit.regularizers import encoder_jacobian_sq_norm

        model.eval()
        with torch.no_grad():
            out["test_jacobian_sq_norm"] = encoder_jacobian_sq_norm(model.encoder, ds.x_test[:2000])[1].mean().item()
            out["test_recon"] = model(ds.x_test[:2000]).terms["recon"].item()
    emit(out)


# --------------------------------------------------------------------------------------------------
# The FLOP floor of one training epoch


def linear_layers(net: str) -> list[tuple[int, int]]:
    """(in, out) of every Linear layer of the benchmark MLP, encoder then decoder."""
    code = 2 * NET["latent_dim"] if net == "vae" else NET["latent_dim"]
    return [(784, 512), (512, code), (NET["latent_dim"], 512), (512, 784)]


def epoch_flops(net: str, n: int = N_TRAIN) -> dict[str, float]:
    """Matmul FLOPs of one epoch (a multiply-add counts 2); elementwise work, the optimizer and biases are
    left out, so this is a floor. Forward: 2*in*out per layer and example. Backward: the weight gradient
    (2*in*out) for every layer plus the input gradient (2*in*out) for every layer but the first (x needs
    no gradient): ``exact``. The protocol's round convention is backward = 2x forward: ``three_x``."""
    layers = linear_layers(net)
    fwd = sum(2 * i * o for i, o in layers)
    bwd = sum(2 * i * o for i, o in layers) + sum(2 * i * o for i, o in layers[1:])
    return {"forward_per_example": fwd, "exact": n * (fwd + bwd), "three_x": n * 3 * fwd}


def matmul_rate(net: str, reps: int = 5, steps: int = 60) -> float:
    """Best float32 FLOP/s of torch.mm over the very matmuls of one training step at batch 128, with the
    layouts autograd uses (x @ W^T forward, g @ W for the input gradient, g^T @ x for the weight gradient)."""
    layers = linear_layers(net)
    ops = []
    for li, (i, o) in enumerate(layers):
        x, w, g = torch.randn(BATCH, i), torch.randn(o, i), torch.randn(BATCH, o)
        ops.append((x, w.t()))
        if li > 0:
            ops.append((g, w))
        ops.append((g.t(), x))
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in ops)
    for a, b in ops:  # warm-up
        torch.mm(a, b)
    best = math.inf
    for _ in range(reps):
        with Timer() as t:
            for _ in range(steps):
                for a, b in ops:
                    torch.mm(a, b)
        best = min(best, t.seconds)
    return flops * steps / best


def cmd_floor(args) -> None:
    rate = matmul_rate(args.net)
    f = epoch_flops(args.net)
    emit({"seconds_per_epoch": f["three_x"] / rate, "seconds_per_epoch_exact": f["exact"] / rate,
          "gflops_per_second": rate / 1e9, "epoch_gflop_three_x": f["three_x"] / 1e9,
          "epoch_gflop_exact": f["exact"] / 1e9, "forward_flop_per_example": f["forward_per_example"]})


# --------------------------------------------------------------------------------------------------
# Importance-sampled log-likelihood


def _vae_for_weights(path: str):
    import aekit

    model = aekit.build("vae", input_shape=[1, 28, 28], likelihood="bernoulli", **NET)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _test_images():
    import aekit

    return aekit.datasets.load("fashion-mnist", val_fraction=0.0).x_test


def cmd_nll_prepare(args) -> None:
    """Train the benchmark VAE briefly and save its weights: the model both libraries then evaluate."""
    import aekit

    ds = fmnist_all_train()
    model = aekit.build("vae", dataset=ds, **NET)
    aekit.fit(model, ds, aekit.TrainConfig(epochs=args.epochs, batch_size=BATCH, lr=1e-3, seed=args.seed), quiet=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, args.out)
    emit({"weights": args.out})


def cmd_nll(args) -> None:
    model = _vae_for_weights(args.weights)
    x = _test_images()[: args.n]
    g = torch.Generator().manual_seed(args.seed)
    with Timer() as t:
        ll = model.log_likelihood(x, k=args.k, generator=g)
    out = {"images_per_second": x.shape[0] / t.seconds, "seconds": t.seconds, "n": int(x.shape[0]), "k": args.k,
           "mean_log_likelihood": ll.mean().item()}
    if args.compare_n:
        out["mean_log_likelihood_first"] = ll[: args.compare_n].mean().item()
        out["compare_n"] = min(args.compare_n, x.shape[0])
    emit(out)


def cmd_full_ll(args) -> None:
    """Test log-likelihood with K importance samples over n test images, in batches of 1000 images."""
    model = _vae_for_weights(args.weights)
    x = _test_images()[: args.n]
    g = torch.Generator().manual_seed(args.seed)
    with Timer() as t:
        ll = torch.cat([model.log_likelihood(xb, k=args.k, generator=g) for xb in x.split(1000)])
    emit({"seconds": t.seconds, "n": int(x.shape[0]), "k": args.k, "seconds_for_10k": t.seconds * 10000 / x.shape[0],
          "mean_log_likelihood": ll.mean().item(), "images_per_second": x.shape[0] / t.seconds})


# --------------------------------------------------------------------------------------------------
# One-class anomaly detection


# The plain AE of the benchmark net, scored by the squared reconstruction error. (Scores from a likelihood,
# -ELBO or the Bernoulli NLL, rank Fashion-MNIST anomalies much worse: AUROC ~0.6-0.7; see the report.)
ANOMALY = {"family": "ae", "hidden": [512], "latent_dim": 16, "epochs": 10, "batch_size": 128, "lr": 1e-3,
           "score": "recon_error"}


def cmd_anomaly(args) -> None:
    """Train on the 6000 training images of class 0, score the 10k test images, AUROC (anomaly = class != 0).

    The fitting time is the wall time of aekit.fit (everything: per-epoch validation included)."""
    import aekit
    from aekit import metrics

    opts = dict(ANOMALY)
    if args.epochs:
        opts["epochs"] = args.epochs
    full = aekit.datasets.load("fashion-mnist", val_fraction=0.0)
    keep = full.y_train == args.normal_class
    x0, y0 = full.x_train[keep], full.y_train[keep]
    ds = dataclasses.replace(full, x_train=x0, y_train=y0, x_val=x0[:600], y_val=y0[:600])
    del full
    model = aekit.build(opts["family"], dataset=ds, hidden=opts["hidden"], latent_dim=opts["latent_dim"])
    cfg = aekit.TrainConfig(epochs=opts["epochs"], batch_size=opts["batch_size"], lr=opts["lr"], seed=args.seed)
    with Timer() as t:
        aekit.fit(model, ds, cfg, quiet=True)
    is_anomaly = ds.y_test != args.normal_class
    with Timer() as ts:
        scores = metrics.anomaly_scores(model, ds.x_test, mc_samples=args.mc_samples, seed=args.seed)
    aurocs = {name: metrics.detection_metrics(s, is_anomaly)[0] for name, s in scores.items()}
    emit({"fit_seconds": t.seconds, "score_seconds": ts.seconds, "auroc": aurocs[opts["score"]],
          "aurocs": aurocs, "n_train": int(x0.shape[0]), "n_test": int(ds.x_test.shape[0]), "config": opts})


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("family", choices=sorted(VARIANTS))
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--amp", choices=("none", "bf16"), default="none", help="TrainConfig.amp (info rows only)")
    f = sub.add_parser("floor")
    f.add_argument("--net", choices=("vae", "ae"), default="vae")
    pr = sub.add_parser("nll-prepare")
    pr.add_argument("--out", required=True)
    pr.add_argument("--epochs", type=int, default=1)
    n = sub.add_parser("nll")
    n.add_argument("--weights", required=True)
    n.add_argument("--n", type=int, default=2000)
    n.add_argument("--k", type=int, default=1000)
    n.add_argument("--compare-n", type=int, default=0, help="also report the mean over the first N images")
    fl = sub.add_parser("full-ll")
    fl.add_argument("--weights", required=True)
    fl.add_argument("--n", type=int, default=10000)
    fl.add_argument("--k", type=int, default=5000)
    a = sub.add_parser("anomaly")
    a.add_argument("--epochs", type=int, default=0, help="override the epoch count of ANOMALY")
    a.add_argument("--normal-class", type=int, default=0)
    a.add_argument("--mc-samples", type=int, default=1)
    for sp in (t, f, pr, n, fl, a):
        sp.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    setup(args.seed)
    {"train": cmd_train, "floor": cmd_floor, "nll-prepare": cmd_nll_prepare, "nll": cmd_nll,
     "full-ll": cmd_full_ll, "anomaly": cmd_anomaly}[args.cmd](args)


if __name__ == "__main__":
    main()
