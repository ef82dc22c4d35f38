"""Sparse autoencoder: a penalty on the code the decoder reads, so the codes really are sparse.

``sparsity="l1"``: loss += weight * mean_b sum_k |h_k|  (activity regularization; relu code by default)
``sparsity="kl"``: loss += weight * sum_k KL(rho || rho_hat_k)  (Ng 2011; sigmoid code, rho_hat the
batch-mean activation)

``code_activation="auto"`` stays in the config as given; ``resolved()`` makes it relu (l1) or sigmoid (kl).
Diagnostic ``sparsity`` (``sparsity_metrics``): how sparse the codes of a split are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from ..config import opt
from ..errors import ConfigError
from ..regularizers import kl_sparsity, l1_activity
from .ae import AE, AEConfig
from .base import Capabilities

if TYPE_CHECKING:
    from ..metrics import DiagnosticData

__all__ = ["SAEConfig", "sparsity_metrics", "SAE"]


@dataclass(frozen=True)
class SAEConfig(AEConfig):
    code_activation: str = opt("auto", "code activation (auto: relu for l1, sigmoid for kl)",
                               choices=("auto", "relu", "sigmoid", "linear", "tanh", "leaky_relu", "elu"))
    sparsity: str = opt("l1", "sparsity penalty", choices=("l1", "kl"))
    sparsity_weight: float = opt(1e-3, "weight of the sparsity penalty (l1 default 1e-3; try 0.1-3 for kl)")
    rho: float = opt(0.05, "kl: target mean activation of each code unit")
    latent_dim: int = opt(64, "size of the code z (sparse codes are often overcomplete)")

    def resolved(self):
        c = super().resolved()
        if c.code_activation == "auto":
            c = dataclasses.replace(c, code_activation="relu" if c.sparsity == "l1" else "sigmoid")
        return c

    def validate(self) -> None:
        super().validate()
        self._check_range("sparsity_weight", 0)
        self._check_range("rho", 0, 1, lo_open=True, hi_open=True)
        if self.sparsity == "kl" and self.code_activation != "sigmoid":
            raise ConfigError(
                f"sparsity=kl needs code activations in (0,1): set --code-activation sigmoid "
                f"(got {self.code_activation})"
            )


def sparsity_metrics(model: SAE, data: DiagnosticData) -> dict[str, float]:
    """Diagnostic ``sparsity``: ``metrics.sparsity_stats`` of the codes of data.x; for a KL sparsity penalty
    also its target rho."""
    out = data.sparsity_stats(data.codes())
    if model.config.sparsity == "kl":
        out["sparsity_target_rho"] = float(model.config.rho)
    return out


class SAE(AE):
    Config = SAEConfig
    name = "sae"
    capabilities = Capabilities(diagnostics=("sparsity", "contraction"))
    diagnostic_functions = {**AE.diagnostic_functions, "sparsity": sparsity_metrics}

    def encode_with_penalty(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        h = self._encode(x)
        c = self.config
        if c.sparsity == "l1":
            return h, {"l1": c.sparsity_weight * l1_activity(h).mean()}
        return h, {"kl_sparsity": c.sparsity_weight * kl_sparsity(h, c.rho)}
