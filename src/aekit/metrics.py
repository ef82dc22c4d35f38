"""Evaluation metrics: pure functions of (model, data) -> numbers.

Reductions: per-example sums over data dimensions averaged over examples (nats), unless the name says
"per dimension". PSNR assumes images in [0,1] (peak 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .models.base import Autoencoder


@torch.no_grad()
def reconstructions(model: Autoencoder, x: Tensor, y: Tensor | None = None, batch_size: int = 1024) -> Tensor:
    """model.reconstruct over x in batches, in eval mode. (N, *shape) -> (N, *shape)."""
    was = model.training
    model.eval()
    outs = [
        model.reconstruct(x[i : i + batch_size], None if y is None else y[i : i + batch_size])
        for i in range(0, x.shape[0], batch_size)
    ]
    model.train(was)
    return torch.cat(outs) if outs else x.new_zeros(x.shape)


@torch.no_grad()
def codes(model: Autoencoder, x: Tensor, y: Tensor | None = None, batch_size: int = 1024) -> Tensor:
    """Deterministic codes model.encode(x) in batches. (N, *shape) -> (N, K)."""
    was = model.training
    model.eval()
    outs = [
        model.encode(x[i : i + batch_size], None if y is None else y[i : i + batch_size])
        for i in range(0, x.shape[0], batch_size)
    ]
    model.train(was)
    return torch.cat(outs)


def mse(x: Tensor, x_hat: Tensor) -> float:
    """Mean squared error per data dimension."""
    return F.mse_loss(x_hat, x).item()


def sse_per_example(x: Tensor, x_hat: Tensor) -> Tensor:
    """Sum of squared errors over dimensions, per example: (N,)."""
    return (x_hat - x).pow(2).flatten(1).sum(1)


def bce(x: Tensor, x_hat: Tensor, eps: float = 1e-7) -> float:
    """Bernoulli cross-entropy in nats per example (sum over dimensions), x and x_hat in [0,1]."""
    p = x_hat.clamp(eps, 1 - eps)
    return F.binary_cross_entropy(p, x, reduction="sum").item() / x.shape[0]


def psnr(x: Tensor, x_hat: Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, averaged over images: 10 log10(peak^2 / MSE_i)."""
    m = (x_hat - x).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return (10 * torch.log10(peak**2 / m)).mean().item()


def reconstruction_metrics(model: Autoencoder, dataset, split: str = "test") -> dict[str, float]:
    """MSE per dimension, SSE per example, PSNR and Bernoulli cross-entropy (images), on one split."""
    x, y = dataset.split(split)
    x_hat = reconstructions(model, x, y)
    out = {"mse": mse(x, x_hat), "sse_per_example": sse_per_example(x, x_hat).mean().item()}
    if dataset.kind == "image":
        out["psnr_db"] = psnr(x, x_hat)
        out["bce_nats"] = bce(x, x_hat)
    else:  # the error in the user's units, per feature
        out["rmse_user_units"] = math.sqrt(F.mse_loss(dataset.to_user_units(x_hat), dataset.to_user_units(x)).item())
    return out


def evaluate(model: Autoencoder, dataset, split: str = "test") -> dict[str, float]:
    """Every metric that applies to the model on ``split``."""
    return reconstruction_metrics(model, dataset, split)
