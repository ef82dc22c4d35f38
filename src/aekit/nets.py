"""Encoder and decoder networks shared by every family.

``arch="mlp"``: fully connected layers (hidden sizes may be empty: a single linear map).
``arch="conv"``: stride-2 3x3 convolutions that work for any image size (8x8, 28x28, ...); the decoder
mirrors them with transposed convolutions whose output padding is chosen so the output size is exact.

Conditioning (conditional models) concatenates a vector ``y`` (e.g. one-hot labels) to the flattened
input of the MLP, or to the flattened conv features before the last linear layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig


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
        if cfg.arch == "mlp":
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
        if cfg.arch == "mlp":
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
