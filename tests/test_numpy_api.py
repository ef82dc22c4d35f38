"""The Python API takes what Python users hold: numpy arrays, lists and tensors of any dtype (aekit.arraylike)."""

import warnings

import numpy as np
import pytest
import torch

import aekit
from aekit import arraylike, metrics

FAMILIES = list(aekit.MODELS)
N = 24


@pytest.fixture(scope="module", params=FAMILIES)
def case(request, digits):
    """(model, x (N, *shape) float32 tensor, labels (N,) int64 tensor or None)."""
    model = aekit.build(request.param, dataset=digits, latent_dim=4, hidden=[16], seed=0)
    y = digits.y_test[:N] if model.capabilities.uses_labels else None
    return model, digits.x_test[:N], y


def _np(t):
    return None if t is None else t.numpy()


def _reference(model, x, y):
    """The float32 tensor path: the family's own code, as the training objectives call it."""
    with torch.no_grad():
        z = model.encode(x, y)
        return z, model.decode(z, y), model.reconstruct(x, y)


@pytest.mark.parametrize("kind", ["float32", "float64", "list", "tensor64"])
def test_every_input_kind_gives_the_tensor_values(case, kind):
    model, x, y = case
    z_ref, d_ref, r_ref = _reference(model, x, y)
    conv = {"float32": lambda t: t.numpy(), "float64": lambda t: t.double().numpy(), "list": lambda t: t.tolist(),
            "tensor64": lambda t: t.double()}[kind]
    yk = None if y is None else (y if kind == "tensor64" else conv(y) if kind == "list" else y.numpy())
    z, r, d = model.encode(conv(x), yk), model.reconstruct(conv(x), yk), model.decode(conv(z_ref), yk)
    for got, ref in ((z, z_ref), (r, r_ref), (d, d_ref)):
        if kind == "tensor64":
            assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
            got = got.detach()
        else:  # numpy in (or a list) -> numpy out, in the input's float dtype (a list: the model's)
            assert isinstance(got, np.ndarray) and got.dtype == (np.float64 if kind == "float64" else np.float32)
            got = torch.from_numpy(got)
        torch.testing.assert_close(got, ref.to(got.dtype), rtol=0, atol=0)


def test_tensors_keep_autograd_and_arrays_run_without_it(case):
    model, x, y = case
    assert model.encode(x, y).requires_grad  # the tensor path is differentiable, as with any nn.Module
    z64 = model.encode(x.double(), y)
    assert z64.requires_grad and z64.dtype == torch.float64
    with torch.no_grad():
        assert not model.encode(x.double(), y).requires_grad
    z = model.encode(x.numpy(), _np(y))
    assert isinstance(z, np.ndarray) and z.flags.writeable
    if model.capabilities.generative:
        s = model.sample(3, y[:3] if model.capabilities.needs_labels else None, generator=torch.Generator())
        assert not s.requires_grad


def test_probabilistic_methods_take_arrays(case):
    model, x, y = case
    if not model.capabilities.probabilistic:
        pytest.skip("not probabilistic")
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    ref = model.elbo(x, y, mc_samples=2, generator=g())
    got = model.elbo(x.double().numpy(), _np(y), mc_samples=2, generator=g())
    assert set(got) == set(ref) and all(isinstance(v, np.ndarray) and v.dtype == np.float64 for v in got.values())
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k].detach().double().numpy())
    ll = model.log_likelihood(x.numpy(), _np(y), k=5, generator=g())
    np.testing.assert_array_equal(ll, model.log_likelihood(x, y, k=5, generator=g()).numpy())


def test_metrics_take_arrays(case):
    model, x, y = case
    z, _, r = _reference(model, x, y)
    np.testing.assert_array_equal(metrics.codes(model, x.numpy(), _np(y)), z.numpy())
    np.testing.assert_array_equal(metrics.reconstructions(model, x.tolist(), _np(y)), r.numpy())
    ref = metrics.anomaly_scores(model, x, y, mc_samples=2)
    got = metrics.anomaly_scores(model, x.numpy(), _np(y), mc_samples=2)
    assert set(got) == set(ref) == ({"recon_error", "neg_elbo"} if model.capabilities.probabilistic
                                    else {"recon_error"})
    for k in ref:
        assert isinstance(got[k], np.ndarray) and not ref[k].requires_grad
        np.testing.assert_array_equal(got[k], ref[k].numpy())


def test_large_arrays_go_in_batches(case, monkeypatch):
    model, x, y = case
    rows = []
    hook = model.encoder.register_forward_pre_hook(lambda net, args: rows.append(args[0].shape[0]))
    try:
        monkeypatch.setattr(arraylike, "BATCH_ROWS", 10)
        z = model.encode(x.numpy(), _np(y))
        assert rows == [10, 10, N - 20]
        rows.clear()
        scores = metrics.anomaly_scores(model, x.numpy(), _np(y), batch_size=16)["recon_error"]
        passes = 2 if model.capabilities.probabilistic else 1  # the reconstruction and the ELBO, per batch
        assert max(rows) == 16 and sum(rows) == passes * N
        rows.clear()
        z_ref = model.encode(x, y)  # a tensor: the caller's batch, one call
        assert rows == [N]
    finally:
        hook.remove()
    np.testing.assert_array_equal(z, z_ref.detach().numpy())
    np.testing.assert_array_equal(scores, metrics.anomaly_scores(model, x, y)["recon_error"].numpy())


def test_wrong_inputs_are_one_line(case):
    model, x, y = case
    yn = _np(y)
    with pytest.raises(aekit.DataError, match=r"samples of shape \(5,\).*input shape \(1, 8, 8\)"):
        model.encode(np.zeros((3, 5)), None if y is None else yn[:3])
    with pytest.raises(aekit.DataError, match="integers 0..255"):
        model.reconstruct((x.numpy() * 255).astype(np.uint8), yn)
    with pytest.raises(aekit.DataError, match="real numbers"):
        model.encode(np.full(x.shape, "a"), yn)
    with pytest.raises(aekit.DataError, match="rows of equal length"):
        model.encode([[0.0, 1.0], [0.0]], yn)
    with pytest.raises(aekit.DataError, match=r"decodes codes of shape \(B, 4\)"):
        model.decode(np.zeros((2, 3)), None if y is None else yn[:2])
    if y is not None:
        with pytest.raises(aekit.DataError, match="one label"):
            model.encode(x.numpy(), yn[:3])


def test_exact_integers_and_empty_arrays(case):
    model, x, y = case
    binary = (x > 0.5).to(torch.uint8)
    z = model.encode(binary.numpy(), _np(y))  # 0/1 integers: exact values, no rescaling
    np.testing.assert_array_equal(z, model.encode(binary.float(), y).detach().numpy())
    assert model.encode(binary, y).dtype == torch.float32  # an integer tensor: the model's dtype
    frozen, labels = x.numpy().copy(), None if y is None else y.numpy().copy()
    frozen.setflags(write=False)
    if labels is not None:
        labels.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about read-only arrays it is handed
        np.testing.assert_array_equal(model.encode(frozen, labels), model.encode(x, y).detach().numpy())
    empty = model.encode(x[:0].numpy(), None if y is None else _np(y)[:0])
    assert isinstance(empty, np.ndarray) and empty.shape == (0, 4)


def test_training_objectives_keep_the_tensor_path(case, monkeypatch):
    """The objectives never convert (no batching, no no_grad): their gradients reach every network."""
    model, x, y = case

    def refuse(*args, **kwargs):
        raise AssertionError("a training objective went through the array conversion")

    monkeypatch.setattr(arraylike, "map_rows", refuse)
    monkeypatch.setattr(arraylike, "call_converted", refuse)
    was_training = model.training
    model.train()
    try:
        for group, objective in model.update_phases():
            model.zero_grad(set_to_none=True)
            objective(x, y).loss.backward()
            params = model.param_groups()[group]
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), group
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
