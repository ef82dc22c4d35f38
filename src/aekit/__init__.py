"""aekit: train, evaluate, compare and use autoencoders of every classic family.

    import aekit
    ds = aekit.datasets.load("digits")
    model = aekit.build("vae", dataset=ds, latent_dim=8)
    result = aekit.fit(model, ds, aekit.TrainConfig(epochs=20), out_dir="runs/vae")
    model = aekit.load("runs/vae")                 # = aekit.Run.open("runs/vae").model()
    print(aekit.evaluate(model, ds))

Every public name is imported on first use (PEP 562): ``import aekit`` and ``aekit --version`` load no torch,
and a command loads only what it uses. ``_PUBLIC`` is the public surface: one line per name.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC: dict[str, tuple[str, str | None]] = {  # public name -> (module, attribute; None: the module itself)
    "datasets": (".datasets", None),
    "metrics": (".metrics", None),
    "fit": (".trainer", "fit"),
    "load": (".run", "load"),
    "save": (".run", "save"),
    "evaluate": (".metrics", "evaluate"),
    "Run": (".run", "Run"),
    "TrainConfig": (".config", "TrainConfig"),
    "DataConfig": (".datasets", "DataConfig"),
    "FitResult": (".trainer", "FitResult"),
    "MODELS": (".registry", "MODELS"),
    "Detector": (".detector", "Detector"),
    "AekitError": (".errors", "AekitError"),
    "ConfigError": (".errors", "ConfigError"),
    "DataError": (".errors", "DataError"),
    "RunError": (".errors", "RunError"),
    "TrainingDiverged": (".errors", "TrainingDiverged"),
}

__all__ = ["__version__", "build", *_PUBLIC]


def build(name: str, dataset=None, seed: int | None = None, **options):
    """Build model ``name``; with ``dataset`` the input shape, likelihood and label count come from it.

    ``seed`` makes the initial weights reproducible without touching the global RNG.
    """
    from . import registry

    if dataset is not None:
        return registry.build_for(name, dataset, seed=seed, **options)
    return registry.build(name, seed=seed, **options)


def __getattr__(name: str):
    """A public name, imported on first use and kept."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'aekit' has no attribute {name!r}")
    module, attr = _PUBLIC[name]
    mod = importlib.import_module(module, __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
