"""Callbacks: code run at the events of the training loop (``aekit.trainer``), the loop's own features included.

Events, each a method of ``Callback`` that gets the loop's ``TrainState``::

    on_fit_start(state)   the model, optimizers and history are ready (restored from the checkpoint on resume)
    on_batch_end(state)   after each minibatch's update (state.step; state.sums: running sums on the device)
    on_epoch_end(state)   after each epoch's validation (state.record, the epoch's metrics, ends state.history)
    on_fit_end(state)     once, when training ends (state.stopped; state.model holds the weights fit returns)

``fit`` calls them in this order: ``Divergence``, ``EarlyStopping``, the user's callbacks, ``Checkpoints``
(with a run directory), ``ProgressBar`` (unless quiet), the loggers of ``TrainConfig.log`` (aekit.loggers).
A callback ends training after the current epoch with ``state.request_stop(reason)``, or aborts it by raising;
``TrainingDiverged`` ends it as a divergence (on_fit_end still runs, then ``fit`` raises it).

Under torchrun every rank runs the callbacks; a decision (a stop) must be the same on every rank, and only
rank 0 writes. A callback that draws random numbers from torch's global generator should do so inside
``torch.random.fork_rng()``: the training stream is then the same whether or not it ran, so a resumed run
stays bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import distributed
from .errors import TrainingDiverged

if TYPE_CHECKING:
    from .run import Run
    from .trainer import TrainState

CHECK_EVERY = 100  # steps between finiteness checks (one host sync each)
EXPLODED = 10.0  # a loss this many times its own scale above the untrained model's has diverged
STILL_FALLING = 0.01  # relative drop of the validation loss per epoch, over the last epochs, worth a warning

__all__ = ["Callback", "Divergence", "EarlyStopping", "Checkpoints", "ProgressBar", "still_improving", "summary",
           "overrides", "state_copy", "StateCopier", "exploded"]


class Callback:
    """Base class of training callbacks: override the events you need; the others do nothing.

    Pass instances to ``aekit.fit(..., callbacks=[...])``. Every method gets the loop's state
    (``aekit.trainer.TrainState``): the model, the options (``state.config``), the epoch and step, the
    history of epoch records, the best validation loss and epoch, and ``state.request_stop(reason)``.

    Examples
    --------
    >>> class PrintLoss(aekit.Callback):
    ...     def on_epoch_end(self, state):
    ...         print(state.record["epoch"], state.record["val"]["loss"])
    >>> aekit.fit(model, ds, aekit.TrainConfig(epochs=3), callbacks=[PrintLoss()])  # doctest: +SKIP
    """

    def on_fit_start(self, state: TrainState) -> None:
        """Training is about to start (or to continue from a checkpoint: ``state.history`` is not empty)."""

    def on_batch_end(self, state: TrainState) -> None:
        """One minibatch was trained on (``state.step`` from 0; ``state.sums``: this rank's running sums of
        the loss and its terms times the rows, as device tensors: reading one waits for the device)."""

    def on_epoch_end(self, state: TrainState) -> None:
        """An epoch ended and was validated: ``state.record`` is its record (also the last of
        ``state.history``): {"epoch", "train": {...}, "val": {...}, "seconds", "lr"}."""

    def on_fit_end(self, state: TrainState) -> None:
        """Training ended: ``state.stopped`` says how ("completed", "early_stopping", "diverged" or the reason
        a callback gave); ``state.model`` holds the weights ``fit`` returns (the best, or after a divergence
        the last good ones)."""


def overrides(cb: Callback, event: str) -> bool:
    """Whether callback ``cb`` does something at ``event`` (the loop calls only those, each step)."""
    return getattr(type(cb), event) is not getattr(Callback, event)


def state_copy(model: torch.nn.Module, into: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """A detached copy of a model's state dict (on its device); ``into``: a copy made before, overwritten in
    place (no allocation: this runs every epoch)."""
    state = model.state_dict()
    if into is None or into.keys() != state.keys() or any(into[k].shape != v.shape for k, v in state.items()):
        return {k: v.detach().clone() for k, v in state.items()}
    with torch.no_grad():
        for k, v in state.items():
            into[k].copy_(v)
    return into


class StateCopier:
    """``state_copy`` of one model again and again (twice an epoch of a fit: its best and its last good weights)
    without building a state dict each time: the model's tensors are found once by their state-dict names, and
    a copy into an earlier copy first checks that each name still holds that very tensor, of the copy's shape
    (a replaced or resized tensor: the tensors are found again and ``state_copy`` does the copy)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.spots: tuple | None = None  # (key, module, attribute, tensor) of each entry; () when not found so

    def __call__(self, into: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        if into is not None:
            if self.spots is None:
                self.spots = _state_spots(self.model)
            if self._copy_into(into):
                return into
            if self.spots:  # the model changed since: find its tensors again, next time
                self.spots = None
        return state_copy(self.model, into)

    def _copy_into(self, into: dict[str, Tensor]) -> bool:
        if not self.spots or len(self.spots) != len(into):
            return False
        pairs = []
        for key, module, name, tensor in self.spots:
            dst = into.get(key)
            if dst is None or getattr(module, name, None) is not tensor or dst.shape != tensor.shape:
                return False
            pairs.append((dst, tensor))
        with torch.no_grad():
            for dst, src in pairs:
                dst.copy_(src)
        return True


def _state_spots(model: torch.nn.Module) -> tuple:
    """(key, module, attribute, tensor) of each entry of the model's state dict, or () when an entry is not a
    tensor attribute of the module its key names (extra state, a state-dict hook's own tensors)."""
    spots = []
    for key, value in model.state_dict(keep_vars=True).items():
        path, _, name = key.rpartition(".")
        try:
            module = model.get_submodule(path)
        except AttributeError:
            return ()
        if not isinstance(value, Tensor) or getattr(module, name, None) is not value:
            return ()
        spots.append((key, module, name, value))
    return tuple(spots)


class Divergence(Callback):
    """Ends a run whose training loss turns NaN/Inf (checked every ``CHECK_EVERY`` steps and at each epoch's
    end) or whose loss explodes far above the loss before training (``exploded``), and gives the model the
    weights of the last good epoch back."""

    def on_fit_start(self, state: TrainState) -> None:
        self.last_good = state.copy_weights()

    def on_batch_end(self, state: TrainState) -> None:
        if (state.step + 1) % CHECK_EVERY == 0 and not _finite_everywhere(state.sums["loss"], state.world):
            raise self._diverged(state, "the training loss became NaN/Inf")

    def on_epoch_end(self, state: TrainState) -> None:
        rec = state.record
        if not all(math.isfinite(v) for v in rec["train"].values()):
            raise self._diverged(state, "the training loss became NaN/Inf")
        loss = rec["val"]["loss"]
        if exploded(loss, state.initial_loss):
            what = "validation" if state.has_val else "training"
            raise self._diverged(state, f"the {what} loss exploded to {loss:.4g} (it was {state.initial_loss:.4g} "
                                        "before training)")
        self.last_good = state.copy_weights(into=self.last_good)

    def on_fit_end(self, state: TrainState) -> None:
        if state.stopped == "diverged":
            state.model.load_state_dict(self.last_good)

    @staticmethod
    def _diverged(state: TrainState, what: str) -> TrainingDiverged:
        e = state.epoch
        return TrainingDiverged(f"model {state.name}: {what} in epoch {e + 1}; the weights of epoch {e} were kept. "
                                f"Try a smaller --lr (now {state.config.lr:g}), --grad-clip 1, or check the data")


class EarlyStopping(Callback):
    """Keeps the best weights (lowest validation loss) and stops after ``TrainConfig.patience`` epochs
    without improvement (never when patience is 0)."""

    def on_epoch_end(self, state: TrainState) -> None:
        loss = state.record["val"]["loss"]
        if loss < state.best_val:
            state.best_val, state.best_epoch, state.bad_epochs = loss, state.record["epoch"], 0
            state.best_state = state.copy_weights(into=state.best_state)
            return
        state.bad_epochs += 1
        if state.config.patience and state.bad_epochs >= state.config.patience:
            state.request_stop("early_stopping")


class Checkpoints(Callback):
    """Writes the run directory (rank 0; the other ranks only agree on failures, so a failed write stops all).

    Each epoch's record is appended to metrics.jsonl. A checkpoint (with the best weights when they changed)
    is written at the end of an epoch when ``TrainConfig.checkpoint_every_epochs`` epochs or
    ``checkpoint_every_seconds`` seconds have passed since the last one, and at the last epoch, whatever
    ended training; then metrics.jsonl is fsync'ed, and summary.json is written when training ends. At the
    start metrics.jsonl is cut back to the history the run continues from (the checkpoint's: the epochs
    after it are trained again, to the same numbers). After a divergence the best weights, the records of
    the good epochs and the summary are written, and the last checkpoint is kept (such a run is not resumed).
    """

    def __init__(self, run: Run | None):
        self.run = run  # None on the ranks other than 0

    def _agree(self, fn) -> None:
        distributed.agree(fn, main_only=True)

    def on_fit_start(self, state: TrainState) -> None:
        self.last_epoch, self.last_time, self.best_written = len(state.history), time.monotonic(), None
        self._agree(lambda: self.run.write_history(state.history))

    def on_epoch_end(self, state: TrainState) -> None:
        self._agree(functools.partial(self._epoch_end, state))

    def _epoch_end(self, state: TrainState) -> None:
        cfg, done = state.config, len(state.history)
        self.run.append_history(state.record)
        due = (state.stop_reason is not None or done >= cfg.epochs
               or (cfg.checkpoint_every_epochs and done - self.last_epoch >= cfg.checkpoint_every_epochs)
               or (cfg.checkpoint_every_seconds and time.monotonic() - self.last_time >= cfg.checkpoint_every_seconds))
        if due:
            self._save_best(state)
            self.run.sync_history()
            self.run.save_checkpoint(state.checkpoint())
            self.last_epoch, self.last_time = done, time.monotonic()

    def _save_best(self, state: TrainState) -> None:
        if self.best_written != state.best_epoch or not self.run.has_weights:
            self.run.save_weights(state.best_state)
            self.best_written = state.best_epoch

    def on_fit_end(self, state: TrainState) -> None:
        def end():
            self._save_best(state)
            self.run.sync_history()
            self.run.write_summary({**summary(state.history, state.best_epoch, state.best_val, state.stopped),
                                    "note": state.note})

        self._agree(end)


class ProgressBar(Callback):
    """A tqdm bar of optimizer steps, with the epoch and the running training loss."""

    def on_fit_start(self, state: TrainState) -> None:
        from tqdm.auto import tqdm

        steps = state.steps_per_epoch
        self.bar = tqdm(total=state.config.epochs * steps, initial=len(state.history) * steps, desc=state.name,
                        unit="step", leave=False)

    def on_batch_end(self, state: TrainState) -> None:
        if state.step % 20 == 0 or state.step == state.steps_per_epoch - 1:
            self.bar.set_postfix(epoch=state.epoch + 1, loss=f"{state.sums['loss'].item() / max(state.seen, 1):.4g}")
        self.bar.update(1)

    def on_fit_end(self, state: TrainState) -> None:
        self.bar.close()


def _finite_everywhere(loss_sum: Tensor, world: int) -> bool:
    """Whether the running loss is finite on every rank (they stop the epoch together)."""
    finite = torch.isfinite(loss_sum)
    return distributed.all_true(finite) if world > 1 else bool(finite)


def exploded(loss: float, initial: float | None) -> bool:
    """Whether ``loss`` is far worse than the model's loss before training, ``initial``: above
    initial + EXPLODED * max(|initial|, 1). Any family, any likelihood: a model that learned anything is
    below its untrained loss, and one that diverged to finite garbage (a learning rate of 1e3 gives losses of
    1e13 nats) is many times above it. None (a checkpoint of aekit 0.1.0): no reference, no check."""
    return initial is not None and math.isfinite(initial) and loss > initial + EXPLODED * max(abs(initial), 1.0)


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


def summary(history: list[dict], best_epoch: int, best_val: float, stopped: str) -> dict:
    """summary.json's fields: how a training ended."""
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
