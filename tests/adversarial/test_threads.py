"""Several threads evaluating one model at once: the same numbers as one thread, the caller's global RNG
untouched, and the model's training flag never changed (not even for a moment, as another thread sees it).
"""

import threading

import pytest
import torch

import aekit
from aekit import metrics, registry
from aekit.models.base import Autoencoder

THREADS = 4
FAMILIES = sorted(registry.MODELS)


@pytest.fixture(scope="module")
def data():
    return aekit.datasets.load("digits", limit=300)


def small(name: str, data, training: bool) -> Autoencoder:
    opts = {"prior": "mixture", "supervised": True} if name == "aae" else {}
    model = registry.build_for(name, data, seed=0, hidden=[32], latent_dim=4, **opts)
    return model.train(training)


def evaluation(model, data) -> tuple:
    """Every evaluation entry point of the review: evaluate, codes, reconstructions (and so encode)."""
    x, y = data.split("test")
    y = y if model.capabilities.uses_labels else None
    return (metrics.evaluate(model, data, iw_samples=5, mc_samples=2, seed=1, normal_class=0),
            metrics.codes(model, x, y), metrics.reconstructions(model, x, y))


def assert_same(a: tuple, b: tuple) -> None:
    assert a[0] == b[0]  # every metric exactly equal
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


@pytest.mark.parametrize("training", [True, False], ids=["train-mode", "eval-mode"])
@pytest.mark.parametrize("name", FAMILIES)
def test_concurrent_evaluation_equals_one_thread_and_changes_nothing(name, training, data):
    model = small(name, data, training)
    serial = evaluation(model, data)
    rng = torch.get_rng_state()
    start = threading.Barrier(THREADS)
    results, errors = [None] * THREADS, []

    def work(i):
        try:
            start.wait()
            results[i] = evaluation(model, data)
        except BaseException as e:  # noqa: BLE001 - reported below, with the thread's exception
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for r in results:
        assert_same(r, serial)
    assert torch.equal(torch.get_rng_state(), rng), "evaluation moved the caller's global RNG"
    assert model.training is training


def test_evaluation_never_touches_the_global_rng_or_the_training_flag(data, monkeypatch):
    """Deterministic form of the race: evaluation neither seeds nor restores torch's global RNG (which
    another thread may be drawing from), and the model is in the mode its owner set at every call of its
    networks (another thread may be training it)."""
    models = [(name, training, small(name, data, training)) for name in FAMILIES for training in (True, False)]
    writes = []
    monkeypatch.setattr(torch, "manual_seed", lambda *a: writes.append("manual_seed"))
    monkeypatch.setattr(torch, "set_rng_state", lambda *a: writes.append("set_rng_state"))
    for name, training, model in models:
        seen = []
        for net in (model.encoder, model.decoder):
            net.register_forward_pre_hook(lambda mod, args, m=model, seen=seen: seen.append(m.training))
        rng = torch.get_rng_state()
        evaluation(model, data)
        assert not writes, (name, writes)
        assert torch.equal(torch.get_rng_state(), rng), name
        assert seen and set(seen) == {training}, (name, training)


@pytest.mark.parametrize("name", FAMILIES)
def test_evaluation_methods_do_not_depend_on_the_training_flag(name, data):
    """Why evaluation may leave the flag alone: what it calls gives the same result in either mode."""
    x, y = data.split("test")
    x, y = x[:16], (y[:16] if name in ("cvae", "aae") else None)
    model = small(name, data, True)

    def outputs():
        g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
        out = [model.encode(x, y), model.reconstruct(x, y), model.decode(torch.ones(3, 4), y[:3] if y is not None
                                                                          else None)]
        if model.capabilities.probabilistic:
            out += list(model.elbo(x, y, mc_samples=2, generator=g()).values())
            out += [model.log_likelihood(x, y, k=3, generator=g())]
        if model.capabilities.generative:
            out += [model.sample(3, y=y[:3] if y is not None else None, generator=g()),
                    model.prior_sample(3, generator=g())]
        if hasattr(model, "corrupt"):
            out += [model.corrupt(x, generator=g())]
        out += [t for t in model.reconstruction_rows(x, y, generator=g())[1].values()]
        return [t.detach() for t in out]

    with torch.no_grad():
        train_out = outputs()
        model.eval()
        eval_out = outputs()
    assert all(torch.equal(a, b) for a, b in zip(train_out, eval_out))
