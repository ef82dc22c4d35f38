"""The model contract every family follows (see DESIGN.md, "The model contract").

A model owns its objective: ``forward(x, y)`` returns an ``Output`` whose ``loss`` the optimizer minimises
(sum over data dimensions, mean over the batch, in nats) and whose ``terms`` are detached parts for logs.
The trainer only ever calls ``param_groups()``, ``update_phases()``, ``set_progress()`` and ``forward``,
so a family that needs several optimizers (the adversarial autoencoder) declares them here and never
requires a change in the trainer.

What a model can do is one record, ``model.capabilities`` (a ``Capabilities``, as scikit-learn keeps
estimator tags): every family declares it once at class level, and a family whose capabilities depend on
its config overrides the classmethod ``capabilities_for(config)``. Trainer, metrics, plots, CLI and
report read only this record, never a model's name or type.

Diagnostics: ``capabilities.diagnostics`` names the diagnostics that apply. A diagnostic that needs a
family's internals is written in the family's file and listed in its class-level table
``diagnostic_functions``: name -> fn(model, data) -> {metric: number}, where ``data`` is the
aekit.metrics.DiagnosticData that metrics hands over (the split, the seed and the generic metric pieces;
models never import metrics, which sits above them). Names not in the table are the diagnostics shared
across families, which need only this contract and live in aekit.metrics (SHARED_DIAGNOSTICS).

The training flag (``model.train()`` / ``model.eval()``) changes only the training objective (``forward``
and the update phases: corruption, annealing, projection estimates). Every other method, encode, decode,
reconstruct and the evaluation methods of the families, gives the same result in either mode, so
evaluation never flips the flag of a model another thread may be using. Methods that draw random numbers
outside the training objective take a ``generator``; evaluation always passes one.

Arrays: the public methods that read data or codes (``ARRAY_METHODS``: encode, decode, reconstruct, and
the VAE family's elbo and log_likelihood) also take numpy arrays, lists and tensors of any dtype on any
device, and answer in the kind they were given (the rules are in aekit.arraylike). A family writes these
methods for tensors of the model's dtype on its device, as the contract says; ``__init_subclass__`` wraps
each definition once, as scikit-learn's set_output wraps ``transform``. Such a tensor goes straight to the
family's own code (a type, dtype and device check is all the wrapper adds), so the training objectives,
which call encode internally, keep their speed and their gradients; a tensor is differentiable as with any
nn.Module, while a numpy array or a list is run in batches without autograd and returned as numpy.
``sample`` has no data to take the kind from: ``sample(n, y, output="numpy")`` returns a numpy array (as do
labels ``y`` given as a numpy array), ``output="tensor"`` or the default a tensor (``answers_in_kind``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .. import arraylike
from ..config import ModelConfig
from ..errors import ConfigError, DataError

__all__ = ["Output", "Capabilities", "ARRAY_METHODS", "accepts_arrays", "Autoencoder", "class_labels", "check_count",
           "answers_in_kind"]


@dataclass
class Output:
    loss: Tensor  # scalar the optimizer minimises
    terms: dict[str, Tensor] = field(default_factory=dict)  # detached named parts, scalars


@dataclass(frozen=True)
class Capabilities:
    """What a model can do; the only thing callers consult to decide what applies to it."""

    generative: bool = False  # has sample(n, y, generator) and prior_sample
    probabilistic: bool = False  # has posterior(), elbo() and log_likelihood()
    conditional: bool = False  # encode / decode take y
    needs_labels: bool = False  # training needs class labels
    stochastic_encoder: bool = False  # has posterior(x, y) (a posterior.DiagonalGaussian) without being probabilistic
    diagnostics: tuple[str, ...] = ()  # the diagnostics that apply (see the module docstring)

    @property
    def uses_labels(self) -> bool:
        """The model takes class labels somewhere (its networks, its prior or its discriminator)."""
        return self.conditional or self.needs_labels

    @property
    def has_posterior(self) -> bool:
        """Codes are drawn from q(z|x) = ``posterior(x, y)``, a DiagonalGaussian (``encode`` gives its mean);
        otherwise q(z|x) is a point mass at ``encode(x, y)``."""
        return self.probabilistic or self.stochastic_encoder


# The public methods whose first argument is data x (True) or codes z (False): each family's definition of
# them also takes arrays (see the module docstring and aekit.arraylike).
ARRAY_METHODS = {"encode": True, "decode": False, "reconstruct": True, "elbo": True, "log_likelihood": True}


def accepts_arrays(fn: Callable, data: bool) -> Callable:
    """fn(self, x, y=None, ...) written for tensors of the model's dtype on its device, made to take what a
    Python user holds. Such tensors take the direct call; other tensors are converted (differentiably) and
    the result returned on their device in their dtype; arrays and lists run in batches without autograd and
    come back as numpy. ``data``: x is data (checked for integers outside the model's range), not codes."""
    signature = inspect.signature(fn)
    first = list(signature.parameters)[1]

    @functools.wraps(fn)
    def method(self, *args, **kwargs):
        x = args[0] if args else kwargs.get(first)
        if isinstance(x, Tensor):  # the hot path: the training objectives come through here
            p = next(self.parameters())
            y = args[1] if len(args) > 1 else kwargs.get("y")
            if x.dtype == p.dtype and x.device == p.device and (y is None or isinstance(y, Tensor)
                                                                and y.device == p.device):
                return fn(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        if x is None:
            return fn(*bound.args, **bound.kwargs)  # the family's own error for a missing input

        def call(xb: Tensor, yb: Tensor | None):
            bound.arguments[first], bound.arguments["y"] = xb, yb
            return fn(*bound.args, **bound.kwargs)

        p = next(self.parameters())
        how = {"dtype": p.dtype, "device": p.device, "check": self.check_values if data else None}
        y = bound.arguments.get("y")
        if isinstance(x, Tensor):
            return arraylike.call_converted(call, x, y, **how)
        return arraylike.map_rows(call, x, y, **how)

    method.accepts_arrays = True
    return method


SAMPLE_OUTPUTS = (None, "tensor", "numpy")


def answers_in_kind(fn: Callable) -> Callable:
    """``sample(n, y=None, generator=None)`` given the keyword ``output``: "tensor" (a tensor on the model's
    device, as the family returns it), "numpy" (a numpy array, as the array methods answer numpy users), or
    None (the default): numpy when the labels ``y`` are a numpy array, else a tensor, so torch callers (and
    labels given as an int or a list) are unchanged."""
    @functools.wraps(fn)
    def method(self, *args, output: str | None = None, **kwargs):
        if output not in SAMPLE_OUTPUTS:
            raise ConfigError(f"model {self.name}: sample(output={output!r}): choose 'tensor', 'numpy' or None "
                              "(numpy when y is a numpy array or a list, else a tensor)")
        y = args[1] if len(args) > 1 else kwargs.get("y")
        as_numpy = output == "numpy" or (output is None and isinstance(y, np.ndarray))
        if isinstance(y, np.ndarray):  # as a tensor on the model's device (class_labels names what is wrong)
            y = torch.from_numpy(y.astype(np.int64)) if y.dtype.kind in "iu" else y.tolist()
            if len(args) > 1:
                args = (args[0], y, *args[2:])
            else:
                kwargs["y"] = y
        with torch.no_grad() if as_numpy else contextlib.nullcontext():
            x = fn(self, *args, **kwargs)
        return x.detach().cpu().numpy() if as_numpy else x

    method.answers_in_kind = True
    return method


def _wrap_array_methods(cls: type) -> None:
    for name, data in ARRAY_METHODS.items():
        fn = cls.__dict__.get(name)
        if callable(fn) and not getattr(fn, "accepts_arrays", False):
            setattr(cls, name, accepts_arrays(fn, data))
    fn = cls.__dict__.get("sample")
    if callable(fn) and not getattr(fn, "answers_in_kind", False):
        cls.sample = answers_in_kind(fn)


class Autoencoder(nn.Module):
    """Base class. Subclasses set ``Config`` and ``capabilities`` and implement encode / decode_params / forward."""

    Config: type[ModelConfig] = ModelConfig
    name: str = "autoencoder"
    capabilities: Capabilities = Capabilities()  # the family's; an instance holds capabilities_for(its config)
    diagnostic_functions: ClassVar[Mapping[str, Callable]] = {}  # the family's own: fn(model, data) -> dict

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, self.Config):
            raise ConfigError(f"model {self.name} needs a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config.resolved()  # saved as it is: every automatic value explicit
        self.capabilities = type(self).capabilities_for(self.config)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _wrap_array_methods(cls)  # a family's encode, decode, ... take arrays too

    @classmethod
    def capabilities_for(cls, config: ModelConfig) -> Capabilities:
        """The capabilities of this family built from ``config`` (resolved). Default: the class-level record."""
        return cls.capabilities

    # --- the contract -------------------------------------------------------------------------
    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Deterministic code (the posterior mean for probabilistic families). (B, *shape) -> (B, K)."""
        raise NotImplementedError

    def decode_params(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Parameters of p(x|z): logits (Bernoulli) or means (Gaussian). (B, K) -> (B, *shape)."""
        return self.decoder(z, self.condition(y))

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Mean of p(x|z). (B, K) -> (B, *shape)."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise DataError(f"model {self.name} decodes codes of shape (B, {self.latent_dim}) (latent_dim), "
                            f"got shape {tuple(z.shape)}")
        return self.likelihood.mean(self.decode_params(z, y))

    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """decode(encode(x)): no noise, no corruption. (B, *shape) -> (B, *shape)."""
        return self.decode(self.encode(x, y), y)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Output:
        raise NotImplementedError

    def sample(self, n: int, y: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        raise ConfigError(f"model {self.name} is not generative: it has no prior to sample from")

    # --- evaluation ---------------------------------------------------------------------------
    def reconstruction_rows(self, x: Tensor, y: Tensor | None = None,
                            generator: torch.Generator | None = None) -> tuple[str, dict[str, Tensor]]:
        """What a figure of reconstructions shows: a caption and named rows of images, top to bottom.

        x (n, *shape) -> rows of (n, *shape). Default: the inputs and their reconstructions.
        """
        return "Test inputs (top) and their reconstructions (bottom)", {"input": x, "output": self.reconstruct(x, y)}

    # --- what the trainer uses ----------------------------------------------------------------
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups, one optimizer each. Default: one group with every parameter."""
        return {"model": [p for p in self.parameters() if p.requires_grad]}

    def update_phases(self) -> list[tuple[str, Callable[[Tensor, Tensor | None], Output]]]:
        """Per batch, in order: (group name, objective). Each phase steps only its group's optimizer."""
        return [("model", self.forward)]

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multiplier per parameter group (default 1 for every group)."""
        return {}

    def set_progress(self, epoch: int, epochs: int) -> None:
        """Called by the trainer before each epoch (0-based), e.g. for KL warm-up. Default: nothing."""

    # --- helpers ------------------------------------------------------------------------------
    def custom_networks(self) -> dict[str, nn.Module]:
        """The user's networks in this model (ModelConfig.encoder / decoder), by role: {} for aekit's own."""
        nets = {role: getattr(getattr(self, role, None), "custom", None) for role in ("encoder", "decoder")}
        return {role: net for role, net in nets.items() if net is not None}

    def check_input(self, x: Tensor, what: str = "the data") -> None:
        """One DataError line unless x is (B, *config.input_shape): the model cannot read other samples."""
        shape = tuple(self.config.input_shape)
        if tuple(x.shape[1:]) != shape:
            raise DataError(f"{what} has samples of shape {tuple(x.shape[1:])}, but model {self.name} was built for "
                            f"input shape {shape}; use data of that shape (the data the model was trained on)")

    def check_values(self, x) -> None:
        """Integer data are exact values, never rescaled: refused where they cannot be the model's data."""
        extent = arraylike.integer_extent(x)
        if extent and self.config.likelihood == "bernoulli" and (extent[0] < 0 or extent[1] > 1):
            raise DataError(f"model {self.name} reads data in [0, 1] (likelihood bernoulli), but got integers "
                            f"{extent[0]}..{extent[1]}; integers are taken as exact values, so scale them first "
                            "(e.g. x / 255 for 8-bit images)")

    def condition(self, y: Tensor | None) -> Tensor | None:
        """The conditioning vector for the networks: None for unconditional models."""
        return None

    def recon_log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x|z) in nats per example, (B,)."""
        return self.likelihood.log_prob(x, params)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the parameters: the dtype inputs are converted to."""
        return next(self.parameters()).dtype


_wrap_array_methods(Autoencoder)


def class_labels(n: int, y, num_classes: int, model: str, device) -> Tensor:
    """Labels for sampling n examples: an int (all n alike), a list or a tensor of n ints -> (n,) int64.

    Raises ConfigError for a missing y, floats, a wrong count or a label outside 0..num_classes-1.
    """
    if y is None:
        raise ConfigError(
            f"model {model} samples a given class: pass y (a class 0..{num_classes - 1}, or a list of {n} "
            "classes), e.g. `aekit sample RUN --label 3`"
        )
    try:
        t = torch.as_tensor(y, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"model {model}: labels must be integers 0..{num_classes - 1}, got {y!r}") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ConfigError(f"model {model}: labels must be integers 0..{num_classes - 1}, got a {t.dtype} tensor")
    if t.dim() == 0:
        t = t.expand(n)
    if t.dim() != 1 or t.shape[0] != n:
        raise ConfigError(f"model {model}: expected one label or {n} labels for {n} samples, "
                          f"got shape {tuple(t.shape)}")
    if n and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ConfigError(
            f"model {model}: labels must lie in 0..{num_classes - 1} (the model has {num_classes} classes), "
            f"got {int(t.min())}..{int(t.max())}"
        )
    return t.long()


def check_count(n, model: str) -> int:
    """n as a Python int (numpy and torch integers accepted); a ConfigError unless it is an integer >= 0."""
    try:
        count = -1 if isinstance(n, bool) else operator.index(n)
    except TypeError:
        count = -1
    if count < 0:
        raise ConfigError(f"model {model}: the number of samples must be a non-negative integer, got {n!r}")
    return count
