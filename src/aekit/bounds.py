"""Variational bounds on log p(x), written once: Gaussian log densities and the importance-weighted bound.

For a latent-variable model p(x, z) = p(x|z) p(z), p(z) = N(0, I), and an encoder q(z|x) = N(mu, diag
exp(logvar)), the importance weights of samples z_1..z_K ~ q(z|x) are

    log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)

and the importance-weighted bound (Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders",
ICLR 2016, eq. 8) is

    L_K(x) = E[ log (1/K) sum_k w_k ]  <=  log p(x),

computed as logsumexp_k(log w_k) - log K (never as a log of a sum of exponentials). L_1 is the ELBO;
L_K rises with K (in expectation) and tends to log p(x) as K -> inf, so one K-sample estimate serves as the
training objective of the IWAE (K = a few) and as the test log-likelihood estimate (K = 1000..5000).

Shapes: ``z`` (..., K_lat) with the latent dimension last; densities return (...,).
"""

from __future__ import annotations

import math
import operator

import torch
from torch import Tensor

from .config import check_seed, env_limit
from .errors import ConfigError
from .likelihoods import LOG_2PI, binarize_static, bits_per_dim

__all__ = ["MAX_DECODER_ROWS", "MAX_DECODER_ROWS_ENV", "USUAL_IW_SAMPLES", "gaussian_log_density",
           "log_importance_weights", "iw_bound", "likelihood_metrics", "check_options", "decoder_rows_limit"]

# The ceiling on the work of one likelihood evaluation, in decoder rows: examples x (iw_samples +
# mc_samples). K = 5000 importance samples, the usual count for published test log-likelihoods, on the
# 10,000 Fashion-MNIST test images is 5e7 rows; 1e9 (K = 100,000 on that set) is already hours on a CPU.
# Environment variable AEKIT_MAX_DECODER_ROWS raises or lowers it.
MAX_DECODER_ROWS = 10**9
MAX_DECODER_ROWS_ENV = "AEKIT_MAX_DECODER_ROWS"
USUAL_IW_SAMPLES = 5000


def gaussian_log_density(z: Tensor, mu: Tensor | None = None, logvar: Tensor | None = None) -> Tensor:
    """log N(z; mu, diag exp(logvar)) = -1/2 sum_j [ log 2pi + logvar_j + (z_j - mu_j)^2 exp(-logvar_j) ].

    ``mu`` / ``logvar`` None: the standard normal N(0, I). Broadcasts; sums over the last dimension:
    z (..., K) -> (...,).
    """
    if mu is None:
        return -0.5 * (LOG_2PI + z * z).sum(-1)
    d = z - mu
    return -0.5 * (LOG_2PI + logvar + d * d * torch.exp(-logvar)).sum(-1)


def log_importance_weights(log_px_z: Tensor, z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x) with p(z) = N(0, I), q(z|x) = N(mu, diag exp(logvar)).

    log_px_z (S, B); z (S, B, K); mu, logvar (B, K) -> (S, B).
    """
    return log_px_z + gaussian_log_density(z) - gaussian_log_density(z, mu, logvar)


def iw_bound(log_w: Tensor, dim: int = 0) -> Tensor:
    """The importance-weighted bound log (1/K) sum_k w_k = logsumexp_k log w_k - log K over ``dim``.

    log_w (..., K, ...) -> the same shape without ``dim``. K = 1 gives the single-sample ELBO estimate.
    """
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


@torch.no_grad()
def likelihood_metrics(model, dataset, split: str = "test", iw_samples: int = 1000, mc_samples: int = 1, *,
                       binarize_seed: int | None = None, seed: int = 0, batch_size: int = 1024) -> dict:
    """ELBO and importance-weighted log-likelihood of a probabilistic model on one split of a dataset.

    Per example, averaged over the split, in nats and in bits per data dimension (of the negative values):
    ``elbo_nats`` (recon + KL with ``mc_samples`` reconstruction samples and the closed-form KL),
    ``iw_log_likelihood_nats`` (the K = ``iw_samples`` bound; 0 skips it). ``binarize_seed``: evaluate on
    the static binarization likelihoods.binarize_static(x, binarize_seed), as for a model trained on binary
    data (None: x as it is). All sampling uses a generator seeded with ``seed``: the numbers are
    reproducible.
    The model needs ``elbo`` and ``log_likelihood`` (``capabilities.probabilistic``).
    The sample counts are checked here and only here (metrics.likelihood_metrics and evaluate pass them on):
    ``mc_samples`` >= 1, ``iw_samples`` >= 0, and the decoder rows they cost, examples x (iw_samples +
    mc_samples), at most ``decoder_rows_limit()``.
    The model's training flag is neither read nor changed (``elbo`` and ``log_likelihood`` do not depend
    on it), so several threads may evaluate one model at once.
    """
    if binarize_seed is not None:
        binarize_seed = check_seed(binarize_seed, "binarize_seed")
    x, y = dataset.split(split)
    if x.shape[0] == 0:
        raise ConfigError(f"split {split!r} of dataset {dataset.name!r} is empty; choose another --split")
    mc_samples, iw_samples, seed = check_options(x.shape[0], iw_samples, mc_samples, seed)
    device = model.device
    x = x.to(device)
    y = y.to(device) if y is not None else None
    if binarize_seed is not None:
        x = binarize_static(x, binarize_seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    sums = {"elbo": 0.0, "recon": 0.0, "kl": 0.0, "ll": 0.0}
    for s in range(0, x.shape[0], batch_size):
        xb = x[s : s + batch_size]
        yb = y[s : s + batch_size] if y is not None else None
        e = model.elbo(xb, yb, mc_samples=mc_samples, generator=gen)
        for k in ("elbo", "recon", "kl"):
            sums[k] += e[k].double().sum().item()
        if iw_samples:
            sums["ll"] += model.log_likelihood(xb, yb, k=iw_samples, generator=gen).double().sum().item()
    n, dim = x.shape[0], math.prod(x.shape[1:])
    out = {
        "elbo_nats": sums["elbo"] / n,
        "neg_elbo_bits_per_dim": bits_per_dim(-sums["elbo"] / n, dim),
        "recon_nats": sums["recon"] / n,
        "kl_nats": sums["kl"] / n,
        "mc_samples": int(mc_samples),
    }
    if iw_samples:
        out["iw_log_likelihood_nats"] = sums["ll"] / n
        out["iw_nll_bits_per_dim"] = bits_per_dim(-sums["ll"] / n, dim)
        out["iw_samples"] = int(iw_samples)
    return out


def check_options(n: int, iw_samples, mc_samples, seed) -> tuple[int, int, int]:
    """(mc_samples, iw_samples, seed) of an evaluation of n examples, checked: the counts as Python ints
    (mc >= 1, iw >= 0), the seed one torch accepts, and the decoder rows they cost within the ceiling; a
    ConfigError naming the option otherwise."""
    mc_samples, iw_samples = _count(mc_samples, "--eval-mc-samples", 1), _count(iw_samples, "--eval-iw-samples", 0)
    seed = check_seed(seed)
    _check_work(n, iw_samples, mc_samples)
    return mc_samples, iw_samples, seed


def _count(value, option: str, minimum: int) -> int:
    """A sample count as a Python int >= minimum; a ConfigError naming the option otherwise."""
    try:
        n = -1 if isinstance(value, bool) else operator.index(value)
    except TypeError:
        n = -1
    if n < minimum:
        what = "an integer >= 1" if minimum else "an integer >= 1 (or 0 to skip the log-likelihood estimate)"
        raise ConfigError(f"{option} must be {what}, got {value!r}")
    return n


def decoder_rows_limit() -> int:
    """The most decoder rows one likelihood evaluation may take: AEKIT_MAX_DECODER_ROWS, else MAX_DECODER_ROWS."""
    return env_limit(MAX_DECODER_ROWS_ENV, MAX_DECODER_ROWS)


def _check_work(n: int, iw_samples: int, mc_samples: int) -> None:
    """Refuse an evaluation of n examples whose decoder rows, n x (iw_samples + mc_samples), pass the ceiling."""
    rows, limit = n * (iw_samples + mc_samples), decoder_rows_limit()
    if rows > limit:
        raise ConfigError(
            f"--eval-iw-samples {iw_samples} and --eval-mc-samples {mc_samples} on {n:,} examples would take "
            f"{rows:,} decoder evaluations, more than the limit of {limit:,} ({MAX_DECODER_ROWS_ENV}); published test "
            f"log-likelihoods use K = {USUAL_IW_SAMPLES} ({n * USUAL_IW_SAMPLES:,} here): use fewer samples or a "
            "smaller split"
        )
