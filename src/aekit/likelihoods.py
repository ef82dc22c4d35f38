"""Decoder likelihoods p(x|z): log-probabilities in nats, summed over data dimensions.

Every family reads its reconstruction term from here, so the Bernoulli/Gaussian choice is written once.
Shapes: ``x`` and ``params`` are (B, *sample_shape); ``log_prob`` returns (B,).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig

LOG_2PI = math.log(2 * math.pi)


class Likelihood(nn.Module):
    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError


class Bernoulli(Likelihood):
    """log p(x|z) = sum_d x_d log sigmoid(l_d) + (1 - x_d) log(1 - sigmoid(l_d)), from logits l.

    Computed with ``binary_cross_entropy_with_logits`` (stable: never log of a probability). Valid for
    any x in [0,1] (the continuous "Bernoulli" of grey images) and exact for binary x.
    """

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        return -F.binary_cross_entropy_with_logits(params, x, reduction="none").flatten(1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)

    def sample(self, params, generator=None):
        return torch.bernoulli(torch.sigmoid(params), generator=generator)


class Gaussian(Likelihood):
    """log p(x|z) = sum_d [ -(x_d - mu_d)^2 / (2 sigma_d^2) - log sigma_d - log(2 pi)/2 ].

    ``learn`` = "none" (fixed sigma), "shared" (one learned sigma) or "per_dim" (one per data dimension).
    With a fixed sigma = 1 this is the sum of squared errors / 2 plus a constant.
    """

    def __init__(self, shape: tuple[int, ...], sigma: float = 1.0, learn: str = "none"):
        super().__init__()
        init = torch.full(shape if learn == "per_dim" else (), math.log(sigma))
        if learn == "none":
            self.register_buffer("log_sigma", init)
        else:
            self.log_sigma = nn.Parameter(init)

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        z = (x - params) * torch.exp(-self.log_sigma)
        lp = -0.5 * z * z - self.log_sigma - 0.5 * LOG_2PI
        return lp.flatten(1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        return params

    def sample(self, params, generator=None):
        eps = torch.randn(params.shape, generator=generator, device=params.device, dtype=params.dtype)
        return params + torch.exp(self.log_sigma) * eps


def build_likelihood(cfg: ModelConfig) -> Likelihood:
    if cfg.likelihood == "bernoulli":
        return Bernoulli()
    return Gaussian(tuple(cfg.input_shape), cfg.sigma, cfg.learn_sigma)


def bits_per_dim(nats_per_example: float, dim: int) -> float:
    """Convert nats per example to bits per data dimension: nats / (D ln 2)."""
    return nats_per_example / (dim * math.log(2))
