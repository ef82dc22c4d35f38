"""Configs keep automatic values as given; resolved() makes them explicit; a model stores its resolved config."""

import dataclasses

import pytest
import torch

from aekit import registry
from aekit.config import ModelConfig, TrainConfig
from aekit.errors import ConfigError
from aekit.models.aae import AAEConfig
from aekit.models.sae import SAEConfig


def test_replace_gives_the_same_config_as_construction():
    a, b = ModelConfig().replace(arch="conv"), ModelConfig(arch="conv")
    assert a == b and a.hidden is None  # the automatic value is kept as given
    assert a.resolved().hidden == b.resolved().hidden == (32, 64)
    assert ModelConfig().resolved().hidden == (256,)
    assert ModelConfig(hidden=(8,)).replace(arch="conv", input_shape=(1, 8, 8)).resolved().hidden == (8,)


def test_sae_sparsity_can_be_replaced():
    c = SAEConfig().replace(sparsity="kl")
    assert c.code_activation == "auto" and c.resolved().code_activation == "sigmoid"
    assert SAEConfig().resolved().code_activation == "relu"
    assert c.replace(sparsity="l1").resolved().code_activation == "relu"
    with pytest.raises(ConfigError, match="sigmoid"):
        SAEConfig(sparsity="kl", code_activation="relu")


def test_replace_composes():
    base = AAEConfig(prior="mixture", supervised=True, num_classes=10)
    assert base.n_components == 0 and base.resolved().n_components == 10
    assert base.replace(num_classes=4).resolved().n_components == 4  # not the 10 of the first config
    assert base.replace(supervised=False, num_classes=4).resolved().n_components == 10
    step = SAEConfig().replace(arch="conv", input_shape=(1, 8, 8)).replace(sparsity="kl", latent_dim=3)
    once = SAEConfig().replace(arch="conv", input_shape=(1, 8, 8), sparsity="kl", latent_dim=3)
    assert step == once and step.resolved() == once.resolved()
    assert step.resolved().hidden == (32, 64) and step.resolved().code_activation == "sigmoid"


def test_resolved_is_explicit_and_idempotent():
    r = SAEConfig().resolved()
    assert r.hidden == (256,) and r.code_activation == "relu"
    assert r.resolved() is r
    t = TrainConfig()
    assert t.resolved() is t
    assert type(AAEConfig().resolved()) is AAEConfig


def test_validate_checks_the_resolved_values():
    with pytest.raises(ConfigError, match="one component per class"):
        AAEConfig(prior="mixture", supervised=True, num_classes=10, n_components=4)
    with pytest.raises(ConfigError, match="needs class labels"):
        AAEConfig(prior="mixture", supervised=True)  # n_components would resolve to 0 classes
    with pytest.raises(ConfigError, match="image data"):
        ModelConfig(arch="conv", input_shape=(5,))
    ModelConfig(arch="conv", input_shape=(1, 8, 8))  # hidden resolves to conv channels


FAMILY_OPTIONS = [("ae", {}), ("dae", {}), ("sae", {"sparsity": "kl"}), ("cae", {}), ("vae", {"arch": "conv"}),
                  ("iwae", {}), ("cvae", {"num_classes": 3}),
                  ("aae", {"prior": "mixture", "supervised": True, "num_classes": 3})]


@pytest.mark.parametrize("name, opts", FAMILY_OPTIONS, ids=[n for n, _ in FAMILY_OPTIONS])
def test_a_saved_config_rebuilds_the_same_model(name, opts):
    m = registry.build(name, seed=0, input_shape=[1, 8, 8], latent_dim=2, **opts)
    assert m.config == m.config.resolved()  # the model stores the resolved config
    saved = m.config.to_dict()
    assert saved["hidden"] is not None and "auto" not in saved.values()
    again = registry.build(name, seed=0, **saved)
    assert again.config == m.config
    sa, sb = m.state_dict(), again.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert registry.build(name, seed=0, input_shape=[1, 8, 8], latent_dim=2, **opts).config == m.config


def test_resolution_is_recorded_in_the_saved_config():
    m = registry.build("sae", input_shape=[4], sparsity="kl")
    assert m.config.to_dict()["code_activation"] == "sigmoid" and m.config.to_dict()["hidden"] == [256]
    aae = registry.build("aae", input_shape=[4], prior="mixture")
    assert aae.config.n_components == 10 and dataclasses.asdict(aae.config)["n_components"] == 10
