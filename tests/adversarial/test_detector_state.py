"""Attacks on a detector's saved state (issue 21, "torn detector state"): a load concurrent with calibrate, a
save killed midway (a failing write, SIGKILL), a threshold of NaN or Infinity written into the state.

A state is one file published by rename (Run.write_detector_state): a reader sees one calibration or the
other, whole; Detector.save writes the weights last, so a folder whose save was cut short is refused by
load instead of opening as another detector (the plain run it looks like)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import aekit
from aekit import Detector

FAST = dict(epochs=2, hidden=(8,), latent_dim=2, batch_size=64)
SRC = str(Path(aekit.__file__).resolve().parents[1])


def table(n: int, seed: int, d: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)) @ np.random.default_rng(1).normal(size=(2, d)) + 0.1 * rng.normal(size=(n, d))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved detector of 2 members per fold (4, cross-fitted) and the data of two calibrations of different sizes
    and rates."""
    d = tmp_path_factory.mktemp("state")
    det = Detector(n_estimators=2, random_state=0, **FAST).fit(table(300, 0))
    np.save(d / "cal_a.npy", table(199, 1))
    np.save(d / "cal_b.npy", table(300, 2) * 1.5)
    det.calibrate(np.load(d / "cal_a.npy"), fpr=0.05).save(d / "det")
    return d, det


def consistent(det) -> bool:
    """The threshold is the conformal quantile of the calibration scores it was saved with."""
    cal, fpr = det.calibration_scores_, det.flag_rate_
    k = math.ceil(round((len(cal) + 1) * (1.0 - fpr), 9))
    return det.threshold_ == cal[k - 1] and det.labels_ is not None and len(det.models_) == 4  # 2 folds x 2


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from aekit import Detector
    run, a, b, stop = sys.argv[1:5]
    data = [(np.load(a), 0.05), (np.load(b), 0.1)]
    i = 0
    import os
    while not os.path.exists(stop):
        x, fpr = data[i % 2]
        Detector.load(run).calibrate(x, fpr=fpr).save_state(run)
        i += 1
        print(i, flush=True)
""")


def test_load_during_a_calibrate_loop_reads_one_whole_state(saved, tmp_path):
    d, _ = saved
    import shutil

    run = tmp_path / "det"
    shutil.copytree(d / "det", run)
    stop = tmp_path / "stop"
    env = {**os.environ, "PYTHONPATH": SRC}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run), str(d / "cal_a.npy"), str(d / "cal_b.npy"),
                               str(stop)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen, loads = set(), 0
    try:
        deadline = time.time() + 90
        while time.time() < deadline and (len(seen) < 2 or loads < 40):
            det = Detector.load(run)
            assert consistent(det), (det.threshold_, len(det.calibration_scores_), det.flag_rate_)
            seen.add((len(det.calibration_scores_), det.flag_rate_))
            loads += 1
            assert writer.poll() is None, writer.communicate()
    finally:
        stop.write_text("")
        _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert seen == {(199, 0.05), (300, 0.1)}, seen  # both calibrations were read while being rewritten
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]


def test_a_failed_state_write_keeps_the_previous_state(saved, tmp_path, monkeypatch):
    d, det = saved
    import shutil

    from aekit import files

    run = tmp_path / "det"
    shutil.copytree(d / "det", run)

    def full_disk(path, data):
        raise aekit.RunError(f"{path}: cannot write (No space left on device)")

    monkeypatch.setattr(files, "atomic_write_bytes", full_disk)
    with pytest.raises(aekit.RunError, match="No space left"):
        Detector.load(run).calibrate(np.load(d / "cal_b.npy"), fpr=0.1).save_state(run)
    monkeypatch.undo()
    back = Detector.load(run)
    assert consistent(back) and back.threshold_ == det.threshold_ and back.flag_rate_ == 0.05


def test_a_save_cut_short_is_refused_not_read_as_another_detector(saved, tmp_path, monkeypatch):
    _, det = saved
    from aekit.run import Run

    def dies(self, state):
        raise aekit.RunError(f"{self.path}: cannot write (No space left on device)")

    monkeypatch.setattr(Run, "save_weights", dies)  # the last write of a save fails
    with pytest.raises(aekit.RunError, match="No space left"):
        det.save(tmp_path / "cut")
    monkeypatch.undo()
    with pytest.raises(aekit.RunError, match="model.safetensors"):
        Detector.load(tmp_path / "cut")
    with pytest.raises(aekit.RunError, match="model.safetensors"):
        aekit.scoring.Scorer.from_run(tmp_path / "cut")


SAVER = textwrap.dedent("""
    import pickle, sys
    det = pickle.load(open(sys.argv[1], "rb"))
    i = 0
    while True:
        det.save(f"{sys.argv[2]}/d{i}")
        i += 1
""")


@pytest.mark.parametrize("delay", [0.5, 1.7])
def test_sigkill_during_save_leaves_the_detector_or_a_refusal(saved, tmp_path, delay):
    import pickle

    _, det = saved
    (tmp_path / "det.pkl").write_bytes(pickle.dumps(det))
    (tmp_path / "out").mkdir()
    env = {**os.environ, "PYTHONPATH": SRC}
    p = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path / "det.pkl"), str(tmp_path / "out")], env=env,
                         stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and len(os.listdir(tmp_path / "out")) < 2:
        time.sleep(0.05)
    time.sleep(delay * 0.1)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    folders = sorted(os.listdir(tmp_path / "out"), key=lambda n: int(n[1:]))
    assert len(folders) >= 2
    refused = 0
    x = table(20, 5)
    for name in folders:
        try:
            back = Detector.load(tmp_path / "out" / name)
        except aekit.RunError as e:
            assert name == folders[-1], (name, e)  # only the folder being written when killed
            assert "\n" not in str(e)
            refused += 1
            continue
        assert consistent(back) and back.threshold_ == det.threshold_ and back.anomaly_score_ == "joint"
        np.testing.assert_array_equal(back.decision_function(x), det.decision_function(x))
    assert refused <= 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_threshold_is_refused_on_load(saved, tmp_path, cli, bad):
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    d, _ = saved
    run = tmp_path / "det"
    shutil.copytree(d / "det", run)
    file = run / "detector.safetensors"
    with safe_open(file, "pt") as f:
        meta = json.loads(f.metadata()["json"])
    meta["detector"]["threshold"] = bad  # json writes NaN / Infinity, which Python's json reads back
    save_file(load_file(file), file, metadata={"json": json.dumps(meta)})
    with pytest.raises(aekit.RunError, match=r"threshold is (nan|inf|-inf) \(not a finite number\)"):
        Detector.load(run)
    np.save(tmp_path / "x.npy", table(10, 3))
    code, out, err = cli("score", run, tmp_path / "x.npy")
    assert code == 2 and "not a finite number" in err and len(err.strip().splitlines()) == 1 and not out


def test_a_two_file_state_of_an_earlier_version_still_loads_and_is_replaced_on_the_next_write(saved, tmp_path):
    """The state written before it was one file: detector.json (format 1, no weights digest) beside
    detector.safetensors without metadata. It loads as it is; the next calibrate writes the one-file state."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    d, det = saved
    run = tmp_path / "det"
    shutil.copytree(d / "det", run)
    file = run / "detector.safetensors"
    with safe_open(file, "pt") as f:
        meta = json.loads(f.metadata()["json"])["detector"]
    legacy = {k: v for k, v in meta.items() if k != "weights_sha256"} | {"format": 1}
    (run / "detector.json").write_text(json.dumps(legacy))
    save_file(load_file(file), file)  # no metadata, as the old writer saved it
    back = Detector.load(run)
    assert consistent(back) and back.threshold_ == det.threshold_
    x = table(30, 7)
    np.testing.assert_array_equal(back.decision_function(x), det.decision_function(x))
    back.calibrate(np.load(d / "cal_b.npy"), fpr=0.1).save_state(run)
    assert not (run / "detector.json").exists()
    again = Detector.load(run)
    assert consistent(again) and again.flag_rate_ == 0.1
    (run / "detector.safetensors").unlink()
    (run / "detector.json").write_text(json.dumps(legacy))  # a manifest without its tensors: damaged
    with pytest.raises(aekit.RunError, match="missing"):
        Detector.load(run)


def test_a_state_is_never_applied_to_other_weights(saved, tmp_path):
    """Weights replaced after the state was written (a run trained again, a file copied over) are refused: the
    state's statistics and threshold belong to the weights they were computed with."""
    import shutil

    d, _ = saved
    run = tmp_path / "det"
    shutil.copytree(d / "det", run)
    other = Detector(n_estimators=2, random_state=1, **FAST).fit(table(300, 0)).save(tmp_path / "other")
    shutil.copyfile(other / "model.safetensors", run / "model.safetensors")
    with pytest.raises(aekit.RunError, match="computed for other weights"):
        Detector.load(run)
