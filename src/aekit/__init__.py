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
    "Callback": (".callbacks", "Callback"),
    "MODELS": (".registry", "MODELS"),
    "Detector": (".detector", "Detector"),
    "Encoder": (".encoder", "Encoder"),
    "AekitError": (".errors", "AekitError"),
    "ConfigError": (".errors", "ConfigError"),
    "DataError": (".errors", "DataError"),
    "RunError": (".errors", "RunError"),
    "TrainingDiverged": (".errors", "TrainingDiverged"),
}

__all__ = ["__version__", "build", *_PUBLIC]


def build(name: str, dataset=None, seed: int | None = None, **options):
    """Build a model of family ``name``.

    Parameters
    ----------
    name : str
        A family of ``aekit.MODELS`` ("ae", "dae", "sae", "cae", "vae", "iwae", "cvae", "aae").
    dataset : aekit.datasets.Dataset, optional
        With a dataset, the input shape, a likelihood that suits its values and the label count come from it.
    seed : int, optional
        Makes the initial weights reproducible without touching the global RNG.
    **options
        The family's options (``aekit.MODELS[name].Config``), e.g. ``latent_dim=8``, ``arch="conv"``. Custom
        networks: ``encoder="package.module:Class"`` with ``encoder_args={...}`` (JSON values), and the same for
        ``decoder``; or an ``nn.Module`` instance whose class and arguments can be recovered (docs/design.md,
        "Custom networks").

    Returns
    -------
    aekit.models.base.Autoencoder
        The model, in training mode.

    Raises
    ------
    ConfigError
        An unknown family or option, a bad value, a custom network that cannot be imported or built.
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
