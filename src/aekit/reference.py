"""The reference classifier that judges conditional generation (metrics.conditional_accuracy_metrics).

A small MLP trained on the real training images of a dataset, independent of any autoencoder: the share of
samples drawn for class y that it assigns to y measures how well a model generates a given class, and
its accuracy on the real test split is the ceiling of that share.

Training it takes seconds, so the last ``CACHE_SIZE`` classifiers are kept in memory (least recently used
goes first), keyed by the dataset's name, sample shape, data spec (without its normalization statistics)
and split sizes, and by the training options: comparing several models on one dataset trains it once.

``subsample`` is the seeded subset draw of every evaluation subset (this classifier's training set, and the
probes and MMD codes of aekit.metrics, which imports it from here: metrics sits above this module).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import DataError

CACHE_SIZE = 4
_CACHE: OrderedDict[str, tuple[torch.nn.Module, float]] = OrderedDict()


def subsample(n: int, m: int, seed: int) -> Tensor:
    """Sorted indices of a seeded random subset of m of range(n): (min(n, m),); all of them when n <= m."""
    if n <= m:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m].sort().values


def dataset_key(dataset) -> str:
    """What identifies a dataset's contents: name, shape, data spec (less ``stats``) and split sizes, as JSON.

    ``dataset.spec`` may be a dict or a config object with ``to_dict()``.
    """
    spec = getattr(dataset, "spec", None)
    spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec or {})
    spec = {k: v for k, v in spec.items() if k != "stats"}
    sizes = [int(t.shape[0]) for t in (dataset.x_train, dataset.x_val, dataset.x_test)]
    return json.dumps([dataset.name, list(dataset.shape), spec, sizes], sort_keys=True, default=str)


def reference_classifier(dataset, *, seed: int = 0, steps: int = 1000, batch_size: int = 128,
                         max_train: int = 20000) -> tuple[torch.nn.Module, float]:
    """A classifier of real data and its accuracy on the real test split (NaN for an empty one).

    An MLP (flattened input -> 256 relu units -> num_classes logits) trained with Adam (lr 1e-3, weight
    decay 1e-4) on ``steps`` minibatches of ``batch_size`` drawn from (a seeded subset of at most
    ``max_train`` of) the training split, everything seeded from ``seed`` (the global RNG is left as it
    was). Returns (classifier in eval mode, on the CPU: (N, D) -> (N, num_classes) logits, test accuracy);
    the same objects again while they are in the cache.
    """
    key = f"{dataset_key(dataset)}|{seed}|{steps}|{batch_size}|{max_train}"
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    result = _train(dataset, seed, steps, batch_size, max_train)
    _CACHE[key] = result
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return result


def _train(dataset, seed: int, steps: int, batch_size: int, max_train: int) -> tuple[torch.nn.Module, float]:
    x, y = dataset.split("train")
    if y is None:
        raise DataError(f"{dataset.name}: conditional-generation accuracy needs a labelled dataset")
    idx = subsample(x.shape[0], max_train, seed)
    x, y = x[idx].flatten(1).float().cpu(), y[idx].cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.ReLU(),
                                  torch.nn.Linear(256, dataset.num_classes))
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(steps):
        b = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=g)
        loss = F.cross_entropy(clf(x[b]), y[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    clf.eval()
    xt, yt = dataset.split("test")
    with torch.no_grad():
        acc = (clf(xt.flatten(1).float().cpu()).argmax(1) == yt.cpu()).float().mean().item() if len(yt) else math.nan
    return clf, acc
