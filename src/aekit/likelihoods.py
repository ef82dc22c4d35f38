"""Decoder likelihoods p(x|z): log-probabilities in nats, summed over data dimensions.

Every family reads its reconstruction term from here, so the Bernoulli/Gaussian choice is written once.
Shapes: ``x`` is (B, *sample_shape) and ``params`` (..., B, *sample_shape): leading dimensions of the
parameters (S samples of z per example, as in importance sampling) broadcast against x, which is never
copied S times. ``log_prob`` returns (..., B).

Binarization of [0,1] data lives here too: ``bernoulli_sample`` (dynamic, every training step) and
``binarize_static`` (one seeded sample: static training data and the likelihood evaluation of such runs).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig

__all__ = ["LOG_2PI", "bernoulli_sample", "binarize_static", "Likelihood", "Bernoulli", "Gaussian", "build_likelihood",
           "bits_per_dim", "binarizer"]

LOG_2PI = math.log(2 * math.pi)
_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch.compile / export trace the expression


def bernoulli_sample(p: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A 0/1 sample of Bernoulli(p), elementwise, as ``u < p`` with u ~ U[0, 1): the same law as
    torch.bernoulli, 1.7x faster on this CPU (0.33 vs 0.58 ms for 100 images of 28x28;
    benchmarks/hotpath.py binarize). Used for dynamic binarization on every training step."""
    u = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype)
    return (u < p).to(p.dtype)


def binarize_static(x: Tensor, seed: int) -> Tensor:
    """One fixed Bernoulli sample of x in [0,1] (static binarization), reproducible from ``seed``.

    torch.bernoulli, not bernoulli_sample: a one-off cost, and the fixed binarized sets (e.g. the
    Exemplar-VAE test set in benchmarks/) stay the ones earlier results were measured on."""
    return binarizer(seed, x.device)(x)


def binarizer(seed: int, device) -> Callable[[Tensor], Tensor]:
    """``binarize_static`` a block of rows at a time: called on the consecutive blocks of x in order (on
    ``device``), it returns the blocks of ``binarize_static(x, seed)``. On the CPU, where torch.bernoulli draws
    element after element from the generator (tests/test_metrics.py checks it); elsewhere call it once."""
    g = torch.Generator(device=device).manual_seed(seed)
    return lambda x: torch.bernoulli(x, generator=g)


def _sum_sample_dims(t: Tensor, x: Tensor) -> Tensor:
    """Sum t (..., B, *sample_shape) over the sample dimensions of x (B, *sample_shape): -> (..., B)."""
    return t.flatten(-(x.dim() - 1)).sum(-1) if x.dim() > 1 else t


class Likelihood(nn.Module):
    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        raise NotImplementedError


class Bernoulli(Likelihood):
    """log p(x|z) = sum_d x_d log sigmoid(l_d) + (1 - x_d) log(1 - sigmoid(l_d)), from logits l.

    Stable from logits, never the log of a probability: ``binary_cross_entropy_with_logits`` when x and
    the logits have one shape (training); with S logits per example (importance sampling, MC samples) the
    same value as sum_d [x_d l_d - softplus(l_d)], one product with x per example instead of an S-fold copy
    of x (VAE.log_likelihood with K=1000: 1.2x faster, 1.5x with its smaller decoder chunks;
    benchmarks/hotpath.py bernoulli). Valid for any x in [0,1] (the continuous
    "Bernoulli" of grey images) and exact for binary x.
    """

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        lead = params.shape[: params.dim() - x.dim()]
        if math.prod(lead) == 1:  # one set of logits per example (training): the fused BCE kernel
            bce = F.binary_cross_entropy_with_logits(params.reshape(x.shape), x, reduction="none")
            return -_sum_sample_dims(bce, x).view(*lead, -1)
        nd = x.dim() - 1
        params = params.to(torch.promote_types(params.dtype, x.dtype))  # bf16 logits (autocast): sum in fp32
        logits = params.flatten(-nd) if nd else params.unsqueeze(-1)  # (..., B, D)
        xf = x.flatten(1) if nd else x.unsqueeze(-1)  # (B, D)
        return (logits * xf).sum(-1) - F.softplus(logits).sum(-1)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)


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
        if params.shape == x.shape and not (x.requires_grad or self.log_sigma.requires_grad or _compiling()):
            return _FixedGaussianLogProb.apply(x, params, self.log_sigma)  # eager training and validation
        z = (x - params) * torch.exp(-self.log_sigma)
        lp = -0.5 * z * z - self.log_sigma - 0.5 * LOG_2PI
        return _sum_sample_dims(lp, x)

    def mean(self, params: Tensor) -> Tensor:
        return params


class _FixedGaussianLogProb(torch.autograd.Function):
    """``Gaussian.log_prob`` for a fixed sigma and params of x's shape, differentiable in params only, with
    two (B, D) temporaries where autograd's graph of the same expression makes about a dozen (the difference
    on a training step: ``python benchmarks/hotpath.py gaussian``). Bit-identical to the graph,
    values and gradients: the forward makes the same roundings in the same order (in place), and autograd's
    gradient of -0.5 z z is the sum of two equal halves, -0.5 fl(g z) twice, i.e. exactly -fl(g z) (up to
    rounding of subnormal gradients), so d/dparams = fl(fl(g z) e) with e = exp(-log_sigma) and z = (x - params) e.
    tests/test_likelihoods.py compares both, bit for bit."""

    @staticmethod
    def forward(ctx, x: Tensor, params: Tensor, log_sigma: Tensor) -> Tensor:
        e = torch.exp(-log_sigma)
        z = (x - params).mul_(e)
        lp = (-0.5 * z).mul_(z).sub_(log_sigma).sub_(0.5 * LOG_2PI)
        ctx.save_for_backward(z, e)
        return _sum_sample_dims(lp, x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        z, e = ctx.saved_tensors
        g = grad.reshape(grad.shape + (1,) * (z.dim() - grad.dim()))
        return None, (g * z).mul_(e), None


def build_likelihood(cfg: ModelConfig) -> Likelihood:
    if cfg.likelihood == "bernoulli":
        return Bernoulli()
    return Gaussian(tuple(cfg.input_shape), cfg.sigma, cfg.learn_sigma)


def bits_per_dim(nats_per_example: float, dim: int) -> float:
    """Convert nats per example to bits per data dimension: nats / (D ln 2)."""
    return nats_per_example / (dim * math.log(2))
