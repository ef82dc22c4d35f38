"""``Detector``: an autoencoder anomaly detector to deploy, with PyOD's detector API and scikit-learn's contract.

    det = Detector(contamination=0.05, random_state=0).fit(X_train)   # unsupervised: y is ignored
    det.decision_function(X)        # (n,) float64, higher = more anomalous
    det.predict(X)                  # (n,) int64, 0 normal / 1 outlier (PyOD's convention)
    det.predict_proba(X)            # (n, 2) [P(normal), P(outlier)]: "linear" or "unify", as PyOD
    det.predict_confidence(X)       # (n,) ExCeeD confidence of each prediction (Perini et al., 2020)
    det.calibrate(X_normal, fpr=0.01).predict_pvalue(X)   # split-conformal threshold and p-values
    det.explain(X)                  # per-feature (tables) or per-pixel (images) contributions
    det.save("runs/det"); Detector.load("runs/det")       # a run directory: `aekit eval` reads it too

The API is PyOD's ``BaseDetector`` (which ADBench and DeepOD adopt): ``fit(X, y=None)``,
``decision_function``, ``predict`` (0/1), ``predict_proba(X, method="linear"|"unify")``,
``predict_confidence`` and, after fit, ``decision_scores_``, ``threshold_`` (the (1 - contamination)
percentile of the training scores), ``labels_`` and ``n_features_in_``.

scikit-learn. ``Detector`` is a ``BaseEstimator``: ``__init__`` only stores its parameters, ``random_state``
(None, an int or a ``np.random.RandomState``) is resolved in ``fit`` (None: a new draw from numpy's global
RNG at every fit, as in scikit-learn; a default seed fixed at construction is pyod issue #750), and
get_params / set_params / clone / Pipeline / GridSearchCV (e.g. ``scoring="roc_auc"``, which reads
``decision_function``) work. It does *not* inherit ``OutlierMixin``, as PyOD's BaseDetector does not:
scikit-learn's outlier detectors predict +1 (inlier) / -1 (outlier) and their decision_function is higher
for *normal* samples (negative for outliers), the opposite of PyOD's convention that this class follows.
``check_estimator`` passes as a plain estimator (tests/test_detector_sklearn.py lists what it skips).

Data. ``X`` is a numpy array, a torch tensor (any float dtype, any device), nested lists, a pandas
DataFrame (its column names become the feature names) or anything ``np.asarray`` takes: a table (N, D),
or images (N, H, W), (N, H, W, C), (N, C, H, W) of uint8 or numbers in [0, 1]. It is read by
``aekit.datasets.from_arrays`` (the rules of a .npy file, NaN/Inf refused naming the first bad row), and a
table is scaled with statistics of the training rows that are saved with the model (``preprocessing``:
"standard" = mean and std, "minmax" = min and range, "none"; images are used as they are, in [0, 1]).
New data at predict time is read the same way with the same statistics, in the caller's row order.

Defaults: chosen by benchmarks/adbench_select.py for tables (leave-one-group-out over groups of ADBench sets,
embeddings and sets made from them; benchmarks/README.md, "Selection protocol"; evidence in
benchmarks/RESULTS_adbench_select.md and RESULTS_adbench.md), and on validation splits of Fashion-MNIST's
training images and digits for images (benchmarks/fmnist_select.py; RESULTS_fmnist_select.md; the test images
in RESULTS_fmnist_oneclass.md):

- ``model="ae"``: the plain autoencoder; any family of ``aekit.MODELS`` that trains without labels (cvae and
  the supervised aae need labels: a ConfigError). ``model_options``: that family's own options.
  ``encoder`` / ``decoder`` (with ``encoder_args`` / ``decoder_args``): custom networks, as ``aekit.build`` takes
  them (an import path 'package.module:Class', or an instance whose arguments can be recovered).
- ``folds="auto"``: on a table, cross-fitting (``aekit.adapt``): the distinct rows are dealt into 2 folds
  (1, no cross-fitting, below 10 distinct rows; images too, chosen by benchmarks/fmnist_select.py on
  validation data, RESULTS_fmnist_select.md); the ``n_estimators`` members of fold k train on the
  other folds, and their score statistics, normalization and the training scores of fold k's rows come from
  fold k, which they never saw, so the contamination threshold holds on unseen rows. An int sets K (1: every
  member trains on every row and the statistics come from those rows, as before issue 18).
- ``neighbors=0``: k > 0 adds to each cross-fitted member's score a code-space neighbour term, the distance
  of a row's code to its k-th nearest code among the rows that member trained on, normalized like the score
  (median and IQR over the member's held-out fold) and averaged with it (``aekit.scoring``). Off by default:
  selection round 2 (benchmarks/README.md) measured +2.1 AUROC points on the tables of more than 12 features
  and +1.3 on the 200-row tables with k = 10, but -1.3 on low-dimensional tables and -1.8 on planted
  anomalies, and the rule on mean rank keeps it off (RESULTS_adbench_select2.md). Needs ``folds`` >= 2.
- ``latent_dim=None``: for a table ``aekit.adapt.table_latent``: min(16, d // 2, rows of a fold // 6), at
  least 1; ``max(2, min(32, d // 4))`` for images of d values.
  ``hidden=None``: (64, 64) for a table with an MLP (``TABLE_HIDDEN``); the family's default for images.
- ``epochs=None``: tables: about ``TABLE_STEPS`` = 100 optimizer steps per member in at most ``TABLE_MAX_EPOCHS``
  = 10 epochs (``min(10, round(100 / steps_per_epoch))`` epochs, at least 1: fewer steps on a member of fewer
  than ~1200 rows; selection rounds 7 and 8 of benchmarks/README.md), no early stopping, the weights of the
  best validation epoch kept; ADBench's tables are small and a short budget generalizes best there. Images:
  ``ceil(TARGET_STEPS / steps_per_epoch)`` epochs capped at ``MAX_EPOCHS`` (about 750 steps, at most 200
  epochs; images round 5 of benchmarks/README.md halved them), with early stopping after ``PATIENCE`` epochs
  without improvement of the loss on the held-out ``val_fraction`` of X. An explicit ``epochs`` trains
  that many epochs (best validation weights kept). With fewer than ``1 / val_fraction`` rows there is no
  validation part.
- ``novelty=False``: X may hold outliers (outlier detection, ADBench's protocol), and a table's members get the
  short budget above, which fits the outliers of a contaminated table less. ``novelty=True`` says X holds only
  normal rows (novelty detection, as scikit-learn's ``LocalOutlierFactor(novelty=True)``; ``aekit train
  --normal-class`` sets it): a table's members then train about ``NOVELTY_STEPS`` = 250 optimizer steps with no
  epoch cap, and the joint score's statistics are fitted once on all of a fold's rows instead of being refitted
  on the 80% of lowest score (``NOVELTY_JOINT_REFITS`` = 0: the trimming guards against outliers that rows known
  to be normal do not hold); chosen on one-class tasks by selection rounds 9 and 10 of benchmarks/README.md.
  Nothing else changes; images are unaffected.
- ``anomaly_score="auto"``: ``"joint"`` for every family (``aekit.scoring.JointStats``): with z = f(x) the code
  and r = x - g(f(x)) the residual in the model's units, ``(z - mu)' S^-1 (z - mu) + sum_d (r_d / sigma_d)^2``,
  i.e. -2 log p(x) + const under "code ~ N(mu, S), x | code ~ N(g(code), diag sigma^2)", its statistics fitted on the
  training rows a member did not train on (``folds``) and refitted on their least anomalous 80%.
  ``"recon_error"``: the sum of squared errors of the reconstruction (model units). ``"neg_elbo"``: -ELBO in
  nats, ``MC_SAMPLES`` posterior samples from a fixed seed, for probabilistic families (vae, iwae); the
  Monte-Carlo -ELBO of a row depends slightly on the other rows of its batch (one generator draws for the
  batch). A plain run directory of ``aekit train`` opened with ``load`` has no joint statistics: there "auto" is
  "neg_elbo" for probabilistic families and "recon_error" for the others.
- ``residual_rank="auto"``: the joint score's residual model (``aekit.scoring.JointStats``). 0: the diagonal
  model above. q > 0: ``x | code ~ N(g(code) + sigma * m, diag(sigma) C diag(sigma))`` with C a probabilistic
  PCA of q factors of the scaled residuals (maximum likelihood, fitted on a member's held-out rows after the
  diagonal model's trimming), so the residual term is a Mahalanobis distance in which values whose errors move
  together count once. "auto": ``adapt.TABLE_RESIDUAL_RANK`` = 8 on a table (at most D - 1), the diagonal
  model on images, as selection round 4 chose on fresh seeds (benchmarks/README.md; RESULTS_adbench_select4.md:
  held-out folds +2.43 AUROC points over IForest against +1.46 for the diagonal model, its largest gains on
  tables of at most 12 features).
- ``residual_smooth="auto"``: on images whose sides have at least ``adapt.SMOOTH_MIN_SIDE`` = 16 pixels, each
  member's residual image is smoothed over a 3 x 3 window (``adapt.IMAGE_RESIDUAL_SMOOTH``;
  ``aekit.scoring.smooth_residuals``: the mean of the window within the image) before the joint score's
  statistics are fitted and rows are scored, so an error spread over a region counts and an edge drawn one
  pixel off averages out; chosen on validation images (benchmarks/README.md, "Selection for images, round 3").
  Smaller images (digits' 8 x 8) and tables: 1, not smoothed.
- ``n_estimators=1``: members per fold, trained from different seeds. With several members in all, each
  member's scores are normalized by the median and interquartile range of its scores of the rows it did not
  train on (with ``folds=1``: of its training rows), ``(s - median) / IQR``, and averaged (not ranks: a rank
  saturates beyond the largest training score, where the outliers are).
- ``robust=False``: when True, a first pass is trained on all rows, the rows above the (1 - contamination)
  quantile of its training scores are dropped, and the detector is trained again on the rest (preprocessing
  statistics included).
- ``contamination=0.1`` in (0, 0.5], ``batch_size=128``, ``lr=1e-3``, ``val_fraction=0.1``,
  ``device="auto"`` (CUDA, else MPS, else the CPU; ``load`` puts the models on the saved device where it
  exists here, else on the CPU).

Scoring. Every score, p-value and decision comes from ``aekit.scoring.Scorer`` (``scorer()`` returns the
detector's: one ``torch.nn.Module`` from raw rows to score, p-value and is_outlier), the module that
``aekit score``, ``aekit eval``, ``aekit export`` and ``aekit serve`` use too.

Calibration. ``calibrate(X_normal, fpr)`` keeps held-out normal data's scores and sets ``threshold_`` to the
``ceil((n + 1)(1 - fpr))``-th smallest of them (split-conformal): under exchangeability a new normal
sample is flagged with probability at most fpr. ``predict_pvalue(X)`` = (1 + #{calibration scores >= s}) /
(n + 1) is then a valid p-value.

Persistence. ``save(path)`` writes a run directory through ``aekit.Run`` (config.json, metrics.jsonl,
summary.json, the detector state, and model.safetensors of the first member last: a folder whose save was
killed has no weights and is refused by ``load``, never read as another detector). The detector state
(``aekit.scoring.save_state``: parameters, threshold, score, shape, feature names, the members'
normalization and joint statistics, training and calibration scores, the weights of members 1..) is one
file, detector.safetensors, published atomically under the run's lock by ``Run.write_detector_state``, so
that a ``load`` concurrent with ``calibrate`` reads one state or the other, whole. ``Detector.load(path)``
rebuilds it without unpickling anything; it also opens a plain run directory of ``aekit train`` (its model
and its table statistics, no threshold until ``calibrate``).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import adapt, metrics, registry, scoring, trainer
from .arraylike import sample_rows
from .config import TrainConfig, resolve_device
from .datasets import DataConfig, check_arrays, from_arrays, preview, read_samples
from .errors import ConfigError, DataError, RunError
from .run import Run
from .scoring import Preprocess, Scorer

TARGET_STEPS = 750  # epochs=None: about this many optimizer steps ...
MAX_EPOCHS = 200  # ... but at most this many epochs
PATIENCE = 10  # epochs=None: early stopping after this many epochs without a better validation loss
PNG_IMAGES = 16  # explain(png=...) draws the first images only
SCORES = ("auto", *scoring.SCORES)
# the defaults for tables, chosen by benchmarks/adbench_select.py (see aekit.adapt for folds and the code size)
TABLE_LATENT = 16  # the largest code of a table (fit sizes a table's code with adapt.table_latent)
TABLE_HIDDEN = (64, 64)  # hidden=None on a table with an MLP family
TABLE_STEPS = 100  # epochs=None on a table: about this many optimizer steps per member, best validation epoch kept
TABLE_MAX_EPOCHS = 10  # ... in at most this many epochs (None: no cap; benchmarks/README.md, round 7) ...
TABLE_CAP_FROM_BATCHES = 1  # ... where a member's training rows fill at least this many batches (round 8: 1)
NOVELTY_STEPS = 250  # novelty=True on a table: about this many optimizer steps per member, no cap (round 9) ...
NOVELTY_JOINT_REFITS = 0  # ... and the joint statistics fitted once on every row, not trimmed (round 10)
PREPROCESSING = ("standard", "minmax", "none")
_SET_BY_DETECTOR = {"latent_dim": "Detector(latent_dim=...)", "hidden": "Detector(hidden=...)",
                    "input_shape": "the data", "num_classes": "the data (a detector has no labels)"}


class NotCalibratedError(ConfigError, NotFittedError):
    """A method needs a threshold or calibration scores that the detector does not have yet."""


class Detector(BaseEstimator):
    """An autoencoder anomaly detector with PyOD's API and scikit-learn's estimator contract.

    The module docstring (``help(aekit.detector)``) says how data are read, how the defaults were chosen and
    what calibration promises. Parameters are stored as given and checked by ``fit``.

    Parameters
    ----------
    model : str, default "ae"
        The family, one of ``aekit.MODELS`` that trains without labels (ae, dae, sae, cae, vae, iwae, aae).
    model_options : dict or None, default None
        That family's own options (e.g. ``{"noise": "mask"}`` for dae, ``{"arch": "conv"}``); latent_dim and
        hidden are set by the parameters below.
    latent_dim : int or None, default None
        Code size; None: for a table min(16, d // 2, rows of a fold // 6) (``aekit.adapt.table_latent``),
        ``max(2, min(32, d // 4))`` for images of d values.
    hidden : tuple of int or None, default None
        Hidden layer widths (conv: channel counts); None: (64, 64) for a table with an MLP, else the family's.
    epochs : int or None, default None
        Training epochs; None: about 100 optimizer steps in at most 10 epochs per member for a table, about 750
        steps (at most 200 epochs, early stopping after 10 without improvement) for images. The best validation
        epoch is kept.
    batch_size : int, default 128
        Rows per optimizer step.
    lr : float, default 1e-3
        Adam's learning rate.
    contamination : float in (0, 0.5], default 0.1
        The share of outliers expected in the training data: ``threshold_`` is the (1 - contamination)
        percentile of the training scores (PyOD's rule) until ``calibrate`` replaces it.
    anomaly_score : {"auto", "joint", "recon_error", "neg_elbo"}, default "auto"
        The score (``aekit.scoring``): "auto" is "joint" (code distance + residuals in units of their typical
        error); "recon_error" the sum of squared reconstruction errors; "neg_elbo" the -ELBO (vae, iwae).
    preprocessing : {"standard", "minmax", "none"}, default "standard"
        How a table's columns are scaled with the training rows' statistics (images are used in [0, 1]).
    val_fraction : float in [0, 0.5], default 0.1
        The share of the rows held out to pick the best epoch (none with fewer than 1 / val_fraction rows).
    n_estimators : int, default 1
        Members per fold trained from different seeds; their scores are normalized by median and IQR (of the
        rows each did not train on) and averaged.
    robust : bool, default False
        Train twice: the second time without the rows above the (1 - contamination) training-score quantile.
    novelty : bool, default False
        True: X holds only normal rows (novelty detection; ``aekit train --normal-class`` sets it): on a table
        the members train the longer budget chosen on one-class tasks (about 250 optimizer steps, no epoch cap)
        instead of the short one chosen on contaminated tables, and the joint statistics are not trimmed. The
        threshold rule is the same.
    random_state : None, int or numpy.random.RandomState, default None
        Seeds of the members and the data split, drawn in ``fit`` (None: a new draw at every fit).
    device : str, default "auto"
        Where to train and score: "auto" (CUDA, else MPS, else the CPU), "cpu", "cuda", "cuda:1", "mps".
    verbose : bool, default False
        Show the trainer's progress bar.
    encoder, decoder : str or torch.nn.Module or None, default None
        Custom networks, as ``aekit.build`` takes them: an import path "package.module:Class", or an instance
        whose class is importable and whose arguments can be recovered.
    encoder_args, decoder_args : dict or None, default None
        JSON keyword arguments of the custom networks.
    folds : "auto" or int, default "auto"
        Cross-fitting (``aekit.adapt``): "auto" deals the distinct rows (of a table or of images) into 2 folds
        (1 below 10 distinct rows); the members of fold k train on the other folds, and the score statistics,
        normalization and training scores of fold k's rows come from fold k, so the contamination threshold
        holds on unseen rows. 1: every member trains on every row, as before. An int k > 1 needs at least 5 k
        distinct rows (5 per fold, ``adapt.MIN_FOLD_ROWS``; a ConfigError otherwise).
    neighbors : int, default 0
        k > 0: each cross-fitted member's code-space neighbour term (above).
    residual_rank : "auto" or int, default "auto"
        The rank of the joint score's residual model (above): "auto" is min(8, D - 1) on a table and 0 (the
        diagonal model) on images; an int >= 0 sets it (capped at D - 1).
    residual_smooth : "auto" or int, default "auto"
        The joint score's residual images are smoothed over this odd window before they are scored
        (``aekit.scoring.smooth_residuals``): an error spread over a region counts, pixel-level noise averages
        out. "auto": ``adapt.IMAGE_RESIDUAL_SMOOTH`` on images whose sides have at least
        ``adapt.SMOOTH_MIN_SIDE`` pixels, 1 (not smoothed) on smaller images and on tables.

    Attributes
    ----------
    decision_scores_ : ndarray (n,)
        The training rows' scores (None for a plain run until ``set_contamination``).
    threshold_ : float or None
        ``predict`` flags scores above it; None for a plain run directory until ``calibrate``.
    labels_ : ndarray (n,) of 0/1
        The training rows' labels under ``threshold_``.
    n_features_in_, feature_names_, feature_names_in_, input_shape_, kind_ :
        Columns of a table (values per image); a table's column names (a DataFrame's, or f0, f1, ...);
        the DataFrame's columns (only when X was one); the sample shape; "table" or "image".
    anomaly_score_, models_, joint_, normalization_, residual_rank_, residual_smooth_ :
        The score used; the trained autoencoders; their ``aekit.scoring.JointStats``; median and IQR per member;
        the largest rank of the members' residual models (0: diagonal); the window residual images are smoothed
        over (1: not smoothed).
    data_spec_, train_config_, seeds_, history_, summary_ :
        The DataConfig with the table statistics; the TrainConfig; the seeds drawn; the epochs; how it ended.
    calibration_scores_ : ndarray (n_cal,)
        After ``calibrate``: the calibration scores, sorted.
    """

    def __init__(self, model="ae", model_options=None, latent_dim=None, hidden=None, epochs=None, batch_size=128,
                 lr=1e-3, contamination=0.1, anomaly_score="auto", preprocessing="standard", val_fraction=0.1,
                 n_estimators=1, robust=False, random_state=None, device="auto", verbose=False, encoder=None,
                 encoder_args=None, decoder=None, decoder_args=None, folds="auto", neighbors=0, residual_rank="auto",
                 residual_smooth="auto", novelty=False):
        self.model = model
        self.model_options = model_options
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.contamination = contamination
        self.anomaly_score = anomaly_score
        self.preprocessing = preprocessing
        self.val_fraction = val_fraction
        self.n_estimators = n_estimators
        self.robust = robust
        self.random_state = random_state
        self.device = device
        self.verbose = verbose
        self.encoder = encoder  # custom networks: passed to the model as they are (aekit.build's options)
        self.encoder_args = encoder_args
        self.decoder = decoder
        self.decoder_args = decoder_args
        self.folds = folds
        self.neighbors = neighbors
        self.residual_rank = residual_rank
        self.residual_smooth = residual_smooth
        self.novelty = novelty

    # --- training -------------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Train on X and set the threshold from ``contamination``.

        Parameters
        ----------
        X : array-like (n, D) table or (n, H, W), (n, H, W, C), (n, C, H, W) images
            A numpy array, tensor, nested lists or DataFrame (its column names become the feature names).
        y : ignored
            Unsupervised; accepted for scikit-learn's API.

        Returns
        -------
        self
        """
        self._check_params()
        arr, columns = sample_rows(X)
        kind = _kind_of(arr)
        check_arrays(arr, "X", copies=2)  # the members' training data and the rows scored
        rng = check_random_state(self.random_state)
        ids = adapt.distinct_ids(arr)  # copies of a row count once, and share a fold
        distinct = int(ids.max()) + 1
        k = adapt.n_folds(self.folds, arr, kind, distinct=distinct)  # cross-fitting (aekit.adapt): k folds, k > 1
        if k > 1 and distinct < k * adapt.MIN_FOLD_ROWS:  # an int given: each fold's statistics need rows
            raise ConfigError(f"Detector(folds={self.folds!r}): X has {distinct} distinct rows, too few for {k} folds "
                              f"of at least {adapt.MIN_FOLD_ROWS} distinct rows each (each fold's score statistics "
                              f"come from its own rows); use folds='auto' or folds <= "
                              f"{max(1, distinct // adapt.MIN_FOLD_ROWS)}")
        if k == 1 and self.folds == "auto":
            warnings.warn(f"Detector: X has {distinct} distinct rows, too few to cross-fit (at least "
                          f"{2 * adapt.MIN_FOLD_ROWS}): one member trains on all of them and the contamination "
                          "threshold comes from rows it trained on, so it will flag more than the contamination "
                          "of new normal rows; set the threshold on other normal rows (Detector.calibrate, or "
                          "aekit calibrate RUN --normal FILE)",
                          UserWarning, stacklevel=2)
        neighbors = int(self.neighbors)
        rank = adapt.residual_rank(self.residual_rank, kind, math.prod(arr.shape[1:]))
        seeds = [int(s) for s in rng.randint(0, 2**31 - 1, size=k * int(self.n_estimators) + 1)]
        rows, kept = arr, None
        for attempt in range(2 if self.robust else 1):
            ds = self._training_data(rows, kind, columns, seeds[0])
            smooth = adapt.residual_smooth(self.residual_smooth, kind, tuple(ds.shape))  # (C, H, W) of images
            latent = self.latent_dim if self.latent_dim is not None or kind != "table" else \
                adapt.table_latent(len(rows), ds.dim, k)
            stats = ds.spec.stats
            if k > 1:  # members trained on k-1 folds; statistics, normalization, training scores from the other
                cf = adapt.cross_fit(rows, k, seeds[1:], seeds[0], lambda r, seed, stats=stats, latent=latent: (
                    self._train_member(self._training_data(r, kind, columns, seeds[0], stats), seed, latent)),
                    lambda model, r, seen, inner, distinct, ds=ds, smooth=smooth: self._held_out(
                        model, _model_rows(r, kind, ds, model), kind, ds, neighbors,
                        _model_rows(seen, kind, ds, model), rank, smooth, inner, distinct),
                    ids=ids if rows is arr else np.unique(ids[kept], return_inverse=True)[1].reshape(-1),
                    inner_max_distinct=math.inf if self._joint_refits(kind) == 0 else None)
                fitted, norm = cf.fitted, cf.normalization
                models = [result.model for _, result in fitted]
                score = scoring.resolve_score(self.anomaly_score, models[0])
                joint = [st[0] for st in cf.stats] if score == "joint" else None
                references = [st[1] for st in cf.stats] if neighbors else None
                scores = cf.scores
                if rows is not arr:  # robust's second pass: the rows it dropped were seen by no member
                    scorer = Scorer(models, kind=kind, stats=stats, score=score, joint=joint, normalization=norm,
                                    neighbors=neighbors, references=references, smooth=smooth)
                    scores = scorer.score_model_units(_model_rows(arr, kind, ds, models[0]))
                    scores[kept] = cf.scores
            else:
                if neighbors:
                    raise ConfigError(f"Detector(neighbors={self.neighbors!r}): the code-space neighbour term needs "
                                      "cross-fitting (folds >= 2 on a table of at least 10 distinct rows); use "
                                      "neighbors=0 here")
                references = None
                fitted = [self._train_member(ds, seed, latent) for seed in seeds[1:]]  # (TrainConfig, FitResult)
                models = [result.model for _, result in fitted]
                score = scoring.resolve_score(self.anomaly_score, models[0])
                x = _model_rows(arr, kind, ds, models[0])
                joint = None
                if score == "joint":  # the statistics come from the rows the members trained on
                    on = x if rows is arr else _model_rows(rows, kind, ds, models[0])
                    regress = adapt.code_regression(on.cpu().numpy(), int(models[0].latent_dim), rank,
                                                    distinct if rows is arr else None)
                    joint = scoring.fit_joint(models, on, kind, rank=rank, smooth=smooth,
                                              refits=self._joint_refits(kind), regression=regress)
                raw = Scorer(models, kind=kind, stats=stats, score=score, joint=joint,
                             smooth=smooth).raw_model_units(x)
                norm = scoring.normalization(raw.cpu().numpy())
                scores = Scorer(models, kind=kind, stats=stats, score=score, joint=joint,
                                normalization=norm, smooth=smooth).combine(raw).cpu().numpy()
            if self.robust and attempt == 0:  # drop the rows that look like outliers, train again
                kept = scores <= np.quantile(scores, 1.0 - float(self.contamination))
                rows = arr[kept]

        for stale in ("feature_names_in_", "calibration_scores_"):  # of an earlier fit or calibrate
            self.__dict__.pop(stale, None)
        self.models_ = models
        self.model_name_ = self.model
        self.anomaly_score_ = score
        self.joint_ = joint
        self.neighbors_, self.references_ = neighbors, references
        self.residual_rank_ = _rank_of(joint)
        self.residual_smooth_ = smooth if joint else 1
        self.kind_ = kind
        self.input_shape_ = tuple(ds.shape)
        self.n_features_in_ = math.prod(ds.shape)
        self.feature_names_ = list(ds.feature_names) if ds.feature_names else _default_names(ds)
        if columns is not None:
            self.feature_names_in_ = np.asarray(columns, dtype=object)
        self.data_spec_ = ds.spec
        self.train_config_, result = fitted[0]
        self.history_ = result.history
        self.summary_ = result.summary
        self.seeds_ = seeds
        self.normalization_ = norm
        self.decision_scores_ = scores
        self._threshold_from_contamination()
        return self

    def _threshold_from_contamination(self) -> None:
        """PyOD's rule: the (1 - contamination) percentile of the training scores."""
        _check_number("contamination", self.contamination, 0.0, 0.5, lo_open=True)
        self._set_threshold(np.percentile(self.decision_scores_, 100.0 * (1.0 - float(self.contamination))),
                            float(self.contamination), "contamination")

    def set_contamination(self, X_train, contamination: float):
        """Score the data the model was trained on and set ``threshold_`` as ``fit`` does.

        For a detector loaded from a plain run, whose training scores were never computed: ``threshold_``
        becomes the (1 - contamination) percentile of the scores of ``X_train``. A plain run loaded with
        ``anomaly_score`` "auto" or "joint" gets the joint score's statistics from X_train here, as ``fit``
        would (earlier calibration scores are dropped: they were of another score).

        Parameters
        ----------
        X_train : array-like
            The rows the model was trained on, in the user's units (as for ``fit``).
        contamination : float in (0, 0.5]
            The share of them to flag.

        Returns
        -------
        self
        """
        check_is_fitted(self, "models_")
        _check_number("contamination", contamination, 0.0, 0.5, lo_open=True)
        if self.joint_ is None and self.anomaly_score in ("auto", "joint"):
            x = self._model_input(X_train)
            smooth = adapt.residual_smooth(self.residual_smooth, self.kind_, self.input_shape_)
            rank = adapt.residual_rank(self.residual_rank, self.kind_, self.n_features_in_)
            regress = adapt.code_regression(x.cpu().numpy(), int(self.models_[0].latent_dim), rank)
            self.joint_ = scoring.fit_joint(self.models_, x, self.kind_, rank=rank, smooth=smooth,
                                            regression=regress)
            self.residual_rank_, self.residual_smooth_ = _rank_of(self.joint_), smooth
            self.anomaly_score_ = "joint"
            self.__dict__.pop("calibration_scores_", None)
            self.decision_scores_ = self.scorer().score_model_units(x)
        else:
            self.decision_scores_ = self.decision_function(X_train)
        self.contamination = contamination
        self._threshold_from_contamination()
        return self

    def _check_params(self) -> None:
        """ConfigError (a ValueError) naming the parameter for any value that cannot work."""
        if registry.get(self.model).capabilities.uses_labels:  # an unknown family lists the known ones
            raise _needs_labels(self.model)
        if self.model_options is not None and not isinstance(self.model_options, Mapping):
            raise ConfigError(f"Detector(model_options={self.model_options!r}): expected a dict of model "
                              f"{self.model}'s options, e.g. {{'noise': 'mask'}}, or None")
        for key in (self.model_options or {}):
            if key in _SET_BY_DETECTOR:
                raise ConfigError(f"Detector(model_options=...): {key!r} is set by {_SET_BY_DETECTOR[key]}, not "
                                  "in model_options")
        _check_number("contamination", self.contamination, 0.0, 0.5, lo_open=True)
        _check_number("val_fraction", self.val_fraction, 0.0, 0.5)
        for name, value in (("n_estimators", self.n_estimators), ("latent_dim", self.latent_dim),
                            ("epochs", self.epochs)):
            if not (value is None and name != "n_estimators") and (
                    isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1
                    or name == "n_estimators" and value > MAX_ESTIMATORS):
                raise ConfigError(f"Detector({name}={value!r}): expected an integer >= 1"
                                  + (f" and <= {MAX_ESTIMATORS} (each member is a model trained in full)"
                                     if name == "n_estimators" else " or None (chosen from the data)"))
        try:
            check_random_state(self.random_state)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"Detector(random_state={self.random_state!r}): {e}; pass None, an integer "
                              "0..2**32 - 1 or a numpy RandomState") from None
        for name, value, choices in (("anomaly_score", self.anomaly_score, SCORES),
                                     ("preprocessing", self.preprocessing, PREPROCESSING)):
            if value not in choices:
                raise ConfigError(f"Detector({name}={value!r}): choose one of {', '.join(map(repr, choices))}")
        if not (self.folds == "auto" or (isinstance(self.folds, numbers.Integral) and not isinstance(self.folds, bool)
                                         and self.folds >= 1)):
            raise ConfigError(f"Detector(folds={self.folds!r}): expected 'auto' or an integer >= 1 (1: no "
                              "cross-fitting)")
        if not (isinstance(self.neighbors, numbers.Integral) and not isinstance(self.neighbors, bool)
                and 0 <= self.neighbors <= MAX_NEIGHBORS):
            raise ConfigError(f"Detector(neighbors={self.neighbors!r}): expected an integer 0..{MAX_NEIGHBORS} (0: no "
                              "code-space neighbour term)")
        if not (self.residual_rank == "auto" or (isinstance(self.residual_rank, numbers.Integral)
                                                 and not isinstance(self.residual_rank, bool)
                                                 and self.residual_rank >= 0)):
            raise ConfigError(f"Detector(residual_rank={self.residual_rank!r}): expected 'auto' or an integer >= 0 "
                              "(0: a diagonal residual model)")
        for name in ("robust", "novelty"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ConfigError(f"Detector({name}={getattr(self, name)!r}): expected True or False")
        self._train_config(epochs=1, seed=0)  # batch_size, lr, device: TrainConfig's checks and messages

    def _train_config(self, epochs: int, seed: int, patience: int = 0) -> TrainConfig:
        return TrainConfig.from_dict({"epochs": epochs, "batch_size": self.batch_size, "lr": self.lr, "seed": seed,
                                      "patience": patience, "device": self.device}, what="Detector")

    def _training_data(self, rows: np.ndarray, kind: str, columns, seed: int, stats: dict | None = None):
        """The Dataset the members train on: a validation part when there are rows enough for one (``stats``:
        scaled with these, e.g. those of all rows for a cross-fitted member, instead of rows' own)."""
        val_fraction = float(self.val_fraction) if len(rows) * float(self.val_fraction) >= 1.0 else 0.0
        if stats is None and kind == "table" and self.preprocessing != "standard":
            lo, hi = rows.min(axis=0).astype(np.float64), rows.max(axis=0).astype(np.float64)
            span = np.where(hi > lo, hi - lo, 1.0)
            stats = ({"mean": lo.tolist(), "std": span.tolist()} if self.preprocessing == "minmax"
                     else {"mean": [0.0] * rows.shape[1], "std": [1.0] * rows.shape[1]})
        return from_arrays(rows, kind=kind, name="X", val_fraction=val_fraction, test_fraction=0.0, seed=seed,
                           stats=stats, feature_names=None if kind == "image" else columns)

    def _held_out(self, model, x: torch.Tensor, kind: str, ds, neighbors: int, seen: torch.Tensor, rank: int = 0,
                  smooth: int = 1, inner: np.ndarray | None = None, distinct: int | None = None):
        """A cross-fitted member's statistics ((joint statistics or None, reference codes or None)), raw
        scores ((1 or 2, n): the score, then the neighbour term) from rows x (model units) it did not train on,
        and with ``inner`` (each row's inner fold, ``adapt.inner_fold_ids``: a small fold) the same raw scores
        with each row's joint statistics fitted on the other inner folds (else None); ``seen``: the rows it trained on
        (model units), whose codes are the neighbour term's references; ``distinct``: how many distinct rows x holds,
        if known."""
        score = scoring.resolve_score(self.anomaly_score, model)
        z_r = scoring.codes_and_residuals(model, x, smooth=smooth) if score == "joint" else None
        refits = self._joint_refits(kind)
        regress = adapt.code_regression(x.cpu().numpy(), z_r[0].shape[1], rank, distinct) if z_r else False
        joint = [scoring.joint_stats(*z_r, kind, rank, refits, regress)] if z_r else None
        ref = metrics.codes(model, seen).flatten(1).double().cpu().numpy() if neighbors else None
        scorer = Scorer([model], kind=kind, stats=ds.spec.stats, score=score, joint=joint, neighbors=neighbors,
                        references=None if ref is None else [ref], smooth=smooth)
        raw = scorer.raw_model_units(x).cpu().numpy()
        if inner is None or z_r is None:
            return (None if joint is None else joint[0], ref), raw, None
        z, r = z_r
        unseen = raw.copy()
        unseen[0] = adapt.out_of_fold(inner, lambda fit, test: scoring.joint_stats(
            z[fit], r[fit], kind, rank, refits, regress).score(z[test], r[test]))
        return (joint[0], ref), raw, unseen

    def _joint_refits(self, kind: str) -> int | None:
        """The trimmed refits of the joint score's statistics (``aekit.scoring.JointStats.fit``): none on a table
        known to be normal (``novelty=True``: selection round 10), scoring's default (None) otherwise. Untrimmed
        statistics fit the tails of their own rows, so a held-out fold of any size then scores its own rows
        (the threshold's) with statistics fitted on its other inner folds (``adapt.inner_folds``)."""
        return NOVELTY_JOINT_REFITS if self.novelty and kind == "table" else None

    def _train_member(self, ds, seed: int, latent: int | None = None):
        """One autoencoder trained on ds from ``seed``: (its TrainConfig, the trainer's FitResult)."""
        options = dict(self.model_options or {})
        options.update({k: getattr(self, k) for k in ("encoder", "encoder_args", "decoder", "decoder_args")
                        if getattr(self, k) is not None})
        if self.hidden is not None:
            options["hidden"] = self.hidden
        table = ds.kind == "table"
        if self.hidden is None and table and options.get("arch", "mlp") == "mlp":
            options.setdefault("hidden", TABLE_HIDDEN)
        if latent is None:
            latent = self.latent_dim if self.latent_dim is not None else (
                TABLE_LATENT if table else max(2, min(32, ds.dim // 4)))
        model = registry.build_for(self.model, ds, seed=seed, latent_dim=int(latent), **options)
        if model.capabilities.uses_labels:  # e.g. the supervised aae
            raise _needs_labels(self.model, " with these model_options")
        scoring.resolve_score(self.anomaly_score, model)
        n_train = len(ds.x_train)
        per_epoch = math.ceil(n_train / int(self.batch_size))
        if self.epochs is None and table and self.novelty:  # rows known to be normal (round 9)
            epochs, patience = max(1, round(NOVELTY_STEPS / per_epoch)), 0
        elif self.epochs is None and table:  # a short budget, the best validation epoch kept (benchmarks/adbench.py)
            epochs, patience = max(1, round(TABLE_STEPS / per_epoch)), 0
            if TABLE_MAX_EPOCHS is not None and per_epoch >= TABLE_CAP_FROM_BATCHES:
                epochs = min(epochs, TABLE_MAX_EPOCHS)
        elif self.epochs is None:
            epochs = min(MAX_EPOCHS, max(1, math.ceil(TARGET_STEPS / per_epoch)))
            patience = PATIENCE if len(ds.x_val) else 0
        else:
            epochs, patience = int(self.epochs), 0
        cfg = self._train_config(epochs, seed, patience)
        return cfg, trainer.fit(model, ds, cfg, quiet=not self.verbose)

    # --- scores and decisions -------------------------------------------------------------------
    def scorer(self) -> Scorer:
        """The detector as one ``aekit.scoring.Scorer``: preprocessing, members, score statistics, threshold
        and calibration table in a ``torch.nn.Module`` (raw rows in; score, p_value, is_outlier out). A
        snapshot: a later ``calibrate`` or ``fit`` does not change it. Build it once to score many batches."""
        check_is_fitted(self, "models_")
        return Scorer(self.models_, kind=self.kind_, stats=self.data_spec_.stats, score=self.anomaly_score_,
                      joint=self.joint_, normalization=self.normalization_, threshold=self.threshold_,
                      calibration=getattr(self, "calibration_scores_", None), feature_names=self.feature_names_,
                      flag_rate=self.flag_rate_, threshold_from=self.threshold_from_,
                      neighbors=getattr(self, "neighbors_", 0), references=getattr(self, "references_", None),
                      smooth=getattr(self, "residual_smooth_", 1))

    def decision_function(self, X) -> np.ndarray:
        """Anomaly scores of X: higher = more anomalous.

        Parameters
        ----------
        X : array-like
            Rows of the fitted table or images of the fitted shape (as for ``fit``), in the user's units.

        Returns
        -------
        ndarray (n,) float64
            The score ``anomaly_score_`` (several members: the mean of their normalized scores).
        """
        check_is_fitted(self, "models_")
        return self.scorer().score_model_units(self._model_input(X))

    def predict(self, X, return_confidence: bool = False):
        """0 (normal) / 1 (outlier) per row: ``decision_function(X) > threshold_``.

        Parameters
        ----------
        X : array-like
            As for ``decision_function``.
        return_confidence : bool, default False
            Also return ``predict_confidence(X)``, as PyOD.

        Returns
        -------
        ndarray (n,) int64, and the (n,) confidences with ``return_confidence``
        """
        scores = self.decision_function(X)
        self._threshold()
        labels = self.scorer().decisions(scores).is_outlier.astype(np.int64)
        return (labels, self._confidence(scores)) if return_confidence else labels

    def predict_proba(self, X, method: str = "linear", return_confidence: bool = False) -> np.ndarray:
        """[P(normal), P(outlier)] per row, PyOD's two conversions of the score s.

        Parameters
        ----------
        X : array-like
            As for ``decision_function``.
        method : {"linear", "unify"}, default "linear"
            "linear": min-max scaling by the training scores, clipped to [0, 1]; "unify": erf((s - mean) /
            (std * sqrt(2))) of the training scores, clipped to [0, 1] (Kriegel et al., 2011, "Interpreting
            and unifying outlier scores").
        return_confidence : bool, default False
            Also return ``predict_confidence(X)``.

        Returns
        -------
        ndarray (n, 2)
        """
        if method not in ("linear", "unify"):
            raise ConfigError(f"predict_proba(method={method!r}): choose 'linear' or 'unify'")
        scores = self.decision_function(X)
        ref = self.decision_scores_ if self.decision_scores_ is not None else self._reference()[0]
        if method == "linear":
            lo, span = ref.min(), ref.max() - ref.min()
            p = (scores - lo) / (span if span > 0 else 1.0)
        else:
            from scipy.special import erf

            sigma = ref.std()
            p = erf((scores - ref.mean()) / ((sigma if sigma > 0 else 1.0) * math.sqrt(2.0)))
        p = np.clip(p, 0.0, 1.0)
        probs = np.stack([1.0 - p, p], axis=1)
        return (probs, self._confidence(scores)) if return_confidence else probs

    def predict_confidence(self, X) -> np.ndarray:
        """How surely the same label would be predicted after a small change of the training data.

        ExCeeD (Perini, Vercruyssen and Davis, 2020), as PyOD computes it: with n reference scores (the
        training scores; after ``calibrate``, the calibration scores), k of them <= s and the share r of them
        flagged (contamination; after calibrate, fpr), P(outlier) = (1 + k) / (2 + n) and the confidence of an
        outlier is 1 - Binom(n, P(outlier)).cdf(n - int(n r)); that of a normal prediction is 1 minus it.

        Parameters
        ----------
        X : array-like
            As for ``decision_function``.

        Returns
        -------
        ndarray (n,) in [0, 1]
        """
        return self._confidence(self.decision_function(X))

    def _confidence(self, scores: np.ndarray) -> np.ndarray:
        from scipy.stats import binom

        ref, rate = self._reference()
        n = len(ref)
        below = np.searchsorted(np.sort(ref), scores, side="right")
        conf = 1.0 - binom.cdf(n - int(n * rate), n, (1.0 + below) / (2.0 + n))
        return np.where(scores > self._threshold(), conf, 1.0 - conf)

    def _reference(self) -> tuple[np.ndarray, float]:
        """(the scores the threshold was set from, the share of them it flags)."""
        check_is_fitted(self, "models_")
        if self.threshold_ is None:
            raise NotCalibratedError(_NO_THRESHOLD)
        ref = self.calibration_scores_ if self.threshold_from_ == "calibration" else self.decision_scores_
        return ref, self.flag_rate_

    def _threshold(self) -> float:
        check_is_fitted(self, "models_")
        if self.threshold_ is None:
            raise NotCalibratedError(_NO_THRESHOLD)
        return self.threshold_

    def _set_threshold(self, threshold, rate: float | None, source: str | None) -> None:
        self.threshold_ = None if threshold is None else float(threshold)
        self.flag_rate_, self.threshold_from_ = rate, source
        self.labels_ = (None if self.decision_scores_ is None or threshold is None
                        else (self.decision_scores_ > self.threshold_).astype(np.int64))

    # --- calibration ----------------------------------------------------------------------------
    def calibrate(self, X_normal, fpr: float = 0.01):
        """Set ``threshold_`` from held-out normal data so that at most ``fpr`` of normal data is flagged.

        Split-conformal: with the n calibration scores sorted, the threshold is the k-th smallest,
        k = ceil((n + 1)(1 - fpr)); a new sample exchangeable with X_normal exceeds it with probability
        <= 1 - k / (n + 1) <= fpr. Keeps the scores (``calibration_scores_``, sorted) for ``predict_pvalue``;
        ``labels_`` follow the new threshold.

        Parameters
        ----------
        X_normal : array-like
            At least 1 / fpr - 1 normal rows the detector was not trained on.
        fpr : float in (0, 1), default 0.01
            The false-positive rate to hold on normal data.

        Returns
        -------
        self
        """
        _check_number("fpr", fpr, 0.0, 1.0, lo_open=True, hi_open=True, what="calibrate")
        return self.calibrate_scores(self.decision_function(X_normal), fpr)

    def calibrate_scores(self, scores, fpr: float = 0.01):
        """``calibrate`` from the scores (``decision_function``) of held-out normal rows, computed elsewhere:
        `aekit calibrate` scores a large file a block at a time and keeps only the scores."""
        _check_number("fpr", fpr, 0.0, 1.0, lo_open=True, hi_open=True, what="calibrate")
        scores = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
        n = len(scores)
        k = math.ceil(round((n + 1) * (1.0 - float(fpr)), 9))
        if k > n:
            need = math.ceil(round(1.0 / float(fpr) - 1.0, 9))
            raise DataError(f"calibrate(fpr={fpr}): {n} normal sample(s) are too few to bound the false-positive "
                            f"rate by {fpr}; at least {need} are needed (or raise fpr)")
        self.calibration_scores_ = scores
        self._set_threshold(scores[k - 1], float(fpr), "calibration")
        return self

    def predict_pvalue(self, X) -> np.ndarray:
        """Conformal p-values (1 + #{calibration scores >= s}) / (n_cal + 1); needs ``calibrate``.

        Small = anomalous; for a normal sample exchangeable with the calibration data, P(p <= a) <= a.

        Parameters
        ----------
        X : array-like
            As for ``decision_function``.

        Returns
        -------
        ndarray (n,) float64 in (0, 1]
        """
        check_is_fitted(self, "models_")
        if getattr(self, "calibration_scores_", None) is None:
            raise NotCalibratedError("predict_pvalue needs calibration scores: call calibrate(X_normal, fpr=...) "
                                     "first, with held-out normal data the detector was not trained on")
        return self.scorer().decisions(self.decision_function(X)).p_value

    # --- explanations ---------------------------------------------------------------------------
    def explain(self, X, png=None) -> dict:
        """What makes each row anomalous, part by part.

        Parameters
        ----------
        X : array-like
            As for ``decision_function``.
        png : path, optional
            Write a figure of the first images (inputs, reconstructions, anomaly maps) there (images only).

        Returns
        -------
        dict
            ``contributions`` (n, *shape): each value's part of the score. For the ``joint`` score, (r_d /
            sigma_d)^2, the squared reconstruction error of value d in units of its typical error (with a residual
            model, c_d (C^-1 c)_d; on images, of the residual smoothed over ``residual_smooth_``), and
            ``code_distance`` (n,), the code's term (its Mahalanobis distance, or the code histogram's term where
            ``aekit.scoring.JOINT_CODE_HISTOGRAM`` is on): together they sum to the score of one member.
            For ``recon_error`` and ``neg_elbo``, the squared reconstruction error of each value in the
            model's (scaled) units (it sums to ``recon_error``). Tables also get ``contributions_user_units``
            (n, D), the squared error in the user's units, ((x - x_hat) * std)^2; ``reconstruction`` (n, D) in
            the user's units; ``feature_names``. Images get ``maps`` (n, H, W), the contributions summed over
            channels, and ``reconstruction`` (n, C, H, W). With several members, the members' parts and
            reconstructions are averaged.
        """
        check_is_fitted(self, "models_")
        x = self._model_input(X)
        recs = torch.stack([metrics.reconstructions(m, x) for m in self.models_])  # (k, n, *shape)
        resid = (x - recs).double().cpu().numpy()
        err2 = resid**2
        x_hat = recs.mean(0).double().cpu().numpy()
        out = {}
        if self.anomaly_score_ == "joint":
            smooth = getattr(self, "residual_smooth_", 1)
            flat = np.stack([scoring.smooth_residuals(x - rec, smooth).flatten(1).double().cpu().numpy()
                             for rec in recs])
            codes = [metrics.codes(m, x).flatten(1).double().cpu().numpy() for m in self.models_]
            parts = np.mean([stats.residual_terms(flat[j], codes[j]) for j, stats in enumerate(self.joint_)], axis=0)
            out["code_distance"] = np.mean([stats.code_distance(z) for z, stats in zip(codes, self.joint_)], axis=0)
            contributions = parts.reshape(err2.shape[1:])
        else:
            contributions = err2.mean(0)
        err2 = err2.mean(0)
        if self.kind_ == "table":
            if png is not None:
                raise ConfigError("explain(png=...) draws anomaly maps of images; this detector was fitted on a table")
            stats = self.data_spec_.stats
            mean, std = (np.zeros(self.n_features_in_), np.ones(self.n_features_in_)) if stats is None else (
                np.asarray(stats["mean"], dtype=np.float64), np.asarray(stats["std"], dtype=np.float64))
            return {**out, "contributions": contributions, "contributions_user_units": err2 * std**2,
                    "reconstruction": x_hat * std + mean, "feature_names": list(self.feature_names_)}
        maps = contributions.sum(axis=1)
        if png is not None:
            from . import plots  # matplotlib: imported when a picture is asked for, not with the detector

            show = slice(0, PNG_IMAGES)
            peak = float(maps[show].max()) or 1.0
            heat = torch.from_numpy(maps[show] / peak).float()[:, None].expand(-1, x.shape[1], -1, -1)
            fig = plots.image_rows([x[show].cpu(), torch.from_numpy(x_hat[show]).float(), heat],
                                   ["input", "output", "error"])
            plots.save(fig, png)
        return {**out, "contributions": contributions, "maps": maps, "reconstruction": x_hat}

    # --- data -----------------------------------------------------------------------------------
    def model_input(self, X) -> torch.Tensor:
        """X as the models read it (what ``models_[k].encode`` takes): (n, *input_shape_) float32, scaled with the
        training statistics, in X's row order; the same checks and errors as ``decision_function``."""
        check_is_fitted(self, "models_")
        return self._model_input(X)

    def _model_input(self, X) -> torch.Tensor:
        """X as the models read it: (n, *input_shape_), scaled as the training rows, in X's row order
        (``Preprocess`` of the scorer). One DataError line for data the detector cannot score: another number
        of features or image shape, other column names, NaN/Inf (naming the first bad row), no rows."""
        arr, columns = sample_rows(X)
        want = self.input_shape_
        if self.kind_ == "table" and (arr.ndim != 2 or arr.shape[1] != want[0]):
            got = f"{arr.shape[1]} features" if arr.ndim == 2 else f"shape {arr.shape}"
            raise DataError(f"X has {got}, but {type(self).__name__} is expecting {want[0]} features as input "
                            "(the columns it was fitted on, in the same order)")
        if self.kind_ == "image" and arr.ndim not in (3, 4):
            raise DataError(f"X has shape {arr.shape}, but the detector was fitted on images of shape {want} "
                            "(C, H, W); pass images (N, H, W), (N, H, W, C) or (N, C, H, W)")
        known = getattr(self, "feature_names_in_", None)
        if columns is not None and known is not None and list(columns) != list(known):
            raise DataError(f"X has the columns {preview(columns)}, but the detector was fitted on "
                            f"{preview(known)}; pass the same columns in the same order")
        first = self.models_[0]
        pre = Preprocess(self.kind_, want, self.data_spec_.stats, first.dtype).to(first.device)
        with torch.no_grad():
            return pre(pre.prepare(arr).to(first.device))

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the detector as a run directory.

        The first member's run (readable by ``aekit.Run.open``, ``aekit eval`` and every command) plus the
        detector state; the weights are written last, so that an interrupted save is refused by ``load``.

        Parameters
        ----------
        path : str or Path
            A new or empty folder (an existing file or a non-empty folder is refused; nothing is overwritten).

        Returns
        -------
        Path
        """
        check_is_fitted(self, "models_")
        first = self.models_[0]
        run = Run.create(path, self.model_name_, first.config, self.train_config_, self.data_spec_)
        try:
            if self.history_:
                run.write_history(self.history_)
            run.write_summary(self.summary_ or {})
            scoring.save_state(run, self._state())
            run.save_weights(first.state_dict())
        finally:
            run.release()
        return run.path

    def save_state(self, path) -> Path:
        """Write this detector's state (threshold, calibration, statistics, members) into the run directory
        ``path`` it scores with (e.g. one made by ``aekit train`` and loaded with ``load``), atomically and
        under the run's lock.

        Parameters
        ----------
        path : str or Path
            The run directory.

        Returns
        -------
        Path
        """
        check_is_fitted(self, "models_")
        run = Run.open(path)
        run.claim()
        try:
            scoring.save_state(run, self._state())
        finally:
            run.release()
        return run.path

    def export(self, path, format: str = "onnx") -> dict:
        """Export the detector as ONNX graphs (scorer, encoder, decoder) and a JSON sidecar (``aekit.export``).

        Parameters
        ----------
        path : str or Path
            A new or empty folder.
        format : {"onnx"}, default "onnx"
            Needs the optional extra: ``pip install 'aekit[onnx]'``.

        Returns
        -------
        dict
            The sidecar written as ``path/export.json``.
        """
        from .export import export_onnx

        check_is_fitted(self, "models_")
        return export_onnx(self.scorer(), path, model_name=self.model_name_, fmt=format)

    def _state(self) -> scoring.DetectorState:
        params = {k: _plain(v) for k, v in self.get_params(deep=False).items()}
        for role in ("encoder", "decoder"):  # an nn.Module instance: saved as the path and arguments of its model
            if isinstance(params[role], torch.nn.Module):
                cfg = self.models_[0].config
                params[role], params[f"{role}_args"] = getattr(cfg, role), getattr(cfg, f"{role}_args")
        if not isinstance(params["random_state"], (int, type(None))):
            params["random_state"] = None  # a RandomState object is not JSON; seeds holds what it drew
        names_in = getattr(self, "feature_names_in_", None)
        return scoring.DetectorState(
            members=self.models_, kind=self.kind_, input_shape=self.input_shape_, stats=self.data_spec_.stats,
            score=self.anomaly_score_, params=params, joint=self.joint_, normalization=self.normalization_,
            threshold=self.threshold_, flag_rate=self.flag_rate_, threshold_from=self.threshold_from_,
            decision_scores=self.decision_scores_, calibration_scores=getattr(self, "calibration_scores_", None),
            feature_names=list(self.feature_names_),
            feature_names_in=None if names_in is None else [str(c) for c in names_in], seeds=self.seeds_,
            neighbors=getattr(self, "neighbors_", 0), references=getattr(self, "references_", None),
            smooth=getattr(self, "residual_smooth_", 1))

    @classmethod
    def load(cls, path, device=None) -> Detector:
        """The detector saved at ``path``, or one that scores with the model of a plain run directory.

        A plain run (``aekit train``) scores with its model and table statistics, with no threshold until
        ``calibrate``. Nothing is unpickled; every file is read with a size bound; the state is read whole
        (never half of one calibration and half of another) and a state that does not fit the run's weights,
        or holds a non-finite threshold, is one RunError.

        Parameters
        ----------
        path : str or Path
            The run directory.
        device : str, optional
            Where the models go (default: the device it was trained on where this torch has it, else the CPU).

        Returns
        -------
        Detector
        """
        run = Run.open(path)
        state = scoring.load_state(run)
        try:
            params = dict(state.params)
            if isinstance(params.get("hidden"), list):  # JSON has no tuples
                params["hidden"] = tuple(params["hidden"])
            det = cls(**params)
        except (TypeError, KeyError, ValueError) as e:
            raise RunError(f"{run.path}: not a detector state this aekit can read ({e})") from None
        if device is not None:
            where = torch.device(resolve_device(device))
        else:  # the detector's own device ("auto": the best one here), or the CPU when it is not here
            try:
                where = torch.device(resolve_device(det.device))
            except ConfigError:
                where = torch.device("cpu")
        det.model = det.model_name_ = run.model_name
        det.models_ = [m.to(where) for m in state.members]
        det.train_config_, det.history_, det.summary_ = run.train, run.history, run.summary
        det.data_spec_ = run.data if run.data is not None else DataConfig(name_or_path=None)
        det.kind_, det.input_shape_ = state.kind, tuple(state.input_shape)
        det.n_features_in_ = math.prod(det.input_shape_)
        det.feature_names_ = list(state.feature_names)
        if state.feature_names_in is not None:
            det.feature_names_in_ = np.asarray(state.feature_names_in, dtype=object)
        if not state.fitted:
            det.anomaly_score_ = scoring.resolve_score(det.anomaly_score, det.models_[0], fitted=False)
        else:
            det.anomaly_score_ = state.score
        det.seeds_, det.joint_, det.normalization_ = state.seeds, state.joint, state.normalization
        det.neighbors_, det.references_ = state.neighbors, state.references
        det.residual_rank_, det.residual_smooth_ = _rank_of(state.joint), state.smooth
        det.decision_scores_ = state.decision_scores
        if state.calibration_scores is not None:
            det.calibration_scores_ = state.calibration_scores
        det._set_threshold(state.threshold, state.flag_rate, state.threshold_from)
        return det


_NO_THRESHOLD = ("this detector has no threshold: it was loaded from a plain run directory (no detector state); "
                 "call calibrate(X_normal, fpr=...) with held-out normal data, or fit a Detector with a "
                 "contamination")


MAX_ESTIMATORS = 1000  # members of an ensemble: each is a model trained in full
MAX_NEIGHBORS = 1000  # k of the neighbour term


def _needs_labels(model: str, how: str = "") -> ConfigError:
    usable = [n for n, c in registry.MODELS.items() if not c.capabilities.uses_labels]
    return ConfigError(f"Detector(model={model!r}){how} needs class labels to train, but a detector learns from "
                       f"unlabelled data; choose one of {', '.join(usable)}")


def _check_number(name: str, value, lo: float, hi: float, *, lo_open=False, hi_open=False, what="Detector"):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)) and (
        (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi))
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"{what}({name}={value!r}): expected a number in {interval}")


def _kind_of(arr: np.ndarray) -> str:
    if arr.ndim == 2:
        return "table"
    if arr.ndim in (3, 4):
        return "image"
    raise DataError(f"X has shape {arr.shape}; expected a table (N, D) or images (N, H, W), (N, H, W, C) or "
                    "(N, C, H, W)")


def _plain(value):
    """A parameter value as JSON types: numpy scalars as Python numbers, tuples as lists (recursively)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _default_names(ds) -> list[str]:
    return [f"f{i}" for i in range(ds.dim)] if ds.kind == "table" else []


__all__ = ["Detector", "NotCalibratedError"]


def _rank_of(joint) -> int:
    """The largest rank of the members' residual models (0: diagonal, or no joint score)."""
    return max((st.rank for st in joint), default=0) if joint else 0


def _model_rows(rows: np.ndarray, kind: str, ds, model) -> torch.Tensor:
    """Rows in the user's units as ``model`` reads them (the run's preprocessing, ``scoring.Preprocess``)."""
    pre = Preprocess(kind, tuple(ds.shape), ds.spec.stats, model.dtype).to(model.device)
    return pre(torch.from_numpy(read_samples(rows, kind=kind)).to(model.device))
