"""Several processes, one or more machines: aekit on torch.distributed.

Under ``torchrun`` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) the trainer and the
sharded evaluation start the default process group from that environment (``init_from_env``): gloo for CPU
tensors and, where CUDA is available, NCCL for CUDA tensors (one group serving both, ``"cpu:gloo,cuda:nccl"``),
each rank on ``cuda:LOCAL_RANK``. Without those variables (or with WORLD_SIZE=1) nothing here does anything:
every helper is the identity of a world of one rank, so the single-process path is the code it always was.
A process group the caller initialised already (their own ``init_process_group``) is used as it is.

The collectives are torch.distributed's own; this module only packs aekit's tensors for them:

- ``average_gradients``: the gradients of one update phase, flattened into buckets of at most BUCKET_BYTES,
  each scaled by this rank's weight and summed across ranks (one all_reduce per bucket). The trainer calls it
  between ``backward`` and the phase's optimizer step; see trainer.py for why not DistributedDataParallel.
- ``sum_``, ``all_true``: epoch metric sums and a finiteness flag, reduced across ranks.
- ``gather_rows``: per-example values computed on disjoint shares, summed into one tensor in the original
  order (x + 0 is exact in floating point, so the gathered values are bit for bit the computed ones).
- ``broadcast_tensors`` / ``broadcast_object``: rank 0's values on every rank (initial weights, a checkpoint,
  a result dict).
- ``agree(fn)``: run ``fn`` (on every rank, or on rank 0 only) and, if it raised anywhere, raise on every rank,
  so that an error of one rank (a run folder that is not empty, a damaged checkpoint) never leaves the
  others waiting in a collective.
- ``rank_seed``: the seed of each rank's own random stream (model noise) in each epoch.
"""

from __future__ import annotations

import atexit
import os
import pickle
from collections.abc import Callable, Iterable
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError

__all__ = ["BUCKET_BYTES", "launched", "init_from_env", "cleanup", "active", "rank", "world_size", "is_main",
           "local_rank", "device_for", "rank_seed", "average_gradients", "broadcast_tensors", "broadcast_object",
           "sum_", "all_true", "gather_rows", "agree"]

T = TypeVar("T")
BUCKET_BYTES = 25 * 2**20  # gradients per all_reduce: DistributedDataParallel's default bucket size
_STARTED_HERE = False  # whether init_from_env started the process group (then cleanup ends it)


def _dist():
    return torch.distributed if torch.distributed.is_available() else None


def launched() -> bool:
    """Whether this process was started as one of several ranks (RANK and WORLD_SIZE > 1 in the environment)."""
    return "RANK" in os.environ and _env_int("WORLD_SIZE", 1) > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not a whole number; launch with torchrun, which "
                          "sets RANK, WORLD_SIZE and LOCAL_RANK itself") from None


def init_from_env() -> bool:
    """Start the default process group from torchrun's environment, once; True when several ranks take part.

    Nothing happens without RANK/WORLD_SIZE in the environment, with WORLD_SIZE=1, or when a process group is
    already initialised (by an earlier call or by the caller). A CUDA machine also gets NCCL for CUDA
    tensors, and this process's current CUDA device becomes ``cuda:LOCAL_RANK``.
    """
    global _STARTED_HERE
    d = _dist()
    if d is not None and d.is_initialized():
        return d.get_world_size() > 1
    if not launched():
        return False
    if d is None:
        raise ConfigError("this torch was built without torch.distributed, but the environment asks for "
                          f"{os.environ['WORLD_SIZE']} ranks (RANK/WORLD_SIZE are set); use a torch with distributed "
                          "support or run one process")
    cuda = torch.cuda.is_available() and d.is_nccl_available()
    if cuda and local_rank() < torch.cuda.device_count():  # (a rank without a GPU of its own may train on
        torch.cuda.set_device(local_rank())  # the CPU; asking it for CUDA is config.resolve_device's error)
    try:
        d.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo", init_method="env://")
    except (ValueError, RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"torch.distributed could not start from the environment ({first}); launch with torchrun, "
                          "which sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT") from None
    _STARTED_HERE = True
    atexit.register(cleanup)
    return d.get_world_size() > 1


def cleanup(wait: bool = False) -> None:
    """End the process group if ``init_from_env`` started it (a group the caller started stays theirs).

    ``wait``: first wait for every rank (a barrier), so that no rank tears its connections down while another
    is still receiving; only on success (a rank that failed alone must exit, for torchrun to stop the others).
    """
    global _STARTED_HERE
    d = _dist()
    if _STARTED_HERE and d is not None and d.is_initialized():
        if wait and d.get_world_size() > 1:
            d.barrier()
        d.destroy_process_group()
    _STARTED_HERE = False


def active() -> bool:
    """Whether a process group of more than one rank is initialised."""
    d = _dist()
    return d is not None and d.is_initialized() and d.get_world_size() > 1


def rank() -> int:
    """This process's rank in the process group (0 without one)."""
    return torch.distributed.get_rank() if active() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return torch.distributed.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one rank that writes files and prints."""
    return rank() == 0


def local_rank() -> int:
    """This process's rank on its machine (torchrun's LOCAL_RANK; 0 without it)."""
    return _env_int("LOCAL_RANK", 0)


def device_for(device: str | torch.device) -> torch.device:
    """The device this rank trains on: ``device``, except that a CUDA device becomes ``cuda:LOCAL_RANK`` when
    several ranks take part (one GPU per process, whatever index the option named)."""
    dev = torch.device(device)
    if dev.type == "cuda" and active():
        return torch.device("cuda", local_rank())
    return dev


def rank_seed(seed: int, rank_: int, epoch: int) -> int:
    """The seed of rank ``rank_``'s own random stream in ``epoch`` (0-based): numpy's SeedSequence of
    (seed, rank, epoch), 63 bits. Distinct ranks and epochs get independent streams, and the stream of an
    epoch depends on nothing that happened before it, so a resumed run draws what an uninterrupted one drew."""
    state = np.random.SeedSequence([int(seed) % 2**64, rank_, epoch]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & (2**63 - 1)


# --------------------------------------------------------------------------------------------------
# Collectives


def _served() -> set[str]:
    """The device types the process group's backends take tensors on."""
    backend = str(torch.distributed.get_backend()).lower()
    if ":" in backend:  # one backend per device type, e.g. "cpu:gloo,cuda:nccl"
        return {part.split(":")[0].strip() for part in backend.split(",")}
    return {"gloo": {"cpu", "cuda"}, "nccl": {"cuda"}, "mpi": {"cpu"}}.get(backend, {"cpu", "cuda"})


def _staged(t: Tensor, collective) -> Tensor:
    """``collective(t)`` in place, through a copy on a device the backend serves when t's is not (a CPU
    tensor under NCCL alone, an MPS tensor under gloo)."""
    served = _served()
    if t.device.type in served:
        collective(t)
        return t
    c = t.to("cpu" if "cpu" in served else torch.device("cuda", torch.cuda.current_device()))
    collective(c)
    return t.copy_(c)


def _reduce_(t: Tensor, op) -> Tensor:
    """all_reduce ``t`` in place with ``op``."""
    return _staged(t, lambda c: torch.distributed.all_reduce(c, op=op))


def _broadcast_(t: Tensor, src: int = 0) -> Tensor:
    return _staged(t, lambda c: torch.distributed.broadcast(c, src))


def _buckets(tensors: list[Tensor], limit: int = BUCKET_BYTES) -> Iterable[list[Tensor]]:
    """Consecutive runs of tensors of one dtype and device, each of at most ``limit`` bytes (or one tensor)."""
    bucket: list[Tensor] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and (size + nbytes > limit or t.dtype != bucket[0].dtype or t.device != bucket[0].device):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += nbytes
    if bucket:
        yield bucket


def average_gradients(params: Iterable[torch.nn.Parameter], weight: float) -> None:
    """Replace each gradient g_r of ``params`` by sum over ranks of weight_r * g_r, in place, on every rank.

    ``weight``: this rank's share of the global batch (its rows / the batch's rows), so that for an objective
    that is a mean over the batch the result is the gradient of the whole batch's mean. Gradients are
    flattened into buckets (one all_reduce each). Every rank must hold gradients for the same parameters
    (the trainer runs every phase on every rank). No-op without a process group of several ranks.
    """
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    for bucket in _buckets(grads):
        flat = torch.cat([g.reshape(-1) for g in bucket]).mul_(weight)
        _reduce_(flat, torch.distributed.ReduceOp.SUM)
        for g, v in zip(bucket, flat.split([g.numel() for g in bucket])):
            g.copy_(v.view_as(g))


def broadcast_tensors(tensors: Iterable[Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` (in place, e.g. a model's state_dict values) with rank ``src``'s, bucketed."""
    if not active():
        return
    tensors = list(tensors)
    for bucket in _buckets(tensors):
        flat = torch.cat([t.detach().reshape(-1) for t in bucket])
        _broadcast_(flat, src)
        with torch.no_grad():
            for t, v in zip(bucket, flat.split([t.numel() for t in bucket])):
                t.copy_(v.view_as(t))


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` (any picklable object) on every rank; ``obj`` itself without a process group."""
    if not active():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def sum_(t: Tensor) -> Tensor:
    """``t`` summed over ranks, in place (identity without a process group)."""
    return _reduce_(t, torch.distributed.ReduceOp.SUM) if active() else t


def all_true(flag: bool | Tensor) -> bool:
    """Whether ``flag`` holds on every rank (one tiny all_reduce)."""
    if not active():
        return bool(flag)
    t = torch.as_tensor(flag, dtype=torch.int32).reshape(1)
    _reduce_(t, torch.distributed.ReduceOp.MIN)
    return bool(t.item())


def gather_rows(values: Tensor) -> Tensor:
    """The sum over ranks of ``values`` (N, ...), where each rank filled its own rows and left the others 0:
    every rank gets all N rows, in the original order, bit for bit as computed (x + 0 == x)."""
    return sum_(values)


def _picklable(err: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # an exception class that cannot travel: its type and message do
        return RuntimeError(f"{type(err).__name__}: {err}")


def agree(fn: Callable[[], T], *, main_only: bool = False, share: bool = False) -> T | None:
    """Run ``fn()`` on every rank (``main_only``: on rank 0 only); if it raised on any rank, every rank raises
    (its own exception, else that of the lowest failing rank, with ``from_rank`` set to the rank that raised
    it, so that one rank can report it). ``share``: every rank returns rank 0's result (pickled); otherwise
    each rank returns its own (None on the ranks that did not run ``fn``). Without a process group: ``fn()``."""
    if not active():
        return fn()
    result, err = None, None
    if not main_only or is_main():
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - reported to every rank, then raised
            err = e
    errors: list[BaseException | None] = [None] * world_size()
    torch.distributed.all_gather_object(errors, None if err is None else _picklable(err))
    if err is not None:
        err.from_rank = rank()  # reported to every rank: rank 0 says it
        raise err
    first = next((r for r, e in enumerate(errors) if e is not None), None)
    if first is not None:
        err = errors[first]
        err.from_rank = first  # raised on rank ``first``; this rank passes it on
        raise err
    return broadcast_object(result) if share else result
