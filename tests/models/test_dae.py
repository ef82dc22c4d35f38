import pytest
import torch

from aekit import registry
from aekit.errors import ConfigError
from aekit.models.dae import corrupt


def test_mask_noise_zeroes_the_given_fraction():
    x = torch.ones(200, 1, 28, 28)
    xc = corrupt(x, "mask", 0.3, generator=torch.Generator().manual_seed(0))
    assert abs((xc == 0).float().mean().item() - 0.3) < 0.01


def test_salt_and_pepper_values_and_rate():
    x = torch.full((200, 784), 0.5)
    xc = corrupt(x, "salt_pepper", 0.2, generator=torch.Generator().manual_seed(0))
    changed = xc != 0.5
    assert abs(changed.float().mean().item() - 0.2) < 0.01
    vals = xc[changed]
    assert set(vals.unique().tolist()) == {0.0, 1.0}
    assert abs((vals == 1).float().mean().item() - 0.5) < 0.02


def test_gaussian_noise_std():
    x = torch.zeros(100, 784)
    xc = corrupt(x, "gaussian", 0.25, generator=torch.Generator().manual_seed(0))
    assert abs(xc.std().item() - 0.25) < 0.005


def test_corruption_only_in_training_and_loss_against_clean_input(digits):
    torch.manual_seed(0)
    m = registry.build_for("dae", digits, noise="mask", noise_level=0.5, latent_dim=4)
    x = digits.x_train[:32]
    m.eval()
    assert torch.equal(m(x).loss, m(x).loss)  # no noise in eval
    m.train()
    assert not torch.equal(m(x).loss, m(x).loss)  # fresh corruption each call in training
    ae_like = -m.likelihood.log_prob(x, m.decoder(m.encode(x))).mean()
    m.eval()
    torch.testing.assert_close(m(x).loss, ae_like)


def test_bad_noise_level():
    with pytest.raises(ConfigError, match="noise_level"):
        registry.build("dae", noise="mask", noise_level=1.5)
