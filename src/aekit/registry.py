"""Model names -> model classes (each class carries its Config). One line per family."""

from __future__ import annotations

import torch

from .errors import ConfigError
from .models.aae import AAE
from .models.ae import AE
from .models.base import Autoencoder
from .models.cae import CAE
from .models.cvae import CVAE
from .models.dae import DAE
from .models.iwae import IWAE
from .models.sae import SAE
from .models.vae import VAE

MODELS: dict[str, type[Autoencoder]] = {
    "ae": AE,
    "dae": DAE,
    "sae": SAE,
    "cae": CAE,
    "vae": VAE,
    "iwae": IWAE,
    "cvae": CVAE,
    "aae": AAE,
}


def get(name: str) -> type[Autoencoder]:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; available models: {', '.join(MODELS)}") from None


def build(name: str, seed: int | None = None, **options) -> Autoencoder:
    """Build model ``name`` from its options (JSON types), e.g. build("ae", input_shape=(1, 8, 8)).

    ``seed``: initialize the weights from this seed (the caller's global RNG is left untouched);
    None draws them from torch's global RNG.
    """
    cls = get(name)
    config = cls.Config.from_dict(options, what=f"model {name}")
    if seed is None:
        return cls(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config)


def data_options(name: str, dataset) -> dict:
    """The options a dataset fixes: input shape, a likelihood that suits its values, label count."""
    opts = {"input_shape": list(dataset.shape), "likelihood": "bernoulli" if dataset.kind == "image" else "gaussian"}
    if "num_classes" in get(name).Config.field_names():
        opts["num_classes"] = dataset.num_classes
    return opts


def build_for(name: str, dataset, seed: int | None = None, **options) -> Autoencoder:
    """Build model ``name`` for ``dataset``; explicit ``options`` win over what the data suggests."""
    return build(name, seed=seed, **{**data_options(name, dataset), **options})
