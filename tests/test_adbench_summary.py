"""benchmarks/adbench.py's summary of seconds: the first fit of a subprocess (which pays a fresh process's one-off
costs) is kept apart from the later ones, and the later fits are compared with pyod AutoEncoder's set by set."""

import numpy as np
import pytest

import benchmark_scripts


@pytest.fixture(scope="module")
def adbench():
    return benchmark_scripts.load("adbench")


def _runs(seconds, auroc=0.7):
    return {"runs": [{"seed": i + 1, "auroc": auroc, "fit_seconds": s, "score_seconds": 0.0, "split": f"s{i}"}
                     for i, s in enumerate(seconds)]}


def test_later_fits_set_by_set(adbench):
    results = {"a": {"aekit": _runs([2.0, 0.5, 0.7]), "iforest": _runs([0.1, 0.1, 0.1], 0.6),
                     "pyod-ae": _runs([6.0, 1.0, 1.0], 0.65)},
               "b": {"aekit": _runs([1.0, 3.0, 1.0]), "iforest": _runs([0.1, 0.1, 0.1], 0.6),
                     "pyod-ae": _runs([9.0, 2.0, 2.0], 0.65)}}
    s = adbench.summarize(results, ["aekit", "iforest", "pyod-ae"], ["a", "b"])
    # later fits: the median of seeds 2..: a 0.6 s, b 2.0 s; pyod AutoEncoder 1.0 s and 2.0 s
    assert s["later_seconds"]["aekit"] == pytest.approx((0.6 + 2.0) / 2)
    median, (worst, where) = s["later_vs_pyod_ae"]["aekit"]
    assert median == pytest.approx(np.median([0.6, 1.0])) and worst == pytest.approx(1.0) and where == "b"
    assert s["later_vs_pyod_ae"]["pyod-ae"][0] == pytest.approx(1.0)
    # the mean over every fit keeps the first ones
    assert s["mean_seconds"]["aekit"] == pytest.approx(np.mean([2.0, 0.5, 0.7, 1.0, 3.0, 1.0]))
    assert "| 1.30 | 0.80 (1.00, b) |" in adbench.render({"tables": s}, ["aekit", "iforest", "pyod-ae"], _meta())


def test_one_seed_has_no_later_fits(adbench):
    results = {"a": {"aekit": _runs([2.0]), "iforest": _runs([0.1], 0.6), "pyod-ae": _runs([6.0], 0.65)}}
    s = adbench.summarize(results, ["aekit", "iforest", "pyod-ae"], ["a"])
    assert np.isnan(s["later_seconds"]["aekit"]) and s["later_vs_pyod_ae"]["aekit"] is None
    assert "| nan | - |" in adbench.render({"tables": s}, ["aekit", "iforest", "pyod-ae"], _meta())


def _meta():
    return {"seeds": [1, 2, 3], "command": "x", "date": "d", "wall_minutes": 1.0, "jobs": 1, "aekit_commit": "c",
            "aekit_detector": "d", "pyod_versions": "p", "machine": "m", "python": "3", "load_start": "0",
            "load_end": "0", "domains": [], "ran": [], "reused": {}}


def test_a_subsample_too_poor_in_anomalies_to_stratify_is_drawn_again(adbench):
    """smtp-like: 3 anomalies in 20000 rows; a subsample of 10000 often keeps fewer than 2 and cannot be split
    stratified. protocol_split draws such a subsample again; a seed whose draw could be split is left alone."""
    X = np.random.default_rng(0).normal(size=(20000, 2))
    y = np.zeros(20000, dtype=int)
    y[[5, 9000, 17000]] = 1
    redrawn = 0
    for seed in range(1, 9):
        split = adbench.protocol_split(X, y, seed)
        assert split["y_test"].sum() >= 1 and split["y_train_true"].sum() >= 1
        adbench._set_seed(seed)
        kept = y[np.random.choice(np.arange(len(y)), adbench.N_MAX, replace=False)].sum()
        redrawn += kept < 2
    assert redrawn >= 1  # (the case this covers occurs among these seeds)


def test_method_timeouts_are_read_and_bad_ones_refused(adbench):
    """--method-timeout mcd=90 (the README command's: MCD does not finish on 512+ columns) limits that method only;
    an unknown method or a missing, zero or non-numeric limit is a one-line error that says how to write it."""
    assert adbench.method_timeouts("") == {}
    assert adbench.method_timeouts("mcd=90, lof=2.5") == {"mcd": 90.0, "lof": 2.5}
    for bad, says in [("mcd", "positive number of seconds"), ("mcd=0", "positive"), ("mcd=soon", "mcd=90"),
                      ("mdc=90", "is not a method"), ("mcd=nan", "positive"), ("mcd=inf", "positive")]:
        with pytest.raises(ValueError, match=says) as e:
            adbench.method_timeouts(bad)
        assert "\n" not in str(e.value)
