"""Decoder likelihoods against torch.distributions, and the broadcasting (S samples per example) paths."""

import math

import pytest
import torch
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Normal

from aekit.likelihoods import Bernoulli, Gaussian


@pytest.mark.parametrize("shape", [(6,), (1, 5, 4), (3, 2, 2)])
def test_bernoulli_matches_torch_distributions(shape):
    x = (torch.rand(7, *shape) > 0.5).float()
    logits = 4 * torch.randn(7, *shape)
    ref = TorchBernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(Bernoulli().log_prob(x, logits), ref)


@pytest.mark.parametrize("shape", [(6,), (1, 5, 4)])
@pytest.mark.parametrize("binary", [True, False])
def test_bernoulli_broadcast_equals_expanded_copy(shape, binary):
    """S logits per example with x broadcast (no S-fold copy) = the same-shape path on an expanded x."""
    x = torch.rand(5, *shape)
    if binary:
        x = (x > 0.5).float()
    logits = 30 * torch.randn(9, 5, *shape)  # large logits: the softplus form must stay stable
    lik = Bernoulli()
    got = lik.log_prob(x, logits)
    assert got.shape == (9, 5)
    ref = lik.log_prob(x.expand(9, *x.shape).flatten(0, 1), logits.flatten(0, 1)).view(9, 5)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-3)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("learn", ["none", "shared", "per_dim"])
def test_gaussian_matches_torch_and_broadcasts(learn):
    shape = (1, 3, 4)
    lik = Gaussian(shape, sigma=0.7, learn=learn)
    with torch.no_grad():
        if learn == "per_dim":
            lik.log_sigma.copy_(0.3 * torch.randn(shape))
    x, mu = torch.randn(5, *shape), torch.randn(5, *shape)
    ref = Normal(mu, torch.exp(lik.log_sigma)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(x, mu), ref)
    mus = torch.randn(4, 5, *shape)
    got = lik.log_prob(x, mus)
    assert got.shape == (4, 5)
    ref = torch.stack([lik.log_prob(x, m) for m in mus])
    torch.testing.assert_close(got, ref)


def _gaussian_graph(lik, x, params):
    """Gaussian.log_prob's expression as autograd's graph (the path taken for broadcast params)."""
    z = (x - params) * torch.exp(-lik.log_sigma)
    return (-0.5 * z * z - lik.log_sigma - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1) if x.dim() > 1 else \
        -0.5 * z * z - lik.log_sigma - 0.5 * math.log(2 * math.pi)


@pytest.mark.parametrize("shape", [(), (37,), (1, 5, 4)])
@pytest.mark.parametrize("sigma", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gaussian_fixed_sigma_fast_path_is_bit_identical_to_the_graph(shape, sigma, dtype):
    """The fixed-sigma path (one autograd.Function) gives autograd's values and gradients bit for bit: the
    training loss, so the best epoch and every weight, stay those of the plain expression; bf16 params (autocast
    decoders) against float32 x included."""
    g = torch.Generator().manual_seed(3)
    lik = Gaussian(shape, sigma=sigma)
    x = torch.rand(64, *shape, generator=g, dtype=torch.float32 if dtype == torch.bfloat16 else dtype)
    x[0] = -0.0
    base = 3 * torch.randn(64, *shape, generator=g, dtype=torch.float64).to(dtype)
    base[1] = x[1].to(dtype)  # a zero residual
    upstream = torch.randn(64, generator=g, dtype=x.dtype)
    got_p, ref_p = base.clone().requires_grad_(), base.clone().requires_grad_()
    got, ref = lik.log_prob(x, got_p), _gaussian_graph(lik, x, ref_p)
    assert got.grad_fn is not None and type(got.grad_fn).__name__ != type(ref.grad_fn).__name__  # the fast path
    assert got.dtype == ref.dtype and torch.equal(got, ref)
    (got * upstream).sum().backward()
    (ref * upstream).sum().backward()
    assert got_p.grad.dtype == ref_p.grad.dtype == dtype
    assert torch.equal(got_p.grad, ref_p.grad)
    with torch.no_grad():
        assert torch.equal(lik.log_prob(x, base), ref.detach())
    if x.dim() == 2:  # x in the other memory layout (the sum's order follows it, in both paths alike)
        xt = x.t().contiguous().t()
        got_p, ref_p = base.clone().requires_grad_(), base.clone().requires_grad_()
        got, ref = lik.log_prob(xt, got_p), _gaussian_graph(lik, xt, ref_p)
        (got * upstream).sum().backward()
        (ref * upstream).sum().backward()
        assert torch.equal(got, ref) and torch.equal(got_p.grad, ref_p.grad)


def test_gaussian_fast_path_leaves_learned_sigma_gradients_of_x_and_tracing_to_autograd(monkeypatch):
    """A learned sigma, an x that needs a gradient, and torch.compile / export (which trace the expression and fuse
    it themselves) take autograd's graph."""
    import aekit.likelihoods

    x, mu = torch.rand(5, 6), torch.randn(5, 6, requires_grad=True)
    learned = Gaussian((6,), learn="shared")
    assert type(learned.log_prob(x, mu).grad_fn).__name__ == "SumBackward1"
    assert type(Gaussian((6,)).log_prob(x, mu).grad_fn).__name__ == "_FixedGaussianLogProbBackward"
    monkeypatch.setattr(aekit.likelihoods, "_compiling", lambda: True)
    assert type(Gaussian((6,)).log_prob(x, mu).grad_fn).__name__ == "SumBackward1"
    monkeypatch.undo()
    mu = mu.detach()
    xg = x.clone().requires_grad_()
    fixed = Gaussian((6,))
    fixed.log_prob(xg, mu).sum().backward()
    torch.testing.assert_close(xg.grad, -(xg - mu).detach())


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vae_log_likelihood_equals_an_independent_reference(likelihood):
    """log_likelihood (broadcasting path, one decoder call) = logsumexp of log p(x|z) p(z) / q(z|x) from
    torch.distributions over the very same draws, minus log K."""
    import aekit

    m = aekit.build("vae", input_shape=[1, 4, 4], hidden=[8], latent_dim=2, likelihood=likelihood)
    x = torch.rand(6, 1, 4, 4)
    if likelihood == "bernoulli":
        x = (x > 0.5).float()
    k = 40
    got = m.log_likelihood(x, k=k, chunk_size=k * 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q = m.posterior(x)
        mu, logvar = q.mean, q.logvar
        eps = torch.randn((k, 6, 2), generator=torch.Generator().manual_seed(0))
        z = mu + torch.exp(0.5 * logvar) * eps
        out = m.decoder(z.flatten(0, 1)).view(k, 6, -1)
        xf = x.flatten(1)
        if likelihood == "bernoulli":
            log_px = TorchBernoulli(logits=out).log_prob(xf.expand_as(out)).sum(-1)
        else:
            log_px = Normal(out, torch.exp(m.likelihood.log_sigma)).log_prob(xf.expand_as(out)).sum(-1)
        log_w = log_px + Normal(0.0, 1.0).log_prob(z).sum(-1) - Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
        ref = torch.logsumexp(log_w, 0) - math.log(k)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)


def test_bernoulli_sample_has_the_right_law():
    from aekit.likelihoods import bernoulli_sample

    p = torch.tensor([0.0, 1.0, 0.1, 0.5, 0.9, 1 / 255, 254 / 255])
    g = torch.Generator().manual_seed(0)
    draws = bernoulli_sample(p.expand(200_000, 7).contiguous(), g)
    assert set(draws.unique().tolist()) <= {0.0, 1.0} and draws.dtype == p.dtype
    freq = draws.mean(0)
    assert freq[0] == 0 and freq[1] == 1
    # binomial standard error at n=200k is <= 0.0012; allow 5 of them
    assert (freq - p).abs().max() < 0.006
    a = bernoulli_sample(p, torch.Generator().manual_seed(3))
    b = bernoulli_sample(p, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_bernoulli_broadcast_under_bf16_autocast_sums_in_float32():
    """Under CPU autocast the decoder emits bfloat16 logits; the log-likelihood must still be summed in
    float32 (a bfloat16 sum of 784 terms near 250 nats would be off by ~1 nat)."""
    x = (torch.rand(4, 784) > 0.5).float()
    logits = (4 * torch.randn(3, 4, 784)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = Bernoulli().log_prob(x, logits)
    assert got.dtype == torch.float32
    ref = TorchBernoulli(logits=logits.double()).log_prob(x.double()).sum(-1)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-3)


def test_bernoulli_single_sample_with_a_leading_dimension_uses_the_same_values():
    x = (torch.rand(5, 1, 4, 4) > 0.5).float()
    logits = torch.randn(5, 1, 4, 4)
    lik = Bernoulli()
    got = lik.log_prob(x, logits.unsqueeze(0))
    assert got.shape == (1, 5)
    torch.testing.assert_close(got[0], lik.log_prob(x, logits))


def test_binarize_static_is_one_seeded_bernoulli_sample():
    from aekit import bounds, run
    from aekit.likelihoods import binarize_static

    x = torch.rand(50, 1, 8, 8)
    a = binarize_static(x, 3)
    assert torch.equal(a, torch.bernoulli(x, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(a, binarize_static(x, 3)) and not torch.equal(a, binarize_static(x, 4))
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert bounds.binarize_static is binarize_static  # the likelihood estimate binarizes with this one
    assert run.EVAL_BINARIZE_SEED == 0
