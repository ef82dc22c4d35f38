"""The generic training loop.

The trainer knows nothing of model families: it asks the model for its parameter groups (one Adam each)
and its update phases (group, objective) and runs every phase on every minibatch. Minibatches are slices
of tensors held on the training device through a permuted index; metrics are accumulated on the device
and read once per epoch (plus a cheap finiteness check every ``CHECK_EVERY`` steps).

Reproducibility: all randomness (permutations, binarization, the model's noise) comes from the trainer's
seed, inside ``torch.random.fork_rng`` so the caller's global RNG is left as it was. A checkpoint at the
end of every epoch holds weights, optimizer and RNG states, so a resumed CPU run ends bit-identical to an
uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from . import files
from .config import TrainConfig
from .errors import ConfigError, RunError, TrainingDiverged
from .likelihoods import bernoulli_sample
from .models.base import Autoencoder

CHECK_EVERY = 100  # steps between finiteness checks (one host sync each)


@dataclass
class FitResult:
    model: Autoencoder
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped: str = "completed"  # "completed" | "early_stopping"
    run_dir: str | None = None

    @property
    def seconds_per_epoch(self) -> float:
        secs = [h["seconds"] for h in self.history]
        return sorted(secs)[len(secs) // 2] if secs else float("nan")


def binarize_static(x: Tensor, seed: int) -> Tensor:
    """One fixed Bernoulli sample of x in [0,1] (static binarization), reproducible from ``seed``.

    torch.bernoulli, not likelihoods.bernoulli_sample: a one-off cost, and the fixed binarized sets (e.g.
    the Exemplar-VAE test set in benchmarks/) stay the ones earlier results were measured on."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(x, generator=g)


def _make_optimizer(params, cfg: TrainConfig, device: torch.device, lr: float):
    kw = dict(lr=lr, weight_decay=cfg.weight_decay)
    try:  # fused kernels where this torch has them for the device, else foreach
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, foreach=device.type != "cpu" or None, **kw)


def _state_copy(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _check_labels(model: Autoencoder, dataset) -> None:
    if (model.needs_labels or model.conditional) and dataset.y_train is None:
        raise ConfigError(
            f"model {model.name} needs labels, but dataset {dataset.name!r} has none; "
            "give a labelled dataset (e.g. --label-column for a CSV, or class subfolders for images)"
        )
    cfg = model.config
    if tuple(cfg.input_shape) != tuple(dataset.shape):
        raise ConfigError(
            f"model {model.name} was built for input shape {tuple(cfg.input_shape)}, "
            f"but dataset {dataset.name!r} has samples of shape {tuple(dataset.shape)}"
        )


def fit(
    model: Autoencoder,
    dataset,
    config: TrainConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    quiet: bool | None = None,
    model_name: str | None = None,
) -> FitResult:
    """Train ``model`` on ``dataset`` (an aekit.datasets.Dataset); returns the model with its best weights.

    ``out_dir``: write a run directory (config, weights, checkpoint each epoch, metrics, summary).
    ``resume``: continue from ``out_dir``'s checkpoint. ``quiet``: no progress bar (default: quiet unless
    stderr is a terminal).
    """
    cfg = config or TrainConfig()
    _check_labels(model, dataset)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for, but this torch has no CUDA device; use --device cpu")
    if quiet is None:
        quiet = not sys.stderr.isatty()
    out = Path(out_dir) if out_dir is not None else None
    name = model_name or model.name
    model.to(device)
    dataset = dataset.to(device)

    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(cfg.seed)
        return _fit(model, dataset, cfg, out, resume, quiet, name, device)


def _fit(model, ds, cfg: TrainConfig, out: Path | None, resume: bool, quiet: bool, name: str, device):
    from . import __version__

    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    x_train, y_train = ds.x_train, ds.y_train
    x_val, y_val = ds.x_val, ds.y_val
    if cfg.binarize == "static":
        x_train = binarize_static(x_train, cfg.seed + 1)
    if cfg.binarize != "none":
        x_val = binarize_static(x_val, cfg.seed + 2)  # a fixed validation set even for dynamic binarization

    groups = model.param_groups()
    scales = {g: model.lr_scales().get(g, 1.0) for g in groups}  # e.g. a slower adversary
    opts = {g: _make_optimizer(p, cfg, device, cfg.lr * scales[g]) for g, p in groups.items()}
    phases = model.update_phases()
    unknown = [g for g, _ in phases if g not in opts]
    if unknown:
        raise ConfigError(f"model {name}: update phase(s) {unknown} name no parameter group ({list(opts)})")
    if cfg.compile:
        phases = [(g, torch.compile(fn)) for g, fn in phases]
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    n = x_train.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    history: list[dict] = []
    best_val, best_epoch, bad_epochs, start = math.inf, 0, 0, 0
    best_state = _state_copy(model)
    stopped = "completed"

    if out is not None:
        meta = {
            "aekit_version": __version__,
            "model": name,
            "config": model.config.to_dict(),
            "train": cfg.to_dict(),
            "data": getattr(ds, "spec", None),
        }
        if resume:
            start, history, best_val, best_epoch, bad_epochs, best_state = _load_checkpoint(
                out, model, opts, gen, meta
            )
        else:
            files.write_json(out / files.CONFIG, meta)
    elif resume:
        raise ConfigError("resume needs the run directory (out_dir)")

    last_good = _state_copy(model)
    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start * steps_per_epoch, desc=name, unit="step", leave=False)

    for epoch in range(start, cfg.epochs):
        if stopped != "completed":
            break
        model.set_progress(epoch, cfg.epochs)
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen, device=device)
        sums: dict[str, Tensor] = {}
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            xb = x_train[idx]
            yb = y_train[idx] if y_train is not None else None
            if cfg.binarize == "dynamic":
                xb = bernoulli_sample(xb, gen)
            if cfg.lr_schedule == "cosine":
                lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * (epoch * steps_per_epoch + s) / total_steps))
                for g, o in opts.items():
                    for pg in o.param_groups:
                        pg["lr"] = lr * scales[g]
            for i, (group, objective) in enumerate(phases):
                model.zero_grad(set_to_none=True)  # no gradient leaks from one phase into the next
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    res = objective(xb, yb)
                scaler.scale(res.loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(opts[group])
                    torch.nn.utils.clip_grad_norm_(groups[group], cfg.grad_clip)
                scaler.step(opts[group])
                scaler.update()
                bs = xb.shape[0]
                if i == 0:
                    _acc(sums, "loss", res.loss.detach().float() * bs)
                for k, v in res.terms.items():
                    _acc(sums, k, v.float() * bs)
            if (s + 1) % CHECK_EVERY == 0 and not torch.isfinite(sums["loss"]):
                break
            if bar is not None and (s % 20 == 0 or s == steps_per_epoch - 1):
                bar.set_postfix(epoch=epoch + 1, loss=f"{sums['loss'].item() / ((s + 1) * cfg.batch_size):.4g}")
            if bar is not None:
                bar.update(1)
        train = {k: v.item() / n for k, v in sums.items()}
        seconds = time.perf_counter() - t0
        if not all(math.isfinite(v) for v in train.values()):
            model.load_state_dict(last_good)
            if out is not None:
                files.save_tensors(out / files.WEIGHTS, best_state)
                files.write_json(out / files.SUMMARY, _summary(history, best_epoch, best_val, "diverged"))
            if bar is not None:
                bar.close()
            raise TrainingDiverged(
                f"model {name}: the training loss became NaN/Inf in epoch {epoch + 1}; the weights of epoch "
                f"{epoch} were kept. Try a smaller --lr (now {cfg.lr:g}), --grad-clip 1, or check the data"
            )
        val = evaluate_loss(model, x_val, y_val, cfg.batch_size * 4)
        rec = {"epoch": epoch + 1, "train": train, "val": val, "seconds": seconds,
               "lr": next(iter(opts.values())).param_groups[0]["lr"]}
        history.append(rec)
        if val["loss"] < best_val:
            best_val, best_epoch, bad_epochs = val["loss"], epoch + 1, 0
            best_state = _state_copy(model)
        else:
            bad_epochs += 1
            if cfg.patience and bad_epochs >= cfg.patience:
                stopped = "early_stopping"
        last_good = _state_copy(model)
        if out is not None:
            files.write_metrics(out, history)
            if best_epoch == epoch + 1:
                files.save_tensors(out / files.WEIGHTS, best_state)
            _save_checkpoint(out, model, opts, gen, history, best_val, best_epoch, bad_epochs, best_state)
    if bar is not None:
        bar.close()

    model.load_state_dict(best_state)
    model.eval()
    if out is not None:
        files.write_json(out / files.SUMMARY, _summary(history, best_epoch, best_val, stopped))
    return FitResult(model, history, best_epoch, best_val, stopped, str(out) if out else None)


def _acc(sums: dict, key: str, value: Tensor) -> None:
    sums[key] = sums[key] + value if key in sums else value


@torch.no_grad()
def evaluate_loss(model: Autoencoder, x: Tensor, y: Tensor | None, batch_size: int = 512) -> dict[str, float]:
    """Mean of the model's objective and its terms over (x, y), in eval mode. Returns floats."""
    was_training = model.training
    model.eval()
    sums: dict[str, Tensor] = {}
    for s in range(0, x.shape[0], batch_size):
        xb = x[s : s + batch_size]
        yb = y[s : s + batch_size] if y is not None else None
        res = model(xb, yb)
        _acc(sums, "loss", res.loss.detach().float() * xb.shape[0])
        for k, v in res.terms.items():
            _acc(sums, k, v.float() * xb.shape[0])
    model.train(was_training)
    return {k: v.item() / x.shape[0] for k, v in sums.items()}


def _summary(history, best_epoch, best_val, stopped) -> dict:
    secs = sorted(h["seconds"] for h in history)
    return {
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "best_val_loss": best_val if math.isfinite(best_val) else None,
        "stopped": stopped,
        "seconds_per_epoch_median": secs[len(secs) // 2] if secs else None,
        "train_seconds": sum(secs),
        "final": history[-1] if history else None,
    }


def _save_checkpoint(out, model, opts, gen, history, best_val, best_epoch, bad_epochs, best_state) -> None:
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best/{k}": v for k, v in best_state.items()})
    opt_meta = {}
    for g, o in opts.items():
        t, m = files.optimizer_to_tensors(f"opt/{g}", o.state_dict())
        tensors.update(t)
        opt_meta[g] = m
    tensors["rng/torch"] = torch.get_rng_state()
    tensors["rng/gen"] = gen.get_state()
    if torch.cuda.is_available() and gen.device.type == "cuda":
        tensors["rng/cuda"] = torch.cuda.get_rng_state(gen.device)
    meta = {"epoch": len(history), "history": history, "best_val": best_val if math.isfinite(best_val) else None,
            "best_epoch": best_epoch, "bad_epochs": bad_epochs, "optimizers": opt_meta}
    files.save_tensors(out / files.CHECKPOINT, tensors, meta)


def _load_checkpoint(out: Path, model, opts, gen, meta_now: dict):
    path = out / files.CHECKPOINT
    if not path.exists():
        raise RunError(f"{out}: nothing to resume (no {files.CHECKPOINT}; the run never finished an epoch)")
    saved = files.run_config(out)
    for key in ("model", "config", "data"):
        if saved.get(key) != meta_now.get(key):
            raise RunError(f"{out}: cannot resume: the {key} differs from the one the run was started with")
    changed = {k for k in meta_now["train"] if k != "epochs" and saved["train"].get(k) != meta_now["train"][k]}
    if changed:
        raise RunError(f"{out}: cannot resume with different training options ({', '.join(sorted(changed))})")
    tensors, meta = files.load_tensors(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    best_state = {k[5:]: v.to(model.device) for k, v in tensors.items() if k.startswith("best/")}
    for g, o in opts.items():
        o.load_state_dict(files.optimizer_from_tensors(f"opt/{g}", tensors, meta["optimizers"][g]))
    torch.set_rng_state(tensors["rng/torch"])
    gen.set_state(tensors["rng/gen"])
    if "rng/cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng/cuda"], gen.device)
    if saved["train"] != meta_now["train"]:  # a new epoch budget
        files.write_json(out / files.CONFIG, meta_now)
    best_val = meta["best_val"] if meta["best_val"] is not None else math.inf
    return meta["epoch"], meta["history"], best_val, meta["best_epoch"], meta["bad_epochs"], best_state
