"""Measure proposed changes to aekit's hot paths against the code as it is, without editing src/.

    python benchmarks/hotpath.py [bernoulli|cae|trainer|all] [--rounds 7]

Each proposal is a drop-in variant applied by monkeypatching inside this process; the current code and the
variant run in alternation (A B A B ...), in chunks of a few hundred milliseconds, with 2 threads, and the
table gives medians and the [min..max] spread of the per-round ratio. The variants:

bernoulli  likelihoods.Bernoulli.log_prob as  sum_d x_d l_d - softplus(l_d)  (one fused softplus pass and
           one dot product per example, broadcasting x against (S, B, D) logits), and VAE._log_px_z passing
           the logits as (S, B, D) instead of expanding x into an S-fold copy. Measured on a VAE training step
           (784-512-16, batch 128) and on VAE.log_likelihood with K=1000; the latter also with 1000
           decoder rows per call (EVAL_BUDGET 2**22 instead of 2**24: the logits of a call stay in cache).
cae        regularizers.encoder_jacobian_sq_norm (two-layer case) with the Gram matrix W1 W1^T as a custom
           autograd function whose backward is one matmul (G + G^T) W1 instead of autograd's two. Measured
           on a CAE training step, next to the plain AE step of the same net; also with the Gram products in
           bfloat16 (an approximation, for an opt-in option).
trainer    one epoch of aekit.fit against a bare loop (slice, forward, backward, fused Adam) over the same
           model and data: what the trainer adds per step; and aekit.fit with denormals flushed to zero.
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


def bernoulli_log_prob_new(self, x, params):
    """log p(x|l) = sum_d [x_d l_d - softplus(l_d)]; x (B, *shape), params (..., B, *shape) -> (..., B)."""
    nd = x.dim() - 1
    lg = params.flatten(-nd) if nd > 1 else params
    xf = x.flatten(1) if nd > 1 else x
    return torch.einsum("...bd,bd->...b", lg, xf) - F.softplus(lg).sum(-1)


def log_px_z_new(self, x, z, c):
    s, b = z.shape[:2]
    params = self.decoder(z.flatten(0, 1), None if c is None else c.repeat(s, 1))  # row s*B + b
    return self.likelihood.log_prob(x, params.view(s, b, *x.shape[1:]))


def bench_bernoulli(rounds: int) -> None:
    import aekit
    from aekit.likelihoods import Bernoulli
    from aekit.models.vae import VAE

    data = fashion_mnist()
    x = data["x_train"][:128 * 40]
    old_lp, old_pxz = Bernoulli.log_prob, VAE._log_px_z

    def use(new: bool):
        Bernoulli.log_prob = bernoulli_log_prob_new if new else old_lp
        VAE._log_px_z = log_px_z_new if new else old_pxz

    # correctness: the same numbers
    m = aekit.build("vae", input_shape=[1, 28, 28], likelihood="bernoulli", hidden=[512], latent_dim=16)
    xt = data["x_test"][:8]
    with torch.no_grad():
        use(False)
        a = m.log_likelihood(xt, k=100, generator=torch.Generator().manual_seed(0))
        use(True)
        b = m.log_likelihood(xt, k=100, generator=torch.Generator().manual_seed(0))
    print(f"log_likelihood, current vs proposed, max abs difference over 8 images: {(a - b).abs().max():.2e} nats")

    def train_chunk(new: bool, steps: int = 40):
        use(new)
        torch.manual_seed(0)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3, fused=True)
        for s in range(steps):
            m.zero_grad(set_to_none=True)
            m(x[s * 128 : (s + 1) * 128]).loss.backward()
            opt.step()

    m.train()
    t = alternate({"current": False, "proposed": True}, rounds, train_chunk)
    show("VAE training step (784-512-16, batch 128)", t, "current", 40, "step")

    m.eval()
    xi = data["x_test"][:64]

    def ll_chunk(v):
        new, rows = v
        use(new)
        m.log_likelihood(xi, k=1000, chunk_size=rows, generator=torch.Generator().manual_seed(0))

    default_rows = m.default_chunk_size()
    t = alternate({f"current ({default_rows} rows/call)": (False, None), "current, 1000 rows/call": (False, 1000),
                   f"proposed ({default_rows} rows/call)": (True, None), "proposed, 1000 rows/call": (True, 1000)},
                  rounds, ll_chunk)
    show("VAE.log_likelihood, K=1000 (rows/call: decoder rows per call, today EVAL_BUDGET // (4*784 + 512))",
         t, f"current ({default_rows} rows/call)", 64, "image")
    use(False)


# --------------------------------------------------------------------------------------------------
# CAE: the Gram matrix with a one-matmul backward


class _Gram(torch.autograd.Function):
    """G = W W^T with backward dW = (dG + dG^T) W: one matmul where autograd's mm backward does two."""

    @staticmethod
    def forward(ctx, w):
        ctx.save_for_backward(w)
        return w @ w.t()

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        return (g + g.t()) @ w


class _GramBF16(torch.autograd.Function):
    """The same in bfloat16 matmuls (float32 accumulation; AVX512-BF16 runs them ~2x faster here): an
    approximation of the penalty to ~0.2%, for an opt-in option, not a default."""

    @staticmethod
    def forward(ctx, w):
        ctx.save_for_backward(w)
        wb = w.bfloat16()
        return (wb @ wb.t()).float()

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        return ((g + g.t()).bfloat16() @ w.bfloat16()).float()


def _jac_two_layer(encoder, x, gram):
    mlp = encoder.mlp
    h, derivs = mlp.forward_with_derivatives(x.flatten(1))
    w1, w2 = (layer.weight for layer in mlp.layers)
    m = gram.apply(w1) * (w2.t() @ w2)
    return h, ((derivs[0] @ m) * derivs[0]).sum(1)


def jac_two_layer_new(encoder, x):
    return _jac_two_layer(encoder, x, _Gram)


def jac_two_layer_bf16(encoder, x):
    return _jac_two_layer(encoder, x, _GramBF16)


def bench_cae(rounds: int) -> None:
    import aekit
    from aekit import regularizers
    from aekit.models import cae as cae_mod

    data = fashion_mnist()
    x = data["x_train"][:128 * 30]
    old = cae_mod.encoder_jacobian_sq_norm
    kw = dict(input_shape=[1, 28, 28], likelihood="bernoulli", hidden=[512], latent_dim=16)
    ae = aekit.build("ae", **kw)
    cae = aekit.build("cae", **kw)
    cae.load_state_dict(ae.state_dict())

    xb = x[:128]
    cae_mod.encoder_jacobian_sq_norm = jac_two_layer_new
    h1, s1 = jac_two_layer_new(cae.encoder, xb)
    g1 = torch.autograd.grad(s1.mean(), [p for p in cae.encoder.parameters()], allow_unused=True)
    h0, s0 = regularizers.encoder_jacobian_sq_norm(cae.encoder, xb)
    g0 = torch.autograd.grad(s0.mean(), [p for p in cae.encoder.parameters()], allow_unused=True)
    diff = max((a - b).abs().max().item() / (b.abs().max().item() + 1e-30)
               for a, b in zip(g1, g0) if a is not None and b is not None)
    print(f"CAE penalty gradient, proposed vs current: max relative difference {diff:.1e}")

    def chunk(v, steps: int = 30):
        model, fn = v
        if fn is not None:
            cae_mod.encoder_jacobian_sq_norm = fn
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        for s in range(steps):
            model.zero_grad(set_to_none=True)
            model(x[s * 128 : (s + 1) * 128]).loss.backward()
            opt.step()

    t = alternate({"ae": (ae, None), "cae current": (cae, old), "cae proposed": (cae, jac_two_layer_new),
                   "cae proposed, bf16 Gram": (cae, jac_two_layer_bf16)}, rounds, chunk)
    cae_mod.encoder_jacobian_sq_norm = old
    show("AE / CAE training step (784-512-16, batch 128); ratio column = ae time / variant time", t, "ae", 30,
         "step")
    for k in ("cae current", "cae proposed", "cae proposed, bf16 Gram"):
        r = [b / a for a, b in zip(t["ae"], t[k])]
        print(f"  {k}: CAE step / AE step = {median(r):.2f}x [{min(r):.2f}..{max(r):.2f}]")


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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", nargs="?", default="all", choices=("all", "bernoulli", "cae", "trainer"))
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    for name, fn in (("bernoulli", bench_bernoulli), ("cae", bench_cae), ("trainer", bench_trainer)):
        if args.what in ("all", name):
            fn(args.rounds)


if __name__ == "__main__":
    main()
