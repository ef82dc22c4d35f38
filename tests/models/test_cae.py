import pytest
import torch
from torch.autograd.functional import jacobian

from aekit import registry
from aekit.regularizers import encoder_jacobian_sq_norm

CASES = [
    dict(hidden=[], code_activation="sigmoid"),  # Rifai's one-layer sigmoid encoder (closed form)
    dict(hidden=[12], code_activation="linear"),  # two layers, linear code (shared-matrix form)
    dict(hidden=[12], code_activation="sigmoid", activation="tanh"),
    dict(hidden=[20, 9], code_activation="tanh", activation="sigmoid"),  # deep, h1 < D
    dict(hidden=[100, 9], code_activation="tanh", activation="elu"),  # h1 > D: direct product
    dict(arch="conv", hidden=[4, 6], code_activation="sigmoid", activation="tanh"),
]


def reference(m, x):
    out = []
    for xi in x:
        j = jacobian(lambda v: m.encoder(v.unsqueeze(0))[0], xi, create_graph=True)
        out.append(j.pow(2).sum())
    return torch.stack(out)


@pytest.mark.parametrize("opts", CASES)
def test_jacobian_norm_matches_autograd(opts):
    torch.manual_seed(0)
    m = registry.build("cae", input_shape=[1, 8, 8], latent_dim=5, **opts).double()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    h, sq = encoder_jacobian_sq_norm(m.encoder, x)
    torch.testing.assert_close(h, m.encoder(x))
    ref = reference(m, x)
    torch.testing.assert_close(sq, ref, rtol=1e-5, atol=0)
    # and its gradient with respect to the weights (what training uses)
    g = torch.autograd.grad(sq.sum(), list(m.encoder.parameters()), allow_unused=True)
    g_ref = torch.autograd.grad(ref.sum(), list(m.encoder.parameters()), allow_unused=True)
    for p, a, b in zip(m.encoder.parameters(), g, g_ref):  # None means a zero gradient
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-10)


def test_penalty_enters_the_loss(digits):
    m = registry.build_for("cae", digits, contraction=0.5, latent_dim=4)
    m.eval()
    x = digits.x_train[:16]
    out = m(x)
    _, sq = encoder_jacobian_sq_norm(m.encoder, x)
    torch.testing.assert_close(out.terms["contractive"], 0.5 * sq.mean())
    torch.testing.assert_close(out.loss, out.terms["recon"] + out.terms["contractive"])


def test_contraction_shrinks_the_jacobian(digits):
    from aekit import trainer
    from aekit.config import TrainConfig

    cfg = TrainConfig(epochs=8, seed=0)
    norms = []
    for lam, how in ((0.0, "exact"), (1.0, "exact"), (1.0, "projection")):
        m = registry.build_for("cae", digits, contraction=lam, latent_dim=8, hidden=[64], jacobian=how)
        trainer.fit(m, digits, cfg, quiet=True)
        with torch.no_grad():
            norms.append(encoder_jacobian_sq_norm(m.encoder, digits.x_test)[1].mean().item())
    assert norms[1] < 0.5 * norms[0], norms
    # training on the unbiased estimate contracts about as much as training on the exact norm
    assert norms[2] < 0.5 * norms[0] and norms[2] < 1.5 * norms[1], norms


@pytest.mark.parametrize("opts", CASES)
def test_projection_estimate_is_unbiased(opts):
    """The mean of many random projections ||J r||^2 converges to the exact ||J||_F^2 (relative std of
    the mean <= sqrt(2 / M) = 1.4% for M = 10000), for the value and for the weight gradient."""
    from aekit.regularizers import encoder_jacobian_sq_norm_estimate

    torch.manual_seed(0)
    m = registry.build("cae", input_shape=[1, 8, 8], latent_dim=5, **opts).double()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    h, est = encoder_jacobian_sq_norm_estimate(m.encoder, x, projections=10000, generator=g)
    _, exact = encoder_jacobian_sq_norm(m.encoder, x)
    torch.testing.assert_close(h, m.encoder(x))
    assert est.shape == exact.shape == (4,)
    assert ((est - exact).abs() / exact).max() < 0.06
    w = m.encoder.mlp.layers[0].weight if m.encoder.body is None else next(m.encoder.body.parameters())
    (ge,) = torch.autograd.grad(est.sum(), [w])
    (gx,) = torch.autograd.grad(exact.sum(), [w])
    assert (ge - gx).norm() / gx.norm() < 0.1
    # one projection is a noisy estimate, but a different one per draw
    _, one = encoder_jacobian_sq_norm_estimate(m.encoder, x, projections=1, generator=g)
    assert not torch.allclose(one, exact)


def test_projection_option_trains_on_the_estimate_and_evaluates_exactly(digits):
    m = registry.build_for("cae", digits, latent_dim=4, jacobian="projection", jacobian_projections=2)
    x = digits.x_train[:32]
    _, exact = encoder_jacobian_sq_norm(m.encoder, x)
    m.eval()
    torch.testing.assert_close(m(x).terms["contractive"], 0.1 * exact.mean())
    m.train()
    torch.manual_seed(0)
    a = m(x).terms["contractive"]
    torch.manual_seed(1)
    b = m(x).terms["contractive"]
    assert a != b and torch.isfinite(a)


@pytest.mark.parametrize("bad", [{"jacobian": "hutch"}, {"jacobian_projections": 0}])
def test_projection_options_are_validated(bad):
    from aekit.errors import ConfigError

    with pytest.raises(ConfigError, match="jacobian"):
        registry.build("cae", input_shape=[4], latent_dim=2, **bad)
