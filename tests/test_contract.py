"""One contract test over every registered family (the check_estimator idea)."""

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import torch

import aekit
from aekit import metrics, registry, trainer
from aekit.config import ModelConfig, TrainConfig
from aekit.models.base import Capabilities, Output

FAMILIES = list(registry.MODELS)
ARCHS = ["mlp", "conv", "custom"]  # custom: a user's conv encoder and decoder (tests/custom_nets.py) on 3x64x64
CUSTOM = {"encoder": "custom_nets:ConvEncoder", "encoder_args": {"width": 4}, "decoder": "custom_nets:ConvDecoder",
          "decoder_args": {"width": 4}}


@pytest.fixture(scope="module")
def images64():
    """48 random 3x64x64 colour images in 3 classes (custom networks are tried on them)."""
    import numpy as np

    rng = np.random.default_rng(0)
    return aekit.datasets.from_arrays(rng.random((48, 3, 64, 64), dtype=np.float32), rng.integers(0, 3, 48),
                                      kind="image", name="images64")


@pytest.fixture
def data(arch, digits, request):
    return request.getfixturevalue("images64") if arch == "custom" else digits


def tiny(name, ds, arch):
    if arch == "custom":
        return registry.build_for(name, ds, latent_dim=4, **CUSTOM)
    hidden = [32] if arch == "mlp" else [8, 16]
    return registry.build_for(name, ds, latent_dim=4, arch=arch, hidden=hidden)


def batch(ds, n=16):
    return ds.x_train[:n], (ds.y_train[:n] if ds.y_train is not None else None)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", FAMILIES)
def test_shapes_and_finite_loss(name, arch, data):
    torch.manual_seed(0)
    m = tiny(name, data, arch)
    x, y = batch(data)
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
    if m.capabilities.generative:
        s = m.sample(5, y[:5] if m.capabilities.needs_labels else None, generator=torch.Generator().manual_seed(0))
        assert s.shape == (5, *data.shape)


@pytest.mark.parametrize("name", FAMILIES)
def test_capabilities_are_one_record(name, digits):
    m = tiny(name, digits, "mlp")
    caps = m.capabilities
    assert isinstance(caps, Capabilities) and isinstance(type(m).capabilities, Capabilities)
    assert caps.uses_labels == (caps.conditional or caps.needs_labels)
    with pytest.raises(dataclasses.FrozenInstanceError):
        caps.generative = not caps.generative
    for old in ("generative", "probabilistic", "conditional", "needs_labels", "diagnostics"):
        assert not hasattr(m, old), old  # the flags live in m.capabilities only
    for diagnostic in caps.diagnostics:  # each is the family's own or a shared one of aekit.metrics
        assert callable(metrics.diagnostic_function(m, diagnostic)), diagnostic
    if caps.probabilistic:
        assert callable(m.elbo) and callable(m.log_likelihood)


def test_capabilities_that_depend_on_the_config(digits):
    plain = tiny("aae", digits, "mlp")
    sup = registry.build_for("aae", digits, latent_dim=4, hidden=[32], prior="mixture", supervised=True)
    assert not plain.capabilities.needs_labels and "conditional_accuracy" not in plain.capabilities.diagnostics
    assert sup.capabilities.needs_labels and sup.capabilities.uses_labels and not sup.capabilities.conditional
    assert "conditional_accuracy" in sup.capabilities.diagnostics
    assert type(sup).capabilities == plain.capabilities  # the class-level record is not changed by an instance


SRC = Path(aekit.__file__).parent
FAMILY_FIELDS = {f.name for cls in registry.MODELS.values() for f in dataclasses.fields(cls.Config)} - {
    f.name for f in dataclasses.fields(ModelConfig)}


def _runtime_imports(tree):
    """Modules a file imports when it runs (imports under ``if TYPE_CHECKING:`` do not run)."""
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):  # from .. import metrics: the names are the modules
            yield from ([node.module] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


@pytest.mark.parametrize("path", sorted((SRC / "models").glob("*.py")), ids=lambda p: p.name)
def test_models_import_nothing_above_them(path):
    """The layers run one way: the families never import the trainer, metrics, plots, the registry or the CLI."""
    above = {"trainer", "metrics", "plots", "report", "compare", "cli", "registry", "run", "datasets", "reference"}
    imported = {m.lstrip(".").split(".")[0] for m in _runtime_imports(ast.parse(path.read_text()))}
    assert not imported & above, (path.name, imported & above)


@pytest.mark.parametrize("path", sorted(SRC.glob("*.py")), ids=lambda p: p.name)
def test_no_module_outside_the_families_names_their_internals(path):
    """Only a family's own file may touch its corruption, its networks' insides or its own options."""
    text = path.read_text()
    assert not re.search(r"\.corrupt\(", text), path.name
    assert not re.search(r"\bmodel\.(encoder|decoder|discriminator)\b", text), path.name
    used = set(re.findall(r"\.config\.(\w+)", text))
    assert not used & FAMILY_FIELDS, (path.name, used & FAMILY_FIELDS)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", FAMILIES)
def test_gradients_reach_every_parameter(name, arch, data):
    torch.manual_seed(0)
    m = tiny(name, data, arch)
    m.train()
    x, y = batch(data, 64)
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


@pytest.mark.parametrize("arch", ["mlp", "custom"])
@pytest.mark.parametrize("name", FAMILIES)
def test_save_then_load_identical(name, arch, data, tmp_path):
    m = tiny(name, data, arch)
    res = trainer.fit(m, data, TrainConfig(epochs=1, seed=1), out_dir=tmp_path / "run", quiet=True)
    loaded = aekit.load(tmp_path / "run")
    assert type(loaded) is type(res.model)
    x, y = batch(data, 32)
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
