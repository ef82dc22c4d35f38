import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import aekit
from aekit import registry, trainer
from aekit.config import TrainConfig
from aekit.errors import ConfigError
from aekit.metrics import prior_mmd_metrics
from aekit.regularizers import adversarial_discriminator_loss, adversarial_generator_loss, r1_penalty


def tiny(ds, **opts):
    return registry.build_for("aae", ds, **{"latent_dim": 4, "hidden": [32], "disc_hidden": [16], **opts})


def test_adversarial_losses_match_their_formulas():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(7, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    expected = -torch.log(d_real).mean() - torch.log(1 - d_fake).mean()
    torch.testing.assert_close(adversarial_discriminator_loss(real, fake), expected)
    torch.testing.assert_close(adversarial_generator_loss(fake), -torch.log(d_fake).mean())
    big = torch.tensor([200.0, -200.0])  # from logits: finite where sigmoid saturates
    assert torch.isfinite(adversarial_discriminator_loss(big, big)) and torch.isfinite(adversarial_generator_loss(big))


@pytest.mark.parametrize("opts", [{}, {"prior": "mixture", "supervised": True}])
def test_each_phase_changes_only_its_group(digits, opts):
    m = tiny(digits, **opts)
    m.train()
    x, y = digits.x_train[:32], digits.y_train[:32]
    groups = m.param_groups()
    assert set(groups) == {"autoencoder", "discriminator", "generator"}
    ids = {g: {id(p) for p in ps} for g, ps in groups.items()}
    assert ids["generator"] == {id(p) for p in m.encoder.parameters()}
    assert ids["discriminator"] == {id(p) for p in m.discriminator.parameters()}
    assert not ids["autoencoder"] & ids["discriminator"]
    opts_ = {g: torch.optim.Adam(ps, lr=1e-2) for g, ps in groups.items()}
    for group, objective in m.update_phases():  # as the trainer runs them
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        m.zero_grad(set_to_none=True)
        objective(x, y).loss.backward()
        opts_[group].step()
        for n, p in m.named_parameters():
            if id(p) in ids[group]:
                assert not torch.equal(p, before[n]), (group, n)
            else:
                assert torch.equal(p, before[n]), (group, n)  # bit-identical


def test_gradients_reach_every_parameter_across_phases(digits):
    for opts in ({}, {"arch": "conv", "hidden": [8, 16]}, {"prior": "mixture", "supervised": True}):
        m = tiny(digits, **opts)
        x, y = digits.x_train[:64], digits.y_train[:64]
        reached = set()
        groups = m.param_groups()
        for group, objective in m.update_phases():
            m.zero_grad(set_to_none=True)
            objective(x, y).loss.backward()
            reached |= {id(p) for p in groups[group] if p.grad is not None and p.grad.abs().sum() > 0}
        missing = [n for n, p in m.named_parameters() if id(p) not in reached]
        assert not missing, (opts, missing)


def test_mixture_centres_lie_on_axes_or_on_the_circle(digits):
    """'axes' (the default): centre i at +radius on axis i, then -radius (a direction each); more components
    than 2 x latent_dim, or 'circle': the circle in dims 1-2."""
    c = tiny(digits, prior="mixture", n_components=6, mixture_radius=3.0).centers  # latent_dim 4
    want = torch.zeros(6, 4)
    want[[0, 1, 2, 3], [0, 1, 2, 3]] = 3.0
    want[[4, 5], [0, 1]] = -3.0
    assert torch.equal(c, want)
    many = tiny(digits, prior="mixture", n_components=9, mixture_radius=3.0).centers
    assert torch.equal(many, tiny(digits, prior="mixture", n_components=9, mixture_radius=3.0,
                                  mixture_layout="circle").centers)
    assert torch.equal(many[:, 2:], torch.zeros(9, 2))


def test_a_saved_mixture_config_without_a_layout_keeps_the_circle(tmp_path, digits):
    """Runs written before mixture_layout existed were trained with the circle; aekit.Run rebuilds them so,
    while a config built now gets the axes."""
    import json

    m = tiny(digits, prior="mixture", n_components=6)
    run = aekit.save(m, tmp_path / "r").path
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"].pop("mixture_layout") == "axes"
    (run / "config.json").write_text(json.dumps(cfg))
    old = aekit.Run.open(run)
    assert old.model_config.mixture_layout == "circle"
    assert torch.equal(old.model().centers, tiny(digits, prior="mixture", n_components=6,
                                                 mixture_layout="circle").centers)


def test_mixture_prior_components(digits):
    m = tiny(digits, prior="mixture", n_components=6, mixture_radius=3.0, mixture_std=0.2, mixture_layout="circle")
    c = m.centers
    assert c.shape == (6, 4)
    torch.testing.assert_close(c[:, :2].norm(dim=1), torch.full((6,), 3.0))
    assert torch.equal(c[:, 2:], torch.zeros(6, 2))
    angles = torch.atan2(c[:, 1], c[:, 0])
    torch.testing.assert_close(torch.remainder(angles.diff(), 2 * math.pi), torch.full((5,), 2 * math.pi / 6))
    g = torch.Generator().manual_seed(0)
    for k in range(6):
        z = m.prior_sample(4000, k, generator=g)
        torch.testing.assert_close(z.mean(0), c[k], atol=0.02, rtol=0)
        torch.testing.assert_close(z.std(0), torch.full((4,), 0.2), atol=0.01, rtol=0)
    z = m.prior_sample(6000, generator=g)  # uniform over components
    nearest = torch.cdist(z, c).argmin(1)
    counts = torch.bincount(nearest, minlength=6).float()
    assert (counts - 1000).abs().max() < 150, counts
    gauss = tiny(digits)
    z = gauss.prior_sample(5000, generator=g)
    assert z.mean(0).abs().max() < 0.05 and (z.std(0) - 1).abs().max() < 0.05
    with pytest.raises(ConfigError, match="no components"):
        gauss.prior_sample(3, 1)


def test_supervised_sampling_respects_labels(digits):
    m = tiny(digits, prior="mixture", supervised=True, mixture_std=0.3)
    assert m.capabilities.needs_labels and m.config.n_components == 10
    assert m.discriminator.layers[0].in_features == 4 + 10  # the discriminator sees one-hot(y)
    seen = []
    m.decoder.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    labels = torch.tensor([3, 3, 7, 0, 9, 1])
    out = m.sample(6, labels, generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, 1, 8, 8)
    assert torch.equal(torch.cdist(seen[-1], m.centers).argmin(1), labels)
    m.sample(50, 4)
    assert (torch.cdist(seen[-1], m.centers).argmin(1) == 4).all()
    with pytest.raises(ConfigError, match="pass y"):
        m.sample(4)
    with pytest.raises(ConfigError, match="0..9"):
        m.sample(2, 10)
    with pytest.raises(ConfigError, match="labels"):
        m(digits.x_train[:4])  # the discriminator needs y


def test_unsupervised_sampling_rejects_labels(digits):
    m = tiny(digits, prior="mixture")
    assert not m.capabilities.needs_labels and m.capabilities.generative and not m.capabilities.probabilistic
    assert m.sample(5, generator=torch.Generator().manual_seed(0)).shape == (5, 1, 8, 8)
    with pytest.raises(ConfigError, match="without labels"):
        m.sample(5, 2)


@pytest.mark.parametrize("opts, match", [
    ({"supervised": True}, "--prior mixture"),
    ({"prior": "mixture", "supervised": True, "n_components": 4}, "one component per class"),
    ({"prior": "mixture", "latent_dim": 1}, "latent_dim"),
    ({"prior": "mixture", "mixture_std": 0.0}, "mixture_std"),
    ({"prior": "swiss"}, "prior"),
    ({"disc_hidden": [0]}, "disc_hidden"),
    ({"disc_steps": 0}, "disc_steps"),
    ({"disc_penalty": -1.0}, "disc_penalty"),
    ({"adv_weight": -1.0}, "adv_weight"),
])
def test_bad_options(digits, opts, match):
    with pytest.raises(ConfigError, match=match):
        tiny(digits, **opts)


def test_supervised_needs_labelled_data():
    with pytest.raises(ConfigError, match="labels"):
        registry.build("aae", input_shape=[1, 8, 8], prior="mixture", supervised=True)


def test_validation_forward_reports_all_terms(digits):
    m = tiny(digits, prior="mixture", supervised=True)
    m.eval()
    out = m(digits.x_val[:32], digits.y_val[:32])
    assert set(out.terms) == {"recon", "disc", "gen"}
    assert out.loss.requires_grad and all(not v.requires_grad for v in out.terms.values())
    torch.testing.assert_close(out.loss, out.terms["recon"])


def test_training_save_and_load(digits, tmp_path):
    m = tiny(digits, latent_dim=2, hidden=[64], prior="mixture", supervised=True)
    res = trainer.fit(m, digits, TrainConfig(epochs=8, batch_size=64, lr=1e-3, seed=0), out_dir=tmp_path / "r",
                      quiet=True)
    first, last = res.history[0], res.history[-1]
    assert last["train"]["loss"] < first["train"]["loss"] - 1  # reconstruction
    assert {"recon", "disc", "gen"} <= set(last["train"])  # every phase logged
    loaded = aekit.load(tmp_path / "r")
    x = digits.x_test[:16]
    assert torch.equal(loaded.encode(x), res.model.encode(x))
    assert torch.equal(loaded.sample(4, 1, generator=torch.Generator().manual_seed(0)),
                       res.model.sample(4, 1, generator=torch.Generator().manual_seed(0)))


@pytest.mark.slow
def test_supervised_codes_move_to_their_class_component(digits):
    m = registry.build_for("aae", digits, seed=0, latent_dim=2, hidden=[64], prior="mixture", supervised=True)
    res = trainer.fit(m, digits, TrainConfig(epochs=100, batch_size=64, seed=0), quiet=True)
    with torch.no_grad():
        z = res.model.encode(digits.x_test)
    acc = (torch.cdist(z, res.model.centers).argmin(1) == digits.y_test).float().mean()
    assert acc > 0.3, acc  # chance: 0.1


def test_cli(cli, tmp_path):
    run = tmp_path / "aae"
    code, _, err = cli("train", "aae", "--prior", "mixture", "--supervised", "--epochs", "1", "--limit", "300",
                       "--hidden", "16", "--latent-dim", "3", "--quiet", "--out", run)
    assert code == 0, err
    code, out, err = cli("sample", run, "-n", "5", "--label", "2", "--out", tmp_path / "s.png")
    assert code == 0 and "class 2" in out, err
    code, out, err = cli("eval", run)
    assert code == 0, err
    code, _, err = cli("eval", run, "--eval-iw-samples", "10")
    assert code == 2 and "probabilistic" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("train", "aae", "--supervised", "--out", tmp_path / "bad")
    assert code == 2 and "--prior mixture" in err and len(err.strip().splitlines()) == 1


def test_one_hot_labels_reach_the_discriminator(digits):
    m = tiny(digits, prior="mixture", supervised=True)
    z, y = torch.randn(3, 4), torch.tensor([1, 2, 3])
    manual = m.discriminator(torch.cat([z, F.one_hot(y, 10).float()], 1)).squeeze(-1)
    torch.testing.assert_close(m._disc_logits(z, y), manual)


@pytest.mark.parametrize("opts", [{}, {"activation": "tanh", "disc_hidden": [16, 16]},
                                  {"prior": "mixture", "supervised": True, "activation": "elu"}])
def test_r1_penalty_matches_autograd(digits, opts):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(r1_penalty(w.expand(7, 5)), 0.5 * w.pow(2).sum())  # a linear D: grad = w
    m = tiny(digits, **opts)
    z = torch.randn(6, 4, generator=g, requires_grad=True)
    y = torch.tensor([0, 3, 3, 9, 1, 5]) if opts.get("supervised") else None
    logits, grad = m._disc_logits_and_grad(z, y)
    plain = m._disc_logits(z, y)
    torch.testing.assert_close(logits, plain)
    (want,) = torch.autograd.grad(plain.sum(), z, create_graph=True)  # independent: autograd's backward
    torch.testing.assert_close(grad, want)
    params = list(m.discriminator.parameters())
    ours = torch.autograd.grad(r1_penalty(grad), params, allow_unused=True)
    theirs = torch.autograd.grad(0.5 * want.pow(2).sum(1).mean(), params, allow_unused=True)
    for p, a, b in zip(params, ours, theirs):  # the discriminator minimises it: the same gradients
        zero = torch.zeros_like(p)
        torch.testing.assert_close(zero if a is None else a, zero if b is None else b)


def test_phases_step_the_decoder_discriminator_and_encoder(digits):
    m = tiny(digits, disc_steps=3)
    assert [g for g, _ in m.update_phases()] == ["autoencoder", *["discriminator"] * 3, "generator"]
    groups = {g: {id(p) for p in ps} for g, ps in m.param_groups().items()}
    assert groups["autoencoder"] == {id(p) for p in m.decoder.parameters()}  # the encoder learns in one phase
    assert m.lr_scales() == {"discriminator": 1.0}
    x = digits.x_train[:32]
    out = m.discriminator_loss(x)
    assert set(out.terms) == {"disc", "disc_penalty"} and out.terms["disc_penalty"] > 0
    assert tiny(digits, disc_penalty=0.0).discriminator_loss(x).terms["disc_penalty"] == 0
    m.zero_grad(set_to_none=True)
    gen = m.generator_loss(x)
    recon = -m.recon_log_prob(x, m.decoder(m.encoder(x))).mean()
    torch.testing.assert_close(gen.loss, recon + 5.0 * gen.terms["gen"])  # reconstruction + adv_weight * -log D


def test_default_training_matches_the_prior(digits):
    """A short run of the default AAE reaches the prior: MMD^2 0.003-0.004 here (seeds 0, 1), where the former
    scheme (one discriminator step, a separate reconstruction step on the encoder, no penalty) ends at 0.3."""
    m = registry.build_for("aae", digits, seed=0, latent_dim=8)
    res = trainer.fit(m, digits, TrainConfig(epochs=20, seed=0), quiet=True)
    assert prior_mmd_metrics(res.model, digits)["prior_mmd2"] < 0.02
    last = res.history[-1]["train"]
    assert {"recon", "disc", "disc_penalty", "gen"} <= set(last) and last["disc"] < 2 * math.log(2) + 0.2


def test_gradient_penalty_covers_prior_samples_and_codes(digits):
    """The penalty is gamma/2 of the mean of E_p |grad D|^2 (R1, prior samples) and E_q |grad D|^2 (R2, the
    codes), against autograd. With R1 alone the discriminator carved a dip around the codes it sees again and
    again, whose gradient pulled them inwards (docs/theory.md, section 5)."""
    m = tiny(digits, disc_penalty=0.7)
    z_fake = torch.randn(9, 4, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)
    loss, pen = m._disc(z_fake, None, 0.7)
    torch.manual_seed(3)  # the same prior draw
    z_real = m.prior_sample(9).requires_grad_(True)
    fake = z_fake.clone().requires_grad_(True)
    real_logits, fake_logits = m._disc_logits(z_real, None), m._disc_logits(fake, None)
    (g_real,) = torch.autograd.grad(real_logits.sum(), z_real)
    (g_fake,) = torch.autograd.grad(fake_logits.sum(), fake)
    assert g_fake.abs().sum() > 0
    want = 0.7 / 2 * (g_real.pow(2).sum(1).mean() + g_fake.pow(2).sum(1).mean()) / 2
    torch.testing.assert_close(pen, want)
    torch.testing.assert_close(loss, adversarial_discriminator_loss(real_logits, fake_logits))
    (w_grad,) = torch.autograd.grad(pen, m.discriminator.layers[0].weight)  # the discriminator learns from it
    assert w_grad.abs().sum() > 0


@pytest.mark.parametrize("opts", [{}, {"prior": "mixture", "supervised": True}])
def test_gaussian_posterior_is_sampled_in_training_and_encode_gives_its_mean(digits, opts):
    m = tiny(digits, posterior="gaussian", **opts)
    assert m.capabilities.stochastic_encoder and m.capabilities.has_posterior and not m.capabilities.probabilistic
    assert not tiny(digits, **opts).capabilities.has_posterior  # the default stays deterministic
    x, y = digits.x_train[:32], digits.y_train[:32]
    q = m.posterior(x)
    assert q.mean.shape == q.logvar.shape == (32, 4)
    assert torch.equal(m.encode(x), q.mean) and torch.equal(m.encode(x), m.encode(x))  # deterministic codes
    assert torch.equal(m.reconstruct(x), m.decode(q.mean))
    torch.manual_seed(5)
    z = m._codes(x)  # what every training phase uses: one reparameterized draw from torch's global generator
    torch.manual_seed(5)
    torch.testing.assert_close(z, q.mean + torch.exp(0.5 * q.logvar) * torch.randn(32, 4))
    assert not torch.allclose(z, q.mean)
    m.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    gen = m.generator_loss(x, y)
    torch.manual_seed(5)
    yd = y if opts else None
    want = -m.recon_log_prob(x, m.decoder(z)).mean() + 5.0 * adversarial_generator_loss(m._disc_logits(z, yd))
    torch.testing.assert_close(gen.loss, want)
    gen.loss.backward()  # the noise scale learns through the reparameterization
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoder.parameters())
    torch.manual_seed(5)
    a = m.discriminator_loss(x, y).loss
    torch.manual_seed(6)
    assert not torch.equal(a, m.discriminator_loss(x, y).loss)  # fresh codes (and prior samples) per step


def test_prior_mmd_samples_the_gaussian_posterior(digits):
    """The prior MMD draws the codes of a Gaussian-posterior AAE from q(z|x), as it does the VAE's (one draw per
    example with the diagnostic's generator), and uses the deterministic codes otherwise."""
    from aekit.metrics import aggregate_posterior_sample, codes, mmd2

    m = tiny(digits, posterior="gaussian")
    x = digits.x_test[:50]
    got = aggregate_posterior_sample(m, x, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        q = m.posterior(x)
    torch.testing.assert_close(got, q.sample(1, torch.Generator().manual_seed(3))[0])
    plain = tiny(digits)
    assert torch.equal(aggregate_posterior_sample(plain, x, generator=torch.Generator().manual_seed(3)),
                       codes(plain, x))
    assert math.isfinite(mmd2(got, torch.randn(50, 4)))
    with pytest.raises(ConfigError, match="--posterior gaussian"):
        plain.posterior(x)


def test_old_configs_without_the_posterior_key_stay_deterministic(digits):
    """Runs written before the option (config.json without "posterior") rebuild the deterministic encoder they
    were trained with; the v0.1.0 fixture's numbers are checked in tests/test_run.py."""
    cfg = tiny(digits).config.to_dict()
    assert cfg.pop("posterior") == "deterministic"
    old = registry.get("aae").Config.from_dict(cfg)
    assert old.posterior == "deterministic"
    m = registry.instantiate("aae", old, seed=0)
    assert m.encoder(digits.x_test[:2]).shape == (2, 4) and not m.capabilities.has_posterior
    loaded = aekit.load(Path(__file__).parents[1] / "fixtures" / "runs_v0_1_0" / "aae-digits-supervised")
    assert loaded.config.posterior == "deterministic" and not loaded.capabilities.has_posterior


def test_gaussian_posterior_save_and_load(digits, tmp_path):
    m = tiny(digits, posterior="gaussian")
    res = trainer.fit(m, digits, TrainConfig(epochs=2, batch_size=64, seed=0), out_dir=tmp_path / "r", quiet=True)
    loaded = aekit.load(tmp_path / "r")
    assert loaded.config.posterior == "gaussian" and loaded.capabilities.stochastic_encoder
    x = digits.x_test[:16]
    assert torch.equal(loaded.encode(x), res.model.encode(x))
    assert prior_mmd_metrics(loaded, digits) == prior_mmd_metrics(res.model, digits)  # seeded draws
    with pytest.raises(ConfigError, match="posterior"):
        tiny(digits, posterior="normal")
