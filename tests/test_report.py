"""The HTML report and the plot / report / eval-anomaly commands."""

import json
from html.parser import HTMLParser

import numpy as np
import pytest

from aekit import report
from aekit.run import Run
from conftest import needs_fmnist


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(text: str) -> _Collect:
    p = _Collect()
    p.feed(text)
    return p


def assert_self_contained(text: str):
    p = parse(text)
    assert text.startswith("<!DOCTYPE html>")
    assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    for tag, attrs in p.attrs:
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,"), attrs["src"][:60]
        for key in ("src", "srcset", "style"):
            assert "http:" not in attrs.get(key, "") and "https:" not in attrs.get(key, "")
    assert "url(" not in text  # no CSS-loaded resource
    return p


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from aekit.cli import main

    base = tmp_path_factory.mktemp("report")
    fast = ["--epochs", "2", "--latent-dim", "3", "--hidden", "32", "--quiet"]
    assert main(["train", "vae", *fast, "--out", str(base / "vae")]) == 0
    assert main(["train", "ae", *fast, "--normal-class", "3", "--out", str(base / "ae3")]) == 0
    return base


def test_report_is_one_self_contained_page(runs, cli):
    run = runs / "vae"
    code, out, err = cli("report", run)
    assert code == 0, err
    assert str(run / "report.html") in out
    text = (run / "report.html").read_text()
    p = assert_self_contained(text)
    figures = ["curves", "reconstructions", "samples", "latent", "interpolation"]
    assert p.tags.count("img") == len(figures)
    metric_names = ["elbo_nats", "iw_log_likelihood_nats", "active_units", "prior_mmd2", "probe_linear_accuracy"]
    for name in figures + metric_names:
        assert name in text, name
    assert "latent_dim" in text and "epochs" in text  # the configuration


def test_report_out_file(runs, cli, tmp_path):
    code, out, err = cli("report", runs / "vae", "--out", tmp_path / "r.html", "--eval-iw-samples", "3")
    assert code == 0, err
    assert '<td>iw_samples</td><td class="num">3</td>' in (tmp_path / "r.html").read_text()


def test_report_escapes_text(runs, tmp_path):
    import shutil

    odd = tmp_path / "run <script>alert(1)</script> & co"
    shutil.copytree(runs / "vae", odd)
    text = report.render(odd, iw_samples=2)
    assert "<script>" not in text
    assert "run &lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in text


def test_plot_command_writes_every_figure(runs, cli, tmp_path):
    code, out, err = cli("plot", runs / "vae", "--out", tmp_path / "figs")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == sorted(f"{n}.png" for n in ["curves", "reconstructions", "samples", "latent", "interpolation"])
    assert out.count("wrote ") == 5


def test_normal_class_run_and_anomaly_eval(runs, cli, digits):
    run = runs / "ae3"
    opened = Run.open(run)
    assert opened.data.normal_class == 3
    ds, normal = opened.dataset(), opened.evaluation_options().normal_class
    assert normal == 3 and set(ds.y_train.tolist()) == {3} and len(set(ds.y_test.tolist())) == 10
    code, out, err = cli("eval", run, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert 0 <= res["anomaly_auroc_recon_error"] <= 1
    assert res["anomaly_fraction"] == pytest.approx((digits.y_test != 3).float().mean().item())
    code, out, err = cli("eval", run, "--json", "--normal-class", "5")
    assert code == 0, err
    assert json.loads(out)["anomaly_fraction"] == pytest.approx((digits.y_test != 5).float().mean().item())
    # the report of a one-class run shows the anomaly metrics
    text = report.render(run)
    assert "anomaly_auroc_recon_error" in text and "Normal class for anomaly detection: 3" in text


def test_anomaly_data_file(runs, cli, tmp_path, digits):
    inverted = (1 - digits.x_test[:40].numpy()).reshape(40, 8, 8).astype(np.float32)
    np.save(tmp_path / "odd.npy", inverted)
    code, out, err = cli("eval", runs / "vae", "--json", "--anomaly-data", tmp_path / "odd.npy")
    assert code == 0, err
    res = json.loads(out)
    assert res["anomaly_fraction"] == pytest.approx(40 / (40 + len(digits.y_test)))
    assert res["anomaly_auroc_neg_elbo"] > 0.9 and res["anomaly_auroc_recon_error"] > 0.9


def test_resume_keeps_the_normal_class(runs, cli, tmp_path):
    import shutil

    run = tmp_path / "ae3"
    shutil.copytree(runs / "ae3", run)
    code, out, err = cli("train", "--resume", run, "--epochs", "3", "--quiet")
    assert code == 0, err
    assert Run.open(run).data.normal_class == 3
    assert len(Run.open(run).history) == 3
    code, out, err = cli("train", "--resume", run, "--epochs", "4", "--normal-class", "2")
    assert code == 2 and "cannot change on --resume" in err


def test_bad_normal_class_is_one_line(cli, tmp_path):
    code, out, err = cli("train", "ae", "--epochs", "1", "--normal-class", "12", "--out", tmp_path / "x")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a class" in err
    assert not (tmp_path / "x").exists()


def test_html_numbers_are_formatted():
    assert report.fmt(0.000123456) == "0.0001235" and report.fmt(3) == "3" and report.fmt(None) == "–"
    assert "<td>&lt;b&gt;</td>" in report.table_html(["h"], [["<b>"]])


def test_report_reuses_what_eval_computed(runs, cli, tmp_path, monkeypatch):
    """`report` used to re-run the whole evaluation (182 s on Fashion-MNIST) after an `eval`."""
    import shutil

    from aekit import metrics

    run = tmp_path / "ae3"
    shutil.copytree(runs / "ae3", run)
    code, out, err = cli("eval", run, "--json")
    assert code == 0, err
    values = json.loads(out)
    calls = []
    real = metrics.evaluate
    monkeypatch.setattr(metrics, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    code, out, err = cli("report", run)
    assert code == 0 and "reusing the metrics" in out and not calls, err
    text = (run / "report.html").read_text()
    assert report.fmt(values["anomaly_auroc_recon_error"]) in text
    code, out, err = cli("report", run, "--seed", "1")  # other options: evaluated anew
    assert code == 0 and "reusing" not in out and calls
    calls.clear()
    code, _, err = cli("train", "--resume", run, "--epochs", "3", "--quiet")  # new weights: the old numbers are stale
    assert code == 0, err
    code, out, err = cli("report", run)
    assert code == 0 and "reusing" not in out and calls


@needs_fmnist
def test_a_fixed_test_set_is_not_reported_as_a_fraction(cli, tmp_path):
    code, _, err = cli("train", "ae", "--dataset", "fashion-mnist", "--limit", "200", "--epochs", "1", "--latent-dim",
                       "2", "--hidden", "16", "--quiet", "--out", tmp_path / "r")
    assert code == 0, err
    text = report.render(tmp_path / "r")
    assert "does not apply: the source&#x27;s own test set (200 examples)" in text


def test_a_table_reports_each_column_in_its_own_units(cli, tmp_path):
    """A table's report shows R^2 and one RMSE per column (not an average across mixed units)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)) * [1.0, 100.0, 0.01]
    (tmp_path / "t.csv").write_text("width,mass,ratio\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in x))
    code, _, err = cli("train", "ae", "--dataset", tmp_path / "t.csv", "--epochs", 2, "--latent-dim", 2, "--quiet",
                       "--out", tmp_path / "r")
    assert code == 0, err
    code, _, err = cli("report", tmp_path / "r")
    assert code == 0, err
    text = (tmp_path / "r" / "report.html").read_text()
    assert "Reconstruction error per column" in text and "rmse_user_units" not in text
    cells = parse(text).text
    assert all(name in cells for name in ("width", "mass", "ratio")) and "r2" in cells
