"""The generic training loop.

The trainer knows nothing of model families: it asks the model for its parameter groups (one Adam each)
and its update phases (group, objective) and runs every phase on every minibatch. Minibatches are slices
of tensors held on the training device through a permuted index; metrics are accumulated on the device
and read once per epoch (plus a cheap finiteness check every ``CHECK_EVERY`` steps).

Reproducibility: all randomness (permutations, binarization, the model's noise) comes from the trainer's
seed, inside ``torch.random.fork_rng`` so the caller's global RNG is left as it was. A checkpoint at the
end of every epoch holds weights, optimizer and RNG states, so a resumed CPU run ends bit-identical to an
uninterrupted one.

Several ranks (torch.distributed, started from torchrun's environment by ``aekit.distributed``): every rank
draws the same permutation from the shared generator and takes rows ``rank::world`` of each global batch of
``batch_size`` rows; each update phase's gradients are averaged across ranks before its optimizer step,
weighted by each rank's share of the batch, so the update is the one a single process makes on the whole
batch (up to the order of float sums) and the parameters stay identical on every rank. Epoch metrics and the
validation loss (each rank scores a contiguous share of the validation split) are summed across ranks, so
every decision (divergence, best epoch, early stopping) is taken on the same numbers everywhere; rank 0
alone writes the run directory. Dynamic binarization is drawn for the whole global batch from the shared
generator, so it is the single-process draw. The model's own noise (corruption, posterior and prior samples)
comes from the global RNG, which each rank reseeds at the start of every epoch with
``distributed.rank_seed(seed, rank, epoch)``: independent streams per rank, that depend only on the epoch, so a
resumed run with the same number of ranks draws what an uninterrupted one drew (bit-identical on the CPU).

Why explicit all_reduce and not DistributedDataParallel: DDP reduces gradients from hooks armed by its own
``forward``, once per backward, over one module. aekit's update phases are objectives other than
``forward`` (the adversarial autoencoder runs autoencoder, discriminator (x disc_steps) and generator phases
per batch, each on its own parameter group, with parameters that get no gradient in a phase), which DDP
supports only with ``find_unused_parameters`` and a forward per phase. One flattened all_reduce per phase
and bucket (``distributed.average_gradients``) is what DDP's reducer does for one phase, with no
assumption about the phases.
"""

from __future__ import annotations

import functools
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from . import distributed
from .config import TrainConfig
from .errors import ConfigError, RunError, TrainingDiverged
from .likelihoods import bernoulli_sample, binarize_static
from .models.base import Autoencoder
from .run import Checkpoint, Run

CHECK_EVERY = 100  # steps between finiteness checks (one host sync each)


@dataclass
class FitResult:
    model: Autoencoder
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped: str = "completed"  # "completed" | "early_stopping"
    run_dir: str | None = None
    run: Run | None = None  # the run directory written, when out_dir was given
    config: TrainConfig | None = None  # the training options used, automatic values resolved
    note: str | None = None  # a warning worth reading, e.g. the validation loss was still falling fast

    @property
    def seconds_per_epoch(self) -> float:
        secs = [h["seconds"] for h in self.history]
        return statistics.median(secs) if secs else float("nan")

    @property
    def summary(self) -> dict:
        """How the training ended, as summary.json records it."""
        return _summary(self.history, self.best_epoch, self.best_val_loss, self.stopped)


def _make_optimizer(params, cfg: TrainConfig, device: torch.device, lr: float):
    kw = dict(lr=lr, weight_decay=cfg.weight_decay)
    try:  # fused kernels where this torch has them for the device, else foreach
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, foreach=device.type != "cpu" or None, **kw)


def _state_copy(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _check_labels(model: Autoencoder, dataset) -> None:
    if model.capabilities.uses_labels and dataset.y_train is None:
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
    stderr is a terminal). Automatic options (epochs, patience, threads) are chosen from the size of the
    training split (``TrainConfig.resolved_for``) and recorded; the thread count is the caller's again after.

    Under torchrun (several ranks; see ``aekit.distributed`` and the module docstring) every rank calls
    ``fit`` with the same arguments: each trains on its share of every batch on ``cuda:LOCAL_RANK`` (CUDA) or
    the CPU, only rank 0 reads and writes ``out_dir``, and every rank returns the same trained model.
    """
    _check_labels(model, dataset)
    cfg = (config or TrainConfig()).resolved_for(dataset.x_train.shape[0])
    distributed.init_from_env()
    world = distributed.world_size()
    device = distributed.device_for(cfg.device)  # under torchrun a CUDA device is cuda:LOCAL_RANK
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for, but this torch has no CUDA device; use --device cpu")
    if world > 1:
        _check_shares(cfg, dataset.x_train.shape[0], world)
    if quiet is None:
        quiet = not sys.stderr.isatty()
    quiet = quiet or not distributed.is_main()
    out = Path(out_dir) if out_dir is not None else None
    name = model_name or model.name
    model.to(device)
    dataset = dataset.to(device)

    if out is None and resume:
        raise ConfigError("resume needs the run directory (out_dir)")

    def start():  # claimed for writing until fit returns (a second writer gets a clear error)
        return _resume(Run.open(out), model, cfg, dataset, name) if resume else \
            Run.create(out, name, model.config, cfg, getattr(dataset, "spec", None))

    run = None if out is None else distributed.agree(start, main_only=True)  # rank 0 alone touches the folder
    fork_devices = [device] if device.type == "cuda" else []
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(cfg.threads)
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(cfg.seed)
            result = _fit(model, dataset, cfg, run, quiet, name, device, resume)
            if out is not None:
                result.run_dir = str(out)
            return result
    finally:
        torch.set_num_threads(threads)
        if run is not None:
            run.release()


def _check_shares(cfg: TrainConfig, n_train: int, world: int) -> None:
    """Every rank needs a row of every full batch (a short last batch may leave a rank without one)."""
    if cfg.batch_size < world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is smaller than the {world} ranks sharing each batch; "
                          f"use a batch of at least {world} rows (it is the global batch, split across ranks)")
    if n_train < world:
        raise ConfigError(f"the training split has {n_train} examples, fewer than the {world} ranks; "
                          "train with fewer processes (torchrun --nproc-per-node)")


def _fit(model, ds, cfg: TrainConfig, run: Run | None, quiet: bool, name: str, device, resume: bool = False):
    rank, world = distributed.rank(), distributed.world_size()
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # the same stream on every rank: permutations
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
    has_run = distributed.broadcast_object(run is not None)  # whether rank 0 writes a run (the same on all)

    ck = None
    if resume:  # rank 0 reads the checkpoint and hands it to the others (they need no access to the folder)
        ck = distributed.agree(lambda: run.load_checkpoint() if run.has_checkpoint else None, main_only=True,
                               share=world > 1)
    if ck is not None:  # resuming (a run killed in its first epoch starts afresh)
        model.load_state_dict(ck.model)
        best_state = {k: v.to(device) for k, v in ck.best.items()}
        for g, o in opts.items():
            try:
                o.load_state_dict(ck.optimizers[g])
            except (KeyError, ValueError) as e:  # e.g. a family whose parameter groups changed since the run began
                where = run.path if run is not None else "the run"  # (run is rank 0's alone)
                raise RunError(f"{where}: the checkpoint's optimizer state for parameter group {g!r} does not "
                               f"match this aekit's {name} ({e}); the run can be evaluated but not resumed") from None
        torch.set_rng_state(ck.rng["torch"])
        gen.set_state(ck.rng["gen"])
        if "cuda" in ck.rng:
            torch.cuda.set_rng_state(ck.rng["cuda"], gen.device)
        start, history, best_val, best_epoch, bad_epochs = ck.epoch, ck.history, ck.best_val, ck.best_epoch, \
            ck.bad_epochs
        initial = ck.initial_loss
    else:  # the loss before training: a run whose loss climbs far above it has diverged (see _exploded)
        distributed.broadcast_tensors(model.state_dict().values())  # every rank starts from rank 0's weights
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # training's stream as is
            initial = _loss(model, x_val if len(x_val) else x_train, y_val if len(x_val) else y_train,
                            cfg.batch_size * 4)["loss"]

    def diverged(epoch: int, what: str) -> TrainingDiverged:
        """Keep the last good weights, record how the run ended, and say so."""
        model.load_state_dict(last_good)
        if run is not None:
            run.save_weights(best_state)
            run.write_summary(_summary(history, best_epoch, best_val, "diverged"))
        if bar is not None:
            bar.close()
        return TrainingDiverged(
            f"model {name}: {what} in epoch {epoch + 1}; the weights of epoch {epoch} were kept. Try a smaller "
            f"--lr (now {cfg.lr:g}), --grad-clip 1, or check the data")

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
        if world > 1:  # this rank's own noise stream for the epoch (see the module docstring)
            torch.manual_seed(distributed.rank_seed(cfg.seed, rank, epoch))
        perm = torch.randperm(n, generator=gen, device=device)
        sums: dict[str, Tensor] = {}
        seen = 0
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]  # the global batch
            rows, share = idx.shape[0], idx.shape[0]
            if world > 1:  # this rank's rows of it; a rank left without one (a short last batch) runs a
                batch = idx  # stand-in row with weight 0, so that every rank steps every optimizer alike
                idx = batch[rank::world]
                share = idx.shape[0]
                idx = idx if share else batch[:1]
            xb = x_train[idx]
            yb = y_train[idx] if y_train is not None else None
            if cfg.binarize == "dynamic" and world > 1:  # drawn for the global batch: the shared generator
                xg = bernoulli_sample(x_train[batch], gen)  # stays in step, and the draw is the 1-rank one
                xb = xg[rank::world] if share else xg[:1]
            elif cfg.binarize == "dynamic":
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
                if world > 1:  # the whole batch's mean gradient: sum over ranks of share/rows x own mean
                    distributed.average_gradients(groups[group], share / rows)
                if cfg.grad_clip > 0:
                    scaler.unscale_(opts[group])
                    torch.nn.utils.clip_grad_norm_(groups[group], cfg.grad_clip)
                scaler.step(opts[group])
                scaler.update()
                bs = share
                if i == 0:
                    _acc(sums, "loss", res.loss.detach().float() * bs)
                for k, v in res.terms.items():
                    _acc(sums, k, v.float() * bs)
            seen += share
            if (s + 1) % CHECK_EVERY == 0 and not _finite_everywhere(sums["loss"], world):
                break
            if bar is not None and (s % 20 == 0 or s == steps_per_epoch - 1):
                bar.set_postfix(epoch=epoch + 1, loss=f"{sums['loss'].item() / max(seen, 1):.4g}")
            if bar is not None:
                bar.update(1)
        if world > 1:  # the whole training split's sums, the same numbers on every rank
            sums = _reduce_sums(sums)
        train = {k: v.item() / n for k, v in sums.items()}
        seconds = time.perf_counter() - t0
        if not all(math.isfinite(v) for v in train.values()):
            raise diverged(epoch, "the training loss became NaN/Inf")
        val = _loss(model, x_val, y_val, cfg.batch_size * 4) if len(x_val) else dict(train)
        if _exploded(val["loss"], initial):
            what = "validation" if len(x_val) else "training"
            raise diverged(epoch, f"the {what} loss exploded to {val['loss']:.4g} (it was {initial:.4g} before "
                                  "training)")
        rec = {"epoch": epoch + 1, "train": train, "val": val, "seconds": seconds,
               "lr": next(iter(opts.values())).param_groups[0]["lr"]}
        if world > 1:  # the number of processes the epoch ran on (a resumed run may change it)
            rec["ranks"] = world
        history.append(rec)
        if val["loss"] < best_val:
            best_val, best_epoch, bad_epochs = val["loss"], epoch + 1, 0
            best_state = _state_copy(model)
        else:
            bad_epochs += 1
            if cfg.patience and bad_epochs >= cfg.patience:
                stopped = "early_stopping"
        last_good = _state_copy(model)

        if has_run:  # rank 0 writes; with several ranks a failed write stops them all
            rng = {"torch": torch.get_rng_state(), "gen": gen.get_state()}
            if gen.device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(gen.device)
            state = Checkpoint(
                epoch=len(history), model=model.state_dict(), best=best_state,
                optimizers={g: o.state_dict() for g, o in opts.items()}, rng=rng, history=history,
                best_val=best_val, best_epoch=best_epoch, bad_epochs=bad_epochs, initial_loss=initial)
            distributed.agree(functools.partial(_save_epoch, run, state, best_epoch == epoch + 1), main_only=True)
    if bar is not None:
        bar.close()

    model.load_state_dict(best_state)
    model.eval()
    note = still_improving(history) if stopped == "completed" else None
    if run is not None:
        run.write_summary({**_summary(history, best_epoch, best_val, stopped), "note": note})
    return FitResult(model, history, best_epoch, best_val, stopped, None if run is None else str(run.path), run,
                     cfg, note)


STILL_FALLING = 0.01  # relative drop of the validation loss per epoch, over the last epochs, worth a warning


def still_improving(history: list[dict], window: int = 3) -> str | None:
    """A warning when a run ended while its validation loss was still falling fast: by more than
    STILL_FALLING of its value per epoch over the last ``window`` epochs, the last epoch being the best."""
    vals = [h["val"].get("loss") for h in history[-(window + 1):]]
    if len(vals) < window + 1 or any(v is None or not math.isfinite(v) for v in vals) or vals[-1] > min(vals):
        return None
    drop = (vals[0] - vals[-1]) / window / max(abs(vals[0]), 1e-12)
    if drop <= STILL_FALLING:
        return None
    return (f"the validation loss was still falling when training ended ({100 * drop:.1f}% per epoch over the "
            f"last {window} epochs): more epochs would help (`aekit train --resume RUN --epochs N`)")


EXPLODED = 10.0  # a loss this many times its own scale above the untrained model's has diverged


def _exploded(loss: float, initial: float | None) -> bool:
    """Whether ``loss`` is far worse than the model's loss before training, ``initial``: above
    initial + EXPLODED * max(|initial|, 1). Any family, any likelihood: a model that learned anything is
    below its untrained loss, and one that diverged to finite garbage (a learning rate of 1e3 gives losses of
    1e13 nats) is many times above it. None (a checkpoint of aekit 0.1.0): no reference, no check."""
    return initial is not None and math.isfinite(initial) and loss > initial + EXPLODED * max(abs(initial), 1.0)


def _save_epoch(run: Run, ck: Checkpoint, new_best: bool) -> None:
    """What rank 0 writes at the end of every epoch: metrics, the best weights when they changed, checkpoint."""
    run.write_history(ck.history)
    if new_best:
        run.save_weights(ck.best)
    run.save_checkpoint(ck)


def _acc(sums: dict, key: str, value: Tensor) -> None:
    sums[key] = sums[key] + value if key in sums else value


def _finite_everywhere(loss_sum: Tensor, world: int) -> bool:
    """Whether the running loss is finite on every rank (they stop the epoch together)."""
    finite = torch.isfinite(loss_sum)
    return distributed.all_true(finite) if world > 1 else bool(finite)


def _reduce_sums(sums: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-rank sums of the same keys, summed across ranks (one all_reduce) and then rank 0's result handed
    to every rank, so that every rank decides on bit-identical numbers."""
    keys = list(sums)
    flat = distributed.sum_(torch.stack([sums[k].float() for k in keys]))
    distributed.broadcast_tensors([flat])
    return dict(zip(keys, flat.unbind()))


@torch.no_grad()
def _loss_sums(model: Autoencoder, x: Tensor, y: Tensor | None, batch_size: int) -> dict[str, Tensor]:
    """Sums over the rows of (x, y) of the model's objective and its terms, in eval mode (tensors)."""
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
    return sums


def evaluate_loss(model: Autoencoder, x: Tensor, y: Tensor | None, batch_size: int = 512) -> dict[str, float]:
    """Mean of the model's objective and its terms over (x, y), in eval mode. Returns floats."""
    return {k: v.item() / x.shape[0] for k, v in _loss_sums(model, x, y, batch_size).items()}


def _loss(model: Autoencoder, x: Tensor, y: Tensor | None, batch_size: int) -> dict[str, float]:
    """``evaluate_loss`` in one process; with several ranks each scores a contiguous share of the rows (a
    rank without rows scores a stand-in row with weight 0) and the sums are added across ranks: the same
    numbers on every rank."""
    world = distributed.world_size()
    if world == 1:
        return evaluate_loss(model, x, y, batch_size)
    n, r = x.shape[0], distributed.rank()
    lo, hi = n * r // world, n * (r + 1) // world
    if hi > lo:
        sums = _loss_sums(model, x[lo:hi], None if y is None else y[lo:hi], batch_size)
    else:
        sums = {k: v * 0 for k, v in _loss_sums(model, x[:1], None if y is None else y[:1], batch_size).items()}
    return {k: v.item() / n for k, v in _reduce_sums(sums).items()}


def _summary(history, best_epoch, best_val, stopped) -> dict:
    secs = sorted(h["seconds"] for h in history)
    return {
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "best_val_loss": best_val if math.isfinite(best_val) else None,
        "stopped": stopped,
        "seconds_per_epoch_median": statistics.median(secs) if secs else None,
        "train_seconds": sum(secs),
        "final": history[-1] if history else None,
    }


def _resume(run: Run, model, cfg: TrainConfig, ds, name: str) -> Run:
    """The run to continue, claimed, after checking that model, data and training options are the ones it
    started with."""
    run.claim()
    try:
        data = getattr(ds, "spec", None)
        now = {"model": name, "config": model.config.to_dict(), "data": None if data is None else data.to_dict()}
        saved = {"model": run.model_name, "config": run.model_config.to_dict(),
                 "data": None if run.data is None else run.data.to_dict()}
        for key in ("model", "config", "data"):
            if saved[key] != now[key]:
                raise RunError(f"{run.path}: cannot resume: the {key} differs from the one the run was started with")
        old, new = run.train.resolved_for(ds.x_train.shape[0]).to_dict(), cfg.to_dict()  # older runs: no threads
        changed = {k for k in new if k != "epochs" and old.get(k) != new[k]}
        if changed:
            raise RunError(f"{run.path}: cannot resume with different training options ({', '.join(sorted(changed))})")
        if old != new:  # a new epoch budget
            run.update_train(cfg)
    except BaseException:
        run.release()
        raise
    return run
