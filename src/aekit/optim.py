"""Adam for CPU training without ``torch.optim``'s start-up cost.

Every method of ``torch.optim.Optimizer`` (its constructor, ``step``, ``zero_grad``, ``state_dict``) imports
``torch._dynamo`` on first use, to mark itself as not to be traced: about 1.3 s of the start of every command
that trains on a 2-core machine, as long as the whole training of a small table. ``Adam`` here makes the same
update through the same kernel (``torch._fused_adam_``, what ``torch.optim.Adam(fused=True)`` calls), so its
parameters and moments are bit-identical to torch's after any number of steps, and its ``state_dict`` is
torch's format (checkpoints stay interchangeable: a run checkpointed by one resumes under the other).

It covers what the trainer uses (one or more parameter groups with ``lr``, ``weight_decay``, ``betas``,
``eps``; ``step``, ``zero_grad``, ``state_dict``, ``load_state_dict``) and nothing else: ``make`` returns it
for CPU parameters without gradient scaling or compilation, and ``torch.optim.Adam`` otherwise.
tests/test_optim.py checks it against ``torch.optim.Adam`` step by step and through a state_dict round trip.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["Adam", "make"]

_GROUP_DEFAULTS = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
                   "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
                   "fused": True, "decoupled_weight_decay": False}


class Adam:
    """``torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)`` on CPU tensors."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        params = list(params)
        if not params:
            raise ValueError("Adam got an empty parameter list")
        for p in params:
            if p.device.type != "cpu" or not p.is_floating_point():
                raise ValueError(f"aekit.optim.Adam takes floating-point CPU tensors; got {p.dtype} on {p.device} "
                                 "(use torch.optim.Adam there)")
        group = dict(_GROUP_DEFAULTS, lr=float(lr), weight_decay=float(weight_decay), betas=tuple(betas),
                     eps=float(eps))
        group["params"] = params
        self.param_groups: list[dict] = [group]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            ps = [p for p in g["params"] if p.grad is not None]
            if not ps:
                continue
            for p in ps:
                if p.grad.is_sparse:
                    raise RuntimeError("Adam does not support sparse gradients")
                if p not in self.state:
                    self.state[p] = {"step": torch.zeros((), dtype=torch.float32),
                                     "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                     "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            beta1, beta2 = g["betas"]
            by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
            for p in ps:  # one kernel call per dtype, as torch groups them
                by_dtype.setdefault(p.dtype, []).append(p)
            for same in by_dtype.values():
                sts = [self.state[p] for p in same]
                steps = [s["step"] for s in sts]
                torch._foreach_add_(steps, 1)
                torch._fused_adam_(same, [p.grad for p in same], [s["exp_avg"] for s in sts],
                                   [s["exp_avg_sq"] for s in sts], [], steps, amsgrad=False, lr=g["lr"],
                                   beta1=beta1, beta2=beta2, weight_decay=g["weight_decay"], eps=g["eps"],
                                   maximize=False, grad_scale=None, found_inf=None)

    def state_dict(self) -> dict:
        """torch.optim.Optimizer's format: parameters numbered in group order, state by number."""
        index, groups, n = {}, [], 0
        for g in self.param_groups:
            ids = list(range(n, n + len(g["params"])))
            index.update({id(p): i for p, i in zip(g["params"], ids)})
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
            n += len(ids)
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state from ``state_dict()`` here or from torch.optim.Adam (one group per group, same sizes)."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(a["params"]) != len(b["params"]) for a, b in zip(groups, self.param_groups)):
            raise ValueError("loaded optimizer state has a different number of parameters or groups than this "
                             "optimizer")
        state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        saved = state_dict["state"]
        for new, old in zip(self.param_groups, groups):
            for p, i in zip(new["params"], old["params"]):
                s = saved.get(i, saved.get(str(i)))
                if s is None:
                    continue
                for k in ("exp_avg", "exp_avg_sq"):
                    if tuple(s[k].shape) != tuple(p.shape):
                        raise ValueError(f"loaded optimizer state {k} has shape {tuple(s[k].shape)}, the parameter "
                                         f"{tuple(p.shape)}")
                state[p] = {"step": torch.as_tensor(s["step"], dtype=torch.float32).clone().reshape(()),
                            "exp_avg": s["exp_avg"].to(dtype=p.dtype).clone(),
                            "exp_avg_sq": s["exp_avg_sq"].to(dtype=p.dtype).clone()}
            for k in ("lr", "betas", "eps", "weight_decay"):
                if k in old:
                    new[k] = tuple(old[k]) if k == "betas" else old[k]
        self.state = state


def make(params, lr: float, weight_decay: float, device: torch.device, plain: bool = True):
    """The trainer's optimizer: ``Adam`` above for CPU training when ``plain`` (no gradient scaler, no
    ``torch.compile``), else ``torch.optim.Adam`` with fused kernels where this torch has them for the device."""
    params = list(params)
    if plain and device.type == "cpu" and hasattr(torch, "_fused_adam_"):
        return Adam(params, lr=lr, weight_decay=weight_decay)
    try:
        return torch.optim.Adam(params, fused=True, lr=lr, weight_decay=weight_decay)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, foreach=device.type != "cpu" or None, lr=lr, weight_decay=weight_decay)
