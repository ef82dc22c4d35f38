"""Run directories under attack and misuse: concurrent writers, user folders, hostile and damaged files.

Every command that opens a run must answer a damaged or hostile run directory with one line on stderr and
exit status 2, quickly (no unbounded read, no hang), and must never delete or overwrite what is not its own.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import aekit
from aekit import files, trainer
from aekit.config import TrainConfig
from aekit.errors import RunError, TrainingDiverged
from aekit.run import CHECKPOINT, CONFIG, LOCK, MARKER, METRICS, SUMMARY, WEIGHTS, Run
from hostile import one_line, time_limit

FAST = ["--epochs", "1", "--latent-dim", "4", "--hidden", "16", "--quiet", "--limit", "300"]
# every command that opens a run, with the arguments it needs
OPENERS = [
    ["eval"], ["eval", "--json"], ["report"], ["plot"], ["encode", "--out", "{tmp}/z.npy"],
    ["reconstruct", "--out", "{tmp}/r.png"], ["sample", "--out", "{tmp}/s.png", "-n", "4"],
    ["train", "--resume"],
]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A small finished vae run (generative, so every opener applies), copied by each test that damages it."""
    from aekit.cli import main

    d = tmp_path_factory.mktemp("good") / "vae"
    assert main(["train", "vae", *FAST, "--epochs", "2", "--out", str(d)]) == 0
    return d


@pytest.fixture
def run(good_run, tmp_path):
    shutil.copytree(good_run, tmp_path / "run")
    return tmp_path / "run"


def every_opener(cli, run, tmp, *fragments, seconds=20, resume=True):
    """Each command that opens ``run`` fails with one line naming ``fragments``, within ``seconds``
    (``resume=False``: not `train --resume`, which reads the checkpoint rather than the best weights)."""
    for cmd in OPENERS if resume else OPENERS[:-1]:
        argv = [a.format(tmp=tmp) for a in cmd] + [run]
        if cmd[0] == "train":
            argv = ["train", "--resume", run, "--epochs", "3", "--quiet"]
        with time_limit(seconds):
            code, _, err = cli(*argv)
        one_line(code, err, *fragments)


# --- concurrent writers -----------------------------------------------------------------------------
def _train(cwd, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "aekit.cli", "train", "ae", *FAST, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_trainings_into_one_folder_one_wins_and_the_run_is_whole(tmp_path):
    """Both used to exit 0 and print "run saved", leaving one run's config with the other's weights."""
    procs = [_train(tmp_path, "--latent-dim", str(k), "--out", "same") for k in (8, 32)]
    outs = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(c for c, _, _ in outs)
    assert codes == [0, 2], outs
    loser = next(err for c, _, err in outs if c == 2)
    assert len(loser.strip().splitlines()) == 1 and "same" in loser, loser
    run = Run.open(tmp_path / "same")
    model = run.model()  # weights and config are the winner's both
    assert model.latent_dim == run.model_config.latent_dim in (8, 32) and len(run.history) == 1


def test_two_trainings_with_the_default_name_take_two_folders(tmp_path):
    procs = [_train(tmp_path) for _ in range(2)]
    outs = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert [c for c, _, _ in outs] == [0, 0], outs
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert names == ["ae-digits", "ae-digits-2"]
    for n in names:
        assert Run.open(tmp_path / "runs" / n).model() is not None


def test_a_run_being_written_refuses_a_second_writer_and_names_its_pid(cli, run, tmp_path):
    (tmp_path / "D").mkdir()
    run = run.rename(tmp_path / "D" / "vae")  # as a comparison's run
    holder = Run.open(run)
    holder.claim()
    try:
        code, _, err = cli("train", "--resume", run, "--epochs", "3", "--quiet")
        one_line(code, err, f"in use by process {os.getpid()}")
        code, _, err = cli("compare", "--models", "vae", "--epochs", "1", "--out", run.parent, "--overwrite")
        assert code == 2 and "in use by process" in err and (run / WEIGHTS).exists()
    finally:
        holder.release()
    code, _, err = cli("train", "--resume", run, "--epochs", "3", "--quiet")
    assert code == 0, err


def test_readers_do_not_need_the_lock(cli, run):
    holder = Run.open(run)
    holder.claim()
    try:
        code, out, err = cli("eval", run, "--json")
        assert code == 0, err
    finally:
        holder.release()


# --- never delete or overwrite a user's files ----------------------------------------------------------
def test_compare_overwrite_leaves_a_users_folder_alone(cli, tmp_path):
    """A folder with a config.json used to be taken for a run and deleted with everything in it."""
    d = tmp_path / "D"
    (d / "ae").mkdir(parents=True)
    (d / "ae" / "config.json").write_text("{}")
    (d / "ae" / "thesis.tex").write_text("three years of work")
    code, _, err = cli("compare", "--models", "ae", "--epochs", "1", "--out", d, "--overwrite")
    one_line(code, err, "thesis.tex", "left alone")
    assert (d / "ae" / "thesis.tex").read_text() == "three years of work"


def test_compare_overwrite_replaces_its_own_runs(cli, tmp_path):
    d = tmp_path / "D"
    args = ["compare", "--models", "ae", "--epochs", "1", "--out", d, "--limit", "300"]
    assert cli(*args)[0] == 0
    first = (d / "ae" / MARKER).read_text()
    time.sleep(0.01)
    assert cli(*args, "--overwrite")[0] == 0
    assert (d / "ae" / MARKER).read_text() != first and Run.open(d / "ae").model() is not None


def test_remove_refuses_what_is_not_provably_a_run(tmp_path, run):
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="notes.txt"):
        Run.remove(run)
    assert (run / "notes.txt").exists()
    (run / "notes.txt").unlink()
    (run / "figures").mkdir()
    (run / "figures" / "draft.pdf").write_text("mine")
    with pytest.raises(RunError, match="figures"):
        Run.remove(run)
    (run / "figures" / "draft.pdf").unlink()
    (run / "figures" / "latent.png").write_bytes(b"png")
    Run.remove(run)
    assert not run.exists()
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RunError, match="not an aekit run"):
        Run.remove(plain)


def test_the_marker_is_written_first_and_exclusively(tmp_path, digits):
    model = aekit.build("ae", dataset=digits, latent_dim=4, hidden=[16], seed=0)
    out = tmp_path / "r"
    out.mkdir()
    (out / MARKER).write_text("{}")  # another process got there first
    with pytest.raises(RunError, match="choose another"):
        Run.create(out, "ae", model.config, TrainConfig(epochs=1), digits.spec)
    assert [p.name for p in out.iterdir()] == [MARKER]


# --- a killed writer --------------------------------------------------------------------------------
def test_temporaries_of_a_killed_writer_are_cleaned_at_the_next_claim(cli, run):
    junk = run / f".{CHECKPOINT}.k1ll3d.tmp"
    junk.write_bytes(b"\0" * 1000)
    user = run / ".notes.tmp"
    user.write_text("not aekit's")
    code, _, err = cli("train", "--resume", run, "--epochs", "3", "--quiet")
    assert code == 0, err
    assert not junk.exists() and user.exists()


def test_killed_in_the_first_epoch_resume_starts_over(cli, tmp_path):
    """--resume used to say "nothing to resume" and a new train "the folder exists": a dead end."""
    args = ["train", "dae", *FAST, "--seed", "3"]
    assert cli(*args, "--out", tmp_path / "ref")[0] == 0
    ref = Run.open(tmp_path / "ref")
    Run.create(tmp_path / "killed", "dae", ref.model_config, ref.train, ref.data).release()  # no epoch ended
    code, _, err = cli("train", "--resume", tmp_path / "killed", "--quiet")
    assert code == 0, err
    a, b = ref.model().state_dict(), Run.open(tmp_path / "killed").model().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_kill_9_at_random_moments_never_leaves_an_unreadable_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for trial, delay in enumerate([0.3, 0.8, 1.3, 1.9, 2.6]):
        out = tmp_path / f"r{trial}"
        p = subprocess.Popen([sys.executable, "-m", "aekit.cli", "train", "vae", "--epochs", "30", "--quiet",
                              "--out", str(out)], env=env, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        if not (out / CONFIG).exists():
            continue
        r = subprocess.run([sys.executable, "-m", "aekit.cli", "train", "--resume", str(out), "--epochs", "2",
                            "--quiet"], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert Run.open(out).model() is not None and not list(out.glob(".*.tmp"))


# --- hostile and damaged files ----------------------------------------------------------------------
def test_dev_zero_as_weights_is_refused_at_once(cli, run, tmp_path):
    (run / WEIGHTS).unlink()
    (run / WEIGHTS).symlink_to("/dev/zero")
    for cmd in (["eval"], ["report"], ["encode", "--out", tmp_path / "z.npy"]):
        with time_limit(20):
            code, _, err = cli(*cmd, run)
        one_line(code, err, WEIGHTS, "a device")


@pytest.mark.parametrize("name", [WEIGHTS, CHECKPOINT, CONFIG, METRICS, SUMMARY])
def test_a_fifo_in_place_of_a_run_file_is_refused_without_hanging(cli, run, name):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    (run / name).unlink()
    os.mkfifo(run / name)
    cmd = ["train", "--resume", run, "--epochs", "3", "--quiet"] if name == CHECKPOINT else ["report", run]
    with time_limit(20):
        code, _, err = cli(*cmd)
    one_line(code, err, name)


@pytest.mark.parametrize("name", [WEIGHTS, CHECKPOINT, METRICS, SUMMARY])
def test_a_folder_in_place_of_a_run_file(cli, run, name):
    (run / name).unlink()
    (run / name).mkdir()
    cmd = ["train", "--resume", run, "--epochs", "3", "--quiet"] if name == CHECKPOINT else ["report", run]
    code, _, err = cli(*cmd)
    one_line(code, err, name, "a folder")


def test_a_folder_named_config_json(cli, run, tmp_path):
    (run / CONFIG).unlink()
    (run / CONFIG).mkdir()
    every_opener(cli, run, tmp_path, "config.json")


def test_weights_whose_header_lies_about_their_size(cli, run, tmp_path):
    data = (run / WEIGHTS).read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"][1] += 10**12  # a tensor that would be a terabyte
    text = json.dumps(header).encode()
    (run / WEIGHTS).write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n :])
    every_opener(cli, run, tmp_path, WEIGHTS, resume=False)
    (run / WEIGHTS).write_bytes((2**62).to_bytes(8, "little") + b"{}")  # a header length of 4 EiB
    code, _, err = cli("eval", run)
    one_line(code, err, WEIGHTS)


def test_a_huge_weights_file_is_not_read(cli, run):
    with open(run / WEIGHTS, "r+b") as f:
        f.truncate(10**12)  # sparse: a terabyte on paper, nothing on disk
    with time_limit(20):
        code, _, err = cli("eval", run)
    one_line(code, err, WEIGHTS, "bytes")


@pytest.mark.parametrize("meta", [None, {"epoch": "three"}, {"epoch": 2, "history": 5}, "garbage"])
def test_damaged_checkpoint_metadata_on_resume(cli, run, meta):
    tensors, _ = files.load_tensors(run / CHECKPOINT, 2**30)
    if meta == "garbage":
        (run / CHECKPOINT).write_bytes(b"\x08" + b"\0" * 7 + b"{garbage" + b"\0" * 100)
    else:
        files.save_tensors(run / CHECKPOINT, tensors, meta)
    code, _, err = cli("train", "--resume", run, "--epochs", "3", "--quiet")
    one_line(code, err, CHECKPOINT)


@pytest.mark.parametrize("text,fragment", [
    ("not json\n", "line 1 is not JSON"),
    ('[1, 2]\n', "line 1 is not an epoch record"),
    ('{"epoch": "one", "train": {}, "val": {}}\n', "not an epoch record"),
    ('{"epoch": 1, "train": {"loss": "high"}, "val": {}}\n', "not an epoch record"),
    ("\xff\xfe", "not UTF-8"),
])
def test_damaged_metrics_jsonl(cli, run, tmp_path, text, fragment):
    (run / METRICS).write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    for cmd in (["report", run], ["plot", run, "--out", tmp_path / "f"]):
        code, _, err = cli(*cmd)
        one_line(code, err, METRICS, fragment)


@pytest.mark.parametrize("text", ["[1, 2]", "\"done\"", "{"])
def test_damaged_summary_json(cli, run, text):
    (run / SUMMARY).write_text(text)
    code, _, err = cli("report", run)
    one_line(code, err, SUMMARY)


@pytest.mark.parametrize("config", [
    {"model": "vae", "config": {"latent_dim": 10**9}, "train": {}, "data": None},
    {"model": "vae", "config": {"hidden": [10**6, 10**6]}, "train": {}, "data": None},
])
def test_a_config_asking_for_an_enormous_model_is_refused(cli, run, tmp_path, config):
    config["config"]["input_shape"] = [1, 8, 8]
    (run / CONFIG).write_text(json.dumps(config))
    with time_limit(30):
        code, _, err = cli("eval", run)
    one_line(code, err, "config.json")


def test_a_data_seed_beyond_64_bits_is_one_line(cli, run, tmp_path):
    cfg = json.loads((run / CONFIG).read_text())
    cfg["data"]["seed"] = 2**70
    (run / CONFIG).write_text(json.dumps(cfg))
    code, _, err = cli("eval", run)
    one_line(code, err, "seed")


# --- where a run is written -------------------------------------------------------------------------
def test_out_that_is_a_file_or_below_a_file(cli, tmp_path):
    (tmp_path / "f").write_text("mine")
    one_line(*cli("train", "ae", *FAST, "--out", tmp_path / "f")[::2], "f")
    one_line(*cli("train", "ae", *FAST, "--out", tmp_path / "f" / "run")[::2], "f")
    assert (tmp_path / "f").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the full-disk test covers "
                    "write errors")
def test_out_in_a_read_only_folder(cli, tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        code, _, err = cli("train", "ae", *FAST, "--out", tmp_path / "ro" / "run")
        one_line(code, err, "ro")
    finally:
        os.chmod(tmp_path / "ro", 0o700)


def test_a_full_disk_is_one_line_and_keeps_the_old_file(cli, run, monkeypatch):
    """ENOSPC while a checkpoint is written: the error names the file; the previous checkpoint is intact."""
    before = (run / CHECKPOINT).read_bytes()
    real = os.fsync

    def full(fd):
        real(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code, _, err = cli("train", "--resume", run, "--epochs", "3", "--quiet")
    one_line(code, err, "No space left on device")
    monkeypatch.undo()
    assert (run / CHECKPOINT).read_bytes() == before and not list(run.glob(".*.tmp"))


def test_a_real_full_disk(cli, tmp_path):
    """On a 1 MiB tmpfs (root only; elsewhere the simulated ENOSPC above stands in)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]})")
    try:
        code, _, err = cli("train", "ae", "--epochs", "1", "--hidden", "512", "--quiet", "--out", mnt / "run")
        one_line(code, err, "No space left on device")
    finally:
        subprocess.run(["umount", str(mnt)])


def test_run_files_follow_the_umask(tmp_path, digits):
    old = os.umask(0o027)
    try:
        model = aekit.build("ae", dataset=digits, latent_dim=4, hidden=[16], seed=0)
        trainer.fit(model, digits, TrainConfig(epochs=1), out_dir=tmp_path / "r", quiet=True)
    finally:
        os.umask(old)
    for name in (CONFIG, WEIGHTS, CHECKPOINT, METRICS, SUMMARY):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o640, name


# --- options that cannot apply ----------------------------------------------------------------------
@pytest.mark.parametrize("extra,fragment", [
    (["--dataset", "digits"], "--dataset"), (["--limit", "5"], "--limit"), (["--val-fraction", "0.2"], "--val"),
    (["--out", "elsewhere"], "--out"), (["ae"], "model name"), (["--split-seed", "4"], "--split-seed"),
])
def test_resume_refuses_options_that_cannot_apply(cli, run, extra, fragment):
    code, _, err = cli("train", "--resume", run, *extra, "--quiet")
    one_line(code, err, fragment)


@pytest.mark.parametrize("cmd", [["reconstruct", "--out", "r.png"], ["plot"], ["sample", "--out", "s.png"]])
@pytest.mark.parametrize("n", ["0", "-5"])
def test_counts_must_be_positive(cli, run, cmd, n):
    code, _, err = cli(cmd[0], run, *cmd[1:], "-n", n)
    one_line(code, err, "-n")


@pytest.mark.parametrize("family", ["ae", "aae", "cae"])
def test_divergence_to_finite_garbage_is_caught_for_every_family(digits, tmp_path, family):
    """With lr 1e3 these used to finish with losses of 1e13 and status "completed"."""
    model = aekit.build(family, dataset=digits, latent_dim=4, hidden=[16], seed=0)
    lr = 1e6 if family == "cae" else 1e3
    with pytest.raises(TrainingDiverged, match="exploded"):
        trainer.fit(model, digits, TrainConfig(epochs=3, lr=lr), out_dir=tmp_path / "r", quiet=True)
    run = Run.open(tmp_path / "r")
    assert run.summary["stopped"] == "diverged"
    assert all(torch.isfinite(p).all() for p in run.model().state_dict().values())


def test_no_validation_split_trains_on_the_training_loss(cli, tmp_path):
    """--val-fraction 0 used to end in a KeyError traceback."""
    code, out, err = cli("train", "ae", *FAST, "--val-fraction", "0", "--out", tmp_path / "r")
    assert code == 0, err
    rec = Run.open(tmp_path / "r").history[0]
    assert rec["val"] == rec["train"]


def test_lock_and_marker_are_json(run):
    assert isinstance(json.loads((run / MARKER).read_text()), dict)
    holder = Run.open(run)
    holder.claim()
    assert json.loads((run / LOCK).read_text()) == os.getpid()
    holder.release()
