import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

import aekit
import aekit.cli
from aekit import files, registry, trainer
from aekit import run as run_files
from aekit.config import TrainConfig
from aekit.errors import ConfigError, RunError, TrainingDiverged
from aekit.models.ae import AE
from aekit.run import Run
from hostile import wait_for_epochs


def small(ds, name="ae", **kw):
    return registry.build_for(name, ds, latent_dim=4, hidden=[16], seed=0, **kw)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_same_seed_same_run_and_global_rng_untouched(digits):
    state = torch.get_rng_state()
    r1 = trainer.fit(small(digits, "dae"), digits, TrainConfig(epochs=2, seed=3), quiet=True)
    assert torch.equal(torch.get_rng_state(), state)
    r2 = trainer.fit(small(digits, "dae"), digits, TrainConfig(epochs=2, seed=3), quiet=True)
    assert_same(weights(r1.model), weights(r2.model))
    r3 = trainer.fit(small(digits, "dae"), digits, TrainConfig(epochs=2, seed=4), quiet=True)
    assert not torch.equal(r3.model.encoder.mlp.layers[0].weight, r1.model.encoder.mlp.layers[0].weight)


def test_run_directory_contents(digits, tmp_path):
    out = tmp_path / "run"
    res = trainer.fit(small(digits), digits, TrainConfig(epochs=3), out_dir=out, quiet=True)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "ae" and cfg["config"]["latent_dim"] == 4 and cfg["data"]["name_or_path"] == "digits"
    assert cfg["aekit_version"] == aekit.__version__
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["epoch"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 3 and summary["stopped"] == "completed"
    best, _ = files.load_tensors(out / "model.safetensors", 2**30)
    assert_same(best, weights(res.model))  # the returned model carries the best weights
    last = aekit.load(out, weights="last")
    w_last, w_best = last.encoder.mlp.layers[0].weight, res.model.encoder.mlp.layers[0].weight
    assert res.best_epoch == 3 or not torch.equal(w_last, w_best)
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_resume_in_process_is_bit_identical(digits, tmp_path):
    """Stop after 2 of 4 epochs (a budget of 2), resume to 4: same weights, history and checkpoint."""
    name = "vae" if "vae" in registry.MODELS else "dae"  # a model with noise in its objective
    cfg = TrainConfig(epochs=4, seed=1, binarize="dynamic")
    a = trainer.fit(small(digits, name), digits, cfg, out_dir=tmp_path / "a", quiet=True)
    trainer.fit(small(digits, name), digits, cfg.replace(epochs=2), out_dir=tmp_path / "b", quiet=True)
    b = trainer.fit(small(digits, name), digits, cfg, out_dir=tmp_path / "b", resume=True, quiet=True)
    assert_same(weights(a.model), weights(b.model))
    assert [h["train"] for h in a.history] == [h["train"] for h in b.history]
    ckpt = [files.load_tensors(tmp_path / r / run_files.CHECKPOINT, 2**30)[0] for r in ("a", "b")]
    assert_same(*ckpt)


def test_kill_9_then_resume_ends_bit_identical(digits, tmp_path):
    """A real interruption: the CLI is killed with SIGKILL mid-run, then resumed."""
    args = ["train", "dae", "--epochs", "25", "--batch-size", "8", "--latent-dim", "4", "--hidden", "16",
            "--seed", "5", "--quiet", "--checkpoint-every-epochs", "2"]
    ref = tmp_path / "ref"
    assert aekit.cli.main(args + ["--out", str(ref)]) == 0
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "aekit.cli", *args, "--out", str(run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_epochs(run, 3, timeout=120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert 3 <= done < 25, f"the run was not interrupted mid-way ({done} epochs)"
    assert 2 <= Run.open(run).load_checkpoint().epoch <= done  # resumed from a checkpoint, not from the start
    assert aekit.cli.main(["train", "--resume", str(run), "--quiet"]) == 0
    for f in (run_files.WEIGHTS, run_files.CHECKPOINT):
        assert_same(files.load_tensors(ref / f, 2**30)[0], files.load_tensors(run / f, 2**30)[0])
    assert (ref / run_files.METRICS).read_text().count("\n") == (run / run_files.METRICS).read_text().count("\n") == 25


class Exploding(AE):
    """An AE whose loss turns NaN after a number of steps."""

    name = "exploding"
    after = 30

    def forward(self, x, y=None):
        out = super().forward(x, y)
        if self.training:
            self.steps = getattr(self, "steps", 0) + 1
            if self.steps > self.after:
                out.loss = out.loss * float("nan")
        return out


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_weights(digits, tmp_path):
    m = Exploding(registry.get("ae").Config.from_dict(registry.data_options("ae", digits) | {"latent_dim": 4}))
    steps = math.ceil(digits.x_train.shape[0] / 128)
    Exploding.after = 2 * steps + 3  # NaN in epoch 3
    with pytest.raises(TrainingDiverged, match=r"NaN/Inf in epoch 3.*--lr"):
        trainer.fit(m, digits, TrainConfig(epochs=5), out_dir=tmp_path / "r", quiet=True)
    assert all(torch.isfinite(p).all() for p in m.parameters())
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["stopped"] == "diverged" and summary["epochs_run"] == 2
    best, _ = files.load_tensors(tmp_path / "r" / run_files.WEIGHTS, 2**30)
    assert all(torch.isfinite(v).all() for v in best.values())


def test_early_stopping(digits, monkeypatch):
    vals = iter([50.0, 5.0, 4.0, 4.5, 4.6, 4.7, 1.0])  # first: the loss before training
    real = trainer.evaluate_loss

    def fake(*a, **k):
        out = real(*a, **k)
        out["loss"] = next(vals)
        return out

    monkeypatch.setattr(trainer, "evaluate_loss", fake)
    res = trainer.fit(small(digits), digits, TrainConfig(epochs=6, patience=3), quiet=True)
    assert res.stopped == "early_stopping" and len(res.history) == 5 and res.best_epoch == 2


def test_resume_errors(digits, tmp_path):
    # a run killed before its first epoch ended (a config, no checkpoint) resumes from the start
    claimed = Run.create(tmp_path / "x", "ae", small(digits).config, TrainConfig(epochs=2), digits.spec)
    with pytest.raises(RunError, match=rf"in use by process {os.getpid()}"):  # while its writer holds it
        trainer.fit(small(digits), digits, TrainConfig(epochs=2), out_dir=tmp_path / "x", resume=True, quiet=True)
    claimed.release()
    with pytest.raises(RunError, match="nothing to resume"):
        Run.open(tmp_path / "x").load_checkpoint()
    res = trainer.fit(small(digits), digits, TrainConfig(epochs=2), out_dir=tmp_path / "x", resume=True, quiet=True)
    ref = trainer.fit(small(digits), digits, TrainConfig(epochs=2), quiet=True)
    assert_same(weights(res.model), weights(ref.model)) and len(res.history) == 2
    trainer.fit(small(digits), digits, TrainConfig(epochs=1), out_dir=tmp_path / "y", quiet=True)
    with pytest.raises(RunError, match="training options"):
        trainer.fit(small(digits), digits, TrainConfig(epochs=2, lr=0.1), out_dir=tmp_path / "y", resume=True,
                    quiet=True)
    with pytest.raises(RunError, match="config differs"):
        trainer.fit(registry.build_for("ae", digits, latent_dim=5, hidden=[16]), digits, TrainConfig(epochs=2),
                    out_dir=tmp_path / "y", resume=True, quiet=True)


def test_shape_mismatch_is_a_clear_error(digits):
    m = registry.build("ae", input_shape=[1, 28, 28])
    with pytest.raises(ConfigError, match="shape"):
        trainer.fit(m, digits, TrainConfig(epochs=1), quiet=True)


def test_bf16_autocast_runs_on_cpu(digits):
    """The accelerator's mixed-precision path, exercised under CPU autocast."""
    res = trainer.fit(small(digits), digits, TrainConfig(epochs=2, amp="bf16"), quiet=True)
    assert all(math.isfinite(v) for v in res.history[-1]["train"].values())
    assert res.history[-1]["val"]["loss"] < res.history[0]["train"]["loss"]


def test_grad_clip_and_weight_decay_run(digits):
    res = trainer.fit(small(digits), digits, TrainConfig(epochs=1, grad_clip=1.0, weight_decay=1e-4), quiet=True)
    assert len(res.history) == 1


def test_the_default_budget_follows_the_data():
    """20 epochs were ~80 optimizer steps on a folder of 600 images: the conv VAE sampled grey noise."""
    from aekit.config import AUTO_PATIENCE, AUTO_STEPS

    small_set = TrainConfig().resolved_for(600)  # 5 steps per epoch
    assert small_set.epochs * math.ceil(600 / 128) >= AUTO_STEPS and small_set.patience == AUTO_PATIENCE
    assert TrainConfig().resolved_for(60000).epochs == 20  # Fashion-MNIST: 469 steps per epoch
    assert TrainConfig().resolved_for(10).epochs == 500  # capped
    assert TrainConfig(epochs=5).resolved_for(600).patience == 0  # given epochs: no early stopping unless asked
    assert TrainConfig(epochs=5, patience=2).resolved_for(600).patience == 2
    assert TrainConfig().resolved_for(600).threads == 1 and TrainConfig(threads=2).resolved_for(600).threads == 2
    assert TrainConfig().replace(epochs=3).epochs == 3 and TrainConfig().epochs is None  # kept as given


def test_fit_records_the_chosen_budget_and_restores_the_thread_count(digits, tmp_path):
    before = torch.get_num_threads()
    res = trainer.fit(small(digits), digits, TrainConfig(epochs=1, threads=2), out_dir=tmp_path / "r", quiet=True)
    assert torch.get_num_threads() == before
    assert res.config.threads == 2 and Run.open(tmp_path / "r").train.threads == 2  # kept for --resume


def test_a_run_that_ends_while_still_improving_says_so():
    falling = [{"val": {"loss": v}} for v in (40.0, 36.0, 33.0, 30.0)]
    assert "still falling" in trainer.still_improving(falling)
    flat = [{"val": {"loss": v}} for v in (40.0, 39.9, 39.85, 39.8)]
    assert trainer.still_improving(flat) is None
    assert trainer.still_improving(falling[:2]) is None
    worse_last = [{"val": {"loss": v}} for v in (40.0, 36.0, 33.0, 34.0)]
    assert trainer.still_improving(worse_last) is None


def test_train_says_what_the_automatic_budget_chose(cli, tmp_path):
    code, out, err = cli("train", "ae", "--latent-dim", "4", "--hidden", "16", "--limit", "200", "--quiet",
                         "--out", tmp_path / "r")
    assert code == 0, err
    assert "epochs: 500, chosen for 140 training examples" in out and "early stopping after 10" in out
    run = Run.open(tmp_path / "r")
    assert run.train.epochs == 500 and run.summary["stopped"] == "early_stopping"


class Recorder(aekit.Callback):
    """Records the events it sees."""

    def __init__(self, stop_at=None):
        self.events, self.stop_at = [], stop_at

    def on_fit_start(self, state):
        self.events.append(("start", len(state.history)))

    def on_batch_end(self, state):
        self.events.append(("batch", state.epoch, state.step))

    def on_epoch_end(self, state):
        self.events.append(("epoch", state.record["epoch"], state.best_epoch))
        if state.record["epoch"] == self.stop_at:
            state.request_stop("target_reached")

    def on_fit_end(self, state):
        self.events.append(("end", state.stopped, len(state.history)))


def test_callbacks_see_every_event_in_order_and_can_stop(digits):
    rec = Recorder()
    res = trainer.fit(small(digits), digits, TrainConfig(epochs=2, batch_size=512), quiet=True, callbacks=[rec])
    steps = math.ceil(digits.x_train.shape[0] / 512)
    batches = [("batch", e, s) for e in range(2) for s in range(steps)]
    assert rec.events == [("start", 0), *batches[:steps], ("epoch", 1, 1), *batches[steps:],
                          ("epoch", 2, res.best_epoch), ("end", "completed", 2)]
    rec = Recorder(stop_at=2)
    res = trainer.fit(small(digits), digits, TrainConfig(epochs=5), quiet=True, callbacks=[rec])
    assert res.stopped == "target_reached" and len(res.history) == 2 and rec.events[-1] == ("end", "target_reached", 2)


def test_a_callback_changes_nothing_that_is_trained(digits):
    plain = trainer.fit(small(digits, "dae"), digits, TrainConfig(epochs=2, seed=3), quiet=True)
    watched = trainer.fit(small(digits, "dae"), digits, TrainConfig(epochs=2, seed=3), quiet=True,
                          callbacks=[Recorder()])
    assert_same(weights(plain.model), weights(watched.model))


def _checkpoint_epochs(monkeypatch):
    saved = []
    real = Run.save_checkpoint
    monkeypatch.setattr(Run, "save_checkpoint", lambda self, ck: (saved.append(ck.epoch), real(self, ck))[1])
    return saved


def test_checkpoints_every_n_epochs_and_at_the_end(digits, tmp_path, monkeypatch):
    saved = _checkpoint_epochs(monkeypatch)
    cfg = TrainConfig(epochs=5, checkpoint_every_epochs=2, checkpoint_every_seconds=0)
    trainer.fit(small(digits), digits, cfg, out_dir=tmp_path / "a", quiet=True)
    assert saved == [2, 4, 5]
    saved.clear()
    trainer.fit(small(digits), digits, cfg.replace(checkpoint_every_epochs=0), out_dir=tmp_path / "b", quiet=True)
    assert saved == [5]  # at the end only
    assert len((tmp_path / "b" / run_files.METRICS).read_text().splitlines()) == 5  # every epoch appended


def test_checkpoints_every_t_seconds(digits, tmp_path, monkeypatch):
    """A clock that advances 25 s per reading: with a 60 s policy a checkpoint every third epoch."""
    import aekit.callbacks

    clock = iter(range(0, 10**6, 25))
    monkeypatch.setattr(aekit.callbacks.time, "monotonic", lambda: next(clock))
    saved = _checkpoint_epochs(monkeypatch)
    trainer.fit(small(digits), digits, TrainConfig(epochs=7, checkpoint_every_seconds=60), out_dir=tmp_path / "r",
                quiet=True)
    assert saved == [3, 6, 7]


class Interrupt(aekit.Callback):
    """Stands for a kill: raises in the middle of epoch ``at``'s end, before it is appended or checkpointed."""

    def __init__(self, at):
        self.at = at

    def on_epoch_end(self, state):
        if state.record["epoch"] == self.at:
            raise KeyboardInterrupt


def test_resume_cuts_metrics_back_to_the_checkpoint_and_ends_bit_identical(digits, tmp_path):
    """Checkpoint at epoch 2, metrics.jsonl at 3 when interrupted: the resume trains epoch 3 again."""
    cfg = TrainConfig(epochs=6, seed=1, binarize="dynamic", checkpoint_every_epochs=2)
    ref = trainer.fit(small(digits, "dae"), digits, cfg, out_dir=tmp_path / "ref", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(small(digits, "dae"), digits, cfg, out_dir=tmp_path / "r", quiet=True, callbacks=[Interrupt(4)])
    run = Run.open(tmp_path / "r")
    assert len(run.history) == 3 and run.load_checkpoint().epoch == 2
    res = trainer.fit(small(digits, "dae"), digits, cfg, out_dir=tmp_path / "r", resume=True, quiet=True)
    assert_same(weights(ref.model), weights(res.model))
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in Run.open(tmp_path / "r").history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in Run.open(tmp_path / "ref").history]
    for f in (run_files.WEIGHTS, run_files.CHECKPOINT):
        a, _ = files.load_tensors(tmp_path / "ref" / f, 2**30)
        b, _ = files.load_tensors(tmp_path / "r" / f, 2**30)
        assert_same(a, b)


def test_checkpoint_and_logging_options_may_change_on_resume(cli, tmp_path):
    assert cli("train", "ae", "--epochs", "1", "--latent-dim", "4", "--hidden", "16", "--limit", "200", "--quiet",
               "--out", tmp_path / "r")[0] == 0
    code, _, err = cli("train", "--resume", tmp_path / "r", "--epochs", "2", "--checkpoint-every-epochs", "1",
                       "--quiet")
    assert code == 0, err
    assert Run.open(tmp_path / "r").train.checkpoint_every_epochs == 1


def test_every_module_trains_in_training_mode_and_validates_in_eval_mode(digits):
    """The trainer sets each module's flag itself (no Module.train recursion), so check what a module sees: every
    module in training mode during the optimizer steps, in eval mode while the validation loss is computed; a
    module with its own ``train`` gets it called."""
    m = small(digits)
    calls = []

    class Counting(torch.nn.Identity):
        def train(self, mode=True):
            calls.append(mode)
            return super().train(mode)

    seen = []
    first = next(x for x in m.modules() if isinstance(x, torch.nn.Linear))  # runs in every objective
    first.register_forward_pre_hook(lambda mod, inp: seen.append((torch.is_grad_enabled(),
                                                                   {x.training for x in m.modules()})))
    trainer.fit(m, digits, TrainConfig(epochs=2), quiet=True)
    assert {frozenset(f) for g, f in seen if g} == {frozenset({True})}
    assert {frozenset(f) for g, f in seen if not g} == {frozenset({False})}
    m2 = small(digits)
    m2.extra = Counting()
    trainer.fit(m2, digits, TrainConfig(epochs=2), quiet=True)
    assert calls.count(True) >= 2 and calls.count(False) >= 2 and not m2.training


@pytest.mark.parametrize("family,options", [("ae", {"tied": True}), ("aae", {}), ("vae", {"learn_sigma": "shared"})])
def test_state_copy_into_a_copy_equals_a_fresh_state_dict(family, options):
    """state_copy(model, into=...) (every epoch: the best and the last good weights) writes exactly the model's
    state dict into the earlier copy, in place: tied weights under two names, a buffer outside the state dict
    (the aae's centers) and a learned sigma included; a copy of other shapes is replaced, not written."""
    from aekit.callbacks import state_copy

    torch.manual_seed(0)
    model = aekit.build(family, input_shape=[6], hidden=[8], latent_dim=2, likelihood="gaussian", **options)
    into = state_copy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    tensors = dict(into)
    got = state_copy(model, into=into)
    want = model.state_dict()
    assert got is into and got.keys() == want.keys()
    assert all(got[k] is tensors[k] and torch.equal(got[k], want[k]) and got[k] is not want[k] for k in want)
    other = aekit.build(family, input_shape=[7], hidden=[8], latent_dim=2, likelihood="gaussian", **options)
    fresh = state_copy(other, into=into)
    assert fresh is not into and all(torch.equal(fresh[k], v) for k, v in other.state_dict().items())


def test_state_copier_copies_what_state_copy_copies_even_after_the_model_changes():
    """StateCopier (the callbacks' copies, twice an epoch) finds the tensors once, yet every copy equals a fresh
    state dict: after training steps, after a parameter or a buffer is replaced by another tensor, and after a
    tensor changes shape (a fresh copy then)."""
    from aekit.callbacks import StateCopier

    torch.manual_seed(0)
    model = aekit.build("ae", input_shape=[6], hidden=[8], latent_dim=2, likelihood="gaussian")
    copier = StateCopier(model)
    into = copier()

    def same(copy):
        want = model.state_dict()
        return copy.keys() == want.keys() and all(torch.equal(copy[k], v) for k, v in want.items())

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert copier(into) is into and same(into) and copier.spots
    layer = model.encoder.mlp.layers[0]
    layer.weight = torch.nn.Parameter(torch.randn_like(layer.weight))  # replaced, not written in place
    model.likelihood.log_sigma = torch.full((), 0.25)  # a buffer replaced
    assert copier(into) is into and same(into)
    layer.weight = torch.nn.Parameter(torch.randn(layer.weight.shape[0], 7))  # resized
    fresh = copier(into)
    assert fresh is not into and same(fresh)
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert copier(fresh) is fresh and same(fresh) and copier.spots  # its tensors found again
