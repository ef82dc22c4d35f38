"""The reference classifier that judges conditional generation (metrics.conditional_accuracy_metrics).

A small MLP trained on the real training images of a dataset, independent of any autoencoder: the share of
samples drawn for class y that it assigns to y measures how well a model generates a given class, and
its accuracy on the real test split is the ceiling of that share.

Training it takes seconds, so the last ``CACHE_SIZE`` classifiers are kept in memory (least recently used
goes first), keyed by the dataset's name, sample shape, data spec (without its normalization statistics)
and split sizes, and by the training options: comparing several models on one dataset trains it once.
The cache is shared by threads under a lock (two threads that miss at once may both train; both get equal
classifiers). The classifier's initial weights come from its own seeded generator: the global RNG is
neither read nor written, so evaluation may run in several threads.

``subsample`` is the seeded subset draw of every evaluation subset (this classifier's training set, and the
probes and MMD codes of aekit.metrics, which imports it from here: metrics sits above this module).
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import DataError

__all__ = ["CACHE_SIZE", "subsample", "dataset_key", "reference_classifier"]

CACHE_SIZE = 4
_CACHE: OrderedDict[str, tuple[torch.nn.Module, float]] = OrderedDict()
_CACHE_LOCK = threading.Lock()


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
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    result = _train(dataset, seed, steps, batch_size, max_train)  # outside the lock: seconds of work
    with _CACHE_LOCK:
        _CACHE[key] = result
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return result


def _seeded_mlp(sizes: list[int], seed: int) -> torch.nn.Sequential:
    """Linear layers of ``sizes`` with relu between them, initialized as torch.nn.Linear initializes them
    (kaiming-uniform weights with a = sqrt(5), biases uniform in +-1/sqrt(fan_in)) after torch.manual_seed(seed),
    but drawn from a generator of its own: the same weights, and the global RNG untouched."""
    layers: list[torch.nn.Module] = []
    with torch.device("meta"):  # no allocation and no draw; the weights are drawn below
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1]).to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net[::2]:
            torch.nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=g)
            bound = 1 / math.sqrt(layer.in_features) if layer.in_features else 0.0
            layer.bias.uniform_(-bound, bound, generator=g)
    return net


def _train(dataset, seed: int, steps: int, batch_size: int, max_train: int) -> tuple[torch.nn.Module, float]:
    x, y = dataset.x_train, dataset.y_train  # a store gathers only the rows of the subset
    if y is None:
        raise DataError(f"{dataset.name}: conditional-generation accuracy needs a labelled dataset")
    idx = subsample(x.shape[0], max_train, seed)
    x, y = x[idx].flatten(1).float().cpu(), y[idx].cpu()
    clf = _seeded_mlp([x.shape[1], 256, dataset.num_classes], seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(steps):
        b = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=g)
        loss = F.cross_entropy(clf(x[b]), y[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    clf.eval()
    xt, yt = dataset.x_test, dataset.y_test
    with torch.no_grad():  # a few thousand rows at a time: a store is never copied whole
        hits = sum(int((clf(xt[i:i + 4096].flatten(1).float().cpu()).argmax(1) == yt[i:i + 4096].cpu()).sum())
                   for i in range(0, len(yt), 4096))
    acc = (torch.tensor(hits, dtype=torch.float32) / len(yt)).item() if len(yt) else math.nan  # as a float32 mean
    return clf, acc
