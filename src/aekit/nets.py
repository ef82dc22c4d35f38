"""Encoder and decoder networks shared by every family.

``arch="mlp"``: fully connected layers (hidden sizes may be empty: a single linear map).
``arch="conv"``: stride-2 3x3 convolutions that work for any image size (8x8, 28x28, ...); the decoder
mirrors them with transposed convolutions whose output padding is chosen so the output size is exact.

Conditioning (conditional models) concatenates a vector ``y`` (e.g. one-hot labels) to the flattened
input of the MLP, or to the flattened conv features before the last linear layer.

Custom networks (``ModelConfig.encoder`` / ``decoder``: an import path ``package.module:Class`` and JSON
keyword arguments ``encoder_args`` / ``decoder_args``). ``build_network`` imports the class (it must be an
``nn.Module`` subclass: nothing else named in a config.json is ever called) and calls it with those arguments,
adding ``input_shape`` and ``latent_dim`` where its ``__init__`` names them and the arguments do not. A custom
encoder maps x (B, *input_shape) to features of any shape (B, ...), flattened to (B, F); aekit's head, the last
linear layer, maps them (with y appended for conditional models) to the family's output, its width F found by a
dry forward pass on zeros. A custom decoder maps codes (B, latent_dim) to (B, *input_shape), checked by a dry
forward pass at build time; for conditional models aekit's head first maps [z, y] to latent_dim with a linear
layer, so the user's decoder reads a code of latent_dim whatever the condition. ``network_spec`` recovers the
import path and the arguments of an instance (see its docstring), so that a model is saved as a config, never
as a pickle.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig, json_object
from .errors import ConfigError

__all__ = ["MLP", "Encoder", "Decoder", "TiedDecoder", "CustomBody", "activation", "activation_derivative",
           "build_network", "import_network", "network_spec", "DATA_ARGS"]

DATA_ARGS = ("input_shape", "latent_dim")  # what aekit passes to a custom network's __init__ that names them


def activation(name: str) -> nn.Module:
    return {
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "linear": nn.Identity,
        "leaky_relu": lambda: nn.LeakyReLU(0.01),
        "elu": nn.ELU,
    }[name]()


def activation_derivative(name: str, pre: Tensor) -> Tensor:
    """d act(a) / d a, elementwise, from the pre-activation ``a`` (any shape)."""
    if name == "relu":
        return (pre > 0).to(pre.dtype)
    if name == "tanh":
        return 1 - torch.tanh(pre) ** 2
    if name == "sigmoid":
        s = torch.sigmoid(pre)
        return s * (1 - s)
    if name == "linear":
        return torch.ones_like(pre)
    if name == "leaky_relu":
        return torch.where(pre > 0, 1.0, 0.01).to(pre.dtype)
    if name == "elu":
        return torch.where(pre > 0, torch.ones_like(pre), torch.exp(pre))
    raise ValueError(name)


class MLP(nn.Module):
    """Linear layers with ``hidden_act`` between them and ``out_act`` after the last one.

    forward: (B, in_dim) -> (B, out_dim).
    """

    def __init__(self, sizes: list[int], hidden_act: str, out_act: str = "linear"):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.acts = [hidden_act] * (len(self.layers) - 1) + [out_act]
        self._act_modules = nn.ModuleList(activation(a) for a in self.acts)

    def forward(self, h: Tensor) -> Tensor:
        for layer, act in zip(self.layers, self._act_modules):
            h = act(layer(h))
        return h

    def forward_with_derivatives(self, h: Tensor, first_pre: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """Output and, per layer, the activation derivative at that layer, each (B, width).

        The encoder Jacobian is then diag(d_L) W_L ... diag(d_1) W_1 (see regularizers.contractive).
        ``first_pre``: the first layer's pre-activation, when the caller has computed it already.
        """
        derivs = []
        for i, (layer, act, name) in enumerate(zip(self.layers, self._act_modules, self.acts)):
            pre = first_pre if i == 0 and first_pre is not None else layer(h)
            derivs.append(activation_derivative(name, pre))
            h = act(pre)
        return h, derivs


def _conv_sizes(size: int, n: int) -> list[int]:
    """Spatial sizes through n stride-2, kernel-3, padding-1 convolutions: s -> floor((s-1)/2)+1."""
    sizes = [size]
    for _ in range(n):
        sizes.append((sizes[-1] - 1) // 2 + 1)
    return sizes


class Encoder(nn.Module):
    """x (B, *input_shape) [, y (B, cond_dim)] -> (B, out_dim), with ``out_act`` on the output."""

    def __init__(self, cfg: ModelConfig, out_dim: int, cond_dim: int = 0, out_act: str = "linear"):
        super().__init__()
        self.arch, self.cond_dim = cfg.arch, cond_dim
        shape = tuple(cfg.input_shape)
        if cfg.encoder is not None:  # the user's network, then aekit's head sized by a dry forward pass
            self.arch = "custom"
            net = build_network(cfg.encoder, cfg.encoder_args, role="encoder", input_shape=shape,
                                latent_dim=cfg.latent_dim)
            self.body = CustomBody(net)
            feat = _dry_run(self.body, shape, f"custom encoder {cfg.encoder}").shape[1]
            self.mlp = MLP([feat + cond_dim, out_dim], cfg.activation, out_act)
        elif cfg.arch == "mlp":
            self.body = None
            self.mlp = MLP([math.prod(shape) + cond_dim, *cfg.hidden, out_dim], cfg.activation, out_act)
        else:
            c, h, w = shape
            layers, chans = [], [c, *cfg.hidden]
            for a, b in zip(chans[:-1], chans[1:]):
                layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), activation(cfg.activation)]
            self.body = nn.Sequential(*layers, nn.Flatten())
            hs, ws = _conv_sizes(h, len(cfg.hidden)), _conv_sizes(w, len(cfg.hidden))
            feat = chans[-1] * hs[-1] * ws[-1]
            self.mlp = MLP([feat + cond_dim, out_dim], cfg.activation, out_act)

    @property
    def custom(self) -> nn.Module | None:
        """The user's network (ModelConfig.encoder), or None for aekit's own."""
        return self.body.net if isinstance(self.body, CustomBody) else None

    def features(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The input of the final MLP: flattened x (mlp) or conv features, with y appended."""
        h = x.flatten(1) if self.body is None else self.body(x)
        if self.cond_dim:
            h = torch.cat([h, y.to(h.dtype)], dim=1)
        return h

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.mlp(self.features(x, y))

    def forward_with_derivatives(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """The output (B, out_dim) and the activation derivatives of the final MLP's layers (MLP.
        forward_with_derivatives); the last entry, (B, out_dim), is the output activation's."""
        return self.mlp.forward_with_derivatives(self.features(x, y))


class Decoder(nn.Module):
    """z (B, latent_dim) [, y (B, cond_dim)] -> distribution parameters (B, *input_shape).

    The output is unconstrained: logits for a Bernoulli likelihood, means for a Gaussian one.
    """

    def __init__(self, cfg: ModelConfig, cond_dim: int = 0):
        super().__init__()
        self.shape, self.cond_dim = tuple(cfg.input_shape), cond_dim
        zin = cfg.latent_dim + cond_dim
        self.custom = None
        if cfg.decoder is not None:  # aekit's head ([z, y] -> latent_dim, conditional models only), then the user's
            self.custom = build_network(cfg.decoder, cfg.decoder_args, role="decoder", input_shape=self.shape,
                                        latent_dim=cfg.latent_dim)
            self.mlp = MLP([zin, cfg.latent_dim], "linear") if cond_dim else None
            self.body = None
            out = _dry_run(self.custom, (cfg.latent_dim,), f"custom decoder {cfg.decoder}")
            if tuple(out.shape[1:]) != self.shape:
                raise ConfigError(f"custom decoder {cfg.decoder} maps codes of shape (2, {cfg.latent_dim}) to "
                                  f"{tuple(out.shape)}, but the likelihood reads (B, {', '.join(map(str, self.shape))})"
                                  " (the data's shape); make its output the shape of x")
        elif cfg.arch == "mlp":
            self.mlp = MLP([zin, *reversed(cfg.hidden), math.prod(self.shape)], cfg.activation)
            self.body = None
        else:
            c, h, w = self.shape
            n = len(cfg.hidden)
            hs, ws = _conv_sizes(h, n), _conv_sizes(w, n)
            chans = [c, *cfg.hidden]
            self.start = (chans[-1], hs[-1], ws[-1])
            self.mlp = MLP([zin, math.prod(self.start)], cfg.activation, cfg.activation)
            layers = []
            for i in range(n, 0, -1):  # mirror of the encoder: sizes hs[i] -> hs[i-1]
                op = (hs[i - 1] - (2 * hs[i] - 1), ws[i - 1] - (2 * ws[i] - 1))
                layers.append(nn.ConvTranspose2d(chans[i], chans[i - 1], 3, 2, 1, output_padding=op))
                if i > 1:
                    layers.append(activation(cfg.activation))
            self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        if self.cond_dim:
            z = torch.cat([z, y.to(z.dtype)], dim=1)
        if self.custom is not None:
            return self.custom(z if self.mlp is None else self.mlp(z))
        h = self.mlp(z)
        if self.body is None:
            return h.view(-1, *self.shape)
        return self.body(h.view(-1, *self.start))


class TiedDecoder(nn.Module):
    """MLP decoder whose weights are the transposed encoder weights (only biases are its own)."""

    def __init__(self, encoder: Encoder, cfg: ModelConfig):
        super().__init__()
        self.shape = tuple(cfg.input_shape)
        self._encoder = [encoder]  # a list, so the encoder's parameters are not registered twice
        self.biases = nn.ParameterList(
            nn.Parameter(torch.zeros(layer.in_features)) for layer in reversed(encoder.mlp.layers)
        )
        self._acts = nn.ModuleList(activation(cfg.activation) for _ in self.biases)
        self.n = len(self.biases)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        h = z
        layers = list(reversed(self._encoder[0].mlp.layers))
        for i, (layer, b) in enumerate(zip(layers, self.biases)):
            h = F.linear(h, layer.weight.t(), b)
            if i < self.n - 1:
                h = self._acts[i](h)
        return h.view(-1, *self.shape)


# --- custom networks ------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def import_network(path: str, role: str = "network") -> type[nn.Module]:
    """The nn.Module subclass that ``path`` ('package.module:Class', or 'package.module.Class') names.

    A ConfigError (one line) when the module cannot be imported, has no such attribute, or the attribute is
    not an nn.Module subclass: only such classes are ever called with a config's arguments.
    """
    module_name, _, qualname = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not qualname:
        raise ConfigError(f"custom {role} {path!r}: write the import path as 'package.module:Class'")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 -- whatever the user's module raises, one line
        raise ConfigError(f"custom {role} {path!r}: cannot import module {module_name!r} ({_first_line(e)}); "
                          "install it or put its folder on PYTHONPATH") from None
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"custom {role} {path!r}: module {module_name!r} has no attribute {qualname!r}")
        obj = getattr(obj, part)
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        raise ConfigError(f"custom {role} {path!r} is not an nn.Module subclass (got {type(obj).__name__}); name "
                          "the class of the network")
    return obj


def build_network(path: str, args: dict | None, *, role: str, input_shape, latent_dim: int) -> nn.Module:
    """``Class(**args)`` for the class at import path ``path``, with ``input_shape`` (a tuple) and ``latent_dim``
    added where ``Class.__init__`` names them and ``args`` do not. Any failure is one ConfigError line."""
    cls = import_network(path, role)
    kwargs = dict(args or {})
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    data = {"input_shape": tuple(int(s) for s in input_shape), "latent_dim": int(latent_dim)}
    kwargs.update({k: v for k, v in data.items() if k in params and k not in kwargs})
    try:
        net = cls(**kwargs)
    except Exception as e:  # noqa: BLE001 -- the user's constructor: any error, one line
        raise ConfigError(f"custom {role} {path}({_kwargs_text(kwargs)}) could not be built ({_first_line(e)}); "
                          f"check --{role}-args") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"custom {role} {path} did not return an nn.Module")
    return net


def _kwargs_text(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def network_spec(module: nn.Module, role: str = "network") -> tuple[str, dict]:
    """(import path, JSON keyword arguments) that rebuild an instance's network in another process.

    The class must be importable under its own name (not defined in ``__main__`` or inside a function). Its
    arguments come from ``module.get_config()`` when the class defines it (a dict, as Keras' layers do), else,
    as scikit-learn's ``get_params`` reads them, from the attributes named like the parameters of ``__init__``
    (``self.width = width``); ``input_shape`` and ``latent_dim`` are left out (aekit passes them), and so are
    torch's factory arguments ``device`` and ``dtype``. Anything
    else is a ConfigError that says to use the import-path form (``encoder="package.module:Class"`` with
    ``encoder_args``). ``registry.build`` then checks that the rebuilt network has the instance's parameters and
    copies its weights.
    """
    cls = type(module)
    path = f"{cls.__module__}:{cls.__qualname__}"
    fix = (f"pass {role}='package.module:Class' and {role}_args={{...}} instead of an instance (aekit saves a "
           "network as its import path and arguments, never as a pickle)")
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise ConfigError(f"custom {role}: class {cls.__qualname__} is defined in {cls.__module__} "
                          f"{'(a script)' if cls.__module__ == '__main__' else 'inside a function'}, so another "
                          f"process cannot import it; move it to a module, or {fix}")
    try:
        found = import_network(path, role)
    except ConfigError:
        found = None
    if found is not cls:
        raise ConfigError(f"custom {role}: class {cls.__qualname__} cannot be imported again as {path}; {fix}")
    if callable(getattr(module, "get_config", None)):
        args = module.get_config()
        if not isinstance(args, dict):
            raise ConfigError(f"custom {role} {path}: get_config() must return a dict of __init__ arguments, got "
                              f"{type(args).__name__}")
    else:
        args = {}
        for name, p in inspect.signature(cls).parameters.items():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if name in DATA_ARGS or name in ("device", "dtype"):
                continue  # aekit passes the first from the model's config and builds on its own device and dtype
            value = getattr(module, name, inspect.Parameter.empty)
            if value is inspect.Parameter.empty:
                raise ConfigError(f"custom {role} {path}: the argument {name!r} of {cls.__qualname__}() cannot be "
                                  f"recovered from the instance (no attribute {name!r} and no get_config()); store "
                                  f"each __init__ argument as an attribute of the same name, define get_config(), or "
                                  f"{fix}")
            args[name] = list(value) if isinstance(value, tuple) else value
    args = {k: v for k, v in args.items() if k not in DATA_ARGS}
    for name, value in args.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ConfigError(f"custom {role} {path}: its arguments are not all JSON values (argument {name!r} is a "
                              f"{type(value).__name__}); {fix}") from None
    return path, json_object(args, f"custom {role} {path}")


def _dry_run(net: nn.Module, shape: tuple[int, ...], what: str) -> Tensor:
    """net(zeros (2, *shape)) in eval mode without autograd, on the current default device (the meta device while
    registry sizes a model): the output's shape is what a custom network is checked and sized by."""
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros((2, *shape)))
    except Exception as e:  # noqa: BLE001 -- the user's forward: any error, one line
        raise ConfigError(f"{what} failed on a batch of zeros of shape {(2, *shape)} ({_first_line(e)})") from None
    finally:
        net.train(was)
    if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != 2:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(f"{what} must return one tensor with the batch first, (B, ...), got {got} for a batch "
                          f"of 2")
    return out


class CustomBody(nn.Module):
    """A user's encoder network, its output flattened: x (B, *input_shape) -> (B, F)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)
