"""Evaluation metrics: pure functions of (model, data) -> numbers.

Reductions: per-example sums over data dimensions averaged over examples (nats), unless the name says
"per dimension". PSNR assumes images in [0,1] (peak 1).

``evaluate(model, dataset)`` gathers every metric that applies, deciding only from what the model
declares (``probabilistic``, ``generative``, ``needs_labels`` / ``conditional`` and its
``diagnostics`` names, see ``DIAGNOSTICS``), never from its name or type:

- reconstruction: MSE, SSE, PSNR and Bernoulli cross-entropy (``reconstruction_metrics``);
- likelihood (probabilistic models): test ELBO and importance-sampled log-likelihood (``aekit.bounds``);
- representation (labelled data): linear probe, k-NN and k-means clustering accuracy of the codes;
- anomaly detection (given a normal class or anomalous samples): AUROC and average precision of
  reconstruction error and, for probabilistic models, of the negative ELBO;
- per-family diagnostics: denoising gain, sparsity, contraction, active units, prior MMD,
  conditional-generation accuracy.

Every random choice (corruption, posterior and prior samples, k-means, the reference classifier) is
seeded from ``seed`` through its own ``torch.Generator`` or ``random_state``, or inside
``torch.random.fork_rng`` where a model method draws from the global generator, so evaluation is
reproducible and leaves the caller's global RNG as it was.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError, DataError
from .models.base import Autoencoder

# --------------------------------------------------------------------------------------------------
# Batched model calls


EVAL_BINARIZE_SEED = 0  # runs trained on binarized data: likelihoods on this static binarization of the split

def _batched(fn, tensors: list[Tensor | None], batch_size: int, device) -> list:
    n = tensors[0].shape[0]
    outs = []
    for i in range(0, n, batch_size):
        outs.append(fn(*[None if t is None else t[i : i + batch_size].to(device) for t in tensors]))
    return outs


@contextlib.contextmanager
def _eval_mode(model: Autoencoder):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@contextlib.contextmanager
def _seeded(seed: int):
    """Run a block with the global torch RNG seeded, restoring the caller's RNG state afterwards.

    For model methods that draw from the global generator (e.g. ``elbo``'s reparameterised samples).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def reconstructions(model: Autoencoder, x: Tensor, y: Tensor | None = None, batch_size: int = 1024) -> Tensor:
    """model.reconstruct over x in batches, in eval mode. (N, *shape) -> (N, *shape), on x's device."""
    if x.shape[0] == 0:
        return x.new_zeros(x.shape)
    with _eval_mode(model):
        outs = _batched(model.reconstruct, [x, y], batch_size, model.device)
    return torch.cat(outs).to(x.device)


@torch.no_grad()
def codes(model: Autoencoder, x: Tensor, y: Tensor | None = None, batch_size: int = 1024) -> Tensor:
    """Deterministic codes model.encode(x) in batches. (N, *shape) -> (N, K), on x's device."""
    if x.shape[0] == 0:
        return x.new_zeros((0, model.latent_dim))
    with _eval_mode(model):
        outs = _batched(model.encode, [x, y], batch_size, model.device)
    return torch.cat(outs).to(x.device)


def _uses_labels(model: Autoencoder) -> bool:
    return bool(model.conditional or model.needs_labels)


def _labels_for(model: Autoencoder, y: Tensor | None) -> Tensor | None:
    """The labels to hand to a model: only models that use them (conditional or supervised) get them."""
    return y if _uses_labels(model) else None


# --------------------------------------------------------------------------------------------------
# Reconstruction


def mse(x: Tensor, x_hat: Tensor) -> float:
    """Mean squared error per data dimension."""
    return F.mse_loss(x_hat, x).item()


def sse_per_example(x: Tensor, x_hat: Tensor) -> Tensor:
    """Sum of squared errors over dimensions, per example: (N,)."""
    return (x_hat - x).pow(2).flatten(1).sum(1)


def bce(x: Tensor, x_hat: Tensor, eps: float = 1e-7) -> float:
    """Bernoulli cross-entropy in nats per example (sum over dimensions), x and x_hat in [0,1]."""
    p = x_hat.clamp(eps, 1 - eps)
    return F.binary_cross_entropy(p, x, reduction="sum").item() / x.shape[0]


def psnr(x: Tensor, x_hat: Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, averaged over images: 10 log10(peak^2 / MSE_i)."""
    m = (x_hat - x).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return (10 * torch.log10(peak**2 / m)).mean().item()


def reconstruction_metrics(model: Autoencoder, dataset, split: str = "test") -> dict[str, float]:
    """MSE per dimension, SSE per example, PSNR and Bernoulli cross-entropy (images), on one split."""
    x, y = dataset.split(split)
    x_hat = reconstructions(model, x, _labels_for(model, y))
    out = {"mse": mse(x, x_hat), "sse_per_example": sse_per_example(x, x_hat).mean().item()}
    if dataset.kind == "image":
        out["psnr_db"] = psnr(x, x_hat)
        out["bce_nats"] = bce(x, x_hat)
    else:  # the error in the user's units, per feature
        out["rmse_user_units"] = math.sqrt(F.mse_loss(dataset.to_user_units(x_hat), dataset.to_user_units(x)).item())
    return out


# --------------------------------------------------------------------------------------------------
# Likelihood (probabilistic families)


def likelihood_metrics(model: Autoencoder, dataset, split: str = "test", *, iw_samples: int = 100,
                       mc_samples: int = 1, seed: int = 0, binarize_seed: int | None = None) -> dict[str, float]:
    """Test ELBO and the importance-weighted log-likelihood estimate (``aekit.bounds``), in nats and bits/dim.

    Only for models with ``probabilistic = True``; ``iw_samples`` importance samples per example
    (Burda et al. 2016), ``mc_samples`` Monte Carlo samples of the ELBO. ``binarize_seed``: evaluate on a
    static binarization of the split (for runs trained on binarized data). Empty for other models.
    """
    if not model.probabilistic:
        return {}
    if iw_samples < 1 or mc_samples < 1:
        raise ConfigError(f"iw_samples and mc_samples must be >= 1, got {iw_samples} and {mc_samples}")
    from . import bounds

    with _seeded(seed), _eval_mode(model):
        res = bounds.likelihood_metrics(model, dataset, split, iw_samples, mc_samples, seed=seed,
                                        binarize_seed=binarize_seed)
    return {k: _number(v) for k, v in res.items()}


def _number(v):
    """A plain Python int or float (JSON-ready) from a tensor / numpy scalar."""
    if isinstance(v, Tensor):
        v = v.item()
    if isinstance(v, (np.integer, np.floating)):
        v = v.item()
    return v


# --------------------------------------------------------------------------------------------------
# Representation quality (labelled data)


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)


def linear_probe_accuracy(z_train, y_train, z_test, y_test, *, seed: int = 0, max_iter: int = 1000) -> float:
    """Accuracy on (z_test, y_test) of a logistic regression fitted on (z_train, y_train).

    Codes are standardized with the statistics of z_train (scikit-learn StandardScaler), then a
    multinomial LogisticRegression (L2, C=1, lbfgs) is fitted. z: (N, K), y: (N,) class indices.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(_np(z_train), _np(y_train))
    return float(clf.score(_np(z_test), _np(y_test)))


def knn_accuracy(z_train, y_train, z_test, y_test, *, k: int = 5) -> float:
    """Accuracy of a k-nearest-neighbour classifier (Euclidean, majority vote) on the raw codes.

    Raw rather than standardized codes: standardizing would blow up units that carry almost no
    signal (e.g. the inactive units of a VAE) into noise as large as the informative ones.
    """
    from sklearn.neighbors import KNeighborsClassifier

    zt = _np(z_train)
    clf = KNeighborsClassifier(n_neighbors=min(k, len(zt)))
    clf.fit(zt, _np(y_train))
    return float(clf.score(_np(z_test), _np(y_test)))


def clustering_accuracy(y_true, y_pred) -> float:
    """Accuracy of cluster assignments under the best one-to-one matching of clusters to classes.

    acc = max over injective maps m of (1/N) sum_i [m(pred_i) == true_i], found with the Hungarian
    algorithm (scipy.optimize.linear_sum_assignment) on the cluster x class contingency table. With
    more clusters than classes the unmatched clusters count as errors.
    """
    from scipy.optimize import linear_sum_assignment

    yt, yp = _np(y_true).astype(np.int64).ravel(), _np(y_pred).astype(np.int64).ravel()
    if yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred differ in length: {yt.shape[0]} and {yp.shape[0]}")
    if yt.size == 0:
        return float("nan")
    _, ti = np.unique(yt, return_inverse=True)
    _, pi = np.unique(yp, return_inverse=True)
    table = np.zeros((pi.max() + 1, ti.max() + 1), dtype=np.int64)
    np.add.at(table, (pi, ti), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / yt.size)


def kmeans_metrics(z, y, n_clusters: int, *, seed: int = 0) -> dict[str, float]:
    """k-means (k = n_clusters, 10 restarts, seeded) on the raw codes z (N, K); clustering accuracy
    (best matching, see ``clustering_accuracy``) and normalized mutual information against y (N,)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    pred = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(_np(z).astype(np.float64))
    return {"cluster_accuracy": clustering_accuracy(y, pred),
            "cluster_nmi": float(normalized_mutual_info_score(_np(y), pred))}


def _subsample(n: int, m: int, seed: int) -> Tensor:
    if n <= m:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m].sort().values


def representation_metrics(model: Autoencoder, dataset, split: str = "test", *, seed: int = 0, k: int = 5,
                           max_train: int = 10000) -> dict[str, float]:
    """Quality of the deterministic codes as features: linear probe, k-NN and k-means accuracy.

    Probes are fitted on the codes of (at most ``max_train``, a seeded subset of) the training split and
    scored on ``split``; k-means runs on the codes of ``split`` with k = num_classes. Empty when the data
    has no labels or the training split holds fewer than two classes (e.g. a one-class anomaly run).
    """
    x_tr, y_tr = dataset.split("train")
    x_te, y_te = dataset.split(split)
    if y_tr is None or y_te is None or x_te.shape[0] == 0 or torch.unique(y_tr).numel() < 2:
        return {}
    idx = _subsample(x_tr.shape[0], max_train, seed)
    x_tr, y_tr = x_tr[idx], y_tr[idx]
    z_tr = codes(model, x_tr, _labels_for(model, y_tr))
    z_te = codes(model, x_te, _labels_for(model, y_te))
    out = {"probe_linear_accuracy": linear_probe_accuracy(z_tr, y_tr, z_te, y_te, seed=seed),
           "probe_knn_accuracy": knn_accuracy(z_tr, y_tr, z_te, y_te, k=k)}
    n_clusters = dataset.num_classes or int(torch.unique(y_te).numel())
    if x_te.shape[0] >= n_clusters:
        out.update(kmeans_metrics(z_te, y_te, n_clusters, seed=seed))
    return out


# --------------------------------------------------------------------------------------------------
# Anomaly detection


@torch.no_grad()
def anomaly_scores(model: Autoencoder, x: Tensor, y: Tensor | None = None, *, mc_samples: int = 10,
                   seed: int = 0, batch_size: int = 1024) -> dict[str, Tensor]:
    """Per-example anomaly scores (higher = more anomalous), each (N,):

    - ``recon_error``: sum of squared errors of the reconstruction, sum_d (x_d - x_hat_d)^2;
    - ``neg_elbo`` (probabilistic models): -ELBO(x) in nats, averaged over ``mc_samples`` samples of q(z|x).

    ``y``: labels handed to models that need them (e.g. the normal class for a conditional model).
    """
    y = _labels_for(model, y)
    out = {"recon_error": sse_per_example(x, reconstructions(model, x, y, batch_size))}
    if model.probabilistic and x.shape[0]:
        g = torch.Generator(device=model.device).manual_seed(seed)
        with _seeded(seed), _eval_mode(model):
            parts = _batched(lambda xb, yb: model.elbo(xb, yb, mc_samples=mc_samples, generator=g)["elbo"],
                             [x, y], batch_size, model.device)
        out["neg_elbo"] = -torch.cat(parts).to(x.device)
    return out


def detection_metrics(scores, is_anomaly) -> tuple[float, float]:
    """(AUROC, average precision) of ``scores`` (N,) for the binary target ``is_anomaly`` (N,).

    scikit-learn's roc_auc_score and average_precision_score; anomalies are the positive class.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    target = _np(is_anomaly).astype(bool).ravel()
    if target.all() or not target.any():
        raise DataError(
            f"anomaly detection needs both normal and anomalous examples; got {int(target.sum())} anomalous "
            f"of {target.size}. Evaluate on a split that holds other classes than the normal one"
        )
    s = _np(scores).astype(np.float64).ravel()
    return float(roc_auc_score(target, s)), float(average_precision_score(target, s))


def anomaly_metrics(model: Autoencoder, x_test: Tensor, is_anomaly, y: Tensor | None = None, *,
                    seed: int = 0, mc_samples: int = 10) -> dict[str, float]:
    """AUROC and average precision of every score of ``anomaly_scores`` on (x_test, is_anomaly).

    Keys: ``anomaly_auroc_<score>``, ``anomaly_ap_<score>`` and ``anomaly_fraction`` (share of positives,
    the average precision of a random score).
    """
    target = torch.as_tensor(_np(is_anomaly)).bool()
    if target.shape[0] != x_test.shape[0]:
        raise DataError(f"is_anomaly has {target.shape[0]} entries but x_test has {x_test.shape[0]} examples")
    out = {"anomaly_fraction": target.float().mean().item()}
    for name, s in anomaly_scores(model, x_test, y, mc_samples=mc_samples, seed=seed).items():
        out[f"anomaly_auroc_{name}"], out[f"anomaly_ap_{name}"] = detection_metrics(s, target)
    return out


def class_index(dataset, cls: int | str) -> int:
    """Index of class ``cls`` (an index, or a class name as in dataset.class_names)."""
    names = dataset.class_names or []
    if isinstance(cls, str):
        if cls in names:
            return names.index(cls)
        if cls.lstrip("-").isdigit():
            cls = int(cls)
    if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool) and 0 <= int(cls) < dataset.num_classes:
        return int(cls)
    raise DataError(
        f"{dataset.name}: {cls!r} is not a class of this dataset; use an index 0..{max(dataset.num_classes - 1, 0)}"
        + (f" or a class name ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})" if names else "")
    )


# --------------------------------------------------------------------------------------------------
# Per-family diagnostics (dispatched through model.diagnostics)


def denoising_metrics(model: Autoencoder, dataset, split: str = "test", *, seed: int = 0) -> dict[str, float]:
    """Denoising gain (Vincent et al. 2010): PSNR(denoised, clean) - PSNR(noisy, clean), in dB.

    The noisy input is ``model.corrupt(x, generator)`` with the model's own corruption and a generator
    seeded with ``seed``; the noisy input is not clipped. Both PSNRs are means over examples of
    10 log10(peak^2 / MSE_i), so the gain, mean_i 10 log10(MSE_noisy_i / MSE_denoised_i), does not
    depend on the peak and applies to tables too. Images also get both PSNRs (peak 1).
    """
    x, y = dataset.split(split)
    g = torch.Generator(device=x.device).manual_seed(seed)
    noisy = model.corrupt(x, generator=g)
    den = reconstructions(model, noisy, _labels_for(model, y))
    p_noisy, p_den = psnr(x, noisy), psnr(x, den)
    out = {"denoise_psnr_gain_db": p_den - p_noisy,
           "denoise_mse_noisy": mse(x, noisy), "denoise_mse_denoised": mse(x, den)}
    if dataset.kind == "image":
        out["denoise_psnr_noisy_db"], out["denoise_psnr_denoised_db"] = p_noisy, p_den
    return out


def sparsity_stats(h: Tensor, rel_threshold: float = 0.01) -> dict[str, float]:
    """Sparsity of codes h (N, K).

    - ``sparsity_mean_activation``: mean over examples and units of |h_nk|;
    - ``sparsity_near_zero_fraction``: share of entries with |h_nk| < rel_threshold * max_{n,k} |h_nk|
      (near zero relative to the largest magnitude the code reaches on these examples; exact zeros
      of a relu code always count);
    - ``sparsity_dead_units``: units that are near zero (same rule) on every example;
    - ``sparsity_active_per_example``: mean number of units that are not near zero.
    """
    a = h.detach().abs().float()
    scale = a.max() if a.numel() else torch.tensor(0.0)
    near = a < rel_threshold * scale if scale > 0 else torch.ones_like(a, dtype=torch.bool)
    return {
        "sparsity_mean_activation": a.mean().item(),
        "sparsity_near_zero_fraction": near.float().mean().item(),
        "sparsity_dead_units": int(near.all(0).sum().item()),
        "sparsity_active_per_example": (~near).float().sum(1).mean().item(),
    }


def sparsity_metrics(model: Autoencoder, dataset, split: str = "test", *, seed: int = 0) -> dict[str, float]:
    """``sparsity_stats`` of the codes of ``split``; for a KL sparsity penalty also its target rho."""
    x, y = dataset.split(split)
    out = sparsity_stats(codes(model, x, _labels_for(model, y)))
    if getattr(model.config, "sparsity", None) == "kl":
        out["sparsity_target_rho"] = float(model.config.rho)
    return out


SATURATION_THRESHOLD = 0.05


def contraction_metrics(model: Autoencoder, dataset, split: str = "test", *, seed: int = 0,
                        batch_size: int = 256) -> dict[str, float]:
    """Contraction of the encoder f (Rifai et al., ICML 2011), for models with a ``nets.Encoder``.

    - ``contraction_jacobian_norm``: mean over examples of the Frobenius norm ||J_f(x)||_F
      (not squared; ``regularizers.encoder_jacobian_sq_norm``);
    - ``contraction_saturated_fraction``: share of (example, code unit) pairs whose code activation is
      saturated, i.e. its derivative at the pre-activation is below 0.05 (sigmoid: at most 0.25,
      tanh: at most 1; a relu unit is saturated exactly when it is off, derivative 0; a linear code
      never saturates). Rifai et al. show that contraction comes from such saturated units.
    """
    from .regularizers import encoder_jacobian_sq_norm

    enc = model.encoder
    x, y = dataset.split(split)
    cond = model.condition(_labels_for(model, y)) if getattr(enc, "cond_dim", 0) else None
    norms, derivs = [], []
    with _eval_mode(model):
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(model.device)
            cb = None if cond is None else cond[i : i + batch_size].to(model.device)
            with torch.no_grad():
                _, d = enc.mlp.forward_with_derivatives(enc.features(xb, cb))
            derivs.append(d[-1].detach())
            if cb is None:
                _, sq = encoder_jacobian_sq_norm(enc, xb)
            else:  # conditional encoders: the Jacobian with respect to x only, y held fixed
                sq = _jacobian_sq_norm_conditional(enc, xb, cb)
            norms.append(sq.detach().clamp_min(0).sqrt())
    return {"contraction_jacobian_norm": torch.cat(norms).mean().item(),
            "contraction_saturated_fraction": (torch.cat(derivs) < SATURATION_THRESHOLD).float().mean().item()}


def _jacobian_sq_norm_conditional(enc, x: Tensor, c: Tensor) -> Tensor:
    from torch.func import jacrev, vmap

    jac = vmap(jacrev(lambda xi, ci: enc(xi.unsqueeze(0), ci.unsqueeze(0))[0]))(x, c)
    return jac.pow(2).flatten(1).sum(1)


def active_units(mu: Tensor, threshold: float = 0.01) -> tuple[int, Tensor]:
    """Active units (Burda et al., ICLR 2016): unit u is active when A_u = Cov_x(E_q[z_u|x]) > threshold.

    mu: (N, K) posterior means E_q[z|x] of N examples. Returns (count, A (K,)); the variance is the
    population one (divide by N).
    """
    a = mu.detach().float().var(0, unbiased=False) if mu.shape[0] else mu.new_zeros(mu.shape[1])
    return int((a > threshold).sum().item()), a


def active_units_metrics(model: Autoencoder, dataset, split: str = "test", *, seed: int = 0) -> dict[str, float]:
    """Number and share of active latent units on ``split`` (posterior means from ``model.encode``)."""
    x, y = dataset.split(split)
    n, _ = active_units(codes(model, x, _labels_for(model, y)))
    return {"active_units": n, "active_units_fraction": n / model.latent_dim}


MMD_SCALES = (0.2, 0.5, 1.0, 2.0, 5.0)


def mmd2(a: Tensor, b: Tensor, scales: tuple[float, ...] = MMD_SCALES) -> float:
    """Unbiased squared maximum mean discrepancy MMD^2_u (Gretton et al., JMLR 2012, eq. 3).

    Kernel: the mean of Gaussian kernels k_s(u, v) = exp(-||u - v||^2 / (2 s K)) over the fixed scales
    s in ``scales``, with K the dimension; for a standard normal prior E||u - v||^2 = 2K, so the
    bandwidths sqrt(s K) span the prior's own scale from a fifth to five times over, and the numbers of
    different models with the same K are comparable. a: (N, K), b: (M, K), N, M >= 2. The unbiased
    estimate can be slightly negative when the two distributions are equal.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"mmd2 needs two (N, K) sample sets of the same K, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("mmd2 needs at least two samples in each set")
    a, b = a.detach().double(), b.detach().double()
    k = a.shape[1]

    def kern(u, v):
        d2 = torch.cdist(u, v).pow(2)
        return sum(torch.exp(-d2 / (2 * s * k)) for s in scales) / len(scales)

    n, m = a.shape[0], b.shape[0]
    kaa, kbb, kab = kern(a, a), kern(b, b), kern(a, b)
    saa = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    sbb = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(saa + sbb - 2 * kab.mean())


@torch.no_grad()
def aggregate_posterior_sample(model: Autoencoder, x: Tensor, y: Tensor | None = None, *,
                               generator: torch.Generator | None = None) -> Tensor:
    """One code per example drawn from the aggregated posterior q(z) = E_x q(z|x): (N, K).

    Probabilistic models: z = mu + exp(logvar / 2) * eps from ``model.posterior``; others: the
    deterministic code ``model.encode`` (their q(z|x) is a point mass).
    """
    y = _labels_for(model, y)
    if not model.probabilistic:
        return codes(model, x, y)
    with _eval_mode(model):
        parts = _batched(model.posterior, [x, y], 1024, model.device)
    mu = torch.cat([p[0] for p in parts]).cpu()
    logvar = torch.cat([p[1] for p in parts]).cpu()
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def prior_mmd_metrics(model: Autoencoder, dataset, split: str = "test", *, seed: int = 0,
                      max_samples: int = 2000) -> dict[str, float]:
    """``prior_mmd2``: MMD^2_u (``mmd2``) between codes from the aggregated posterior on ``split`` (at most
    ``max_samples``, a seeded subset) and as many samples of the model's prior (``model.prior_sample``).
    Near 0 when the encoder fills the prior, as the VAE and AAE objectives ask."""
    x, y = dataset.split(split)
    idx = _subsample(x.shape[0], max_samples, seed)
    x, y = x[idx], (None if y is None else y[idx])
    g = torch.Generator().manual_seed(seed)
    q = aggregate_posterior_sample(model, x, y, generator=g)
    with _eval_mode(model), torch.no_grad():
        p = model.prior_sample(q.shape[0], generator=torch.Generator(device=model.device).manual_seed(seed + 1))
    return {"prior_mmd2": mmd2(q.cpu(), p.cpu())}


# reference classifiers for conditional generation, one per dataset (keyed by its spec and shape)
_CLASSIFIERS: dict[str, tuple[torch.nn.Module, float]] = {}


def _dataset_key(dataset) -> str:
    spec = {k: v for k, v in (getattr(dataset, "spec", None) or {}).items() if k != "stats"}
    return json.dumps([dataset.name, list(dataset.shape), spec, [int(t.shape[0]) for t in
                       (dataset.x_train, dataset.x_val, dataset.x_test)]], sort_keys=True, default=str)


def reference_classifier(dataset, *, seed: int = 0, steps: int = 1000, batch_size: int = 128,
                         max_train: int = 20000):
    """A classifier of real data, independent of any autoencoder, and its accuracy on the real test split.

    An MLP (flattened input -> 256 relu units -> num_classes logits) trained with Adam (lr 1e-3, weight
    decay 1e-4) on ``steps`` minibatches of ``batch_size`` drawn from (a seeded subset of at most
    ``max_train`` of) the training split, everything seeded from ``seed`` (the global RNG is left as it
    was). Cached in memory per dataset (spec, shape and split sizes), so comparing several models trains
    it once. Returns (classifier in eval mode: (N, D) -> (N, num_classes) logits, test accuracy).
    """
    key = _dataset_key(dataset) + f"|{seed}|{steps}|{batch_size}|{max_train}"
    if key in _CLASSIFIERS:
        return _CLASSIFIERS[key]
    x, y = dataset.split("train")
    if y is None:
        raise DataError(f"{dataset.name}: conditional-generation accuracy needs a labelled dataset")
    idx = _subsample(x.shape[0], max_train, seed)
    x, y = x[idx].flatten(1).float().cpu(), y[idx].cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.ReLU(),
                                  torch.nn.Linear(256, dataset.num_classes))
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(steps):
        b = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=g)
        loss = F.cross_entropy(clf(x[b]), y[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    clf.eval()
    xt, yt = dataset.split("test")
    with torch.no_grad():
        acc = (clf(xt.flatten(1).float().cpu()).argmax(1) == yt.cpu()).float().mean().item() if len(yt) else math.nan
    _CLASSIFIERS[key] = (clf, acc)
    return clf, acc


def conditional_accuracy_metrics(model: Autoencoder, dataset, split: str = "test", *, seed: int = 0,
                                 per_class: int = 100) -> dict[str, float]:
    """Conditional generation: the share of samples drawn for label y that a reference classifier
    (``reference_classifier``, trained on the real training data) assigns to y, over ``per_class``
    samples of every class; beside it, that classifier's accuracy on the real test data (the ceiling).
    Empty for models that take no labels (e.g. an unsupervised aae, whose family lists this diagnostic
    for its supervised variant)."""
    if not _uses_labels(model) or not dataset.num_classes:
        return {}
    clf, real_acc = reference_classifier(dataset, seed=seed)
    k = dataset.num_classes
    y = torch.arange(k).repeat_interleave(per_class)
    g = torch.Generator(device=model.device).manual_seed(seed)
    with _eval_mode(model), torch.no_grad():
        xs = model.sample(y.shape[0], y=y.to(model.device), generator=g)
        pred = clf(xs.flatten(1).float().cpu()).argmax(1)
    return {"cond_gen_accuracy": (pred == y).float().mean().item(),
            "cond_gen_classifier_test_accuracy": real_acc}


DIAGNOSTICS = {
    "denoising": denoising_metrics,
    "sparsity": sparsity_metrics,
    "contraction": contraction_metrics,
    "active_units": active_units_metrics,
    "prior_mmd": prior_mmd_metrics,
    "conditional_accuracy": conditional_accuracy_metrics,
}


def diagnostic_metrics(model: Autoencoder, dataset, split: str = "test", *, seed: int = 0) -> dict[str, float]:
    """The per-family diagnostics the model names in ``model.diagnostics`` (see ``DIAGNOSTICS``)."""
    out = {}
    for name in getattr(model, "diagnostics", ()):
        if name not in DIAGNOSTICS:
            raise ConfigError(f"model {model.name} asks for diagnostic {name!r}, which aekit.metrics does not "
                              f"know; known diagnostics: {', '.join(DIAGNOSTICS)}")
        out.update(DIAGNOSTICS[name](model, dataset, split, seed=seed))
    return out


# --------------------------------------------------------------------------------------------------
# Everything


METRIC_INFO: dict[str, tuple[str, str]] = {  # name -> (what it is, "higher"/"lower"/"" is better)
    "mse": ("mean squared reconstruction error per dimension", "lower"),
    "sse_per_example": ("sum of squared reconstruction errors per example", "lower"),
    "psnr_db": ("peak signal-to-noise ratio of reconstructions (peak 1), dB", "higher"),
    "bce_nats": ("Bernoulli cross-entropy of reconstructions, nats per example", "lower"),
    "rmse_user_units": ("root mean squared reconstruction error in the data's own units", "lower"),
    "elbo_nats": ("evidence lower bound, nats per example", "higher"),
    "neg_elbo_bits_per_dim": ("negative ELBO in bits per data dimension", "lower"),
    "recon_nats": ("expected reconstruction negative log-likelihood -E_q log p(x|z), nats", "lower"),
    "kl_nats": ("KL(q(z|x) || p(z)), nats per example", ""),
    "iw_log_likelihood_nats": ("importance-sampled estimate of log p(x), nats per example", "higher"),
    "iw_nll_bits_per_dim": ("importance-sampled negative log-likelihood, bits per dimension", "lower"),
    "iw_samples": ("importance samples per example in the log-likelihood estimate", ""),
    "mc_samples": ("Monte Carlo samples per example in the ELBO", ""),
    "probe_linear_accuracy": ("logistic regression on standardized train codes, test accuracy", "higher"),
    "probe_knn_accuracy": ("5-nearest-neighbour classifier on codes, test accuracy", "higher"),
    "cluster_accuracy": ("k-means on test codes, accuracy under the best cluster-to-class matching", "higher"),
    "cluster_nmi": ("k-means on test codes, normalized mutual information with the labels", "higher"),
    "anomaly_fraction": ("share of anomalies in the anomaly-detection test set", ""),
    "anomaly_auroc_recon_error": ("AUROC of the reconstruction error as anomaly score", "higher"),
    "anomaly_ap_recon_error": ("average precision of the reconstruction error as anomaly score", "higher"),
    "anomaly_auroc_neg_elbo": ("AUROC of the negative ELBO as anomaly score", "higher"),
    "anomaly_ap_neg_elbo": ("average precision of the negative ELBO as anomaly score", "higher"),
    "denoise_psnr_gain_db": ("PSNR(denoised) - PSNR(noisy) against the clean input, dB", "higher"),
    "denoise_psnr_noisy_db": ("PSNR of the corrupted input against the clean one, dB", ""),
    "denoise_psnr_denoised_db": ("PSNR of the reconstruction of the corrupted input, dB", "higher"),
    "denoise_mse_noisy": ("MSE per dimension of the corrupted input", ""),
    "denoise_mse_denoised": ("MSE per dimension of the reconstruction of the corrupted input", "lower"),
    "sparsity_mean_activation": ("mean |h| over examples and code units", ""),
    "sparsity_near_zero_fraction": ("share of code entries with |h| < 1% of the code's largest |h|", ""),
    "sparsity_dead_units": ("code units near zero on every test example", "lower"),
    "sparsity_active_per_example": ("mean number of code units not near zero per example", ""),
    "sparsity_target_rho": ("target mean activation of the KL sparsity penalty", ""),
    "contraction_jacobian_norm": ("mean Frobenius norm of the encoder Jacobian", ""),
    "contraction_saturated_fraction": ("share of code units whose activation derivative is < 0.05", ""),
    "active_units": ("latent units with Cov_x(E_q[z_u|x]) > 0.01 (Burda et al.)", "higher"),
    "active_units_fraction": ("share of active latent units", "higher"),
    "prior_mmd2": ("MMD^2 between aggregated-posterior codes and prior samples", "lower"),
    "cond_gen_accuracy": ("share of class-conditional samples a reference classifier assigns to their class",
                          "higher"),
    "cond_gen_classifier_test_accuracy": ("that reference classifier's accuracy on real test data", ""),
}


def evaluate(model: Autoencoder, dataset, split: str = "test", *, iw_samples: int = 100, mc_samples: int = 1,
             normal_class: int | str | None = None, anomalies: Tensor | None = None, seed: int = 0,
             binarize_seed: int | None = None, representation: bool = True,
             diagnostics: bool = True) -> dict[str, float]:
    """Every metric that applies to the model on ``split``, as a flat dict of numbers.

    ``iw_samples`` / ``mc_samples``: importance and Monte Carlo samples of the likelihood estimates.
    Anomaly detection runs when ``normal_class`` is given (examples of other classes in ``split`` are
    the anomalies) and/or ``anomalies`` (N_a, *shape) is given (extra anomalous examples appended to
    ``split``, whose examples then all count as normal unless ``normal_class`` says otherwise).
    ``binarize_seed``: the likelihood metrics of a run trained on binarized data are computed on a static
    binarization of the split made with this seed (``trainer.binarize_static``).
    """
    out = reconstruction_metrics(model, dataset, split)
    out.update(likelihood_metrics(model, dataset, split, iw_samples=iw_samples, mc_samples=mc_samples, seed=seed,
                                  binarize_seed=binarize_seed))
    if representation:
        out.update(representation_metrics(model, dataset, split, seed=seed))
    if diagnostics:
        out.update(diagnostic_metrics(model, dataset, split, seed=seed))
    if normal_class is not None or anomalies is not None:
        out.update(anomaly_evaluation(model, dataset, split, normal_class=normal_class, anomalies=anomalies,
                                      seed=seed))
    return out


def anomaly_evaluation(model: Autoencoder, dataset, split: str = "test", *, normal_class: int | str | None = None,
                       anomalies: Tensor | None = None, seed: int = 0) -> dict[str, float]:
    """Anomaly metrics for a normal class of ``dataset`` and/or extra anomalous examples (see ``evaluate``).

    Models that take labels are given the normal class as the label of every example: the score is
    then that of "x as a normal example", and no label of a test example is used.
    """
    x, y = dataset.split(split)
    if normal_class is not None:
        if y is None:
            raise DataError(f"{dataset.name}: --normal-class needs a labelled dataset; for unlabeled data give "
                            "the anomalous examples as a separate file")
        k = class_index(dataset, normal_class)
        is_anom = y != k
    else:
        k = None
        is_anom = torch.zeros(x.shape[0], dtype=torch.bool)
    if anomalies is not None:
        if tuple(anomalies.shape[1:]) != tuple(x.shape[1:]):
            raise DataError(f"the anomalous examples have shape {tuple(anomalies.shape[1:])}, but the model's data "
                            f"has shape {tuple(x.shape[1:])}")
        x = torch.cat([x, anomalies.to(x.device, x.dtype)])
        is_anom = torch.cat([is_anom.cpu(), torch.ones(anomalies.shape[0], dtype=torch.bool)])
    labels = None
    if _uses_labels(model):
        if k is None:
            raise ConfigError(f"model {model.name} needs labels: name the normal class (--normal-class) so its "
                              "label can be given to every example")
        labels = torch.full((x.shape[0],), k, dtype=torch.long)
    return anomaly_metrics(model, x, is_anom, labels, seed=seed)
