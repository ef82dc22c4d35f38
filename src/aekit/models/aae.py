"""Adversarial autoencoder (Makhzani, Shlens, Jaitly, Goodfellow & Frey, ICLR workshop 2016).

A deterministic autoencoder whose codes z = f(x) are pushed towards a prior p(z) by a discriminator D on
codes. Three kinds of update phase per batch (the trainer runs them, each stepping only its own optimizer):

    autoencoder:    min_g      -log p(x | g(f(x)))        (the decoder; codes held fixed)
    discriminator:  min_D      -E_{z~p(z)} log D(z) - E_x log(1 - D(f(x)))
                               + gamma/4 (E_{z~p} |grad_z D(z)|^2 + E_x |grad_z D(f(x))|^2)
                    (``disc_steps`` times, each on fresh prior samples; the two losses are in
                    regularizers.py, with the penalty ``r1_penalty``, gamma = ``disc_penalty``, taken on
                    the prior's samples (R1) and on the codes (R2) alike)
    generator:      min_f      -log p(x | g(f(x))) - adv_weight * E_x log D(f(x))     (non-saturating)

Why these defaults (one encoder step on the sum of both its tasks, ``disc_steps=10``, the penalty on prior
samples and codes alike) and what they measure against the paper's scheme and the VAE, at the ``compare``
budget and at equal reconstruction error: docs/theory.md, section 5, and benchmarks/aae_prior.py
(RESULTS_aae_prior_*.md).

Posterior (``posterior``): ``deterministic`` (the default) z = f(x), or the paper's "Gaussian posterior"
(section 2): q(z|x) = N(mu(x), diag sigma(x)^2), a posterior.DiagonalGaussian (``posterior(x)``), with z
drawn by reparameterization in all three phases; ``encode`` gives the mean, and the prior MMD samples q(z|x)
as it does the VAE's (capabilities.stochastic_encoder). A saved config without the key (every run written
before the option, as tests/fixtures/runs_v0_1_0) is deterministic, the default.

Priors (``prior``): ``gaussian`` N(0, I); ``mixture`` of ``n_components`` Gaussians with std
``mixture_std`` whose centres lie at distance ``mixture_radius`` from the origin, placed by ``mixture_layout``
(``mixture_centers``: one code axis each, or the paper's circle in the first two code dimensions).
``supervised``: the label y picks the component of the prior sample and the discriminator also receives
one-hot(y), so each class is mapped onto its own component (paper, fig. 6); ``sample(n, y)`` then draws
images of class y, and the model needs labels to train
(``capabilities_for``). ``n_components=0`` stays in the config as given; ``resolved()`` makes it the
number of classes (supervised) or 10. Diagnostics: the MMD between the codes and the prior, and for
supervised=True the conditional-generation accuracy (shared ones, written in aekit.metrics).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig, opt
from ..errors import ConfigError
from ..likelihoods import build_likelihood
from ..nets import MLP, Decoder, Encoder
from ..posterior import DiagonalGaussian
from ..regularizers import adversarial_discriminator_loss, adversarial_generator_loss, r1_penalty
from .base import Autoencoder, Capabilities, Output, check_count, class_labels

__all__ = ["POSTERIORS", "LAYOUTS", "AAEConfig", "circle_centers", "mixture_centers", "AAE"]

POSTERIORS = ("deterministic", "gaussian")
LAYOUTS = ("axes", "circle")


@dataclass(frozen=True)
class AAEConfig(ModelConfig):
    prior: str = opt("gaussian", "prior p(z) the codes are matched to", choices=("gaussian", "mixture"))
    n_components: int = opt(0, "mixture prior: number of Gaussians (0: the number of classes when supervised, else 10)")
    mixture_radius: float = opt(4.0, "mixture prior: distance of each component centre from the origin")
    mixture_layout: str = opt("axes", "mixture prior: where the centres lie: 'axes', component i at +/- radius on "
                                      "its own code axis (the circle when there are more than 2 x latent_dim "
                                      "components), or 'circle', evenly on a circle in code dims 1-2 (the paper's "
                                      "2-D figures)", choices=LAYOUTS)
    mixture_std: float = opt(0.5, "mixture prior: standard deviation of each component")
    supervised: bool = opt(False, "mixture prior: the label picks the component and the discriminator sees it")
    disc_hidden: tuple[int, ...] = opt((64, 64), "discriminator MLP hidden sizes (too strong a discriminator "
                                       "stalls the encoder)")
    disc_lr_scale: float = opt(1.0, "learning rate of the discriminator phase, as a multiple of --lr")
    disc_steps: int = opt(10, "discriminator updates per batch, each on fresh prior samples (one lags behind the "
                              "encoder and leaves the codes off the prior)")
    disc_penalty: float = opt(0.3, "gamma of the discriminator's gradient penalty gamma/2 E|grad D|^2, averaged "
                                   "over prior samples (R1) and codes (R2) (damps the adversarial game; 0: off)")
    adv_weight: float = opt(5.0, "weight of the adversarial term -log D(f(x)) next to the reconstruction in "
                                 "the encoder's objective")
    posterior: str = opt("deterministic", "q(z|x): 'deterministic' z = f(x); 'gaussian' N(mu(x), diag sigma(x)^2), "
                                          "sampled in every training phase (encode gives the mean)",
                         choices=POSTERIORS)

    # a saved config.json without these keys was trained with these values (aekit.Run fills them in; a config
    # built now gets the defaults above)
    LEGACY: ClassVar[dict] = {"mixture_layout": "circle"}

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
        self._check_range("disc_steps", 1)
        self._check_range("disc_penalty", 0)
        self._check_range("adv_weight", 0)
        self._check_range("mixture_radius", 0)
        self._check_range("mixture_std", 0, lo_open=True)
        if any(h < 1 for h in self.disc_hidden):
            raise ConfigError(f"AAEConfig: disc_hidden sizes must be positive integers, "
                              f"got {','.join(map(str, self.disc_hidden))}")
        if self.prior == "mixture" and self.latent_dim < 2:
            raise ConfigError(f"AAEConfig: prior=mixture places its centres in at least two code dimensions; "
                              f"latent_dim must be >= 2, got {self.latent_dim}")


def circle_centers(n: int, radius: float, dim: int) -> Tensor:
    """n points at angles 2 pi c / n on a circle of ``radius`` in the first two of ``dim`` dimensions: (n, dim)."""
    angles = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    c = torch.zeros(n, dim, dtype=torch.float64)
    c[:, 0], c[:, 1] = radius * torch.cos(angles), radius * torch.sin(angles)
    return c.float()


def mixture_centers(n: int, radius: float, dim: int, layout: str) -> Tensor:
    """The n component centres of the mixture prior, (n, dim). ``axes``: centre i at +radius on code axis i
    (then -radius on axis i - dim, for dim < n <= 2 dim): every centre on a direction of its own, at distance
    radius sqrt(2) (or 2 radius) from the others. With more than 2 dim components, or ``circle``: the circle.

    Why axes by default (the circle leaves the class to the adversary's imperfect match in the other code
    dimensions): docs/theory.md, section 5."""
    if layout == "circle" or n > 2 * dim:
        return circle_centers(n, radius, dim)
    c = torch.zeros(n, dim)
    i = torch.arange(n)
    c[i, i % dim] = torch.where(i < dim, radius, -radius).float()
    return c


class AAE(Autoencoder):
    """Encoder (deterministic, or Gaussian: -> (mu, logvar)) and decoder, and a discriminator MLP on codes (logits).
    Every phase takes its codes from ``_codes``: f(x), or one draw of q(z|x)."""

    Config = AAEConfig
    name = "aae"
    capabilities = Capabilities(generative=True, diagnostics=("prior_mmd",))

    @classmethod
    def capabilities_for(cls, config: AAEConfig) -> Capabilities:
        """posterior='gaussian': codes are drawn from ``posterior(x)`` (stochastic_encoder). supervised=True: the
        labels pick the prior's components, so training needs them, and samples of a given class can be judged
        (conditional-generation accuracy)."""
        caps = cls.capabilities
        if config.posterior == "gaussian":
            caps = dataclasses.replace(caps, stochastic_encoder=True)
        if not config.supervised:
            return caps
        return dataclasses.replace(caps, needs_labels=True, diagnostics=(*caps.diagnostics, "conditional_accuracy"))

    def __init__(self, config: AAEConfig):
        super().__init__(config)
        cfg = self.config
        self.stochastic = cfg.posterior == "gaussian"
        self.encoder = Encoder(cfg, 2 * cfg.latent_dim if self.stochastic else cfg.latent_dim)  # [-> (mu, logvar)]
        self.decoder = Decoder(cfg)
        self.likelihood = build_likelihood(cfg)
        n_lab = cfg.num_classes if cfg.supervised else 0
        self.discriminator = MLP([cfg.latent_dim + n_lab, *cfg.disc_hidden, 1], cfg.activation)
        centers = torch.empty(cfg.n_components, cfg.latent_dim)  # on the meta device while registry sizes it
        if not centers.is_meta:  # (a meta arange would import torch's compiler stack: a second per process)
            centers = mixture_centers(cfg.n_components, cfg.mixture_radius, cfg.latent_dim,
                                      cfg.mixture_layout).to(centers.device)
        self.register_buffer("centers", centers, persistent=False)  # (n_components, K), follows .to(device)

    def posterior(self, x: Tensor, y: Tensor | None = None) -> DiagonalGaussian:
        """posterior='gaussian': q(z|x) = N(mean, diag exp(logvar)), mean and logvar (B, K)."""
        if not self.stochastic:
            raise ConfigError(f"model {self.name} with posterior='deterministic' has no posterior distribution: "
                              "its codes are encode(x); train with --posterior gaussian for one")
        self.check_input(x)
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return DiagonalGaussian(mu, logvar)

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Deterministic codes (B, K): f(x), or the posterior mean for posterior='gaussian'."""
        self.check_input(x)
        z = self.encoder(x)
        return z[:, : self.latent_dim] if self.stochastic else z

    def _codes(self, x: Tensor) -> Tensor:
        """The codes the training phases use: one reparameterized draw z ~ q(z|x) (gaussian posterior, from
        torch's global generator, which the trainer seeds), else f(x). (B, *shape) -> (B, K)."""
        if not self.stochastic:
            return self.encoder(x)
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return DiagonalGaussian(mu, logvar).sample(1)[0]

    def lr_scales(self) -> dict[str, float]:
        return {"discriminator": self.config.disc_lr_scale}

    # --- the prior ------------------------------------------------------------------------------
    def _prior_codes(self, n: int, comp: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """Unchecked prior draws (the training hot path): comp (n,) component indices or None -> (n, K)."""
        c = self.centers
        rng = {} if generator is None else {"generator": generator}  # torch.compile traces no generator=None
        eps = torch.randn((n, self.latent_dim), device=c.device, dtype=c.dtype, **rng)
        if self.config.prior == "gaussian":
            return eps
        if comp is None:
            comp = torch.randint(0, self.config.n_components, (n,), device=c.device, **rng)
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

    def _disc_input(self, z: Tensor, y: Tensor | None) -> Tensor:
        if y is not None:
            z = torch.cat([z, F.one_hot(y.long(), self.config.num_classes).to(z.dtype)], dim=1)
        return z

    def _disc_logits(self, z: Tensor, y: Tensor | None) -> Tensor:
        """D's logit per code: z (B, K) [, labels y (B,)] -> (B,)."""
        return self.discriminator(self._disc_input(z, y)).squeeze(-1)

    def _disc_logits_and_grad(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        """D's logits (B,) and their gradient with respect to the codes, d logit / d z (B, K), by the chain
        rule through D's layers, W_1^T diag(d_1) ... W_L^T: first-order operations, so the penalty on it is
        an ordinary loss (no double backward, which torch.compile cannot trace)."""
        out, derivs = self.discriminator.forward_with_derivatives(self._disc_input(z, y))
        layers = self.discriminator.layers
        g = derivs[-1]  # (B, 1): the output activation's derivative
        for i in range(len(layers) - 1, -1, -1):
            g = g @ layers[i].weight  # (B, out_i) -> (B, in_i)
            if i:
                g = g * derivs[i - 1]
        return out.squeeze(-1), g[:, : self.latent_dim]

    def _recon(self, x: Tensor, z: Tensor) -> Tensor:
        return -self.recon_log_prob(x, self.decoder(z)).mean()

    def _disc(self, z_fake: Tensor, y: Tensor | None, penalty: float = 0.0) -> tuple[Tensor, Tensor]:
        """Discriminator loss (prior samples real, z_fake (B, K) fake) and its gradient penalty (0 when off):
        gamma/2 of the mean of E_p |grad D|^2 (R1) and E_q |grad D|^2 (R2, the same formula on the codes)."""
        z_real = self._prior_codes(z_fake.shape[0], y, None)
        if not penalty:
            loss = adversarial_discriminator_loss(self._disc_logits(z_real, y), self._disc_logits(z_fake, y))
            return loss, loss.new_zeros(())
        real, grad_real = self._disc_logits_and_grad(z_real, y)
        fake, grad_fake = self._disc_logits_and_grad(z_fake, y)
        loss = adversarial_discriminator_loss(real, fake)
        return loss, penalty * (r1_penalty(grad_real) + r1_penalty(grad_fake)) / 2

    def reconstruction_loss(self, x: Tensor, y: Tensor | None = None) -> Output:
        """Phase "autoencoder": the decoder minimises -log p(x | g(f(x))), mean over the batch; the codes are
        fixed here (the encoder learns reconstruction in the generator phase)."""
        with torch.no_grad():
            z = self._codes(x)
        recon = self._recon(x, z)
        return Output(recon, {"recon": recon.detach()})

    def discriminator_loss(self, x: Tensor, y: Tensor | None = None) -> Output:
        """Phase "discriminator" (run ``disc_steps`` times per batch): prior samples are real, codes of x are
        fake (codes detached), plus the gradient penalty on both. Terms are divided by disc_steps, so that
        the logged "disc" is the mean over the steps."""
        y = self._labels(y)
        with torch.no_grad():
            z_fake = self._codes(x)
        loss, pen = self._disc(z_fake, y, self.config.disc_penalty)
        k = self.config.disc_steps
        return Output(loss + pen, {"disc": loss.detach() / k, "disc_penalty": pen.detach() / k})

    def generator_loss(self, x: Tensor, y: Tensor | None = None) -> Output:
        """Phase "generator": the encoder minimises -log p(x | g(f(x))) - adv_weight * log D(f(x)): one step
        on both its tasks, so the adversarial gradient is weighed against the reconstruction's."""
        y = self._labels(y)
        z = self._codes(x)
        gen = adversarial_generator_loss(self._disc_logits(z, y))
        return Output(self._recon(x, z) + self.config.adv_weight * gen, {"gen": gen.detach()})

    def forward(self, x: Tensor, y: Tensor | None = None) -> Output:
        """Validation objective: the reconstruction loss (of a draw of q(z|x) for the Gaussian posterior, as
        in training), plus the adversarial losses (without the penalty) as detached terms."""
        y = self._labels(y)
        z = self._codes(x)
        recon = self._recon(x, z)
        with torch.no_grad():
            disc, _ = self._disc(z, y)
            gen = adversarial_generator_loss(self._disc_logits(z, y))
        return Output(recon, {"recon": recon.detach(), "disc": disc, "gen": gen})

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """autoencoder: the decoder (and a learned sigma); discriminator; generator: the encoder."""
        disc, enc = list(self.discriminator.parameters()), list(self.encoder.parameters())
        elsewhere = {id(p) for p in disc + enc}
        return {
            "autoencoder": [p for p in self.parameters() if id(p) not in elsewhere and p.requires_grad],
            "discriminator": disc,
            "generator": enc,
        }

    def update_phases(self):
        return [
            ("autoencoder", self.reconstruction_loss),
            *[("discriminator", self.discriminator_loss)] * self.config.disc_steps,
            ("generator", self.generator_loss),
        ]
