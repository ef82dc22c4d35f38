"""No module imports another module's ``_private`` name (docs/design.md, "The public surface").

A leading underscore means: private to its module, or, inside a subpackage such as ``datasets/``, private to the
package, whose modules share such helpers among themselves (a package is one unit, as in tests/test_layers.py).
Checked with ast on every file of src/aekit: ``from .x import _name`` and ``x._name`` where x is an aekit module
the file imported.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "aekit"
MODULES = sorted(p.relative_to(SRC) for p in SRC.rglob("*.py"))

# detector.py is being rewritten on branch export (it will take its array coercion from aekit.arraylike, its
# summary from the trainer's public API and a preview helper of its own); the lead empties this list after
# merging that branch. Each entry: (file, private name).
ALLOWED: set[tuple[str, str]] = set()  # (module, name) pairs tolerated for now: none


def _package(parts: tuple[str, ...]) -> tuple[str, ...]:
    """The unit a module belongs to: its subpackage below aekit (datasets, models), else the module itself."""
    return parts[:1] if len(parts) > 1 else parts


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def offenders(rel: Path, text: str | None = None) -> list[tuple[int, str, str]]:
    """(line, source module, private name) for each private name ``rel`` (its text: ``text``, else the file's)
    takes from outside its own unit."""
    tree = ast.parse((SRC / rel).read_text() if text is None else text)
    here = _package(rel.with_suffix("").parts)
    depth = len(rel.parts) - 1
    found, modules = [], {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ImportFrom) and node.level):
            continue
        base = list(rel.parts[: depth - (node.level - 1)])
        target = tuple(base + (node.module.split(".") if node.module else []))
        for alias in node.names:
            if _private(alias.name) and _package(target) != here:
                found.append((node.lineno, ".".join(target), alias.name))
            modules[alias.asname or alias.name] = target + (alias.name,)  # `from . import trainer`
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
            target = modules.get(node.value.id)
            if target is not None and (SRC.joinpath(*target).with_suffix(".py").exists()
                                       or SRC.joinpath(*target).is_dir()) and _package(target) != here:
                found.append((node.lineno, ".".join(target), node.attr))
    return found


@pytest.mark.parametrize("rel", MODULES, ids=str)
def test_no_module_imports_another_module_s_private_names(rel):
    bad = [(line, mod, name) for line, mod, name in offenders(rel) if (str(rel), name) not in ALLOWED]
    assert not bad, f"{rel} imports private names of other modules (line, module, name): {bad}"


def test_the_checker_sees_what_it_forbids():
    """The rule itself: from-imports and attributes across units are found; inside a package they are not."""
    assert [n for _, _, n in offenders(Path("cli.py"), "from .trainer import _summary, fit")] == ["_summary"]
    assert [n for _, _, n in offenders(Path("cli.py"), "from . import trainer\ntrainer._summary()")] == ["_summary"]
    assert [n for _, _, n in offenders(Path("cli.py"), "from .datasets.source import _size")] == ["_size"]
    assert [n for _, _, n in offenders(Path("datasets/pack.py"), "from ..run import _x")] == ["_x"]
    assert not offenders(Path("datasets/arrays.py"), "from .source import _Source\nfrom . import source\nsource._size")
    assert not offenders(Path("cli.py"), "from . import trainer\nx = trainer.__name__\nself._private = 1")


def test_the_allow_list_holds_only_current_offenders():
    current = {(str(rel), name) for rel in MODULES for _, _, name in offenders(rel)}
    stale = ALLOWED - current
    assert not stale, f"no longer needed, remove from ALLOWED: {sorted(stale)}"
