"""Probabilistic PCA (Tipping & Bishop 1999) as a VAE with a linear Gaussian decoder: every bound has a closed form.

x = W z + mu + s * eps, z ~ N(0, I_K)  =>  p(x) = N(mu, W W^T + s^2 I),
p(z|x) = N(M^-1 W^T (x - mu), s^2 M^-1), M = W^T W + s^2 I (diagonal because W has orthogonal columns),
so an encoder with one linear layer represents the exact posterior.
"""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from aekit import registry

D, K, S = 5, 2, 0.5
N = 2000


@pytest.fixture(scope="module")
def ppca():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    w = q[:, :K] * torch.tensor([1.5, 0.8], dtype=torch.float64)  # orthogonal columns
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    cov = w @ w.T + S**2 * torch.eye(D, dtype=torch.float64)
    x = mu + torch.randn(N, D, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    exact = MultivariateNormal(mu, cov).log_prob(x)  # (N,)
    m_mat = w.T @ w + S**2 * torch.eye(K, dtype=torch.float64)
    return {"w": w, "mu": mu, "x": x, "exact": exact, "A": torch.linalg.solve(m_mat, w.T),
            "post_logvar": torch.log(S**2 / torch.diagonal(m_mat))}


def build(p, shrink=1.0, widen=1.0):
    """The linear VAE with decoder (W, mu) and encoder q = N(shrink * posterior mean, widen * posterior var)."""
    m = registry.build("vae", input_shape=[D], latent_dim=K, hidden=[], activation="linear",
                       likelihood="gaussian", sigma=S)
    with torch.no_grad():
        dec, enc = m.decoder.mlp.layers[0], m.encoder.mlp.layers[0]
        dec.weight.copy_(p["w"])
        dec.bias.copy_(p["mu"])
        enc.weight.zero_()
        enc.weight[:K] = shrink * p["A"]
        enc.bias[:K] = -shrink * p["A"] @ p["mu"]
        enc.bias[K:] = p["post_logvar"] + math.log(widen)
    return m.eval()


def closed_form_elbo(p, m, x):
    """E_q log p(x|z) - KL(q || N(0, I)) in closed form for q from the model's encoder. x (B, D) float64 -> (B,).

    E_q ||x - mu - W z||^2 = ||x - mu - W m||^2 + sum_j v_j ||W_:j||^2.
    """
    with torch.no_grad():
        q = m.posterior(x.float())
        qm, qlv = q.mean.double(), q.logvar.double()
    v = torch.exp(qlv)
    w, mu = p["w"], p["mu"]
    sq = (x - mu - qm @ w.T).pow(2).sum(-1) + (v * w.pow(2).sum(0)).sum(-1)
    e_log_px = -0.5 * D * math.log(2 * math.pi * S**2) - sq / (2 * S**2)
    kl = kl_divergence(Normal(qm, v.sqrt()), Normal(0.0, 1.0)).sum(-1)
    return e_log_px - kl


def test_exact_posterior_makes_every_bound_tight(ppca):
    m = build(ppca)
    x, exact = ppca["x"][:200], ppca["exact"][:200]
    torch.testing.assert_close(closed_form_elbo(ppca, m, x), exact, atol=1e-4, rtol=0)
    # log w = log p(x) for every z when q is the posterior: any K, any chunking gives log p(x)
    for k, chunk in ((1, None), (5000, 97), (3, 2)):
        ll = m.log_likelihood(x[:20].float(), k=k, chunk_size=chunk, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(ll.double(), exact[:20], atol=1e-4, rtol=0)


def test_elbo_is_below_log_likelihood_for_an_imperfect_posterior(ppca):
    m = build(ppca, shrink=0.8, widen=2.5)
    x, exact = ppca["x"][:500], ppca["exact"][:500]
    gap = exact - closed_form_elbo(ppca, m, x)  # = KL(q || p(z|x)) > 0
    assert (gap > 1e-3).all(), gap.min()
    mc = m.elbo(x.float(), mc_samples=200, generator=torch.Generator().manual_seed(0))["elbo"].double()
    assert mc.mean() < exact.mean() - 0.5


def test_monte_carlo_elbo_matches_closed_form(ppca):
    m = build(ppca, shrink=0.8, widen=2.5)
    x = ppca["x"][:10]
    cf = closed_form_elbo(ppca, m, x)
    out = m.elbo(x.float(), mc_samples=200_000, generator=torch.Generator().manual_seed(1))  # s.e. < 0.01
    torch.testing.assert_close(out["elbo"].double(), cf, atol=0.04, rtol=0)
    assert abs(out["elbo"].double().mean() - cf.mean()) < 0.015
    with torch.no_grad():
        q = m.posterior(x.float())
        qm, qlv = q.mean, q.logvar
    torch.testing.assert_close(out["kl"], kl_divergence(Normal(qm, torch.exp(0.5 * qlv)), Normal(0.0, 1.0)).sum(-1))


def test_importance_weighted_estimate_rises_with_k_to_the_exact_value(ppca):
    m = build(ppca, shrink=0.8, widen=2.5)
    x, exact = ppca["x"].float(), ppca["exact"]
    seeds = range(4)
    mean_err = {}
    for k in (1, 5, 50, 1000):
        errs = [(m.log_likelihood(x, k=k, generator=torch.Generator().manual_seed(s)).double() - exact).mean()
                for s in seeds]
        mean_err[k] = float(torch.stack(errs).mean())
    ks = sorted(mean_err)
    assert all(mean_err[a] < mean_err[b] for a, b in zip(ks, ks[1:])), mean_err
    assert abs(mean_err[1000]) < 0.01, mean_err
    # K = 1 is an unbiased estimate of the ELBO (standard error of this mean about 0.02)
    assert mean_err[1] == pytest.approx(float((closed_form_elbo(ppca, m, ppca["x"]) - exact).mean()), abs=0.1)


def test_encoder_runs_once_and_decoder_calls_are_bounded(ppca):
    m = build(ppca, shrink=0.8, widen=2.5)
    calls = {"enc": 0, "dec_rows": []}
    m.encoder.register_forward_hook(lambda mod, inp, out: calls.__setitem__("enc", calls["enc"] + 1))
    m.decoder.register_forward_hook(lambda mod, inp, out: calls["dec_rows"].append(inp[0].shape[0]))
    m.log_likelihood(ppca["x"][:30].float(), k=1000, chunk_size=256)
    assert calls["enc"] == 1
    assert max(calls["dec_rows"]) <= 256 and sum(calls["dec_rows"]) == 30 * 1000
