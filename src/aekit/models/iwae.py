"""Importance weighted autoencoder (Burda, Grosse & Salakhutdinov, ICLR 2016).

The VAE's networks trained on the K-sample importance-weighted bound instead of the ELBO:

    loss = -log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x),   z_k ~ q(z|x)   (bounds.iw_bound)

It is the ``vae`` family with ``iw_samples`` defaulting to 5; ``--mc-samples`` repeats the bound L times.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import opt
from .vae import VAE, VAEConfig

__all__ = ["IWAEConfig", "IWAE"]


@dataclass(frozen=True)
class IWAEConfig(VAEConfig):
    iw_samples: int = opt(5, "importance samples K of the training bound (K = 1 is the VAE's ELBO)")


class IWAE(VAE):
    Config = IWAEConfig
    name = "iwae"
