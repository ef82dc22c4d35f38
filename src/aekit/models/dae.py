"""Denoising autoencoder (Vincent et al., ICML 2008; JMLR 2010).

Train to reconstruct the clean x from a corrupted x~ ~ C(x~|x): loss = -log p(x | f(x~)).
Corruptions: ``gaussian`` x + level * eps; ``mask`` zero each dimension with probability ``level``;
``salt_pepper`` set each dimension with probability ``level`` to its minimum or maximum (0/1 for
images), each with probability 1/2. The corruption is applied in training only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import opt
from .ae import AE, AEConfig


@dataclass(frozen=True)
class DAEConfig(AEConfig):
    noise: str = opt("gaussian", "corruption of the input", choices=("gaussian", "mask", "salt_pepper"))
    noise_level: float = opt(0.3, "gaussian: standard deviation; mask / salt_pepper: probability per dimension")
    salt_value: float = opt(1.0, "salt_pepper: the 'salt' value (the data maximum; 1 for images)")
    pepper_value: float = opt(0.0, "salt_pepper: the 'pepper' value (the data minimum; 0 for images)")

    def validate(self) -> None:
        super().validate()
        self._check_range("noise_level", 0)
        if self.noise != "gaussian":
            self._check_range("noise_level", 0, 1)


def corrupt(x: Tensor, noise: str, level: float, salt: float = 1.0, pepper: float = 0.0,
            generator: torch.Generator | None = None) -> Tensor:
    """Apply a corruption to x (any shape); returns a new tensor of the same shape."""
    if noise == "gaussian":
        return x + level * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if noise == "mask":
        return x * (u >= level)
    hit = u < level
    up = u < level / 2  # half of the hits are salt, half pepper
    return torch.where(hit, torch.where(up, torch.full_like(x, salt), torch.full_like(x, pepper)), x)


class DAE(AE):
    Config = DAEConfig
    name = "dae"
    diagnostics = ("denoising", "contraction")

    def corrupt(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        c = self.config
        return corrupt(x, c.noise, c.noise_level, c.salt_value, c.pepper_value, generator)
