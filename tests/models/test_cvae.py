import dataclasses

import pytest
import torch
import torch.nn.functional as F

import aekit
from aekit import registry, trainer
from aekit.config import TrainConfig
from aekit.errors import ConfigError


def tiny(ds, **opts):
    return registry.build_for("cvae", ds, **{"latent_dim": 4, "hidden": [32], **opts})


def test_flags_and_condition(digits):
    m = tiny(digits)
    caps = m.capabilities
    assert caps.conditional and caps.needs_labels and caps.uses_labels and caps.generative and caps.probabilistic
    assert m.config.num_classes == 10  # from the dataset
    y = torch.tensor([0, 3, 9])
    torch.testing.assert_close(m.condition(y), F.one_hot(y, 10).float())
    v = torch.rand(3, 10)
    assert m.condition(v) is v  # float condition vectors pass through
    with pytest.raises(ConfigError, match="shape"):
        m.condition(torch.rand(3, 4))
    with pytest.raises(ConfigError, match="need y"):
        m.condition(None)


def test_the_networks_read_the_label(digits):
    m = tiny(digits)
    x = digits.x_train[:5]
    y0, y1 = torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.long)
    assert not torch.equal(m.encode(x, y0), m.encode(x, y1))
    assert not torch.equal(m.sample(5, 0, generator=torch.Generator().manual_seed(0)),
                           m.sample(5, 1, generator=torch.Generator().manual_seed(0)))
    assert m.encoder.mlp.layers[0].in_features == 64 + 10
    assert m.decoder.mlp.layers[0].in_features == 4 + 10


def test_missing_labels_are_config_errors(digits):
    m = tiny(digits)
    x = digits.x_train[:4]
    with pytest.raises(ConfigError, match="conditional"):
        m(x)
    with pytest.raises(ConfigError, match="pass y"):
        m.sample(4)
    unlabeled = dataclasses.replace(digits, y_train=None, y_val=None, y_test=None)
    with pytest.raises(ConfigError, match="needs labels"):
        trainer.fit(m, unlabeled, TrainConfig(epochs=1), quiet=True)
    with pytest.raises(ConfigError, match="num_classes"):
        registry.build("cvae", input_shape=[1, 8, 8])  # no labels, no condition size


@pytest.mark.parametrize("y, match", [
    (10, "0..9"), (-1, "0..9"), ([1, 2], "labels for 3 samples"), (torch.tensor([1.5, 2.0, 3.0]), "float"),
    ("three", "integers"),
])
def test_bad_sampling_labels(digits, y, match):
    m = tiny(digits)
    with pytest.raises(ConfigError, match=match):
        m.sample(3, y)


def test_sample_accepts_int_list_and_tensor(digits):
    m = tiny(digits)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    a = m.sample(3, 7, generator=g())
    b = m.sample(3, [7, 7, 7], generator=g())
    c = m.sample(3, torch.tensor([7, 7, 7]), generator=g())
    d = m.sample(3, torch.tensor(7), generator=g())
    assert a.shape == (3, 1, 8, 8)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)


def test_vector_conditions(digits):
    m = registry.build("cvae", input_shape=[1, 8, 8], latent_dim=3, hidden=[16], cond_dim=5)
    x, c = digits.x_train[:6], torch.rand(6, 5)
    out = m(x, c)
    assert torch.isfinite(out.loss)
    assert m.sample(6, c).shape == (6, 1, 8, 8)
    assert m.sample(4, torch.rand(5)).shape == (4, 1, 8, 8)  # one vector for every sample
    assert m.log_likelihood(x, c, k=4).shape == (6,)
    with pytest.raises(ConfigError, match="not class labels"):
        m.sample(2, 1)
    with pytest.raises(ConfigError, match="disagree"):
        registry.build("cvae", input_shape=[1, 8, 8], cond_dim=5, num_classes=10)


def test_likelihood_is_conditional(digits):
    m = tiny(digits)
    x, y = digits.x_train[:4], digits.y_train[:4]
    e = m.elbo(x, y, mc_samples=2)
    assert all(v.shape == (4,) for v in e.values())
    assert m.log_likelihood(x, y, k=10).shape == (4,)


def test_gradients_reach_every_parameter(digits):
    for opts in ({}, {"arch": "conv", "hidden": [8, 16]}):
        m = tiny(digits, **opts)
        m(digits.x_train[:64], digits.y_train[:64]).loss.backward()
        missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert not missing, opts


def test_training_save_and_load(digits, tmp_path):
    m = tiny(digits, latent_dim=8, hidden=[64])
    res = trainer.fit(m, digits, TrainConfig(epochs=5, batch_size=64, lr=3e-3, seed=0), out_dir=tmp_path / "r",
                      quiet=True)
    assert res.history[-1]["val"]["elbo"] > res.history[0]["val"]["elbo"] + 2
    loaded = aekit.load(tmp_path / "r")
    x, y = digits.x_test[:8], digits.y_test[:8]
    assert torch.equal(loaded.encode(x, y), res.model.encode(x, y))
    assert torch.equal(loaded.sample(4, 2, generator=torch.Generator().manual_seed(0)),
                       res.model.sample(4, 2, generator=torch.Generator().manual_seed(0)))


def test_cli(cli, tmp_path):
    run = tmp_path / "cvae"
    code, _, err = cli("train", "cvae", "--epochs", "1", "--limit", "300", "--hidden", "16", "--latent-dim", "3",
                       "--quiet", "--out", run)
    assert code == 0, err
    code, out, err = cli("sample", run, "-n", "8", "--label", "3", "--out", tmp_path / "s.png")
    assert code == 0 and "class 3" in out, err
    code, out, err = cli("eval", run, "--eval-iw-samples", "50")
    assert code == 0, err
    assert "iw_log_likelihood_nats" in out
    for argv, match in (([], "pass y"), (["--label", "12"], "0..9"), (["--label", "seven"], "class name")):
        code, _, err = cli("sample", run, *argv, "--out", tmp_path / "t.png")
        assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, err
