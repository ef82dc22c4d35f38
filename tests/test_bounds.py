"""aekit.bounds: Gaussian log densities and the importance-weighted bound against independent references."""

import ast
import math
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal

from aekit import registry
from aekit.bounds import gaussian_log_density, iw_bound, likelihood_metrics, log_importance_weights
from aekit.errors import ConfigError


def test_gaussian_log_density_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar, z = (torch.randn(3, 7, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ref = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_density(z, mu, logvar), ref)
    torch.testing.assert_close(gaussian_log_density(z), Normal(0.0, 1.0).log_prob(z).sum(-1))
    # broadcasting: S samples of B examples against (B, K) parameters
    z2 = torch.randn(5, 7, 4, generator=g, dtype=torch.float64)
    ref2 = Normal(mu[0], torch.exp(0.5 * logvar[0])).log_prob(z2).sum(-1)
    torch.testing.assert_close(gaussian_log_density(z2, mu[0], logvar[0]), ref2)


def test_iw_bound_is_log_mean_exp():
    g = torch.Generator().manual_seed(1)
    log_w = torch.randn(50, 6, generator=g, dtype=torch.float64) * 3 - 200  # exp underflows in float32
    ref = torch.log(torch.exp(log_w + 200).mean(0)) - 200
    torch.testing.assert_close(iw_bound(log_w, dim=0), ref)
    torch.testing.assert_close(iw_bound(log_w.t(), dim=1), ref)
    torch.testing.assert_close(iw_bound(log_w[:1]), log_w[0])  # K = 1: the single-sample ELBO
    # Jensen: log mean w >= mean log w
    assert (iw_bound(log_w) >= log_w.mean(0)).all()


def test_log_importance_weights():
    g = torch.Generator().manual_seed(2)
    mu, logvar = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g) * 0.3
    z = torch.randn(10, 4, 3, generator=g)
    log_px = torch.randn(10, 4, generator=g)
    q = Normal(mu, torch.exp(0.5 * logvar))
    ref = log_px + Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
    torch.testing.assert_close(log_importance_weights(log_px, z, mu, logvar), ref)


def _tiny_vae(ds):
    torch.manual_seed(0)
    return registry.build_for("vae", ds, latent_dim=3, hidden=[16])


def test_likelihood_metrics_keys_reproducible_and_consistent(digits):
    m = _tiny_vae(digits)
    m.train()
    a = likelihood_metrics(m, digits, "val", iw_samples=20, mc_samples=2, seed=3)
    b = likelihood_metrics(m, digits, "val", iw_samples=20, mc_samples=2, seed=3)
    assert a == b  # seeded
    assert m.training  # the mode is restored
    for k in ("elbo_nats", "neg_elbo_bits_per_dim", "recon_nats", "kl_nats", "iw_log_likelihood_nats",
              "iw_nll_bits_per_dim"):
        assert math.isfinite(a[k]), k
    assert a["iw_samples"] == 20 and a["mc_samples"] == 2
    assert a["elbo_nats"] == pytest.approx(-(a["recon_nats"] + a["kl_nats"]))
    d = math.prod(digits.shape)
    assert a["neg_elbo_bits_per_dim"] == pytest.approx(-a["elbo_nats"] / (d * math.log(2)))
    assert a["iw_log_likelihood_nats"] > a["elbo_nats"] - 0.5  # a tighter bound (up to noise)
    no_iw = likelihood_metrics(m, digits, "val", iw_samples=0)
    assert "iw_log_likelihood_nats" not in no_iw


def test_likelihood_metrics_binarized(digits):
    m = _tiny_vae(digits)
    grey = likelihood_metrics(m, digits, "val", iw_samples=5)
    binary = likelihood_metrics(m, digits, "val", iw_samples=5, binarize_seed=0)
    assert binary == likelihood_metrics(m, digits, "val", iw_samples=5, binarize_seed=0)
    assert binary["recon_nats"] != grey["recon_nats"]


def test_likelihood_metrics_bad_options(digits):
    m = _tiny_vae(digits)
    with pytest.raises(ConfigError, match="mc-samples"):
        likelihood_metrics(m, digits, "val", mc_samples=0)
    with pytest.raises(ConfigError, match="iw-samples"):
        likelihood_metrics(m, digits, "val", iw_samples=-1)


@pytest.mark.parametrize("module", ["bounds", "likelihoods", "regularizers", "nets", "posterior", "config",
                                    "reference"])
def test_the_math_modules_import_nothing_above_them(module):
    """The layers run one way: the math modules never import the trainer, metrics, models or the CLI."""
    import aekit

    tree = ast.parse((Path(aekit.__file__).parent / f"{module}.py").read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    above = {"trainer", "metrics", "models", "cli", "registry", "plots", "report", "compare", "run", "reference"}
    assert not {m.split(".")[0] for m in imported} & above, imported
