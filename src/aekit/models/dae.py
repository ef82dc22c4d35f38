"""Denoising autoencoder (Vincent et al., ICML 2008; JMLR 2010).

Train to reconstruct the clean x from a corrupted x~ ~ C(x~|x): loss = -log p(x | f(x~)).
Corruptions: ``gaussian`` x + level * eps; ``mask`` zero each dimension with probability ``level``;
``salt_pepper`` set each dimension with probability ``level`` to its minimum or maximum (0/1 for
images), each with probability 1/2. The corruption is applied in training only.

Diagnostic ``denoising`` (``denoising_metrics``): how much a reconstruction of a corrupted input gains
over the corrupted input itself, in PSNR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..config import opt
from .ae import AE, AEConfig
from .base import Capabilities

if TYPE_CHECKING:
    from ..metrics import DiagnosticData

__all__ = ["DAEConfig", "corrupt", "denoising_metrics", "DAE"]


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


def denoising_metrics(model: DAE, data: DiagnosticData) -> dict[str, float]:
    """Diagnostic ``denoising``, the denoising gain (Vincent et al. 2010): PSNR(denoised, clean) -
    PSNR(noisy, clean), in dB, on data.x.

    The noisy input is ``model.corrupt(x, generator)`` with the model's own corruption and a generator
    seeded with ``data.seed``; the noisy input is not clipped. Both PSNRs are means over examples of
    10 log10(peak^2 / MSE_i), so the gain, mean_i 10 log10(MSE_noisy_i / MSE_denoised_i), does not
    depend on the peak and applies to tables too. Images also get both PSNRs (peak 1).
    """
    x = data.x
    noisy = model.corrupt(x, generator=torch.Generator(device=x.device).manual_seed(data.seed))
    den = data.reconstructions(noisy)
    p_noisy, p_den = data.psnr(x, noisy), data.psnr(x, den)
    out = {"denoise_psnr_gain_db": p_den - p_noisy,
           "denoise_mse_noisy": data.mse(x, noisy), "denoise_mse_denoised": data.mse(x, den)}
    if data.kind == "image":
        out["denoise_psnr_noisy_db"], out["denoise_psnr_denoised_db"] = p_noisy, p_den
    return out


class DAE(AE):
    Config = DAEConfig
    name = "dae"
    capabilities = Capabilities(diagnostics=("denoising", "contraction"))
    diagnostic_functions = {**AE.diagnostic_functions, "denoising": denoising_metrics}

    def corrupt(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        c = self.config
        return corrupt(x, c.noise, c.noise_level, c.salt_value, c.pepper_value, generator)

    def reconstruction_rows(self, x: Tensor, y: Tensor | None = None,
                            generator: torch.Generator | None = None) -> tuple[str, dict[str, Tensor]]:
        noisy = self.corrupt(x, generator)
        return ("Clean inputs, their corruption by the model's noise, and the reconstruction of the noisy input",
                {"clean": x, "noisy": noisy, "denoised": self.reconstruct(noisy, y)})
