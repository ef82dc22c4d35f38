"""`aekit train --resume` on runs it must not continue, checkpoints that do not fit, and a start on a full disk.

- a run that already ended (stopped early, diverged, or trained all its epochs) is not trained on: one line
  says so, the exit status is 0 (it is finished, not an error), and no file of the run changes;
- a checkpoint with tensors of other shapes (`size mismatch`) or without its RNG states (`KeyError`) is one
  line (exit 2), not a traceback;
- a full disk when `aekit train` starts leaves nothing behind (no 0-byte marker) that would block the retry.
"""

import errno
import os

import pytest
import torch

from aekit import files, registry, trainer
from aekit.config import TrainConfig
from aekit.errors import TrainingDiverged
from aekit.models.ae import AE
from aekit.run import CHECKPOINT, CONFIG, MARKER, METRICS, SUMMARY, WEIGHTS
from hostile import one_line

FAST = ["--latent-dim", "4", "--hidden", "16", "--quiet", "--limit", "300"]


def snapshot(run):
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".aekit-lock.json"}


def small(ds):
    return registry.build_for("ae", ds, latent_dim=4, hidden=[16], seed=0)


def test_resume_of_a_run_that_stopped_early_does_not_train_on(cli, digits, tmp_path, monkeypatch):
    """18 epochs used to become 27 and the model was replaced."""
    vals = iter([50.0, 5.0, 4.0, 4.5, 4.6, 4.7])  # the loss before training, then epochs 1..5
    real = trainer.evaluate_loss

    def fake(*a, **k):
        out = real(*a, **k)
        out["loss"] = next(vals)
        return out

    monkeypatch.setattr(trainer, "evaluate_loss", fake)
    run = tmp_path / "r"
    res = trainer.fit(small(digits), digits, TrainConfig(epochs=20, patience=3), out_dir=run, quiet=True)
    assert res.stopped == "early_stopping" and len(res.history) == 5
    monkeypatch.undo()
    before = snapshot(run)
    for extra in ([], ["--epochs", "40"]):
        code, out, err = cli("train", "--resume", run, *extra)
        assert code == 0 and err == "", err
        assert len(out.strip().splitlines()) == 1 and "stopped early after epoch 5 (best epoch 2)" in out, out
        assert snapshot(run) == before  # nothing trained, nothing written (not even the new budget)
    again = trainer.fit(small(digits), digits, TrainConfig(epochs=20, patience=3), out_dir=run, resume=True,
                        quiet=True)
    assert again.already_ended and again.stopped == "early_stopping" and again.best_epoch == 2


def test_resume_of_a_finished_run_says_so_and_a_larger_budget_trains_on(cli, tmp_path):
    run = tmp_path / "r"
    assert cli("train", "ae", *FAST, "--epochs", "2", "--out", run)[0] == 0
    before = snapshot(run)
    code, out, err = cli("train", "--resume", run, "--quiet")
    assert code == 0 and len(out.strip().splitlines()) == 1, (out, err)
    assert "has trained 2 epochs, all that --epochs 2 asks for" in out
    assert snapshot(run) == before
    code, out, err = cli("train", "--resume", run, "--epochs", "3", "--quiet")
    assert code == 0 and "3 epochs (completed)" in out, err
    assert len((run / METRICS).read_text().splitlines()) == 3


class Exploding(AE):
    name = "exploding"

    def forward(self, x, y=None):
        out = super().forward(x, y)
        if self.training:
            self.steps = getattr(self, "steps", 0) + 1
            if self.steps > 12:
                out.loss = out.loss * float("nan")
        return out


def test_resume_of_a_run_that_diverged_does_not_train_again(digits, tmp_path):
    config = registry.get("ae").Config.from_dict(registry.data_options("ae", digits) | {"latent_dim": 4})
    m = Exploding(config)
    with pytest.raises(TrainingDiverged):
        trainer.fit(m, digits, TrainConfig(epochs=5, checkpoint_every_epochs=1), out_dir=tmp_path / "r",
                    quiet=True, model_name="ae")
    before = snapshot(tmp_path / "r")
    res = trainer.fit(AE(config), digits, TrainConfig(epochs=5, checkpoint_every_epochs=1), out_dir=tmp_path / "r",
                      resume=True, quiet=True)
    assert res.stopped == "diverged" and "diverged" in res.already_ended and "--lr" in res.already_ended
    assert snapshot(tmp_path / "r") == before


@pytest.fixture
def stopped_run(cli, tmp_path):
    """A finished run of 2 epochs (its checkpoint written at the end): resumable with a larger --epochs."""
    run = tmp_path / "r"
    assert cli("train", "ae", *FAST, "--epochs", "2", "--out", run)[0] == 0
    return run


def test_a_checkpoint_of_other_shapes_is_one_line(cli, stopped_run):
    tensors, meta = files.load_tensors(stopped_run / CHECKPOINT, 2**30)
    key = next(k for k in tensors if k.startswith("model/") and k.endswith("weight"))
    tensors[key] = torch.zeros(3, 3)
    files.save_tensors(stopped_run / CHECKPOINT, tensors, meta)
    code, _, err = cli("train", "--resume", stopped_run, "--epochs", "3", "--quiet")
    one_line(code, err, CHECKPOINT, "size mismatch", "can be evaluated but not resumed")
    tensors, meta = files.load_tensors(stopped_run / CHECKPOINT, 2**30)  # the best weights likewise
    tensors = {k: v for k, v in tensors.items() if not k.startswith("best/")}
    files.save_tensors(stopped_run / CHECKPOINT, tensors, meta)
    code, _, err = cli("train", "--resume", stopped_run, "--epochs", "3", "--quiet")
    one_line(code, err, CHECKPOINT)


@pytest.mark.parametrize("drop", ["rng/torch", "rng/gen"])
def test_a_checkpoint_without_its_rng_states_is_one_line(cli, stopped_run, drop):
    tensors, meta = files.load_tensors(stopped_run / CHECKPOINT, 2**30)
    del tensors[drop]
    files.save_tensors(stopped_run / CHECKPOINT, tensors, meta)
    code, _, err = cli("train", "--resume", stopped_run, "--epochs", "3", "--quiet")
    one_line(code, err, CHECKPOINT, "KeyError", drop.split("/")[1])


def test_a_full_disk_at_the_start_leaves_nothing_that_blocks_the_retry(cli, tmp_path, monkeypatch):
    """The marker used to stay behind, empty, and the retry said the folder was taken."""
    out = tmp_path / "r"
    real_write, real_fsync = os.write, os.fsync

    def full(*a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    for name, fake in (("write", full), ("fsync", full)):  # the marker's write; config.json's fsync
        monkeypatch.setattr(os, name, fake)
        try:
            code, _, err = cli("train", "ae", *FAST, "--epochs", "1", "--out", out)
        finally:
            monkeypatch.setattr(os, "write", real_write)
            monkeypatch.setattr(os, "fsync", real_fsync)
        one_line(code, err, "No space left on device")
        assert not out.exists(), list(out.iterdir())  # the folder this command made is gone
    (tmp_path / "mine").mkdir()  # a folder that was there before stays, empty
    monkeypatch.setattr(os, "fsync", full)
    code, _, err = cli("train", "ae", *FAST, "--epochs", "1", "--out", tmp_path / "mine")
    monkeypatch.undo()
    one_line(code, err, "No space left on device")
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())
    code, _, err = cli("train", "ae", *FAST, "--epochs", "1", "--out", out)  # the retry
    assert code == 0, err
    assert {MARKER, CONFIG, WEIGHTS, CHECKPOINT, METRICS, SUMMARY} <= {p.name for p in out.iterdir()}


def test_a_torn_last_line_of_metrics_is_left_out_and_cut_on_resume(cli, stopped_run):
    """An append cut short (a crash, or a reader racing the writer) is not a damaged run."""
    whole = (stopped_run / METRICS).read_text()
    (stopped_run / METRICS).write_text(whole + '{"epoch": 3, "train": {"lo')
    code, out, err = cli("report", stopped_run, "--out", stopped_run.parent / "r.html")
    assert code == 0, err
    code, _, err = cli("train", "--resume", stopped_run, "--epochs", "3", "--quiet")
    assert code == 0, err
    lines = (stopped_run / METRICS).read_text().splitlines()
    assert lines[:2] == whole.splitlines() and len(lines) == 3
