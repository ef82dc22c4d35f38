"""A run directory and its one owner, ``Run``: every read and write of a run's files goes through here.

    RUN/config.json             {"aekit_version", "model", "config", "train", "data"}: the family, its
                                resolved ModelConfig, the TrainConfig and the DataConfig, as JSON
    RUN/model.safetensors       the best weights (lowest validation loss)
    RUN/checkpoint.safetensors  last and best weights, optimizer and RNG states (tensors); epoch, history,
                                early-stopping state and optimizer scalars (JSON in the header metadata)
    RUN/metrics.jsonl           one JSON object per finished epoch, appended as each ends (on --resume cut back
                                to the checkpoint's epochs, which are trained again)
    RUN/summary.json            how the run ended
    RUN/tensorboard/            TensorBoard event files (`--log tensorboard`)
    RUN/detector.safetensors    a detector's state (aekit.scoring), one file: ``write_detector_state``

``Run.create(out, ...)`` starts a run (the trainer writes only through the returned object);
``Run.open(path)`` reads and checks config.json once and offers the model, the dataset, the history and
the evaluation policy (``evaluation_options``). Writes are atomic (files.py); nothing is ever unpickled.
Run directories written by aekit 0.1.0 have the same format and open as they are.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import files, registry
from .config import TrainConfig, resolve_device
from .datasets import DataConfig, columns_path
from .datasets import load as load_dataset
from .errors import AekitError, RunError

__all__ = ["CONFIG", "WEIGHTS", "CHECKPOINT", "METRICS", "SUMMARY", "MARKER", "LOCK", "REPORT", "FIGURES", "DETECTOR",
           "DETECTOR_TENSORS", "EVALUATION", "OWN_FILES", "EVAL_BINARIZE_SEED", "EvaluationOptions", "Checkpoint",
           "Run", "load", "save"]

CONFIG, WEIGHTS, CHECKPOINT, METRICS, SUMMARY = (
    "config.json", "model.safetensors", "checkpoint.safetensors", "metrics.jsonl", "summary.json",
)
MARKER = ".aekit-run.json"  # written first, by exclusive create: this folder is an aekit run
LOCK = ".aekit-lock.json"  # flock'ed by the one process that writes the run; holds its pid (a JSON number)
REPORT, FIGURES = "report.html", "figures"  # what `aekit report` / `plot` / compare add by default
TENSORBOARD = "tensorboard"  # the event files of `--log tensorboard` (aekit.loggers), and nothing else
# an anomaly detector's state (aekit.scoring): one safetensors file, its JSON in the header; "detector.json" is the
# manifest of the two-file state of earlier versions, read when the state file has no JSON of its own
DETECTOR, DETECTOR_TENSORS = "detector.json", "detector.safetensors"
EVALUATION = "evaluation.json"  # the last `aekit eval` of the run's own data, with the options it used
OWN_FILES = {CONFIG, WEIGHTS, CHECKPOINT, METRICS, SUMMARY, MARKER, LOCK, REPORT, DETECTOR, DETECTOR_TENSORS,
             EVALUATION}
# A run trained on binarized data has its likelihood evaluated on this static binarization of the split.
EVAL_BINARIZE_SEED = 0


@dataclass(frozen=True)
class EvaluationOptions:
    """How a run is evaluated, decided once from what it was trained on.

    ``normal_class``: the class a one-class run was trained on (anomaly detection scores the others), None
    for other runs or when another dataset is evaluated. ``binarize_seed``: the seed of the static
    binarization its likelihood is computed on (runs trained with binarize != "none"), else None.
    """

    normal_class: int | str | None = None
    binarize_seed: int | None = None
    binarize: str = "none"

    def likelihood_note(self, split: str) -> str | None:
        """One sentence saying on what data the likelihood was computed, when it is not the split as it is."""
        if self.binarize_seed is None:
            return None
        return (f"statically binarized {split} split (seed {self.binarize_seed}), as the run was trained with "
                f"binarize={self.binarize}")


@dataclass
class Checkpoint:
    """The state a run resumes from: everything the trainer needs to continue bit-identically."""

    epoch: int
    model: dict[str, Tensor]
    best: dict[str, Tensor]
    optimizers: dict[str, dict]  # parameter group -> optimizer state_dict
    rng: dict[str, Tensor]  # "torch" (global CPU), "gen" (the trainer's generator), "cuda" (optional)
    history: list[dict] = field(default_factory=list)
    best_val: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    initial_loss: float | None = None  # the validation loss before training (divergence reference)


class Run:
    """One run directory. Build it with ``Run.create`` or ``Run.open``; attributes are read-only views.

    Parameters
    ----------
    path : pathlib.Path
        The run directory.
    model_name : str
        The family (a key of ``aekit.MODELS``).
    model_config : aekit.config.ModelConfig
        The family's resolved config.
    train : aekit.TrainConfig
        The training options.
    data : aekit.DataConfig or None
        How the data was read; None when the run was trained on data it cannot re-read.
    aekit_version : str
        The aekit version that wrote the run.
    """

    def __init__(self, path: Path, model_name: str, model_config, train: TrainConfig, data, aekit_version: str):
        self.path = Path(path)
        self.model_name = model_name
        self.model_config = model_config
        self.train = train
        self.data = data
        self.aekit_version = aekit_version

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, model={self.model_name!r})"

    # --- creating and opening -------------------------------------------------------------------
    @classmethod
    def create(cls, out: str | Path, model_name: str, model_config, train: TrainConfig, data=None) -> Run:
        """Start a run in ``out`` and claim it (see ``claim``): the folder is created, or must be empty.

        The marker is created first and exclusively, so of two processes starting a run in one folder one
        wins and the other gets a RunError before writing anything. Release the claim with ``release()``.
        """
        from . import __version__

        out = Path(out)
        if out.exists() and not out.is_dir():
            raise RunError(f"{out} is a file, not a folder; choose another output folder (nothing was overwritten)")
        outer = cls.enclosing(out)
        if outer is not None:
            raise RunError(f"{out}: lies inside the aekit run {outer}; a run is never created inside another run: "
                           "choose a folder outside it (nothing was written)")
        made = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
            taken = any(out.iterdir())
        except OSError as e:
            raise RunError(f"{out}: cannot create the run folder ({e.strerror or e}); choose another --out") from None
        if taken:
            raise RunError(f"{out} already exists and is not empty; choose another --out (nothing was overwritten)")
        try:
            marked = _write_marker(out, __version__)
        except RunError:
            _unstart(out, made)
            raise
        if not marked:
            raise RunError(f"{out}: another aekit process started a run in this folder at the same moment; "
                           "choose another --out (nothing was overwritten)")
        run = cls(out, model_name, model_config, train, data, __version__)
        try:
            run.claim()
            run._write_config()
        except BaseException:  # e.g. a full disk: leave nothing that would block a retry into the same folder
            run.release()
            _unstart(out, made)
            raise
        return run

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """Read and check ``path``/config.json; a RunError that names the file for anything amiss."""
        path = Path(path)
        if not path.is_dir():
            what = "is a file, not a run directory" if path.exists() else "no such run directory"
            raise RunError(f"{path}: {what} (train one with `aekit train MODEL --out {path}`)")
        cfg_path = path / CONFIG
        if not cfg_path.is_file():
            raise RunError(f"{path}: not an aekit run directory (no {CONFIG} in it)")
        raw = _read_config(cfg_path)
        try:
            cls_ = registry.get(raw["model"])
            saved = raw["config"]
            if isinstance(saved, dict):  # options added since the run was written: the values it had then
                saved = {**cls_.Config.LEGACY, **saved}
            model_config = cls_.Config.from_dict(saved, what=f"model {raw['model']}")
            registry.check_model_size(raw["model"], model_config)  # before anything is allocated
            train = TrainConfig.from_dict(raw.get("train") or {}, what="train")
            data = None if raw.get("data") is None else DataConfig.from_dict(raw["data"], what="data")
        except AekitError as e:
            raise RunError(f"{cfg_path}: {e}; the file does not describe a run this aekit can rebuild") from None
        return cls(path, raw["model"], model_config, train, data, str(raw.get("aekit_version", "?")))

    def _write_config(self) -> None:
        files.write_json(self.path / CONFIG, {
            "aekit_version": self.aekit_version,
            "model": self.model_name,
            "config": self.model_config.to_dict(),
            "train": self.train.to_dict(),
            "data": None if self.data is None else self.data.to_dict(),
        })

    def update_train(self, train: TrainConfig) -> None:
        """Record new training options (on resume only the epoch budget may change)."""
        self.train = train
        self._write_config()

    # --- ownership ------------------------------------------------------------------------------
    def claim(self) -> None:
        """Take the run's advisory lock for writing (held until ``release()`` or the process ends, even by
        kill -9); a second process gets a RunError naming the holder's pid. Temporary files that a killed
        writer left behind are removed, and a run written before markers existed gets its marker."""
        if getattr(self, "_lock_fd", None) is not None:
            return
        self._lock_fd = _lock(self.path)
        _write_marker(self.path, self.aekit_version)
        for p in self.path.iterdir():
            if _is_temporary(p.name) and p.is_file():
                p.unlink(missing_ok=True)

    def release(self) -> None:
        self._close_metrics()
        fd, self._lock_fd = getattr(self, "_lock_fd", None), None
        if fd is not None:
            _unlock(fd)

    @staticmethod
    def why_not_removable(path: str | Path) -> str | None:
        """None when ``path`` is provably an aekit run that nobody is writing (its marker, or config.json of a
        run from before markers, and nothing in it but the files aekit writes); else why it is not."""
        path = Path(path)
        if not path.is_dir() or path.is_symlink():
            return "is not a folder"
        names = {p.name for p in path.iterdir()}
        if MARKER not in names and CONFIG not in names:
            return "is not an aekit run directory"
        foreign = sorted(n for n in names - OWN_FILES if not _is_temporary(n) and n not in (FIGURES, TENSORBOARD))
        if FIGURES in names:
            fig = path / FIGURES
            if not fig.is_dir() or fig.is_symlink() or any(not (q.suffix == ".png" or _is_temporary(q.name, ()))
                                                           for q in fig.iterdir()):
                foreign.append(f"{FIGURES}/ (with other files than figures)")
        if TENSORBOARD in names:
            tb = path / TENSORBOARD
            if not tb.is_dir() or tb.is_symlink() or any(not (q.name.startswith("events.out.tfevents.") and q.is_file()
                                                              and not q.is_symlink()) for q in tb.iterdir()):
                foreign.append(f"{TENSORBOARD}/ (with other files than TensorBoard's event files)")
        if foreign:
            return f"holds files aekit did not write ({', '.join(foreign[:5])})"
        if LOCK in names:
            try:
                _unlock(_lock(path))
            except RunError as e:
                return str(e).split(": ", 1)[1]
        return None

    @classmethod
    def remove(cls, path: str | Path) -> None:
        """Delete a run directory, only if ``why_not_removable`` finds it provably aekit's and idle."""
        why = cls.why_not_removable(path)
        if why is not None:
            raise RunError(f"{path} {why}; it is left alone")
        shutil.rmtree(path)

    @staticmethod
    def enclosing(path: str | Path, itself: bool = False) -> Path | None:
        """The aekit run folder that ``path`` lies inside (``itself``: or is), by its marker, or config.json and
        weights for a run from before markers; following links too. None when there is none."""
        p = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
        for q in dict.fromkeys((p, Path(os.path.realpath(p)))):
            for d in ([q] if itself else []) + list(q.parents):
                try:
                    if (d / MARKER).is_file() or ((d / CONFIG).is_file() and (d / WEIGHTS).is_file()):
                        return d
                except OSError:
                    continue
        return None

    def write_report(self, html: str) -> Path:
        """Write the run's own report (RUN/report.html), replacing an earlier one."""
        path = self.path / REPORT
        files.atomic_write_text(path, html)
        return path

    def write_figure(self, name: str, png: bytes) -> Path:
        """Write one of the run's own figures (RUN/figures/NAME.png), replacing an earlier one."""
        path = self.path / FIGURES / f"{name}.png"
        files.atomic_write_bytes(path, png)
        return path

    @property
    def has_weights(self) -> bool:
        """Whether the best weights were written (at the first checkpoint, and when training ends)."""
        return (self.path / WEIGHTS).exists()

    @property
    def has_checkpoint(self) -> bool:
        """Whether a checkpoint was written (a run killed before its first one has none and restarts from zero)."""
        return (self.path / CHECKPOINT).exists()

    # --- what a run holds -----------------------------------------------------------------------
    def model(self, weights: str = "best", device: str | torch.device | None = None):
        """The model rebuilt from config.json with its best weights (``weights="last"``: the checkpoint's), in
        eval mode. ``device``: None leaves it on the CPU, whatever device the run trained on; "auto" takes the
        best device here (``config.resolve_device``); a device this machine does not have is a ConfigError."""
        from .errors import ConfigError

        if weights not in ("best", "last"):
            raise ConfigError(f"weights must be 'best' or 'last', got {weights!r}")
        # seeded, so that building draws nothing from the caller's global RNG; the weights are loaded next
        model = registry.instantiate(self.model_name, self.model_config, seed=0)
        if weights == "best":
            path = self.path / WEIGHTS
            tensors, _ = files.load_tensors(path, _state_bytes(model))
        else:
            path = self.path / CHECKPOINT
            tensors = self.load_checkpoint().model
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip()
            raise RunError(f"{path}: weights do not match the model in {CONFIG} ({first})") from None
        model.eval()
        return model if device is None else model.to(resolve_device(device))

    def dataset(self, **overrides):
        """The dataset the run was trained on, with DataConfig fields replaced by ``overrides`` (JSON or
        command-line values; None leaves a field as it is).

        Naming data (``name_or_path``) reads other data: it keeps the run's table statistics, features and
        label column, so new rows are standardized as the training rows were; its split options start from
        the defaults.
        """
        if self.data is None:
            raise RunError(f"{self.path / CONFIG}: the run records no data it can re-read; give the data with "
                           "--dataset (datasets.load(...) in Python)")
        given = {k: v for k, v in overrides.items() if v is not None}
        if "name_or_path" in given:
            keep = {"label_column": self.data.label_column, "features": self.data.features, "stats": self.data.stats}
            new = Path(os.path.expanduser(str(given["name_or_path"])))
            if not (new.is_file() and new.suffix.lower() in (".csv", ".tsv", ".txt")):  # no such columns to name
                keep.pop("label_column")
                if not (new.is_file() and new.suffix.lower() == ".npy" and columns_path(new).exists()):
                    keep.pop("features")
            return load_dataset(DataConfig.from_dict({**keep, **given}, what="data"))
        return load_dataset(self.data.replace(**given))

    def evaluation_options(self, other_data: bool = False) -> EvaluationOptions:
        """The evaluation policy of this run (see EvaluationOptions); ``other_data``: not the run's own data."""
        normal = None if other_data or self.data is None else self.data.normal_class
        binarized = self.train.binarize != "none"
        return EvaluationOptions(normal, EVAL_BINARIZE_SEED if binarized else None, self.train.binarize)

    @property
    def history(self) -> list[dict]:
        """The records of metrics.jsonl, one per finished epoch ([] before the first). A last line without its
        newline is a record being appended (or torn by a crash) and is left out."""
        path = self.path / METRICS
        if not path.exists():
            return []
        out = []
        text = files.read_text(path)
        lines = text.split("\n")[:-1]  # whole lines only
        for i, line in enumerate(lines):
            if line.strip():
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    raise RunError(f"{path}: line {i + 1} is not JSON; the file is damaged") from None
                if not _is_epoch_record(rec):
                    raise RunError(f"{path}: line {i + 1} is not an epoch record ({{\"epoch\": int, \"train\": "
                                   "{...}, \"val\": {...}, \"seconds\": number}); the file is damaged")
                out.append(rec)
        return out

    @property
    def summary(self) -> dict:
        """summary.json ({} while the run has not ended)."""
        path = self.path / SUMMARY
        if not path.exists():
            return {}
        data = files.read_json(path)
        if not isinstance(data, dict):
            raise RunError(f"{path}: expected a JSON object, got {type(data).__name__}; the file is damaged")
        return data

    # --- evaluations ----------------------------------------------------------------------------
    def save_evaluation(self, options: dict, values: dict) -> bool:
        """Keep the metrics of an evaluation of the run's own data (``options``: what they depend on) for
        ``evaluation``. Best effort: False, and nothing written, when the run is being trained or the
        folder is not writable (evaluating a read-only run must not fail)."""
        try:
            self.claim()
        except RunError:
            return False
        try:
            files.write_json(self.path / EVALUATION, {"options": options, "values": values})
            return True
        except RunError:
            return False
        finally:
            self.release()

    def evaluation(self, options: dict) -> dict | None:
        """The metrics ``save_evaluation`` kept for exactly these ``options``, else None. The weights must not
        have changed since: an evaluation older than model.safetensors is ignored."""
        path = self.path / EVALUATION
        if not path.exists():
            return None
        if (self.path / WEIGHTS).exists() and path.stat().st_mtime_ns < (self.path / WEIGHTS).stat().st_mtime_ns:
            return None
        data = files.read_json(path)
        ok = isinstance(data, dict) and isinstance(data.get("values"), dict) and all(
            isinstance(v, (int, float, str)) for v in data["values"].values())
        if not ok:
            raise RunError(f"{path}: not an evaluation record ({{\"options\": ..., \"values\": ...}}); remove it")
        return data["values"] if data.get("options") == options else None

    # --- a detector's state --------------------------------------------------------------------------
    def write_detector_state(self, meta: dict, tensors: dict[str, Tensor]) -> None:
        """Publish a detector's state (``meta``: JSON, ``tensors``) as one file, atomically: a reader sees the
        previous state or this one, whole, never a mix, and a writer killed midway leaves the previous one.
        The run must be claimed (``claim``): one writer at a time. The manifest of an older two-file state is
        removed after (the new file wins meanwhile: ``detector_state`` reads it first)."""
        if getattr(self, "_lock_fd", None) is None:
            raise RunError(f"{self.path}: the run must be claimed (Run.claim) before its detector state is written")
        files.save_tensors(self.path / DETECTOR_TENSORS, tensors, {"detector": meta})
        (self.path / DETECTOR).unlink(missing_ok=True)

    def detector_state(self, bound) -> tuple[dict, dict[str, Tensor], Path] | None:
        """(meta, tensors, file) of the detector state, or None when the run has none (a plain run).

        ``bound(meta)``: the most bytes of tensors the state can hold given what its meta announces (a
        KeyError/TypeError/ValueError there: the meta is not a state). The meta is read first from the file's
        header, then the file whole within the bound; a file replaced in between (a concurrent ``calibrate``)
        is read again, so the meta and the tensors always come from one file. A state of an older aekit
        (detector.json + detector.safetensors) is read as it is."""
        path, legacy = self.path / DETECTOR_TENSORS, self.path / DETECTOR
        for _ in range(5):
            if not path.exists():
                if legacy.exists():
                    raise RunError(f"{legacy}: its tensors ({DETECTOR_TENSORS}) are missing; the run directory is "
                                   "damaged: calibrate it again or save the detector again")
                return None
            head = files.read_tensors_meta(path)
            meta = head.get("detector") if isinstance(head, dict) else None
            source = path
            if meta is None:  # the two-file state of an older aekit, or no state at all
                if not legacy.exists():
                    raise RunError(f"{path}: not a detector state (no detector metadata in it); the run directory "
                                   "may be damaged")
                meta, source = files.read_json(legacy), legacy
            try:  # never more than the file holds: a header announcing 10**15 scores allocates nothing
                limit = min(int(bound(meta)), max(0, path.stat().st_size - 8))
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
                raise RunError(f"{source}: not a detector state this aekit can read ({type(e).__name__}: {e}); the "
                               "run directory may be damaged") from None
            try:
                tensors, again = files.load_tensors(path, limit)
            except RunError:
                if files.read_tensors_meta(path) != head:  # replaced meanwhile: read the new one
                    continue
                raise
            if again == head:
                return meta, tensors, source
        raise RunError(f"{path}: the detector state kept changing while it was read (is a `calibrate` running in a "
                       "loop?); try again")

    # --- what the trainer writes ----------------------------------------------------------------
    def write_history(self, history: list[dict]) -> None:
        """Replace metrics.jsonl by ``history`` (atomically); ``append_history`` adds to it from then on."""
        self._close_metrics()
        files.atomic_write_text(self.path / METRICS, "".join(json.dumps(h) + "\n" for h in history))

    def append_history(self, record: dict, durable: bool = False) -> None:
        """Add one epoch's record to metrics.jsonl (one write() of one line: a kill -9 leaves whole lines);
        ``durable``: fsync it too (the trainer does when it writes a checkpoint, and at the end)."""
        if getattr(self, "_metrics", None) is None:
            self._metrics = files.AppendFile(self.path / METRICS)
        self._metrics.write((json.dumps(record) + "\n").encode())
        if durable:
            self._metrics.sync()

    def sync_history(self) -> None:
        """Make the lines appended so far durable (fsync)."""
        if getattr(self, "_metrics", None) is not None:
            self._metrics.sync()

    def _close_metrics(self) -> None:
        metrics, self._metrics = getattr(self, "_metrics", None), None
        if metrics is not None:
            metrics.close()

    @property
    def tensorboard_dir(self) -> Path:
        """The folder of this run's TensorBoard event files (``--log tensorboard``); it holds nothing else."""
        return self.path / TENSORBOARD

    def write_summary(self, summary: dict) -> None:
        files.write_json(self.path / SUMMARY, summary)

    def save_weights(self, state: dict[str, Tensor]) -> None:
        files.save_tensors(self.path / WEIGHTS, state)

    def save_checkpoint(self, ck: Checkpoint) -> None:
        tensors = {f"model/{k}": v for k, v in ck.model.items()}
        tensors.update({f"best/{k}": v for k, v in ck.best.items()})
        tensors.update({f"rng/{k}": v for k, v in ck.rng.items()})
        opt_meta = {}
        for g, state in ck.optimizers.items():
            t, opt_meta[g] = files.optimizer_to_tensors(f"opt/{g}", state)
            tensors.update(t)
        meta = {"epoch": ck.epoch, "history": ck.history,
                "best_val": ck.best_val if math.isfinite(ck.best_val) else None,
                "best_epoch": ck.best_epoch, "bad_epochs": ck.bad_epochs, "optimizers": opt_meta,
                "initial_loss": ck.initial_loss}
        files.save_tensors(self.path / CHECKPOINT, tensors, meta)

    def load_checkpoint(self) -> Checkpoint:
        """The checkpoint, read no further than this run's model can need."""
        path = self.path / CHECKPOINT
        if not path.exists():
            raise RunError(f"{self.path}: nothing to resume (no {CHECKPOINT}; the run never finished an epoch)")
        # model and best weights, Adam's two moments per parameter, RNG states and step counters
        state_bytes = registry.model_size(self.model_name, self.model_config)[1]
        tensors, meta = files.load_tensors(path, 4 * state_bytes + 2**20)
        try:
            parts: dict[str, dict[str, Tensor]] = {}
            for name, t in tensors.items():
                kind, _, rest = name.partition("/")
                parts.setdefault(kind, {})[rest] = t
            optimizers = {g: files.optimizer_from_tensors(f"opt/{g}", tensors, m)
                          for g, m in meta["optimizers"].items()}
            return Checkpoint(
                epoch=int(meta["epoch"]), model=parts.get("model", {}), best=parts.get("best", {}),
                optimizers=optimizers, rng=parts.get("rng", {}), history=list(meta["history"]),
                best_val=math.inf if meta["best_val"] is None else float(meta["best_val"]),
                best_epoch=int(meta["best_epoch"]), bad_epochs=int(meta["bad_epochs"]),
                initial_loss=None if meta.get("initial_loss") is None else float(meta["initial_loss"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise RunError(f"{path}: the checkpoint is incomplete ({type(e).__name__}: {e}); "
                           "the run may have been damaged") from None


def _read_config(path: Path) -> dict[str, Any]:
    """config.json as a dict with the keys a run needs, or a RunError naming what is wrong."""
    raw = files.read_json(path)
    if not isinstance(raw, dict):
        raise RunError(f"{path}: expected a JSON object, got {type(raw).__name__}; the file is not an aekit "
                       "run config")
    for key, kinds in (("model", (str,)), ("config", (dict,)), ("train", (dict,)), ("data", (dict, type(None)))):
        if key not in raw:
            raise RunError(f"{path}: missing key {key!r}; the file is not an aekit run config")
        if not isinstance(raw[key], kinds):
            want = " or ".join("null" if k is type(None) else {"str": "a string", "dict": "an object"}[k.__name__]
                               for k in kinds)
            raise RunError(f"{path}: {key!r} must be {want}, got {type(raw[key]).__name__}")
    return raw


def load(run_dir: str | Path, weights: str = "best", device: str | torch.device | None = None):
    """Rebuild the model of a run directory exactly: ``Run.open(run_dir).model(weights, device)``.

    Parameters
    ----------
    run_dir : str or pathlib.Path
        A run directory written by ``aekit.fit``, ``aekit.save`` or ``aekit train``.
    weights : {"best", "last"}, default="best"
        The weights of the best validation epoch, or of the last one.
    device : str or torch.device, optional
        Where to put the model: the CPU by default, "auto" for the best device here.

    Returns
    -------
    aekit.models.base.Autoencoder
        The model in eval mode. Custom networks are imported again by the import paths config.json names.

    Raises
    ------
    RunError
        The folder is not a run this aekit can rebuild (a missing or damaged file, a custom network that cannot be
        imported here), with the file and the reason on one line.
    """
    return Run.open(run_dir).model(weights, device)


def _state_bytes(model) -> int:
    """Bytes of a model's state dict (what its weights file holds, besides the header)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _is_temporary(name: str, of: tuple[str, ...] | None = None) -> bool:
    """A temporary file that files.atomic_write_bytes leaves when killed (".<name>.<random>.tmp"), for one of
    the names in ``of`` (default: the files of a run); ``of=()`` accepts any name ending in .png (figures)."""
    if not (name.startswith(".") and name.endswith(files.TMP_SUFFIX)):
        return False
    stem = name[1:].rsplit(".", 2)[0]  # drop ".<random>.tmp"
    return stem.endswith(".png") if of == () else stem in (OWN_FILES if of is None else of)


def _is_epoch_record(rec) -> bool:
    def numbers(d):
        return isinstance(d, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) or v is None
                                           for v in d.values())

    return (isinstance(rec, dict) and isinstance(rec.get("epoch"), int) and numbers(rec.get("train"))
            and numbers(rec.get("val")) and isinstance(rec.get("seconds", 0.0), (int, float)))


def _write_marker(folder: Path, version: str) -> bool:
    """Create folder/MARKER exclusively; False when it exists already. A failed write (a full disk) removes
    the marker again, so that it does not claim the folder."""
    path = folder / MARKER
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    except OSError as e:
        raise RunError(f"{path}: cannot write ({e.strerror or e}); choose another --out") from None
    text = json.dumps({"aekit_version": version, "created": dt.datetime.now(dt.timezone.utc).isoformat()}) + "\n"
    try:
        try:
            if os.write(fd, text.encode()) != len(text.encode()):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        finally:
            os.close(fd)
    except OSError as e:
        path.unlink(missing_ok=True)
        raise RunError(f"{path}: cannot write ({e.strerror or e}); free some space or choose another --out "
                       "(nothing was left behind)") from None
    return True


def _unstart(folder: Path, made: bool) -> None:
    """Undo a run's start that failed: its marker and lock, and the folder when ``Run.create`` made it."""
    for name in (MARKER, LOCK):
        (folder / name).unlink(missing_ok=True)
    if made:
        try:
            folder.rmdir()  # only if empty: nothing of anyone else's is ever removed
        except OSError:
            pass


def _lock(folder: Path) -> int:
    """An fd of folder/LOCK holding an exclusive flock, with this process's pid written in it."""
    fd, who = files.lock_file(folder / LOCK)
    if fd is None:
        raise RunError(f"{folder}: in use by {who} (an aekit run writing to it); wait for it to end or stop "
                       "it, then try again")
    return fd


def _unlock(fd: int) -> None:
    os.close(fd)  # closing the only fd of the open file description drops the flock


def save(model, path: str | Path, train: TrainConfig | None = None, data=None) -> Run:
    """Write ``model`` (trained in any way) as a run directory that ``load`` and every command read.

    Parameters
    ----------
    model : aekit.models.base.Autoencoder
        The model; its resolved config goes to config.json (custom networks as import path and arguments), its
        weights to model.safetensors. Nothing is pickled.
    path : str or pathlib.Path
        The run directory to create: new or empty, as for a training run.
    train : aekit.TrainConfig, optional
        The training options to record (default: ``TrainConfig()``).
    data : aekit.datasets.Dataset or aekit.DataConfig, optional
        How the data was read, when known (a Dataset's ``spec`` is kept).

    Returns
    -------
    Run
        The run written. A save that fails leaves nothing behind (the folder is as it was), so it can be retried.
    """
    from .datasets import Dataset
    from .errors import ConfigError

    if isinstance(data, Dataset):
        data = data.spec
    if data is not None and not isinstance(data, DataConfig):
        raise ConfigError(f"save(data=...): expected a Dataset, a DataConfig or None, got {type(data).__name__}")
    if train is not None and not isinstance(train, TrainConfig):
        raise ConfigError(f"save(train=...): expected a TrainConfig or None, got {type(train).__name__}")
    path = Path(path)
    existed = path.is_dir()
    run = Run.create(path, model.name, model.config, train or TrainConfig(), data)
    try:
        run.save_weights(model.state_dict())
    except BaseException:
        run.release()
        if existed:  # it was empty: empty it again
            for q in path.iterdir():
                shutil.rmtree(q) if q.is_dir() and not q.is_symlink() else q.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
        raise
    run.release()
    return run
