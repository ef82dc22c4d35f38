"""Measure aekit's hot-path choices against the code they replaced (or a proposed alternative), in-process.

    python benchmarks/hotpath.py [bernoulli|cae|binarize|trainer|gaussian|eigh|all] [--rounds 7]

Each comparison swaps one implementation by monkeypatching inside this process; the variants run in
alternation (A B A B ...), in chunks of a few hundred milliseconds, with 2 threads, and the table gives
medians and the [min..max] spread of the per-round ratio. The source comments that quote a speed-up point
here. The comparisons:

bernoulli  likelihoods.Bernoulli.log_prob with S logits per example (sum_d x_d l_d - softplus(l_d),
           broadcasting x against (S, B, D) logits) against the earlier BCE-with-logits on an S-fold copy
           of x; measured on VAE.log_likelihood with K=1000, also at the earlier decoder chunk of
           EVAL_BUDGET = 2**24 values (now 2**22: a call's activations stay in cache), and on a training
           step (where the same-shape BCE path is kept).
cae        regularizers.gram (W1 W1^T with a one-matmul backward) against plain autograd (two matmuls),
           on a CAE training step next to the plain AE step of the same net; also the opt-in
           random-projection penalty (CAEConfig.jacobian="projection") and a bfloat16 Gram matrix (an
           approximation, not offered as an option).
binarize   likelihoods.bernoulli_sample (u < p) against torch.bernoulli for dynamic binarization, alone
           and inside a training step of the Exemplar-VAE net (784-300-300-40, batch 100).
trainer    one epoch of aekit.fit against a bare loop (slice, forward, backward, fused Adam) over the same
           model and data: what the trainer adds per step; and aekit.fit with denormals flushed to zero; and a
           Detector member's whole fit on a small table (30 steps, 10 validation losses) against a bare loop.
gaussian   likelihoods.Gaussian.log_prob with a fixed sigma (one autograd.Function, bit-identical) against
           autograd's graph of the same expression, on training steps of the Detector's table MLP (D-64-64-16,
           batch 128) for D = 19 and 512 (an embedding), 1 thread; and the trainer's batch rows by
           index_select against advanced indexing.
eigh       scoring's residual model: the q = 8 leading eigenpairs of a D x D covariance by scipy's subset
           solver (driver "evr") against numpy's full eigh, 1 thread, D from 19 to 768 (EIGH_SUBSET_FROM);
           and the code regression's least squares (n rows of K = 16 centred codes and an intercept against
           D scaled residuals) by scoring.least_squares (a QR factorization) against numpy's lstsq (an SVD),
           n = 2 x D and at least 350 (a fold of the protocol's tables).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
from _common import fashion_mnist, median  # noqa: E402

torch.set_num_threads(2)


def alternate(variants: dict, rounds: int, chunk) -> dict[str, list[float]]:
    """Run chunk(variant_fn) for each variant in turn, ``rounds`` times; seconds per chunk."""
    times = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        chunk(fn)
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            chunk(fn)
            times[name].append(time.perf_counter() - t0)
    return times


def show(title: str, times: dict[str, list[float]], base: str, unit_per_chunk: float, unit: str) -> None:
    print(f"\n{title}")
    for k, v in times.items():
        r = [b / a for a, b in zip(v, times[base])]
        print(f"  {k:<28} {median(v) / unit_per_chunk * 1e3:8.3f} ms/{unit} "
              f"[{min(v) / unit_per_chunk * 1e3:.3f}..{max(v) / unit_per_chunk * 1e3:.3f}]"
              + ("" if k == base else f"   speed-up vs {base}: {median(r):.3f}x [{min(r):.3f}..{max(r):.3f}]"))


# --------------------------------------------------------------------------------------------------
# Bernoulli log-likelihood without BCE-with-logits on an expanded copy of x


def bernoulli_log_prob_old(self, x, params):
    """The earlier Bernoulli.log_prob: BCE with logits on tensors of one shape, (B, *shape) -> (B,)."""
    return -F.binary_cross_entropy_with_logits(params, x, reduction="none").flatten(1).sum(1)


def log_px_z_old(self, x, z, c):
    """The earlier VAE._log_px_z: x expanded into an S-fold copy, one BCE over (S*B, D)."""
    s, b = z.shape[:2]
    params = self.decoder(z.flatten(0, 1), None if c is None else c.repeat(s, 1))
    xs = x.unsqueeze(0).expand(s, *x.shape).flatten(0, 1)
    return bernoulli_log_prob_old(None, xs, params).view(s, b)


def bench_bernoulli(rounds: int) -> None:
    import aekit
    from aekit.likelihoods import Bernoulli
    from aekit.models import vae as vae_mod
    from aekit.models.vae import VAE

    data = fashion_mnist()
    x = data["x_train"][:128 * 40]
    cur_lp, cur_pxz, cur_budget = Bernoulli.log_prob, VAE._log_px_z, vae_mod.EVAL_BUDGET

    def use(old: bool, budget: int | None = None):
        Bernoulli.log_prob = bernoulli_log_prob_old if old else cur_lp
        VAE._log_px_z = log_px_z_old if old else cur_pxz
        vae_mod.EVAL_BUDGET = budget or cur_budget

    m = aekit.build("vae", input_shape=[1, 28, 28], likelihood="bernoulli", hidden=[512], latent_dim=16)
    xt = data["x_test"][:8]
    with torch.no_grad():
        use(True)
        a = m.log_likelihood(xt, k=100, generator=torch.Generator().manual_seed(0))
        use(False)
        b = m.log_likelihood(xt, k=100, generator=torch.Generator().manual_seed(0))
    print(f"log_likelihood, earlier vs current code, max abs difference over 8 images: {(a - b).abs().max():.2e} nats")

    def train_chunk(old: bool, steps: int = 40):
        use(old)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3, fused=True)
        for s in range(steps):
            m.zero_grad(set_to_none=True)
            m(x[s * 128 : (s + 1) * 128]).loss.backward()
            opt.step()

    m.train()
    t = alternate({"current": False, "earlier": True}, rounds, train_chunk)
    show("VAE training step (784-512-16, batch 128): the same-shape path, unchanged", t, "earlier", 40, "step")

    m.eval()
    xi = data["x_test"][:64]

    def ll_chunk(v):
        old, budget = v
        use(old, budget)
        m.log_likelihood(xi, k=1000, generator=torch.Generator().manual_seed(0))

    t = alternate({"earlier code, EVAL_BUDGET 2**24": (True, 2**24), "current code, EVAL_BUDGET 2**24": (False, 2**24),
                   "current code, EVAL_BUDGET 2**22": (False, 2**22)}, rounds, ll_chunk)
    show("VAE.log_likelihood, K=1000", t, "earlier code, EVAL_BUDGET 2**24", 64, "image")
    use(False)


# --------------------------------------------------------------------------------------------------
# CAE: the Gram matrix with a one-matmul backward


def gram_autograd(w):
    """The earlier form: W W^T through autograd (its backward takes two matmuls)."""
    return w @ w.t()


def gram_bf16(w):
    """W W^T in bfloat16 matmuls (float32 result), an approximation of the penalty to ~0.2%; autograd
    backward, also in bfloat16. AVX512-BF16 runs these ~2x faster here. Not offered as an option."""
    wb = w.bfloat16()
    return (wb @ wb.t()).float()


def bench_cae(rounds: int) -> None:
    import aekit
    from aekit import regularizers

    data = fashion_mnist()
    x = data["x_train"][:128 * 30]
    cur = regularizers.gram
    kw = dict(input_shape=[1, 28, 28], likelihood="bernoulli", hidden=[512], latent_dim=16)
    ae = aekit.build("ae", **kw)
    cae = aekit.build("cae", **kw)
    proj = aekit.build("cae", jacobian="projection", **kw)
    cae.load_state_dict(ae.state_dict())
    proj.load_state_dict(ae.state_dict())

    xb = x[:128]
    grads = []
    for fn in (cur, gram_autograd):
        regularizers.gram = fn
        _, sq = regularizers.encoder_jacobian_sq_norm(cae.encoder, xb)
        grads.append(torch.autograd.grad(sq.mean(), [p for p in cae.encoder.parameters()], allow_unused=True))
    regularizers.gram = cur
    diff = max((a - b).abs().max().item() / (b.abs().max().item() + 1e-30)
               for a, b in zip(*grads) if a is not None and b is not None)
    print(f"CAE penalty gradient, current vs earlier Gram: max relative difference {diff:.1e}")

    def chunk(v, steps: int = 30):
        model, fn = v
        regularizers.gram = fn
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        for s in range(steps):
            model.zero_grad(set_to_none=True)
            model(x[s * 128 : (s + 1) * 128]).loss.backward()
            opt.step()

    t = alternate({"ae": (ae, cur), "cae, earlier Gram (autograd)": (cae, gram_autograd), "cae, current": (cae, cur),
                   "cae, bf16 Gram": (cae, gram_bf16), "cae, jacobian=projection": (proj, cur)}, rounds, chunk)
    regularizers.gram = cur
    show("AE / CAE training step (784-512-16, batch 128)", t, "ae", 30, "step")
    for k in t:
        if k != "ae":
            r = [b / a for a, b in zip(t["ae"], t[k])]
            print(f"  {k}: CAE step / AE step = {median(r):.2f}x [{min(r):.2f}..{max(r):.2f}]")


# --------------------------------------------------------------------------------------------------
# Dynamic binarization


def bench_binarize(rounds: int) -> None:
    import aekit
    from aekit.likelihoods import bernoulli_sample

    data = fashion_mnist()
    x = data["x_train"][:100 * 50]
    g = torch.Generator().manual_seed(0)
    fns = {"torch.bernoulli": lambda xb: torch.bernoulli(xb, generator=g),
           "bernoulli_sample (u < p)": lambda xb: bernoulli_sample(xb, g)}

    def alone(fn, n: int = 50):
        for s in range(n):
            fn(x[s * 100 : (s + 1) * 100])

    t = alternate(fns, rounds, alone)
    show("binarizing a batch of 100 Fashion-MNIST images", t, "torch.bernoulli", 50, "batch")

    m = aekit.build("vae", input_shape=[1, 28, 28], hidden=[300, 300], latent_dim=40)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, fused=True)

    def step(fn, n: int = 50):
        for s in range(n):
            m.zero_grad(set_to_none=True)
            m(fn(x[s * 100 : (s + 1) * 100])).loss.backward()
            opt.step()

    t = alternate(fns, rounds, step)
    show("Exemplar-VAE training step (784-300-300-40, batch 100) with dynamic binarization", t,
         "torch.bernoulli", 50, "step")


# --------------------------------------------------------------------------------------------------
# Trainer overhead


def bench_trainer(rounds: int) -> None:
    import dataclasses

    import aekit

    ds = aekit.datasets.load("fashion-mnist", val_fraction=0.0)
    ds = dataclasses.replace(ds, x_train=ds.x_train[:128 * 100], y_train=ds.y_train[:128 * 100],
                             x_val=ds.x_train[:256], y_val=ds.y_train[:256])
    kw = dict(hidden=[512], latent_dim=16)

    def fit_chunk(_):
        m = aekit.build("vae", dataset=ds, **kw)
        r = aekit.fit(m, ds, aekit.TrainConfig(epochs=1, batch_size=128, lr=1e-3), quiet=True)
        fit_chunk.seconds = r.history[0]["seconds"]

    def bare_chunk(_):
        m = aekit.build("vae", dataset=ds, **kw)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3, fused=True)
        t0 = time.perf_counter()
        perm = torch.randperm(ds.x_train.shape[0])
        for s in range(math.ceil(ds.x_train.shape[0] / 128)):
            xb = ds.x_train[perm[s * 128 : (s + 1) * 128]]
            opt.zero_grad(set_to_none=True)
            m(xb).loss.backward()
            opt.step()
        bare_chunk.seconds = time.perf_counter() - t0

    times = {"aekit.fit epoch": [], "bare loop": [], "aekit.fit, flush denormals": []}
    for _ in range(rounds):
        fit_chunk(None)
        times["aekit.fit epoch"].append(fit_chunk.seconds)
        bare_chunk(None)
        times["bare loop"].append(bare_chunk.seconds)
        torch.set_flush_denormal(True)
        fit_chunk(None)
        torch.set_flush_denormal(False)
        times["aekit.fit, flush denormals"].append(fit_chunk.seconds)
    show("VAE epoch of 100 steps: aekit.fit (trainer's own seconds) vs a bare loop, and with "
         "torch.set_flush_denormal(True)", times, "aekit.fit epoch", 100, "step")
    bench_trainer_table(rounds)


def bench_trainer_table(rounds: int) -> None:
    """A Detector member's fit on a small table (19-64-64-16, 315 training rows, 10 epochs of 3 steps, the best
    validation epoch kept), whole: aekit.fit against a bare loop of the same steps and validation losses, 1 thread.
    What is left of the trainer's own cost (callbacks, weight copies, records) shows on such fits."""
    import numpy as np

    import aekit
    from aekit import optim

    torch.set_num_threads(1)
    x = np.random.RandomState(0).rand(350, 19).astype(np.float32)
    ds = aekit.datasets.from_arrays(x, kind="table", val_fraction=0.1, test_fraction=0.0)

    def fit(_):
        m = aekit.build("ae", dataset=ds, hidden=[64, 64], latent_dim=16, seed=0)
        aekit.fit(m, ds, aekit.TrainConfig(epochs=10, batch_size=128), quiet=True)

    def bare(_):
        m = aekit.build("ae", dataset=ds, hidden=[64, 64], latent_dim=16, seed=0)
        opt, params, n = optim.Adam(m.parameters(), lr=1e-3), list(m.parameters()), len(ds.x_train)
        gen = torch.Generator().manual_seed(0)
        for _ in range(10):
            perm = torch.randperm(n, generator=gen)
            for s in range(math.ceil(n / 128)):
                for p in params:
                    p.grad = None
                m(torch.index_select(ds.x_train, 0, perm[s * 128:(s + 1) * 128])).loss.backward()
                opt.step()
            with torch.no_grad():
                m(ds.x_val)

    def chunk(fn):
        for _ in range(10):
            fn(None)
    show("a small table member's whole fit (build included): aekit.fit vs a bare loop, 1 thread",
         alternate({"aekit.fit": fit, "bare loop": bare}, rounds, chunk), "aekit.fit", 10, "fit")
    torch.set_num_threads(2)


# --------------------------------------------------------------------------------------------------
# The Gaussian likelihood's fixed-sigma path, and batch rows by index_select


def gaussian_log_prob_graph(self, x, params):
    """Gaussian.log_prob as autograd's graph of its expression (the path before the fixed-sigma Function)."""
    from aekit.likelihoods import LOG_2PI

    z = (x - params) * torch.exp(-self.log_sigma)
    return (-0.5 * z * z - self.log_sigma - 0.5 * LOG_2PI).flatten(1).sum(1)


def bench_gaussian(rounds: int) -> None:
    import aekit
    from aekit import likelihoods, optim

    torch.set_num_threads(1)
    fast = likelihoods.Gaussian.log_prob
    for d in (19, 512):
        x = torch.rand(2944, d)
        model = aekit.build("ae", input_shape=[d], hidden=[64, 64], latent_dim=16, likelihood="gaussian")
        opt = optim.Adam(model.parameters())
        perm = torch.randperm(len(x))

        def steps(variant, n=60, model=model, opt=opt, perm=perm):
            likelihoods.Gaussian.log_prob, pick = variant
            for s in range(n):
                xb = pick(perm[(s % 23) * 128:(s % 23 + 1) * 128])
                for p in model.parameters():
                    p.grad = None
                model(xb).loss.backward()
                opt.step()
            likelihoods.Gaussian.log_prob = fast

        variants = {"fixed-sigma Function, index_select": (fast, lambda i, x=x: torch.index_select(x, 0, i)),
                    "fixed-sigma Function, x[idx]": (fast, lambda i, x=x: x[i]),
                    "autograd graph, x[idx] (before)": (gaussian_log_prob_graph, lambda i, x=x: x[i])}
        show(f"training step of the table MLP {d}-64-64-16 (batch 128, 1 thread)",
             alternate(variants, rounds, steps), "autograd graph, x[idx] (before)", 60, "step")
    torch.set_num_threads(2)


# --------------------------------------------------------------------------------------------------
# The residual model's leading eigenpairs


def bench_eigh(rounds: int) -> None:
    import numpy as np
    import scipy.linalg
    from threadpoolctl import threadpool_limits

    from aekit.scoring import least_squares

    def compare(title: str, variants: dict, base: str, reps: int, unit: str) -> None:
        def chunk(fn):
            for _ in range(reps):
                fn()
        show(title, alternate(variants, rounds, chunk), base, reps, unit)

    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        for d in (19, 64, 128, 256, 512, 768):
            c = rng.standard_normal((max(2 * d, 200), d)) @ rng.standard_normal((d, d))
            a = c.T @ c / (len(c) - 1)
            compare(f"the 8 leading eigenpairs of a {d} x {d} covariance (1 thread)",
                    {"scipy subset (evr), q=8": lambda a=a, d=d: scipy.linalg.eigh(
                        a, subset_by_index=[d - 8, d - 1], driver="evr"),
                     "numpy full eigh": lambda a=a: np.linalg.eigh(a)}, "numpy full eigh", max(1, 2000 // d), "matrix")
        for d in (9, 64, 512, 768):
            n = max(2 * d, 350)
            design = np.concatenate([rng.standard_normal((n, 16)) @ rng.standard_normal((16, 16)),
                                     np.ones((n, 1))], axis=1)
            c = design @ rng.standard_normal((17, d)) + rng.standard_normal((n, d))
            compare(f"the code regression's least squares, {n} x 17 against {n} x {d} (1 thread)",
                    {"QR (least_squares)": lambda design=design, c=c: least_squares(design, c),
                     "numpy lstsq": lambda design=design, c=c: np.linalg.lstsq(design, c, rcond=None)[0]},
                    "numpy lstsq", max(1, 4000 // d), "fit")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", nargs="?", default="all", choices=("all", "bernoulli", "cae", "binarize", "trainer",
                                                                   "gaussian", "eigh"))
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    for name, fn in (("bernoulli", bench_bernoulli), ("cae", bench_cae), ("binarize", bench_binarize),
                     ("trainer", bench_trainer), ("gaussian", bench_gaussian), ("eigh", bench_eigh)):
        if args.what in ("all", name):
            fn(args.rounds)


if __name__ == "__main__":
    main()
