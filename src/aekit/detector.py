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
benchmarks/RESULTS_adbench_select.md and RESULTS_adbench.md), and on a validation split of Fashion-MNIST's
training images for images (benchmarks/fmnist_oneclass.py; RESULTS_fmnist_oneclass.md):

- ``model="ae"``: the plain autoencoder; any family of ``aekit.MODELS`` that trains without labels (cvae and
  the supervised aae need labels: a ConfigError). ``model_options``: that family's own options.
- ``folds="auto"``: on a table, cross-fitting (``aekit.adapt``): the distinct rows are dealt into 2 folds
  (1, no cross-fitting, below 20 distinct rows; images: 1); the ``n_estimators`` members of fold k train on the
  other folds, and their score statistics, normalization and the training scores of fold k's rows come from
  fold k, which they never saw, so the contamination threshold holds on unseen rows. An int sets K (1: every
  member trains on every row and the statistics come from those rows, as before issue 18).
- ``latent_dim=None``: for a table ``aekit.adapt.table_latent``: min(16, d // 2, rows of a fold // 6), at
  least 1; ``max(2, min(32, d // 4))`` for images of d values.
  ``hidden=None``: (64, 64) for a table with an MLP (``TABLE_HIDDEN``); the family's default for images.
- ``epochs=None``: tables: about ``TABLE_STEPS`` = 100 optimizer steps per member (``round(100 / steps_per_epoch)``
  epochs, at least 1), no early stopping, the weights of the best validation epoch kept; ADBench's tables are
  small and a short budget generalizes best there. Images: ``ceil(TARGET_STEPS / steps_per_epoch)`` epochs
  capped at ``MAX_EPOCHS`` (about 1500 steps, at most 200 epochs), with early stopping after ``PATIENCE``
  epochs without improvement of the loss on the held-out ``val_fraction`` of X. An explicit ``epochs`` trains
  that many epochs (best validation weights kept). With fewer than ``1 / val_fraction`` rows there is no
  validation part.
- ``anomaly_score="auto"``: ``"joint"`` for every family (``_JointStats``): with z = f(x) the code and r = x -
  g(f(x)) the residual in the model's units, ``(z - mu)' S^-1 (z - mu) + sum_d (r_d / sigma_d)^2``, i.e. -2 log
  p(x) + const under "code ~ N(mu, S), x | code ~ N(g(code), diag sigma^2)", its statistics fitted on the
  training rows a member did not train on (``folds``) and refitted on their least anomalous 80%.
  ``"recon_error"``: the sum of squared errors of the reconstruction (model units). ``"neg_elbo"``: -ELBO in
  nats, ``MC_SAMPLES`` posterior samples from a fixed seed, for probabilistic families (vae, iwae); the
  Monte-Carlo -ELBO of a row depends slightly on the other rows of its batch (one generator draws for the
  batch). A plain run directory of ``aekit train`` opened with ``load`` has no joint statistics: there "auto" is
  "neg_elbo" for probabilistic families and "recon_error" for the others.
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

Calibration. ``calibrate(X_normal, fpr)`` keeps held-out normal data's scores and sets ``threshold_`` to the
``ceil((n + 1)(1 - fpr))``-th smallest of them (split-conformal): under exchangeability a new normal
sample is flagged with probability at most fpr. ``predict_pvalue(X)`` = (1 + #{calibration scores >= s}) /
(n + 1) is then a valid p-value.

Persistence. ``save(path)`` writes a run directory through ``aekit.Run`` (config.json, model.safetensors of
the first member, metrics.jsonl, summary.json) plus ``detector.json`` (parameters, threshold, score,
shape, feature names, the training-score summary, the members' normalization) and
``detector.safetensors`` (training and calibration scores, and the weights of members 1.. under
``member{k}/``). ``Detector.load(path)`` rebuilds it without unpickling anything; it also opens a plain
run directory of ``aekit train`` (its model and its table statistics, no threshold until ``calibrate``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import adapt, files, metrics, plots, registry, trainer
from .config import TrainConfig, resolve_device
from .datasets import DataConfig, from_arrays
from .datasets.arrays import _as_array
from .datasets.source import _preview
from .errors import ConfigError, DataError, RunError
from .run import DETECTOR, DETECTOR_TENSORS, Run

TARGET_STEPS = 1500  # epochs=None: about this many optimizer steps ...
MAX_EPOCHS = 200  # ... but at most this many epochs
PATIENCE = 10  # epochs=None: early stopping after this many epochs without a better validation loss
MC_SAMPLES = 10  # posterior samples of the -ELBO score
SCORE_SEED = 0  # the -ELBO score's samples come from this seed: the same X gives the same scores
PNG_IMAGES = 16  # explain(png=...) draws the first images only
FORMAT = 1  # detector.json's format
SCORES = ("auto", "joint", "recon_error", "neg_elbo")
# the defaults for tables, chosen by benchmarks/adbench_select.py (see aekit.adapt for folds and the code size)
TABLE_LATENT = 16  # the largest code of a table (fit sizes a table's code with adapt.table_latent)
TABLE_HIDDEN = (64, 64)  # hidden=None on a table with an MLP family
TABLE_STEPS = 100  # epochs=None on a table: about this many optimizer steps per member, best validation epoch kept
# the joint score's statistics (see _JointStats)
JOINT_TRIM = 0.2  # refitted on the (1 - JOINT_TRIM) share of the training rows with the lowest score ...
JOINT_REFITS = 3  # ... this many times
JOINT_RIDGE = 1e-3  # added to the code covariance: this times its mean variance
# the smallest residual standard deviation of a value (model units): standardized table columns; image pixels in
# [0, 1], where pixels that never vary in training (a border) would otherwise dominate the score
JOINT_SIGMA_FLOOR = {"table": 1e-3, "image": 0.1}
PREPROCESSING = ("standard", "minmax", "none")
_SET_BY_DETECTOR = {"latent_dim": "Detector(latent_dim=...)", "hidden": "Detector(hidden=...)",
                    "input_shape": "the data", "num_classes": "the data (a detector has no labels)"}


class NotCalibratedError(ConfigError, NotFittedError):
    """A method needs a threshold or calibration scores that the detector does not have yet."""


class Detector(BaseEstimator):
    """An autoencoder anomaly detector (see the module docstring for the API, data and defaults).

    Parameters are stored as given and checked by ``fit``. Fitted attributes: ``decision_scores_`` (n,),
    ``threshold_`` (float; None for a plain run directory until ``calibrate``), ``labels_`` (n,) 0/1,
    ``n_features_in_`` (columns of a table; values per image), ``feature_names_`` (a table's column names,
    a DataFrame's or f0, f1, ...), ``feature_names_in_`` (only when X was a DataFrame), ``input_shape_``,
    ``kind_`` ("table" | "image"), ``anomaly_score_`` (the score used), ``models_`` (the trained autoencoders),
    ``data_spec_`` (the DataConfig with the table statistics), ``train_config_``, ``seeds_``, ``history_``;
    after ``calibrate``: ``calibration_scores_`` (sorted).
    """

    def __init__(self, model="ae", model_options=None, latent_dim=None, hidden=None, epochs=None, batch_size=128,
                 lr=1e-3, contamination=0.1, anomaly_score="auto", preprocessing="standard", val_fraction=0.1,
                 n_estimators=1, robust=False, random_state=None, device="auto", verbose=False, folds="auto"):
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
        self.folds = folds

    # --- training -------------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Train on X (y is ignored: unsupervised) and set the threshold from ``contamination``. Returns self."""
        self._check_params()
        arr, columns = _numeric(X)
        kind = _kind_of(arr)
        rng = check_random_state(self.random_state)
        k = adapt.n_folds(self.folds, arr, kind)  # cross-fitting (aekit.adapt): k folds, k > 1
        seeds = [int(s) for s in rng.randint(0, 2**31 - 1, size=k * int(self.n_estimators) + 1)]
        rows, kept = arr, None
        for attempt in range(2 if self.robust else 1):
            ds = self._training_data(rows, kind, columns, seeds[0])
            latent = self.latent_dim if self.latent_dim is not None or kind != "table" else \
                adapt.table_latent(len(rows), ds.dim, k)
            x = _tensor(arr, kind, ds.spec.stats)
            if k > 1:  # members trained on k-1 folds; statistics, normalization, training scores from the other
                stats = ds.spec.stats
                cf = adapt.cross_fit(rows, k, seeds[1:], seeds[0], lambda r, seed, stats=stats, latent=latent: (
                    self._train_member(self._training_data(r, kind, columns, seeds[0], stats), seed, latent)),
                    lambda model, r, stats=stats: self._held_out(model, _tensor(r, kind, stats), kind))
                fitted, norm = cf.fitted, cf.normalization
                models = [result.model for _, result in fitted]
                score = _resolve_score(self.anomaly_score, models[0])
                joint = cf.stats if score == "joint" else None
                scores = cf.scores
                if rows is not arr:  # robust's second pass: the rows it dropped were seen by no member
                    scores = _combine(_raw_scores(models, x, score, joint), norm)
                    scores[kept] = cf.scores
            else:
                fitted = [self._train_member(ds, seed, latent) for seed in seeds[1:]]  # (TrainConfig, FitResult)
                models = [result.model for _, result in fitted]
                score = _resolve_score(self.anomaly_score, models[0])
                joint = None
                if score == "joint" and rows is arr:  # statistics and scores from one pass over the rows
                    joint, raw = _fit_joint(models, x, kind)
                else:
                    if score == "joint":  # the statistics come from the rows the members trained on
                        joint = _fit_joint(models, _tensor(rows, kind, ds.spec.stats), kind)[0]
                    raw = _raw_scores(models, x, score, joint)
                norm = _normalization(raw)
                scores = _combine(raw, norm)
            if self.robust and attempt == 0:  # drop the rows that look like outliers, train again
                kept = scores <= np.quantile(scores, 1.0 - float(self.contamination))
                rows = arr[kept]

        for stale in ("feature_names_in_", "calibration_scores_"):  # of an earlier fit or calibrate
            self.__dict__.pop(stale, None)
        self.models_ = models
        self.model_name_ = self.model
        self.anomaly_score_ = score
        self.joint_ = joint
        self.kind_ = kind
        self.input_shape_ = tuple(ds.shape)
        self.n_features_in_ = math.prod(ds.shape)
        self.feature_names_ = list(ds.feature_names) if ds.feature_names else _default_names(ds)
        if columns is not None:
            self.feature_names_in_ = np.asarray(columns, dtype=object)
        self.data_spec_ = ds.spec
        self.train_config_, result = fitted[0]
        self.history_ = result.history
        self.summary_ = trainer._summary(result.history, result.best_epoch, result.best_val_loss, result.stopped)
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
        """Score the data the model was trained on, ``X_train``, and set ``threshold_`` as ``fit`` does: the
        (1 - contamination) percentile of those scores (for a detector loaded from a plain run, whose training
        scores were never computed). A plain run loaded with ``anomaly_score`` "auto" or "joint" gets the joint
        score's statistics from X_train here, as ``fit`` would (earlier calibration scores are dropped: they
        were of another score). Returns self."""
        check_is_fitted(self, "models_")
        _check_number("contamination", contamination, 0.0, 0.5, lo_open=True)
        if self.joint_ is None and self.anomaly_score in ("auto", "joint"):
            self.joint_, raw = _fit_joint(self.models_, self._model_input(X_train), self.kind_)
            self.anomaly_score_ = "joint"
            self.__dict__.pop("calibration_scores_", None)
            self.decision_scores_ = _combine(raw, self.normalization_)
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
                    isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
                raise ConfigError(f"Detector({name}={value!r}): expected an integer >= 1"
                                  + ("" if name == "n_estimators" else " or None (chosen from the data)"))
        for name, value, choices in (("anomaly_score", self.anomaly_score, SCORES),
                                     ("preprocessing", self.preprocessing, PREPROCESSING)):
            if value not in choices:
                raise ConfigError(f"Detector({name}={value!r}): choose one of {', '.join(map(repr, choices))}")
        if not (self.folds == "auto" or (isinstance(self.folds, numbers.Integral) and not isinstance(self.folds, bool)
                                         and self.folds >= 1)):
            raise ConfigError(f"Detector(folds={self.folds!r}): expected 'auto' or an integer >= 1 (1: no "
                              "cross-fitting)")
        if not isinstance(self.robust, (bool, np.bool_)):
            raise ConfigError(f"Detector(robust={self.robust!r}): expected True or False")
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

    def _held_out(self, model, x: torch.Tensor, kind: str):
        """A cross-fitted member's score statistics (None for a score without any) and raw scores, from rows
        it did not train on."""
        if _resolve_score(self.anomaly_score, model) == "joint":
            joint, raw = _fit_joint([model], x, kind)
            return joint[0], raw[0]
        return None, _raw_scores([model], x, _resolve_score(self.anomaly_score, model))[0]

    def _train_member(self, ds, seed: int, latent: int | None = None):
        """One autoencoder trained on ds from ``seed``: (its TrainConfig, the trainer's FitResult)."""
        options = dict(self.model_options or {})
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
        _resolve_score(self.anomaly_score, model)
        n_train = len(ds.x_train)
        per_epoch = math.ceil(n_train / int(self.batch_size))
        if self.epochs is None and table:  # a short budget, the best validation epoch kept (benchmarks/adbench.py)
            epochs, patience = max(1, round(TABLE_STEPS / per_epoch)), 0
        elif self.epochs is None:
            epochs = min(MAX_EPOCHS, max(1, math.ceil(TARGET_STEPS / per_epoch)))
            patience = PATIENCE if len(ds.x_val) else 0
        else:
            epochs, patience = int(self.epochs), 0
        cfg = self._train_config(epochs, seed, patience)
        return cfg, trainer.fit(model, ds, cfg, quiet=not self.verbose)

    # --- scores and decisions -------------------------------------------------------------------
    def decision_function(self, X) -> np.ndarray:
        """Anomaly scores of X, (n,) float64: higher = more anomalous (the score ``anomaly_score_``, or the members'
        normalized mean)."""
        check_is_fitted(self, "models_")
        return _combine(_raw_scores(self.models_, self._model_input(X), self.anomaly_score_, self.joint_),
                        self.normalization_)

    def predict(self, X, return_confidence: bool = False):
        """0 (normal) / 1 (outlier) per row, (n,) int64: decision_function(X) > threshold_.
        ``return_confidence``: also return predict_confidence(X), as PyOD."""
        scores = self.decision_function(X)
        labels = (scores > self._threshold()).astype(np.int64)
        return (labels, self._confidence(scores)) if return_confidence else labels

    def predict_proba(self, X, method: str = "linear", return_confidence: bool = False) -> np.ndarray:
        """(n, 2): [P(normal), P(outlier)], PyOD's two conversions of the score s:

        - ``"linear"``: min-max scaling by the training scores, clipped to [0, 1];
        - ``"unify"``: erf((s - mean) / (std * sqrt(2))) of the training scores, clipped to [0, 1]
          (Kriegel et al., 2011, "Interpreting and unifying outlier scores").
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
        """(n,) in [0, 1]: how surely the same label would be predicted after a small change of the training
        data (ExCeeD, Perini, Vercruyssen and Davis, 2020), as PyOD computes it: with n reference scores (the
        training scores; after ``calibrate``, the calibration scores), k of them <= s and the share r of them
        flagged (contamination; after calibrate, fpr), P(outlier) = (1 + k) / (2 + n) and the confidence of an
        outlier is 1 - Binom(n, P(outlier)).cdf(n - int(n r)); that of a normal prediction is 1 minus it."""
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
        <= 1 - k / (n + 1) <= fpr. Needs n >= 1 / fpr - 1 samples. Keeps the scores (``calibration_scores_``,
        sorted) for ``predict_pvalue``; ``labels_`` follow the new threshold. Returns self.
        """
        _check_number("fpr", fpr, 0.0, 1.0, lo_open=True, hi_open=True, what="calibrate")
        scores = np.sort(self.decision_function(X_normal))
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
        """(n,) conformal p-values: (1 + #{calibration scores >= s}) / (n_cal + 1). Small = anomalous; for
        a normal sample exchangeable with the calibration data, P(p <= a) <= a. Needs ``calibrate``."""
        check_is_fitted(self, "models_")
        cal = getattr(self, "calibration_scores_", None)
        if cal is None:
            raise NotCalibratedError("predict_pvalue needs calibration scores: call calibrate(X_normal, fpr=...) "
                                     "first, with held-out normal data the detector was not trained on")
        scores = self.decision_function(X)
        at_least = len(cal) - np.searchsorted(cal, scores, side="left")
        return (1.0 + at_least) / (len(cal) + 1.0)

    # --- explanations ---------------------------------------------------------------------------
    def explain(self, X, png=None) -> dict:
        """What makes each row anomalous, part by part.

        ``contributions`` (n, *shape): each value's part of the score. For the ``joint`` score, (r_d /
        sigma_d)^2, the squared reconstruction error of value d in units of its typical error, and
        ``code_distance`` (n,), the code's Mahalanobis term: together they sum to the score of one member.
        For ``recon_error`` and ``neg_elbo``, the squared reconstruction error of each value in the model's
        (scaled) units (it sums to ``recon_error``). Tables also get ``contributions_user_units`` (n, D),
        the squared error in the user's units, ((x - x_hat) * std)^2; ``reconstruction`` (n, D) in the user's
        units; ``feature_names``. Images get ``maps`` (n, H, W), the contributions summed over channels, and
        ``reconstruction`` (n, C, H, W). With several members, the members' parts and reconstructions are
        averaged. ``png``: write a figure of the first images (inputs, reconstructions, anomaly maps) to this
        path (images only).
        """
        check_is_fitted(self, "models_")
        x = self._model_input(X)
        recs = torch.stack([metrics.reconstructions(m, x) for m in self.models_])  # (k, n, *shape)
        err2 = (recs - x).pow(2).double().numpy()
        x_hat = recs.mean(0).double().numpy()
        out = {}
        if self.anomaly_score_ == "joint":
            flat = err2.reshape(len(self.models_), len(x), -1)
            parts = np.mean([flat[j] / stats.sigma**2 for j, stats in enumerate(self.joint_)], axis=0)
            out["code_distance"] = np.mean([stats.code_distance(metrics.codes(m, x).flatten(1).double().cpu().numpy())
                                            for m, stats in zip(self.models_, self.joint_)], axis=0)
            contributions = parts.reshape(err2.shape[1:])
        else:
            contributions = err2.mean(0)
        err2 = err2.mean(0)
        if self.kind_ == "table":
            if png is not None:
                raise ConfigError("explain(png=...) draws anomaly maps of images; this detector was fitted on a table")
            mean, std = _stats_arrays(self.data_spec_.stats, self.n_features_in_)
            return {**out, "contributions": contributions, "contributions_user_units": err2 * std**2,
                    "reconstruction": x_hat * std + mean, "feature_names": list(self.feature_names_)}
        maps = contributions.sum(axis=1)
        if png is not None:
            show = slice(0, PNG_IMAGES)
            peak = float(maps[show].max()) or 1.0
            heat = torch.from_numpy(maps[show] / peak).float()[:, None].expand(-1, x.shape[1], -1, -1)
            fig = plots.image_rows([x[show], torch.from_numpy(x_hat[show]).float(), heat],
                                   ["input", "output", "error"])
            plots.save(fig, png)
        return {**out, "contributions": contributions, "maps": maps, "reconstruction": x_hat}

    # --- data -----------------------------------------------------------------------------------
    def _model_input(self, X) -> torch.Tensor:
        """X as the models read it: (n, *input_shape_) float32, scaled as the training rows, in X's row order.

        One DataError line for data the detector cannot score: another number of features or image shape,
        other column names, NaN/Inf (naming the first bad row), no rows.
        """
        arr, columns = _numeric(X)
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
            raise DataError(f"X has the columns {_preview(columns)}, but the detector was fitted on "
                            f"{_preview(known)}; pass the same columns in the same order")
        x = _tensor(arr, self.kind_, self.data_spec_.stats)
        if tuple(x.shape[1:]) != want:
            raise DataError(f"X holds images of shape {tuple(x.shape[1:])}, but the detector was fitted on images "
                            f"of shape {want}; resize them first")
        return x

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the detector as a run directory at ``path`` (new or empty): the first member's run, readable
        by ``aekit.Run.open`` and ``aekit eval``, plus detector.json and detector.safetensors. Returns path."""
        check_is_fitted(self, "models_")
        first = self.models_[0]
        run = Run.create(path, self.model_name_, first.config, self.train_config_, self.data_spec_)
        try:
            run.save_weights(first.state_dict())
            if self.history_:
                run.write_history(self.history_)
            run.write_summary(self.summary_ or {})
            self._write_state(run)
        finally:
            run.release()
        return run.path

    def save_state(self, path) -> Path:
        """Write this detector's threshold, calibration and members into the run directory ``path`` it scores
        with (e.g. one made by ``aekit train`` and loaded with ``load``), claiming it while writing."""
        check_is_fitted(self, "models_")
        run = Run.open(path)
        run.claim()
        try:
            self._write_state(run)
        finally:
            run.release()
        return run.path

    def _write_state(self, run: Run) -> None:
        tensors = {f"member{k}/{name}": t for k, m in enumerate(self.models_) if k
                   for name, t in m.state_dict().items()}
        for j, stats in enumerate(self.joint_ or []):
            tensors.update(stats.tensors(f"joint{j}/"))
        for name in ("decision_scores", "calibration_scores"):
            value = getattr(self, name + "_", None)
            if value is not None:
                tensors[name] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float64))
        files.save_tensors(run.path / DETECTOR_TENSORS, tensors)
        files.write_json(run.path / DETECTOR, self._state_json())

    def _state_json(self) -> dict:
        params = {k: _plain(v) for k, v in self.get_params(deep=False).items()}
        if not isinstance(params["random_state"], (int, type(None))):
            params["random_state"] = None  # a RandomState object is not JSON; seeds holds what it drew
        calibration = getattr(self, "calibration_scores_", None)
        return {
            "format": FORMAT, "params": params, "kind": self.kind_, "input_shape": list(self.input_shape_),
            "n_features_in": self.n_features_in_, "feature_names": list(self.feature_names_),
            "feature_names_in": None if getattr(self, "feature_names_in_", None) is None
            else [str(c) for c in self.feature_names_in_],
            "score": self.anomaly_score_, "mc_samples": MC_SAMPLES, "score_seed": SCORE_SEED,
            "n_members": len(self.models_), "seeds": self.seeds_,
            "normalization": None if self.normalization_ is None else self.normalization_.tolist(),
            "threshold": self.threshold_, "flag_rate": self.flag_rate_, "threshold_from": self.threshold_from_,
            "n_decision_scores": None if self.decision_scores_ is None else len(self.decision_scores_),
            "n_calibration_scores": None if calibration is None else len(calibration),
        }

    @classmethod
    def load(cls, path, device=None) -> Detector:
        """The detector saved at ``path`` by ``save``, or one that scores with the model of a plain run
        directory (``aekit train``): its table statistics, no threshold until ``calibrate``.

        ``device``: where the models go (default: the device it was trained on where this torch has it,
        else the CPU). Nothing is unpickled; every file is read with a size bound.
        """
        run = Run.open(path)
        state = files.read_json(run.path / DETECTOR) if (run.path / DETECTOR).exists() else None
        try:
            params = {} if state is None else dict(state["params"])
            if isinstance(params.get("hidden"), list):  # JSON has no tuples
                params["hidden"] = tuple(params["hidden"])
            det = cls(**params)
        except (TypeError, KeyError, ValueError) as e:
            raise RunError(f"{run.path / DETECTOR}: not a detector state this aekit can read ({e})") from None
        if device is not None:
            where = torch.device(resolve_device(device))
        else:  # the detector's own device ("auto": the best one here), or the CPU when it is not here
            try:
                where = torch.device(resolve_device(det.device))
            except ConfigError:
                where = torch.device("cpu")
        det.model = det.model_name_ = run.model_name
        det.models_ = [run.model(device=where)]
        det.train_config_, det.data_spec_, det.history_, det.summary_ = run.train, run.data, run.history, run.summary
        shape = tuple(run.model_config.input_shape)
        det.kind_ = "image" if len(shape) == 3 else "table"
        det.input_shape_, det.n_features_in_ = shape, math.prod(shape)
        if state is None:
            det._restore_plain(run)
        else:
            det._restore(run, state, where)
        return det

    def _restore_plain(self, run: Run) -> None:
        if self.kind_ == "table" and (self.data_spec_ is None or self.data_spec_.stats is None):
            raise RunError(f"{run.path}: the run records no table statistics (config.json 'data'), so new rows "
                           "cannot be scaled as its training rows were")
        if self.data_spec_ is None:
            self.data_spec_ = DataConfig(name_or_path=None)
        features = self.data_spec_.features
        self.feature_names_ = list(features) if features else [f"f{i}" for i in range(self.n_features_in_)]
        self.anomaly_score_ = _resolve_score(self.anomaly_score, self.models_[0], fitted=False)
        self.seeds_, self.normalization_, self.decision_scores_, self.joint_ = [None, run.train.seed], None, None, None
        self._set_threshold(None, None, None)

    def _restore(self, run: Run, state: dict, where: torch.device) -> None:
        file = run.path / DETECTOR
        try:
            if state["format"] != FORMAT or state["kind"] != self.kind_ or tuple(state["input_shape"]) != \
                    self.input_shape_:
                raise ValueError("its format, kind or input shape does not match config.json")
            k = int(state["n_members"])
            counts = [int(state[f"n_{name}_scores"] or 0) for name in ("decision", "calibration")]
            if k < 1 or min(counts) < 0:
                raise ValueError("negative counts")
            self.feature_names_ = [str(n) for n in state["feature_names"]]
            if state["feature_names_in"] is not None:
                self.feature_names_in_ = np.asarray(state["feature_names_in"], dtype=object)
            if state["score"] not in SCORES[1:]:
                raise ValueError(f"unknown score {state['score']!r}")
            self.anomaly_score_, self.seeds_ = _resolve_score(state["score"], self.models_[0]), state["seeds"]
            norm = state["normalization"]
            self.normalization_ = None if norm is None else np.asarray(norm, dtype=np.float64).reshape(k, 2)
            if (norm is None) != (k == 1):
                raise ValueError(f"{k} member(s) with normalization {norm!r}")
            threshold, source = state["threshold"], state["threshold_from"]
            threshold = None if threshold is None else float(threshold)
            rate = None if state["flag_rate"] is None else float(state["flag_rate"])
            if source not in (None, "contamination", "calibration") or (source is None) != (threshold is None) \
                    or (source == "calibration") != (counts[1] > 0):
                raise ValueError(f"threshold_from={source!r}, threshold={threshold!r} and {counts[1]} calibration "
                                 "scores do not go together")
        except (KeyError, TypeError, ValueError) as e:
            raise RunError(f"{file}: not a detector state this aekit can read ({type(e).__name__}: {e}); the "
                           "run directory may be damaged") from None
        member_bytes = sum(t.numel() * t.element_size() for t in self.models_[0].state_dict().values())
        code, values = int(self.models_[0].latent_dim), self.n_features_in_
        joint_bytes = k * 8 * (code + code * code + values) if self.anomaly_score_ == "joint" else 0
        tensors, _ = files.load_tensors(run.path / DETECTOR_TENSORS,
                                        (k - 1) * member_bytes + 8 * sum(counts) + joint_bytes)
        self.joint_ = None
        if self.anomaly_score_ == "joint":
            try:
                self.joint_ = [_JointStats.from_tensors(tensors, f"joint{j}/", code, values) for j in range(k)]
            except ValueError as e:
                raise RunError(f"{run.path / DETECTOR_TENSORS}: the joint score's statistics do not match the "
                               f"model ({e}); the run directory may be damaged") from None
        for j in range(1, k):
            member = registry.instantiate(run.model_name, run.model_config, seed=0)  # seeded: no global RNG draw
            prefix = f"member{j}/"
            try:
                member.load_state_dict({n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)})
            except RuntimeError as e:
                raise RunError(f"{run.path / DETECTOR_TENSORS}: the weights of member {j} do not match the model "
                               f"in config.json ({str(e).strip().splitlines()[-1].strip()})") from None
            self.models_.append(member.eval().to(where))
        scores = {}
        for name, n in zip(("decision_scores", "calibration_scores"), counts):
            t = tensors.get(name)
            if (t is None) != (n == 0) or (t is not None and tuple(t.shape) != (n,)):
                raise RunError(f"{run.path / DETECTOR_TENSORS}: {name} do not match the {n} that {DETECTOR} "
                               "announces; the run directory may be damaged")
            scores[name] = None if t is None else t.double().numpy()
        self.decision_scores_ = scores["decision_scores"]
        if scores["calibration_scores"] is not None:
            self.calibration_scores_ = scores["calibration_scores"]
        self._set_threshold(threshold, rate, source)


_NO_THRESHOLD = ("this detector has no threshold: it was loaded from a plain run directory (no detector.json); "
                 "call calibrate(X_normal, fpr=...) with held-out normal data, or fit a Detector with a "
                 "contamination")


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


def _numeric(X) -> tuple[np.ndarray, list[str] | None]:
    """X as a numpy array of numbers (on the CPU; no copy where possible) and a DataFrame's column names.

    The errors scikit-learn's estimator checks look for, each one line: sparse input (TypeError), complex
    numbers, a 1-D array (reshape), no samples, no features. The rest of the interpretation (tables or
    images, dtypes, NaN/Inf) is ``datasets.from_arrays``'s.
    """
    import scipy.sparse

    if scipy.sparse.issparse(X):
        raise TypeError("X is a sparse matrix; a Detector needs dense data: pass X.toarray()")
    columns = getattr(X, "columns", None)
    columns = None if columns is None else [str(c) for c in columns]
    arr = _as_array(X, "X", "the input")
    if arr.dtype.kind == "c":
        raise DataError(f"X: Complex data not supported (dtype {arr.dtype}); pass real numbers")
    if arr.dtype.kind == "O":  # numbers held as Python objects; a TypeError for anything else
        arr = arr.astype(np.float64)
    if arr.ndim >= 1 and arr.shape[0] == 0:
        raise DataError(f"X holds no samples (shape {arr.shape}); pass at least one row")
    if arr.ndim < 2:
        raise DataError(f"X is a {arr.ndim}-D array of shape {arr.shape}, expected 2-D (N, D) rows or images; "
                        "Reshape your data with X.reshape(-1, 1) for one feature or X.reshape(1, -1) for one sample")
    if arr.ndim == 2 and arr.shape[1] == 0:
        raise DataError(f"X has 0 feature(s) (shape={arr.shape}) while a minimum of 1 is required.")
    return arr, columns


def _kind_of(arr: np.ndarray) -> str:
    if arr.ndim == 2:
        return "table"
    if arr.ndim in (3, 4):
        return "image"
    raise DataError(f"X has shape {arr.shape}; expected a table (N, D) or images (N, H, W), (N, H, W, C) or "
                    "(N, C, H, W)")


def _tensor(arr: np.ndarray, kind: str, stats: dict | None) -> torch.Tensor:
    """``from_arrays``'s tensor of arr (n, *shape), scaled with ``stats``, in arr's row order.

    from_arrays permutes its rows; the row numbers handed to it as labels say where each one came from.
    """
    ds = from_arrays(arr, np.arange(len(arr)), kind=kind, name="X", val_fraction=0.0, test_fraction=0.0,
                     stats=stats)
    x = torch.empty_like(ds.x_train)
    x[ds.y_train] = ds.x_train
    return x


def _resolve_score(score: str, model, *, fitted: bool = True) -> str:
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


class _JointStats:
    """The joint score of one member: -2 log p(x) up to a constant under "code ~ N(mu, S), x | code ~
    N(g(code), diag sigma^2)", i.e. with z = f(x) the code and r = x - g(f(x)) the residual (model units),

        score(x) = (z - mu)' S^-1 (z - mu) + sum_d (r_d / sigma_d)^2

    the distance of the code from the training codes plus the reconstruction error of each value in units
    of its typical error. ``fit`` estimates mu, S (with a ridge of JOINT_RIDGE x its mean variance; the
    pseudo-inverse) and sigma (at least JOINT_SIGMA_FLOOR of the data's kind) on the training rows, then refits them
    JOINT_REFITS times on the (1 - JOINT_TRIM) share of the rows with the lowest score, so that the anomalies
    of a contaminated training set do not widen them.
    """

    def __init__(self, mu: np.ndarray, prec: np.ndarray, sigma: np.ndarray):
        self.mu, self.prec, self.sigma = mu, prec, sigma

    @classmethod
    def estimate(cls, z: np.ndarray, r: np.ndarray, floor: float) -> _JointStats:
        mu = z.mean(axis=0)
        cov = np.atleast_2d(np.cov(z - mu, rowvar=False)) if len(z) > 1 else np.zeros((z.shape[1],) * 2)
        k = cov.shape[0]
        cov = cov + (JOINT_RIDGE * np.trace(cov) / k + 1e-12) * np.eye(k)
        return cls(mu, np.linalg.pinv(cov, hermitian=True), np.maximum(r.std(axis=0), floor))

    @classmethod
    def fit(cls, z: np.ndarray, r: np.ndarray, floor: float = JOINT_SIGMA_FLOOR["table"]) -> _JointStats:
        stats = cls.estimate(z, r, floor)
        for _ in range(JOINT_REFITS):
            s = stats.score(z, r)
            keep = s <= np.quantile(s, 1.0 - JOINT_TRIM)
            if keep.sum() >= 2:
                stats = cls.estimate(z[keep], r[keep], floor)
        return stats

    def score(self, z: np.ndarray, r: np.ndarray) -> np.ndarray:
        return self.code_distance(z) + self.residual_terms(r).sum(axis=1)

    def code_distance(self, z: np.ndarray) -> np.ndarray:
        d = z - self.mu
        return np.einsum("ij,jk,ik->i", d, self.prec, d)

    def residual_terms(self, r: np.ndarray) -> np.ndarray:
        return (r / self.sigma) ** 2

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}{name}": torch.from_numpy(np.ascontiguousarray(getattr(self, name), dtype=np.float64))
                for name in ("mu", "prec", "sigma")}

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str, k: int, d: int) -> _JointStats:
        """The statistics saved by ``tensors``; a ValueError when one is missing or of the wrong shape."""
        got = {}
        for name, shape in (("mu", (k,)), ("prec", (k, k)), ("sigma", (d,))):
            t = tensors.get(prefix + name)
            if t is None or tuple(t.shape) != shape:
                raise ValueError(f"{prefix}{name} is missing or not of shape {shape}")
            got[name] = t.double().numpy()
        if not (np.isfinite(got["prec"]).all() and np.isfinite(got["mu"]).all() and (got["sigma"] > 0).all()):
            raise ValueError(f"{prefix}: non-finite statistics or a residual std <= 0")
        return cls(**got)


def _codes_and_residuals(model, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(codes (n, K), residuals x - reconstruction (n, values)) of x, float64 numpy."""
    z = metrics.codes(model, x).flatten(1)
    r = (x - metrics.reconstructions(model, x)).flatten(1)
    return z.double().cpu().numpy(), r.double().cpu().numpy()


def _fit_joint(models, x: torch.Tensor, kind: str) -> tuple[list[_JointStats], np.ndarray]:
    """Each member's joint-score statistics fitted on x, and its scores of x ((members, n) float64), from
    one pass of each member over x."""
    joint, raw = [], []
    for m in models:
        z, r = _codes_and_residuals(m, x)
        joint.append(_JointStats.fit(z, r, floor=JOINT_SIGMA_FLOOR[kind]))
        raw.append(joint[-1].score(z, r))
    return joint, np.stack(raw)


def _raw_scores(models, x: torch.Tensor, score: str, joint: list[_JointStats] | None = None) -> np.ndarray:
    """Each member's scores of x: (members, n) float64."""
    out = []
    for j, m in enumerate(models):
        if score == "joint":
            out.append(joint[j].score(*_codes_and_residuals(m, x)))
            continue
        if score == "recon_error":  # without the -ELBO that anomaly_scores adds for probabilistic models
            s = metrics.sse_per_example(x, metrics.reconstructions(m, x))
        else:
            s = metrics.anomaly_scores(m, x, mc_samples=MC_SAMPLES, seed=SCORE_SEED)[score]
        out.append(s.double().cpu().numpy())
    return np.stack(out)


def _normalization(raw: np.ndarray) -> np.ndarray | None:
    """(members, 2): the median and interquartile range of each member's training scores (None for one)."""
    if len(raw) == 1:
        return None
    q1, median, q3 = np.percentile(raw, [25, 50, 75], axis=1)
    iqr = q3 - q1
    return np.stack([median, np.where(iqr > 0, iqr, 1.0)], axis=1)


def _combine(raw: np.ndarray, norm: np.ndarray | None) -> np.ndarray:
    """One score per row: the member's own (one member) or the mean of (s - median) / IQR."""
    if norm is None:
        return raw[0]
    return ((raw - norm[:, :1]) / norm[:, 1:]).mean(axis=0)


def _plain(value):
    """A parameter value as JSON types: numpy scalars as Python numbers, tuples as lists (recursively)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _stats_arrays(stats: dict, d: int) -> tuple[np.ndarray, np.ndarray]:
    if stats is None:
        return np.zeros(d), np.ones(d)
    return np.asarray(stats["mean"], dtype=np.float64), np.asarray(stats["std"], dtype=np.float64)


def _default_names(ds) -> list[str]:
    return [f"f{i}" for i in range(ds.dim)] if ds.kind == "table" else []


__all__ = ["Detector", "NotCalibratedError"]
