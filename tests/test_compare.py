"""aekit compare: same budget for every family, a failing family does not stop the others."""

import json
import time

import pytest

from aekit import compare, registry
from aekit.models.ae import AE
from conftest import needs_fmnist
from test_report import assert_self_contained


class Broken(AE):
    """A family whose training always fails."""

    name = "broken"

    def forward(self, x, y=None):
        raise RuntimeError("boom: this family always fails")


@pytest.fixture(scope="module")
def compared(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("cmp") / "c"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry.MODELS, "broken", Broken)
        results = compare.compare(digits, out, models=["ae", "broken", "vae", "cvae"], epochs=1, latent_dim=3)
    return out, results


def test_every_family_runs_and_the_failure_is_reported(compared):
    out, results = compared
    assert [r.model for r in results] == ["ae", "broken", "vae", "cvae"]
    assert [r.status for r in results] == ["ok", "failed", "ok", "ok"]
    broken = results[1]
    assert "RuntimeError" in broken.error and "boom" in broken.error
    for r in results:
        if r.status == "ok":
            assert r.epochs_run == 1 and r.seconds_per_epoch > 0 and (out / r.model / "report.html").exists()
            assert "mse" in r.metrics


def test_markdown_table_and_links(compared):
    out, results = compared
    md = (out / "comparison.md").read_text()
    assert "| metric | ae | broken | vae | cvae* |" in md and "*: takes the class label" in md
    assert "| status | ok | failed | ok | ok |" in md
    assert "seconds per epoch" in md and "elbo_nats" in md and "cond_gen_accuracy" in md
    assert "**broken**" in md and "boom" in md
    for r in ("ae", "vae", "cvae"):
        assert f"[report]({r}/report.html)" in md
        assert f"]({r}/figures/reconstructions.png)" in md
    assert "](vae/figures/samples.png)" in md and "](ae/figures/samples.png)" not in md
    for rel in ("ae/figures/reconstructions.png", "vae/figures/samples.png", "cvae/report.html"):
        assert (out / rel).exists()


def test_html_is_self_contained_with_relative_report_links(compared):
    out, _ = compared
    text = (out / "comparison.html").read_text()
    p = assert_self_contained(text)
    hrefs = [a["href"] for tag, a in p.attrs if tag == "a"]
    assert hrefs == ["ae/report.html", "vae/report.html", "cvae/report.html"]
    assert all((out / h).exists() for h in hrefs)
    assert p.tags.count("img") == 1 + 2 + 2  # ae: reconstructions; vae and cvae: reconstructions and samples
    data = json.loads((out / "comparison.json").read_text())
    assert [r["status"] for r in data["results"]] == ["ok", "failed", "ok", "ok"]


def test_refuses_a_non_empty_out_dir(cli, tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, o, err = cli("compare", "--models", "ae", "--epochs", "1", "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    (out / "ae").mkdir()
    (out / "ae" / "precious.txt").write_text("keep")
    code, o, err = cli("compare", "--models", "ae", "--epochs", "1", "--out", out, "--overwrite")
    assert code == 2 and "not an aekit run directory" in err
    assert (out / "ae" / "precious.txt").read_text() == "keep"


def test_overwrite_replaces_only_the_compared_runs(cli, tmp_path):
    out = tmp_path / "c"
    code, o, err = cli("compare", "--models", "ae,sae", "--epochs", "1", "--latent-dim", "3", "--out", out)
    assert code == 0, err
    assert f"{out / 'comparison.html'}" in o and "ae: 1 epochs" in err
    sae_config = (out / "sae" / "config.json").read_text()
    code, o, err = cli("compare", "--models", "ae", "--epochs", "2", "--latent-dim", "3", "--out", out, "--overwrite")
    assert code == 0, err
    assert len((out / "ae" / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "sae" / "config.json").read_text() == sae_config
    assert "| metric | ae |" in (out / "comparison.md").read_text()


def test_bad_options_are_one_line(cli, tmp_path):
    code, o, err = cli("compare", "--models", "ae,nope", "--out", tmp_path / "x")
    assert code == 2 and "nope" in err and len(err.strip().splitlines()) == 1
    code, o, err = cli("compare", "--epochs", "0", "--out", tmp_path / "x")
    assert code == 2 and "--epochs" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_default_compare_on_digits_within_budget(cli, tmp_path):
    """The README quickstart's main job: every family, default epochs, well under 2 minutes on 2 cores."""
    t0 = time.perf_counter()
    code, o, err = cli("compare", "--out", tmp_path / "c")
    seconds = time.perf_counter() - t0
    assert code == 0, err
    data = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert [r["model"] for r in data["results"]] == list(registry.MODELS)
    assert all(r["status"] == "ok" for r in data["results"])
    assert data["train"]["epochs"] == compare.DEFAULT_EPOCHS
    print(f"default compare on digits: {seconds:.1f} s")
    assert seconds < 120


@pytest.mark.slow
@needs_fmnist
def test_compare_on_fashion_mnist(tmp_path):
    import aekit

    ds = aekit.datasets.load("fashion-mnist", limit=3000)
    results = compare.compare(ds, tmp_path / "c", models=list(registry.MODELS), epochs=2)
    assert all(r.status == "ok" for r in results), [r.error for r in results if r.error]
    by = {r.model: r.metrics for r in results}
    assert by["ae"]["probe_linear_accuracy"] > 0.6
    assert by["cvae"]["cond_gen_classifier_test_accuracy"] > 0.7
    assert by["vae"]["iw_log_likelihood_nats"] >= by["vae"]["elbo_nats"] - 1.0
    assert_self_contained((tmp_path / "c" / "comparison.html").read_text())


def test_families_are_compared_at_one_code_size(tmp_path):
    """sae's own default is an overcomplete 64-unit code; it was ranked against 16-unit codes."""
    from aekit import datasets

    ds = datasets.load("digits", limit=300)
    res = compare.compare(ds, tmp_path / "c", models=["ae", "sae"], epochs=1)
    assert [r.latent_dim for r in res] == [16, 16]
    md = (tmp_path / "c" / "comparison.md").read_text()
    assert "| code size (latent_dim) | 16 | 16 |" in md and "the same code size latent_dim 16" in md
    own = compare.compare(ds, tmp_path / "own", models=["ae", "sae"], epochs=1, latent_dim=None)
    assert [r.latent_dim for r in own] == [16, 64]
    mse = [v for k, v in compare._rows(own) if k == "mse"][0]
    assert compare._best("mse", mse, own) == set()  # a 16-unit and a 64-unit code are not ranked together
    same = [v for k, v in compare._rows(res) if k == "mse"][0]
    assert len(compare._best("mse", same, res)) == 1
