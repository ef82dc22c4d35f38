"""Metrics: each one against an independent computation, and evaluate()'s dispatch over the families."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

import aekit
from aekit import metrics, reference, registry
from aekit.errors import ConfigError, DataError
from aekit.models.base import Capabilities

# --------------------------------------------------------------------------------------------------
# Tiny trained models of every family, shared by the module (2 epochs on digits)

FAMILY_OPTS = {
    "ae": {}, "dae": {}, "sae": {}, "cae": {}, "vae": {}, "iwae": {}, "cvae": {}, "aae": {},
    "aae_supervised": {"prior": "mixture", "supervised": True},
}


def diagnose(model, name, ds, seed=0):
    """One diagnostic of a model, as evaluate() dispatches it."""
    return metrics.diagnostic_function(model, name)(model, metrics.DiagnosticData(model, ds, "test", seed))


@pytest.fixture(scope="module")
def trained(digits):
    out = {}
    for key, opts in FAMILY_OPTS.items():
        name = key.split("_")[0]
        if name not in registry.MODELS:
            continue
        m = aekit.build(name, dataset=digits, seed=0, latent_dim=4, hidden=[32], **opts)
        aekit.fit(m, digits, aekit.TrainConfig(epochs=2, seed=0), quiet=True)
        out[key] = m
    return out


# --------------------------------------------------------------------------------------------------
# Reconstruction


def test_psnr_by_hand():
    x = torch.zeros(2, 1, 4, 4)
    x_hat = torch.stack([torch.full((1, 4, 4), 0.1), torch.full((1, 4, 4), 0.01)])
    # per-image MSE 0.01 and 0.0001 -> 20 dB and 40 dB; PSNR is their mean
    assert metrics.psnr(x, x_hat) == pytest.approx(30.0, abs=1e-4)
    assert metrics.psnr(x, x_hat, peak=10.0) == pytest.approx(50.0, abs=1e-4)  # + 20 log10(10)


def test_mse_sse_bce_by_hand():
    x = torch.tensor([[0.0, 1.0, 0.5], [1.0, 0.0, 0.25]])
    x_hat = torch.tensor([[0.1, 0.8, 0.5], [0.6, 0.3, 0.25]])
    d2 = (x - x_hat) ** 2
    assert metrics.mse(x, x_hat) == pytest.approx(d2.mean().item())
    assert torch.allclose(metrics.sse_per_example(x, x_hat), d2.sum(1))
    ce = -(x * torch.log(x_hat) + (1 - x) * torch.log(1 - x_hat))
    logits = torch.logit(x_hat)
    assert metrics.bce(x, logits) == pytest.approx(ce.sum().item() / 2, rel=1e-5)
    assert metrics.bce(x, logits) == pytest.approx(torch.nn.BCEWithLogitsLoss(reduction="sum")(logits, x).item() / 2,
                                                   rel=1e-6)


def test_bce_is_computed_from_logits():
    """Far in the tails, where a probability would have to be clamped: x = 1 under logit -40 costs softplus(40)
    = 40 nats (a probability clamped at 1e-7 would say 16.1)."""
    x = torch.tensor([[1.0, 0.0]])
    logits = torch.tensor([[-40.0, -40.0]])
    assert metrics.bce(x, logits) == pytest.approx(40.0 + torch.nn.functional.softplus(torch.tensor(-40.0)).item(),
                                                   rel=1e-6)


# --------------------------------------------------------------------------------------------------
# Representation


def _brute_force_cluster_acc(y_true, y_pred):
    classes, clusters = sorted(set(y_true)), sorted(set(y_pred))
    best = 0
    for perm in itertools.permutations(classes, len(clusters)):
        m = dict(zip(clusters, perm))
        best = max(best, sum(m[p] == t for p, t in zip(y_pred, y_true)))
    return best / len(y_true)


def test_clustering_accuracy_permuted_labelling_is_one():
    y = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    perm = np.array([2, 3, 1, 0])  # cluster ids are a relabelling of the classes
    assert metrics.clustering_accuracy(y, perm[y]) == 1.0


def test_clustering_accuracy_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 4, 40)
        pred = rng.integers(0, 4, 40)
        expected = _brute_force_cluster_acc(y.tolist(), pred.tolist())
        assert metrics.clustering_accuracy(y, pred) == pytest.approx(expected)


def test_kmeans_on_separated_blobs():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 0], [0, 10]])
    y = np.repeat([0, 1, 2], 30)
    z = centers[y] + rng.normal(0, 0.5, (90, 2))
    res = metrics.kmeans_metrics(torch.tensor(z), torch.tensor(y), 3)
    assert res["cluster_accuracy"] == 1.0 and res["cluster_nmi"] == pytest.approx(1.0)


def test_linear_probe_separable_and_random():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 5))
    y = (z[:, 0] + 0.5 * z[:, 1] > 0).astype(int)
    assert metrics.linear_probe_accuracy(z[:300], y[:300], z[300:], y[300:]) >= 0.97
    y_rand = rng.integers(0, 2, 400)
    assert metrics.linear_probe_accuracy(z[:300], y_rand[:300], z[300:], y_rand[300:]) < 0.7


def test_knn_matches_brute_force():
    rng = np.random.default_rng(1)
    zt, yt = rng.normal(size=(60, 3)), rng.integers(0, 3, 60)
    zq, yq = rng.normal(size=(25, 3)), rng.integers(0, 3, 25)
    d = ((zq[:, None] - zt[None]) ** 2).sum(-1)
    nn_idx = np.argsort(d, axis=1)[:, :5]
    pred = np.array([np.bincount(yt[i], minlength=3).argmax() for i in nn_idx])  # ties -> smallest class
    assert metrics.knn_accuracy(zt, yt, zq, yq, k=5) == pytest.approx((pred == yq).mean())


def test_representation_metrics_only_with_labels(trained, digits):
    m = trained["ae"]
    res = metrics.representation_metrics(m, digits)
    assert set(res) == {"probe_linear_accuracy", "probe_knn_accuracy", "cluster_accuracy", "cluster_nmi"}
    assert all(0 <= v <= 1 for v in res.values())
    assert res["probe_linear_accuracy"] > 0.3  # far above chance (0.1) even after 2 epochs
    unlabeled = dataclasses.replace(digits, y_train=None, y_val=None, y_test=None)
    assert metrics.representation_metrics(m, unlabeled) == {}
    one_class = digits.subset_class(3)
    assert metrics.representation_metrics(m, one_class) == {}


# --------------------------------------------------------------------------------------------------
# Anomaly detection


def test_detection_metrics_perfect_reversed_and_by_hand():
    target = np.array([0, 0, 0, 1, 1])
    assert metrics.detection_metrics([0.1, 0.2, 0.3, 0.8, 0.9], target) == (1.0, 1.0)
    auroc, _ = metrics.detection_metrics([0.9, 0.8, 0.7, 0.1, 0.2], target)
    assert auroc == 0.0
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=50), rng.integers(0, 2, 50)
    pos, neg = s[t == 1], s[t == 0]
    mann_whitney = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    order = np.argsort(-s)
    hits = np.cumsum(t[order])
    ap = sum(hits[i] / (i + 1) for i in range(len(s)) if t[order][i]) / t.sum()
    auroc, ap_sk = metrics.detection_metrics(s, t)
    assert auroc == pytest.approx(mann_whitney) and ap_sk == pytest.approx(ap)


def test_detection_needs_both_classes():
    with pytest.raises(DataError, match="both normal and anomalous"):
        metrics.detection_metrics([0.1, 0.2], [0, 0])


def test_anomaly_scores_and_metrics(trained, digits):
    x, _ = digits.split("test")
    m = trained["ae"]
    scores = metrics.anomaly_scores(m, x)
    assert torch.allclose(scores["recon_error"], metrics.sse_per_example(x, metrics.reconstructions(m, x)))
    inverted = 1 - x[:100]  # white background: far from every digit the model saw
    res = metrics.anomaly_metrics(m, torch.cat([x, inverted]), torch.cat([torch.zeros(len(x)), torch.ones(100)]))
    assert res["anomaly_auroc_recon_error"] > 0.95
    assert res["anomaly_fraction"] == pytest.approx(100 / (len(x) + 100))
    vae = trained["vae"]
    res = metrics.anomaly_metrics(vae, torch.cat([x, inverted]), torch.cat([torch.zeros(len(x)), torch.ones(100)]))
    assert {"anomaly_auroc_neg_elbo", "anomaly_ap_neg_elbo"} <= set(res)
    assert res["anomaly_auroc_neg_elbo"] > 0.95


def test_anomaly_evaluation_normal_class_and_extra_data(trained, digits):
    m = trained["ae"]
    res = metrics.anomaly_evaluation(m, digits, normal_class=0)
    y = digits.y_test
    assert res["anomaly_fraction"] == pytest.approx((y != 0).float().mean().item())
    by_name = metrics.anomaly_evaluation(m, digits, normal_class="0")
    assert by_name == res
    noise = torch.rand((50, *digits.shape), generator=torch.Generator().manual_seed(0))
    res = metrics.anomaly_evaluation(m, digits, anomalies=noise)
    assert res["anomaly_fraction"] == pytest.approx(50 / (len(y) + 50))
    with pytest.raises(DataError, match="not a class"):
        metrics.anomaly_evaluation(m, digits, normal_class=12)
    # a label-using model scores every example as the normal class (no test label is used)
    res = metrics.anomaly_evaluation(trained["cvae"], digits, normal_class=3)
    assert "anomaly_auroc_neg_elbo" in res
    with pytest.raises(ConfigError, match="normal class"):
        metrics.anomaly_evaluation(trained["cvae"], digits, anomalies=noise)


# --------------------------------------------------------------------------------------------------
# Diagnostics


def test_mmd_identical_same_distribution_and_shifted():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 4, generator=g)
    b = torch.randn(300, 4, generator=g)
    assert abs(metrics.mmd2(a, a)) < 0.01
    assert abs(metrics.mmd2(a, b)) < 0.01
    assert metrics.mmd2(a, b + 1.0) > 0.1
    assert metrics.mmd2(a, b + 1.0) < metrics.mmd2(a, b + 2.0)


def test_mmd_matches_double_loop():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(7, 3, generator=g), torch.randn(5, 3, generator=g) + 0.5
    k = 3

    def kern(u, v):
        d2 = float(((u - v) ** 2).sum())
        return sum(math.exp(-d2 / (2 * s * k)) for s in metrics.MMD_SCALES) / len(metrics.MMD_SCALES)

    saa = sum(kern(a[i], a[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    sbb = sum(kern(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    sab = sum(kern(a[i], b[j]) for i in range(7) for j in range(5)) / 35
    assert metrics.mmd2(a, b) == pytest.approx(saa + sbb - 2 * sab, rel=1e-6)


def test_active_units_on_constructed_posterior():
    g = torch.Generator().manual_seed(0)
    stds = torch.tensor([0.0, 0.05, 0.2, 1.0])  # variances 0, 0.0025, 0.04, 1 -> the last two are active
    mu = torch.randn(5000, 4, generator=g) * stds + torch.tensor([3.0, -1.0, 0.0, 2.0])
    n, a = metrics.active_units(mu)
    assert n == 2
    assert torch.allclose(a, mu.var(0, unbiased=False))


def test_sparsity_stats_by_hand():
    h = torch.tensor([[0.0, 2.0, 0.001, 0.0], [0.0, 1.0, 0.5, 0.0]])
    res = metrics.sparsity_stats(h)
    # threshold 0.01 * 2.0 = 0.02: near zero are 0, 0.001, 0, 0, 0 (5 of 8); units 0 and 3 are dead
    assert res["sparsity_near_zero_fraction"] == pytest.approx(5 / 8)
    assert res["sparsity_dead_units"] == 2
    assert res["sparsity_active_per_example"] == pytest.approx(1.5)
    assert res["sparsity_mean_activation"] == pytest.approx(h.abs().mean().item())


def test_contraction_against_autograd_jacobian(digits):
    cae = aekit.build("cae", dataset=digits, seed=0, hidden=[], code_activation="sigmoid", latent_dim=6)
    x = digits.x_test[:20]
    small = dataclasses.replace(digits, x_test=x, y_test=digits.y_test[:20])
    res = diagnose(cae, "contraction", small)
    norms, derivs = [], []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: cae.encode(v.unsqueeze(0))[0], xi)
        norms.append(jac.pow(2).sum().sqrt())
        pre = cae.encoder.mlp.layers[0](xi.flatten().unsqueeze(0))
        derivs.append(torch.sigmoid(pre) * (1 - torch.sigmoid(pre)))
    assert res["contraction_jacobian_norm"] == pytest.approx(torch.stack(norms).mean().item(), rel=1e-4)
    assert res["contraction_saturated_fraction"] == pytest.approx((torch.cat(derivs) < 0.05).float().mean().item())


def test_contraction_relu_saturation_is_off_units(trained, digits):
    sae = trained["sae"]  # relu code
    res = diagnose(sae, "contraction", digits)
    h = metrics.codes(sae, digits.x_test)
    assert res["contraction_saturated_fraction"] == pytest.approx((h <= 0).float().mean().item())


def test_denoising_gain_by_hand_and_reproducible(trained, digits):
    dae = trained["dae"]
    res = diagnose(dae, "denoising", digits, seed=3)
    x = digits.x_test
    noisy = dae.corrupt(x, generator=torch.Generator().manual_seed(3))
    den = metrics.reconstructions(dae, noisy)
    assert res["denoise_psnr_gain_db"] == pytest.approx(metrics.psnr(x, den) - metrics.psnr(x, noisy), abs=1e-5)
    assert res["denoise_psnr_noisy_db"] == pytest.approx(metrics.psnr(x, noisy), abs=1e-5)
    assert diagnose(dae, "denoising", digits, seed=3) == res
    assert res.items() <= metrics.diagnostic_metrics(dae, digits, seed=3).items()  # what evaluate() reports


def test_sparsity_diagnostic_reports_the_kl_target(trained, digits):
    res = diagnose(trained["sae"], "sparsity", digits)  # l1: no target
    assert res == metrics.sparsity_stats(metrics.codes(trained["sae"], digits.x_test))
    kl = aekit.build("sae", dataset=digits, seed=0, latent_dim=4, hidden=[32], sparsity="kl", rho=0.1)
    assert diagnose(kl, "sparsity", digits)["sparsity_target_rho"] == 0.1


class _FakeConditional(torch.nn.Module):
    """sample(n, y) returns real test images of class y (or of class 0 when ``ignore_y``)."""

    capabilities = Capabilities(generative=True, conditional=True, needs_labels=True)
    name = "fake"

    def __init__(self, ds, ignore_y=False):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.x, self.y, self.ignore_y = ds.x_test, ds.y_test, ignore_y

    @property
    def device(self):
        return self.p.device

    def sample(self, n, y=None, generator=None):
        out = []
        for c in y.tolist():
            pool = (self.y == (0 if self.ignore_y else c)).nonzero().flatten()
            out.append(self.x[pool[torch.randint(len(pool), (1,), generator=generator)]])
        return torch.cat(out)


def test_conditional_accuracy_with_real_images(digits):
    good = metrics.conditional_accuracy_metrics(_FakeConditional(digits), digits, per_class=20)
    real_acc = good["cond_gen_classifier_test_accuracy"]
    assert real_acc > 0.9
    assert good["cond_gen_accuracy"] > 0.9
    bad = metrics.conditional_accuracy_metrics(_FakeConditional(digits, ignore_y=True), digits, per_class=20)
    assert bad["cond_gen_accuracy"] < 0.2  # only the class-0 row is right
    clf1, _ = reference.reference_classifier(digits)
    clf2, _ = reference.reference_classifier(digits)
    assert clf1 is clf2  # cached per dataset


class _SpecObject:
    """A data spec in the shape of datasets.DataConfig: an object with to_dict()."""

    def __init__(self, d):
        self.d = d

    def to_dict(self):
        return dict(self.d)


def test_reference_classifier_cache_is_bounded_and_keyed_by_contents(digits, monkeypatch):
    monkeypatch.setattr(reference, "_CACHE", type(reference._CACHE)())
    spec = digits.spec.to_dict() if hasattr(digits.spec, "to_dict") else dict(digits.spec)
    variants = [dataclasses.replace(digits, spec={**spec, "seed": s}) for s in range(reference.CACHE_SIZE + 1)]
    first = reference.reference_classifier(variants[0], steps=2)
    assert reference.reference_classifier(variants[0], steps=2) is first
    for ds in variants[1:]:
        reference.reference_classifier(ds, steps=2)
    assert len(reference._CACHE) == reference.CACHE_SIZE  # the least recently used one went
    assert reference.reference_classifier(variants[0], steps=2) is not first
    # a spec object with to_dict() keys like the same dict; the normalization statistics do not count
    as_object = dataclasses.replace(digits, spec=_SpecObject({**spec, "stats": {"mean": [1.0]}}))
    assert reference.dataset_key(as_object) == reference.dataset_key(dataclasses.replace(digits, spec=spec))
    assert reference.dataset_key(variants[0]) != reference.dataset_key(variants[1])


def test_reference_classifier_is_the_same_as_before(digits):
    """The classifier moved out of metrics unchanged: same seed, same loop, same weights and accuracy."""
    clf, acc = reference.reference_classifier(digits, seed=0, steps=5)
    x, y = digits.split("train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = torch.nn.Sequential(torch.nn.Linear(x[0].numel(), 256), torch.nn.ReLU(),
                                  torch.nn.Linear(256, digits.num_classes))
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3, weight_decay=1e-4)
    xf = x.flatten(1).float()
    for _ in range(5):
        b = torch.randint(0, x.shape[0], (128,), generator=g)
        loss = torch.nn.functional.cross_entropy(ref(xf[b]), y[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for a, b in zip(clf.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    xt, yt = digits.split("test")
    assert acc == (ref(xt.flatten(1)).argmax(1) == yt).float().mean().item()


def test_conditional_accuracy_empty_for_unlabelled_models(trained, digits):
    assert metrics.conditional_accuracy_metrics(trained["aae"], digits) == {}


# --------------------------------------------------------------------------------------------------
# evaluate(): dispatch by what the model declares


DIAGNOSTIC_KEYS = {
    "denoising": {"denoise_psnr_gain_db", "denoise_mse_noisy", "denoise_mse_denoised"},
    "sparsity": {"sparsity_mean_activation", "sparsity_near_zero_fraction", "sparsity_dead_units"},
    "contraction": {"contraction_jacobian_norm", "contraction_saturated_fraction"},
    "active_units": {"active_units", "active_units_fraction"},
    "prior_mmd": {"prior_mmd2"},
    "conditional_accuracy": {"cond_gen_accuracy", "cond_gen_classifier_test_accuracy"},
}
EXPECTED = {  # the diagnostics whose numbers each family reports
    "ae": {"contraction"}, "dae": {"denoising", "contraction"}, "sae": {"sparsity", "contraction"},
    "cae": {"contraction"}, "vae": {"active_units", "prior_mmd"}, "iwae": {"active_units", "prior_mmd"},
    "cvae": {"active_units", "prior_mmd", "conditional_accuracy"}, "aae": {"prior_mmd"},
    "aae_supervised": {"prior_mmd", "conditional_accuracy"},
}


@pytest.mark.parametrize("key", list(FAMILY_OPTS))
def test_evaluate_dispatch(trained, digits, key):
    if key not in trained:
        pytest.skip(f"{key} is not registered")
    m = trained[key]
    res = metrics.evaluate(m, digits, iw_samples=5)
    base = {"mse", "sse_per_example", "psnr_db", "bce_nats", "probe_linear_accuracy", "probe_knn_accuracy",
            "cluster_accuracy", "cluster_nmi"}
    assert base <= set(res)
    for diag, keys in DIAGNOSTIC_KEYS.items():
        if diag in EXPECTED[key]:
            assert keys <= set(res), (diag, set(res))
        else:
            assert not keys & set(res), (diag, set(res))
    likelihood = {"elbo_nats", "iw_log_likelihood_nats"}
    assert (likelihood <= set(res)) == m.capabilities.probabilistic
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in res.values()), res


def test_evaluate_is_reproducible_and_keeps_global_rng(trained, digits):
    m = trained["vae"]
    state = torch.get_rng_state()
    a = metrics.evaluate(m, digits, iw_samples=5, normal_class=1)
    assert torch.equal(state, torch.get_rng_state())
    b = metrics.evaluate(m, digits, iw_samples=5, normal_class=1)
    assert a == b


def test_unknown_diagnostic_is_a_clear_error(trained, digits, monkeypatch):
    m = trained["ae"]
    monkeypatch.setattr(m, "capabilities", dataclasses.replace(m.capabilities, diagnostics=("nonsense",)))
    with pytest.raises(ConfigError, match="nonsense.*known diagnostics"):
        metrics.diagnostic_metrics(m, digits)


def test_every_declared_diagnostic_is_known(trained):
    shared = set(metrics.SHARED_DIAGNOSTICS)
    for name, cls in registry.MODELS.items():
        assert set(cls.capabilities.diagnostics) <= set(cls.diagnostic_functions) | shared, name
    for key, m in trained.items():  # the capabilities an instance gets from its config, too
        assert set(m.capabilities.diagnostics) <= set(m.diagnostic_functions) | shared, key


def test_iw_samples_zero_skips_the_estimate_everywhere(trained, digits):
    """One rule for the number of importance samples: 0 skips the log-likelihood estimate, negative is an error."""
    m = trained["vae"]
    res = metrics.likelihood_metrics(m, digits, iw_samples=0)
    assert "elbo_nats" in res and "iw_log_likelihood_nats" not in res
    assert "iw_log_likelihood_nats" not in metrics.evaluate(m, digits, iw_samples=0, representation=False)
    with pytest.raises(ConfigError, match="iw-samples"):
        metrics.likelihood_metrics(m, digits, iw_samples=-1)
    with pytest.raises(ConfigError, match="mc-samples"):
        metrics.likelihood_metrics(m, digits, mc_samples=0)


def test_table_dataset_metrics(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * 3 + 10
    y = (x[:, 0] > 10).astype(np.int64)
    np.savez(tmp_path / "t.npz", x=x, y=y)
    ds = aekit.datasets.load(str(tmp_path / "t.npz"))
    m = aekit.build("dae", dataset=ds, seed=0, latent_dim=3, hidden=[16])
    aekit.fit(m, ds, aekit.TrainConfig(epochs=2), quiet=True)
    res = metrics.evaluate(m, ds)
    assert "r2" in res and "psnr_db" not in res and "denoise_psnr_noisy_db" not in res
    # each column's error in its own units: independent of the standardization
    x_hat = metrics.reconstructions(m, ds.x_test)
    user = ds.to_user_units(x_hat).double().numpy()
    raw = ds.to_user_units(ds.x_test).double().numpy()
    want = np.sqrt(((user - raw) ** 2).mean(0))
    got = [res[f"rmse:{name}"] for name in (ds.feature_names or [f"f{i}" for i in range(5)])]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    r2 = 1 - ((user - raw) ** 2).mean(0) / raw.var(0)
    assert res["r2"] == pytest.approx(r2.mean(), rel=1e-6)
    assert "denoise_psnr_gain_db" in res and "probe_linear_accuracy" in res
