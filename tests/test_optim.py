"""aekit.optim.Adam against torch.optim.Adam(fused=True): the same parameters and moments after every step,
checkpoints interchangeable both ways, and no torch._dynamo import on the trainer's CPU path."""

import subprocess
import sys

import pytest
import torch

from aekit import optim


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def _grad_step(net, opt, x):
    opt.zero_grad(set_to_none=True)
    net(x).pow(2).sum().backward()
    opt.step()


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_bit_identical_to_torch_fused_adam(weight_decay):
    a, b = _net(), _net()
    ours = optim.Adam(a.parameters(), lr=3e-3, weight_decay=weight_decay)
    ref = torch.optim.Adam(b.parameters(), lr=3e-3, weight_decay=weight_decay, fused=True)
    gen = torch.Generator().manual_seed(1)
    for step in range(30):
        x = torch.randn(11, 7, generator=gen)
        if step == 10:  # the trainer's cosine schedule changes lr in the groups
            ours.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = 1e-3
        _grad_step(a, ours, x)
        _grad_step(b, ref, x)
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q), f"step {step}"
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert our_sd["param_groups"] == ref_sd["param_groups"]
    for i, s in ref_sd["state"].items():
        for k, v in s.items():
            assert torch.equal(our_sd["state"][i][k], v), (i, k)


def test_parameters_of_two_dtypes():
    """float32 and float64 parameters in one group: one kernel call per dtype, as torch.optim.Adam does."""
    def params():
        torch.manual_seed(3)
        return [torch.randn(4, 3, requires_grad=True), torch.randn(5, dtype=torch.float64, requires_grad=True)]

    a, b = params(), params()
    ours, ref = optim.Adam(a, lr=1e-2), torch.optim.Adam(b, lr=1e-2, fused=True)
    for step in range(5):
        for ps, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            (ps[0].sin().sum() + ps[1].pow(3).sum() * (step + 1)).backward()
            opt.step()
        assert all(torch.equal(p, q) for p, q in zip(a, b)), step


def test_state_dict_round_trip_both_ways():
    """Checkpointed by one, resumed under the other: the continuation equals the uninterrupted run."""
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(9, 7, generator=gen) for _ in range(12)]
    whole = _net()
    opt = torch.optim.Adam(whole.parameters(), lr=1e-2, fused=True)
    for x in xs:
        _grad_step(whole, opt, x)
    for first, second in ((torch.optim.Adam, optim.Adam), (optim.Adam, torch.optim.Adam)):
        net = _net()
        kw = {"fused": True} if first is torch.optim.Adam else {}
        o1 = first(net.parameters(), lr=1e-2, **kw)
        for x in xs[:6]:
            _grad_step(net, o1, x)
        sd = o1.state_dict()
        kw = {"fused": True} if second is torch.optim.Adam else {}
        o2 = second(net.parameters(), lr=1.0, **kw)  # lr comes from the state
        o2.load_state_dict(sd)
        for x in xs[6:]:
            _grad_step(net, o2, x)
        for p, q in zip(net.parameters(), whole.parameters()):
            assert torch.equal(p, q), (first, second)


def test_bad_input_and_mismatched_state():
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])
    with pytest.raises(ValueError, match="floating-point CPU"):
        optim.Adam([torch.zeros(3, dtype=torch.int64)])
    net = _net()
    o = optim.Adam(net.parameters())
    _grad_step(net, o, torch.randn(2, 7))
    other = torch.nn.Sequential(torch.nn.Linear(7, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    with pytest.raises(ValueError, match="shape"):
        optim.Adam(other.parameters()).load_state_dict(o.state_dict())
    with pytest.raises(ValueError, match="number of parameters"):
        optim.Adam(list(other.parameters())[:2]).load_state_dict(o.state_dict())


def test_make_picks_torch_where_needed():
    net = _net()
    assert isinstance(optim.make(net.parameters(), 1e-3, 0.0, torch.device("cpu")), optim.Adam)
    assert isinstance(optim.make(net.parameters(), 1e-3, 0.0, torch.device("cpu"), plain=False), torch.optim.Adam)


def test_cpu_training_never_imports_dynamo():
    """The point of aekit.optim: a CPU fit (with gradient clipping) leaves torch._dynamo unimported."""
    code = ("import sys, numpy as np, aekit\n"
            "x = np.random.default_rng(0).normal(size=(64, 5)).astype('float32')\n"
            "ds = aekit.datasets.from_arrays(x)\n"
            "model = aekit.build('ae', dataset=ds)\n"
            "aekit.fit(model, ds, aekit.TrainConfig(epochs=2, grad_clip=1.0), quiet=True)\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
