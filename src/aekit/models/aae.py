"""Adversarial autoencoder (Makhzani, Shlens, Jaitly, Goodfellow & Frey, ICLR workshop 2016).

A deterministic autoencoder whose codes z = f(x) are pushed towards a prior p(z) by a discriminator D on
codes. Three update phases per batch (the trainer runs them, each stepping only its own optimizer):

    autoencoder:    min_{f,g}  -log p(x | g(f(x)))                                   (reconstruction)
    discriminator:  min_D      -E_{z~p(z)} log D(z) - E_x log(1 - D(f(x)))           (regularizers.py)
    generator:      min_f      -E_x log D(f(x))                                      (non-saturating)

Priors (``prior``): ``gaussian`` N(0, I); ``mixture`` of ``n_components`` Gaussians with std
``mixture_std`` whose centres lie on a circle of radius ``mixture_radius`` in the first two code
dimensions (zero elsewhere). ``supervised``: the label y picks the component of the prior sample and the
discriminator also receives one-hot(y), so each class is mapped onto its own component (paper, fig. 6);
``sample(n, y)`` then draws images of class y, and the model needs labels to train
(``capabilities_for``). ``n_components=0`` stays in the config as given; ``resolved()`` makes it the
number of classes (supervised) or 10. Diagnostics: the MMD between the codes and the prior, and for
supervised=True the conditional-generation accuracy (shared ones, written in aekit.metrics).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig, opt
from ..errors import ConfigError
from ..likelihoods import build_likelihood
from ..nets import MLP, Decoder, Encoder
from ..regularizers import adversarial_discriminator_loss, adversarial_generator_loss
from .base import Autoencoder, Capabilities, Output, check_count, class_labels


@dataclass(frozen=True)
class AAEConfig(ModelConfig):
    prior: str = opt("gaussian", "prior p(z) the codes are matched to", choices=("gaussian", "mixture"))
    n_components: int = opt(0, "mixture prior: number of Gaussians (0: the number of classes when supervised, else 10)")
    mixture_radius: float = opt(4.0, "mixture prior: radius of the circle of component centres (code dims 1-2)")
    mixture_std: float = opt(0.5, "mixture prior: standard deviation of each component")
    supervised: bool = opt(False, "mixture prior: the label picks the component and the discriminator sees it")
    disc_hidden: tuple[int, ...] = opt((64, 64), "discriminator MLP hidden sizes (too strong a discriminator "
                                       "stalls the encoder)")
    disc_lr_scale: float = opt(1.0, "learning rate of the discriminator and generator phases, as a multiple of --lr")

    def resolved(self):
        c = super().resolved()
        n = c.num_classes if c.supervised else 10
        if c.n_components == 0 and n:  # supervised without classes stays 0: validate() says what is missing
            c = dataclasses.replace(c, n_components=n)
        return c

    def validate(self) -> None:
        super().validate()
        if self.supervised:
            if self.prior != "mixture":
                raise ConfigError("AAEConfig: supervised=True maps each class onto a mixture component; "
                                  "add --prior mixture")
            if self.num_classes < 1:
                raise ConfigError("AAEConfig: supervised=True needs class labels (num_classes, set from a "
                                  "labelled dataset); train on labelled data or drop --supervised")
            if self.n_components != self.num_classes:
                raise ConfigError(f"AAEConfig: supervised=True needs one component per class: n_components="
                                  f"{self.n_components} but num_classes={self.num_classes}; drop --n-components")
        self._check_range("n_components", 1)
        self._check_range("disc_lr_scale", 0, lo_open=True)
        self._check_range("mixture_radius", 0)
        self._check_range("mixture_std", 0, lo_open=True)
        if any(h < 1 for h in self.disc_hidden):
            raise ConfigError(f"AAEConfig: disc_hidden sizes must be positive integers, "
                              f"got {','.join(map(str, self.disc_hidden))}")
        if self.prior == "mixture" and self.latent_dim < 2:
            raise ConfigError(f"AAEConfig: prior=mixture places its centres in two code dimensions; "
                              f"latent_dim must be >= 2, got {self.latent_dim}")


def circle_centers(n: int, radius: float, dim: int) -> Tensor:
    """n points at angles 2 pi c / n on a circle of ``radius`` in the first two of ``dim`` dimensions: (n, dim)."""
    angles = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    c = torch.zeros(n, dim, dtype=torch.float64)
    c[:, 0], c[:, 1] = radius * torch.cos(angles), radius * torch.sin(angles)
    return c.float()


class AAE(Autoencoder):
    """Deterministic encoder and decoder, and a discriminator MLP on codes (logits)."""

    Config = AAEConfig
    name = "aae"
    capabilities = Capabilities(generative=True, diagnostics=("prior_mmd",))

    @classmethod
    def capabilities_for(cls, config: AAEConfig) -> Capabilities:
        """supervised=True: the labels pick the prior's components, so training needs them, and samples of a
        given class can be judged (conditional-generation accuracy)."""
        if not config.supervised:
            return cls.capabilities
        return dataclasses.replace(cls.capabilities, needs_labels=True,
                                   diagnostics=(*cls.capabilities.diagnostics, "conditional_accuracy"))

    def __init__(self, config: AAEConfig):
        super().__init__(config)
        cfg = self.config
        self.encoder = Encoder(cfg, cfg.latent_dim)
        self.decoder = Decoder(cfg)
        self.likelihood = build_likelihood(cfg)
        n_lab = cfg.num_classes if cfg.supervised else 0
        self.discriminator = MLP([cfg.latent_dim + n_lab, *cfg.disc_hidden, 1], cfg.activation)
        centers = torch.empty(cfg.n_components, cfg.latent_dim)  # on the meta device while registry sizes it
        if not centers.is_meta:  # (a meta arange would import torch's compiler stack: a second per process)
            centers = circle_centers(cfg.n_components, cfg.mixture_radius, cfg.latent_dim).to(centers.device)
        self.register_buffer("centers", centers, persistent=False)  # (n_components, K), follows .to(device)

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        self.check_input(x)
        return self.encoder(x)

    def lr_scales(self) -> dict[str, float]:
        return {"discriminator": self.config.disc_lr_scale, "generator": self.config.disc_lr_scale}

    # --- the prior ------------------------------------------------------------------------------
    def _prior_codes(self, n: int, comp: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """Unchecked prior draws (the training hot path): comp (n,) component indices or None -> (n, K)."""
        c = self.centers
        eps = torch.randn((n, self.latent_dim), generator=generator, device=c.device, dtype=c.dtype)
        if self.config.prior == "gaussian":
            return eps
        if comp is None:
            comp = torch.randint(0, self.config.n_components, (n,), generator=generator, device=c.device)
        return c[comp] + self.config.mixture_std * eps

    def prior_sample(self, n: int, y=None, generator: torch.Generator | None = None) -> Tensor:
        """Codes z ~ p(z): (n, K). Mixture prior: ``y`` (an int or n ints) picks the components, else uniform."""
        n = check_count(n, self.name)
        comp = None
        if y is not None:
            if self.config.prior != "mixture":
                raise ConfigError(f"model {self.name}: the gaussian prior has no components to pick with y")
            comp = class_labels(n, y, self.config.n_components, self.name, self.centers.device)
        return self._prior_codes(n, comp, generator)

    @torch.no_grad()
    def sample(self, n: int, y=None, generator: torch.Generator | None = None) -> Tensor:
        """Means of p(x|z) for z ~ p(z): (n, *shape), without autograd. Supervised: y (an int or n ints) is needed."""
        n = check_count(n, self.name)
        if self.config.supervised:
            comp = class_labels(n, y, self.config.num_classes, self.name, self.centers.device)
        elif y is not None:
            raise ConfigError(
                f"model {self.name} was trained without labels: sample() takes no label (got y={y!r}); "
                "drop --label, or train with --prior mixture --supervised to sample a given class"
            )
        else:
            comp = None
        return self.likelihood.mean(self.decoder(self._prior_codes(n, comp, generator)))

    # --- the three phases -----------------------------------------------------------------------
    def _labels(self, y: Tensor | None) -> Tensor | None:
        if not self.config.supervised:
            return None
        if y is None:
            raise ConfigError(f"model {self.name} with supervised=True needs the class labels y of every batch")
        return y

    def _disc_logits(self, z: Tensor, y: Tensor | None) -> Tensor:
        """D's logit per code: z (B, K) [, labels y (B,)] -> (B,)."""
        if y is not None:
            z = torch.cat([z, F.one_hot(y.long(), self.config.num_classes).to(z.dtype)], dim=1)
        return self.discriminator(z).squeeze(-1)

    def _recon(self, x: Tensor, z: Tensor) -> Tensor:
        return -self.recon_log_prob(x, self.decoder(z)).mean()

    def _disc(self, z_fake: Tensor, y: Tensor | None) -> Tensor:
        z_real = self._prior_codes(z_fake.shape[0], y, None)
        return adversarial_discriminator_loss(self._disc_logits(z_real, y), self._disc_logits(z_fake, y))

    def reconstruction_loss(self, x: Tensor, y: Tensor | None = None) -> Output:
        """Phase "autoencoder": -log p(x | g(f(x))), mean over the batch."""
        recon = self._recon(x, self.encoder(x))
        return Output(recon, {"recon": recon.detach()})

    def discriminator_loss(self, x: Tensor, y: Tensor | None = None) -> Output:
        """Phase "discriminator": prior samples are real, codes of x are fake (codes detached)."""
        y = self._labels(y)
        with torch.no_grad():
            z_fake = self.encoder(x)
        loss = self._disc(z_fake, y)
        return Output(loss, {"disc": loss.detach()})

    def generator_loss(self, x: Tensor, y: Tensor | None = None) -> Output:
        """Phase "generator": the encoder makes its codes look like prior samples to D."""
        loss = adversarial_generator_loss(self._disc_logits(self.encoder(x), self._labels(y)))
        return Output(loss, {"gen": loss.detach()})

    def forward(self, x: Tensor, y: Tensor | None = None) -> Output:
        """Validation objective: the reconstruction loss, plus the adversarial losses as detached terms."""
        y = self._labels(y)
        z = self.encoder(x)
        recon = self._recon(x, z)
        with torch.no_grad():
            disc = self._disc(z, y)
            gen = adversarial_generator_loss(self._disc_logits(z, y))
        return Output(recon, {"recon": recon.detach(), "disc": disc, "gen": gen})

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        disc = list(self.discriminator.parameters())
        in_disc = {id(p) for p in disc}
        return {
            "autoencoder": [p for p in self.parameters() if id(p) not in in_disc and p.requires_grad],
            "discriminator": disc,
            "generator": list(self.encoder.parameters()),
        }

    def update_phases(self):
        return [
            ("autoencoder", self.reconstruction_loss),
            ("discriminator", self.discriminator_loss),
            ("generator", self.generator_loss),
        ]
