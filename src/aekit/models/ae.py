"""Vanilla undercomplete autoencoder, and the base of the deterministic families (dae, sae, cae).

loss = -log p(x | h),  h = f(x)   (Bernoulli cross-entropy from logits, or Gaussian / squared error)

The regularized families change one hook each: ``corrupt`` (denoising) or ``encode_with_penalty``
(sparse, contractive); the objective is assembled here once.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..config import ACTIVATIONS, ModelConfig, opt
from ..errors import ConfigError
from ..likelihoods import build_likelihood
from ..nets import Decoder, Encoder, TiedDecoder
from .base import Autoencoder, Output


@dataclass(frozen=True)
class AEConfig(ModelConfig):
    code_activation: str = opt("linear", "activation of the code h", choices=ACTIVATIONS)
    tied: bool = opt(False, "MLP only: the decoder uses the transposed encoder weights")

    def validate(self) -> None:
        super().validate()
        if self.tied and self.arch != "mlp":
            raise ConfigError("tied weights need arch=mlp; drop --tied or use --arch mlp")


class AE(Autoencoder):
    """Deterministic autoencoder h = f(x), x_hat = g(h)."""

    Config = AEConfig
    name = "ae"
    diagnostics = ("contraction",)

    def __init__(self, config: AEConfig):
        super().__init__(config)
        self.encoder = Encoder(config, config.latent_dim, out_act=config.code_activation)
        self.decoder = TiedDecoder(self.encoder, config) if config.tied else Decoder(config)
        self.likelihood = build_likelihood(config)

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.encoder(x)

    def corrupt(self, x: Tensor) -> Tensor:
        """Input corruption during training (denoising family). Default: none."""
        return x

    def encode_with_penalty(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Code and weighted penalties (scalars) added to the loss. Default: no penalty."""
        return self.encode(x), {}

    def forward(self, x: Tensor, y: Tensor | None = None) -> Output:
        x_in = self.corrupt(x) if self.training else x
        h, penalties = self.encode_with_penalty(x_in)
        recon = -self.recon_log_prob(x, self.decoder(h)).mean()  # against the clean x
        loss = recon
        for v in penalties.values():
            loss = loss + v
        return Output(loss, {"recon": recon.detach(), **{k: v.detach() for k, v in penalties.items()}})
