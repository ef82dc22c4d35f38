"""How closely the adversarial autoencoder and the VAE match their prior, at each one's reconstruction error.

    python benchmarks/aae_prior.py [--dataset digits] [--seeds 0,1,2] [--epochs 50] [--jobs 2]
                                   [--points "aae vae vae:beta=0.3 ..."] [--keep-others] [--report-only]

Issue 12 asked that the default AAE match its prior "at least as well as the VAE's aggregate posterior does,
measured by the same MMD". That MMD (``aekit.metrics.prior_mmd_metrics``: MMD^2 between the test codes, one
draw of q(z|x) per example for models with a posterior, and as many prior samples) is not a property of the
prior match alone: a code that carries more about x is harder to make look like noise. So this benchmark
puts every model on the plane of (test reconstruction mse, prior MMD^2), the VAE at several KL weights beta
(beta-VAE; beta = 1 is the ELBO), and the AAE at its default and a few other settings, all at the ``compare``
budget (code size 16, 50 epochs, the family defaults otherwise, one torch thread per run). A model matches its
prior better *at equal reconstruction* when its MMD^2 lies below the VAE curve at its mse.

It also prints the estimator's noise floor: the MMD^2 of two independent prior samples of the test set's
size (mean and standard deviation over 50 draws).

Every (point, seed) is one process (``--jobs`` at a time), ``aekit.build`` + ``aekit.fit(TrainConfig(epochs,
seed, threads=1))`` + the test split's ``prior_mmd_metrics`` and ``reconstruction_metrics``. Results: stdout,
and benchmarks/RESULTS_aae_prior_<dataset>.md and .json. With ``--keep-others`` the runs of other (point, seed) pairs
already in that .json (same dataset, epochs and code size) are kept, so a point or a seed can be added without
rerunning the rest; the .md lists every command that contributed. ``--report-only`` rewrites the .md from the .json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_POINTS = ("aae", "aae:adv_weight=20", "aae:posterior=gaussian,disc_penalty=0.1",
                  "vae", "vae:beta=0.3", "vae:beta=0.1", "vae:beta=0.03", "vae:beta=0.01")


def parse_point(text: str) -> tuple[str, dict]:
    """'vae:beta=0.3,free_bits=0' -> ('vae', {'beta': '0.3', 'free_bits': '0'}). The values stay text: the
    model's Config (``from_dict``, as for command-line options) gives them their types when the model is built."""
    name, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"aae_prior: point {text!r}: option {item!r} is not key=value")
        options[key] = value
    return name, options


def check_point(text: str) -> None:
    """An unknown model or option is refused before any training (registry.get, Config.from_dict)."""
    from aekit import registry
    from aekit.errors import ConfigError

    name, options = parse_point(text)
    try:
        registry.get(name).Config.from_dict(options, what=f"point {text!r}")
    except ConfigError as e:
        raise SystemExit(f"aae_prior: {e}") from None


def run_one(job: tuple[str, str, int, int, int]) -> dict:
    """Train one model and measure it; runs in a worker process with one torch thread."""
    dataset, point, seed, epochs, latent_dim = job
    import torch

    import aekit
    from aekit.metrics import prior_mmd_metrics, reconstruction_metrics

    torch.set_num_threads(1)
    name, options = parse_point(point)
    ds = aekit.datasets.load(dataset)
    model = aekit.build(name, dataset=ds, latent_dim=latent_dim, seed=seed, **options)
    t0 = time.perf_counter()
    aekit.fit(model, ds, aekit.TrainConfig(epochs=epochs, seed=seed, threads=1), out_dir=None)
    seconds = time.perf_counter() - t0
    model.eval()
    return {"point": point, "seed": seed, "seconds": seconds,
            "prior_mmd2": prior_mmd_metrics(model, ds)["prior_mmd2"],
            "mse": reconstruction_metrics(model, ds)["mse"]}


def noise_floor(dataset: str, latent_dim: int, draws: int = 50) -> tuple[float, float, int]:
    """MMD^2 of two independent N(0, I) samples of the test set's size: (mean, std, n)."""
    import torch

    import aekit
    from aekit.metrics import mmd2

    n = min(aekit.datasets.load(dataset).split("test")[0].shape[0], 2000)
    vals = []
    for d in range(draws):
        g = torch.Generator().manual_seed(d)
        vals.append(mmd2(torch.randn(n, latent_dim, generator=g), torch.randn(n, latent_dim, generator=g)))
    return statistics.mean(vals), statistics.stdev(vals), n


def summarize(rows: list[dict], points: list[str]) -> list[dict]:
    out = []
    for p in points:
        rs = [r for r in rows if r["point"] == p]
        mmd = [r["prior_mmd2"] for r in rs]
        mse = [r["mse"] for r in rs]
        out.append({"point": p, "seeds": [r["seed"] for r in rs], "prior_mmd2": mmd, "mse": mse,
                    "mmd_mean": statistics.mean(mmd), "mse_mean": statistics.mean(mse),
                    "seconds_median": statistics.median(r["seconds"] for r in rs)})
    return out


def vae_curve_at(summary: list[dict], mse: float) -> str:
    """The VAE curve's MMD^2 at reconstruction error ``mse``, as text: linear interpolation in log(mse) and
    log(MMD^2) between the two VAE points around it; below the curve's smallest mse, the VAE cannot reconstruct
    that well at any beta measured, and the text says so with its best point; above its largest, ''."""
    import math

    pts = sorted((s["mse_mean"], s["mmd_mean"]) for s in summary if s["point"].split(":")[0] == "vae")
    if not pts:
        return ""
    if mse < pts[0][0]:
        return f"none (the VAE's smallest mse, {pts[0][0]:.4f}, has {pts[0][1]:.5f})"
    for (m0, d0), (m1, d1) in zip(pts, pts[1:]):
        if m0 <= mse <= m1 and d0 > 0 and d1 > 0:
            t = (math.log(mse) - math.log(m0)) / (math.log(m1) - math.log(m0))
            return f"{math.exp(math.log(d0) + t * (math.log(d1) - math.log(d0))):.5f}"
    return ""


def command(args) -> str:
    return (f"{dt.date.today().isoformat()}: `python benchmarks/aae_prior.py --dataset {args.dataset} "
            f"--seeds {args.seeds} --epochs {args.epochs} --latent-dim {args.latent_dim} --points \"{args.points}\"`")


def report(summary: list[dict], floor: tuple[float, float, int], args, commands: list[str]) -> str:
    lines = [f"# Prior match against reconstruction: {args.dataset}", "",
             f"Code size {args.latent_dim}, {args.epochs} epochs, one torch thread per run, test split. MMD^2: "
             "`aekit.metrics.prior_mmd_metrics`; mse: `reconstruction_metrics`. Commands:", "",
             *[f"- {c}" for c in commands], "",
             "| model | mean test mse | mean prior MMD^2 | MMD^2 (seed: value) | VAE curve at this mse "
             "| s per run (median) |",
             "|---|---|---|---|---|---|"]
    for s in summary:
        at = vae_curve_at(summary, s["mse_mean"]) if not s["point"].startswith("vae") else ""
        per = " / ".join(f"{seed}: {v:.5f}" for seed, v in zip(s["seeds"], s["prior_mmd2"]))
        lines.append(f"| `{s['point']}` | {s['mse_mean']:.4f} | {s['mmd_mean']:.5f} | {per} | "
                     f"{at} | {s['seconds_median']:.1f} |")
    mean, std, n = floor
    lines += ["", f"Estimator noise floor: MMD^2 of two prior samples of {n} codes: mean {mean:.5f}, "
                  f"standard deviation {std:.5f} (50 draws).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--latent-dim", type=int, default=16)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--points", default=" ".join(DEFAULT_POINTS),
                    help="space-separated models, each NAME or NAME:key=value,key=value")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS_aae_prior_*")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite RESULTS_aae_prior_<dataset>.md from its .json without training anything")
    ap.add_argument("--keep-others", action="store_true",
                    help="keep the runs of other (point, seed) pairs from the existing "
                         "RESULTS_aae_prior_<dataset>.json")
    args = ap.parse_args(argv)
    points = args.points.split()
    for p in points:
        check_point(p)
    seeds = [int(s) for s in args.seeds.split(",")]
    stem = HERE / f"RESULTS_aae_prior_{args.dataset.replace('-', '_')}"
    kept, commands = [], []
    if args.report_only:
        if not stem.with_suffix(".json").exists():
            raise SystemExit(f"aae_prior: --report-only needs {stem.name}.json; run the benchmark first")
        old = json.loads(stem.with_suffix(".json").read_text())
        args = argparse.Namespace(**old["args"])
        rows = old["runs"]
        points = sorted(dict.fromkeys(r["point"] for r in rows), key=lambda p: p.split(":")[0])
        text = report(summarize(rows, points), noise_floor(args.dataset, args.latent_dim), args, old["commands"])
        print(text)
        stem.with_suffix(".md").write_text(text)
        return 0
    if args.keep_others and stem.with_suffix(".json").exists():
        old = json.loads(stem.with_suffix(".json").read_text())
        same = all(old["args"][k] == getattr(args, k) for k in ("dataset", "epochs", "latent_dim"))
        if not same:
            raise SystemExit(f"aae_prior: {stem.name}.json was measured with other settings ({old['args']}); "
                             "drop --keep-others or use the same --dataset, --epochs and --latent-dim")
        kept = [r for r in old["runs"] if not (r["point"] in points and r["seed"] in seeds)]
        commands = old.get("commands", [])
    jobs = [(args.dataset, p, s, args.epochs, args.latent_dim) for p in points for s in seeds]
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for r in pool.map(run_one, jobs):
            print(f"{r['point']:45s} seed {r['seed']}: prior MMD^2 {r['prior_mmd2']:.5f}  mse {r['mse']:.4f}  "
                  f"{r['seconds']:.1f} s", flush=True)
            rows.append(r)
    rows = kept + rows
    points = list(dict.fromkeys(r["point"] for r in rows))
    points.sort(key=lambda p: p.split(":")[0])  # the AAE points first, then the VAE curve; stable otherwise
    commands.append(command(args))
    summary = summarize(rows, points)
    text = report(summary, noise_floor(args.dataset, args.latent_dim), args, commands)
    print(text)
    if not args.no_write:
        stem.with_suffix(".md").write_text(text)
        stem.with_suffix(".json").write_text(json.dumps({"args": vars(args), "commands": commands, "runs": rows,
                                                         "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
