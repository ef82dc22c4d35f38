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
    """Build model ``name``; with ``dataset`` the input shape, likelihood and label count come from it.

    ``seed`` makes the initial weights reproducible without touching the global RNG.
    """
    if dataset is not None:
        return _build_for(name, dataset, seed=seed, **options)
    return _build(name, seed=seed, **options)


def __getattr__(name: str):
    """``aekit.Detector`` is imported on first use: it brings in scikit-learn, which the CLI need not load."""
    if name == "Detector":
        from .detector import Detector

        return Detector
    raise AttributeError(f"module 'aekit' has no attribute {name!r}")


__all__ = [
    "__version__", "datasets", "metrics", "build", "fit", "load", "save", "evaluate", "Run", "TrainConfig",
    "DataConfig", "FitResult", "Callback", "MODELS", "Detector",
    "AekitError", "ConfigError", "DataError", "RunError", "TrainingDiverged",
]
