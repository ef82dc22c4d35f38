import json

import pytest
import torch

import aekit
from aekit import registry, trainer
from aekit.bounds import iw_bound, log_importance_weights
from aekit.config import TrainConfig
from aekit.errors import ConfigError
from aekit.models.vae import VAE


def tiny(ds, **opts):
    return registry.build_for("iwae", ds, **{"latent_dim": 4, "hidden": [32], **opts})


def test_iwae_is_the_vae_with_five_importance_samples(digits):
    m = tiny(digits)
    assert isinstance(m, VAE) and m.name == "iwae"
    assert m.config.iw_samples == 5 and registry.build("vae").config.iw_samples == 1
    assert m.capabilities.generative and m.capabilities.probabilistic


def test_objective_is_the_k_sample_bound_in_one_decoder_call(digits):
    m = tiny(digits, mc_samples=2)
    x = digits.x_train[:6]
    rows = []
    m.decoder.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[0]))
    torch.manual_seed(7)
    out = m(x)
    assert rows == [2 * 5 * 6]
    torch.manual_seed(7)
    q = m.posterior(x)
    mu, logvar = q.mean, q.logvar
    z = mu + torch.exp(0.5 * logvar) * torch.randn(10, 6, 4)
    log_px = torch.stack([m.likelihood.log_prob(x, m.decoder(zs)) for zs in z])
    log_w = log_importance_weights(log_px, z, mu, logvar).view(2, 5, 6)
    torch.testing.assert_close(out.loss, -iw_bound(log_w, dim=1).mean())
    # the K-sample bound is at least the mean log weight of the same samples (Jensen)
    assert out.terms["iw_bound"] >= log_w.mean() - 1e-5
    assert set(out.terms) == {"recon", "kl", "elbo", "iw_bound"}


@pytest.mark.parametrize("opts", [{"beta": 2.0}, {"free_bits": 1.0}, {"kl_warmup_epochs": 3}, {"iw_samples": 0}])
def test_bad_options(opts):
    with pytest.raises(ConfigError):
        registry.build("iwae", input_shape=[1, 8, 8], **opts)


def test_iw_samples_1_is_the_vae_objective(digits):
    m = tiny(digits, iw_samples=1)
    m.eval()
    out = m(digits.x_train[:8])
    torch.testing.assert_close(out.loss, out.terms["recon"] + out.terms["kl"])


def test_gradients_reach_every_parameter(digits):
    m = tiny(digits, arch="conv", hidden=[8, 16])
    m(digits.x_train[:32]).loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_save_then_load_and_training_on_digits(digits, tmp_path):
    m = tiny(digits, latent_dim=8, hidden=[64])
    res = trainer.fit(m, digits, TrainConfig(epochs=5, batch_size=64, lr=3e-3, seed=0), out_dir=tmp_path / "r",
                      quiet=True)
    assert res.history[-1]["val"]["iw_bound"] > res.history[0]["val"]["iw_bound"] + 2
    assert res.history[-1]["train"]["loss"] < res.history[0]["train"]["loss"]
    loaded = aekit.load(tmp_path / "r")
    assert type(loaded).__name__ == "IWAE" and loaded.config.iw_samples == 5
    x = digits.x_test[:8]
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(loaded.log_likelihood(x, k=7, generator=g()), res.model.log_likelihood(x, k=7, generator=g()))
    assert torch.equal(loaded.sample(3, generator=g()), res.model.sample(3, generator=g()))


def test_cli(cli, tmp_path):
    run = tmp_path / "iwae"
    code, _, err = cli("train", "iwae", "--epochs", "1", "--limit", "300", "--iw-samples", "3", "--hidden", "16",
                       "--latent-dim", "3", "--quiet", "--out", run)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["config"]["iw_samples"] == 3
    code, out, err = cli("eval", run, "--eval-iw-samples", "50", "--json")
    assert code == 0, err
    assert json.loads(out)["iw_samples"] == 50
    code, _, err = cli("sample", run, "-n", "4", "--out", tmp_path / "s.png")
    assert code == 0, err
    code, _, err = cli("train", "iwae", "--beta", "3", "--out", tmp_path / "bad")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "iw-samples 1" in err
