"""The generic training loop.

The trainer knows nothing of model families: it asks the model for its parameter groups (one Adam each)
and its update phases (group, objective) and runs every phase on every minibatch. Minibatches are slices
of tensors held on the training device through a permuted index; metrics are accumulated on the device
and read once per epoch (plus a cheap finiteness check every ``callbacks.CHECK_EVERY`` steps).

The loop is ``_Loop.run``: a ``TrainState`` and a few steps (``batches``, ``update``, ``end_epoch``) with
callback events between them (aekit.callbacks): divergence, early stopping, checkpoints, the progress bar
and the loggers of ``TrainConfig.log`` are callbacks, and a user's callbacks join them (``fit(callbacks=)``).

Reproducibility: all randomness (permutations, binarization, the model's noise) comes from the trainer's
seed, inside ``torch.random.fork_rng`` so the caller's global RNG is left as it was. A checkpoint (written at
the end of an epoch, by the policy of ``TrainConfig.checkpoint_every_*``, and when training ends) holds
weights, optimizer and RNG states, so a CPU run resumed from it ends bit-identical to an uninterrupted one.

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

import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from . import distributed, optim
from .callbacks import (
    Callback,
    Checkpoints,
    Divergence,
    EarlyStopping,
    ProgressBar,
    StateCopier,
    overrides,
    state_copy,
    still_improving,
    summary,
)
from .config import TrainConfig
from .errors import ConfigError, RunError, TrainingDiverged
from .likelihoods import bernoulli_sample, binarize_static
from .models.base import Autoencoder
from .run import CHECKPOINT, Checkpoint, Run

__all__ = ["fit", "FitResult", "TrainState", "evaluate_loss", "still_improving"]



@dataclass
class FitResult:
    """What ``fit`` returns.

    Attributes
    ----------
    model : the trained model, with its best weights, in eval mode.
    history : one record per epoch, as in metrics.jsonl.
    best_epoch, best_val_loss : the epoch of the lowest validation loss, and that loss.
    stopped : "completed", "early_stopping", "diverged" or the reason a callback gave ``request_stop``.
    run_dir, run : the run directory written (``out_dir``), and its ``Run``.
    config : the training options used, automatic values resolved.
    note : a warning worth reading (e.g. the validation loss was still falling fast), or None.
    already_ended : on resume of a run that had ended, why, in one line (nothing was trained); else None.
    """

    model: Autoencoder
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped: str = "completed"  # "completed" | "early_stopping" | "diverged" | a callback's reason
    run_dir: str | None = None
    run: Run | None = None  # the run directory written, when out_dir was given
    config: TrainConfig | None = None  # the training options used, automatic values resolved
    note: str | None = None  # a warning worth reading, e.g. the validation loss was still falling fast
    already_ended: str | None = None  # resume of a run that had ended: why, in one line (nothing was trained)

    @property
    def seconds_per_epoch(self) -> float:
        secs = [h["seconds"] for h in self.history]
        return statistics.median(secs) if secs else float("nan")

    @property
    def summary(self) -> dict:
        """How the training ended, as summary.json records it."""
        return summary(self.history, self.best_epoch, self.best_val_loss, self.stopped)


@dataclass(eq=False)
class TrainState:
    """The training loop's state, as callbacks see it (``aekit.callbacks``).

    Attributes
    ----------
    model, config, name : the model trained, its resolved TrainConfig, the family's name.
    dataset : the Dataset trained on (on the training device).
    run : the run directory being written (rank 0, with ``out_dir``), else None.
    rank, world : this process's rank and the number of ranks (0 and 1 without torchrun).
    optimizers, generator : one Adam per parameter group; the generator of permutations and binarization.
    epoch, step : the current epoch and minibatch, from 0.
    steps_per_epoch : minibatches per epoch. ``seen``: this rank's rows trained on in the epoch so far.
    sums : this rank's running sums of the loss and its terms (times the rows) in the epoch, on the device.
    record : the last finished epoch's record (None during an epoch); ``history``: every record so far.
    best_val, best_epoch, best_state, bad_epochs : the lowest validation loss, its epoch and weights, and
        the epochs since (kept by ``EarlyStopping``).
    initial_loss : the validation loss before training (the divergence reference; None for 0.1.0 runs).
    stopped : how training ended (set when it ends). ``stop_reason``: a stop asked for by a callback.
    note : a warning for the user, set when training ends.
    copier : the ``StateCopier`` behind ``copy_weights`` (made on first use).
    """

    model: Autoencoder
    config: TrainConfig
    dataset: object
    name: str
    run: Run | None
    optimizers: dict[str, torch.optim.Optimizer]
    generator: torch.Generator
    steps_per_epoch: int
    has_val: bool
    rank: int = 0
    world: int = 1
    epoch: int = 0
    step: int = 0
    seen: int = 0
    sums: dict[str, Tensor] = field(default_factory=dict)
    record: dict | None = None
    history: list[dict] = field(default_factory=list)
    best_val: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, Tensor] | None = None
    bad_epochs: int = 0
    initial_loss: float | None = None
    stopped: str = "completed"
    stop_reason: str | None = None
    note: str | None = None
    copier: StateCopier | None = field(default=None, repr=False)

    def copy_weights(self, into: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """``callbacks.state_copy(model, into)`` (a copy of the model's state dict, written into ``into`` in place
        when it fits) by one ``StateCopier`` of the fit: what the callbacks call every epoch."""
        if self.copier is None or self.copier.model is not self.model:
            self.copier = StateCopier(self.model)
        return self.copier(into)

    def request_stop(self, reason: str = "stopped") -> None:
        """End training after the current epoch; ``reason`` becomes ``stopped`` (the first reason given wins)."""
        self.stop_reason = self.stop_reason or reason

    def checkpoint(self) -> Checkpoint:
        """What a run resumes from, now: weights, optimizer and RNG states, history, early-stopping state."""
        gen = self.generator
        rng = {"torch": torch.get_rng_state(), "gen": gen.get_state()}
        if gen.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(gen.device)
        return Checkpoint(epoch=len(self.history), model=self.model.state_dict(), best=self.best_state,
                          optimizers={g: o.state_dict() for g, o in self.optimizers.items()}, rng=rng,
                          history=self.history, best_val=self.best_val, best_epoch=self.best_epoch,
                          bad_epochs=self.bad_epochs, initial_loss=self.initial_loss)


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
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train ``model`` on ``dataset``; return the model with its best weights.

    Automatic options (epochs, patience, threads) are chosen from the size of the training split
    (``TrainConfig.resolved_for``) and recorded; the thread count is the caller's again after.

    Parameters
    ----------
    model : Autoencoder
        A model built for the dataset (``aekit.build(name, dataset=ds, ...)``).
    dataset : aekit.datasets.Dataset
        The data: its training split is trained on, its validation split chooses the best epoch.
    config : TrainConfig, optional
        The training options (default: ``TrainConfig()``).
    out_dir : str or Path, optional
        Write a run directory there (config, best weights, checkpoints by the policy of
        ``config.checkpoint_every_*``, metrics.jsonl, summary.json, and the ``config.log`` folders).
    resume : bool
        Continue ``out_dir``'s run from its last checkpoint (the epochs after it are trained again, to the
        same numbers). A run that already ended (completed its epochs, stopped early or diverged) is not
        trained further: the result's ``already_ended`` says why.
    quiet : bool, optional
        No progress bar (default: quiet unless stderr is a terminal).
    model_name : str, optional
        The family's name recorded in the run (default: ``model.name``).
    callbacks : sequence of aekit.Callback
        Your callbacks, called at each event after the built-in divergence check and early stopping and
        before the checkpoints, progress bar and loggers (see ``aekit.callbacks``).

    Returns
    -------
    FitResult
        The model (best weights, eval mode), the history of epoch records, the best epoch and loss, how
        training stopped, the run and the resolved options.

    Raises
    ------
    TrainingDiverged
        The loss became NaN/Inf or exploded; the model keeps the last good epoch's weights.

    Notes
    -----
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
    if out is None and resume:
        raise ConfigError("resume needs the run directory (out_dir)")
    loggers = distributed.agree(lambda: _loggers(cfg, out), main_only=True) or []  # (before a run is started)
    model.to(device)
    dataset = dataset.to(device)

    def start():  # claimed for writing until fit returns (a second writer gets a clear error)
        if resume:
            return _resume(Run.open(out), model, cfg, dataset, name)
        return Run.create(out, name, model.config, cfg, getattr(dataset, "spec", None)), None, None

    run, ck, ended = (None, None, None) if out is None else \
        distributed.agree(start, main_only=True) or (None, None, None)  # rank 0 alone touches the folder
    if resume and world > 1:  # the others need no access to the folder
        ck, ended = distributed.broadcast_object((ck, ended))
    has_run = distributed.broadcast_object(run is not None)  # whether rank 0 writes a run (the same on all)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(cfg.threads)
        if ended is not None:
            return _ended(model, ck, cfg, run, name, ended)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            loop = _Loop(model, dataset, cfg, run, name, device)
            loop.start(ck, out)
            built_in = [Divergence(), EarlyStopping(), *callbacks, *([Checkpoints(run)] if has_run else []),
                        *([] if quiet else [ProgressBar()])]
            result = loop.run(built_in + loggers)
            result.run_dir = None if out is None else str(out)
            return result
    finally:
        torch.set_num_threads(threads)
        if run is not None:
            run.release()


def _loggers(cfg: TrainConfig, out: Path | None) -> list[Callback]:
    """The callbacks of ``cfg.log`` (made on rank 0, which alone logs; a missing package is a ConfigError)."""
    if not cfg.log:
        return []
    from .loggers import make_loggers

    return make_loggers(cfg, out)


def _check_shares(cfg: TrainConfig, n_train: int, world: int) -> None:
    """Every rank needs a row of every full batch (a short last batch may leave a rank without one)."""
    if cfg.batch_size < world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is smaller than the {world} ranks sharing each batch; "
                          f"use a batch of at least {world} rows (it is the global batch, split across ranks)")
    if n_train < world:
        raise ConfigError(f"the training split has {n_train} examples, fewer than the {world} ranks; "
                          "train with fewer processes (torchrun --nproc-per-node)")


class _Loop:
    """The training loop: ``run`` is the whole of it; the other methods are its steps."""

    def __init__(self, model: Autoencoder, ds, cfg: TrainConfig, run: Run | None, name: str, device):
        self.model, self.cfg, self.device = model, cfg, device
        self.modules = _flaggable(model)  # switched between training and eval mode twice an epoch
        self.params = tuple(model.parameters())  # their gradients cleared before every update phase
        gen = torch.Generator(device=device).manual_seed(cfg.seed)  # the same stream on every rank: permutations
        self.x_train, self.y_train, self.x_val, self.y_val = ds.x_train, ds.y_train, ds.x_val, ds.y_val
        if cfg.binarize == "static":
            self.x_train = binarize_static(self.x_train, cfg.seed + 1)
        if cfg.binarize != "none":
            self.x_val = binarize_static(self.x_val, cfg.seed + 2)  # a fixed validation set even for dynamic

        self.groups = model.param_groups()
        self.scales = {g: model.lr_scales().get(g, 1.0) for g in self.groups}  # e.g. a slower adversary
        plain = cfg.amp != "fp16" and not cfg.compile  # aekit.optim.Adam on CPU: no torch._dynamo import
        opts = {g: optim.make(p, cfg.lr * self.scales[g], cfg.weight_decay, device, plain)
                for g, p in self.groups.items()}
        phases = model.update_phases()
        unknown = [g for g, _ in phases if g not in opts]
        if unknown:
            raise ConfigError(f"model {name}: update phase(s) {unknown} name no parameter group ({list(opts)})")
        self.phases = [(g, torch.compile(fn)) for g, fn in phases] if cfg.compile else phases
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        self.n = self.x_train.shape[0]
        self.state = TrainState(model, cfg, ds, name, run, opts, gen, math.ceil(self.n / cfg.batch_size),
                                has_val=len(self.x_val) > 0, rank=distributed.rank(), world=distributed.world_size(),
                                best_state=state_copy(model))

    def start(self, ck: Checkpoint | None, out: Path | None) -> None:
        """Continue from checkpoint ``ck``, or measure the loss before training (the divergence reference)."""
        if ck is not None:
            _restore(self.state, ck, f"{out / CHECKPOINT}")
            return
        distributed.broadcast_tensors(self.model.state_dict().values())  # every rank starts from rank 0's weights
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):  # training's stream
            x, y = (self.x_val, self.y_val) if self.state.has_val else (self.x_train, self.y_train)
            self.state.initial_loss = _loss(self.model, x, y, self.cfg.batch_size * 4)["loss"]

    def run(self, callbacks: list[Callback]) -> FitResult:
        st = self.state
        hooks = {e: [getattr(cb, e) for cb in callbacks if overrides(cb, e)]
                 for e in ("on_fit_start", "on_batch_end", "on_epoch_end", "on_fit_end")}
        _emit(hooks["on_fit_start"], st)
        try:
            for epoch in range(len(st.history), self.cfg.epochs):
                self.start_epoch(epoch)
                for step, batch in enumerate(self.batches()):
                    st.step = step
                    self.update(*batch)
                    _emit(hooks["on_batch_end"], st)
                self.end_epoch()
                _emit(hooks["on_epoch_end"], st)
                if st.stop_reason is not None:
                    st.stopped = st.stop_reason
                    break
        except TrainingDiverged:
            st.stopped = "diverged"
            if st.record is not None and st.history and st.history[-1] is st.record:
                st.history.pop()  # the epoch that diverged is not one of the run's
            _emit(hooks["on_fit_end"], st)
            raise
        self.model.load_state_dict(st.best_state)
        self.model.eval()
        st.note = still_improving(st.history) if st.stopped == "completed" else None
        _emit(hooks["on_fit_end"], st)
        return FitResult(self.model, st.history, st.best_epoch, st.best_val, st.stopped, None, st.run, self.cfg,
                         st.note)

    def start_epoch(self, epoch: int) -> None:
        st = self.state
        st.epoch, st.step, st.seen, st.sums, st.record = epoch, 0, 0, {}, None
        self.model.set_progress(epoch, self.cfg.epochs)
        _set_training(self.model, True, self.modules)
        self.t0 = time.perf_counter()
        if st.world > 1:  # this rank's own noise stream for the epoch (see the module docstring)
            torch.manual_seed(distributed.rank_seed(self.cfg.seed, st.rank, epoch))

    def batches(self) -> Iterator[tuple[Tensor, Tensor | None, int, int]]:
        """(x, y, this rank's rows, the global batch's rows) of each minibatch of an epoch. With several ranks
        a rank left without rows (a short last batch) gets a stand-in row with weight 0, so that every rank
        steps every optimizer alike."""
        st, bs, gen = self.state, self.cfg.batch_size, self.state.generator
        dynamic, world = self.cfg.binarize == "dynamic", st.world
        perm = torch.randperm(self.n, generator=gen, device=self.device)
        rows_of = _row_picker(self.x_train)
        for s in range(st.steps_per_epoch):
            batch = perm[s * bs : (s + 1) * bs]  # the global batch
            idx, rows = batch, batch.shape[0]
            if world > 1:  # this rank's rows of it
                idx = batch[st.rank::world]
            share = idx.shape[0]
            idx = idx if share else batch[:1]
            if dynamic and world > 1:  # drawn for the global batch: the shared generator stays in step,
                xg = bernoulli_sample(rows_of(batch), gen)  # and the draw is the 1-rank one
                xb = xg[st.rank::world] if share else xg[:1]
            else:
                xb = bernoulli_sample(rows_of(idx), gen) if dynamic else rows_of(idx)
            yield xb, None if self.y_train is None else self.y_train[idx], share, rows

    def update(self, xb: Tensor, yb: Tensor | None, share: int, rows: int) -> None:
        """Every update phase of the model on one minibatch; the loss and its terms added to ``state.sums``."""
        st, cfg = self.state, self.cfg
        if cfg.lr_schedule == "cosine":
            total = cfg.epochs * st.steps_per_epoch
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * (st.epoch * st.steps_per_epoch + st.step) / total))
            for g, o in st.optimizers.items():
                for pg in o.param_groups:
                    pg["lr"] = lr * self.scales[g]
        for i, (group, objective) in enumerate(self.phases):
            opt = st.optimizers[group]
            for p in self.params:  # no gradient leaks from one phase into the next (Module.zero_grad's work)
                p.grad = None
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                res = objective(xb, yb)
            self.scaler.scale(res.loss).backward()
            if st.world > 1:  # the whole batch's mean gradient: sum over ranks of share/rows x own mean
                distributed.average_gradients(self.groups[group], share / rows)
            if cfg.grad_clip > 0:
                self.scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(self.groups[group], cfg.grad_clip)
            self.scaler.step(opt)
            self.scaler.update()
            if i == 0:
                _acc(st.sums, "loss", res.loss.detach().float() * share)
            for k, v in res.terms.items():
                _acc(st.sums, k, v.float() * share)
        st.seen += share

    def end_epoch(self) -> None:
        """The epoch's record: training metrics (summed over ranks), validation, seconds, learning rate."""
        st = self.state
        sums = _reduce_sums(st.sums) if st.world > 1 else st.sums  # the same numbers on every rank
        train = {k: v.item() / self.n for k, v in sums.items()}
        seconds = time.perf_counter() - self.t0
        val = (_loss(self.model, self.x_val, self.y_val, self.cfg.batch_size * 4, self.modules) if st.has_val
               else dict(train))
        rec = {"epoch": st.epoch + 1, "train": train, "val": val, "seconds": seconds,
               "lr": next(iter(st.optimizers.values())).param_groups[0]["lr"]}
        if st.world > 1:  # the number of processes the epoch ran on (a resumed run may change it)
            rec["ranks"] = st.world
        st.record = rec
        st.history.append(rec)


def _row_picker(x) -> Callable[[Tensor], Tensor]:
    """x[idx] for a 1-D index of rows: ``index_select`` on a tensor (the same copy, a fraction of advanced
    indexing's cost on a CPU), x's own indexing on a store (``aekit.datasets.storage``)."""
    if type(x) is Tensor:
        return lambda idx: torch.index_select(x, 0, idx)
    return x.__getitem__


def _emit(hooks, state: TrainState) -> None:
    for hook in hooks:
        hook(state)


def _restore(st: TrainState, ck: Checkpoint, where: str) -> None:
    """Put the checkpoint's weights, optimizer, RNG and early-stopping states into the loop's state; a
    checkpoint that does not fit (other shapes, missing states) is a RunError."""
    model, gen = st.model, st.generator
    try:
        model.load_state_dict(ck.model)
        best = {k: v.to(gen.device, copy=True) for k, v in ck.best.items()}  # (updated in place later)
        model.load_state_dict(best)  # the same check for the best weights; ck.model is loaded again below
        model.load_state_dict(ck.model)
        rng = ck.rng["torch"], ck.rng["gen"], ck.rng.get("cuda")
        torch.set_rng_state(rng[0])
        gen.set_state(rng[1])
        if rng[2] is not None:
            torch.cuda.set_rng_state(rng[2], gen.device)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        detail = str(e).strip().splitlines()[-1].strip() if str(e).strip() else ""
        why = f"no {e} state" if isinstance(e, KeyError) else detail
        raise RunError(f"{where}: the checkpoint does not fit this run's {st.name} model ({type(e).__name__}: {why})"
                       "; the run can be evaluated but not resumed") from None
    for g, o in st.optimizers.items():
        try:
            o.load_state_dict(ck.optimizers[g])
        except (KeyError, ValueError) as e:  # e.g. a family whose parameter groups changed since the run began
            raise RunError(f"{where}: the checkpoint's optimizer state for parameter group {g!r} does not "
                           f"match this aekit's {st.name} ({e}); the run can be evaluated but not resumed") from None
    st.best_state, st.history = best, list(ck.history)
    st.best_val, st.best_epoch, st.bad_epochs, st.initial_loss = ck.best_val, ck.best_epoch, ck.bad_epochs, \
        ck.initial_loss


def _ended(model: Autoencoder, ck: Checkpoint | None, cfg: TrainConfig, run: Run | None, name: str,
           ended: tuple[str, str]) -> FitResult:
    """The result of resuming a run that had ended: its best weights and history; nothing trained or written."""
    history, best_epoch, best_val = [], 0, math.inf
    if ck is not None:
        history, best_epoch, best_val = list(ck.history), ck.best_epoch, ck.best_val
        try:
            model.load_state_dict({k: v.to(model.device) for k, v in ck.best.items()})
        except RuntimeError:
            pass  # (a checkpoint that does not fit: the model stays as built; the run's weights are on disk)
    model.eval()
    stopped, why = ended
    return FitResult(model, history, best_epoch, best_val, stopped, None if run is None else str(run.path), run,
                     cfg, None, why)


def _acc(sums: dict, key: str, value: Tensor) -> None:
    sums[key] = sums[key] + value if key in sums else value


def _reduce_sums(sums: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-rank sums of the same keys, summed across ranks (one all_reduce) and then rank 0's result handed
    to every rank, so that every rank decides on bit-identical numbers."""
    keys = list(sums)
    flat = distributed.sum_(torch.stack([sums[k].float() for k in keys]))
    distributed.broadcast_tensors([flat])
    return dict(zip(keys, flat.unbind()))


def _flaggable(model: torch.nn.Module) -> tuple | None:
    """The model's modules when none defines its own ``train`` (their ``training`` flags can then be set
    directly: ``_set_training``), else None (``Module.train`` must run, to call theirs)."""
    modules = tuple(model.modules())
    return None if any(type(m).train is not torch.nn.Module.train for m in modules) else modules


def _set_training(model: torch.nn.Module, training: bool, modules: tuple | None = None) -> None:
    """``model.train(training)``; with ``modules`` (``_flaggable(model)``, made once) each module's flag set
    directly, without ``Module.train``'s recursion through ``named_children`` and ``Module.__setattr__`` (a table
    member of one batch switches twice an epoch, for its validation loss)."""
    if modules is None:
        model.train(training)
        return
    for m in modules:
        object.__setattr__(m, "training", training)


@torch.no_grad()
def _loss_sums(model: Autoencoder, x: Tensor, y: Tensor | None, batch_size: int,
               modules: tuple | None = None) -> dict[str, Tensor]:
    """Sums over the rows of (x, y) of the model's objective and its terms, in eval mode (tensors); ``modules``:
    ``_flaggable(model)``, if known."""
    was_training = model.training
    _set_training(model, False, modules)
    sums: dict[str, Tensor] = {}
    for s in range(0, x.shape[0], batch_size):
        xb = x[s : s + batch_size]
        yb = y[s : s + batch_size] if y is not None else None
        res = model(xb, yb)
        _acc(sums, "loss", res.loss.detach().float() * xb.shape[0])
        for k, v in res.terms.items():
            _acc(sums, k, v.float() * xb.shape[0])
    _set_training(model, was_training, modules)
    return sums


def evaluate_loss(model: Autoencoder, x: Tensor, y: Tensor | None, batch_size: int = 512,
                  modules: tuple | None = None) -> dict[str, float]:
    """Mean of the model's objective and its terms over (x, y), in eval mode. Returns floats. ``modules``:
    ``_flaggable(model)``, if known (the trainer's, which switches modes every epoch)."""
    return {k: v.item() / x.shape[0] for k, v in _loss_sums(model, x, y, batch_size, modules).items()}


def _loss(model: Autoencoder, x: Tensor, y: Tensor | None, batch_size: int,
          modules: tuple | None = None) -> dict[str, float]:
    """``evaluate_loss`` in one process; with several ranks each scores a contiguous share of the rows (a
    rank without rows scores a stand-in row with weight 0) and the sums are added across ranks: the same
    numbers on every rank. ``modules``: ``_flaggable(model)``, if known."""
    world = distributed.world_size()
    if world == 1:
        return evaluate_loss(model, x, y, batch_size, modules)
    n, r = x.shape[0], distributed.rank()
    lo, hi = n * r // world, n * (r + 1) // world
    if hi > lo:
        sums = _loss_sums(model, x[lo:hi], None if y is None else y[lo:hi], batch_size, modules)
    else:
        sums = {k: v * 0 for k, v in _loss_sums(model, x[:1], None if y is None else y[:1], batch_size,
                                                 modules).items()}
    return {k: v.item() / n for k, v in _reduce_sums(sums).items()}


def _resume(run: Run, model, cfg: TrainConfig, ds, name: str):
    """(run, checkpoint or None, ended or None) of the run to continue, claimed, after checking that model,
    data and training options are the ones it started with (``TrainConfig.RESUMABLE`` may change). ``ended``:
    (how it stopped, why it is not trained further) for a run that had ended; its files are left as they are."""
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
        changed = {k for k in new if k not in TrainConfig.RESUMABLE and old.get(k, new[k]) != new[k]}
        if changed:
            raise RunError(f"{run.path}: cannot resume with different training options ({', '.join(sorted(changed))})")
        ck = run.load_checkpoint() if run.has_checkpoint else None
        ended = _has_ended(run, ck, cfg)
        if ended is None and old != new:  # a new epoch budget (or checkpoint or logging options)
            run.update_train(cfg)
    except BaseException:
        run.release()
        raise
    return run, ck, ended


def _has_ended(run: Run, ck: Checkpoint | None, cfg: TrainConfig) -> tuple[str, str] | None:
    """(how, why in one line) when the run has ended: it stopped early, diverged or was stopped by a callback
    (its summary.json says so, or its checkpoint's early-stopping count reached the patience), or its
    checkpoint holds all ``cfg.epochs`` epochs; else None."""
    try:
        stopped = run.summary.get("stopped")
    except RunError:
        stopped = None  # a damaged summary.json does not stop a resume
    if ck is not None and cfg.patience and ck.bad_epochs >= cfg.patience:
        stopped = "early_stopping"
    at = f" after epoch {ck.epoch} (best epoch {ck.best_epoch})" if ck is not None else ""
    if stopped == "early_stopping":
        return stopped, (f"{run.path} stopped early{at}, {cfg.patience} epochs without improvement; it is finished "
                         "and --resume trains no further (start a new run to train longer)")
    if stopped == "diverged":
        return stopped, (f"{run.path} diverged{at} and was stopped; --resume would diverge again the same way "
                         "(start a new run, e.g. with a smaller --lr)")
    if isinstance(stopped, str) and stopped != "completed":
        return stopped, f"{run.path} was stopped ({stopped}){at}; --resume trains no further"
    if ck is not None and ck.epoch >= cfg.epochs:
        return "completed", (f"{run.path} has trained {ck.epoch} epochs, all that --epochs {cfg.epochs} asks for; "
                             "nothing to resume (give a larger --epochs to train on)")
    return None
