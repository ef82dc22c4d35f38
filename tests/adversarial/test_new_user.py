"""Issue 21.4 and the leftovers of 21.5, tried as a new user would: a packed table keeps its column names, a
save that fails leaves nothing behind, ``model.sample`` answers numpy users in numpy, and a ``pack`` killed at
any moment never blocks its re-run."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import aekit
from aekit import datasets
from aekit.errors import ConfigError, DataError, RunError
from aekit.run import Run
from hostile import one_line

FAST = ["--epochs", "3", "--latent-dim", "2", "--hidden", "16", "--quiet"]


def write_table(path: Path, x: np.ndarray, names, labels=None) -> None:
    with open(path, "w") as f:
        f.write(",".join(list(names) + (["kind"] if labels is not None else [])) + "\n")
        for i, r in enumerate(x):
            f.write(",".join(f"{v:.9g}" for v in r) + (f",{labels[i]}" if labels is not None else "") + "\n")


def as_written(x: np.ndarray) -> np.ndarray:
    """The float32 values of ``x`` as a CSV written by ``write_table`` holds them."""
    return np.vectorize(lambda v: float(f"{v:.9g}"))(x).astype(np.float32)


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3)) * [1.0, 10.0, 1000.0] + [0.0, 5.0, 1e4]
    write_table(tmp_path / "rows.csv", x, "abc", labels=["n" if i % 4 else "m" for i in range(200)])
    return x


# --- pack keeps the column names ---------------------------------------------------------------------------------
def test_pack_keeps_the_column_names_and_loading_gives_them_back(cli, tmp_path, table):
    code, out, err = cli("pack", tmp_path / "rows.csv", "--label-column", "kind", "--out", tmp_path / "rows.npy")
    assert code == 0, err
    sidecar = datasets.columns_path(tmp_path / "rows.npy")
    assert sidecar == tmp_path / "rows.columns.json" and str(sidecar) in out
    assert json.loads(sidecar.read_text())["columns"] == ["a", "b", "c"]
    ds = datasets.load(tmp_path / "rows.npy")
    assert ds.feature_names == ["a", "b", "c"] and ds.spec.features == ("a", "b", "c")
    assert ds.class_names == ["m", "n"]
    np.testing.assert_array_equal(np.load(tmp_path / "rows.npy"), as_written(table))
    # the columns by name, from the packed file as from the CSV
    sub = datasets.load(tmp_path / "rows.npy", features=["c", "a"])
    ref = datasets.load(tmp_path / "rows.csv", label_column="kind", features=["c", "a"])
    assert sub.feature_names == ["c", "a"]
    torch.testing.assert_close(sub.x_train[:], ref.x_train[:])
    with pytest.raises(DataError, match="'z'.*not found"):
        datasets.load(tmp_path / "rows.npy", features=["a", "z"])


def test_a_run_trained_on_a_packed_table_scores_a_reordered_csv_by_name(cli, tmp_path, table):
    """Scores used to be ~6e9 with every row flagged: the columns were taken by position."""
    assert cli("pack", tmp_path / "rows.csv", "--label-column", "kind", "--out", tmp_path / "rows.npy")[0] == 0
    code, _, err = cli("train", "ae", *FAST, "--dataset", tmp_path / "rows.npy", "--contamination", "0.1",
                       "--out", tmp_path / "run")
    assert code == 0, err
    new = table[:30]
    write_table(tmp_path / "ordered.csv", new, "abc")
    write_table(tmp_path / "reordered.csv", new[:, [2, 0, 1]], "cab")
    code, ordered, err = cli("score", tmp_path / "run", tmp_path / "ordered.csv")
    assert code == 0, err
    code, reordered, err = cli("score", tmp_path / "run", tmp_path / "reordered.csv")
    assert code == 0, err
    assert reordered == ordered
    scores = np.array([float(line.split(",")[1]) for line in ordered.splitlines()[1:]])
    assert scores.max() < 1e3  # not the ~6e9 of columns taken by position
    write_table(tmp_path / "short.csv", new[:, :2], "ab")
    one_line(*cli("score", tmp_path / "run", tmp_path / "short.csv")[::2], "missing 'c'")
    # and a packed file of another column order, scored against the same run
    write_table(tmp_path / "other.csv", new[:, [2, 0, 1]], "cab")
    assert cli("pack", tmp_path / "other.csv", "--out", tmp_path / "other.npy")[0] == 0
    code, packed, err = cli("score", tmp_path / "run", tmp_path / "other.npy")
    assert code == 0, err
    packed_scores = np.array([float(line.split(",")[1]) for line in packed.splitlines()[1:]])
    np.testing.assert_allclose(packed_scores, scores, rtol=1e-4)  # float32 values of the same rows


def test_a_columns_file_that_does_not_fit_is_one_line(tmp_path, table):
    np.save(tmp_path / "t.npy", as_written(table))
    (tmp_path / "t.columns.json").write_text(json.dumps({"columns": ["a", "b"]}))
    with pytest.raises(DataError, match="2 column names .* 3 columns"):
        datasets.load(tmp_path / "t.npy")
    (tmp_path / "t.columns.json").write_text("[1, 2")
    with pytest.raises(DataError, match="not an aekit columns file"):
        datasets.load(tmp_path / "t.npy")
    np.save(tmp_path / "plain.npy", as_written(table))
    with pytest.raises(ConfigError, match="features does not apply"):
        datasets.load(tmp_path / "plain.npy", features=["a"])


# --- aekit.save -----------------------------------------------------------------------------------------------------
def test_save_takes_a_dataset_and_the_run_rebuilds_its_data(tmp_path):
    ds = datasets.load("digits", limit=200)
    model = aekit.build("ae", dataset=ds, latent_dim=2, hidden=[16])
    run = aekit.save(model, tmp_path / "s", data=ds)  # used to raise AttributeError ('Dataset' has no to_dict)
    again = Run.open(run.path)
    assert again.data == ds.spec and again.dataset().x_train.shape == ds.x_train.shape
    torch.testing.assert_close(again.model().state_dict(), model.state_dict())
    with pytest.raises(ConfigError, match="save\\(data=...\\)"):
        aekit.save(model, tmp_path / "t", data={"name_or_path": "digits"})
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_save_leaves_nothing_behind_and_a_retry_works(tmp_path, monkeypatch, existed):
    ds = datasets.load("digits", limit=200)
    model = aekit.build("ae", dataset=ds, latent_dim=2, hidden=[16])
    target = tmp_path / "s"
    if existed:
        target.mkdir()

    def full_disk(self, state):
        (self.path / "model.safetensors.partial").write_bytes(b"x")
        raise RunError("no space left on device")
    monkeypatch.setattr(Run, "save_weights", full_disk)
    with pytest.raises(RunError, match="no space"):
        aekit.save(model, target, data=ds)
    assert (target.exists() and not any(target.iterdir())) if existed else not target.exists()
    monkeypatch.undo()
    aekit.save(model, target, data=ds)
    Run.open(target).model()


# --- model.sample answers numpy users in numpy --------------------------------------------------------------------
@pytest.mark.parametrize("family", ["vae", "cvae", "aae"])
def test_sample_answers_in_the_kind_asked_for(family):
    ds = datasets.load("digits", limit=200)
    model = aekit.build(family, dataset=ds, latent_dim=2, hidden=[16])
    y = 3 if family == "cvae" else None
    t = model.sample(4, y, generator=torch.Generator().manual_seed(0))
    assert isinstance(t, torch.Tensor)  # torch callers are unchanged
    a = model.sample(4, y, generator=torch.Generator().manual_seed(0), output="numpy")
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (4, 1, 8, 8)
    np.testing.assert_array_equal(a, t.detach().numpy())
    assert isinstance(model.sample(4, y, output="tensor"), torch.Tensor)
    if family == "cvae":  # labels given as numpy: the answer is numpy, as encode's would be; a list: as before
        assert isinstance(model.sample(2, np.array([1, 2])), np.ndarray)
        assert isinstance(model.sample(2, y=np.array([1, 2])), np.ndarray)
        assert isinstance(model.sample(2, y=[1, 2]), torch.Tensor)
    with pytest.raises(ConfigError, match="output"):
        model.sample(2, y, output="np")


def test_sample_of_a_model_that_cannot_sample_is_still_one_line():
    model = aekit.build("ae", input_shape=[4], latent_dim=2)
    with pytest.raises(ConfigError, match="not generative"):
        model.sample(2, output="numpy")


# --- pack killed at any moment --------------------------------------------------------------------------------------
PACK_CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import aekit.datasets
    pack = sys.modules["aekit.datasets.pack"]  # (aekit.datasets.pack is the function)
    src, out, stage, ready = sys.argv[1:5]
    if stage == "publishing":  # hang after the first file (the labels) is published, before the data file
        real = os.link
        def link(a, b, *args, **kw):
            real(a, b, *args, **kw)
            if str(b).endswith("labels.npy"):
                Path(ready).write_text("x")
                time.sleep(600)
        pack.os.link = link
    else:  # hang while the temporaries are written
        real = pack._write
        def write(out, labels_out, shape, dtype, blocks, labels, columns=None):
            def slow():
                for b in blocks:
                    yield b
                    Path(ready).write_text("x")
                    time.sleep(600)
            return real(out, labels_out, shape, dtype, slow(), labels, columns)
        pack._write = write
    pack.pack(src, out, label_column="kind")
""")


@pytest.mark.parametrize("stage", ["writing", "publishing"])
def test_a_pack_killed_with_sigkill_never_blocks_its_rerun(cli, tmp_path, table, stage):
    """kill -9 used to leave a temporary and a labels file; the re-run refused the labels file."""
    out, ready = tmp_path / "rows.npy", tmp_path / "ready"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", PACK_CHILD, str(tmp_path / "rows.csv"), str(out), stage, str(ready)],
                         env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not ready.exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert ready.exists(), p.stderr.read() if p.poll() is not None else "timed out"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stderr.close()
    assert not out.exists()  # the data file is published last
    left = sorted(q.name for q in tmp_path.iterdir())
    if stage == "publishing":
        assert "rows.labels.npy" in left  # what the killed pack had published
    code, _, err = cli("pack", tmp_path / "rows.csv", "--label-column", "kind", "--out", out)
    assert code == 0, err
    assert sorted(q.name for q in tmp_path.iterdir()) == sorted(
        ["ready", "rows.csv", "rows.npy", "rows.labels.npy", "rows.columns.json"])  # no temporary, no journal
    ds = datasets.load(out)
    assert ds.class_names == ["m", "n"] and ds.feature_names == ["a", "b", "c"]
    np.testing.assert_array_equal(np.load(out), as_written(table))


def test_a_labels_file_of_the_users_own_is_never_removed(cli, tmp_path, table):
    """Only what a killed pack's journal says it published is removed: a user's file is refused, not replaced."""
    (tmp_path / "rows.labels.npy").write_bytes(b"mine")
    one_line(*cli("pack", tmp_path / "rows.csv", "--label-column", "kind", "--out", tmp_path / "rows.npy")[::2],
             "rows.labels.npy", "never overwrites")
    assert (tmp_path / "rows.labels.npy").read_bytes() == b"mine"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["rows.csv", "rows.labels.npy"]


def test_pack_below_a_file_is_one_line(cli, tmp_path, table):
    """`aekit pack new.csv --out FILE/sub.npy` used to be a NotADirectoryError traceback."""
    (tmp_path / "FILE").write_text("mine")
    one_line(*cli("pack", tmp_path / "rows.csv", "--out", tmp_path / "FILE" / "sub.npy")[::2], "is a file")
    with pytest.raises(ConfigError, match="is a file"):
        datasets.pack(tmp_path / "rows.csv", tmp_path / "FILE" / "deeper" / "sub.npy")
    assert (tmp_path / "FILE").read_text() == "mine"
