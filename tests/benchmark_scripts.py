"""A script of benchmarks/ imported as a module for its tests, leaving sys.path and sys.modules as they were."""

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    """benchmarks/<name>.py as the module ``aekit_<name>_benchmark``; what it put on sys.path is taken off again,
    and the benchmark's own helper modules it imported (e.g. run, _common) are dropped from sys.modules."""
    path, modules = list(sys.path), set(sys.modules)
    spec = importlib.util.spec_from_file_location(f"aekit_{name}_benchmark", BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    sys.path[:] = path
    for added in set(sys.modules) - modules - {spec.name}:
        origin = getattr(sys.modules[added], "__file__", None) or ""
        if origin.startswith(str(BENCHMARKS)):
            del sys.modules[added]
    return mod
