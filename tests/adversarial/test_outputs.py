"""Issue 21.5, data loss: every command that writes a file the user names holds one output policy
(aekit.outputs.check_output): never over the command's own input, never into a run folder (a run's files are
written only through Run), an existing file only with --overwrite; and two comparisons never share a folder.

Each attack used to replace or destroy the file; now it is one line on stderr, exit status 2, and the file is
byte for byte as it was.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aekit import compare, files
from aekit.errors import ConfigError, RunError
from aekit.outputs import check_output
from aekit.run import CONFIG, FIGURES, REPORT, WEIGHTS, Run
from hostile import one_line

FAST = ["--epochs", "1", "--latent-dim", "4", "--hidden", "16", "--quiet"]


def digest(folder: Path) -> dict:
    """Every file under ``folder`` (relative path -> sha256): a run, as it was."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_table(path: Path, n: int = 120, order=("a", "b", "c")) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 3)) * [1.0, 10.0, 100.0]
    cols = {"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}
    with open(path, "w") as f:
        f.write(",".join(order) + "\n")
        for i in range(n):
            f.write(",".join(f"{cols[k][i]:.6g}" for k in order) + "\n")
    return x


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A vae on digits (every image command applies) and an ae on a table with a threshold (score applies)."""
    from aekit.cli import main

    d = tmp_path_factory.mktemp("runs")
    assert main(["train", "vae", *FAST, "--limit", "300", "--out", str(d / "vae")]) == 0
    write_table(d / "rows.csv")
    assert main(["train", "ae", *FAST, "--dataset", str(d / "rows.csv"), "--contamination", "0.1",
                 "--out", str(d / "table")]) == 0
    return d


@pytest.fixture
def vae(runs, tmp_path):
    shutil.copytree(runs / "vae", tmp_path / "vae")
    return tmp_path / "vae"


@pytest.fixture
def table(runs, tmp_path):
    shutil.copytree(runs / "table", tmp_path / "table")
    shutil.copy(runs / "rows.csv", tmp_path / "rows.csv")
    # the run names its training data by absolute path: point it at this copy
    cfg = files.read_json(tmp_path / "table" / CONFIG)
    cfg["data"]["name_or_path"] = str(tmp_path / "rows.csv")
    files.write_json(tmp_path / "table" / CONFIG, cfg)
    return tmp_path / "table"


# --- the command's own input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_score_never_replaces_the_data_it_reads(cli, table, tmp_path, overwrite):
    data = tmp_path / "new.csv"
    write_table(data, n=20)
    before = data.read_bytes()
    one_line(*cli("score", table, data, "--out", data, *overwrite)[::2], "own input")
    assert data.read_bytes() == before


def test_score_never_replaces_the_runs_training_data(cli, table, tmp_path):
    """The run's own data file is an input of every command that opens the run."""
    data = tmp_path / "new.csv"
    write_table(data, n=20)
    train = tmp_path / "rows.csv"
    before = train.read_bytes()
    one_line(*cli("score", table, data, "--out", train, "--overwrite")[::2], "own input")
    assert train.read_bytes() == before


def test_encode_never_replaces_the_dataset_it_encodes(cli, vae, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((30, 1, 8, 8)).astype(np.float32))
    before = x.read_bytes()
    for extra in ([], ["--overwrite"]):
        one_line(*cli("encode", vae, "--dataset", x, "--out", x, *extra)[::2], "own input")
    assert x.read_bytes() == before


def test_an_output_inside_an_input_folder_is_refused(cli, table, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "keep.txt").write_text("mine")
    one_line(*cli("encode", table, "--dataset", images, "--out", images / "z.npy")[::2], "own input")
    assert sorted(p.name for p in images.iterdir()) == ["keep.txt"]


# --- a run's files ---------------------------------------------------------------------------------------------
RUN_TARGETS = [WEIGHTS, CONFIG, "checkpoint.safetensors", "metrics.jsonl", "new.csv", "figures/x.png"]


@pytest.mark.parametrize("target", RUN_TARGETS)
def test_no_command_writes_into_a_run_folder(cli, vae, table, tmp_path, target):
    """`score`/`report --out RUN/model.safetensors` used to destroy the run; not even --overwrite allows it."""
    data = tmp_path / "new.csv"
    write_table(data, n=20)
    runs = {"vae": digest(vae), "table": digest(table)}
    suffix = Path(target).suffix
    png = target if suffix == ".png" else "x.png"
    attacks = [
        ("table", ["score", table, data, "--out", table / target]),
        ("vae", ["report", vae, "--out", vae / target]),
        ("vae", ["encode", vae, "--out", vae / target]),
        ("vae", ["reconstruct", vae, "--out", vae / png]),
        ("vae", ["sample", vae, "-n", "4", "--out", vae / png]),
        ("table", ["reconstruct", table, "--out", table / target]),
    ]
    for _, argv in attacks:
        for extra in ([], ["--overwrite"]):
            code, _, err = cli(*argv, *extra)
            one_line(code, err, "inside the aekit run")
    assert digest(vae) == runs["vae"] and digest(table) == runs["table"]


def test_another_runs_folder_is_refused_too(cli, vae, table):
    before = digest(table)
    one_line(*cli("plot", vae, "--out", table)[::2], "is the aekit run")
    one_line(*cli("plot", vae, "--out", table / FIGURES)[::2], "inside the aekit run")
    assert digest(table) == before


def test_a_link_to_a_run_file_is_refused(cli, vae, tmp_path):
    link = tmp_path / "weights.safetensors"
    link.symlink_to(vae / WEIGHTS)
    before = digest(vae)
    one_line(*cli("encode", vae, "--out", link, "--overwrite")[::2], "inside the aekit run")
    assert digest(vae) == before and link.is_symlink()


def test_train_compare_and_save_never_create_a_run_inside_a_run(cli, vae, digits):
    import aekit

    before = digest(vae)
    one_line(*cli("train", "ae", *FAST, "--limit", "300", "--out", vae / "inner")[::2], "inside the aekit run")
    one_line(*cli("train", "ae", *FAST, "--limit", "300", "--out", vae)[::2], "is the aekit run")  # the run itself
    one_line(*cli("compare", "--models", "ae", "--epochs", "1", "--out", vae / "cmp")[::2], "inside the aekit run")
    with pytest.raises(RunError, match="inside the aekit run"):
        aekit.save(aekit.build("ae", dataset=digits, latent_dim=2), vae / "inner")
    assert digest(vae) == before and not (vae / "inner").exists()


def test_the_runs_own_report_and_figures_are_written_through_run(cli, vae, monkeypatch):
    """`report` and `plot` write RUN/report.html and RUN/figures by default (or when named so), through Run."""
    calls = []
    for name in ("write_report", "write_figure"):
        original = getattr(Run, name)

        def spy(self, *a, _original=original, _name=name):
            calls.append(_name)
            return _original(self, *a)
        monkeypatch.setattr(Run, name, spy)
    for argv in (["report", vae], ["report", vae, "--out", vae / REPORT], ["plot", vae],
                 ["plot", vae, "--out", vae / FIGURES]):
        code, _, err = cli(*argv)
        assert code == 0, err
    assert calls.count("write_report") == 2 and calls.count("write_figure") >= 2
    assert (vae / REPORT).is_file() and any((vae / FIGURES).glob("*.png"))
    Run.open(vae).model()  # the run is whole


# --- an existing file: only with --overwrite -------------------------------------------------------------------
def test_an_existing_file_is_replaced_only_with_overwrite(cli, vae, table, tmp_path):
    data = tmp_path / "new.csv"
    write_table(data, n=20)
    cases = [
        (["sample", vae, "-n", "4"], "s.png"), (["reconstruct", vae], "r.png"), (["encode", vae], "z.npy"),
        (["report", vae], "r.html"), (["score", table, data], "scores.csv"), (["reconstruct", table], "r.csv"),
    ]
    for argv, name in cases:
        target = tmp_path / "mine" / name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(b"a user's file")
        one_line(*cli(*argv, "--out", target)[::2], "exists", "--overwrite")
        assert target.read_bytes() == b"a user's file"
        code, _, err = cli(*argv, "--out", target, "--overwrite")
        assert code == 0, err
        assert target.read_bytes() != b"a user's file"


def test_plot_into_a_user_folder_checks_every_figure_before_writing_any(cli, vae, tmp_path):
    figs = tmp_path / "figs"
    assert cli("plot", vae, "--out", figs)[0] == 0
    names = sorted(p.name for p in figs.iterdir())
    (figs / names[-1]).write_bytes(b"mine")
    for p in figs.iterdir():
        if p.name != names[-1]:
            p.unlink()
    one_line(*cli("plot", vae, "--out", figs)[::2], "exists", "--overwrite")
    assert sorted(p.name for p in figs.iterdir()) == [names[-1]]  # nothing was written
    assert cli("plot", vae, "--out", figs, "--overwrite")[0] == 0
    assert sorted(p.name for p in figs.iterdir()) == names


def test_pack_never_overwrites_and_has_no_overwrite_option(cli, tmp_path):
    src = tmp_path / "rows.csv"
    write_table(src, n=20)
    out = tmp_path / "rows.npy"
    out.write_bytes(b"mine")
    one_line(*cli("pack", src, "--out", out)[::2], "never overwrites")
    assert out.read_bytes() == b"mine"


def test_the_policy_as_a_function(tmp_path, vae):
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file, so nothing can be created below it"):
        check_output(f / "sub.csv")
    with pytest.raises(ConfigError, match="is a folder"):
        check_output(tmp_path)
    with pytest.raises(ConfigError, match="own input"):
        check_output(tmp_path / "." / "f.txt", inputs=[str(f)], overwrite=True)
    os.link(f, tmp_path / "hard.txt")
    with pytest.raises(ConfigError, match="own input"):  # a hard link of the input is the input
        check_output(tmp_path / "hard.txt", inputs=[f], overwrite=True)
    assert check_output(f, overwrite=True) == f
    assert check_output(tmp_path / "new" / "g.csv") == tmp_path / "new" / "g.csv"
    with pytest.raises(ConfigError, match="inside the aekit run"):
        check_output(vae / "deep" / "er" / "x.csv")


# --- compare takes a lock on its folder --------------------------------------------------------------------------
def test_a_second_comparison_into_a_busy_folder_is_one_line(cli, tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    fd, _ = files.lock_file(out / compare.LOCK)
    try:
        code, _, err = cli("compare", "--models", "ae", "--epochs", "1", "--limit", "300", "--out", out)
        one_line(code, err, "another comparison", f"process {os.getpid()}")
        assert sorted(p.name for p in out.iterdir()) == [compare.LOCK]
    finally:
        os.close(fd)
    code, _, err = cli("compare", "--models", "ae", "--epochs", "1", "--limit", "300", "--out", out)
    assert code == 0, err  # the lock file of a comparison that is gone does not make the folder "not empty"


def test_two_concurrent_comparisons_one_wins_and_none_reports_a_failed_family(tmp_path):
    """Both used to run and each reported a family as failed (the other had removed or taken its run)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "aekit.cli", "compare", "--models", "ae,vae", "--epochs", "2", "--limit", "300",
            "--out", str(tmp_path / "cmp")]
    procs = [subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(c for c, _, _ in outs)
    assert codes == [0, 2], outs
    loser = next(err for c, _, err in outs if c == 2)
    assert len(loser.strip().splitlines()) == 1 and "Traceback" not in loser, loser
    assert "another comparison" in loser or "not empty" in loser, loser
    result = files.read_json(tmp_path / "cmp" / "comparison.json")
    assert [r["status"] for r in result["results"]] == ["ok", "ok"]
    time.sleep(0)  # (both processes are gone: nothing holds the lock)
    fd, _ = files.lock_file(tmp_path / "cmp" / compare.LOCK)
    assert fd is not None
    os.close(fd)
