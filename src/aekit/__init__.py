"""aekit: train, evaluate, compare and use autoencoders of every classic family.

    import aekit
    ds = aekit.datasets.load("digits")
    model = aekit.build("vae", dataset=ds, latent_dim=8)
    result = aekit.fit(model, ds, aekit.TrainConfig(epochs=20), out_dir="runs/vae")
    model = aekit.load("runs/vae")                 # = aekit.Run.open("runs/vae").model()
    print(aekit.evaluate(model, ds))
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import datasets, metrics  # noqa: E402
from .callbacks import Callback  # noqa: E402
from .config import TrainConfig  # noqa: E402
from .datasets import DataConfig  # noqa: E402
from .errors import AekitError, ConfigError, DataError, RunError, TrainingDiverged  # noqa: E402
from .metrics import evaluate  # noqa: E402
from .registry import MODELS  # noqa: E402
from .registry import build as _build  # noqa: E402
from .registry import build_for as _build_for  # noqa: E402
from .run import Run, load, save  # noqa: E402
from .trainer import FitResult, fit  # noqa: E402


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
    if dataset is not None:
        return _build_for(name, dataset, seed=seed, **options)
    return _build(name, seed=seed, **options)


def __getattr__(name: str):
    """``aekit.Detector`` and ``aekit.Encoder`` are imported on first use: they bring in scikit-learn's estimator
    machinery, which the CLI need not load."""
    if name == "Detector":
        from .detector import Detector

        return Detector
    if name == "Encoder":
        from .encoder import Encoder

        return Encoder
    raise AttributeError(f"module 'aekit' has no attribute {name!r}")


__all__ = [
    "__version__", "datasets", "metrics", "build", "fit", "load", "save", "evaluate", "Run", "TrainConfig",
    "DataConfig", "FitResult", "Callback", "MODELS", "Detector", "Encoder",
    "AekitError", "ConfigError", "DataError", "RunError", "TrainingDiverged",
]
