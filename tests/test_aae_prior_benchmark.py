"""benchmarks/aae_prior.py: its point syntax, the VAE curve it reads the AAE against, and a one-epoch run."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

import benchmark_scripts

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "aae_prior.py"


@pytest.fixture(scope="module")
def bench():
    return benchmark_scripts.load("aae_prior")


def test_points_parse_to_a_family_and_typed_options(bench):
    import aekit

    assert bench.parse_point("aae") == ("aae", {})
    name, options = bench.parse_point("vae:beta=0.3,kl_warmup_epochs=2")
    config = aekit.build(name, latent_dim=2, **options).config  # the model's Config types the text
    assert (name, config.beta, config.kl_warmup_epochs) == ("vae", 0.3, 2)
    assert bench.parse_point("aae:posterior=gaussian") == ("aae", {"posterior": "gaussian"})
    with pytest.raises(SystemExit, match="not key=value"):
        bench.parse_point("vae:beta")
    with pytest.raises(SystemExit, match="unknown option.*bta"):
        bench.check_point("vae:bta=0.3")
    with pytest.raises(SystemExit, match="unknown model 'vea'"):
        bench.check_point("vea")


def test_the_vae_curve_is_interpolated_in_log_log_and_says_when_it_cannot_reach(bench):
    summary = [{"point": "vae", "mse_mean": 0.04, "mmd_mean": 0.0004},
               {"point": "vae:beta=0.1", "mse_mean": 0.01, "mmd_mean": 0.04},
               {"point": "aae", "mse_mean": 0.02, "mmd_mean": 0.002}]
    # halfway in log(mse) between 0.01 and 0.04 is 0.02: halfway in log(MMD^2) is sqrt(0.04 * 0.0004) = 0.004
    assert math.isclose(float(bench.vae_curve_at(summary, 0.02)), 0.004, rel_tol=1e-3)
    assert bench.vae_curve_at(summary, 0.005).startswith("none (the VAE's smallest mse, 0.0100")
    assert bench.vae_curve_at(summary, 0.08) == ""
    assert bench.vae_curve_at([s for s in summary if s["point"] == "aae"], 0.02) == ""


def run(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def test_one_epoch_run_prints_both_families_and_the_noise_floor():
    p = run("--epochs", "1", "--seeds", "0", "--jobs", "1", "--points", "aae vae", "--no-write")
    assert p.returncode == 0, p.stderr
    rows = [line for line in p.stdout.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == ["aae", "vae"]
    assert "Estimator noise floor: MMD^2 of two prior samples of 359 codes" in p.stdout


def test_keeping_others_refuses_results_measured_with_other_settings():
    assert (ROOT / "benchmarks" / "RESULTS_aae_prior_digits.json").exists()
    p = run("--epochs", "1", "--seeds", "0", "--points", "vae", "--keep-others", "--no-write")
    assert p.returncode != 0
    assert "was measured with other settings" in p.stderr
