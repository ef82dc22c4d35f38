"""Run: the one owner of a run directory. Old runs still open; damaged ones give one clear line."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import aekit
from aekit import trainer
from aekit.config import TrainConfig
from aekit.errors import RunError
from aekit.run import CHECKPOINT, CONFIG, EVAL_BINARIZE_SEED, Run

OLD = Path(__file__).parent / "fixtures" / "runs_v0_1_0"
OLD_RUNS = sorted(p.name for p in OLD.iterdir() if p.is_dir())
EXPECTED = json.loads((OLD / "eval_by_v0_1_0.json").read_text())


def one_line_error(code, err, *fragments):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture
def old(tmp_path):
    """A writable copy of the runs written by aekit 0.1.0."""
    shutil.copytree(OLD, tmp_path / "old")
    return tmp_path / "old"


def test_fixture_holds_the_old_runs():
    assert OLD_RUNS == sorted(EXPECTED) and len(OLD_RUNS) == 4


@pytest.mark.parametrize("name", OLD_RUNS)
def test_runs_written_by_0_1_0_evaluate_to_the_same_numbers(cli, old, name):
    args = ["--eval-iw-samples", "10"] if name.startswith("vae") else []
    code, out, err = cli("eval", old / name, "--json", *args)
    assert code == 0, err
    got, want = json.loads(out), EXPECTED[name]
    # added since 0.1.0: the AUROC / AP of the score `aekit score` writes, for a plain ae run its recon_error
    for kind in ("auroc", "ap"):
        if f"anomaly_{kind}_score" in got:
            assert got.pop(f"anomaly_{kind}_score") == pytest.approx(got[f"anomaly_{kind}_recon_error"], rel=1e-9)
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == (pytest.approx(v, rel=1e-5, abs=1e-7) if isinstance(v, float) else v), k


def test_an_old_run_opens_with_its_policy_and_data(old):
    run = Run.open(old / "ae-digits-normal3")
    assert run.model_name == "ae" and run.aekit_version == "0.1.0" and run.data.normal_class == 3
    opts = run.evaluation_options()
    assert opts.normal_class == 3 and opts.binarize_seed is None
    assert run.evaluation_options(other_data=True).normal_class is None
    ds = run.dataset()
    assert set(ds.y_train.tolist()) == {3} and len(ds.x_test) == 80
    assert len(run.history) == 2 and run.summary["epochs_run"] == 2
    vae = Run.open(old / "vae-digits-binarized").evaluation_options()
    assert vae.binarize_seed == EVAL_BINARIZE_SEED and "binarize=dynamic" in vae.likelihood_note("test")
    best, last = run.model(), run.model(weights="last")
    assert isinstance(best, aekit.MODELS["ae"]) and not best.training
    assert all(torch.equal(a, b) for a, b in zip(best.state_dict().values(), last.state_dict().values()))


def test_an_old_run_resumes(cli, old):
    code, _, err = cli("train", "--resume", old / "vae-digits-binarized", "--epochs", "3", "--quiet")
    assert code == 0, err
    run = Run.open(old / "vae-digits-binarized")
    assert len(run.history) == 3 and run.train.epochs == 3 and run.aekit_version == "0.1.0"


def test_resume_with_an_abbreviated_epochs_flag_takes_the_new_budget(cli, old):
    """argparse accepts --epoch for --epochs; the old argv scan missed it and kept the old budget silently."""
    code, _, err = cli("train", "--resume", old / "sae-digits-kl", "--epoch", "2", "--quiet")
    assert code == 0, err
    run = Run.open(old / "sae-digits-kl")
    assert run.train.epochs == 2 and len(run.history) == 2


@pytest.mark.parametrize("text,fragment", [
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"{not json", "not valid JSON"),
    (b'"a string"', "expected a JSON object, got str"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"model": ["ae"], "config": {}, "train": {}, "data": null}', "'model' must be a string"),
    (b'{"model": "ae", "config": [], "train": {}, "data": null}', "'config' must be an object"),
    (b'{"model": "ae", "config": {}, "data": null}', "missing key 'train'"),
    (b'{"model": "nope", "config": {}, "train": {}, "data": null}', "unknown model 'nope'"),
    (b'{"model": "ae", "config": {"latent_dim": "x"}, "train": {}, "data": null}', "latent_dim"),
    (b'{"model": "ae", "config": {}, "train": {}, "data": {"colour": 1}}', "colour"),
    (b'{"model": "ae", "config": {}, "train": {}, "data": {"seed": 1.5}}', "seed"),
])
def test_a_damaged_config_is_one_line(cli, old, text, fragment):
    run = old / "ae-digits-normal3"
    (run / CONFIG).write_bytes(text)
    for command in (["eval", run], ["train", "--resume", run], ["report", run]):
        code, _, err = cli(*command)
        one_line_error(code, err, "config.json", fragment)


def test_damaged_weights_name_the_file_that_was_read(old):
    run = old / "ae-digits-normal3"
    (run / CHECKPOINT).write_bytes(b"garbage")
    with pytest.raises(RunError, match=CHECKPOINT):
        Run.open(run).model(weights="last")
    Run.open(run).model()  # the best weights are intact
    other = Run.open(old / "sae-digits-kl")
    shutil.copy(other.path / "model.safetensors", run / "model.safetensors")
    with pytest.raises(RunError, match=r"model\.safetensors: weights do not match"):
        Run.open(run).model()


def test_fit_never_writes_into_a_users_folder(digits, tmp_path):
    mine = tmp_path / "myproj"
    mine.mkdir()
    (mine / "config.json").write_text("my own config")
    model = aekit.build("ae", dataset=digits, latent_dim=4, hidden=[16], seed=0)
    with pytest.raises(RunError, match="already exists and is not empty"):
        trainer.fit(model, digits, TrainConfig(epochs=1), out_dir=mine, quiet=True)
    assert [p.name for p in mine.iterdir()] == ["config.json"] and (mine / "config.json").read_text() == "my own config"


def test_a_run_of_a_table_scores_other_rows_with_its_statistics(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)) * [1.0, 10.0, 100.0] + [0.0, 5.0, -50.0]
    np.save(tmp_path / "t.npy", x)
    np.save(tmp_path / "new.npy", x[:20] + 1000.0)
    ds = aekit.datasets.load(tmp_path / "t.npy")
    model = aekit.build("ae", dataset=ds, latent_dim=2, hidden=[8], seed=0)
    res = aekit.fit(model, ds, TrainConfig(epochs=1), out_dir=tmp_path / "r", quiet=True)
    run = Run.open(res.run.path)
    new = run.dataset(name_or_path=str(tmp_path / "new.npy"), val_fraction=0.0, test_fraction=0.0)
    assert torch.allclose(new.mean, ds.mean) and torch.allclose(new.std, ds.std)
    back, want = new.to_user_units(new.x_train), torch.tensor(x[:20] + 1000.0).float()  # rows in split order
    assert torch.allclose(back[back[:, 0].argsort()], want[want[:, 0].argsort()], atol=1e-3)


def test_load_and_run_model_agree(tmp_path, digits):
    model = aekit.build("vae", dataset=digits, latent_dim=2, hidden=[16], seed=0)
    res = aekit.fit(model, digits, TrainConfig(epochs=1), out_dir=tmp_path / "r", quiet=True)
    assert res.run.path == tmp_path / "r"
    a, b = aekit.load(tmp_path / "r"), Run.open(tmp_path / "r").model(device="cpu")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert aekit.evaluate is aekit.metrics.evaluate and "evaluate" in aekit.__all__


def test_save_writes_a_run_that_load_and_the_commands_read(cli, tmp_path, digits):
    from aekit.run import save

    model = aekit.build("dae", dataset=digits, latent_dim=3, hidden=[16], seed=0)
    with pytest.raises(RunError, match="not empty"):
        (tmp_path / "busy").mkdir()
        (tmp_path / "busy" / "x").write_text("mine")
        save(model, tmp_path / "busy")
    save(model, tmp_path / "m", data=digits.spec)
    back = aekit.load(tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    code, out, err = cli("eval", tmp_path / "m", "--json")
    assert code == 0 and "mse" in json.loads(out), err


def test_an_old_aae_run_evaluates_but_cannot_resume_its_old_phases(cli, old):
    """The AAE's parameter groups changed after 0.1.0 (the autoencoder phase trains the decoder only)."""
    code, err = cli("train", "--resume", old / "aae-digits-supervised", "--epochs", "2", "--quiet")[::2]
    one_line_error(code, err, "optimizer state", "can be evaluated but not resumed")
    assert cli("eval", old / "aae-digits-supervised")[0] == 0
