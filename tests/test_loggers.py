"""`--log tensorboard` and `--log mlflow`, read back with TensorBoard's own reader and MLflow's client."""

import json
import os
import sys

import pytest
import torch

from aekit import registry, trainer
from aekit.config import TrainConfig
from aekit.errors import ConfigError
from aekit.run import Run

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
mlflow_tracking = pytest.importorskip("mlflow.tracking")

FAST = ["--latent-dim", "4", "--hidden", "16", "--quiet", "--limit", "300"]


def small(ds, name="vae", **kw):
    return registry.build_for(name, ds, latent_dim=4, hidden=[16], seed=0, **kw)


def read_events(folder):
    ea = event_accumulator.EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def records(run):
    return Run.open(run).history


def test_tensorboard_holds_every_scalar_of_every_epoch_and_the_figures(cli, tmp_path):
    run = tmp_path / "r"
    code, _, err = cli("train", "vae", *FAST, "--epochs", "3", "--log", "tensorboard", "--log-figures-every", "2",
                       "--out", run)
    assert code == 0, err
    ea = read_events(run / "tensorboard")
    hist = records(run)
    for split in ("train", "val"):
        for term, _ in hist[0][split].items():
            got = [(e.step, e.value) for e in ea.Scalars(f"{split}/{term}")]
            assert got == [(h["epoch"], pytest.approx(h[split][term], rel=1e-6)) for h in hist], (split, term)
    assert [e.step for e in ea.Scalars("lr")] == [1, 2, 3]
    assert [e.step for e in ea.Images("reconstructions")] == [2, 3]  # every 2 epochs, and the last
    assert [e.step for e in ea.Images("samples")] == [2, 3]
    options = ea.Tensors("options/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "train.epochs = 3" in options and "model.latent_dim = 4" in options
    assert Run.why_not_removable(run) is None  # the logging folder is the run's own
    (run / "tensorboard" / "notes.txt").write_text("mine")
    assert "tensorboard/" in Run.why_not_removable(run)


def test_tensorboard_after_a_resume_has_each_epoch_once(digits, tmp_path):
    class Interrupt(trainer.Callback):
        def on_epoch_end(self, state):
            if state.record["epoch"] == 4:
                raise KeyboardInterrupt

    cfg = TrainConfig(epochs=5, checkpoint_every_epochs=2, log=("tensorboard",), log_figures_every=0)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(small(digits), digits, cfg, out_dir=tmp_path / "r", quiet=True, callbacks=[Interrupt()])
    trainer.fit(small(digits), digits, cfg, out_dir=tmp_path / "r", resume=True, quiet=True)
    ea = read_events(tmp_path / "r" / "tensorboard")
    got = [(e.step, e.value) for e in ea.Scalars("val/loss")]
    want = [(h["epoch"], pytest.approx(h["val"]["loss"], rel=1e-6)) for h in records(tmp_path / "r")]
    assert got == want and [s for s, _ in got] == [1, 2, 3, 4, 5]


def test_mlflow_run_has_params_metrics_figures_and_the_run_folder(cli, tmp_path):
    uri = (tmp_path / "store").as_uri()
    run = tmp_path / "r"
    code, _, err = cli("train", "vae", *FAST, "--epochs", "2", "--log", "mlflow", "--mlflow-uri", uri, "--out", run)
    assert code == 0, err
    client = mlflow_tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("aekit")
    (found,) = client.search_runs([exp.experiment_id])
    assert found.info.status == "FINISHED" and found.data.tags["aekit.run_dir"] == str(run.resolve())
    assert found.data.params["train.epochs"] == "2" and found.data.params["model.latent_dim"] == "4"
    assert found.data.params["data.name_or_path"] == "digits" and found.data.params["model.name"] == "vae"
    hist = records(run)
    for key, pick in (("val/loss", lambda h: h["val"]["loss"]), ("train/kl", lambda h: h["train"]["kl"]),
                      ("seconds", lambda h: h["seconds"])):
        got = sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, key))
        assert got == [(h["epoch"], pytest.approx(pick(h))) for h in hist], key
    figures = sorted(a.path for a in client.list_artifacts(found.info.run_id, "figures"))
    assert figures == [f"figures/{n}_epoch{e:04d}.png" for n in ("reconstructions", "samples") for e in (1, 2)]


def test_mlflow_default_is_a_file_store_in_the_working_folder(digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    trainer.fit(small(digits, "ae"), digits, TrainConfig(epochs=1, log=("mlflow",), log_figures_every=0), quiet=True)
    assert (tmp_path / "mlruns").is_dir()
    client = mlflow_tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("aekit").experiment_id])
    assert "aekit.run_dir" not in found.data.tags and [m.step for m in
                                                       client.get_metric_history(found.info.run_id, "val/loss")] == [1]


def test_logging_changes_nothing_that_is_trained(digits, tmp_path):
    cfg = TrainConfig(epochs=2, seed=2)
    plain = trainer.fit(small(digits), digits, cfg, quiet=True)
    logged = trainer.fit(small(digits), digits, cfg.replace(log=["tensorboard"], log_figures_every=1),
                         out_dir=tmp_path / "r", quiet=True)
    for k, v in plain.model.state_dict().items():
        assert torch.equal(v, logged.model.state_dict()[k]), k


@pytest.mark.parametrize("log,module", [("tensorboard", "torch.utils.tensorboard"), ("mlflow", "mlflow.tracking")])
def test_a_missing_package_is_one_line_and_no_run_is_started(cli, tmp_path, monkeypatch, log, module):
    monkeypatch.setitem(sys.modules, module, None)
    code, _, err = cli("train", "ae", *FAST, "--epochs", "1", "--log", log, "--out", tmp_path / "r")
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"pip install 'aekit[{log}]'" in err, err
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").iterdir())


def test_log_options_are_checked(digits):
    with pytest.raises(ConfigError, match="tensorboard, mlflow"):
        TrainConfig(log=("wandb",))
    with pytest.raises(ConfigError, match="out_dir"):
        trainer.fit(small(digits, "ae"), digits, TrainConfig(epochs=1, log=("tensorboard",)), quiet=True)


def test_run_config_records_the_logging_options(cli, tmp_path):
    code, _, err = cli("train", "ae", *FAST, "--epochs", "1", "--log", "tensorboard", "--out", tmp_path / "r")
    assert code == 0, err
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())["train"]
    assert cfg["log"] == ["tensorboard"] and os.listdir(tmp_path / "r" / "tensorboard")
