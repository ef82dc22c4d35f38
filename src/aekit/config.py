"""Configurations: frozen dataclasses of JSON types.

A model is built from its config and nothing else (house rule 3). ``from_dict`` rejects unknown keys
and lists the valid ones, so a typo in a JSON file or a CLI option never passes silently.
Fields carry their help text in ``metadata["help"]``; the CLI turns every field into an option.

A config keeps its values as given, automatic ones included ("auto", None, 0 where an option's help
says so), so ``replace`` composes: ``ModelConfig().replace(arch="conv") == ModelConfig(arch="conv")``.
``resolved()`` returns the config with those values made explicit; each class resolves its own fields
and calls ``super().resolved()`` first, so resolutions compose through inheritance. ``validate()``
checks the resolved values (construction runs it on ``resolved()``), and a model stores its resolved
config, so a saved config names every value and rebuilds the very same model.

Every float option of every config must be a finite number: construction checks each float-typed field
once here (``ConfigBase``), so no family repeats it and a NaN or an infinity never reaches an optimizer.
Helpers for the layers above: ``check_seed`` (a seed torch accepts) and ``env_limit`` (a positive integer
read from an environment variable, for the resource limits of registry and bounds).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import numbers
import operator
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError

__all__ = ["NETWORK_ROLES", "IMPORT_PATH", "ACTIVATIONS", "LIKELIHOODS", "opt", "ConfigBase", "check_seed",
           "env_limit", "json_object", "document", "ModelConfig", "AUTO_STEPS", "AUTO_EPOCHS", "AUTO_PATIENCE",
           "DEVICE_AUTO", "TrainConfig", "check_device", "resolve_device"]

NETWORK_ROLES = ("encoder", "decoder")  # the networks a user may bring (ModelConfig.encoder / .decoder)
IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "linear", "leaky_relu", "elu")
LIKELIHOODS = ("bernoulli", "gaussian")


def opt(default, help: str, choices: tuple | None = None, flag: str | None = None, cli: bool = True, **kw):
    """A dataclass field with help text (and optional choices) for the CLI and error messages.

    ``flag``: the CLI option's name when it is not the field's (``metadata["flag"]``); ``cli=False``:
    the field has no CLI option (``metadata["cli"] = False``), e.g. values set from the data.
    """
    md = {"help": help}
    if choices is not None:
        md["choices"] = choices
    if flag is not None:
        md["flag"] = flag
    if not cli:
        md["cli"] = False
    return field(default=default, metadata=md, **kw)


class ConfigBase:
    """Mixin: dict round-trip, validation helpers, unknown-key rejection.

    Each subclass's docstring gets a numpydoc "Parameters" section made from its fields' help text
    (``document``, called by ``__init_subclass__``), so ``help(aekit.TrainConfig)`` lists every option.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        document(cls)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, what: str | None = None):
        if not isinstance(data, dict):
            raise ConfigError(f"{what or cls.__name__}: expected a JSON object, got {type(data).__name__}")
        valid = cls.field_names()
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ConfigError(
                f"{what or cls.__name__}: unknown option(s) {', '.join(unknown)}; "
                f"valid options are: {', '.join(valid)}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(k, v, hints[k], what or cls.__name__) for k, v in data.items()}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def replace(self, **changes):
        return self.from_dict({**self.to_dict(), **changes})

    def _check_choice(self, name: str, choices) -> None:
        v = getattr(self, name)
        if v not in choices:
            raise ConfigError(
                f"{type(self).__name__}: option {name}={v!r} is not valid; choose one of {', '.join(map(str, choices))}"
            )

    def _check_range(self, name: str, lo=None, hi=None, *, lo_open=False, hi_open=False) -> None:
        v = getattr(self, name)
        if v is None:
            return
        bad = (lo is not None and (v <= lo if lo_open else v < lo)) or (
            hi is not None and (v >= hi if hi_open else v > hi)
        )
        if bad:
            lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
            hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
            want = " and ".join(s for s in (lo_s, hi_s) if s)
            raise ConfigError(f"{type(self).__name__}: option {name}={v!r} must be {want}")

    def _check_finite(self) -> None:
        """Every float-typed option (``float``, ``float | None``, ``tuple[float, ...]``) holds finite numbers."""
        for name in _float_fields(type(self)):
            v = getattr(self, name)
            for x in v if isinstance(v, tuple) else (v,):
                if x is None:
                    continue
                if isinstance(x, bool) or not isinstance(x, numbers.Real):
                    raise ConfigError(f"{type(self).__name__}: option {name} expects a number, got {x!r}")
                if not math.isfinite(x):
                    raise ConfigError(f"{type(self).__name__}: option {name} must be a finite number, got {x!r}")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if "choices" in f.metadata:
                self._check_choice(f.name, f.metadata["choices"])
        # An unresolved config is checked through its resolved copy, whose construction validates it.
        if self.resolved() is self:
            self.validate()
        self._check_finite()  # after validate, so a class's own message for a bad number comes first

    def resolved(self):
        """This config with its automatic values made explicit; ``self`` when there are none (idempotent).

        Subclasses that have automatic values override it: ``c = super().resolved()``, then
        ``c = dataclasses.replace(c, field=value)`` for each of their own fields still automatic in c.
        """
        return self

    def validate(self) -> None:
        """Check the (resolved) values; raise ConfigError saying what to change. Subclasses add checks."""


def document(cls) -> None:
    """Append a numpydoc "Parameters" section to config class ``cls``'s docstring: one entry per field (inherited
    ones included), its type, default and help text. Runs when the class body is created, before ``dataclass``
    processes it, so the fields are read from the ``opt()`` Field objects of the class and its dataclass bases."""
    fields: dict[str, dataclasses.Field] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            fields.update({f.name: f for f in dataclasses.fields(base)})
    annotations = cls.__dict__.get("__annotations__", {})
    fields.update({n: v for n, v in cls.__dict__.items() if isinstance(v, dataclasses.Field) and n in annotations})
    if not fields:
        return
    hints = {}
    for base in reversed(cls.__mro__):
        hints.update(getattr(base, "__dict__", {}).get("__annotations__", {}))
    lines = ["", "Parameters", "----------"]
    for name, f in fields.items():
        kind = hints.get(name, "")
        kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
        default = f.default if f.default is not dataclasses.MISSING else None
        lines.append(f"{name} : {kind}, default={default!r}")
        lines.append(f"    {f.metadata.get('help', '')}")
    doc = (cls.__dict__.get("__doc__") or f"The options of {cls.__module__.rsplit('.', 1)[-1]} models.").rstrip()
    cls.__doc__ = doc + "\n" + "\n".join("    " + line if line else "" for line in lines) + "\n"


@functools.cache
def _float_fields(cls) -> tuple[str, ...]:
    """The fields of config class ``cls`` whose type is float, float | None or tuple[float, ...]."""
    def is_float(hint) -> bool:
        if typing.get_origin(hint) in (typing.Union, types.UnionType, tuple):
            return all(a is float or a is type(None) or a is Ellipsis for a in typing.get_args(hint))
        return hint is float

    hints = typing.get_type_hints(cls)
    return tuple(f.name for f in dataclasses.fields(cls) if is_float(hints[f.name]))


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as a Python int that ``torch.Generator.manual_seed`` accepts (-2**63 .. 2**64-1 today);
    a ConfigError naming option ``name`` otherwise (a bool, a float, a number out of range)."""
    try:
        value = operator.index(seed) if not isinstance(seed, bool) else None
        if value is not None:
            torch.Generator().manual_seed(value)  # torch's own rule, whatever its version accepts
    except (TypeError, ValueError, RuntimeError, OverflowError):
        value = None
    if value is None:
        raise ConfigError(f"option {name}={seed!r} is not a seed torch accepts: use an integer from 0 to 2**64-1")
    return value


def env_limit(name: str, default: int) -> int:
    """A positive integer limit from environment variable ``name`` ("1000000", "1_000_000" or "1e6"),
    else ``default``; a ConfigError when the variable is set to anything else."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        try:
            f = float(text)
            value = int(f) if math.isfinite(f) and f.is_integer() else 0
        except ValueError:
            value = 0
    if value < 1:
        raise ConfigError(f"environment variable {name}={text!r} must be a positive integer, e.g. {default}; "
                          f"unset it for the default ({default:,})")
    return value


def json_object(value: Any, what: str) -> dict[str, Any]:
    """``value`` (a dict, or its JSON text as the command line gives it) as a fresh dict of JSON values with
    string keys; a ConfigError naming ``what`` otherwise. NaN and infinities are refused (not JSON)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ConfigError(f"{what} expects a JSON object such as '{{\"width\": 64}}', got {value!r} ({e})") \
                from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{what} expects a JSON object (a dict with string keys), got {value!r}")
    try:
        return json.loads(json.dumps(value, allow_nan=False))  # a copy: the config never shares the caller's dict
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what}: every value must be JSON (numbers, strings, booleans, null, lists, objects); "
                          f"{e}") from None


def _coerce(name: str, value: Any, hint: Any, what: str) -> Any:
    """Turn a JSON value into the annotated field type (lists -> tuples), with a clear error."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) > 1:  # e.g. int | str: a value of one of the types stays as it is (no conversion)
            if any(type(value) is k for k in kinds):
                return value
            tnames = " or ".join(getattr(k, "__name__", str(k)) for k in kinds)
            raise ConfigError(f"{what}: option {name} expects {tnames}, got {value!r}")
        hint = kinds[0]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is dict:  # JSON text (the command line) or a dict, copied: a config never shares the caller's dict
        if isinstance(value, str):
            return json_object(value, f"{what}: option {name}")
        if not isinstance(value, dict):
            raise ConfigError(f"{what}: option {name} expects a JSON object (a dict), got {value!r}")
        return copy.deepcopy(value)
    try:
        if origin is tuple:
            if isinstance(value, str):
                text = value.replace(" ", "")
                value = [] if text.lower() in ("", "none") else text.split(",")
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return tuple(_coerce(name, v, args[0], what) for v in value)
        if hint is bool:
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        tname = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{what}: option {name} expects {tname}, got {value!r}") from None
    return value


@dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """Options shared by every family. ``input_shape`` comes from the data.

    ``LEGACY`` (a class attribute, not an option): for options added after runs were first written, the value a
    saved config.json that lacks the key was trained with; ``aekit.Run`` fills those in when it reads a run,
    while a config built now takes the option's default.
    """

    LEGACY: typing.ClassVar[dict[str, Any]] = {}

    input_shape: tuple[int, ...] = opt((1, 8, 8), "sample shape (C,H,W) or (D,); set from the dataset")
    latent_dim: int = opt(16, "size of the code z")
    arch: str = opt("mlp", "network type", choices=("mlp", "conv"))
    hidden: tuple[int, ...] | None = opt(
        None, "MLP hidden sizes (e.g. 512,256; 'none' for a linear map) or conv channels per stride-2 layer "
        "(default: 256 for mlp, 32,64 for conv)"
    )
    activation: str = opt("relu", "hidden-layer activation", choices=ACTIVATIONS)
    likelihood: str = opt("bernoulli", "decoder likelihood p(x|z): bernoulli (data in [0,1]) or gaussian",
                          choices=LIKELIHOODS)
    sigma: float = opt(1.0, "Gaussian likelihood: fixed standard deviation (or initial value when learned)")
    learn_sigma: str = opt("none", "Gaussian likelihood: learn sigma", choices=("none", "shared", "per_dim"))
    num_classes: int = opt(0, "number of label classes (conditional and supervised models); set from the dataset")
    encoder: str | None = opt(None, "custom encoder: import path 'package.module:Class' of an nn.Module that maps x "
                                    "(B, *input_shape) to features (B, F) of any width F; aekit adds the family's "
                                    "code head (replaces --arch/--hidden for the encoder)")
    encoder_args: dict | None = opt(None, "keyword arguments of the custom encoder, a JSON object, e.g. "
                                          "'{\"width\": 64}'")
    decoder: str | None = opt(None, "custom decoder: import path 'package.module:Class' of an nn.Module that maps "
                                    "codes (B, latent_dim) to (B, *input_shape): logits (bernoulli) or means "
                                    "(gaussian) (replaces --arch/--hidden for the decoder)")
    decoder_args: dict | None = opt(None, "keyword arguments of the custom decoder, a JSON object")

    def resolved(self):
        c = super().resolved()
        if c.hidden is None:
            c = dataclasses.replace(c, hidden=(256,) if c.arch == "mlp" else (32, 64))
        for role in NETWORK_ROLES:  # a custom network's arguments are explicit, {} when none were given
            if getattr(c, role) is not None and getattr(c, f"{role}_args") is None:
                c = dataclasses.replace(c, **{f"{role}_args": {}})
        return c

    @property
    def builtin_arch(self) -> str | None:
        """The arch of aekit's own networks in this model: None when both networks are custom."""
        return None if self.encoder is not None and self.decoder is not None else self.arch

    def validate(self) -> None:
        if not self.input_shape or any(int(s) < 1 for s in self.input_shape):
            raise ConfigError(f"input_shape must be a non-empty tuple of positive sizes, got {self.input_shape}")
        self._check_range("latent_dim", 1)
        self._check_range("sigma", 0, lo_open=True)
        self._check_range("num_classes", 0)
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden sizes must be positive integers, got {','.join(map(str, self.hidden))}")
        for role in NETWORK_ROLES:
            path, args = getattr(self, role), getattr(self, f"{role}_args")
            if path is None and args is not None:
                raise ConfigError(f"{role}_args applies to a custom {role}: add --{role} package.module:Class or drop "
                                  f"--{role}-args")
            if path is not None and not IMPORT_PATH.fullmatch(path):
                raise ConfigError(f"option {role}={path!r} is not an import path; write 'package.module:Class' "
                                  "(an nn.Module subclass importable here)")
            if args is not None:
                json_object(args, f"option {role}_args")  # saved in config.json: JSON values only
        if self.builtin_arch == "conv":
            if len(self.input_shape) != 3:
                raise ConfigError(
                    f"arch=conv needs image data of shape (C,H,W), got shape {self.input_shape}; "
                    "use --arch mlp for tables"
                )
            if not self.hidden:
                raise ConfigError("arch=conv needs at least one channel count in --hidden, e.g. --hidden 32,64")
        if self.likelihood == "bernoulli" and self.learn_sigma != "none":
            raise ConfigError("learn_sigma applies only to likelihood=gaussian; drop it or set --likelihood gaussian")


AUTO_STEPS = 2000  # optimizer steps the automatic epoch budget aims at (a small set gets more epochs)
AUTO_EPOCHS = (20, 500)  # bounds on the automatic number of epochs
AUTO_PATIENCE = 10  # early stopping of an automatic budget
DEVICE_AUTO = "auto"  # TrainConfig.device: the best device here, chosen by resolve_device
LOGGERS = ("tensorboard", "mlflow")  # TrainConfig.log: where training can be watched (aekit.loggers)


@dataclass(frozen=True)
class TrainConfig(ConfigBase):
    """Options of the training loop (not of the model).

    ``epochs``, ``patience`` and ``threads`` may be left automatic (None); ``resolved_for(n_train)`` chooses
    them from the size of the training split, and the trainer records the chosen values in the run.
    ``device`` ("auto" by default) is made concrete for this process by ``resolved_for`` too (``resolve_device``),
    so a run records the device it trained on.
    """

    epochs: int | None = opt(None, f"passes over the training split (default: enough for {AUTO_STEPS} optimizer "
                                   f"steps, {AUTO_EPOCHS[0]} to {AUTO_EPOCHS[1]} epochs, with early stopping)")
    batch_size: int = opt(128, "minibatch size")
    lr: float = opt(1e-3, "Adam learning rate")
    weight_decay: float = opt(0.0, "Adam weight decay")
    seed: int = opt(0, "seed of every random choice in training (a CPU run is reproducible; the data split has "
                       "its own --split-seed)")
    patience: int | None = opt(None, "early stopping: stop after this many epochs without validation improvement "
                                     f"(0: off; default: {AUTO_PATIENCE} when the epochs are automatic, else off)")
    lr_schedule: str = opt("constant", "learning-rate schedule", choices=("constant", "cosine"))
    grad_clip: float = opt(0.0, "clip the gradient norm to this value (0: off)")
    binarize: str = opt("none", "binarize [0,1] inputs: dynamic (fresh sample per batch) or static (one seeded sample)",
                        choices=("none", "dynamic", "static"))
    device: str = opt(DEVICE_AUTO, "torch device: auto (CUDA if this torch sees a GPU, else Apple MPS, else CPU; under "
                                   "torchrun each process's cuda:LOCAL_RANK), cpu, cuda, cuda:1 or mps; the device "
                                   "used is recorded in the run")
    compile: bool = opt(False, "wrap the model's update phases in torch.compile")
    amp: str = opt("none", "mixed precision autocast", choices=("none", "bf16", "fp16"))
    threads: int | None = opt(None, "torch CPU threads while training (default: 1, which measured 5-20x faster "
                                    "than 2 for these small models on a busy 2-core machine; raise it for large "
                                    "conv models on idle cores); kept on --resume")
    checkpoint_every_epochs: int = opt(0, "write a checkpoint (what --resume continues from) every N epochs (0: by "
                                          "time only); one is always written when training ends")
    checkpoint_every_seconds: float = opt(60.0, "write a checkpoint at the end of the first epoch that ends this many "
                                                "seconds after the last one (0: by epochs only), so a kill -9 loses "
                                                "at most this much work plus an epoch")
    log: tuple[str, ...] = opt((), f"watch training: {' and/or '.join(LOGGERS)}, comma-separated (tensorboard: "
                                   "event files in RUN/tensorboard/; mlflow: see --mlflow-uri)")
    mlflow_uri: str | None = opt(None, "MLflow tracking URI of --log mlflow (default: file:./mlruns, a local file "
                                       "store beside where aekit runs)")
    log_figures_every: int | None = opt(None, "--log: epochs between reconstruction and sample figures (0: none; "
                                              "default: about ten per run, and the last epoch)")

    # options that change nothing the run computes: --resume may give new values
    RESUMABLE: typing.ClassVar[frozenset[str]] = frozenset(
        {"epochs", "checkpoint_every_epochs", "checkpoint_every_seconds", "log", "mlflow_uri", "log_figures_every"})

    def validate(self) -> None:
        self._check_range("epochs", 1)
        self._check_range("batch_size", 1)
        self._check_range("lr", 0, lo_open=True)
        self._check_range("weight_decay", 0)
        self._check_range("patience", 0)
        self._check_range("grad_clip", 0)
        self._check_range("threads", 1)
        self._check_range("checkpoint_every_epochs", 0)
        self._check_range("checkpoint_every_seconds", 0)
        self._check_range("log_figures_every", 0)
        unknown = [name for name in self.log if name not in LOGGERS]
        if unknown or len(set(self.log)) != len(self.log):
            raise ConfigError(f"TrainConfig: option log={','.join(self.log)!r} is not valid; give one or both of "
                              f"{', '.join(LOGGERS)} (comma-separated, each once)")
        check_seed(self.seed)
        check_device(self.device)

    def resolved_for(self, n_train: int) -> TrainConfig:
        """The automatic values chosen for a training split of ``n_train`` examples, in this process: epochs for
        at least AUTO_STEPS optimizer steps (within AUTO_EPOCHS) with early stopping after AUTO_PATIENCE epochs
        without improvement; given epochs keep early stopping off unless ``patience`` is given; one thread; the
        concrete device (``resolve_device``: a ConfigError when it does not exist here)."""
        epochs, patience = self.epochs, self.patience
        if epochs is None:
            steps = max(1, math.ceil(n_train / self.batch_size))
            epochs = min(max(math.ceil(AUTO_STEPS / steps), AUTO_EPOCHS[0]), AUTO_EPOCHS[1])
            patience = AUTO_PATIENCE if patience is None else patience
        return dataclasses.replace(self, epochs=epochs, patience=patience or 0, threads=self.threads or 1,
                                   device=resolve_device(self.device))


def check_device(device) -> torch.device | None:
    """``device`` parsed by torch.device (None for "auto"); a ConfigError for a string torch cannot parse or the
    meta device.

    Whether the device exists here (e.g. cuda on a machine without one) is checked when it is resolved
    (``resolve_device``), on the machine that trains.
    """
    if device == DEVICE_AUTO:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"option device={device!r} is not a torch device; use auto, cpu, cuda, cuda:1 or "
                          "mps") from None
    if dev.type == "meta":
        raise ConfigError("option device='meta' holds no data and cannot train; use e.g. auto, cpu or cuda")
    return dev


def resolve_device(device) -> str:
    """The concrete device that ``device`` (a string or torch.device) names for this process, as a string.

    ``"auto"``: CUDA when this torch sees a CUDA device, else Apple's MPS (``torch.backends.mps.is_available()``),
    else the CPU. CUDA without an index becomes an indexed device: torch's current one, or under torchrun
    (LOCAL_RANK in the environment) this process's own GPU, cuda:LOCAL_RANK; under torchrun "auto" without
    CUDA is the CPU (gloo, the CPU backend, has no MPS). With several torchrun processes (WORLD_SIZE > 1) every
    CUDA device means cuda:LOCAL_RANK, whatever index it names (one process per GPU, as torchrun launches
    them; a run written by rank 0 records cuda:0 and resumes on any rank). Any other device is kept as given.
    A device this machine does not have is a ConfigError that says what it has.
    """
    name = str(device)
    check_device(name)
    local_rank = _torchrun_local_rank()
    if name == DEVICE_AUTO:
        if torch.cuda.is_available():
            name = "cuda"
        elif local_rank is None and torch.backends.mps.is_available():
            return "mps"
        else:
            return "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} was asked for, but this torch sees no CUDA device "
                              f"({'a CPU-only build of torch' if torch.version.cuda is None else 'no GPU or driver'}); "
                              "use --device auto or cpu")
        count = torch.cuda.device_count()
        several = local_rank is not None and _torchrun_world_size() > 1
        if local_rank is not None and (dev.index is None or several):
            if local_rank >= count:
                raise ConfigError(f"torchrun started this process with LOCAL_RANK={local_rank}, but it sees {count} "
                                  f"CUDA device(s); start at most {count} process(es) per machine "
                                  "(--nproc-per-node), or train with --device cpu")
            return f"cuda:{local_rank}"
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= count:
            raise ConfigError(f"device {name!r} was asked for, but this machine has {count} CUDA device(s) "
                              f"(cuda:0 to cuda:{count - 1}); choose one of them or --device auto")
        return f"cuda:{index}"
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} was asked for, but Apple's MPS is not available here "
                          "(torch.backends.mps.is_available() is False); use --device auto or cpu")
    backend = getattr(torch, dev.type, None)  # other accelerators (xpu, ...) that torch can query
    if dev.type not in ("cpu", "mps") and callable(getattr(backend, "is_available", None)) \
            and not backend.is_available():
        raise ConfigError(f"device {name!r} was asked for, but torch.{dev.type}.is_available() is False here; "
                          "use --device auto or cpu")
    return name


def _torchrun_local_rank() -> int | None:
    """LOCAL_RANK as torchrun sets it, or None outside torchrun; a ConfigError for a value that is no index."""
    text = os.environ.get("LOCAL_RANK", "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise ConfigError(f"environment variable LOCAL_RANK={text!r} is not a process index (torchrun sets it to "
                          "0, 1, ...); unset it outside torchrun")
    return int(text)


def _torchrun_world_size() -> int:
    text = os.environ.get("WORLD_SIZE", "").strip()
    return int(text) if text.isdigit() else 1
