"""The public surface: ``__all__`` in every module, numpydoc parameters on the public API, and the option
spellings and class-name lookup that are the same everywhere."""

import ast
import importlib
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import aekit
from aekit import registry
from aekit.config import ModelConfig
from aekit.errors import DataError

SRC = Path(aekit.__file__).parent
MODULES = sorted(p.relative_to(SRC) for p in SRC.rglob("*.py"))


def _module_name(rel: Path) -> str:
    parts = rel.with_suffix("").parts
    return ".".join(["aekit", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def _defined(tree: ast.Module) -> list[str]:
    """Public functions and classes a module defines at top level (constants may stay out of __all__: tuning
    values a caller may read)."""
    return [node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")]


@pytest.mark.parametrize("rel", MODULES, ids=str)
def test_every_module_says_what_is_public(rel):
    """``__all__`` names what the module offers; every other function or class it defines starts with an
    underscore."""
    if rel.name == "__main__.py":
        assert "__all__" in (SRC / rel).read_text()
        return
    module = importlib.import_module(_module_name(rel))
    assert hasattr(module, "__all__"), f"{rel} has no __all__"
    assert all(isinstance(n, str) and (not n.startswith("_") or n == "__version__") for n in module.__all__)
    missing = [n for n in module.__all__ if n != "Detector" and n != "Encoder" and not hasattr(module, n)]
    assert not missing, f"{rel}: __all__ names what it does not define: {missing}"
    unlisted = [n for n in _defined(ast.parse((SRC / rel).read_text())) if n not in module.__all__]
    assert not unlisted, f"{rel}: public names missing from __all__ (list them, or prefix them with _): {unlisted}"


def _documented_parameters(doc: str) -> set[str]:
    """The names of a numpydoc "Parameters" section (``a, b : type`` lines count both)."""
    doc = inspect.cleandoc(doc or "")
    match = re.search(r"^Parameters\n-{10,}\n(.*?)(?:\n\n[A-Z][a-z]+\n-{5,}|\Z)", doc, re.S | re.M)
    if not match:
        return set()
    names = set()
    for line in match.group(1).splitlines():
        if line and not line.startswith(" ") and " : " in line:
            names.update(n.strip().lstrip("*") for n in line.split(" : ")[0].split(","))
        elif line and not line.startswith(" ") and line.startswith("**"):
            names.add(line.lstrip("*").strip())
    return names


API = {
    "aekit.build": aekit.build, "aekit.load": aekit.load, "aekit.save": aekit.save, "aekit.evaluate": aekit.evaluate,
    "aekit.Run": aekit.Run, "aekit.datasets.load": aekit.datasets.load,
    "aekit.datasets.from_arrays": aekit.datasets.from_arrays, "aekit.Encoder": aekit.Encoder,
    "aekit.Encoder.fit": aekit.Encoder.fit, "aekit.Encoder.transform": aekit.Encoder.transform,
    "aekit.Encoder.inverse_transform": aekit.Encoder.inverse_transform,
    "Dataset.class_index": aekit.datasets.Dataset.class_index,
    "aekit.TrainConfig": aekit.TrainConfig, "aekit.DataConfig": aekit.DataConfig, "ModelConfig": ModelConfig,
    **{f"{name} config": cls.Config for name, cls in registry.MODELS.items()},
}


@pytest.mark.parametrize("name", API)
def test_the_public_api_documents_every_parameter(name):
    obj = API[name]
    params = [p for p in inspect.signature(obj).parameters.values() if p.name != "self"]
    wanted = {p.name for p in params}
    documented = _documented_parameters(obj.__doc__)
    assert wanted <= documented, f"{name}: parameters without numpydoc entry: {sorted(wanted - documented)}"


def test_a_config_lists_its_inherited_options_too():
    doc = registry.MODELS["cvae"].Config.__doc__
    assert {"latent_dim", "beta", "cond_dim", "encoder", "encoder_args"} <= _documented_parameters(doc)


# --- one class-name lookup -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def animals():
    rng = np.random.default_rng(0)
    y = np.array(["Dog", "cat", "7"] * 20)
    return aekit.datasets.from_arrays(rng.random((60, 4)), y, name="animals")


def test_class_names_are_looked_up_one_way(animals):
    assert animals.class_names == ["7", "Dog", "cat"]
    assert animals.class_index("Dog") == animals.class_index("dog") == animals.class_index("DOG") == 1
    assert animals.class_index("7") == 0  # a name wins over an index written as text
    assert animals.class_index("2") == animals.class_index(2) == animals.class_index(np.int64(2)) == 2
    for bad in ("horse", 3, -1, True, "3"):
        with pytest.raises(DataError, match="is not a class of this dataset.*0..2.*'7', 'Dog', 'cat'"):
            animals.class_index(bad)
    assert animals.subset_class("dog").spec.normal_class == 1


def test_normal_class_and_label_read_names_alike(tmp_path, cli):
    """`--normal-class sneaker` in train and eval works as `--label sneaker` does in sample."""
    rng = np.random.default_rng(0)
    x = rng.random((90, 1, 8, 8), dtype=np.float32)
    y = np.array(["Sneaker", "Boot", "Sandal"] * 30)
    np.savez(tmp_path / "shoes.npz", x=x, y=y)
    code, _, err = cli("train", "cvae", "--dataset", tmp_path / "shoes.npz", "--epochs", 1, "--hidden", 8,
                       "--latent-dim", 2, "--out", tmp_path / "c", "--quiet")
    assert code == 0, err
    code, out, err = cli("sample", tmp_path / "c", "--label", "sneaker", "-n", 2, "--out", tmp_path / "s.png")
    assert code == 0 and "of class 2" in out, err
    code, _, err = cli("train", "ae", "--dataset", tmp_path / "shoes.npz", "--normal-class", "sneaker", "--epochs", 1,
                       "--hidden", 8, "--out", tmp_path / "a", "--quiet")
    assert code == 0, err
    code, out, err = cli("eval", tmp_path / "a", "--normal-class", "SNEAKER", "--json")
    assert code == 0 and "anomaly_auroc" in out, err
    code, _, err = cli("eval", tmp_path / "a", "--normal-class", "slipper")
    assert code == 2 and "normal class 'slipper' is not a class" in err and len(err.strip().splitlines()) == 1


# --- option spellings ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("surface") / "vae"
    from aekit.cli import main

    assert main(["train", "vae", "--epochs", "1", "--limit", "200", "--hidden", "16", "--latent-dim", "2",
                 "--out", str(run), "--quiet"]) == 0
    return run


def test_evaluation_sample_counts_have_their_own_names(vae_run, cli):
    code, new, err = cli("eval", vae_run, "--eval-iw-samples", 3, "--eval-mc-samples", 2, "--json")
    assert code == 0 and err == ""
    code, old, err = cli("eval", vae_run, "--iw-samples", 3, "--mc-samples", 2, "--json")
    assert code == 0 and old == new  # the old spellings still work ...
    assert "--iw-samples is deprecated here, use --eval-iw-samples" in err  # ... and say so
    assert "--mc-samples is deprecated here, use --eval-mc-samples" in err
    code, _, err = cli("report", vae_run, "--iw-samples", 3, "--out", vae_run.parent / "r.html")
    assert code == 0 and "use --eval-iw-samples" in err


def test_compare_seed_seeds_training_and_split_seed_the_split(tmp_path, cli, monkeypatch):
    from aekit import compare

    seen = []
    monkeypatch.setattr(compare, "compare", lambda ds, out, **kw: seen.append((ds.spec.seed, kw["seed"])) or [])
    code, _, err = cli("compare", "--models", "ae", "--limit", 100, "--seed", 3, "--out", tmp_path / "c1")
    assert code == 0 and seen[-1] == (0, 3)
    assert "seeds the weights and the training only" in err and "--split-seed 3" in err
    code, _, err = cli("compare", "--models", "ae", "--limit", 100, "--seed", 3, "--split-seed", 5,
                       "--out", tmp_path / "c2")
    assert code == 0 and seen[-1] == (5, 3) and err == ""
    code, _, err = cli("compare", "--models", "ae", "--limit", 100, "--out", tmp_path / "c3")
    assert code == 0 and seen[-1] == (0, 0) and err == ""
