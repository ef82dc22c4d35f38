"""The layers of docs/design.md: no import (at module level or inside a function) runs up them."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "aekit"

# bottom to top, as in docs/design.md ("Layers")
LAYERS = [
    {"errors", "config", "files", "arraylike", "distributed", "optim"},
    {"nets", "likelihoods", "regularizers", "bounds", "posterior", "reference"},
    {"models"},
    {"registry", "datasets"},
    {"run", "outputs"},
    {"metrics", "plots", "scoring"},
    {"trainer", "callbacks", "loggers"},  # the loggers of --log draw figures (plots) while training
    {"report", "compare", "detector", "adapt", "encoder", "export"},
    {"cli", "__init__", "__main__", "serve"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(rel: Path) -> str:
    """The layer unit of a module: its top-level name inside aekit (a package counts as one unit)."""
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path):
    """(line, imported unit) for every relative import outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    rel = path.relative_to(SRC)
    depth = len(rel.parts) - 1  # folders below aekit/
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and id(node) not in skip:
            up = node.level - 1  # levels above the module's own package
            if up > depth:
                continue
            base = list(rel.parts[: depth - up])
            names = [node.module] if node.module else [a.name for a in node.names]
            for name in names:
                parts = base + name.split(".")
                if parts[0] == "__version__":
                    continue  # the package's version string, not a module
                yield node.lineno, parts[0].removesuffix(".py")


MODULES = sorted(p.relative_to(SRC) for p in SRC.rglob("*.py"))


def test_every_module_has_a_layer():
    assert {_unit(m) for m in MODULES} <= set(LAYER), {_unit(m) for m in MODULES} - set(LAYER)


@pytest.mark.parametrize("rel", MODULES, ids=str)
def test_no_import_runs_up_the_layers(rel):
    here = LAYER[_unit(rel)]
    up = [(line, unit) for line, unit in _imports(SRC / rel) if unit != _unit(rel) and LAYER[unit] > here]
    assert not up, f"{rel} imports from higher layers: {up}"
