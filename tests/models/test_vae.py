import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import aekit
from aekit import registry, trainer
from aekit.bounds import iw_bound, log_importance_weights
from aekit.config import TrainConfig
from aekit.errors import ConfigError
from aekit.regularizers import kl_normal_standard
from conftest import needs_fmnist


def tiny(ds, **opts):
    return registry.build_for("vae", ds, **{"latent_dim": 4, "hidden": [32], **opts})


def test_analytic_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(6, 5, generator=g, dtype=torch.float64) * 2
    logvar = torch.randn(6, 5, generator=g, dtype=torch.float64)
    ref = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl_normal_standard(mu, logvar), ref)


@pytest.mark.parametrize("opts, match", [
    ({"iw_samples": 0}, "iw_samples"),
    ({"mc_samples": 0}, "mc_samples"),
    ({"beta": -1.0}, "beta"),
    ({"beta": float("nan")}, "beta"),
    ({"free_bits": -0.1}, "free_bits"),
    ({"kl_warmup_epochs": -1}, "kl_warmup_epochs"),
    ({"likelihood": "gaussian", "sigma": 0.0}, "sigma"),
    ({"iw_samples": 3, "beta": 0.5}, "importance-weighted"),
    ({"iw_samples": 3, "free_bits": 0.5}, "importance-weighted"),
    ({"iw_samples": 3, "kl_warmup_epochs": 2}, "importance-weighted"),
])
def test_bad_options_are_config_errors(opts, match):
    with pytest.raises(ConfigError, match=match):
        registry.build("vae", input_shape=[1, 8, 8], **opts)


def test_shapes_and_sampling(digits):
    m = tiny(digits)
    x = digits.x_train[:10]
    q = m.posterior(x)
    mu, logvar = q.mean, q.logvar
    assert mu.shape == logvar.shape == (10, 4)
    torch.testing.assert_close(m.encode(x), mu)
    z1 = m.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    z2 = m.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    assert z1.shape == (10, 4) and torch.equal(z1, z2) and not torch.equal(z1, mu)
    assert m.prior_sample(7).shape == (7, 4)
    s1 = m.sample(6, generator=torch.Generator().manual_seed(2))
    assert s1.shape == (6, 1, 8, 8) and torch.equal(s1, m.sample(6, generator=torch.Generator().manual_seed(2)))
    assert float(s1.min()) >= 0 and float(s1.max()) <= 1  # Bernoulli means
    e = m.elbo(x, mc_samples=3)
    assert set(e) == {"elbo", "recon", "kl"} and all(v.shape == (10,) for v in e.values())
    torch.testing.assert_close(e["elbo"], -(e["recon"] + e["kl"]))
    ll = m.log_likelihood(x, k=20)
    assert ll.shape == (10,) and torch.isfinite(ll).all() and not ll.requires_grad
    assert m.capabilities.generative and m.capabilities.probabilistic and not m.capabilities.conditional


def test_a_label_for_an_unconditional_model_is_a_config_error(digits):
    m = tiny(digits)
    with pytest.raises(ConfigError, match="unconditional"):
        m.sample(4, y=3)
    with pytest.raises(ConfigError, match="non-negative"):
        m.sample(-1)
    with pytest.raises(ConfigError, match="k must be"):
        m.log_likelihood(digits.x_train[:2], k=0)


def test_mc_samples_are_decoded_in_one_call(digits):
    m = tiny(digits, mc_samples=3)
    rows = []
    m.decoder.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[0]))
    out = m(digits.x_train[:16])
    assert rows == [48]
    assert set(out.terms) == {"recon", "kl", "elbo"}
    assert all(not v.requires_grad for v in out.terms.values())


def test_free_bits_warmup_and_eval_mode_objective(digits):
    m = tiny(digits, beta=2.0, free_bits=0.5, kl_warmup_epochs=4)
    x = digits.x_train[:32]
    m.train()
    for epoch, weight in ((0, 0.0), (2, 1.0), (4, 2.0), (9, 2.0)):
        m.set_progress(epoch, 10)
        assert m.kl_weight == pytest.approx(weight)
    m.set_progress(2, 10)
    torch.manual_seed(5)
    out = m(x)
    q = m.posterior(x)
    mu, logvar = q.mean, q.logvar
    kl_dims = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))  # (B, K)
    expected = out.terms["recon"] + 1.0 * kl_dims.mean(0).clamp_min(0.5).sum()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.terms["kl"], kl_dims.sum(1).mean())
    # validation: the target beta, no free bits, whatever the warm-up (so early epochs do not look best)
    m.eval()
    out = m(x)
    torch.testing.assert_close(out.loss, out.terms["recon"] + 2.0 * out.terms["kl"])
    torch.testing.assert_close(out.terms["elbo"], -(out.terms["recon"] + out.terms["kl"]))


def test_iw_objective_is_the_importance_weighted_bound(digits):
    m = tiny(digits, iw_samples=4, mc_samples=2)
    x = digits.x_train[:8]
    torch.manual_seed(3)
    out = m(x)
    torch.manual_seed(3)
    q = m.posterior(x)
    mu, logvar = q.mean, q.logvar
    eps = torch.randn(8, 8, 4)
    z = mu + torch.exp(0.5 * logvar) * eps  # (L*K, B, Kz)
    log_px = torch.stack([m.likelihood.log_prob(x, m.decoder(zs)) for zs in z])
    log_w = log_importance_weights(log_px, z, mu, logvar).view(2, 4, 8)
    torch.testing.assert_close(out.loss, -iw_bound(log_w, dim=1).mean())
    assert out.terms["iw_bound"] == -out.loss.detach()


@pytest.mark.parametrize("opts", [
    {},
    {"arch": "conv", "hidden": [8, 16]},
    {"likelihood": "gaussian", "learn_sigma": "per_dim", "iw_samples": 3},
    {"free_bits": 0.1, "mc_samples": 2},
])
def test_gradients_reach_every_parameter(digits, opts):
    m = tiny(digits, **opts)
    m.train()
    m(digits.x_train[:64]).loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_save_then_load_gives_identical_outputs(digits, tmp_path):
    m = tiny(digits)
    res = trainer.fit(m, digits, TrainConfig(epochs=1, seed=0), out_dir=tmp_path / "run", quiet=True)
    loaded = aekit.load(tmp_path / "run")
    assert isinstance(loaded, type(res.model))
    x = digits.x_test[:16]
    qa, qb = loaded.posterior(x), res.model.posterior(x)
    assert torch.equal(qa.mean, qb.mean) and torch.equal(qa.logvar, qb.logvar)
    assert torch.equal(loaded.sample(5, generator=torch.Generator().manual_seed(0)),
                       res.model.sample(5, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(loaded.log_likelihood(x, k=10, generator=torch.Generator().manual_seed(0)),
                       res.model.log_likelihood(x, k=10, generator=torch.Generator().manual_seed(0)))


def test_loss_falls_on_digits(digits):
    m = tiny(digits, latent_dim=8, hidden=[64], kl_warmup_epochs=2)
    res = trainer.fit(m, digits, TrainConfig(epochs=6, batch_size=64, lr=3e-3, seed=0), quiet=True)
    first, last = res.history[0], res.history[-1]
    assert last["val"]["elbo"] > first["val"]["elbo"] + 2
    assert last["train"]["recon"] < first["train"]["recon"]
    assert res.best_epoch == len(res.history)  # the warm-up's early epochs are not selected


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    from aekit.cli import main

    out = tmp_path_factory.mktemp("cli") / "vae"
    assert main(["train", "vae", "--epochs", "2", "--limit", "400", "--latent-dim", "4", "--hidden", "32",
                 "--quiet", "--out", str(out)]) == 0
    return out


def test_cli_train_sample_eval(vae_run, cli, tmp_path):
    code, out, err = cli("sample", vae_run, "-n", "12", "--seed", "1", "--out", tmp_path / "s.png")
    assert code == 0, err
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    code, out, err = cli("eval", vae_run, "--eval-iw-samples", "50", "--eval-mc-samples", "2", "--json")
    assert code == 0, err
    import json

    res = json.loads(out)
    assert res["iw_samples"] == 50 and res["mc_samples"] == 2
    assert math.isfinite(res["elbo_nats"]) and math.isfinite(res["iw_log_likelihood_nats"])
    assert res["iw_log_likelihood_nats"] > res["elbo_nats"] - 1.0
    assert res["neg_elbo_bits_per_dim"] > 0


@pytest.mark.parametrize("argv, match", [
    (["train", "vae", "--iw-samples", "0", "--epochs", "1"], "iw_samples"),
    (["train", "vae", "--iw-samples", "2", "--beta", "0.5", "--epochs", "1"], "importance-weighted"),
    (["train", "ae", "--beta", "2", "--epochs", "1"], "--beta does not apply"),
    (["sample", "RUN", "--label", "3", "--out", "x.png"], "unconditional"),
    (["sample", "RUN", "--out", "x.jpg"], "PNG"),
    (["sample", "RUN", "-n", "0", "--out", "x.png"], "-n"),
    (["eval", "RUN", "--eval-mc-samples", "0"], "mc-samples"),
])
def test_cli_mistakes_exit_2_with_one_line(vae_run, cli, tmp_path, argv, match):
    argv = [str(vae_run) if a == "RUN" else a for a in argv]
    argv = [str(tmp_path / a) if a.startswith("x.") else a for a in argv]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "run")]
    code, out, err = cli(*argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], err
    assert not (tmp_path / "run").exists()


def test_cli_eval_of_a_binarized_run_says_so(cli, tmp_path):
    run = tmp_path / "bin"
    code, _, err = cli("train", "vae", "--epochs", "1", "--limit", "200", "--binarize", "dynamic", "--quiet",
                       "--hidden", "16", "--latent-dim", "2", "--out", run)
    assert code == 0, err
    code, out, err = cli("eval", run, "--eval-iw-samples", "5")
    assert code == 0, err
    assert "statically binarized" in out and "iw_log_likelihood_nats" in out


@pytest.mark.slow
@needs_fmnist
def test_fashion_mnist_vae_end_to_end(tmp_path):
    ds = aekit.datasets.load("fashion-mnist", limit=6000)
    m = registry.build_for("vae", ds, latent_dim=16, hidden=[256])
    res = trainer.fit(m, ds, TrainConfig(epochs=3, seed=0), out_dir=tmp_path / "run", quiet=True)
    assert res.history[-1]["val"]["elbo"] > res.history[0]["val"]["elbo"]
    from aekit.bounds import likelihood_metrics

    r = likelihood_metrics(res.model, ds, "test", iw_samples=100, mc_samples=1)
    assert r["iw_log_likelihood_nats"] > r["elbo_nats"]
    assert 0 < r["iw_nll_bits_per_dim"] < r["neg_elbo_bits_per_dim"]
    from aekit.cli import main

    assert main(["eval", str(tmp_path / "run"), "--eval-iw-samples", "20", "--limit", "500"]) == 0
