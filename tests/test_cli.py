"""The command line: every command works, and every user mistake exits 2 with one line on stderr."""

import json

import numpy as np
import pytest

from aekit import registry
from conftest import needs_fmnist

DETERMINISTIC = ["ae", "dae", "sae", "cae"]
FAST = ["--epochs", "1", "--latent-dim", "4", "--quiet"]


def one_line_error(code, out, err, *fragments):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_train_each_family_on_digits(cli, tmp_path, name, arch):
    code, out, err = cli("train", name, "--arch", arch, *FAST, "--out", tmp_path / "r")
    assert code == 0, err
    assert "test reconstruction" in out and str(tmp_path / "r") in out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from aekit.cli import main

    d = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "sae", "--epochs", "2", "--latent-dim", "6", "--quiet", "--out", str(d)]) == 0
    return d


def test_eval_json(cli, run):
    code, out, err = cli("eval", run, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert 0 < res["mse"] < 1 and res["psnr_db"] > 0


def test_eval_device(cli, run, monkeypatch):
    """--device auto (the default) is the CPU here and gives the numbers of --device cpu; a device this machine
    lacks is one line."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    got = [json.loads(cli("eval", run, "--json", *dev)[1]) for dev in ([], ["--device", "cpu"])]
    assert got[0] == got[1]
    one_line_error(*cli("eval", run, "--device", "cuda"), "no CUDA device")
    one_line_error(*cli("eval", run, "--device", "gpu"), "not a torch device")


def test_reconstruct_png(cli, run, tmp_path):
    code, out, err = cli("reconstruct", run, "--out", tmp_path / "r.png", "-n", "8")
    assert code == 0, err
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_encode_npy_and_npz(cli, run, tmp_path, digits):
    code, _, err = cli("encode", run, "--out", tmp_path / "z.npy")
    assert code == 0, err
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (digits.x_test.shape[0], 6)
    code, _, err = cli("encode", run, "--split", "all", "--out", tmp_path / "z.npz")
    assert code == 0, err
    f = np.load(tmp_path / "z.npz")
    n = sum(x.shape[0] for x in (digits.x_train, digits.x_val, digits.x_test))
    assert f["z"].shape == (n, 6) and f["y"].shape == (n,)


def test_models_and_datasets_listings(cli):
    code, out, _ = cli("models")
    assert code == 0 and all(name in out for name in registry.MODELS)
    assert "--rho" in out and "--contraction" in out
    code, out, _ = cli("datasets")
    assert code == 0 and "digits" in out and "fashion-mnist" in out


@pytest.mark.parametrize("command", ["train", "eval", "reconstruct", "encode", "models", "datasets"])
def test_every_command_has_help(cli, command):
    code, out, _ = cli(command, "--help")
    assert code == 0 and "usage:" in out


def test_resume_extends_the_epoch_budget(cli, tmp_path):
    code, _, err = cli("train", "ae", *FAST, "--out", tmp_path / "r")
    assert code == 0, err
    code, out, err = cli("train", "--resume", tmp_path / "r", "--epochs", "3", "--quiet")
    assert code == 0, err
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 3


def test_train_on_a_csv_table(cli, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)) * [1, 10, 100, 0.1, 3] + [0, 5, -50, 1, 2]
    rows = ["a,b,c,d,e,label"] + [",".join(f"{v:.5f}" for v in r) + f",{'xy'[i % 2]}" for i, r in enumerate(x)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    code, out, err = cli("train", "ae", "--dataset", tmp_path / "t.csv", "--label-column", "label", *FAST,
                         "--out", tmp_path / "r")
    assert code == 0, err
    assert "r2" in out and "rmse:c" in out  # a scale-free summary and each column's error in its units
    code, _, err = cli("reconstruct", tmp_path / "r", "--out", tmp_path / "rec.csv")
    assert code == 0, err
    head = (tmp_path / "rec.csv").read_text().splitlines()[0]
    assert head.startswith("input_a,") and "recon_e" in head
    code, _, err = cli("reconstruct", tmp_path / "r", "--out", tmp_path / "rec.png")
    one_line_error(code, _, err, "CSV")


# --- user mistakes: exit 2, one line, nothing overwritten ---------------------------------------------
def test_unknown_model(cli):
    one_line_error(*cli("train", "nope", *FAST), "unknown model 'nope'", "ae")


def test_option_of_another_family(cli, tmp_path):
    one_line_error(*cli("train", "ae", "--rho", "0.1", *FAST, "--out", tmp_path / "r"), "--rho", "sae")


@pytest.mark.parametrize("args,fragment", [
    (["--noise-level", "-1"], "noise_level"),
    (["--noise", "blur"], "noise"),
    (["--epochs", "0"], "epochs"),
    (["--lr", "abc"], "lr"),
    (["--hidden", "64,x"], "hidden"),
    (["--arch", "conv", "--dataset", "missing.csv"], "missing.csv"),
])
def test_bad_option_values(cli, tmp_path, args, fragment):
    base = ["--epochs", "1", "--quiet"] if "--epochs" not in args else ["--quiet"]
    one_line_error(*cli("train", "dae", *base, *args, "--out", tmp_path / "r"), fragment)


def test_unknown_flag(cli):
    one_line_error(*cli("train", "ae", "--no-such-flag"), "--no-such-flag")


def test_out_dir_exists_is_not_overwritten(cli, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    one_line_error(*cli("train", "ae", *FAST, "--out", out), "already exists")
    assert (out / "precious.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_missing_and_damaged_run_dirs(cli, tmp_path, run):
    one_line_error(*cli("eval", tmp_path / "none"), "no such run directory")
    (tmp_path / "empty").mkdir()
    one_line_error(*cli("eval", tmp_path / "empty"), "not an aekit run directory")
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    one_line_error(*cli("eval", bad), "model.safetensors")
    (bad / "config.json").write_text("{not json")
    one_line_error(*cli("eval", bad), "config.json")


def test_encode_bad_suffix(cli, run, tmp_path):
    one_line_error(*cli("encode", run, "--out", tmp_path / "z.txt"), ".npy")


def test_resume_cannot_change_options(cli, run):
    one_line_error(*cli("train", "--resume", run, "--lr", "0.5"), "--lr")


@needs_fmnist
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_train_each_family_on_fashion_mnist(cli, tmp_path, name, arch):
    code, out, err = cli("train", name, "--dataset", "fashion-mnist", "--arch", arch, "--limit", "3000",
                         *FAST, "--out", tmp_path / "r")
    assert code == 0, err
    assert "fashion-mnist" in out


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_train_cae_with_the_projection_penalty(cli, tmp_path, arch):
    code, out, err = cli("train", "cae", "--arch", arch, "--jacobian", "projection", "--jacobian-projections", "2",
                         *FAST, "--out", tmp_path / "r")
    assert code == 0, err
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert cfg["jacobian"] == "projection" and cfg["jacobian_projections"] == 2
    code, out, err = cli("train", "cae", "--jacobian-projections", "0", *FAST, "--out", tmp_path / "bad")
    one_line_error(code, out, err, "jacobian_projections")


def test_class_names_are_matched_without_case_and_interrupts_name_the_run(cli, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = (rng.random((120, 6, 6)) * 255).astype(np.uint8)
    np.savez(tmp_path / "pets.npz", x=x, y=np.array(["Cat", "Dog"] * 60))
    code, _, err = cli("train", "cvae", "--dataset", tmp_path / "pets.npz", *FAST, "--out", tmp_path / "r")
    assert code == 0, err
    code, out, err = cli("sample", tmp_path / "r", "--label", "dog", "-n", "4", "--out", tmp_path / "d.png")
    assert code == 0 and "of class 1" in out, err
    from aekit import trainer

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "fit", interrupted)
    code, _, err = cli("train", "ae", *FAST, "--out", tmp_path / "r2")
    assert code == 130 and f"aekit train --resume {tmp_path / 'r2'}" in err


@pytest.mark.parametrize("command", [["compare", "--models", "ae"], ["report", "RUN"], ["score", "RUN", "x.csv"],
                                     ["pack", "x.csv", "--out", "y.npy"]])
def test_commands_of_one_process_refuse_torchrun(cli, monkeypatch, tmp_path, command):
    """Under torchrun only train and eval share their work; any other command would run once per process and
    every process would write the same files: one line instead, before anything is read or written."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.chdir(tmp_path)
    one_line_error(*cli(*command), f"aekit {command[0]} runs in one process", "without torchrun")
    assert list(tmp_path.iterdir()) == []
