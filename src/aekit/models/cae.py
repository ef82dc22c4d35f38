"""Contractive autoencoder (Rifai et al., ICML 2011).

loss = -log p(x | f(x)) + contraction * ||J_f(x)||_F^2, the Frobenius norm of the encoder Jacobian,
computed exactly and without one backward pass per code unit (see regularizers.encoder_jacobian_sq_norm).
Rifai's original encoder is one sigmoid layer: ``--hidden none --code-activation sigmoid``.

``jacobian="projection"`` trains on an unbiased random-projection estimate of the same norm instead
(regularizers.encoder_jacobian_sq_norm_estimate, ``jacobian_projections`` draws): far cheaper when the
first hidden layer is wide and the batch small, at the price of a noisy penalty. Evaluation
(validation loss, the contraction diagnostics) always uses the exact norm.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..config import opt
from ..regularizers import encoder_jacobian_sq_norm, encoder_jacobian_sq_norm_estimate
from .ae import AE, AEConfig
from .base import Capabilities

__all__ = ["CAEConfig", "CAE"]


@dataclass(frozen=True)
class CAEConfig(AEConfig):
    contraction: float = opt(0.1, "weight lambda of the contractive penalty ||J_f(x)||_F^2")
    jacobian: str = opt("exact", "how training computes ||J||_F^2: exact, or an unbiased random-projection "
                        "estimate (faster for wide first layers; evaluation stays exact)",
                        choices=("exact", "projection"))
    jacobian_projections: int = opt(4, "random projections per batch when --jacobian projection")

    def validate(self) -> None:
        super().validate()
        self._check_range("contraction", 0)
        self._check_range("jacobian_projections", 1)


class CAE(AE):
    Config = CAEConfig
    name = "cae"
    capabilities = Capabilities(diagnostics=("contraction",))

    def encode_with_penalty(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        if self.training and cfg.jacobian == "projection":
            h, sq = encoder_jacobian_sq_norm_estimate(self.encoder, x, cfg.jacobian_projections)
        else:
            h, sq = encoder_jacobian_sq_norm(self.encoder, x)
        return h, {"contractive": cfg.contraction * sq.mean()}
