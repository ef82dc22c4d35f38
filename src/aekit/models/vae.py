"""Variational autoencoder (Kingma & Welling, ICLR 2014; Rezende et al., ICML 2014); base of iwae and cvae.

q(z|x) = N(mu(x), diag exp(logvar(x))),  p(z) = N(0, I),  p(x|z) the decoder likelihood (likelihoods.py).

    loss = -(1/L) sum_l log p(x|z_l) + beta_t * KL(q(z|x) || p(z)),   z_l = mu + exp(logvar / 2) * eps_l

with the closed-form KL (regularizers.kl_normal_standard) and L = ``mc_samples`` samples decoded in one
call of batch L*B. Options: ``beta`` (beta-VAE, Higgins et al. 2017), ``kl_warmup_epochs`` (beta_t =
beta * min(1, epoch / kl_warmup_epochs), epoch counted from 0; Bowman et al. 2016, Sonderby et al. 2016),
``free_bits`` (Kingma et al. 2016: the KL of each latent dimension, averaged over the batch, is replaced
by max(KL_k, free_bits)). ``iw_samples`` K > 1 trains on the importance-weighted bound instead
(bounds.iw_bound; Burda et al. 2016), averaged over the L Monte-Carlo repetitions.

Annealing and free bits act in training mode only: in eval mode (validation, model selection) the loss is
recon + beta * KL, so a warm-up does not make its early epochs look best.

q(z|x) is a posterior.DiagonalGaussian (``posterior(x, y)``): its ``sample`` is the one reparameterization
and its ``kl`` the one closed-form KL of the family. Diagnostics: active units and the MMD between the
aggregated posterior and the prior (shared ones, written in aekit.metrics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..bounds import iw_bound, log_importance_weights
from ..config import ModelConfig, opt
from ..errors import ConfigError
from ..likelihoods import build_likelihood
from ..nets import Decoder, Encoder
from ..posterior import DiagonalGaussian
from .base import Autoencoder, Capabilities, Output, check_count

__all__ = ["EVAL_BUDGET", "VAEConfig", "VAE"]

# Rough budget (in float32 values) of activations per decoder call in log_likelihood / elbo evaluation:
# 2**22 (16 MiB) keeps a call's activations in cache; 2**24 measured 1.25x slower for K=1000
# (benchmarks/hotpath.py bernoulli).
EVAL_BUDGET = 2**22


@dataclass(frozen=True)
class VAEConfig(ModelConfig):
    beta: float = opt(1.0, "weight of the KL term (beta-VAE); 1 gives the ELBO")
    kl_warmup_epochs: int = opt(0, "ramp the KL weight linearly from 0 to beta over this many epochs (0: off)")
    free_bits: float = opt(0.0, "free bits: nats per latent dimension of batch-mean KL that are not penalized (0: off)")
    mc_samples: int = opt(1, "Monte-Carlo samples z per example in the training objective")
    iw_samples: int = opt(1, "importance samples K: K > 1 trains on the importance-weighted (IWAE) bound")

    def validate(self) -> None:
        super().validate()  # (that every float option is finite is checked once, in ConfigBase)
        self._check_range("beta", 0)
        self._check_range("kl_warmup_epochs", 0)
        self._check_range("free_bits", 0)
        self._check_range("mc_samples", 1)
        self._check_range("iw_samples", 1)
        if self.iw_samples > 1:
            elbo_only = (("beta", 1.0), ("kl_warmup_epochs", 0), ("free_bits", 0.0))
            changed = [f"{n}={getattr(self, n)}" for n, off in elbo_only if getattr(self, n) != off]
            if changed:
                raise ConfigError(
                    f"{type(self).__name__}: {', '.join(changed)} changes the KL term of the ELBO, but iw_samples="
                    f"{self.iw_samples} trains on the importance-weighted bound, which has no separate KL term; "
                    "drop those options or use --iw-samples 1"
                )


class VAE(Autoencoder):
    """Gaussian-encoder VAE with a standard normal prior; the networks come from nets.py."""

    Config = VAEConfig
    name = "vae"
    capabilities = Capabilities(generative=True, probabilistic=True, diagnostics=("active_units", "prior_mmd"))

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        cfg, c = self.config, self.cond_size()
        self.encoder = Encoder(cfg, 2 * cfg.latent_dim, cond_dim=c)  # -> (mu, logvar)
        self.decoder = Decoder(cfg, cond_dim=c)
        self.likelihood = build_likelihood(cfg)
        self.kl_weight = cfg.beta  # beta_t in training; set_progress ramps it during a warm-up

    # --- conditioning hooks (cvae overrides them) -----------------------------------------------
    def cond_size(self) -> int:
        """Size of the condition vector the encoder and decoder read (0: unconditional)."""
        return 0

    def _sample_condition(self, n: int, y) -> Tensor | None:
        """The decoder's condition for ``sample(n, y)``: (n, cond_size) or None."""
        if y is not None:
            raise ConfigError(
                f"model {self.name} is unconditional: sample() takes no label (got y={y!r}); "
                "drop --label, or train a cvae (or an aae with --supervised) to sample a given class"
            )
        return None

    # --- trainer hook ---------------------------------------------------------------------------
    def set_progress(self, epoch: int, epochs: int) -> None:
        w = self.config.kl_warmup_epochs
        self.kl_weight = self.config.beta * (min(1.0, epoch / w) if w else 1.0)

    # --- encoder side ---------------------------------------------------------------------------
    def posterior(self, x: Tensor, y: Tensor | None = None) -> DiagonalGaussian:
        """q(z|x[, y]) = N(mean, diag exp(logvar)), mean and logvar (B, K)."""
        return self._posterior(x, self.condition(y))

    def _posterior(self, x: Tensor, c: Tensor | None) -> DiagonalGaussian:
        self.check_input(x)
        mu, logvar = self.encoder(x, c).chunk(2, dim=-1)
        return DiagonalGaussian(mu, logvar)

    def encode(self, x: Tensor, y: Tensor | None = None, sample: bool = False,
               generator: torch.Generator | None = None) -> Tensor:
        """Posterior mean (B, K); ``sample=True``: one draw z ~ q(z|x) instead."""
        q = self.posterior(x, y)
        return q.sample(1, generator)[0] if sample else q.mode()

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Codes from the prior N(0, I): (n, K)."""
        n = check_count(n, self.name)
        p = next(self.parameters())
        return torch.randn((n, self.latent_dim), generator=generator, device=p.device, dtype=p.dtype)

    # --- decoder side ---------------------------------------------------------------------------
    def _log_px_z(self, x: Tensor, z: Tensor, c: Tensor | None) -> Tensor:
        """log p(x|z) for S codes per example in one decoder call: x (B, *shape), z (S, B, K) -> (S, B)."""
        s, b = z.shape[:2]
        params = self.decoder(z.flatten(0, 1), None if c is None else c.repeat(s, 1))  # row s*B + b
        return self.recon_log_prob(x, params.view(s, b, *params.shape[1:]))  # x broadcasts over s

    @torch.no_grad()
    def sample(self, n: int, y=None, generator: torch.Generator | None = None) -> Tensor:
        """Means of p(x|z[, y]) for n codes z ~ p(z): (n, *shape), without autograd."""
        c = self._sample_condition(check_count(n, self.name), y)
        return self.likelihood.mean(self.decoder(self.prior_sample(n, generator), c))

    # --- objectives and bounds ------------------------------------------------------------------
    def forward(self, x: Tensor, y: Tensor | None = None) -> Output:
        cfg = self.config
        c = self.condition(y)
        q = self._posterior(x, c)
        n_l, n_k = cfg.mc_samples, cfg.iw_samples
        z = q.sample(n_l * n_k)  # (L*K, B, Kz)
        log_px = self._log_px_z(x, z, c)  # (L*K, B)
        kl_dims = q.kl(per_dim=True)  # (B, Kz): KL per latent dimension
        recon = -log_px.mean(0)  # (B,)
        kl = kl_dims.sum(-1)
        terms = {"recon": recon.mean(), "kl": kl.mean(), "elbo": -(recon + kl).mean()}
        if n_k > 1:
            log_w = log_importance_weights(log_px, z, q.mean, q.logvar).view(n_l, n_k, -1)
            bound = iw_bound(log_w, dim=1).mean(0)  # (B,)
            terms["iw_bound"] = bound.mean()
            loss = -terms["iw_bound"]
        elif self.training:
            kl_term = kl_dims.mean(0).clamp_min(cfg.free_bits).sum() if cfg.free_bits > 0 else terms["kl"]
            loss = terms["recon"] + self.kl_weight * kl_term
        else:
            loss = terms["recon"] + cfg.beta * terms["kl"]
        return Output(loss, {k: v.detach() for k, v in terms.items()})

    def default_chunk_size(self) -> int:
        """Decoder rows (example, sample pairs) per call in evaluation, from a rough activation budget."""
        cfg = self.config
        d = math.prod(cfg.input_shape)
        if cfg.decoder is not None:  # a custom decoder: a guess of a few activations of the output's size
            per_row = 16 * d
        elif cfg.arch == "mlp":
            per_row = 4 * d + sum(cfg.hidden)
        else:  # stride-2 layer i has hidden[i] channels on (H*W) / 4^(i+1) positions
            hw = math.prod(cfg.input_shape[1:])
            per_row = 4 * d + sum(h * max(1, hw // 4 ** (i + 1)) for i, h in enumerate(cfg.hidden))
        return max(1, EVAL_BUDGET // per_row)

    def elbo(self, x: Tensor, y: Tensor | None = None, mc_samples: int = 1,
             generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """ELBO = E_q log p(x|z) - KL(q||p), with ``mc_samples`` draws for the first term and the closed-form KL.

        Returns per-example (B,) tensors: "elbo", "recon" (= -E_q log p(x|z)) and "kl", in nats.
        The samples are decoded in chunks of at most default_chunk_size() rows.
        """
        if mc_samples < 1:
            raise ConfigError(f"model {self.name}: mc_samples must be >= 1, got {mc_samples}")
        c = self.condition(y)
        q = self._posterior(x, c)
        step = max(1, self.default_chunk_size() // max(1, x.shape[0]))
        total = 0.0
        for j in range(0, mc_samples, step):
            z = q.sample(min(step, mc_samples - j), generator)
            total = total + self._log_px_z(x, z, c).sum(0)
        recon = -total / mc_samples
        kl = q.kl()
        return {"elbo": -(recon + kl), "recon": recon, "kl": kl}

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, y: Tensor | None = None, k: int = 1000, chunk_size: int | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """Importance-sampled estimate of log p(x[|y]): log (1/k) sum_j p(x, z_j) / q(z_j|x), z_j ~ q(z|x).

        The K = k importance-weighted bound (bounds.iw_bound): a lower bound in expectation that tends to
        log p(x) as k grows. The encoder runs once per example; the decoder sees at most ``chunk_size``
        (example, sample) pairs per call (default: default_chunk_size()), so memory is bounded for any k.
        x (B, *shape) -> (B,) in nats.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"model {self.name}: the number of importance samples k must be an integer >= 1, "
                              f"got {k!r}")
        rows = self.default_chunk_size() if chunk_size is None else chunk_size
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ConfigError(f"model {self.name}: chunk_size must be a positive integer, got {chunk_size!r}")
        c = self.condition(y)
        q = self._posterior(x, c)
        per_block = max(1, rows // k)  # examples per block; a block holds log w of shape (k, per_block)
        step = max(1, min(k, rows // per_block))  # samples per decoder call
        out = []
        for i in range(0, x.shape[0], per_block):
            block = slice(i, i + per_block)
            xi, qi = x[block], DiagonalGaussian(q.mean[block], q.logvar[block])
            ci = None if c is None else c[block]
            log_w = []
            for j in range(0, k, step):
                z = qi.sample(min(step, k - j), generator)
                log_w.append(log_importance_weights(self._log_px_z(xi, z, ci), z, qi.mean, qi.logvar))
            out.append(iw_bound(torch.cat(log_w), dim=0))
        return torch.cat(out) if out else x.new_zeros(0)
