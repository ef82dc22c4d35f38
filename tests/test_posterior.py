"""aekit.posterior.DiagonalGaussian against torch.distributions, and its use by the VAE family."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import aekit
from aekit.models.vae import VAE
from aekit.posterior import DiagonalGaussian


def _q(b=6, k=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return DiagonalGaussian(torch.randn(b, k, generator=g, dtype=dtype) * 2,
                             torch.randn(b, k, generator=g, dtype=dtype))


def test_sample_is_the_reparameterization():
    q = _q()
    z = q.sample(3, generator=torch.Generator().manual_seed(1))
    eps = torch.randn((3, 6, 4), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert z.shape == (3, 6, 4)
    torch.testing.assert_close(z, q.mean + torch.exp(0.5 * q.logvar) * eps, rtol=0, atol=0)
    assert q.sample().shape == (1, 6, 4)


def test_sample_has_the_right_law_and_gradients():
    mean = torch.tensor([[1.0, -2.0]], requires_grad=True)
    logvar = torch.tensor([[0.0, 2 * torch.log(torch.tensor(0.5)).item()]], requires_grad=True)
    z = DiagonalGaussian(mean, logvar).sample(100_000, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(z.mean(0), torch.tensor([[1.0, -2.0]]), atol=0.01, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([[1.0, 0.5]]), atol=0.01, rtol=0)
    z.sum().backward()
    assert mean.grad is not None and logvar.grad is not None  # differentiable in both parameters


def test_kl_log_prob_and_mode_match_torch_distributions():
    q = _q()
    ref = Normal(q.mean, torch.exp(0.5 * q.logvar))
    torch.testing.assert_close(q.kl(), kl_divergence(ref, Normal(0.0, 1.0)).sum(-1))
    torch.testing.assert_close(q.kl(per_dim=True), kl_divergence(ref, Normal(0.0, 1.0)))
    z = torch.randn(5, 6, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z).sum(-1))
    assert q.mode() is q.mean


def test_the_vae_family_returns_it(digits):
    m = aekit.build("cvae", dataset=digits, seed=0, latent_dim=3, hidden=[16])
    x, y = digits.x_test[:5], digits.y_test[:5]
    q = m.posterior(x, y)
    assert isinstance(q, DiagonalGaussian) and q.mean.shape == q.logvar.shape == (5, 3)
    assert torch.equal(m.encode(x, y), q.mean)
    z = m.encode(x, y, sample=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(z, q.sample(1, torch.Generator().manual_seed(4))[0])
    e = m.elbo(x, y, mc_samples=2)
    torch.testing.assert_close(e["kl"], q.kl())
    assert not hasattr(VAE, "reparameterize")  # one reparameterization: DiagonalGaussian.sample


@pytest.mark.parametrize("name", ["vae", "iwae"])
def test_training_objective_uses_its_kl(digits, name):
    m = aekit.build(name, dataset=digits, seed=0, latent_dim=3, hidden=[16])
    m.eval()
    x = digits.x_test[:8]
    out = m(x)
    torch.testing.assert_close(out.terms["kl"], m.posterior(x).kl().mean())
