"""benchmarks/gpu.py on the CPU: every path the CPU can take (--device cpu --quick), without pythae.

What only a GPU exercises: CUDA timings and peak GPU memory, bf16 on CUDA, pythae's trainer on CUDA, NCCL
under torchrun and the choice of cuda:LOCAL_RANK by real ranks. The code around them is the code run here.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import benchmark_scripts

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu():
    """benchmarks/gpu.py as a module, with sys.path and sys.modules as they were before its import."""
    return benchmark_scripts.load("gpu")


def bench(tmp_path, *args, timeout=240):
    """Run the script; (exit status, stdout, stderr, the --json report or None)."""
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK")}
    p = subprocess.run([sys.executable, str(SCRIPT), *map(str, args), "--json", str(report)], capture_output=True,
                       text=True, timeout=timeout, cwd=tmp_path, env=env)
    return p.returncode, p.stdout, p.stderr, json.loads(report.read_text()) if report.exists() else None


def rows_by_label(res: dict) -> dict[str, dict]:
    return {d["label"]: d for d in res["rows"]}


def test_quick_mode_runs_the_single_device_parts_on_the_cpu(tmp_path):
    code, out, err, rep = bench(tmp_path, "--device", "cpu", "--quick", "--no-pythae", "--data", tmp_path / "none",
                                "--parts", "vae,nll,conv", "--repeats", 2, "--budget-s", 0)
    assert code == 0, err[-3000:]
    assert out.count("NOT GPU FIGURES") == 2 and "SYNTHETIC uint8 images" in out and "left out (--no-pythae)" in out
    assert "stopped after 1 round(s) of 2 to stay within --budget-s 0" in out  # the budget guard
    assert not rep["gpu"] and rep["quick"] and rep["device_name"]
    res = rep["results"]["gpu"]
    assert len(res["rounds"]) == 1 and res["skipped"] == {"pythae": "left out (--no-pythae)"} and not res["failed"]
    a = res["rounds"][0]["aekit"]
    assert a["device"] == "cpu" and a["n_train"] == 256 and a["nll_n"] == 8 and a["nll_k"] == 100
    for prefix in ("vae", "bf16", "conv"):
        assert a[f"{prefix}_recorded_device"] == "cpu"  # TrainConfig(device="cpu") as the run records it
        secs = a[f"{prefix}_epoch_seconds"]
        assert len(secs) == 2 and a[f"{prefix}_seconds_per_epoch"] == secs[1]  # the first epoch is a warm-up
        assert a[f"{prefix}_images_per_second"] == pytest.approx(256 / secs[1])
        assert -784 * math.log(2) - 50 < a[f"{prefix}_test_elbo"] < 0  # uniform noise: ~ -784 log 2 at best
    for key in ("nll", "nll_chunk"):
        assert a[f"{key}_images_per_second"] > 0 and a[f"{key}_mean_log_likelihood"] < 0
    assert "peak_device_mib" not in json.dumps(a)  # no GPU, no GPU memory figure
    rows = rows_by_label(res)
    target_rows = [d for d in rows.values() if d["target"]]
    assert len(target_rows) == 2 and all(not d["b_values"] and not d["ratios"] for d in target_rows)
    assert "| >= 10x | not judged (not a GPU run) |" in out and "pythae: skipped" in out


def test_the_synthetic_stand_in_is_read_alike_by_aekit_and_by_the_peers_reader(gpu, tmp_path):
    import aekit

    gpu.write_synthetic(tmp_path, 40, 12, seed=3)
    assert gpu.missing_idx(tmp_path) == [] and len(gpu.missing_idx(tmp_path / "x")) == 4
    peer = gpu.fashion_mnist(tmp_path)
    ds = aekit.datasets.load("fashion-mnist", data_dir=str(tmp_path), val_fraction=0.0, shuffle=False)
    x = ds.x_train if isinstance(ds.x_train, torch.Tensor) else ds.x_train[torch.arange(len(ds.x_train))]
    assert x.shape == (40, 1, 28, 28) and torch.equal(x, peer["x_train"])
    assert torch.equal(ds.y_train, peer["y_train"]) and peer["x_test"].shape == (12, 1, 28, 28)
    assert 0.4 < x.mean().item() < 0.6 and int(peer["y_train"].max()) <= 9  # uniform bytes, 10 classes
    again = tmp_path / "again"
    gpu.write_synthetic(again, 40, 12, seed=3)
    assert all((again / n).read_bytes() == (tmp_path / n).read_bytes() for n in gpu.IDX_NAMES.values())  # seeded


def test_epoch_figures_leave_out_the_warm_up_epoch(gpu):
    f = gpu.epoch_figures([9.0, 1.0, 3.0], 600)
    assert f["seconds_per_epoch"] == 2.0 and f["images_per_second"] == 300.0 and f["epoch_seconds"] == [9.0, 1.0, 3.0]
    assert gpu.epoch_figures([4.0], 8)["seconds_per_epoch"] == 4.0  # one epoch: nothing to leave out


def test_pythae_is_optional_and_its_absence_is_explained(gpu, tmp_path):
    fake = tmp_path / "python-with-pythae"  # answers the probe as an interpreter whose torch has no CUDA
    fake.write_text("#!/bin/sh\necho '[\"2.13.0\", false]'\n")
    fake.chmod(0o755)
    assert gpu.find_pythae("cpu", str(fake)) == (fake, "ok")
    py, why = gpu.find_pythae("cuda", str(fake))
    assert py is None and "sees no CUDA device" in why and "--pythae-python" in why
    py, why = gpu.find_pythae("cuda", str(tmp_path / "missing"))
    assert py is None and "no such interpreter" in why
    broken = tmp_path / "python-without-pythae"
    broken.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'pythae'\" >&2\nexit 1\n")
    broken.chmod(0o755)
    py, why = gpu.find_pythae("cpu", str(broken))
    assert py is None and "No module named 'pythae'" in why and "pip install pythae==0.1.2" in why


@pytest.mark.parametrize("args, message", [
    (["--parts", "vae,gan"], "unknown part(s) gan"),
    (["--device", "tpu:x"], "not a torch device"),
    (["--device", "mps"], "runs on cuda or cpu"),
    (["--parts", ","], "unknown part(s) (none given)"),
    pytest.param(["--device", "cuda"], "sees no CUDA device; use --device cpu --quick",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_options_are_one_error_line(gpu, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        gpu.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err


def test_an_existing_json_file_is_left_alone(gpu, tmp_path, capsys):
    mine = tmp_path / "mine.json"
    mine.write_text("keep me")
    with pytest.raises(SystemExit):
        gpu.main(["--device", "cpu", "--quick", "--json", str(mine)])
    assert mine.read_text() == "keep me" and "nothing was overwritten" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_mode_runs_every_part_with_ddp_under_torchrun(tmp_path):
    """The whole --quick run (about 30 s here): the single-device parts and DDP with 2 gloo processes."""
    code, out, err, rep = bench(tmp_path, "--device", "cpu", "--quick", "--no-pythae", "--data", tmp_path / "none")
    assert code == 0, err[-3000:]
    if importlib.util.find_spec("aekit.distributed") is None:
        pytest.fail("aekit.distributed is missing: the ddp part was skipped")
    d = rep["results"]["ddp"]["rounds"][0]["ddp"]
    assert d["nproc"] == 2 and d["one_global_batch"] == 128 and d["ddp_global_batch"] == 256
    assert d["one_recorded_device"] == d["ddp_recorded_device"] == "cpu"
    assert len(d["one_epoch_seconds"]) == len(d["ddp_epoch_seconds"]) == 2 and d["speedup"] > 0
    assert all(math.isfinite(d[f"{k}_final_train_loss"]) for k in ("one", "ddp"))
    assert "DDP: VAE epoch, 2 processes" in out and "NOT GPU FIGURES" in out
