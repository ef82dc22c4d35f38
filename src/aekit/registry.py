"""Model names -> model classes (each class carries its Config). One line per family.

Every model is built through ``instantiate`` (``build`` and ``build_for`` call it): it first builds the
model on torch's "meta" device, which allocates nothing and draws no random number, counts its
parameters and buffers, and refuses with a ConfigError a model larger than ``max_model_params()``
(default: what lets training, which peaks at TRAIN_PEAK_FACTOR times the weight bytes, fit in half of this
machine's physical memory; environment variable AEKIT_MAX_MODEL_PARAMS), so a config.json with
``latent_dim`` 10**9 is one line, not a MemoryError or a swapping machine.
The meta build of a usual model takes about a millisecond.

Custom networks: ``build`` also takes an ``nn.Module`` instance as ``encoder`` / ``decoder``; it is turned into
its import path and arguments (``nets.network_spec``), the model is built from the config as always, and the
instance's weights are copied into the rebuilt network, which must have exactly the instance's parameters.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .config import NETWORK_ROLES, ModelConfig, check_seed, env_limit
from .errors import AekitError, ConfigError
from .models.aae import AAE
from .models.ae import AE
from .models.base import Autoencoder
from .models.cae import CAE
from .models.cvae import CVAE
from .models.dae import DAE
from .models.iwae import IWAE
from .models.sae import SAE
from .models.vae import VAE
from .nets import network_spec

__all__ = ["MODELS", "get", "build", "build_for", "instantiate", "data_options", "model_size", "check_model_size",
           "max_model_params", "physical_memory_bytes", "MAX_PARAMS_ENV"]

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


MAX_PARAMS_ENV = "AEKIT_MAX_MODEL_PARAMS"
# Peak memory of training per byte of float32 weights: the weights, their gradients, Adam's two moments, the
# best weights kept aside, the checkpoint's serialized copy of all of these, and the activations. Measured
# 14.5 for ae, vae and aae at 203 MB of weights, 15.2 at 74 MB (benchmarks/RESULTS_train_peak.md); rounded up.
TRAIN_PEAK_FACTOR = 16
FALLBACK_MAX_PARAMS = 2**26  # 4 GiB of training peak at TRAIN_PEAK_FACTOR, where the physical memory cannot be read


def physical_memory_bytes() -> int | None:
    """This machine's physical memory in bytes (POSIX sysconf), or None where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def max_model_params() -> int:
    """The most parameters and buffers a model may hold: AEKIT_MAX_MODEL_PARAMS when set (a positive
    integer, else a ConfigError), else as many float32 values as let training peak (TRAIN_PEAK_FACTOR times
    the weight bytes) within half of the physical memory (phys_bytes // 2 // (4 * TRAIN_PEAK_FACTOR)), else
    FALLBACK_MAX_PARAMS."""
    phys = physical_memory_bytes()
    return env_limit(MAX_PARAMS_ENV, phys // 2 // (4 * TRAIN_PEAK_FACTOR) if phys else FALLBACK_MAX_PARAMS)


def model_size(name: str, config: ModelConfig) -> tuple[int, int]:
    """(values, bytes) of the parameters and buffers model ``name`` would hold if built from ``config``.

    Built on the meta device: no memory is allocated and no random number drawn (the RNG is untouched).
    """
    cls = get(name)
    try:
        with torch.device("meta"):
            model = cls(config)
    except AekitError:  # a custom network's own message
        raise
    except (RuntimeError, TypeError, ValueError, OverflowError, MemoryError) as e:  # sizes past int64
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise ConfigError(f"model {name} cannot be built with these options: torch cannot create tensors that "
                          f"large ({first}); choose a smaller latent_dim, hidden sizes or input shape") from None
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)


def check_model_size(name: str, config: ModelConfig) -> None:
    """A ConfigError saying how large model ``name`` would be when it exceeds ``max_model_params()``."""
    limit = max_model_params()
    n, nbytes = model_size(name, config)
    if n > limit:
        why = f"{MAX_PARAMS_ENV}={os.environ[MAX_PARAMS_ENV].strip()}" if os.environ.get(MAX_PARAMS_ENV, "").strip() \
            else (f"training peaks at about {TRAIN_PEAK_FACTOR}x the weights, within half of this machine's memory; "
                  f"set {MAX_PARAMS_ENV} to change it")
        raise ConfigError(
            f"model {name} with these options would hold {n:,} parameters ({nbytes / 2**30:,.1f} GiB), more than "
            f"the limit of {limit:,} ({why}); choose a smaller latent_dim, hidden sizes or input shape"
        )


def instantiate(name: str, config: ModelConfig, seed: int | None = None) -> Autoencoder:
    """Model ``name`` built from ``config`` after the size check (``check_model_size``).

    ``seed``: initialize the weights from this seed (the caller's global RNG is left untouched);
    None draws them from torch's global RNG.
    """
    if seed is not None:
        seed = check_seed(seed)
    check_model_size(name, config)
    cls = get(name)
    if seed is None:
        return cls(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config)


def build(name: str, seed: int | None = None, **options) -> Autoencoder:
    """Build model ``name`` from its options (JSON types), e.g. ``build("ae", input_shape=(1, 8, 8))``.

    Parameters
    ----------
    name : str
        A family of ``MODELS``.
    seed : int, optional
        Initialize the weights from this seed (the caller's global RNG is left untouched); None draws them from
        torch's global RNG.
    **options
        The family's config options (``MODELS[name].Config``). ``encoder`` / ``decoder`` may also be an
        ``nn.Module`` instance whose class and arguments can be recovered (``nets.network_spec``): its weights
        are the initial weights of that network.

    Returns
    -------
    Autoencoder
        The model. A model too large for this machine is refused (``instantiate``).
    """
    instances = {}
    for role in NETWORK_ROLES:
        net = options.get(role)
        if isinstance(net, nn.Module):
            if options.get(f"{role}_args") is not None:
                raise ConfigError(f"{role}_args goes with an import path; the arguments of an {role} instance are "
                                  "read from the instance: drop one of them")
            path, args = network_spec(net, role)
            options = {**options, role: path, f"{role}_args": args}
            instances[role] = net
    config = get(name).Config.from_dict(options, what=f"model {name}")
    model = instantiate(name, config, seed)
    for role, net in instances.items():
        _adopt_weights(model.custom_networks()[role], net, role, getattr(config, role))
    return model


def _adopt_weights(rebuilt: nn.Module, instance: nn.Module, role: str, path: str) -> None:
    """Copy an instance's weights into the network rebuilt from its recovered arguments, which must hold the very
    same tensors (names and shapes): else the arguments did not describe the instance, a ConfigError."""
    mine, theirs = rebuilt.state_dict(), instance.state_dict()
    if {k: tuple(v.shape) for k, v in mine.items()} != {k: tuple(v.shape) for k, v in theirs.items()}:
        diff = sorted(set(mine) ^ set(theirs)) or [k for k in mine if mine[k].shape != theirs[k].shape]
        raise ConfigError(f"custom {role} {path}: the network rebuilt from the instance's recovered arguments does "
                          f"not have the instance's parameters (first difference: {diff[0]}); pass {role}="
                          f"'{path}' with {role}_args instead")
    rebuilt.load_state_dict(theirs)


def data_options(name: str, dataset) -> dict:
    """The options a dataset fixes: input shape, a likelihood that suits its values, label count."""
    opts = {"input_shape": list(dataset.shape), "likelihood": "bernoulli" if dataset.kind == "image" else "gaussian"}
    if "num_classes" in get(name).Config.field_names():
        opts["num_classes"] = dataset.num_classes
    return opts


def build_for(name: str, dataset, seed: int | None = None, **options) -> Autoencoder:
    """Build model ``name`` for ``dataset``; explicit ``options`` win over what the data suggests."""
    return build(name, seed=seed, **{**data_options(name, dataset), **options})
