"""Vanilla undercomplete autoencoder, and the base of the deterministic families (dae, sae, cae).

loss = -log p(x | h),  h = f(x)   (Bernoulli cross-entropy from logits, or Gaussian / squared error)

The regularized families change one hook each: ``corrupt`` (denoising) or ``encode_with_penalty``
(sparse, contractive); the objective is assembled here once. The contraction diagnostic of the whole
family (``contraction_metrics``) is written here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..config import ACTIVATIONS, ModelConfig, opt
from ..errors import ConfigError
from ..likelihoods import build_likelihood
from ..nets import Decoder, Encoder, TiedDecoder
from ..regularizers import encoder_jacobian_sq_norm
from .base import Autoencoder, Capabilities, Output

if TYPE_CHECKING:
    from ..metrics import DiagnosticData

__all__ = ["AEConfig", "SATURATION_THRESHOLD", "contraction_metrics", "AE"]


@dataclass(frozen=True)
class AEConfig(ModelConfig):
    code_activation: str = opt("linear", "activation of the code h", choices=ACTIVATIONS)
    tied: bool = opt(False, "MLP only: the decoder uses the transposed encoder weights")

    def validate(self) -> None:
        super().validate()
        if self.tied and self.arch != "mlp":
            raise ConfigError("tied weights need arch=mlp; drop --tied or use --arch mlp")
        if self.tied and (self.encoder is not None or self.decoder is not None):
            raise ConfigError("tied weights transpose aekit's own MLP encoder; drop --tied with a custom --encoder "
                              "or --decoder")


SATURATION_THRESHOLD = 0.05


def contraction_metrics(model: AE, data: DiagnosticData, batch_size: int = 256) -> dict[str, float]:
    """Diagnostic ``contraction``: how much the encoder f contracts (Rifai et al., ICML 2011), on data.x,
    for every family of the AE kind.

    - ``contraction_jacobian_norm``: mean over examples of the Frobenius norm ||J_f(x)||_F
      (not squared; ``regularizers.encoder_jacobian_sq_norm``);
    - ``contraction_saturated_fraction``: share of (example, code unit) pairs whose code activation is
      saturated, i.e. its derivative at the pre-activation is below 0.05 (sigmoid: at most 0.25,
      tanh: at most 1; a relu unit is saturated exactly when it is off, derivative 0; a linear code
      never saturates). Rifai et al. show that contraction comes from such saturated units.
    """
    x, enc = data.x, model.encoder
    norms, derivs = [], []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].to(model.device)
        with torch.no_grad():
            _, d = enc.forward_with_derivatives(xb)
        derivs.append(d[-1].detach())
        _, sq = encoder_jacobian_sq_norm(enc, xb)
        norms.append(sq.detach().clamp_min(0).sqrt())
    return {"contraction_jacobian_norm": torch.cat(norms).mean().item(),
            "contraction_saturated_fraction": (torch.cat(derivs) < SATURATION_THRESHOLD).float().mean().item()}


class AE(Autoencoder):
    """Deterministic autoencoder h = f(x), x_hat = g(h)."""

    Config = AEConfig
    name = "ae"
    capabilities = Capabilities(diagnostics=("contraction",))
    diagnostic_functions = {"contraction": contraction_metrics}

    def __init__(self, config: AEConfig):
        super().__init__(config)
        cfg = self.config
        self.encoder = Encoder(cfg, cfg.latent_dim, out_act=cfg.code_activation)
        self.decoder = TiedDecoder(self.encoder, cfg) if cfg.tied else Decoder(cfg)
        self.likelihood = build_likelihood(cfg)

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self._encode(x)

    def _encode(self, x: Tensor) -> Tensor:
        """The code h = f(x), (B, *shape) -> (B, K), for tensors only: what the training objective calls."""
        self.check_input(x)
        return self.encoder(x)

    def corrupt(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Input corruption during training (denoising family), x (B, *shape) -> (B, *shape). Default: none."""
        return x

    def encode_with_penalty(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Code and weighted penalties (scalars) added to the loss. Default: no penalty."""
        return self._encode(x), {}

    def forward(self, x: Tensor, y: Tensor | None = None) -> Output:
        x_in = self.corrupt(x) if self.training else x
        h, penalties = self.encode_with_penalty(x_in)
        recon = -self.recon_log_prob(x, self.decoder(h)).mean()  # against the clean x
        loss = recon
        for v in penalties.values():
            loss = loss + v
        return Output(loss, {"recon": recon.detach(), **{k: v.detach() for k, v in penalties.items()}})
