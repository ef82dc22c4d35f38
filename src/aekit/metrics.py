"""Evaluation metrics: pure functions of (model, data) -> numbers.

Reductions: per-example sums over data dimensions averaged over examples (nats), unless the name says
"per dimension". PSNR assumes images in [0,1] (peak 1).

``evaluate(model, dataset)`` gathers every metric that applies, deciding only from what the model
declares in ``model.capabilities`` (``probabilistic``, ``uses_labels`` and the ``diagnostics`` names),
never from its name or type:

- reconstruction: MSE, SSE, PSNR and Bernoulli cross-entropy (``reconstruction_metrics``);
- likelihood (probabilistic models): test ELBO and importance-sampled log-likelihood (``aekit.bounds``);
- representation (labelled data): linear probe, k-NN and k-means clustering accuracy of the codes;
- anomaly detection (given a normal class or anomalous samples): AUROC and average precision of
  reconstruction error and, for probabilistic models, of the negative ELBO;
- per-family diagnostics (``diagnostic_metrics``): for each name in ``model.capabilities.diagnostics``,
  the function the model's family lists under that name in its ``diagnostic_functions``, else the
  shared one of ``SHARED_DIAGNOSTICS``, called as ``fn(model, data)`` with a ``DiagnosticData``: the
  split, the seed and the generic pieces of this module. A diagnostic that needs a family's internals
  is written in that family's file (denoising gain in models/dae.py, sparsity in models/sae.py,
  contraction in models/ae.py for the whole AE kind) and computes its numbers with the pieces
  ``data`` hands it, so no family imports this module (it sits above the models); the diagnostics that
  need only the model contract are written once here: active units (vae), prior MMD (vae, aae) and
  conditional-generation accuracy (cvae, supervised aae; judged by the classifier of aekit.reference).

Every random choice (corruption, posterior and prior samples, k-means, the reference classifier) is
seeded from ``seed`` through its own ``torch.Generator`` or ``random_state``, handed to every model method
that draws (``elbo``, ``log_likelihood``, ``sample``, ``prior_sample``, ``corrupt``): evaluation is
reproducible and never reads or writes torch's global RNG.

Thread safety: several threads may evaluate one model at once. Evaluation never changes the model's
training flag (no ``model.eval()`` and restore, which races between threads and would show a training
thread an eval-mode model): it calls only the methods whose result does not depend on the flag (encode,
decode, reconstruct, posterior, elbo, log_likelihood, sample, prior_sample, corrupt; the networks have no
dropout or batch norm), and runs them under ``torch.no_grad``, which is per thread.

Data of another sample shape than the model's ``config.input_shape`` is refused with one DataError line
naming both shapes (``Autoencoder.check_input``).

Several ranks (``shard=True`` under torch.distributed, e.g. ``aekit eval`` under torchrun): the expensive
per-example work, the likelihood estimates and the anomaly scores, is cut into blocks of ``CHUNK_ROWS`` rows,
block i drawing from its own generator (seed ``chunk_seed(seed, i)``; block 0 from ``seed`` itself, so a split
of at most CHUNK_ROWS rows gets the numbers it always got). Rank r computes blocks r, r + world, ...; the
per-block sums and per-example scores are gathered in the original order before anything is computed on the
whole split (means, AUROC), so the numbers do not depend on the number of ranks: ``shard=True`` on N ranks
gives what one process gives. The rest (reconstruction, representation, clustering, diagnostics: one
deterministic pass over the split) runs on rank 0, which hands its results to the others.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import distributed
from .arraylike import as_array, map_rows, to_numpy
from .config import check_seed
from .datasets.storage import Store, as_tensor
from .errors import ConfigError, DataError
from .likelihoods import binarize_static, binarizer
from .models.base import Autoencoder
from .posterior import DiagonalGaussian
from .reference import reference_classifier, subsample

__all__ = ["split_rows", "row_blocks", "psnr_per_example",
           "CHUNK_ROWS", "chunk_seed", "reconstructions", "codes", "mse", "sse_per_example", "bce", "psnr",
           "reconstruction_metrics", "COLUMN_RMSE", "column_errors", "likelihood_metrics", "linear_probe_accuracy",
           "knn_accuracy", "clustering_accuracy", "kmeans_metrics", "representation_metrics", "anomaly_scores",
           "detection_metrics", "anomaly_metrics", "sparsity_stats", "active_units", "active_units_metrics",
           "MMD_SCALES", "mmd2", "aggregate_posterior_sample", "prior_mmd_metrics", "conditional_accuracy_metrics",
           "DiagnosticData", "Diagnostic", "SHARED_DIAGNOSTICS", "diagnostic_function", "diagnostic_metrics",
           "METRIC_INFO", "evaluate", "anomaly_evaluation"]

# --------------------------------------------------------------------------------------------------
# Batched model calls


CHUNK_ROWS = 1024  # rows per seeded block of likelihood and score computations (the unit ranks share)


def chunk_seed(seed: int, block: int) -> int:
    """The seed of block ``block`` of a seeded per-example computation: ``seed`` for block 0, else 63 bits of
    numpy's SeedSequence of (seed, block). Blocks draw independently of which rank computes them."""
    if block == 0:
        return seed
    state = np.random.SeedSequence([int(seed) % 2**64, 0x61656B, block]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & (2**63 - 1)


def _sharded(shard: bool) -> bool:
    return shard and distributed.world_size() > 1


def _my_blocks(n_blocks: int, shard: bool) -> range:
    """The blocks this rank computes: all of them, or every world-th from its rank when sharded."""
    if not _sharded(shard):
        return range(n_blocks)
    return range(distributed.rank(), n_blocks, distributed.world_size())


class _Rows:
    """A block of rows of a split, for functions that read ``dataset.split(name)`` and ``dataset.name``."""

    def __init__(self, name: str, x: Tensor, y: Tensor | None):
        self.name, self._xy = name, (x, y)

    def split(self, name: str):
        return self._xy


SPLITS = ("train", "val", "test")
BLOCK_ROWS = 8 * CHUNK_ROWS  # rows one step of a streaming pass reads (reconstruction metrics)
SAMPLE_ROWS = 20000  # the most rows of a split the metrics that need them all at once use (codes of the probes
# and clustering, the family diagnostics' data.x): a larger split gives a seeded subsample, reported in the results


def split_rows(dataset, split: str):
    """(x, y) of ``split`` as the dataset holds them: a store stays a store (read a block at a time by the
    functions here, never copied whole as float32), a tensor is itself. An unknown split: ``dataset.split``'s
    error."""
    x = getattr(dataset, f"x_{split}", None) if split in SPLITS else None
    if x is None:  # an unknown split, or an object with only split() (e.g. _Rows)
        return dataset.split(split)
    return x, getattr(dataset, f"y_{split}", None)


def row_blocks(x, y=None, rows: int = BLOCK_ROWS):
    """(xb, yb): consecutive blocks of at most ``rows`` rows of x (a tensor, or a store: gathered float32) and
    of y, in order."""
    for lo in range(0, len(x), rows):
        yield x[lo:lo + rows], None if y is None else y[lo:lo + rows]


class _Joined(Store):
    """Several row sources (tensors or stores of one sample shape) one after the other, read a block at a time:
    a split and the anomalous examples appended to it, without a float32 copy of either."""

    def __init__(self, parts: list):
        first = parts[0]
        super().__init__(sum(len(p) for p in parts), tuple(first.shape[1:]), first.device, "the evaluated examples")
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts]).tolist()

    def _gather(self, pos) -> Tensor:
        if isinstance(pos, slice) and pos.step == 1:  # consecutive rows: slices of the parts
            got = [p[max(pos.start, a) - a:min(pos.stop, b) - a] for p, a, b in
                   zip(self.parts, self.starts[:-1], self.starts[1:]) if max(pos.start, a) < min(pos.stop, b)]
            got = [g.to(self.device, torch.float32) for g in got]
            return torch.cat(got) if got else torch.empty((0, *self.sample_shape), device=self.device)
        idx = np.arange(*pos.indices(self._n)) if isinstance(pos, slice) else torch.as_tensor(pos).cpu().numpy()
        out = torch.empty((len(idx), *self.sample_shape), dtype=torch.float32, device=self.device)
        for p, a, b in zip(self.parts, self.starts[:-1], self.starts[1:]):
            sel = np.flatnonzero((idx >= a) & (idx < b))
            if len(sel):
                out[torch.from_numpy(sel).to(self.device)] = p[idx[sel] - a].to(self.device, torch.float32)
        return out

    def subset(self, rows):
        return self[rows]

    def to(self, *args, **kwargs):
        return self.materialize().to(*args, **kwargs)

    @property
    def resident_bytes(self) -> int:
        return 0

def _batched(fn, tensors: list[Tensor | None], batch_size: int, device) -> list:
    n = tensors[0].shape[0]
    outs = []
    for i in range(0, n, batch_size):
        outs.append(fn(*[None if t is None else t[i : i + batch_size].to(device) for t in tensors]))
    return outs


def _by_rows(model: Autoencoder, fn, x, y, batch_size: int):
    """fn(xb, yb) over batches of x (a tensor, numpy array or list) in the model's dtype on its device, without
    autograd; the result of x's kind: a tensor on x's device, or numpy (rules: aekit.arraylike)."""
    return map_rows(fn, x, y, dtype=model.dtype, device=model.device, batch_size=batch_size,
                    check=model.check_values)


def reconstructions(model: Autoencoder, x, y=None, batch_size: int = 1024):
    """model.reconstruct over x in batches. (N, *shape) -> (N, *shape): a tensor on x's device, or numpy
    for numpy arrays and lists."""
    return _by_rows(model, model.reconstruct, x, y, batch_size)


def codes(model: Autoencoder, x, y=None, batch_size: int = 1024):
    """Deterministic codes model.encode(x) in batches. (N, *shape) -> (N, K): a tensor on x's device, or
    numpy for numpy arrays and lists."""
    return _by_rows(model, model.encode, x, y, batch_size)


def _labels_for(model: Autoencoder, y: Tensor | None) -> Tensor | None:
    """The labels to hand to a model: only models that use them (conditional or supervised) get them."""
    return y if model.capabilities.uses_labels else None


# --------------------------------------------------------------------------------------------------
# Reconstruction


def mse(x: Tensor, x_hat: Tensor) -> float:
    """Mean squared error per data dimension."""
    return F.mse_loss(x_hat, x).item()


def sse_per_example(x: Tensor, x_hat: Tensor) -> Tensor:
    """Sum of squared errors over dimensions, per example: (N,)."""
    return (x_hat - x).pow(2).flatten(1).sum(1)


def bce(x: Tensor, logits: Tensor) -> float:
    """Bernoulli cross-entropy in nats per example (sum over dimensions) of x in [0, 1] under Bernoulli(sigmoid(
    logits)), computed from the logits (``binary_cross_entropy_with_logits``), never from clamped probabilities."""
    return _bce_sum(x, logits) / x.shape[0]


def _bce_sum(x: Tensor, logits: Tensor) -> float:
    return F.binary_cross_entropy_with_logits(logits, x, reduction="sum").item()


def psnr_per_example(x: Tensor, x_hat: Tensor, peak: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB of each image: 10 log10(peak^2 / MSE_i), (N,)."""
    m = (x_hat - x).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(peak**2 / m)


def psnr(x: Tensor, x_hat: Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, averaged over images: 10 log10(peak^2 / MSE_i)."""
    return psnr_per_example(x, x_hat, peak).mean().item()


def reconstruction_metrics(model: Autoencoder, dataset, split: str = "test") -> dict[str, float]:
    """MSE per dimension, SSE per example, PSNR and Bernoulli cross-entropy (images), on one split.

    One pass over the split, BLOCK_ROWS rows at a time (a store is never copied whole), adding float64 sums:
    the numbers of the whole-split formulas (``mse``, ``sse_per_example``, ``psnr``, ``bce``,
    ``column_errors``) up to float32 rounding."""
    x, y = split_rows(dataset, split)
    y = _labels_for(model, y)
    image = dataset.kind == "image"
    logits = image and model.config.likelihood == "bernoulli"  # a Gaussian decoder has no logits
    n, dim = len(x), math.prod(x.shape[1:])
    sq = psnr_sum = bce_sum = 0.0
    columns = None if image else _ColumnErrors(dataset, dim)
    for xb, yb in row_blocks(x, y):
        x_hat = reconstructions(model, xb, yb)
        sq += float(sse_per_example(xb, x_hat).sum(dtype=torch.float64))
        if image:
            psnr_sum += float(psnr_per_example(xb, x_hat).sum(dtype=torch.float64))
            if logits:
                bce_sum += _bce_sum(xb, _by_rows(model, lambda xc, yc: model.decode_params(model.encode(xc, yc), yc),
                                                 xb, yb, 1024))
        else:
            columns.add(xb, x_hat)
    per = (lambda v: v / n) if n else (lambda v: math.nan)
    out = {"mse": per(sq / dim), "sse_per_example": per(sq)}
    if image:
        out["psnr_db"] = per(psnr_sum)
        if logits:
            out["bce_nats"] = per(bce_sum)
    else:  # tables: a scale-free summary, then each column's error in that column's own units
        out.update(columns.result())
    return out


COLUMN_RMSE = "rmse:"  # prefix of the per-column errors of a table: "rmse:<column name>"


def column_errors(dataset, x: Tensor, x_hat: Tensor) -> dict[str, float]:
    """A table's reconstruction errors as a user reads them: ``r2``, the share of each column's variance that
    the reconstruction explains, averaged over the columns that vary (scale-free, so columns in different
    units can be averaged), and ``rmse:<column>``, the root mean squared error of each column in its own
    units (an average across columns in mixed units would mean nothing)."""
    acc = _ColumnErrors(dataset, math.prod(x.shape[1:]))
    acc.add(x, x_hat)
    return acc.result()


class _ColumnErrors:
    """``column_errors`` over blocks of rows: per column, float64 sums of the squared errors and the running
    mean and sum of squared deviations of the inputs (Chan, Golub and LeVeque's update for a new block)."""

    def __init__(self, dataset, dim: int):
        self.dataset, self.n = dataset, 0
        self.err2 = self.mean = self.m2 = torch.zeros(dim, dtype=torch.float64)

    def add(self, x: Tensor, x_hat: Tensor) -> None:
        xu = self.dataset.to_user_units(x).double().flatten(1).cpu()
        if xu.shape[0] == 0:
            return
        e2 = (self.dataset.to_user_units(x_hat).double().flatten(1).cpu() - xu).pow(2).sum(0)
        nb = xu.shape[0]
        mb = xu.mean(0)
        m2b = (xu - mb).pow(2).sum(0)
        total = self.n + nb
        d = mb - self.mean
        self.mean = self.mean + d * (nb / total)
        self.m2 = self.m2 + m2b + d.pow(2) * (self.n * nb / total)
        self.err2, self.n = self.err2 + e2, total

    def result(self) -> dict[str, float]:
        n = self.n if self.n else math.nan
        err2, var = self.err2 / n, self.m2 / n
        out = {}
        varies = var > 0
        if bool(varies.any()):
            out["r2"] = float((1.0 - err2[varies] / var[varies]).mean())
        names = self.dataset.feature_names or [f"f{i}" for i in range(err2.shape[0])]
        out.update({f"{COLUMN_RMSE}{name}": float(e) for name, e in zip(names, err2.sqrt().tolist())})
        return out


# --------------------------------------------------------------------------------------------------
# Likelihood (probabilistic families)


def likelihood_metrics(model: Autoencoder, dataset, split: str = "test", *, iw_samples: int = 100,
                       mc_samples: int = 1, seed: int = 0, binarize_seed: int | None = None,
                       shard: bool = False) -> dict[str, float]:
    """Test ELBO and the importance-weighted log-likelihood estimate (``aekit.bounds``), in nats and bits/dim.

    Only for models with ``capabilities.probabilistic``; ``iw_samples`` importance samples per example
    (Burda et al. 2016; 0 skips the estimate), ``mc_samples`` Monte Carlo samples of the ELBO (both checked
    by ``bounds.likelihood_metrics``). ``binarize_seed``: evaluate on a static binarization of the split
    (for runs trained on binarized data). Empty for other models.

    The split is estimated in blocks of CHUNK_ROWS rows, block i with seed ``chunk_seed(seed, i)``, and the
    per-block sums added in block order. ``shard``: under torch.distributed every rank must call this; each
    computes its blocks (see the module docstring) and every rank returns the numbers one process returns.
    """
    if not model.capabilities.probabilistic:
        return {}
    from . import bounds
    from .likelihoods import bits_per_dim

    x, y = split_rows(dataset, split)
    n = len(x)
    if n <= CHUNK_ROWS:  # one block: bounds' own numbers (rank 0 computes them when sharded)
        res = distributed.agree(lambda: bounds.likelihood_metrics(model, dataset, split, iw_samples, mc_samples,
                                                                  seed=seed, binarize_seed=binarize_seed),
                                main_only=True, share=True) if _sharded(shard) else \
            bounds.likelihood_metrics(model, dataset, split, iw_samples, mc_samples, seed=seed,
                                      binarize_seed=binarize_seed)
        return {k: _number(v) for k, v in res.items()}
    # the checks bounds makes, on the whole split, before any block
    mc_samples, iw_samples, seed = bounds.check_options(n, iw_samples, mc_samples, seed)
    binarize = None
    if binarize_seed is not None:  # the binarization of the whole split, as bounds draws it
        bseed = check_seed(binarize_seed, "binarize_seed")
        if model.device.type == "cpu" and not _sharded(shard):  # block by block, in order: the same draws
            binarize = binarizer(bseed, model.device)
        else:
            x = binarize_static(as_tensor(x).to(model.device), bseed)
    starts = range(0, n, CHUNK_ROWS)
    keys = ("elbo_nats", "recon_nats", "kl_nats") + (("iw_log_likelihood_nats",) if iw_samples else ())
    sums = torch.zeros(len(starts), len(keys), dtype=torch.float64)  # per block: sums over its rows

    def mine():
        for i in _my_blocks(len(starts), shard):
            lo, hi = starts[i], min(starts[i] + CHUNK_ROWS, n)
            xb = x[lo:hi] if binarize is None else binarize(x[lo:hi].to(model.device))
            part = _Rows(dataset.name, xb, None if y is None else y[lo:hi])
            r = bounds.likelihood_metrics(model, part, split, iw_samples, mc_samples, seed=chunk_seed(seed, i))
            sums[i] = torch.tensor([r[k] * (hi - lo) for k in keys], dtype=torch.float64)

    if _sharded(shard):
        distributed.agree(mine)
        distributed.gather_rows(sums)
    else:
        mine()
    total = {k: sum(sums[:, j].tolist()) / n for j, k in enumerate(keys)}  # in block order, on every rank
    dim = math.prod(x.shape[1:])
    out = {"elbo_nats": total["elbo_nats"], "neg_elbo_bits_per_dim": bits_per_dim(-total["elbo_nats"], dim),
           "recon_nats": total["recon_nats"], "kl_nats": total["kl_nats"], "mc_samples": int(mc_samples)}
    if iw_samples:
        ll = total["iw_log_likelihood_nats"]
        out.update(iw_log_likelihood_nats=ll, iw_nll_bits_per_dim=bits_per_dim(-ll, dim), iw_samples=int(iw_samples))
    return {k: _number(v) for k, v in out.items()}


def _number(v):
    """A plain Python int or float (JSON-ready) from a tensor / numpy scalar."""
    if isinstance(v, Tensor):
        v = v.item()
    if isinstance(v, (np.integer, np.floating)):
        v = v.item()
    return v


# --------------------------------------------------------------------------------------------------
# Representation quality (labelled data)


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
        clf.fit(to_numpy(z_train), to_numpy(y_train))
    return float(clf.score(to_numpy(z_test), to_numpy(y_test)))


def knn_accuracy(z_train, y_train, z_test, y_test, *, k: int = 5) -> float:
    """Accuracy of a k-nearest-neighbour classifier (Euclidean, majority vote) on the raw codes.

    Raw rather than standardized codes: standardizing would blow up units that carry almost no
    signal (e.g. the inactive units of a VAE) into noise as large as the informative ones.
    """
    from sklearn.neighbors import KNeighborsClassifier

    zt = to_numpy(z_train)
    clf = KNeighborsClassifier(n_neighbors=min(k, len(zt)))
    clf.fit(zt, to_numpy(y_train))
    return float(clf.score(to_numpy(z_test), to_numpy(y_test)))


def clustering_accuracy(y_true, y_pred) -> float:
    """Accuracy of cluster assignments under the best one-to-one matching of clusters to classes.

    acc = max over injective maps m of (1/N) sum_i [m(pred_i) == true_i], found with the Hungarian
    algorithm (scipy.optimize.linear_sum_assignment) on the cluster x class contingency table. With
    more clusters than classes the unmatched clusters count as errors.
    """
    from scipy.optimize import linear_sum_assignment

    yt, yp = to_numpy(y_true).astype(np.int64).ravel(), to_numpy(y_pred).astype(np.int64).ravel()
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

    pred = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(to_numpy(z).astype(np.float64))
    return {"cluster_accuracy": clustering_accuracy(y, pred),
            "cluster_nmi": float(normalized_mutual_info_score(to_numpy(y), pred))}


def representation_metrics(model: Autoencoder, dataset, split: str = "test", *, seed: int = 0, k: int = 5,
                           max_train: int = 10000, max_test: int | None = None) -> dict[str, float]:
    """Quality of the deterministic codes as features: linear probe, k-NN and k-means accuracy.

    Probes are fitted on the codes of (at most ``max_train``, a seeded subset of) the training split and
    scored on ``split``; k-means runs on the codes of ``split`` with k = num_classes. A ``split`` of more than
    ``max_test`` (default SAMPLE_ROWS) rows is represented by a seeded subset of ``max_test``
    (``representation_samples`` in the result). Empty when the data has no labels or the training split holds
    fewer than two classes (e.g. a one-class anomaly run). Only the rows of those subsets are read as float32,
    and only codes are kept.
    """
    x_tr, y_tr = split_rows(dataset, "train")
    x_te, y_te = split_rows(dataset, split)
    if y_tr is None or y_te is None or len(x_te) == 0 or torch.unique(y_tr).numel() < 2:
        return {}
    idx = subsample(len(x_tr), max_train, seed)
    x_tr, y_tr = x_tr[idx], y_tr[idx]
    sampled, max_test = {}, SAMPLE_ROWS if max_test is None else max_test
    if len(x_te) > max_test:
        idx = subsample(len(x_te), max_test, seed)
        x_te, y_te = x_te[idx], y_te[idx]
        sampled = {"representation_samples": len(idx)}
    z_tr = codes(model, x_tr, _labels_for(model, y_tr))
    z_te = codes(model, x_te, _labels_for(model, y_te))
    out = {"probe_linear_accuracy": linear_probe_accuracy(z_tr, y_tr, z_te, y_te, seed=seed),
           "probe_knn_accuracy": knn_accuracy(z_tr, y_tr, z_te, y_te, k=k)}
    n_clusters = dataset.num_classes or int(torch.unique(y_te).numel())
    if x_te.shape[0] >= n_clusters:
        out.update(kmeans_metrics(z_te, y_te, n_clusters, seed=seed))
    return {**out, **sampled}


# --------------------------------------------------------------------------------------------------
# Anomaly detection


def anomaly_scores(model: Autoencoder, x, y=None, *, mc_samples: int = 10, seed: int = 0,
                   batch_size: int = 1024, shard: bool = False) -> dict:
    """Per-example anomaly scores (higher = more anomalous), each (N,), tensors on x's device (numpy for
    numpy arrays and lists):

    - ``recon_error``: sum of squared errors of the reconstruction, sum_d (x_d - x_hat_d)^2;
    - ``neg_elbo`` (probabilistic models): -ELBO(x) in nats, averaged over ``mc_samples`` samples of q(z|x).

    ``y``: labels handed to models that need them (e.g. the normal class for a conditional model).
    The samples of block i of CHUNK_ROWS rows come from a generator seeded with ``chunk_seed(seed, i)``.
    ``shard``: under torch.distributed every rank must call this; each scores its blocks and every rank
    returns all N scores, in order, bit for bit what one process computes.
    """
    probabilistic = model.capabilities.probabilistic
    y = _labels_for(model, y)

    def block(i: int, lo: int | None = None, hi: int | None = None):
        """The scores of block i: rows lo:hi (None: all of x, as given)."""
        g = torch.Generator(device=model.device).manual_seed(chunk_seed(seed, i)) if probabilistic else None

        def scores(xb: Tensor, yb: Tensor | None) -> dict[str, Tensor]:
            out = {"recon_error": sse_per_example(xb, model.reconstruct(xb, yb))}
            if probabilistic:
                out["neg_elbo"] = -model.elbo(xb, yb, mc_samples=mc_samples, generator=g)["elbo"]
            return out

        if lo is None:
            return _by_rows(model, scores, x, y, batch_size)
        return _by_rows(model, scores, x[lo:hi], None if y is None else y[lo:hi], batch_size)

    xa = x if isinstance(x, Store) else as_array(x)  # a store is read a block at a time
    n = xa.shape[0] if xa.ndim else 0
    if xa.ndim == 0 or (n <= CHUNK_ROWS and not _sharded(shard)):  # one block (map_rows checks the input)
        return block(0)
    if y is not None and as_array(y, "the labels y").shape[:1] != (n,):
        raise DataError(f"the labels y have shape {tuple(as_array(y).shape)} but the data has {n} rows; give one "
                        "label (or condition vector) per row")
    starts = range(0, n, CHUNK_ROWS)
    if not _sharded(shard):
        parts = [block(i, lo, min(lo + CHUNK_ROWS, n)) for i, lo in enumerate(starts)]
        cat = torch.cat if isinstance(parts[0]["recon_error"], Tensor) else np.concatenate
        return {k: cat([p[k] for p in parts]) for k in parts[0]}
    parts = distributed.agree(lambda: {i: block(i, starts[i], min(starts[i] + CHUNK_ROWS, n))
                                       for i in _my_blocks(len(starts), shard)})
    like = next(iter(parts.values())) if parts else block(0, 0, 0)  # the kind and dtype of the result
    full = torch.zeros(len(like), n, dtype=torch.float64)  # this rank's rows filled, the others 0
    for i, p in parts.items():
        for j, k in enumerate(like):
            full[j, starts[i] : starts[i] + CHUNK_ROWS] = torch.as_tensor(p[k]).detach().cpu().double()
    distributed.gather_rows(full)
    return {k: full[j].to(device=like[k].device, dtype=like[k].dtype) if isinstance(like[k], Tensor)
            else full[j].numpy().astype(like[k].dtype) for j, k in enumerate(like)}


def detection_metrics(scores, is_anomaly) -> tuple[float, float]:
    """(AUROC, average precision) of ``scores`` (N,) for the binary target ``is_anomaly`` (N,).

    scikit-learn's roc_auc_score and average_precision_score; anomalies are the positive class.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    target = to_numpy(is_anomaly).astype(bool).ravel()
    if target.all() or not target.any():
        raise DataError(
            f"anomaly detection needs both normal and anomalous examples; got {int(target.sum())} anomalous "
            f"of {target.size}. Evaluate on a split that holds other classes than the normal one"
        )
    s = to_numpy(scores).astype(np.float64).ravel()
    return float(roc_auc_score(target, s)), float(average_precision_score(target, s))


def anomaly_metrics(model: Autoencoder, x_test: Tensor, is_anomaly, y: Tensor | None = None, *,
                    seed: int = 0, mc_samples: int = 10, shard: bool = False, scorer=None) -> dict[str, float]:
    """AUROC and average precision of every score of ``anomaly_scores`` on (x_test, is_anomaly).

    Keys: ``anomaly_auroc_<score>``, ``anomaly_ap_<score>`` and ``anomaly_fraction`` (share of positives,
    the average precision of a random score). ``shard``: the scores are computed across ranks and gathered
    (``anomaly_scores``) before the AUROC and average precision, which every rank then computes alike.
    ``scorer``: the run's ``aekit.scoring.Scorer`` (the score ``aekit score`` writes: the joint score of a
    detector, or its members' normalized mean); its AUROC and average precision are ``anomaly_auroc_score``
    and ``anomaly_ap_score``. x_test is in model units (a split), which ``Scorer.score_model_units`` reads.
    """
    target = torch.as_tensor(to_numpy(is_anomaly)).bool()
    if target.shape[0] != x_test.shape[0]:
        raise DataError(f"is_anomaly has {target.shape[0]} entries but x_test has {x_test.shape[0]} examples")
    out = {"anomaly_fraction": target.float().mean().item()}
    for name, s in anomaly_scores(model, x_test, y, mc_samples=mc_samples, seed=seed, shard=shard).items():
        out[f"anomaly_auroc_{name}"], out[f"anomaly_ap_{name}"] = detection_metrics(s, target)
    if scorer is not None:
        s = scorer.score_model_units(x_test, _labels_for(model, y))
        out["anomaly_auroc_score"], out["anomaly_ap_score"] = detection_metrics(s, target)
    return out


# --------------------------------------------------------------------------------------------------
# Diagnostics: the generic pieces, the diagnostics shared across families, and the dispatch


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


def active_units(mu: Tensor, threshold: float = 0.01) -> tuple[int, Tensor]:
    """Active units (Burda et al., ICLR 2016): unit u is active when A_u = Cov_x(E_q[z_u|x]) > threshold.

    mu: (N, K) posterior means E_q[z|x] of N examples. Returns (count, A (K,)); the variance is the
    population one (divide by N).
    """
    a = mu.detach().float().var(0, unbiased=False) if mu.shape[0] else mu.new_zeros(mu.shape[1])
    return int((a > threshold).sum().item()), a


def active_units_metrics(model: Autoencoder, dataset, split: str = "test", *, seed: int = 0) -> dict[str, float]:
    """Diagnostic ``active_units``: number and share of active latent units on ``split`` (posterior means
    from ``model.encode``)."""
    x, y = split_rows(dataset, split)
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
    """One code per example drawn from the aggregated posterior q(z) = E_x q(z|x): (N, K), on the CPU.

    Models whose ``capabilities.has_posterior`` (the VAE family, an AAE with a Gaussian posterior): a draw of
    ``model.posterior`` (a DiagonalGaussian) with ``generator`` (a CPU generator); others: the deterministic
    code ``model.encode`` (their q(z|x) is a point mass).
    """
    y = _labels_for(model, y)
    if not model.capabilities.has_posterior:
        return codes(model, x, y)
    with torch.no_grad():
        parts = _batched(model.posterior, [x, y], 1024, model.device)
    q = DiagonalGaussian(torch.cat([p.mean for p in parts]).cpu(), torch.cat([p.logvar for p in parts]).cpu())
    return q.sample(1, generator)[0]


def prior_mmd_metrics(model: Autoencoder, dataset, split: str = "test", *, seed: int = 0,
                      max_samples: int = 2000) -> dict[str, float]:
    """Diagnostic ``prior_mmd`` of generative models, ``prior_mmd2``: MMD^2_u (``mmd2``) between codes from
    the aggregated posterior on ``split`` (at most ``max_samples``, a seeded subset) and as many samples of
    the model's prior (``model.prior_sample``). Near 0 when the encoder fills the prior, as the VAE and AAE
    objectives ask."""
    x, y = split_rows(dataset, split)
    idx = subsample(len(x), max_samples, seed)
    x, y = x[idx], (None if y is None else y[idx])
    g = torch.Generator().manual_seed(seed)
    q = aggregate_posterior_sample(model, x, y, generator=g)
    with torch.no_grad():  # seed + 1 wraps to 0 at torch's largest seed
        p = model.prior_sample(q.shape[0],
                               generator=torch.Generator(device=model.device).manual_seed((seed + 1) % 2**64))
    return {"prior_mmd2": mmd2(q.cpu(), p.cpu())}


def conditional_accuracy_metrics(model: Autoencoder, dataset, split: str = "test", *, seed: int = 0,
                                 per_class: int = 100) -> dict[str, float]:
    """Diagnostic ``conditional_accuracy``: the share of samples drawn for label y that a reference
    classifier (``reference.reference_classifier``, trained on the real training data) assigns to y, over
    ``per_class`` samples of every class; beside it, that classifier's accuracy on the real test data (the
    ceiling). Empty for models that take no labels or data without classes."""
    if not model.capabilities.uses_labels or not dataset.num_classes:
        return {}
    clf, real_acc = reference_classifier(dataset, seed=seed)
    k = dataset.num_classes
    y = torch.arange(k).repeat_interleave(per_class)
    g = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():
        xs = model.sample(y.shape[0], y=y.to(model.device), generator=g)
        pred = clf(xs.flatten(1).float().cpu()).argmax(1)
    return {"cond_gen_accuracy": (pred == y).float().mean().item(),
            "cond_gen_classifier_test_accuracy": real_acc}


@dataclass(frozen=True, eq=False)
class DiagnosticData:
    """What a diagnostic function receives: one split of a dataset, the seed, and the generic pieces of this
    module bound to the model, so a family's file computes its diagnostics without importing aekit.metrics.

    ``x`` (N, *shape) and ``y`` (the labels handed to the model: None unless it uses labels) of ``split``, a
    float32 tensor: a split of more than SAMPLE_ROWS rows gives a seeded subset of SAMPLE_ROWS (``rows``);
    ``codes`` / ``reconstructions``: the batched model calls of this module (no autograd);
    ``psnr``, ``mse``, ``sparsity_stats``: the functions of this module.
    """

    model: Autoencoder
    dataset: Any
    split: str = "test"
    seed: int = 0

    psnr = staticmethod(psnr)
    mse = staticmethod(mse)
    sparsity_stats = staticmethod(sparsity_stats)

    @property
    def rows(self) -> Tensor | None:
        """The rows of the split that ``x`` and ``y`` hold (sorted), or None for all of them."""
        n = len(split_rows(self.dataset, self.split)[0])
        return subsample(n, SAMPLE_ROWS, self.seed) if n > SAMPLE_ROWS else None

    @property
    def x(self) -> Tensor:
        x, rows = split_rows(self.dataset, self.split)[0], self.rows
        return as_tensor(x) if rows is None else x[rows]

    @property
    def y(self) -> Tensor | None:
        y, rows = split_rows(self.dataset, self.split)[1], self.rows
        return _labels_for(self.model, y if y is None or rows is None else y[rows])

    @property
    def kind(self) -> str:
        """The kind of data: "image" or "table"."""
        return self.dataset.kind

    def codes(self) -> Tensor:
        """The model's codes of the split: (N, K)."""
        return codes(self.model, self.x, self.y)

    def reconstructions(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The model's reconstructions of any inputs x (N, *shape) -> (N, *shape)."""
        return reconstructions(self.model, x, y)


# A diagnostic function: fn(model, data: DiagnosticData) -> {metric name: number}
Diagnostic = Callable[[Autoencoder, DiagnosticData], dict]


def _shared(fn) -> Diagnostic:
    """fn(model, dataset, split, *, seed) as a diagnostic function."""
    return lambda model, data: fn(model, data.dataset, data.split, seed=data.seed)


# the diagnostics that need only the model contract, for every family that names them
SHARED_DIAGNOSTICS: dict[str, Diagnostic] = {
    "active_units": _shared(active_units_metrics),
    "prior_mmd": _shared(prior_mmd_metrics),
    "conditional_accuracy": _shared(conditional_accuracy_metrics),
}


def diagnostic_function(model: Autoencoder, name: str) -> Diagnostic:
    """The function computing diagnostic ``name`` for ``model``: its family's own, else a shared one."""
    fn = model.diagnostic_functions.get(name) or SHARED_DIAGNOSTICS.get(name)
    if fn is None:
        known = sorted({*model.diagnostic_functions, *SHARED_DIAGNOSTICS})
        raise ConfigError(f"model {model.name} asks for diagnostic {name!r}, which neither its family nor "
                          f"aekit.metrics computes; known diagnostics: {', '.join(known)}")
    return fn


def diagnostic_metrics(model: Autoencoder, dataset, split: str = "test", *, seed: int = 0) -> dict[str, float]:
    """Every diagnostic named in ``model.capabilities.diagnostics`` on ``split``, seeded with ``seed``."""
    data = DiagnosticData(model, dataset, split, seed)
    out = {}
    for name in model.capabilities.diagnostics:
        out.update(diagnostic_function(model, name)(model, data))
    rows = data.rows
    if out and rows is not None:
        out["diagnostic_samples"] = len(rows)
    return out


# --------------------------------------------------------------------------------------------------
# Everything


METRIC_INFO: dict[str, tuple[str, str]] = {  # name -> (what it is, "higher"/"lower"/"" is better)
    "mse": ("mean squared reconstruction error per dimension", "lower"),
    "sse_per_example": ("sum of squared reconstruction errors per example", "lower"),
    "psnr_db": ("peak signal-to-noise ratio of reconstructions (peak 1), dB", "higher"),
    "bce_nats": ("Bernoulli cross-entropy of reconstructions, nats per example", "lower"),
    "r2": ("share of each table column's variance the reconstruction explains (R^2), mean over columns",
           "higher"),
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
    "representation_samples": ("rows of the split the probes and k-means used: a seeded subset of a larger split",
                               ""),
    "diagnostic_samples": ("rows of the split the family diagnostics read (data.x): a seeded subset of a larger "
                           "split", ""),
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
             diagnostics: bool = True, shard: bool = False, scorer=None) -> dict[str, float]:
    """Every metric that applies to the model on ``split``, as a flat dict of numbers.

    ``iw_samples`` / ``mc_samples``: importance and Monte Carlo samples of the likelihood estimates.
    Anomaly detection runs when ``normal_class`` is given (examples of other classes in ``split`` are
    the anomalies) and/or ``anomalies`` (N_a, *shape) is given (extra anomalous examples appended to
    ``split``, whose examples then all count as normal unless ``normal_class`` says otherwise).
    ``binarize_seed``: the likelihood metrics of a run trained on binarized data are computed on a static
    binarization of the split made with this seed (``likelihoods.binarize_static``).

    Data whose samples do not have the model's input shape, and a seed torch does not accept, are refused
    with one line (DataError / ConfigError) before any work. Safe to call from several threads at once on
    one model (see the module docstring).

    ``scorer``: the run's ``aekit.scoring.Scorer``; with anomaly detection its score's AUROC and average
    precision are added (``anomaly_auroc_score``, ``anomaly_ap_score``; see ``anomaly_metrics``).

    ``shard``: under torch.distributed (e.g. torchrun), every rank calls ``evaluate`` alike; the likelihood
    estimates and anomaly scores are computed across ranks, the rest on rank 0, and every rank returns rank
    0's dict: the numbers one process computes (module docstring). False (the default): this process
    computes everything, as without torch.distributed (call it on one rank alone, or on each).

    Parameters
    ----------
    model : aekit.models.base.Autoencoder
        The model to evaluate.
    dataset : aekit.datasets.Dataset
        Its data (``Dataset``), read from ``split``.
    split : {"train", "val", "test"}, default="test"
        The split evaluated.
    iw_samples : int, default=100
        Importance samples K of the log-likelihood estimate (probabilistic models).
    mc_samples : int, default=1
        Monte-Carlo samples of the ELBO (probabilistic models).
    normal_class : int or str, optional
        Anomaly detection: the normal class (an index or a class name in any case).
    anomalies : torch.Tensor of shape (N_a, *shape), optional
        Anomaly detection: extra anomalous examples.
    seed : int, default=0
        Seed of every random draw of the evaluation.
    binarize_seed : int, optional
        Runs trained on binarized data: the seed of the split's static binarization.
    representation : bool, default=True
        Compute the representation metrics (probes, clustering) on labelled data.
    diagnostics : bool, default=True
        Compute the family's diagnostics.
    shard : bool, default=False
        Share the work across the ranks of torch.distributed.
    scorer : aekit.scoring.Scorer, optional
        The run's detector: anomaly detection then also reports the AUROC and AP of the score ``aekit score``
        gives (``anomaly_auroc_score``, ``anomaly_ap_score``).

    Returns
    -------
    dict of str to float
        The metrics (``METRIC_INFO`` describes each).
    """
    seed = check_seed(seed)
    model.check_input(split_rows(dataset, split)[0], f"dataset {dataset.name!r}")
    lead = not _sharded(shard) or distributed.is_main()  # who computes the parts that are not sharded

    def on_lead(fn):
        return distributed.agree(fn, main_only=True) if _sharded(shard) else fn()

    out = on_lead(lambda: reconstruction_metrics(model, dataset, split)) or {}
    out.update(likelihood_metrics(model, dataset, split, iw_samples=iw_samples, mc_samples=mc_samples, seed=seed,
                                  binarize_seed=binarize_seed, shard=shard))
    if representation:
        out.update(on_lead(lambda: representation_metrics(model, dataset, split, seed=seed)) or {})
    if diagnostics:
        out.update(on_lead(lambda: diagnostic_metrics(model, dataset, split, seed=seed)) or {})
    if normal_class is not None or anomalies is not None:
        out.update(anomaly_evaluation(model, dataset, split, normal_class=normal_class, anomalies=anomalies,
                                      seed=seed, shard=shard, scorer=scorer))
    return distributed.broadcast_object(out if lead else None) if _sharded(shard) else out


def anomaly_evaluation(model: Autoencoder, dataset, split: str = "test", *, normal_class: int | str | None = None,
                       anomalies: Tensor | None = None, seed: int = 0, shard: bool = False,
                       scorer=None) -> dict[str, float]:
    """Anomaly metrics for a normal class of ``dataset`` and/or extra anomalous examples (see ``evaluate``).

    Models that take labels are given the normal class as the label of every example: the score is
    then that of "x as a normal example", and no label of a test example is used.
    """
    x, y = split_rows(dataset, split)
    if normal_class is not None:
        if y is None:
            raise DataError(f"{dataset.name}: --normal-class needs a labelled dataset; for unlabeled data give "
                            "the anomalous examples as a separate file")
        k = dataset.class_index(normal_class, "normal class")
        is_anom = y != k
    else:
        k = None
        is_anom = torch.zeros(x.shape[0], dtype=torch.bool)
    if anomalies is not None:
        if tuple(anomalies.shape[1:]) != tuple(x.shape[1:]):
            raise DataError(f"the anomalous examples have shape {tuple(anomalies.shape[1:])}, but the model's data "
                            f"has shape {tuple(x.shape[1:])}")
        if isinstance(x, Store) or isinstance(anomalies, Store):  # read a block at a time, never copied whole
            x = _Joined([x, anomalies])
        else:
            x = torch.cat([x, anomalies.to(x.device, x.dtype)])
        is_anom = torch.cat([is_anom.cpu(), torch.ones(anomalies.shape[0], dtype=torch.bool)])
    labels = None
    if model.capabilities.uses_labels:
        if k is None:
            raise ConfigError(f"model {model.name} needs labels: name the normal class (--normal-class) so its "
                              "label can be given to every example")
        labels = torch.full((x.shape[0],), k, dtype=torch.long)
    return anomaly_metrics(model, x, is_anom, labels, seed=seed, shard=shard, scorer=scorer)
