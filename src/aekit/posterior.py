"""The diagonal Gaussian posterior q(z|x) = N(mean, diag exp(logvar)) of the VAE family, written once
(as diffusers' DiagonalGaussianDistribution).

VAE, IWAE and CVAE return it from ``posterior(x, y)``, and the metrics draw from it; the reparameterized
sample, the KL against the prior and the log density live here and nowhere else (the KL and the density
themselves are regularizers.kl_normal_standard and bounds.gaussian_log_density).

It is a plain object holding two tensors: building one costs no tensor operation, so the training step
pays nothing for it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .bounds import gaussian_log_density
from .regularizers import kl_normal_standard

__all__ = ["DiagonalGaussian"]


class DiagonalGaussian:
    """N(mean, diag exp(logvar)) per example: ``mean`` and ``logvar`` (B, K)."""

    __slots__ = ("mean", "logvar")

    def __init__(self, mean: Tensor, logvar: Tensor):
        self.mean = mean
        self.logvar = logvar

    def sample(self, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """n reparameterized draws z = mean + exp(logvar / 2) * eps, eps ~ N(0, I): (n, B, K), differentiable.

        eps is drawn as one (n, B, K) tensor from ``generator`` (torch's global generator when None).
        """
        mean = self.mean
        eps = torch.randn((n, *mean.shape), generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * self.logvar) * eps

    def mode(self) -> Tensor:
        """The most probable code, the mean: (B, K)."""
        return self.mean

    def kl(self, per_dim: bool = False) -> Tensor:
        """KL(q || N(0, I)) in closed form (regularizers.kl_normal_standard): (B,), or (B, K) per latent
        dimension with ``per_dim`` (for free bits)."""
        if per_dim:
            return kl_normal_standard(self.mean.unsqueeze(-1), self.logvar.unsqueeze(-1))
        return kl_normal_standard(self.mean, self.logvar)

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z|x) (bounds.gaussian_log_density): z (..., B, K) -> (..., B)."""
        return gaussian_log_density(z, self.mean, self.logvar)

    def __repr__(self) -> str:
        return f"DiagonalGaussian(shape={tuple(self.mean.shape)})"
