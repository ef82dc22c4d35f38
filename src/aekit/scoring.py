"""Scoring: the one owner of the anomaly score, as one ``torch.nn.Module`` from the user's rows to a decision.

    scorer = Scorer.from_run("runs/det")          # or Detector.scorer(); loaded once
    out = scorer.score(X)                         # numpy in (any batch size), numpy out:
    out.score, out.p_value, out.is_outlier        # (n,) float64, (n,) float64 or None, (n,) bool or None
    score, p_value, is_outlier = scorer(x)        # the module itself: a tensor batch in, three tensors out

``Scorer`` chains what a score is made of, in order:

1. ``Preprocess``: the run's data pipeline on the user's values. A table (N, D) in the user's units is
   standardized with the training rows' statistics, ``((x - mean) / std)`` in float64 then float32, as
   ``aekit.datasets`` does it; images (N, C, H, W) are float32 in [0, 1] (uint8 images are divided by 255,
   as the data readers do).
2. The members (``n_estimators`` autoencoders; a plain run has one) and each member's raw score:
   ``"joint"``: with z = f(x) the code and r = x - g(f(x)) the residual, ``(z - mu)' S^-1 (z - mu) + c' C^-1 c``
   with c = r / sigma - m - (z - mu) A (A: the code regression, or none) and C the member's residual model
   (``JointStats``: the identity, i.e. ``sum_d (r_d / sigma_d)^2``, or a PPCA of rank q) (float64);
   ``"recon_error"``: the sum of squared errors of the reconstruction; ``"neg_elbo"``: -ELBO in nats from
   ``MC_SAMPLES`` posterior samples of a fixed seed (``metrics.anomaly_scores``; the only score with random
   draws: not in exported graphs).
   With ``neighbors`` = k > 0 (a cross-fitted table detector), each member has a second raw score, the
   code-space neighbour term: the Euclidean distance of the row's code to its k-th nearest code among the
   rows that member trained on (``references``). Raw scores are then (members x 2) rows: member 0's score,
   member 0's neighbour term, member 1's score, ...
3. The combination: one member's raw score, or the mean over the raw rows of ``(s - median) / IQR``
   (``normalization``: one (median, IQR) per raw row, from the rows the member did not train on).
4. The decision: ``p_value`` = (1 + #{calibration scores >= s}) / (n_cal + 1), the split-conformal p-value
   of ``Detector.calibrate``; NaN when the detector was never calibrated (training scores are not
   exchangeable with new data: a p-value from them would not be valid). ``is_outlier`` = s > threshold; the
   threshold is NaN, and ``is_outlier`` False, when none was set (a plain run before ``calibrate``).

Every consumer goes through this module: ``Detector`` (decision_function, predict, predict_pvalue,
calibrate), ``aekit score``, ``aekit eval`` / the report (``metrics.evaluate(..., scorer=...)`` gives
``anomaly_auroc_score``), ``aekit export`` (the graph of ``Scorer.forward``) and ``aekit serve``.

A detector's state (``save_state`` / ``load_state``) is this module's too: the statistics, members,
threshold and calibration table, written by ``Run.write_detector_state`` as one file, atomically.

For a server: build once (``Scorer.from_run`` / ``Detector.scorer()``: the models are loaded then), then call
``score(X)`` per request; a call never changes the module (no state between calls) and runs under
``torch.no_grad``, so several threads may call one scorer at once.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from . import metrics, registry
from .arraylike import BATCH_ROWS
from .config import resolve_device
from .datasets import DataConfig, read_samples
from .errors import ConfigError, DataError, RunError
from .run import Run

SCORES = ("joint", "recon_error", "neg_elbo")  # what a scorer computes ("auto" is resolved before)
DETERMINISTIC = ("joint", "recon_error")  # the scores without random draws (the ones a graph can hold)
MC_SAMPLES = 10  # posterior samples of the -ELBO score
SCORE_SEED = 0  # the -ELBO score's samples come from this seed: the same X gives the same scores
# the joint score's statistics (see JointStats)
JOINT_TRIM = 0.2  # refitted on the (1 - JOINT_TRIM) share of the training rows with the lowest score ...
JOINT_REFITS = 3  # ... this many times
JOINT_RIDGE = 1e-3  # added to the code covariance: this times its mean variance
JOINT_NOISE_FLOOR = 1e-3  # the residual model's smallest variance (of residuals scaled to unit variance)
EIGH_SUBSET_FROM = 64  # the residual model's eigenpairs: scipy's subset solver on matrices larger than this
JOINT_CODE_REGRESSION = True  # the residual model's mean depends linearly on the code (JointStats.coef; round 11) ...
JOINT_REGRESSION_FLOOR = 1e-3  # ... and a value's sigma is then at least this share of the diagonal model's
JOINT_CODE_HISTOGRAM = False  # tables: the code term from per-value histograms of the codes (JointStats.edges) ...
HISTOGRAM_MIN_BINS = 5  # ... of max(this, sqrt(rows)) equal bins per code value
# the smallest residual standard deviation of a value (model units): standardized table columns; image pixels in
# [0, 1], where pixels that never vary in training (a border) would otherwise dominate the score
JOINT_SIGMA_FLOOR = {"table": 1e-3, "image": 0.1}
STATE_FORMAT = 7  # the detector state's format (1: detector.json + detector.safetensors, read only; 3: neighbors;
# 4: the joint score's residual model, residual_ranks; 5: residual_smooth; 6: residual_regressions, joint{j}/coef;
# 7: code_histograms, joint{j}/edges and joint{j}/logdens)
NEIGHBOR_BLOCK = 2**22  # distances of the neighbour term computed at once (rows x reference rows, float64)


def resolve_score(score: str, model, *, fitted: bool = True) -> str:
    """The score ``score`` names for ``model``. "auto" is "joint", except for a plain run directory that was
    never fitted as a detector (``fitted=False``: no statistics for the joint score), where it is "neg_elbo"
    for probabilistic families and "recon_error" for the others."""
    probabilistic = model.capabilities.probabilistic
    if score == "auto":
        return "joint" if fitted else "neg_elbo" if probabilistic else "recon_error"
    if score == "joint" and not fitted:
        raise ConfigError("anomaly_score='joint' needs the statistics of the training codes and residuals, which a "
                          "plain run directory does not have: fit a Detector, or use anomaly_score='auto' here")
    if score == "neg_elbo" and not probabilistic:
        raise ConfigError(f"Detector(anomaly_score='neg_elbo') needs a probabilistic model (vae, iwae); model "
                          f"{model.name} has no ELBO: use anomaly_score='recon_error' or 'auto'")
    return score


def _leading_eigh(a: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    """The q largest eigenvalues of the symmetric matrix a, largest first, and their eigenvectors (columns).
    Above EIGH_SUBSET_FROM rows, LAPACK's MRRR solver for those q pairs only (scipy's ``subset_by_index``), which
    skips the back-transformation of the other eigenvectors; below, numpy's full ``eigh``, the faster of the two
    on small matrices (``python benchmarks/hotpath.py eigh``). The pairs agree to rounding."""
    m = a.shape[0]
    if m > EIGH_SUBSET_FROM:
        from scipy.linalg import eigh

        var, vec = eigh(a, subset_by_index=[m - q, m - 1], driver="evr")
    else:
        var, vec = np.linalg.eigh(a)
    return var[::-1][:q], vec[:, ::-1][:, :q]


def least_squares(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The least-squares solution x (p, m) of a x = b, a (n, p) with n >= p, b (n, m): by a reduced QR
    factorization of a when a has full column rank (every |R_ii| above 1e-8 of the largest), else numpy's
    ``lstsq`` (an SVD; the minimum-norm solution). The QR is the faster for the code regression's few columns
    (``python benchmarks/hotpath.py eigh``); the two agree to rounding on a full-rank a."""
    from scipy.linalg import solve_triangular

    q, r = np.linalg.qr(a)
    diag = np.abs(np.diag(r))
    if diag.size and diag.min() > 1e-8 * diag.max():
        return solve_triangular(r, q.T @ b)
    return np.linalg.lstsq(a, b, rcond=None)[0]


class JointStats:
    """The joint score's statistics of one member: -2 log p(x) up to a constant under "code ~ N(mu, S),
    x | code ~ N(g(code), Sigma)", i.e. with z = f(x) the code and r = x - g(f(x)) the residual (model units),

        score(x) = (z - mu)' S^-1 (z - mu) + c' C^-1 c,    c = r / sigma - m

    the distance of the code from the training codes plus the reconstruction error in units of its typical
    error: sigma (D,) is each value's residual standard deviation (at least JOINT_SIGMA_FLOOR of the data's
    kind), so Sigma = diag(sigma) C diag(sigma). ``rank`` q = 0: C = I and m = 0, the sum of (r_d / sigma_d)^2
    (a diagonal model). q > 0: C is a probabilistic PCA of the scaled residuals (Tipping & Bishop 1999, the
    maximum-likelihood fit): m their mean, ``basis`` V (D, q) their q leading principal directions with
    variances ``lam`` (q,), and ``noise`` s2 the mean variance of the other D - q directions (at least
    JOINT_NOISE_FLOOR), so c' C^-1 c = sum_i (v_i'c)^2 / lam_i + |c - V V'c|^2 / s2: residuals that move
    together (a blurred edge, correlated columns) count once, not once per value. ``fit`` estimates mu, S (with
    a ridge of JOINT_RIDGE x its mean variance; ``prec`` is its pseudo-inverse), sigma and the residual model
    on the training rows, then refits them JOINT_REFITS times on the (1 - JOINT_TRIM) share of the rows with
    the lowest score, so that the anomalies of a contaminated training set do not widen them (the trimming is
    the diagonal model's; the residual model is fitted once, on the rows it kept). float64 numpy.

    With a code histogram (``edges`` (K, B + 1), ``logdens`` (K, B)), the code's term is not the Mahalanobis
    distance but -2 sum_k log h_k(z_k): h_k the histogram density of code value k over every row the statistics
    were fitted on (B equal bins over their range, each count + 1 over rows + B), so that codes of several
    clusters, or of heavy tails, are not forced into one ellipsoid (``with_code_histogram``).
    """

    def __init__(self, mu: np.ndarray, prec: np.ndarray, sigma: np.ndarray, rmean: np.ndarray | None = None,
                 basis: np.ndarray | None = None, lam: np.ndarray | None = None, noise: float = 1.0,
                 coef: np.ndarray | None = None, edges: np.ndarray | None = None,
                 logdens: np.ndarray | None = None):
        self.mu, self.prec, self.sigma = mu, prec, sigma
        d = len(sigma)
        self.rmean = np.zeros(d) if rmean is None else rmean
        self.basis = np.zeros((d, 0)) if basis is None else basis
        self.lam = np.zeros(0) if lam is None else lam
        self.noise = float(noise)
        self.coef = coef  # (K, D) or None: the residual model's mean moves with the code (code regression)
        self.edges, self.logdens = edges, logdens  # (K, B + 1), (K, B) or None: the code histogram

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    @property
    def regression(self) -> bool:
        return self.coef is not None

    @property
    def histogram(self) -> bool:
        return self.edges is not None

    def with_code_histogram(self, z: np.ndarray) -> JointStats:
        """These statistics with the code term of a histogram of the codes z (n, K) (see the class): for each
        code value, B = max(HISTOGRAM_MIN_BINS, floor(sqrt(n))) equal bins over its range (a range of at least
        1e-3 of the codes' mean standard deviation) and log density log((count + 1) / (n + B) / width)."""
        n, k = z.shape
        bins = max(HISTOGRAM_MIN_BINS, math.isqrt(n))
        lo, hi = z.min(axis=0), z.max(axis=0)
        span = np.maximum(hi - lo, 1e-3 * float(z.std(axis=0).mean()) + 1e-12)
        edges = lo[:, None] + span[:, None] * np.linspace(0.0, 1.0, bins + 1)[None, :]
        idx = np.clip(np.floor((z - lo) / span * bins).astype(np.int64), 0, bins - 1)
        counts = np.stack([np.bincount(idx[:, j], minlength=bins) for j in range(k)])
        logdens = np.log((counts + 1.0) / (n + bins)) - np.log(span / bins)[:, None]
        return JointStats(self.mu, self.prec, self.sigma, self.rmean, self.basis, self.lam, self.noise, self.coef,
                          edges, logdens)

    @classmethod
    def estimate(cls, z: np.ndarray, r: np.ndarray, floor: float, rank: int = 0) -> JointStats:
        mu = z.mean(axis=0)
        cov = np.atleast_2d(np.cov(z - mu, rowvar=False)) if len(z) > 1 else np.zeros((z.shape[1],) * 2)
        k = cov.shape[0]
        cov = cov + (JOINT_RIDGE * np.trace(cov) / k + 1e-12) * np.eye(k)
        stats = cls(mu, np.linalg.pinv(cov, hermitian=True), np.maximum(r.std(axis=0), floor))
        return stats.with_residual_model(r, rank) if rank else stats

    def with_residual_model(self, r: np.ndarray, rank: int, z: np.ndarray | None = None) -> JointStats:
        """These statistics with a residual model of at most ``rank`` factors fitted on the residuals r (n, D):
        the maximum-likelihood PPCA of r / sigma. A direction whose variance is not above the noise adds nothing
        to the isotropic part (its lam would be the noise) and is dropped; with none left (one distinct row),
        the diagonal model. With the codes z (n, K) of the same rows (the code regression), the scaled
        residuals are first regressed on the centred codes by least squares (with an intercept) and the PPCA is
        that of the regression's residuals: x | code ~ N(g(code) + sigma (m + A'(code - mu)), diag(sigma) C
        diag(sigma)), A = ``coef`` (K, D), sigma then each value's standard deviation about the regression (at
        least JOINT_REGRESSION_FLOOR times the diagonal model's). What the code predicts of the residual, which a
        briefly trained decoder has left in it, is then not counted as error, and a row whose residual breaks
        that relation is."""
        d, n = r.shape[1], len(r)
        q = min(int(rank), d - 1, n - 2)
        if q < 1:
            return self
        sigma = self.sigma
        c, coef = r / sigma, None
        if z is not None and n > z.shape[1] + 1:
            dz = z - self.mu
            design = np.concatenate([dz, np.ones((n, 1))], axis=1)
            b = least_squares(design, c)
            spread = (c - design @ b).std(axis=0)
            new = sigma * np.maximum(spread, JOINT_REGRESSION_FLOOR)
            coef = b[:-1] * (sigma / new)  # in units of the new sigma
            sigma = new
            c = r / sigma - dz @ coef
        m = c.mean(axis=0)
        c = c - m
        # the q leading principal directions from the (n, n) Gram matrix, else the (D, D) covariance
        gram = c @ c.T / (n - 1) if n < d else c.T @ c / (n - 1)
        var, vecs = _leading_eigh(gram, q)
        total = float(np.trace(gram))  # the total variance
        noise = max((total - float(np.maximum(var, 0).sum())) / (d - q), JOINT_NOISE_FLOOR)
        keep = var > noise
        if not keep.any():
            return self
        var = var[keep]
        basis = c.T @ vecs[:, keep] / np.sqrt(var * (n - 1)) if n < d else vecs[:, keep]
        return JointStats(self.mu, self.prec, sigma, m, np.ascontiguousarray(basis), var, noise, coef)

    @classmethod
    def fit(cls, z: np.ndarray, r: np.ndarray, floor: float = JOINT_SIGMA_FLOOR["table"], rank: int = 0,
            refits: int | None = None, regression: bool | None = None,
            histogram: bool | None = None) -> JointStats:
        """The diagonal model fitted and refitted (trimmed) ``refits`` times (None: JOINT_REFITS; 0: fitted
        once on every row, for rows known to be normal) as the class says; with ``rank`` > 0, the residual model
        of that rank is then fitted once, on the rows the last refit kept, with the code regression when
        ``regression`` (None: JOINT_CODE_REGRESSION); with ``histogram`` (None: JOINT_CODE_HISTOGRAM) the code
        term is then a histogram of the codes of every row (``with_code_histogram``; the trimming's scores are
        the Mahalanobis code term's)."""
        stats, keep = cls.estimate(z, r, floor), slice(None)
        for _ in range(JOINT_REFITS if refits is None else int(refits)):
            s = stats.score(z, r)
            kept = s <= np.quantile(s, 1.0 - JOINT_TRIM)
            if kept.sum() >= 2:
                stats, keep = cls.estimate(z[kept], r[kept], floor), kept
        regress = JOINT_CODE_REGRESSION if regression is None else regression
        if rank:
            stats = stats.with_residual_model(r[keep], rank, z[keep] if regress else None)
        return stats.with_code_histogram(z) if (JOINT_CODE_HISTOGRAM if histogram is None else histogram) else stats

    def score(self, z: np.ndarray, r: np.ndarray) -> np.ndarray:
        return self.code_distance(z) + self.residual_terms(r, z).sum(axis=1)

    def code_distance(self, z: np.ndarray) -> np.ndarray:
        """(n,): the code's term, the Mahalanobis distance (z - mu)' S^-1 (z - mu) or, with a code histogram,
        -2 sum_k log h_k(z_k) (``histogram_terms``)."""
        if self.histogram:
            return histogram_terms(z, self.edges, self.logdens)
        d = z - self.mu
        return np.einsum("ij,jk,ik->i", d, self.prec, d)

    def residual_terms(self, r: np.ndarray, z: np.ndarray | None = None) -> np.ndarray:
        """(n, D): each value's part of the residual term, c_d (C^-1 c)_d; (r_d / sigma_d)^2 for rank 0. They
        sum to c' C^-1 c (a part may be negative where values move together). The code regression needs the
        codes z of the same rows."""
        c = r / self.sigma
        if not self.rank:
            return c**2
        if self.regression:
            if z is None:
                raise ValueError("these statistics' residual model moves with the code: pass the codes z")
            c = c - (z - self.mu) @ self.coef
        c = c - self.rmean
        p = c @ self.basis
        return c * ((c - p @ self.basis.T) / self.noise + (p / self.lam) @ self.basis.T)

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        names = ("mu", "prec", "sigma") + (("rmean", "basis", "lam") if self.rank else ())
        out = {f"{prefix}{name}": torch.from_numpy(np.ascontiguousarray(getattr(self, name), dtype=np.float64))
               for name in names}
        if self.rank:
            out[f"{prefix}noise"] = torch.tensor([self.noise], dtype=torch.float64)
        if self.regression:
            out[f"{prefix}coef"] = torch.from_numpy(np.ascontiguousarray(self.coef, dtype=np.float64))
        if self.histogram:
            for name in ("edges", "logdens"):
                out[f"{prefix}{name}"] = torch.from_numpy(np.ascontiguousarray(getattr(self, name), dtype=np.float64))
        return out

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str, k: int, d: int, rank: int = 0,
                     regression: bool = False, histogram: bool = False) -> JointStats:
        """The statistics saved by ``tensors`` (a residual model of ``rank``, with the code regression, with the
        code histogram); a ValueError when one is missing or of the wrong shape."""
        got = {}
        shapes = (("mu", (k,)), ("prec", (k, k)), ("sigma", (d,)))
        if rank:
            shapes += (("rmean", (d,)), ("basis", (d, rank)), ("lam", (rank,)), ("noise", (1,)))
        if regression:
            if not rank:
                raise ValueError(f"{prefix}: a code regression without a residual model")
            shapes += (("coef", (k, d)),)
        if histogram:
            edges = tensors.get(prefix + "edges")
            bins = int(edges.shape[1]) - 1 if edges is not None and edges.dim() == 2 else 0
            if bins < 1:
                raise ValueError(f"{prefix}edges is missing or not of shape ({k}, bins + 1)")
            shapes += (("edges", (k, bins + 1)), ("logdens", (k, bins)))
        for name, shape in shapes:
            t = tensors.get(prefix + name)
            if t is None or tuple(t.shape) != shape:
                raise ValueError(f"{prefix}{name} is missing or not of shape {shape}")
            got[name] = t.double().numpy()
            if not np.isfinite(got[name]).all():
                raise ValueError(f"{prefix}{name}: non-finite statistics")
        if not (got["sigma"] > 0).all() or (rank and not ((got["lam"] > 0).all() and got["noise"][0] > 0)):
            raise ValueError(f"{prefix}: a residual standard deviation or variance <= 0")
        if histogram and not (np.diff(got["edges"], axis=1) > 0).all():
            raise ValueError(f"{prefix}edges: the histogram's bin edges do not increase")
        if rank:
            got["noise"] = float(got["noise"][0])
        return cls(**got)


def histogram_terms(z, edges, logdens):
    """(n,): -2 sum_k log h_k(z_k), the code histogram's term (``JointStats``) of codes z (n, K), with
    ``edges`` (K, B + 1) and ``logdens`` (K, B); numpy arrays or tensors alike (the Scorer's graph computes it
    with the same operations). A value outside its histogram's range gets half the density of its emptiest bin
    times a Gaussian tail in units of a bin's width: -2 log(min h_k / 2) + (distance to the range / width)^2."""
    lib = torch if isinstance(z, Tensor) else np
    bins = logdens.shape[1]
    lo, hi = edges[:, 0], edges[:, -1]
    width = (hi - lo) / bins
    pos = (z - lo) / width
    idx = lib.clip(lib.floor(pos), 0, bins - 1)
    idx = idx.long() if lib is torch else idx.astype(np.int64)
    offsets = lib.arange(logdens.shape[0]) * bins  # each code value's bins in the flattened (K * B) densities
    inside = logdens.reshape(-1)[idx + (offsets.to(idx.device) if lib is torch else offsets)]
    low = (logdens.min(dim=1).values if lib is torch else logdens.min(axis=1)) - math.log(2.0)
    beyond = lib.maximum(lo - z, z - hi) / width
    out = lib.where(beyond > 0, -2.0 * low + beyond * beyond, -2.0 * inside)
    return out.sum(1)


def smooth_residuals(r: Tensor, smooth: int) -> Tensor:
    """The joint score's residual images: each pixel of r (n, C, H, W) replaced by the mean of the ``smooth`` x
    ``smooth`` window around it (within the image: a window cut by the border averages the pixels it holds),
    so that an error spread over a region counts and pixel-level noise (an edge drawn one pixel off) averages
    out. ``smooth`` 1: r itself (tables always)."""
    if smooth == 1:
        return r
    return nn.functional.avg_pool2d(r, smooth, stride=1, padding=smooth // 2, count_include_pad=False)


def smooth_window(smooth, kind: str, shape: tuple) -> int:
    """``smooth`` as a window ``smooth_residuals`` can use on rows of ``kind`` and sample ``shape`` ((C, H, W)
    for images); a ValueError saying why when it cannot: not an odd integer >= 1, above 1 on a table (no
    neighbouring values), or wider than the images."""
    if not isinstance(smooth, numbers.Integral) or isinstance(smooth, bool) or smooth < 1 or smooth % 2 == 0:
        raise ValueError(f"{smooth!r} is not an odd integer >= 1 (1: residuals not smoothed)")
    if smooth > 1 and kind != "image":
        raise ValueError(f"{smooth}: a table has no neighbouring values to smooth residuals over; use 1")
    if smooth > min(shape[1:], default=1):
        raise ValueError(f"{smooth}: wider than the {shape[1]} x {shape[2]} images; use an odd window of at most "
                         f"{min(shape[1:])} pixels")
    return int(smooth)


def codes_and_residuals(model, x: Tensor, y: Tensor | None = None, smooth: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(codes (n, K), residuals x - reconstruction (n, values), smoothed by ``smooth_residuals``) of the
    model-unit rows x, float64 numpy."""
    z = metrics.codes(model, x, y).flatten(1)
    r = smooth_residuals(x - metrics.reconstructions(model, x, y), smooth).flatten(1)
    return z.double().cpu().numpy(), r.double().cpu().numpy()


def fit_joint(models, x: Tensor, kind: str, y: Tensor | None = None, rank: int = 0,
              smooth: int = 1, refits: int | None = None, regression: bool | None = None) -> list[JointStats]:
    """Each member's joint-score statistics fitted on the model-unit rows x (n, *shape) (and labels y, for a
    conditional family), with a residual model of ``rank`` factors (0: diagonal) of the residuals smoothed by
    ``smooth_residuals`` (``regression``: as ``JointStats.fit``)."""
    return [joint_stats(*codes_and_residuals(m, x, y, smooth), kind, rank, refits, regression) for m in models]


def joint_stats(z: np.ndarray, r: np.ndarray, kind: str, rank: int = 0, refits: int | None = None,
                regression: bool | None = None) -> JointStats:
    """``JointStats.fit`` of codes z (n, K) and residuals r (n, D) with the residual floor of the data's kind
    (``refits``: the trimmed refits, None: JOINT_REFITS; ``regression``: the code regression, None:
    JOINT_CODE_REGRESSION; the code histogram on tables when JOINT_CODE_HISTOGRAM, never on images)."""
    return JointStats.fit(z, r, floor=JOINT_SIGMA_FLOOR[kind], rank=rank, refits=refits, regression=regression,
                          histogram=None if kind == "table" else False)


def kth_neighbor_distance(z: Tensor, ref: Tensor, k: int) -> Tensor:
    """(n,) float64: the Euclidean distance of each code z (n, K) to its k-th nearest row of ref (m, K) (k is
    capped at m), in blocks of rows of NEIGHBOR_BLOCK distances (one block inside an ONNX export)."""
    z, k = z.flatten(1).to(torch.float64), min(int(k), ref.shape[0])
    rr = (ref * ref).sum(1)

    def kth(zi: Tensor) -> Tensor:  # |z - r|^2 = |z|^2 - 2 z.r + |r|^2: a matrix product (ONNX has it)
        d2 = ((zi * zi).sum(1, keepdim=True) - 2.0 * zi @ ref.T + rr).clamp_min(0.0)
        return torch.topk(d2, k, dim=1, largest=False).values[:, -1].sqrt()

    if torch.onnx.is_in_onnx_export():  # one block: a loop over rows would fix the graph's batch size
        return kth(z)
    step = max(1, NEIGHBOR_BLOCK // max(1, ref.shape[0]))
    return torch.cat([kth(z[i:i + step]) for i in range(0, max(z.shape[0], 1), step)])


def normalization(raw: np.ndarray) -> np.ndarray | None:
    """(members, 2): the median and interquartile range of each member's training scores raw (members, n);
    None for one member."""
    if len(raw) == 1:
        return None
    q1, median, q3 = np.percentile(raw, [25, 50, 75], axis=1)
    iqr = q3 - q1
    return np.stack([median, np.where(iqr > 0, iqr, 1.0)], axis=1)


class Scores(NamedTuple):
    """What ``Scorer.score`` returns, numpy, one entry per row: ``score`` float64 (higher = more anomalous),
    ``p_value`` float64 (None when the scorer has no calibration table), ``is_outlier`` bool (None when it
    has no threshold)."""

    score: np.ndarray
    p_value: np.ndarray | None
    is_outlier: np.ndarray | None


class Preprocess(nn.Module):
    """The user's values -> the model's input, as the run's data pipeline computes it.

    A table (N, D): ``((x - mean) / std)`` in float64 (buffers from the training rows' statistics), then the
    model's dtype. Images (N, C, H, W): uint8 / 255 (float32 arithmetic, as the readers), floats as they are
    (in [0, 1]), in the model's dtype. ``prepare`` reads any array-like into what ``forward`` takes;
    ``unscale`` maps a table back to the user's units.
    """

    def __init__(self, kind: str, input_shape: tuple[int, ...], stats: dict | None, dtype: torch.dtype):
        super().__init__()
        self.kind, self.input_shape, self.dtype = kind, tuple(input_shape), dtype
        if kind == "table":
            d = input_shape[0]
            mean = np.zeros(d) if stats is None else np.asarray(stats["mean"], dtype=np.float64)
            std = np.ones(d) if stats is None else np.asarray(stats["std"], dtype=np.float64)
            self.register_buffer("mean", torch.from_numpy(mean.copy()))
            self.register_buffer("std", torch.from_numpy(std.copy()))

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "table":
            return ((x.to(torch.float64) - self.mean) / self.std).to(self.dtype)
        if x.dtype == torch.uint8:
            return x.to(torch.float32).div(255.0).to(self.dtype)
        return x.to(self.dtype)

    def unscale(self, x: Tensor) -> Tensor:
        """Model units -> the user's units: a table's ``x * std + mean`` in float64; images as they are."""
        if self.kind == "table":
            return x.to(torch.float64) * self.std + self.mean
        return x

    def prepare(self, X) -> Tensor:
        """The rows ``forward`` reads from any array-like (numpy, lists, a tensor on any device, a DataFrame's
        values): (n, *input_shape) on the CPU, a table float64, images uint8 or float32 in [0, 1] ((N, H, W),
        (N, H, W, C) and (N, C, H, W) accepted). One DataError line for rows it cannot score (another number
        of features or image shape, NaN/Inf naming the first bad value, no rows)."""
        arr = read_samples(X, kind=self.kind)
        if tuple(arr.shape[1:]) != self.input_shape:
            if self.kind == "table":
                raise DataError(f"X has {arr.shape[1]} features, but the scorer is expecting {self.input_shape[0]} "
                                "features as input (the columns it was fitted on, in the same order)")
            raise DataError(f"X holds images of shape {tuple(arr.shape[1:])}, but the detector was fitted on images "
                            f"of shape {self.input_shape}; resize them first")
        arr = np.ascontiguousarray(arr)  # one memory layout: the float sums of a row never depend on X's
        return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


class Scorer(nn.Module):
    """The anomaly score of a detector (or a run), from the user's rows to (score, p_value, is_outlier).

    Parameters
    ----------
    members : list of aekit models
        The trained autoencoders (one for a plain run); all of one family and input shape, on one device.
    kind : {"table", "image"}
        What the rows are.
    stats : dict or None
        A table's ``{"mean": [...], "std": [...]}`` (``DataConfig.stats``); None for images.
    score : {"joint", "recon_error", "neg_elbo"}
        Each member's raw score (the module docstring).
    joint : list of JointStats, optional
        One per member; required for ``score="joint"``.
    normalization : ndarray (raw rows, 2), optional
        Median and IQR of each raw row (members, or members x 2 with ``neighbors``); several rows are combined
        only with it (``raw_model_units`` needs none).
    neighbors : int, default 0
        k of the code-space neighbour term (0: none); needs ``references``.
    references : list of ndarray (m_j, K), optional
        Each member's codes of the rows it trained on (the neighbour term's reference set).
    smooth : int, default 1
        The joint score's residual images are smoothed over this window (``smooth_residuals``; odd; images
        only; 1: not smoothed).
    threshold : float, optional
        ``is_outlier`` is ``score > threshold``; None: no threshold (NaN inside the module).
    calibration : ndarray (n_cal,), optional
        The calibration scores of ``Detector.calibrate`` (any order); None: ``p_value`` is NaN.
    feature_names : list of str, optional
        A table's column names (what ``aekit export`` writes in its sidecar).
    flag_rate, threshold_from : optional
        What the threshold promises: the calibration's false-positive rate ("calibration") or the
        contamination ("contamination"); metadata for exports, not used in the score.

    ``forward(x, y=None)``: x (N, *input_shape) as ``Preprocess`` reads it (a table in the user's units, any
    float dtype; images in [0, 1] or uint8) -> (score float64 (N,), p_value float64 (N,), is_outlier bool
    (N,)); ``y``: the labels of a conditional family (cvae). Deterministic scores only (``neg_elbo`` needs
    the batch as a whole: use ``score``). ``score(X)`` takes any array-like, checks it and runs in batches.
    """

    def __init__(self, members, *, kind: str, stats: dict | None, score: str, joint=None, normalization=None,
                 threshold: float | None = None, calibration=None, feature_names=None, flag_rate=None,
                 threshold_from: str | None = None, neighbors: int = 0, references=None, smooth: int = 1):
        super().__init__()
        if score not in SCORES:
            raise ConfigError(f"score: choose one of {', '.join(map(repr, SCORES))}, got {score!r}")
        if score == "joint" and (joint is None or len(joint) != len(members)):
            raise ConfigError("score='joint' needs the joint statistics of every member (JointStats)")
        if neighbors and (references is None or len(references) != len(members)):
            raise ConfigError("neighbors > 0 needs the reference codes of every member")
        first = members[0]
        try:
            smooth = smooth_window(smooth, kind, tuple(first.config.input_shape))
        except ValueError as e:
            raise ConfigError(f"Scorer(smooth=...): {e}") from None
        self.smooth = smooth if score == "joint" else 1
        self.members = nn.ModuleList(members)
        self.neighbors = int(neighbors)
        self.score_name, self.kind = score, kind
        self.input_shape = tuple(first.config.input_shape)
        self.feature_names = None if feature_names is None else list(feature_names)
        self.flag_rate, self.threshold_from = flag_rate, threshold_from  # what the threshold promises (metadata)
        self.stats = stats
        self.preprocess = Preprocess(kind, self.input_shape, stats, first.dtype)
        f64 = dict(dtype=torch.float64)
        self.ranks = [st.rank for st in joint] if score == "joint" else []  # each member's residual model
        self.regressions = [st.regression for st in joint] if score == "joint" else []  # ... with a code regression
        self.histograms = [st.histogram for st in joint] if score == "joint" else []  # the code term's histogram
        # the statistics in C order, as a loaded state holds them: a fitted and a loaded scorer compute alike
        for j, st in enumerate(joint or []) if score == "joint" else ():
            for name in ("mu", "prec", "sigma") + (("rmean", "basis", "lam") if st.rank else ()):
                self.register_buffer(f"{name}{j}", torch.as_tensor(np.ascontiguousarray(getattr(st, name)), **f64))
            if st.rank:
                self.register_buffer(f"noise{j}", torch.tensor(st.noise, **f64))
            if st.regression:
                self.register_buffer(f"coef{j}", torch.as_tensor(np.ascontiguousarray(st.coef), **f64))
            if st.histogram:
                self.register_buffer(f"edges{j}", torch.as_tensor(np.ascontiguousarray(st.edges), **f64))
                self.register_buffer(f"logdens{j}", torch.as_tensor(np.ascontiguousarray(st.logdens), **f64))
        for j, ref in enumerate(references or []) if self.neighbors else ():
            self.register_buffer(f"ref{j}", torch.as_tensor(np.asarray(ref), **f64).reshape(len(ref), -1))
        norm = np.zeros((0, 2)) if normalization is None else np.asarray(normalization, dtype=np.float64)
        self.register_buffer("normalization", torch.as_tensor(norm, **f64))
        self.register_buffer("threshold", torch.tensor(math.nan if threshold is None else float(threshold), **f64))
        cal = np.zeros(0) if calibration is None else np.sort(np.asarray(calibration, dtype=np.float64))
        self.register_buffer("calibration", torch.as_tensor(cal, **f64))
        self.to(first.device)
        self.training = self.preprocess.training = False  # the members' flag is theirs (it changes no score)

    # --- what it holds ----------------------------------------------------------------------------
    @property
    def has_threshold(self) -> bool:
        return not bool(torch.isnan(self.threshold))

    @property
    def calibrated(self) -> bool:
        return self.calibration.numel() > 0

    @property
    def conditional(self) -> bool:
        """Whether the members' networks read a label (cvae): then ``forward`` / ``score`` need ``y``."""
        return bool(self.members[0].capabilities.conditional)

    @property
    def device(self) -> torch.device:
        return self.threshold.device

    # --- the module -------------------------------------------------------------------------------
    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        if self.score_name == "neg_elbo":
            raise ConfigError("the -ELBO score draws posterior samples per batch; use Scorer.score(X) (a graph "
                              "of it cannot reproduce them): for an exportable score fit a Detector (joint score)")
        return self.decide(self.combine(self.raw_scores(self.preprocess(x), y)))

    def raw_scores(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Each member's raw score(s) of the model-unit rows x (n, *input_shape): (members, n) float64, or
        (members x 2, n) with the neighbour term (member j's score in row 2j, its neighbour term in 2j + 1).
        Deterministic scores in one pass (the caller batches); ``neg_elbo`` through ``metrics.anomaly_scores``
        (blocks of its own, samples seeded by SCORE_SEED)."""
        out = []
        for j, m in enumerate(self.members):
            if self.score_name == "neg_elbo":
                s = metrics.anomaly_scores(m, x, y, mc_samples=MC_SAMPLES, seed=SCORE_SEED)["neg_elbo"]
                out.append(torch.as_tensor(s).to(device=self.device, dtype=torch.float64))
                if self.neighbors:  # the codes (posterior means) as the references were taken: model.encode
                    out.append(kth_neighbor_distance(metrics.codes(m, x, y), getattr(self, f"ref{j}"), self.neighbors))
                continue
            z = m.encode(x, y)
            rec = m.decode(z, y)
            if self.score_name == "recon_error":
                out.append(metrics.sse_per_example(x, rec).to(torch.float64))
            else:
                c = smooth_residuals(x - rec, self.smooth).flatten(1).to(torch.float64) / getattr(self, f"sigma{j}")
                d = z.flatten(1).to(torch.float64) - getattr(self, f"mu{j}")
                if self.histograms[j]:
                    code = histogram_terms(z.flatten(1).to(torch.float64), getattr(self, f"edges{j}"),
                                           getattr(self, f"logdens{j}"))
                else:
                    code = ((d @ getattr(self, f"prec{j}")) * d).sum(1)
                if self.ranks[j]:  # JointStats.residual_terms: sum_i (v_i'c)^2 / lam_i + |c - V V'c|^2 / s2
                    if self.regressions[j]:
                        c = c - d @ getattr(self, f"coef{j}")
                    c = c - getattr(self, f"rmean{j}")
                    basis = getattr(self, f"basis{j}")
                    p = c @ basis
                    out.append(code + (p.pow(2) / getattr(self, f"lam{j}")).sum(1)
                               + (c - p @ basis.T).pow(2).sum(1) / getattr(self, f"noise{j}"))
                else:
                    out.append(code + c.pow(2).sum(1))
            if self.neighbors:
                out.append(kth_neighbor_distance(z, getattr(self, f"ref{j}"), self.neighbors))
        return torch.stack(out)

    def combine(self, raw: Tensor) -> Tensor:
        """One score per row from raw (rows, n): the one row, or the mean of (s - median) / IQR over the rows."""
        if raw.shape[0] == 1:
            return raw[0]
        if self.normalization.shape[0] != raw.shape[0]:
            raise ConfigError(f"{raw.shape[0]} raw scores need their normalization (median, IQR) to be combined")
        return ((raw - self.normalization[:, :1]) / self.normalization[:, 1:]).mean(0)

    def decide(self, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(score, p_value, is_outlier) of scores (n,) float64 (see the module docstring)."""
        n_cal = self.calibration.shape[0]
        if torch.onnx.is_in_onnx_export():  # no searchsorted in ONNX: count by comparison (n, n_cal)
            at_least = (self.calibration[None, :] >= score[:, None]).to(torch.float64).sum(1)
        else:
            at_least = (n_cal - torch.searchsorted(self.calibration, score, side="left")).to(torch.float64)
        p = (1.0 + at_least) / (n_cal + 1.0)
        if n_cal == 0:
            p = torch.full_like(score, math.nan)
        return score, p, score > self.threshold

    # --- numpy in, numpy out ----------------------------------------------------------------------
    def prepare(self, X) -> Tensor:
        """``Preprocess.prepare``: any array-like -> the checked rows ``forward`` reads, on the CPU."""
        return self.preprocess.prepare(X)

    def model_input(self, X) -> Tensor:
        """X as the members read it: (n, *input_shape) in their dtype on their device, in X's row order."""
        return self.preprocess(self.prepare(X).to(self.device))

    def score(self, X, y=None, batch_size: int | None = None) -> Scores:
        """Scores, p-values and decisions of the rows X (any array-like ``prepare`` reads), numpy."""
        return self.decisions(self.score_model_units(self.model_input(X), y, batch_size))

    def score_model_units(self, x: Tensor, y=None, batch_size: int | None = None) -> np.ndarray:
        """The combined score of rows already in model units (a split of the run's Dataset), (n,) float64."""
        with torch.no_grad():
            return self.combine(self.raw_model_units(x, y, batch_size)).cpu().numpy()

    def raw_model_units(self, x: Tensor, y=None, batch_size: int | None = None) -> Tensor:
        """Each member's raw score of model-unit rows, (members, n) float64 on the scorer's device, in batches of
        ``batch_size`` (default ``arraylike.BATCH_ROWS``) rows, without autograd. x: a tensor, an array, or a
        ``datasets`` Store (read batch by batch: a memory-mapped split is never copied whole)."""
        if not (isinstance(x, Tensor) or callable(getattr(type(x), "materialize", None))):
            x = torch.as_tensor(x)
        yt = None if y is None else torch.as_tensor(y)
        with torch.no_grad():
            if self.score_name == "neg_elbo":  # one call: its samples are drawn per block of the whole input
                return self.raw_scores(x.to(self.device), _to(yt, self.device))
            step = batch_size or BATCH_ROWS
            return torch.cat([self.raw_scores(x[i:i + step].to(self.device, self.members[0].dtype),
                                              _to(None if yt is None else yt[i:i + step], self.device))
                              for i in range(0, max(len(x), 1), step)], dim=1)

    def encode(self, X, y=None) -> np.ndarray:
        """Codes (n, K) of the rows X by the first member (the run's model): its deterministic code, the
        posterior mean for probabilistic families. numpy, in batches."""
        return _numpy(metrics.codes(self.members[0], self.model_input(X), _to(_tensor(y), self.device)))

    def reconstruct(self, X, y=None) -> np.ndarray:
        """The first member's reconstructions of the rows X, (n, *input_shape), in the user's units (a table
        float64 in its own units, images in [0, 1])."""
        x = self.model_input(X)
        with torch.no_grad():
            return _numpy(self.preprocess.unscale(metrics.reconstructions(self.members[0], x,
                                                                          _to(_tensor(y), self.device))))

    def decode(self, Z, y=None) -> np.ndarray:
        """The mean of p(x|z) of codes Z (n, K) by the first member, in the user's units."""
        m = self.members[0]
        z = torch.as_tensor(np.asarray(Z), dtype=m.dtype, device=self.device)
        with torch.no_grad():
            return _numpy(self.preprocess.unscale(m.decode(z, _to(_tensor(y), self.device))))

    def decisions(self, scores: np.ndarray) -> Scores:
        """``Scores`` of combined scores (n,) float64: their p-values and decisions (None where not defined)."""
        with torch.no_grad():
            s, p, out = self.decide(torch.as_tensor(scores, dtype=torch.float64, device=self.device))
        return Scores(np.asarray(scores, dtype=np.float64), p.cpu().numpy() if self.calibrated else None,
                      out.cpu().numpy() if self.has_threshold else None)

    # --- building ---------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, path, device=None) -> Scorer:
        """The scorer of a run directory: its detector state (``Detector.save``, ``aekit calibrate``, ``aekit
        train --contamination``), or for a plain run of ``aekit train`` its model with the run's table
        statistics and the score "auto" means there (recon_error, or neg_elbo for probabilistic families), no
        threshold. ``device``: None the CPU, "auto" the best one here."""
        run = Run.open(path)
        where = torch.device("cpu") if device is None else torch.device(resolve_device(device))
        state = load_state(run, where)
        return state.scorer(run)


def _to(t: Tensor | None, device) -> Tensor | None:
    return None if t is None else t.to(device)


def _tensor(y) -> Tensor | None:
    return None if y is None else torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y)


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


# --------------------------------------------------------------------------------------------------
# The detector state: what a run directory holds beyond the model, published as one file by Run


@dataclass
class DetectorState:
    """A detector's state besides its first model: what ``Detector`` saves and ``Scorer.from_run`` reads.

    ``members``: every model (the run's own first); ``params``: the Detector's parameters (JSON types);
    ``score``; ``joint``; ``normalization``; ``threshold`` with ``flag_rate`` and ``threshold_from``
    ("contamination" | "calibration" | None); ``decision_scores`` (training scores) and
    ``calibration_scores``; ``feature_names`` (+ ``feature_names_in`` of a DataFrame); ``seeds``.
    ``fitted`` False: a plain run (no state file): "auto" scores are resolved accordingly.
    """

    members: list
    kind: str
    input_shape: tuple
    stats: dict | None
    score: str
    params: dict = field(default_factory=dict)
    joint: list | None = None
    normalization: np.ndarray | None = None
    threshold: float | None = None
    flag_rate: float | None = None
    threshold_from: str | None = None
    decision_scores: np.ndarray | None = None
    calibration_scores: np.ndarray | None = None
    feature_names: list = field(default_factory=list)
    feature_names_in: list | None = None
    seeds: list | None = None
    fitted: bool = True
    neighbors: int = 0
    references: list | None = None
    smooth: int = 1

    def scorer(self, run: Run | None = None) -> Scorer:
        return Scorer(self.members, kind=self.kind, stats=self.stats, score=self.score, joint=self.joint,
                      normalization=self.normalization, threshold=self.threshold,
                      calibration=self.calibration_scores, feature_names=self.feature_names,
                      flag_rate=self.flag_rate, threshold_from=self.threshold_from, neighbors=self.neighbors,
                      references=self.references, smooth=self.smooth)


def weights_digest(model) -> str:
    """sha256 of a model's state dict (names, dtypes, shapes and bytes, in name order): what a detector state
    records of the run's weights, so that a state is never applied to other weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_state(run: Run, state: DetectorState) -> None:
    """Publish ``state`` in the claimed run ``run`` (one file, atomically: ``Run.write_detector_state``)."""
    members = state.members
    tensors = {f"member{k}/{name}": t for k, m in enumerate(members) if k for name, t in m.state_dict().items()}
    for j, st in enumerate(state.joint or []):
        tensors.update(st.tensors(f"joint{j}/"))
    for j, ref in enumerate(state.references or []) if state.neighbors else ():
        tensors[f"reference{j}"] = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float64))
    for name in ("decision_scores", "calibration_scores"):
        value = getattr(state, name)
        if value is not None:
            tensors[name] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float64))
    meta = {
        "format": STATE_FORMAT, "params": state.params, "kind": state.kind, "input_shape": list(state.input_shape),
        "n_features_in": math.prod(state.input_shape), "feature_names": list(state.feature_names),
        "feature_names_in": state.feature_names_in, "score": state.score, "mc_samples": MC_SAMPLES,
        "score_seed": SCORE_SEED, "n_members": len(members), "seeds": state.seeds, "neighbors": state.neighbors,
        "n_references": [len(r) for r in state.references] if state.neighbors else None,
        "residual_ranks": [st.rank for st in state.joint] if state.joint else None,
        "residual_regressions": [st.regression for st in state.joint] if state.joint else None,
        "code_histograms": [int(st.logdens.shape[1]) if st.histogram else 0 for st in state.joint]
        if state.joint else None,
        "residual_smooth": state.smooth,
        "normalization": None if state.normalization is None else np.asarray(state.normalization).tolist(),
        "threshold": state.threshold, "flag_rate": state.flag_rate, "threshold_from": state.threshold_from,
        "n_decision_scores": None if state.decision_scores is None else len(state.decision_scores),
        "n_calibration_scores": None if state.calibration_scores is None else len(state.calibration_scores),
        "weights_sha256": weights_digest(members[0]),
    }
    run.write_detector_state(meta, tensors)


def load_state(run: Run, where: torch.device | None = None) -> DetectorState:  # noqa: C901 (one check per field of the saved state)
    """The detector state of ``run`` with its models on ``where`` (default the CPU); for a plain run (no
    state file) its model, its table statistics and ``fitted=False``. Every inconsistency is one RunError
    naming the file; a state is read whole or not at all (``Run.detector_state``)."""
    where = torch.device("cpu") if where is None else where
    first = run.model(device=where)
    shape = tuple(run.model_config.input_shape)
    kind = "image" if len(shape) == 3 else "table"
    data = run.data if run.data is not None else DataConfig(name_or_path=None)
    d = math.prod(shape)
    code = int(first.latent_dim)
    member_bytes = sum(t.numel() * t.element_size() for t in first.state_dict().values())

    def bound(meta: dict) -> int:
        k, counts = _counts(meta)
        joint_bytes = k * 8 * (code + code * code + d) + 8 * sum((d + 1) * (q + 1) for q in _ranks(meta, k, d)) \
            + 8 * code * d * sum(_regressions(meta, k)) + 16 * code * sum(_histograms(meta, k))
        return (k - 1) * member_bytes + 8 * sum(counts) + joint_bytes + 8 * code * sum(_references(meta, k))

    found = run.detector_state(bound)
    if found is None:
        if kind == "table" and data.stats is None:
            raise RunError(f"{run.path}: the run records no table statistics (config.json 'data'), so new rows "
                           "cannot be scaled as its training rows were")
        features = data.features
        return DetectorState(members=[first], kind=kind, input_shape=shape, stats=data.stats,
                             score=resolve_score("auto", first, fitted=False), fitted=False,
                             feature_names=list(features) if features else
                             ([f"f{i}" for i in range(d)] if kind == "table" else []),
                             seeds=[None, run.train.seed])
    meta, tensors, file = found
    try:
        if meta["format"] not in range(1, STATE_FORMAT + 1) or meta["kind"] != kind \
                or tuple(meta["input_shape"]) != shape:
            raise ValueError("its format, kind or input shape does not match config.json")
        k, counts = _counts(meta)
        if not isinstance(meta["params"], dict):
            raise ValueError("params is not an object")
        if meta["score"] not in SCORES:
            raise ValueError(f"unknown score {meta['score']!r}")
        score = resolve_score(meta["score"], first)
        smooth = _smooth(meta, kind, shape)
        neighbors, n_refs = int(meta.get("neighbors") or 0), _references(meta, k)
        rows = k * (2 if neighbors else 1)
        norm = meta["normalization"]
        norm = None if norm is None else np.asarray(norm, dtype=np.float64).reshape(rows, 2)
        if (norm is None) != (rows == 1) or (norm is not None and not np.isfinite(norm).all()):
            raise ValueError(f"{k} member(s) with normalization {meta['normalization']!r}")
        threshold, source = meta["threshold"], meta["threshold_from"]
        threshold = None if threshold is None else float(threshold)
        rate = None if meta["flag_rate"] is None else float(meta["flag_rate"])
        if source not in (None, "contamination", "calibration") or (source is None) != (threshold is None) \
                or (source == "calibration") != (counts[1] > 0):
            raise ValueError(f"threshold_from={source!r}, threshold={threshold!r} and {counts[1]} calibration "
                             "scores do not go together")
        digest = meta.get("weights_sha256")
        if meta["format"] >= 2 and digest != weights_digest(first):
            raise RunError(f"{file}: the detector state was computed for other weights than {run.path}'s "
                           "model.safetensors (the run was trained again, or its save was interrupted); "
                           "calibrate it again (`aekit calibrate`) or fit and save the detector again")
        names = [str(n) for n in meta["feature_names"]]
        names_in = None if meta["feature_names_in"] is None else [str(c) for c in meta["feature_names_in"]]
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{file}: not a detector state this aekit can read ({type(e).__name__}: {e}); the run "
                       "directory may be damaged") from None
    if threshold is not None and not math.isfinite(threshold):
        raise RunError(f"{file}: the threshold is {threshold} (not a finite number), which would flag nothing or "
                       "everything; calibrate the detector again (`aekit calibrate RUN --normal DATA`)")
    references = None
    if neighbors:
        references = [tensors.get(f"reference{j}") for j in range(k)]
        if any(r is None or tuple(r.shape) != (n, code) or not bool(torch.isfinite(r).all())
               for r, n in zip(references, n_refs)):
            raise RunError(f"{file}: the neighbour term's reference codes do not match the {k} member(s) of code "
                           f"{code} the state announces; the run directory may be damaged")
        references = [r.double().numpy() for r in references]
    joint = None
    if score == "joint":
        try:
            joint = [JointStats.from_tensors(tensors, f"joint{j}/", code, d, q, g, b > 0)
                     for j, (q, g, b) in enumerate(zip(_ranks(meta, k, d), _regressions(meta, k),
                                                       _histograms(meta, k)))]
            if any(b and st.logdens.shape[1] != b for st, b in zip(joint, _histograms(meta, k))):
                raise ValueError("a code histogram's bins differ from code_histograms")
        except ValueError as e:
            raise RunError(f"{file}: the joint score's statistics do not match the model ({e}); the run "
                           "directory may be damaged") from None
    members = [first]
    for j in range(1, k):
        member = registry.instantiate(run.model_name, run.model_config, seed=0)  # seeded: no global RNG draw
        prefix = f"member{j}/"
        try:
            member.load_state_dict({n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)})
        except RuntimeError as e:
            raise RunError(f"{file}: the weights of member {j} do not match the model in config.json "
                           f"({str(e).strip().splitlines()[-1].strip()})") from None
        members.append(member.eval().to(where))
    scores = {}
    for name, n in zip(("decision_scores", "calibration_scores"), counts):
        t = tensors.get(name)
        if (t is None) != (n == 0) or (t is not None and tuple(t.shape) != (n,)):
            raise RunError(f"{file}: {name} do not match the {n} the state announces; the run directory may be "
                           "damaged")
        scores[name] = None if t is None else t.double().numpy()
    cal = scores["calibration_scores"]
    if cal is not None and not np.isfinite(cal).all():
        raise RunError(f"{file}: the calibration scores hold NaN or Inf; calibrate the detector again")
    return DetectorState(
        members=members, kind=kind, input_shape=shape, stats=data.stats, score=score, params=meta["params"],
        joint=joint, normalization=norm, threshold=threshold, flag_rate=rate, threshold_from=source,
        decision_scores=scores["decision_scores"], calibration_scores=cal, feature_names=names,
        feature_names_in=names_in, seeds=meta["seeds"], neighbors=neighbors, references=references,
        smooth=smooth)


def _references(meta: dict, k: int) -> list[int]:
    """The number of reference codes of each of the k members a state announces ([] without the neighbour
    term); ValueError when impossible."""
    if not meta.get("neighbors"):
        return []
    if int(meta["neighbors"]) < 1:
        raise ValueError(f"neighbors {meta['neighbors']!r}")
    n = [int(v) for v in meta["n_references"]]
    if len(n) != k or min(n) < 1:
        raise ValueError(f"n_references {meta['n_references']!r} for {k} member(s)")
    return n


def _ranks(meta: dict, k: int, d: int) -> list[int]:
    """The rank of each of the k members' residual model a state announces (0: diagonal; states before format
    4 have none); ValueError when impossible for d values."""
    ranks = meta.get("residual_ranks")
    if ranks is None:
        return [0] * k
    q = [int(v) for v in ranks]
    if len(q) != k or min(q) < 0 or max(q) >= max(d, 1):
        raise ValueError(f"residual_ranks {ranks!r} for {k} member(s) of {d} values")
    return q


def _regressions(meta: dict, k: int) -> list[bool]:
    """Whether each of the k members' residual model has the code regression (states before format 6: none);
    ValueError when the list does not fit."""
    flags = meta.get("residual_regressions")
    if flags is None:
        return [False] * k
    if not isinstance(flags, list) or len(flags) != k or any(not isinstance(v, bool) for v in flags):
        raise ValueError(f"residual_regressions {flags!r} for {k} member(s)")
    return list(flags)


def _histograms(meta: dict, k: int) -> list[int]:
    """The bins of each of the k members' code histogram, 0 for none (states before format 7: none); ValueError
    when the list does not fit."""
    bins = meta.get("code_histograms")
    if bins is None:
        return [0] * k
    if not isinstance(bins, list) or len(bins) != k or any(type(b) is not int or b < 0 for b in bins):
        raise ValueError(f"code_histograms {bins!r} for {k} member(s)")
    return list(bins)


def _smooth(meta: dict, kind: str, shape: tuple) -> int:
    """The window over which a state's residual images are smoothed (1: none; states before format 5 have
    none); ValueError when impossible for its data."""
    smooth = meta.get("residual_smooth")
    if smooth is None:
        return 1
    try:
        return smooth_window(smooth, kind, shape)
    except ValueError as e:
        raise ValueError(f"residual_smooth {e}") from None


def _counts(meta: dict) -> tuple[int, list[int]]:
    """(members, [training scores, calibration scores]) a state announces; ValueError when impossible."""
    k = int(meta["n_members"])
    counts = [int(meta[f"n_{name}_scores"] or 0) for name in ("decision", "calibration")]
    if k < 1 or min(counts) < 0:
        raise ValueError("negative counts")
    return k, counts


__all__ = ["Scorer", "Scores", "Preprocess", "JointStats", "DetectorState", "resolve_score", "load_state",
           "save_state", "fit_joint", "joint_stats", "codes_and_residuals", "normalization", "weights_digest",
           "kth_neighbor_distance", "smooth_residuals", "smooth_window",
           "histogram_terms", "least_squares"]
