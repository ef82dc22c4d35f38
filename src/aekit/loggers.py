"""Watch training: the callbacks of ``TrainConfig.log`` (``--log tensorboard``, ``--log mlflow``).

Each logs, per epoch, every scalar of the epoch's record (``train/<term>``, ``val/<term>``, ``seconds``,
``lr``), the model, training and data options once as parameters, and reconstruction and sample figures
(aekit.plots; image data only) every ``TrainConfig.log_figures_every`` epochs and at the last one.

``TensorBoardLogger`` writes event files into RUN/tensorboard/ (``Run.tensorboard_dir``: a folder the run
owns, so ``Run.remove`` and ``compare --overwrite`` still know the run as aekit's), with
``torch.utils.tensorboard.SummaryWriter``; a resumed run purges the events of the epochs it trains again.
``MLflowLogger`` logs to an MLflow tracking store through ``mlflow.tracking.MlflowClient``: by default a local
file store, ``file:./mlruns`` (mlflow-skinny reads and writes it; MLflow 3 keeps that store only with
``MLFLOW_ALLOW_FILE_STORE=true``, which is set for file: URIs unless already set), in the experiment "aekit",
one MLflow run per aekit run, tagged with the run folder's path (``aekit.run_dir``) and continued on resume.

Both are optional extras (``pip install 'aekit[tensorboard]'``, ``'aekit[mlflow]'``), imported only when
asked for. Figures are drawn inside ``torch.random.fork_rng``, so logging never changes what is trained.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .callbacks import Callback
from .errors import ConfigError
from .run import TENSORBOARD

if TYPE_CHECKING:
    from .config import TrainConfig
    from .trainer import TrainState

__all__ = ["TensorBoardLogger", "MLflowLogger", "make_loggers", "DEFAULT_MLFLOW_URI", "FIGURES"]

DEFAULT_MLFLOW_URI = "file:./mlruns"  # MLflow's own default location, as a local file store
EXPERIMENT = "aekit"  # the MLflow experiment of aekit's runs
FIGURES = ("reconstructions", "samples")  # of aekit.plots.run_figures: what the loggers draw
FIGURES_PER_RUN = 10  # log_figures_every=None: about this many figure epochs per run


def make_loggers(cfg: TrainConfig, out: str | Path | None) -> list[Callback]:
    """The callbacks ``cfg.log`` names, for a run written to ``out`` (None: no run directory)."""
    made: list[Callback] = []
    for name in cfg.log:
        if name == "tensorboard":
            if out is None:
                raise ConfigError("log=tensorboard writes into the run directory: give out_dir (--out)")
            made.append(TensorBoardLogger(Path(out) / TENSORBOARD))
        elif name == "mlflow":
            made.append(MLflowLogger(cfg.mlflow_uri or DEFAULT_MLFLOW_URI, out))
    return made


def _missing(extra: str, what: str) -> ConfigError:
    return ConfigError(f"--log {extra} needs {what}, which is not installed: pip install 'aekit[{extra}]'")


class _Logger(Callback):
    """What both loggers share: which scalars, parameters and figures an epoch gives."""

    def figures_due(self, state: TrainState) -> bool:
        every = state.config.log_figures_every
        if every is None:
            every = max(1, math.ceil(state.config.epochs / FIGURES_PER_RUN))
        last = state.stop_reason is not None or len(state.history) >= state.config.epochs
        return every > 0 and (len(state.history) % every == 0 or last)

    @staticmethod
    def scalars(record: dict) -> dict[str, float]:
        out = {f"{split}/{k}": v for split in ("train", "val") for k, v in record[split].items() if v is not None}
        out.update(seconds=record["seconds"], lr=record["lr"])
        return out

    @staticmethod
    def params(state: TrainState) -> dict[str, str]:
        spec = getattr(state.dataset, "spec", None)
        groups = {"model": {"name": state.name, **state.model.config.to_dict()}, "train": state.config.to_dict(),
                  "data": {} if spec is None else spec.to_dict()}
        return {f"{g}.{k}": v if isinstance(v, str) else json.dumps(v) for g, d in groups.items() for k, v in d.items()}

    @staticmethod
    def figures(state: TrainState):
        """(name, Figure) of FIGURES that apply to the model and data (none for tables), drawn without
        touching the training's random streams."""
        from . import plots

        dev, out = state.model.device, []
        if getattr(state.dataset, "kind", None) != "image":
            return out
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            for name, _, fig in plots.run_figures(state.model, state.dataset, None, n=8, split="val"):
                if name == "latent":  # the figures after it are not wanted (and cost more)
                    break
                if name in FIGURES:
                    out.append((name, fig))
        return out


class TensorBoardLogger(_Logger):
    """Event files in ``log_dir`` (RUN/tensorboard/): scalars per epoch, options as text and hparams,
    figures every ``log_figures_every`` epochs. View with ``tensorboard --logdir RUN/tensorboard``."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "TensorBoard") from None
        self._writer_class, self.log_dir = SummaryWriter, Path(log_dir)

    def on_fit_start(self, state: TrainState) -> None:
        done = len(state.history)  # a resumed run trains the epochs after its checkpoint again: their old events go
        self.writer = self._writer_class(str(self.log_dir), purge_step=done + 1 if done else None)
        if not done:
            from torch.utils.tensorboard.summary import hparams

            params = self.params(state)
            self.writer.add_text("options", "\n".join(f"    {k} = {v}" for k, v in params.items()), 0)
            for summary in hparams(params, {"val/loss": math.nan}):
                self.writer.file_writer.add_summary(summary)

    def on_epoch_end(self, state: TrainState) -> None:
        epoch = state.record["epoch"]
        for k, v in self.scalars(state.record).items():
            self.writer.add_scalar(k, v, epoch)
        if self.figures_due(state):
            for name, fig in self.figures(state):
                self.writer.add_figure(name, fig, epoch, close=False)
        self.writer.flush()

    def on_fit_end(self, state: TrainState) -> None:
        self.writer.close()


class MLflowLogger(_Logger):
    """One MLflow run per aekit run in ``tracking_uri``: params, metrics per epoch (step = epoch), figures as
    artifacts (figures/<name>_epoch<E>.png), tags ``aekit.run_dir`` and ``aekit.model``; ended as FINISHED,
    or FAILED after a divergence."""

    def __init__(self, tracking_uri: str, out: str | Path | None):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "MLflow (mlflow-skinny is enough)") from None
        if tracking_uri.startswith("file:"):
            path = tracking_uri[len("file:"):]
            tracking_uri = Path(path).resolve().as_uri() if not path.startswith("//") else tracking_uri
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: the file store is opt-in
        self.tracking_uri = tracking_uri
        self.run_dir = None if out is None else str(Path(out).resolve())
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def on_fit_start(self, state: TrainState) -> None:
        from mlflow.entities import Param

        client = self.client
        exp = client.get_experiment_by_name(EXPERIMENT)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(EXPERIMENT)
        found = []
        if self.run_dir is not None and state.history:  # resumed: the MLflow run of this aekit run goes on
            found = client.search_runs([exp_id], filter_string=f"tags.`aekit.run_dir` = '{_quote(self.run_dir)}'",
                                       max_results=1, order_by=["attributes.start_time DESC"])
        if found:
            self.run_id = found[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
            return
        tags = {"aekit.model": state.name, **({"aekit.run_dir": self.run_dir} if self.run_dir else {})}
        name = Path(self.run_dir).name if self.run_dir else state.name
        self.run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
        params = [Param(k, v[:6000]) for k, v in self.params(state).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(self.run_id, params=params[i : i + 100])

    def on_epoch_end(self, state: TrainState) -> None:
        from mlflow.entities import Metric

        epoch, now = state.record["epoch"], int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, epoch) for k, v in self.scalars(state.record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        if self.figures_due(state):
            for name, fig in self.figures(state):
                self.client.log_figure(self.run_id, fig, f"figures/{name}_epoch{epoch:04d}.png")

    def on_fit_end(self, state: TrainState) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if state.stopped == "diverged" else "FINISHED")


def _quote(text: str) -> str:
    """``text`` inside a single-quoted MLflow search string."""
    return text.replace("\\", "\\\\").replace("'", "\\'")
