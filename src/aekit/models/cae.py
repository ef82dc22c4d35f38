"""Contractive autoencoder (Rifai et al., ICML 2011).

loss = -log p(x | f(x)) + contraction * ||J_f(x)||_F^2, the Frobenius norm of the encoder Jacobian,
computed exactly and without one backward pass per code unit (see regularizers.encoder_jacobian_sq_norm).
Rifai's original encoder is one sigmoid layer: ``--hidden none --code-activation sigmoid``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..config import opt
from ..regularizers import encoder_jacobian_sq_norm
from .ae import AE, AEConfig


@dataclass(frozen=True)
class CAEConfig(AEConfig):
    contraction: float = opt(0.1, "weight lambda of the contractive penalty ||J_f(x)||_F^2")

    def validate(self) -> None:
        super().validate()
        self._check_range("contraction", 0)


class CAE(AE):
    Config = CAEConfig
    name = "cae"
    diagnostics = ("contraction",)

    def encode_with_penalty(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        h, sq = encoder_jacobian_sq_norm(self.encoder, x)
        return h, {"contractive": self.config.contraction * sq.mean()}
