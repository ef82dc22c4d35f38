"""One contract test over every registered family (the check_estimator idea)."""

import pytest
import torch

import aekit
from aekit import registry, trainer
from aekit.config import TrainConfig
from aekit.models.base import Output

FAMILIES = list(registry.MODELS)
ARCHS = ["mlp", "conv"]


def tiny(name, ds, arch):
    hidden = [32] if arch == "mlp" else [8, 16]
    return registry.build_for(name, ds, latent_dim=4, arch=arch, hidden=hidden)


def batch(ds, n=16):
    return ds.x_train[:n], (ds.y_train[:n] if ds.y_train is not None else None)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", FAMILIES)
def test_shapes_and_finite_loss(name, arch, digits):
    torch.manual_seed(0)
    m = tiny(name, digits, arch)
    x, y = batch(digits)
    out = m(x, y)
    assert isinstance(out, Output)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    for k, v in out.terms.items():
        assert not v.requires_grad, k
        assert torch.isfinite(v), k
    z = m.encode(x, y)
    assert z.shape == (16, 4)
    assert m.decode(z, y).shape == x.shape
    xr = m.reconstruct(x, y).detach()
    assert xr.shape == x.shape
    if m.config.likelihood == "bernoulli":
        assert float(xr.min()) >= 0 and float(xr.max()) <= 1
    m.eval()
    torch.testing.assert_close(m.reconstruct(x, y), m.reconstruct(x, y))  # deterministic
    if m.generative:
        s = m.sample(5, y[:5] if m.needs_labels else None, generator=torch.Generator().manual_seed(0))
        assert s.shape == (5, *digits.shape)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", FAMILIES)
def test_gradients_reach_every_parameter(name, arch, digits):
    torch.manual_seed(0)
    m = tiny(name, digits, arch)
    m.train()
    x, y = batch(digits, 64)
    reached = set()
    groups = m.param_groups()
    for group, objective in m.update_phases():
        m.zero_grad(set_to_none=True)
        objective(x, y).loss.backward()
        for p in groups[group]:
            if p.grad is not None and p.grad.abs().sum() > 0:
                reached.add(id(p))
    names = [n for n, p in m.named_parameters() if p.requires_grad and id(p) not in reached]
    assert not names, f"no gradient reached {names}"


@pytest.mark.parametrize("name", FAMILIES)
def test_save_then_load_identical(name, digits, tmp_path):
    m = tiny(name, digits, "mlp")
    res = trainer.fit(m, digits, TrainConfig(epochs=1, seed=1), out_dir=tmp_path / "run", quiet=True)
    loaded = aekit.load(tmp_path / "run")
    assert type(loaded) is type(res.model)
    x, y = batch(digits, 32)
    res.model.eval()
    torch.testing.assert_close(loaded.reconstruct(x, y), res.model.reconstruct(x, y), rtol=0, atol=0)
    torch.testing.assert_close(loaded.encode(x, y), res.model.encode(x, y), rtol=0, atol=0)
    for f in (tmp_path / "run").iterdir():
        assert f.suffix in (".json", ".jsonl", ".safetensors"), f  # nothing pickled


@pytest.mark.parametrize("name", FAMILIES)
def test_loss_falls_on_real_data(name, digits):
    m = registry.build_for(name, digits, latent_dim=8, hidden=[64])
    res = trainer.fit(m, digits, TrainConfig(epochs=6, seed=0, lr=2e-3), quiet=True)
    first, last = res.history[0]["val"], res.history[-1]["val"]
    key = "recon" if "recon" in first else "loss"
    assert last[key] < first[key], (first, last)
