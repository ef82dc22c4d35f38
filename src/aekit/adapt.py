"""How ``aekit.Detector`` fits a table (or images) so that its scores hold on rows it never saw (issue 18).

An autoencoder trained on a few hundred rows memorizes them: its codes and residuals on those rows are not
those of new rows (on 90 rows, 150 steps, a code as wide as the input, the residuals of training rows are
near zero). Statistics of the score estimated on those rows (the code's covariance, each value's typical
residual, the median and spread used to normalize, the contamination threshold) are then wrong for every new
row: the detector ranks new rows by noise, and flags all of them. Two remedies, both chosen by the protocol
of benchmarks/README.md ("Selection protocol") and measured in benchmarks/RESULTS_adbench_select.md:

- **Cross-fitting** (``folds``): the distinct rows are split into K folds; member k trains on the other K-1
  folds and its score statistics, its normalization (median and IQR) and the training rows' scores come from
  fold k, which it never saw. A new row is scored by every member (their normalized scores averaged); a
  training row by the member(s) that did not train on it, so the contamination threshold is set on scores
  of unseen rows. Duplicated rows (ADBench's resampling of small sets makes many) fall in one fold together.
  On a small fold (at most ``INNER_MAX_DISTINCT`` distinct rows) a training row's score also takes its
  statistics from the fold's other rows (``inner_folds``, ``out_of_fold``): statistics fitted on a few dozen
  rows fit those rows better than new ones, and a threshold set on their in-sample scores flags too many
  unseen normal rows (benchmarks/README.md, "Thresholds on small folds"). Cross-fitting starts at
  2 x ``MIN_FOLD_ROWS`` distinct rows (below, one member scores rows it trained on: a worse threshold still).
- **A code sized from the data** (``latent_dim=None``): at most ``TABLE_LATENT``, at most half the number
  of features (a code as wide as the input copies it), and small enough for its covariance to be estimated
  on one fold (at least ``ROWS_PER_CODE`` rows per code dimension).

The functions here are the policy; ``Detector.fit`` calls them with its own training and scoring steps, and
``fit_run`` is ``aekit train --contamination``: the same detector, the same defaults, written as a run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from . import scoring
from .errors import ConfigError
from .scoring import smooth_window

FOLDS = 2  # folds="auto": this many folds on a table with enough distinct rows ...
MIN_FOLD_ROWS = 5  # ... each fold holding at least this many distinct rows (fewer folds, down to 1, otherwise)
TABLE_LATENT = 16  # the largest code of a table chosen from the data
INNER_MAX_DISTINCT = 50  # a held-out fold of at most this many distinct rows scores its own rows with
INNER_FOLDS = 10  # statistics fitted on its other inner folds, this many (leave-one-out below)
ROWS_PER_CODE = 6  # latent_dim=None: at least this many rows of a fold per code dimension
TABLE_RESIDUAL_RANK = 8  # residual_rank="auto": the joint score's residual model on a table (aekit.scoring)
IMAGE_RESIDUAL_RANK = 0  # ... and on images (0: diagonal)
REGRESSION_ROWS_PER_COEF = 5  # the code regression (aekit.scoring.JointStats) only on rows of at least this many
# distinct rows per coefficient of a value (code + intercept); 0: wherever it can be fitted (selection round 12)
IMAGE_RESIDUAL_SMOOTH = 3  # residual_smooth="auto": the joint score's residual images smoothed over this window ...
SMOOTH_MIN_SIDE = 16  # ... on images whose sides have at least this many pixels (aekit.scoring.smooth_residuals)


def n_distinct(arr: np.ndarray) -> int:
    return int(distinct_ids(arr).max()) + 1 if len(arr) else 0


def n_folds(folds, arr: np.ndarray, kind: str, distinct: int | None = None) -> int:
    """The number of folds ``Detector(folds=...)`` uses on ``arr``: an int as given (1: no cross-fitting);
    "auto": ``FOLDS`` on data (a table or images) whose distinct rows fill them with ``MIN_FOLD_ROWS`` each,
    fewer folds where they do not (images: chosen on validation data by benchmarks/fmnist_select.py).
    ``distinct``: the number of distinct rows of ``arr``, if known."""
    if folds != "auto":
        return int(folds)
    distinct = n_distinct(arr) if distinct is None else int(distinct)
    return next((k for k in range(FOLDS, 1, -1) if distinct >= k * MIN_FOLD_ROWS), 1)


def residual_rank(rank, kind: str, n_values: int) -> int:
    """The rank of the joint score's residual model (``aekit.scoring.JointStats``): an int as given; "auto":
    ``TABLE_RESIDUAL_RANK`` on a table, ``IMAGE_RESIDUAL_RANK`` on images, at most ``n_values`` - 1 (a rank as
    large as the number of values leaves no noise to estimate)."""
    q = (TABLE_RESIDUAL_RANK if kind == "table" else IMAGE_RESIDUAL_RANK) if rank == "auto" else int(rank)
    return max(0, min(q, n_values - 1))


def code_regression(rows: np.ndarray, code: int, rank: int, distinct: int | None = None) -> bool:
    """Whether the joint statistics fitted on ``rows`` (n, ...) of a member with a code of ``code`` values and a
    residual model of ``rank`` factors regress the residuals on the code (``aekit.scoring.JointStats``; a
    diagonal model, rank 0, has none): when they hold at least ``REGRESSION_ROWS_PER_COEF`` distinct rows per
    coefficient (code + 1), with the regression on (``aekit.scoring.JOINT_CODE_REGRESSION``). ``distinct``: the
    number of distinct rows of ``rows``, if known (else they are counted)."""
    if rank < 1 or not scoring.JOINT_CODE_REGRESSION:
        return False
    if not REGRESSION_ROWS_PER_COEF:
        return True
    need = REGRESSION_ROWS_PER_COEF * (int(code) + 1)
    if distinct is None:
        distinct = 0 if len(rows) < need else n_distinct(np.asarray(rows).reshape(len(rows), -1))
    return distinct >= need


def residual_smooth(smooth, kind: str, shape: tuple) -> int:
    """The window over which the joint score's residual images are smoothed (``aekit.scoring.smooth_residuals``;
    1: not smoothed): an int as given; "auto": ``IMAGE_RESIDUAL_SMOOTH`` on images whose sides have at least
    ``SMOOTH_MIN_SIDE`` pixels, 1 otherwise (tables have no neighbouring values). ConfigError for a window
    that cannot be (``aekit.scoring.smooth_window`` says why)."""
    if smooth == "auto":
        return IMAGE_RESIDUAL_SMOOTH if kind == "image" and min(shape[1:]) >= SMOOTH_MIN_SIDE else 1
    try:
        return smooth_window(smooth, kind, shape)
    except ValueError as e:
        raise ConfigError(f"Detector(residual_smooth={smooth!r}): {e}, or 'auto'") from None


def table_latent(n_rows: int, n_features: int, folds: int) -> int:
    """The code size of a table of ``n_rows`` training rows and ``n_features`` columns with ``folds`` folds:
    min(TABLE_LATENT, n_features // 2, rows of one statistics fold // ROWS_PER_CODE), at least 1."""
    stat_rows = n_rows / folds if folds > 1 else n_rows
    return int(max(1, min(TABLE_LATENT, n_features // 2, stat_rows // ROWS_PER_CODE)))


def distinct_ids(arr: np.ndarray) -> np.ndarray:
    """(n,) the index of each row among the distinct rows of ``arr`` in lexicographic order, 0..distinct-1:
    ``np.unique(arr, axis=0, return_inverse=True)``'s inverse (rows equal as numbers are one row, -0.0 and 0.0
    included), found without its sort of whole rows (a row-by-row comparison, slow on wide rows): equal rows
    are grouped by a hash of their values, each group checked value by value, and the groups' first rows put
    in lexicographic order by sorting column after column only the rows still tied. Anything but finite
    floats, or a hash shared by unequal rows, takes ``np.unique`` itself."""
    flat = arr.reshape(len(arr), -1)
    if len(flat) < 2 or flat.dtype.kind != "f" or not flat.shape[1]:
        return np.unique(flat, axis=0, return_inverse=True)[1].reshape(-1)
    first, inverse = _equal_rows(flat)
    if first is None:
        return np.unique(flat, axis=0, return_inverse=True)[1].reshape(-1)
    return _lexicographic_ranks(flat[first])[inverse]


_ROW_BLOCK_VALUES = 1 << 20  # distinct_ids works on blocks of rows of about this many values
_REFINE_COLUMNS = 4  # ... and sorts the rows tied after this many columns by all the others at once


def _row_blocks(flat: np.ndarray):
    step = max(1, _ROW_BLOCK_VALUES // flat.shape[1])
    for i in range(0, len(flat), step):
        yield i, flat[i:i + step] + 0.0  # + 0.0: -0.0 becomes 0.0, equal as numbers and now as bits


def _equal_rows(flat: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(the index of the first row of each group of equal rows, each row's group) of the (n, D) finite
    floats ``flat``; (None, None) when a value is not finite or two unequal rows share a hash."""
    bits = np.dtype(f"u{flat.dtype.itemsize}")
    weights = np.random.RandomState(0).randint(1, 2**62, size=flat.shape[1], dtype=np.int64).astype(np.uint64) * 2 + 1
    hashes = np.empty(len(flat), np.uint64)
    for i, block in _row_blocks(flat):
        if not np.isfinite(block).all():
            return None, None
        hashes[i:i + len(block)] = _mixed(block.view(bits).astype(np.uint64)) @ weights  # wraps modulo 2**64
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    for i, block in _row_blocks(flat):
        if not (block == flat[first[inverse[i:i + len(block)]]]).all():
            return None, None
    return first, inverse


def _mixed(u: np.ndarray) -> np.ndarray:
    """Each 64-bit word with its high half folded into its low half (in place). A float's bits differ mostly in
    their high bits (1.0 is 1023 << 52), which a weighted sum modulo 2**64 would keep in its top 12 bits only:
    rows of 0s and 1s would share hashes (and take np.unique's slower path)."""
    u ^= u >> np.uint64(32)
    return u


def _lexicographic_ranks(rows: np.ndarray) -> np.ndarray:
    """(m,) the rank of each of the m distinct rows (m, D) in lexicographic order: the rows are sorted by
    their first column, then the rows tied so far by the next, and so on until none is tied; rows still tied
    after ``_REFINE_COLUMNS`` columns (sparse or binary tables) are sorted by all the remaining ones at once."""
    m = len(rows)
    start = np.zeros(m, np.int64)  # the first sorted position of each row's group of rows tied so far
    active = np.arange(m)  # the rows in a group of two or more
    for j in range(rows.shape[1]):
        if not len(active):
            break
        col, group = rows[active, j], start[active]
        last = j >= _REFINE_COLUMNS
        order = np.lexsort((*rows[active, j:][:, ::-1].T, group) if last else (col, group))
        g, c = group[order], col[order]
        k = np.arange(len(order))
        new_group = np.r_[True, g[1:] != g[:-1]]
        if last:  # distinct rows: each its own place within its group
            start[active[order]] = g + k - np.maximum.accumulate(np.where(new_group, k, 0))
            break
        new_sub = new_group | np.r_[True, c[1:] != c[:-1]]
        moved = g + np.maximum.accumulate(np.where(new_sub, k, 0)) - np.maximum.accumulate(np.where(new_group, k, 0))
        start[active[order]] = moved
        tied = np.r_[moved[1:] == moved[:-1], False] | np.r_[False, moved[1:] == moved[:-1]]
        active = active[order][tied]
    return start


def fold_ids(arr: np.ndarray, k: int, seed: int, ids: np.ndarray | None = None) -> np.ndarray:
    """(n,) fold of each row, 0..k-1: the distinct rows dealt at random into k folds of equal size (within
    one), every copy of a row in the fold of its first copy (``ids``: ``distinct_ids(arr)``, if known)."""
    inverse = distinct_ids(arr) if ids is None else ids
    order = np.random.RandomState(seed).permutation(inverse.max() + 1)
    return (order % k)[inverse]


def inner_folds(distinct: int, max_distinct: float | None = None) -> int:
    """The number of inner folds of a held-out fold of ``distinct`` distinct rows: min(distinct,
    ``INNER_FOLDS``) on a fold of at most ``max_distinct`` (None: ``INNER_MAX_DISTINCT``), 1 (none) on a larger
    one, whose in-sample statistics are those of new rows within noise (with the joint statistics' trimmed
    refits: untrimmed statistics, ``Detector(novelty=True)``'s, fit their own rows' tails, and it asks for
    inner folds on every fold)."""
    top = INNER_MAX_DISTINCT if max_distinct is None else max_distinct
    return min(distinct, INNER_FOLDS) if 2 <= distinct <= top else 1


def inner_fold_ids(ids: np.ndarray, max_distinct: float | None = None) -> np.ndarray | None:
    """The inner fold of each row of a held-out fold whose rows have the distinct-row ids ``ids`` (copies of a row
    together), ``inner_folds`` of them (``max_distinct``: as there); None where it gets none."""
    local = np.unique(ids, return_inverse=True)[1].reshape(-1)
    k = inner_folds(int(local.max()) + 1 if len(local) else 0, max_distinct)
    return None if k < 2 else fold_ids(local, k, 0, ids=local)


def out_of_fold(folds: np.ndarray, fit_score: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """(n,) the score of each row by statistics fitted without its fold (``folds``: the fold of each row, e.g.
    ``fold_ids``): ``fit_score(train, test)`` fits on the rows of the boolean mask ``train`` and returns the
    scores of the rows of ``test``."""
    out = np.empty(len(folds))
    for f in np.unique(folds):
        test = folds == f
        out[test] = fit_score(~test, test)
    return out


def robust_scale(raw: np.ndarray) -> tuple[float, float]:
    """(median, interquartile range; 1 where it is 0) of a member's scores of rows it did not train on."""
    q1, median, q3 = np.percentile(raw, [25, 50, 75])
    return float(median), float(q3 - q1) if q3 > q1 else 1.0


@dataclasses.dataclass
class CrossFit:
    fitted: list  # (TrainConfig, FitResult) of each member, fold by fold
    stats: list  # each member's statistics (``held_out``'s first result), fitted on its held-out fold
    normalization: np.ndarray  # (raw rows, 2): median and IQR of each raw score row of its held-out fold
    scores: np.ndarray  # (n,): each row's normalized score by the member(s) that did not train on it (and, on a
    # small fold, by statistics fitted without it: inner_folds)
    folds: np.ndarray  # (n,): the fold of each row


def cross_fit(rows: np.ndarray, k: int, seeds: list[int], fold_seed: int,
              train: Callable[[np.ndarray, int], tuple], held_out: Callable[..., tuple],
              ids: np.ndarray | None = None, inner_max_distinct: float | None = None) -> CrossFit:
    """Fit ``len(seeds) // k`` members per fold. ``train(rows, seed)`` -> (TrainConfig, FitResult);
    ``held_out(model, rows, seen, inner, distinct)`` -> (statistics, raw scores (n,) or (terms, n), the same raw
    scores with each row's statistics fitted on the other inner folds ``inner`` (``inner_fold_ids``; where it is
    None, None: the raw scores)) of rows the model did not train on (``seen``: the rows it trained on;
    ``distinct``: how many distinct rows ``rows`` holds). Each raw row is
    normalized by its own median and IQR; a row's score is the mean over the fold's members and their terms
    of the normalized out-of-sample raw scores. ``ids``: ``distinct_ids(rows)``, if known; ``inner_max_distinct``:
    the largest held-out fold (in distinct rows) that gets inner folds (None: ``INNER_MAX_DISTINCT``)."""
    ids = distinct_ids(rows) if ids is None else ids
    folds = fold_ids(rows, k, fold_seed, ids)
    per_fold = len(seeds) // k
    fitted, stats, norm = [], [], []
    scores = np.zeros(len(rows))
    for f in range(k):
        out = folds == f
        inner = inner_fold_ids(ids[out], inner_max_distinct)
        distinct = len(np.unique(ids[out]))
        for seed in seeds[f * per_fold:(f + 1) * per_fold]:
            cfg, result = train(rows[~out], seed)
            member_stats, raw, unseen = held_out(result.model, rows[out], rows[~out], inner, distinct)
            raw = np.atleast_2d(raw)
            unseen = raw if unseen is None else np.atleast_2d(unseen)
            for term, term_unseen in zip(raw, unseen):
                median, iqr = robust_scale(term)  # (the normalization of every row the member scores)
                scores[out] += (term_unseen - median) / iqr / per_fold / len(raw)
                norm.append((median, iqr))
            fitted.append((cfg, result))
            stats.append(member_stats)
    return CrossFit(fitted, stats, np.asarray(norm, dtype=np.float64), scores, folds)


def fit_run(model: str, ds, out, contamination: float, train_options: dict, model_options: dict, seed: int = 0):
    """``aekit train MODEL --contamination C``: ``Detector(model=MODEL, contamination=C, random_state=seed)``
    (``novelty=True`` when the dataset keeps one normal class for training: ``--normal-class``)
    with the command line's training and model options, fitted by ``Detector.fit`` on the dataset's training
    rows (in the user's units; the detector holds out its own validation and statistics rows) and saved as the
    run directory ``out`` (its data config is the command line's, so ``aekit score`` and ``aekit calibrate``
    read new files as this one). Returns (the Detector, a FitResult of its first member, for the summary)."""
    import types

    from . import registry
    from .config import TrainConfig
    from .datasets import check_arrays
    from .detector import Detector
    from .trainer import FitResult

    typed = registry.get(model).Config.from_dict(dict(model_options)).to_dict()  # command-line text, typed
    opts = {k: typed[k] for k in model_options}
    params = {"latent_dim": opts.pop("latent_dim", None), "hidden": opts.pop("hidden", None)}
    train = TrainConfig.from_dict(dict(train_options)).to_dict()
    params.update({k: train[k] for k in ("epochs", "batch_size", "lr", "device") if k in train_options})
    det = Detector(model=model, model_options=opts or None, contamination=contamination,
                   random_state=seed, novelty=ds.spec.normal_class is not None, **params)
    # the training rows become one array in the user's units, and the Detector makes two datasets of it:
    # checked against the memory budget before anything is copied (a memory-mapped file stays on disk until then)
    check_arrays(types.SimpleNamespace(shape=tuple(ds.x_train.shape), dtype="float32"),
                 f"--contamination (the training split of {ds.name})", copies=3)
    det.fit(ds.to_user_units(ds.x_train).numpy())
    det.data_spec_ = dataclasses.replace(ds.spec, stats=det.data_spec_.stats)
    if ds.feature_names:  # the table's own column names: `aekit score` and export match new files by them
        det.feature_names_ = list(ds.feature_names)
    det.save(out)
    s = det.summary_
    result = FitResult(model=det.models_[0], history=det.history_, best_epoch=s["best_epoch"],
                       best_val_loss=math.inf if s["best_val_loss"] is None else s["best_val_loss"],
                       stopped=s["stopped"], run_dir=str(out), config=det.train_config_)
    return det, result


__all__ = ["CrossFit", "cross_fit", "distinct_ids", "fit_run", "fold_ids", "inner_fold_ids", "inner_folds", "n_folds",
           "out_of_fold", "residual_rank", "residual_smooth", "table_latent", "n_distinct", "robust_scale",
           "code_regression"]
