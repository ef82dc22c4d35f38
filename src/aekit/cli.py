"""Command line: a thin shell over the library. ``main(argv) -> exit status``.

Model options are generated from the families' config dataclasses, so a new family's options appear
here without touching this file. User mistakes print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import sys
import typing
from pathlib import Path

from . import __version__
from .errors import AekitError, ConfigError, DataError


def _import_commands() -> None:
    """Import what every command but ``--version`` uses (torch with it), into this module's names: ``import
    aekit.cli`` and ``aekit --version`` load no torch (docs/design.md, "Start-up")."""
    global distributed, files, registry, AUTO_EPOCHS, AUTO_STEPS, ModelConfig, TrainConfig, resolve_device
    global DataConfig, Run, FIGURES, REPORT, outputs
    from . import distributed, files, outputs, registry
    from .config import AUTO_EPOCHS, AUTO_STEPS, ModelConfig, TrainConfig, resolve_device
    from .datasets import DataConfig
    from .run import FIGURES, REPORT, Run


__all__ = ["DATA_FIXED", "NORMAL_CLASS_HELP", "DATA_PREFIX", "cmd_export", "cmd_serve", "new_rows", "user_rows",
           "score_columns", "score_blocks", "SCORE_BYTES", "write_scores", "score_table", "cmd_train",
           "evaluation_key", "cmd_eval", "cmd_sample",
           "cmd_reconstruct", "cmd_encode", "cmd_plot", "cmd_report", "cmd_compare", "cmd_score", "cmd_calibrate",
           "cmd_models", "cmd_datasets", "cmd_pack", "build_parser", "SEVERAL_PROCESSES", "main"]

DATA_FIXED = {"input_shape", "num_classes"}  # model options that come from the dataset
NORMAL_CLASS_HELP = ("anomaly detection: the normal class, an index or a class name in any case (train: the model "
                     "learns from its examples only; eval, report: the other classes of the split are the anomalies)")
DATA_PREFIX = "data__"  # argparse dest of DataConfig options (train's --seed and the data's --split-seed differ)
SAMPLE_BYTES_PER_VALUE = 16  # `aekit sample`: a float32 sample, the decoder's last layer, its text or image
OVERWRITE_HELP = "replace an existing file (never the command's inputs nor a run's files)"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _Renamed(argparse.Action):
    """An option with a deprecated old spelling: both store into one dest; the old one also warns on stderr.

    ``old``: {old spelling: why it was renamed}. The new spelling is the first of the option strings."""

    def __init__(self, option_strings, dest, old=None, **kw):
        self.old = old or {}
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.old:
            print(f"{parser.prog}: warning: {option_string} is deprecated here, use {self.option_strings[0]} "
                  f"({self.old[option_string]})", file=sys.stderr)
        setattr(namespace, self.dest, values)


# the evaluation's sample counts were spelled like the model options of `aekit train`, which set the training
# objective: the evaluation's own are --eval-iw-samples / --eval-mc-samples (the old spellings warn)
_EVAL_SAMPLES_WHY = "in `aekit train` {} sets the model's training objective"


def _eval_samples(c, what: str, default=None):
    """--eval-iw-samples (and its deprecated spelling --iw-samples) of an evaluating command."""
    c.add_argument("--eval-iw-samples", "--iw-samples", dest="iw_samples", type=int, default=default, metavar="K",
                   action=_Renamed, old={"--iw-samples": _EVAL_SAMPLES_WHY.format("--iw-samples")},
                   help=f"probabilistic models: importance samples K of the {what} (--iw-samples: the old, "
                        "deprecated spelling)")


def _add_config_options(p, classes, *, skip=(), show_defaults=False, prefix=""):
    """One option per dataclass field of the given config classes (first definition wins), from its metadata:
    help, choices, ``flag`` (the option's name when it is not the field's) and ``cli`` (False: no option).

    Every option defaults to argparse.SUPPRESS, so the parsed namespace holds exactly what the user gave
    (``_given``), however argparse matched it (``--epoch`` for ``--epochs`` included)."""
    seen = set()
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in seen or f.name in skip or not f.metadata.get("cli", True):
                continue
            seen.add(f.name)
            help_ = f.metadata.get("help", "")
            if "choices" in f.metadata:
                help_ += f" ({'|'.join(map(str, f.metadata['choices']))})"
            if show_defaults:
                help_ += f" [default: {f.default}]"
            flag = _flag(f.metadata.get("flag", f.name))
            kw = dict(default=argparse.SUPPRESS, help=help_, dest=prefix + f.name)
            if hints[f.name] is bool:
                p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            else:
                p.add_argument(flag, metavar=f.metadata.get("flag", f.name).upper().replace("-", "_"), **kw)


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _positive_int_option(flag: str, text: str) -> int:
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError as e:
        raise ConfigError(f"{flag}: {e}") from None


def _option_flag(cls, name: str) -> str:
    """The command-line flag of field ``name`` of config class ``cls``."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return _flag(f.metadata.get("flag", name))


def _given(args, cls, prefix: str = "") -> dict:
    """The options of config class ``cls`` the user gave on the command line (field name -> raw value)."""
    return {f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(cls) if hasattr(args, prefix + f.name)}


def _data_args(p, *, skip=()):
    g = p.add_argument_group("data options")
    _add_config_options(g, [DataConfig], skip=skip, prefix=DATA_PREFIX)


def _default_out(model: str, dataset: str, with_dataset: bool = True) -> Path:
    """runs/MODEL-DATASET (or runs/MODEL), with -2, -3, ... appended until a name is free; the folder is
    created here (an exclusive mkdir), so two commands started together never pick the same one."""
    stem = Path(dataset).stem if ("/" in dataset or "." in dataset) else dataset
    base = Path("runs") / (f"{model}-{stem}" if with_dataset else model)
    out, i = base, 2
    while True:
        try:
            out.mkdir(parents=True)
            return out
        except FileExistsError:
            out, i = Path(f"{base}-{i}"), i + 1
        except OSError as e:
            raise ConfigError(f"cannot create {out} ({e.strerror or e}); choose a folder with --out") from None


def _open(args):
    """The run named on the command line, its model, its dataset (or the one --dataset names, with the run's
    table statistics) and its evaluation options."""
    run = Run.open(args.run)
    overrides = _given(args, DataConfig, DATA_PREFIX)
    ds = run.dataset(**overrides)
    model = run.model(device=getattr(args, "device", None))  # eval --device; the other commands: the CPU
    return run, model, ds, run.evaluation_options(other_data="name_or_path" in overrides)


def _inputs(args, run=None) -> list:
    """What a command reads, which its --out may never name (outputs.check_output): the run folder, the data
    the run was trained on, and the data files the command's options name."""
    paths = [getattr(args, "data", None), getattr(args, "normal", None), getattr(args, "anomaly_data", None),
             getattr(args, "source", None), getattr(args, DATA_PREFIX + "name_or_path", None)]
    if run is not None:
        paths.append(run.path)
        if run.data is not None and run.data.name_or_path:
            paths.append(run.data.name_or_path)
    return [q for q in paths if isinstance(q, str) and q or isinstance(q, Path)]


def _check_out(args, run=None, **kw) -> Path:
    """The output policy (outputs.check_output) for this command's --out."""
    return outputs.check_output(args.out, inputs=_inputs(args, run), overwrite=getattr(args, "overwrite", None),
                                **kw)


def cmd_train(args) -> int:
    from . import datasets, metrics, trainer

    distributed.init_from_env()  # under torchrun: every rank trains its share; rank 0 alone writes and prints
    train_opts = _given(args, TrainConfig)
    data_opts = _given(args, DataConfig, DATA_PREFIX)
    model_names = set(ModelConfig.field_names()) | {f for c in registry.MODELS.values() for f in c.Config.field_names()}
    model_opts = {k: v for k, v in vars(args).items() if k in model_names}
    if args.resume:
        run = distributed.agree(lambda: Run.open(args.resume), main_only=True, share=True)  # rank 0 reads it
        for k in train_opts:  # only the epoch budget (and how the run is checkpointed and watched) may change
            if k not in TrainConfig.RESUMABLE:
                raise ConfigError(f"{_flag(k)} cannot change on --resume; only "
                                  f"{', '.join(_flag(o) for o in sorted(TrainConfig.RESUMABLE))} can")
        if model_opts:
            raise ConfigError(f"model options cannot change on --resume (got {', '.join(map(_flag, model_opts))})")
        if data_opts:
            flags = ", ".join(_option_flag(DataConfig, k) for k in data_opts)
            raise ConfigError(f"{flags} cannot change on --resume; the run keeps the data it was started with")
        if args.model or args.out:
            what = f"a model name ({args.model})" if args.model else f"--out ({args.out})"
            raise ConfigError(f"--resume continues {run.path} as it was started: {what} does not apply; drop it")
        tcfg = run.train.replace(**train_opts)
        ds = run.dataset()
        # the initial weights of the original run (they matter when no epoch had finished)
        model = registry.build(run.model_name, seed=run.train.seed, **run.model_config.to_dict())
        name, out = run.model_name, run.path
        args.run_dir = out  # named by the interrupt message
        result = trainer.fit(model, ds, tcfg, out_dir=out, resume=True, quiet=args.quiet or None, model_name=name)
    else:
        if not args.model:
            raise ConfigError("name the model to train, e.g. `aekit train ae` (see `aekit models`)")
        cls = registry.get(args.model)
        valid = set(cls.Config.field_names())
        wrong = [k for k in model_opts if k not in valid]
        if wrong:
            owners = {k: [n for n, c in registry.MODELS.items() if k in c.Config.field_names()] for k in wrong}
            raise ConfigError("; ".join(
                f"option {_flag(k)} does not apply to model {args.model} (it applies to: {', '.join(owners[k])})"
                for k in wrong))
        tcfg = TrainConfig.from_dict(train_opts)
        dcfg = DataConfig.from_dict(data_opts, what="data")

        def choose_out() -> Path:  # on rank 0 alone under torchrun: the other ranks create nothing
            if args.out:
                _check_out(args, folder=True)
            out = Path(args.out) if args.out else _default_out(args.model, dcfg.name_or_path)
            if out.exists() and (not out.is_dir() or any(out.iterdir())):  # before the data is read
                raise ConfigError(f"{out} already exists and is not empty; choose another --out "
                                  "(nothing was overwritten)")  # (Run.create checks too)
            return out

        out = distributed.agree(choose_out, main_only=True, share=True)
        try:
            ds = datasets.load(dcfg)
            name = args.model
            args.run_dir = out
            if args.contamination is not None:  # the detector: aekit.Detector's defaults and fitting (aekit.adapt)
                from .adapt import fit_run

                if distributed.world_size() > 1:
                    raise ConfigError("--contamination fits a detector in one process; run it without torchrun")

                det, result = fit_run(name, ds, out, args.contamination, train_opts, model_opts, seed=tcfg.seed)
            else:
                model = registry.build_for(args.model, ds, seed=tcfg.seed, **model_opts)
                result = trainer.fit(model, ds, tcfg, out_dir=out, quiet=args.quiet or None, model_name=name)
        except AekitError:
            if not args.out and distributed.is_main() and not any(out.iterdir()):
                out.rmdir()  # the default folder this command made, still empty: no trace of a failed start
            raise
    if not distributed.is_main():
        return 0
    if result.already_ended:  # a finished run is left as it is
        print(f"aekit train: {result.already_ended}")
        return 0
    test = metrics.reconstruction_metrics(result.model, ds, "test")
    used = result.config
    if args.contamination is not None and not args.resume:
        print(f"detector: {len(det.models_)} member(s), code {det.models_[0].latent_dim}, {used.epochs} epochs "
              "each, cross-fitted where the rows allow (aekit.Detector's defaults; docs/design.md)")
    elif not args.resume and "epochs" not in train_opts:  # say what the automatic budget chose
        stop = f", early stopping after {used.patience} epochs without improvement" if used.patience else ""
        print(f"epochs: {used.epochs}, chosen for {ds.x_train.shape[0]} training examples (at least "
              f"{AUTO_STEPS} steps of batch {used.batch_size}, {AUTO_EPOCHS[0]} to {AUTO_EPOCHS[1]} epochs){stop}; "
              f"threads: {used.threads}")
    if result.note:
        print(f"aekit train: warning: {result.note.replace('RUN', str(out))}", file=sys.stderr)
    if args.contamination is not None and args.resume:  # a threshold for `aekit score`, as PyOD sets it
        from .detector import Detector

        det = Detector.load(out).set_contamination(ds.to_user_units(ds.x_train).numpy(), args.contamination)
        det.save_state(out)
    if args.contamination is not None:
        print(f"threshold {det.threshold_:.6g}: {args.contamination:g} of the training data scores above it")
    print(f"trained {name} on {ds.name}: {len(result.history)} epochs "
          f"({result.stopped}), best epoch {result.best_epoch}, val loss {result.best_val_loss:.4f}")
    print("test reconstruction: " + ", ".join(f"{k}={v:.4g}" for k, v in test.items()))
    print(f"run saved in {out}")
    return 0


def evaluation_key(model, split: str, iw_samples: int, mc_samples: int, seed: int, normal_class, opts) -> dict:
    """What the metrics of an evaluation of a run's own data depend on (the key of Run.evaluation)."""
    prob = model.capabilities.probabilistic
    return {"split": split, "iw_samples": iw_samples if prob else None, "mc_samples": mc_samples if prob else None,
            "seed": seed, "normal_class": None if normal_class is None else str(normal_class),
            "binarize_seed": opts.binarize_seed}


def cmd_eval(args) -> int:
    shard = distributed.init_from_env()  # under torchrun the per-example work is shared across ranks
    run, model, ds, opts = _open_on_every_rank(args) if shard else _open(args)
    res = _evaluate_with_likelihood(args, model, ds, opts, shard)
    res.update(_anomaly_eval(args, run, model, ds, opts, shard))
    if not distributed.is_main():  # rank 0 alone writes and prints
        return 0
    if not _given(args, DataConfig, DATA_PREFIX) and not args.anomaly_data:  # `aekit report` reuses it
        normal = args.normal_class if args.normal_class is not None else opts.normal_class
        iw = 100 if args.iw_samples is None else args.iw_samples  # metrics.evaluate's defaults
        mc = 1 if args.mc_samples is None else args.mc_samples
        key = evaluation_key(model, args.split, iw, mc, 0, normal, opts)
        run.save_evaluation(key, res)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(f"{k:32s} {v:.6g}" if isinstance(v, float) else f"{k:32s} {v}")
    return 0


def _open_on_every_rank(args):
    """``_open`` under torchrun: rank 0 reads the run folder and hands its configs and weights to the other
    ranks (which need the data, not the run folder); every rank loads the data."""
    run = distributed.agree(lambda: Run.open(args.run), main_only=True, share=True)
    model = distributed.agree(run.model if distributed.is_main() else
                              lambda: registry.instantiate(run.model_name, run.model_config, seed=0).eval())
    distributed.broadcast_tensors(model.state_dict().values())  # rank 0's weights
    model.to(resolve_device(args.device))  # under torchrun a CUDA device is this rank's own, cuda:LOCAL_RANK
    overrides = _given(args, DataConfig, DATA_PREFIX)
    return run, model, run.dataset(**overrides), run.evaluation_options(other_data="name_or_path" in overrides)


def _anomaly_eval(args, run, model, ds, opts, shard: bool = False) -> dict:
    """Anomaly metrics for --normal-class / --anomaly-data, or the normal class the run was trained on."""
    from . import metrics

    normal = args.normal_class if args.normal_class is not None else opts.normal_class
    anomalies = None
    if args.anomaly_data:
        extra = run.dataset(name_or_path=args.anomaly_data, label_column=getattr(args, DATA_PREFIX + "label_column",
                                                                                   None),
                            val_fraction=0.0, test_fraction=0.0)
        anomalies = extra.x_train
    if normal is None and anomalies is None:
        return {}
    from .scoring import Scorer

    # the score `aekit score` writes; under torchrun rank 0 alone reads the run folder (and computes its AUROC)
    scorer = distributed.agree(lambda: Scorer.from_run(run.path, device=str(model.device)), main_only=True)
    return metrics.anomaly_evaluation(model, ds, args.split, normal_class=normal, anomalies=anomalies, shard=shard,
                                      scorer=scorer)


def _evaluate_with_likelihood(args, model, ds, opts, shard: bool = False) -> dict:
    """metrics.evaluate with the eval options --iw-samples / --mc-samples (probabilistic models only), on
    the data the run's evaluation options name (a static binarization for runs trained on binary data)."""
    from . import metrics

    given = {k: getattr(args, k) for k in ("iw_samples", "mc_samples") if getattr(args, k) is not None}
    if not model.capabilities.probabilistic:
        if given:
            raise ConfigError(f"{', '.join(_flag(k) for k in given)} applies to probabilistic models "
                              f"(with an ELBO, e.g. vae, iwae, cvae); model {model.name} has no likelihood")
        return metrics.evaluate(model, ds, args.split, shard=shard)
    res = metrics.evaluate(model, ds, args.split, binarize_seed=opts.binarize_seed, shard=shard, **given)
    note = opts.likelihood_note(args.split)
    if note:
        res["likelihood_data"] = note
    return res


def cmd_sample(args) -> int:
    import torch

    from . import plots
    from .datasets import max_data_bytes

    run = Run.open(args.run)
    _check_out(args, run)
    model = run.model()
    out = Path(args.out)
    image = len(model.config.input_shape) == 3
    need = args.n * math.prod(model.config.input_shape) * SAMPLE_BYTES_PER_VALUE
    if need > max_data_bytes():
        raise ConfigError(f"-n {args.n}: {args.n} samples of shape {tuple(model.config.input_shape)} would take "
                          f"{need / 2**30:,.1f} GiB in memory, more than the limit of {max_data_bytes() / 2**30:,.1f} "
                          "GiB (the data budget, AEKIT_MAX_DATA_BYTES); ask for fewer samples")
    if image and out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: image samples are written as PNG; name a .png file")
    if not image and out.suffix.lower() not in (".csv", ".tsv"):
        raise ConfigError(f"--out {out}: table samples are written as CSV; name a .csv or .tsv file")
    ds = None if image else run.dataset()
    label = args.label
    rereadable = run.data is not None and run.data.name_or_path is not None
    if label is not None and (rereadable or not label.strip().isdigit()):
        ds = ds or run.dataset()  # class names are looked up as everywhere (Dataset.class_index)
        label = ds.class_index(label, "--label")
    elif label is not None:  # a run of arrays in memory: its data (and class names) cannot be read again
        label = int(label)
    gen = torch.Generator(device=model.device).manual_seed(args.seed)
    with torch.no_grad():
        x = model.sample(args.n, y=label, generator=gen)
    if image:
        files.publish_bytes(out, plots.to_png(plots.image_grid(x, ncols=min(args.n, 8))), overwrite=args.overwrite)
    else:
        names = ds.feature_names or [f"f{i}" for i in range(ds.dim)]
        sep = "\t" if out.suffix.lower() == ".tsv" else ","
        rows = ds.to_user_units(x.cpu()).tolist()
        body = "".join(sep.join(f"{v:.6g}" for v in r) + "\n" for r in rows)
        files.publish_bytes(out, (sep.join(names) + "\n" + body).encode(), overwrite=args.overwrite)
    print(f"wrote {args.n} samples{'' if label is None else f' of class {label}'} of {model.name} to {out}")
    return 0


def cmd_reconstruct(args) -> int:
    import torch

    from . import metrics, plots

    _check_out(args, Run.open(args.run))  # before any work
    _, model, ds, _ = _open(args)
    x, y = metrics.split_rows(ds, args.split)  # only the first n rows are read
    x, y = x[: args.n], (y[: args.n] if y is not None else None)
    x_hat = metrics.reconstructions(model, x, y)
    out = Path(args.out)
    if ds.kind == "image":
        if out.suffix.lower() != ".png":
            raise ConfigError(f"--out {out}: image reconstructions are written as PNG; name a .png file")
        files.publish_bytes(out, plots.to_png(plots.reconstructions(x, x_hat)), overwrite=args.overwrite)
    else:
        if out.suffix.lower() not in (".csv", ".tsv"):
            raise ConfigError(f"--out {out}: table reconstructions are written as CSV; name a .csv file")
        names = ds.feature_names or [f"f{i}" for i in range(ds.dim)]
        rows = torch.cat([ds.to_user_units(x), ds.to_user_units(x_hat)], 1).tolist()
        sep = "\t" if out.suffix.lower() == ".tsv" else ","
        head = sep.join([f"input_{n}" for n in names] + [f"recon_{n}" for n in names])
        text = head + "\n" + "".join(sep.join(f"{v:.6g}" for v in r) + "\n" for r in rows)
        files.publish_bytes(out, text.encode(), overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def cmd_encode(args) -> int:
    import numpy as np
    import torch

    from . import metrics

    _check_out(args, Run.open(args.run))  # before any work
    _, model, ds, _ = _open(args)
    out = Path(args.out)
    if out.suffix not in (".npz", ".npy"):
        raise ConfigError(f"--out {out}: codes are written as .npy (codes only) or .npz (codes x, labels y)")
    parts = ["train", "val", "test"] if args.split == "all" else [args.split]
    xs = [metrics.split_rows(ds, p) for p in parts]  # a store is read a block at a time: only codes are kept
    z = torch.cat([metrics.codes(model, x, y) for x, y in xs]).cpu().numpy()
    buf = io.BytesIO()
    if out.suffix == ".npz":  # a dataset: --dataset OUT.npz reads x (the codes) and y; z: the codes, as before
        ys = [y for _, y in xs]
        extra = {"y": torch.cat(ys).cpu().numpy()} if all(y is not None for y in ys) else {}
        np.savez(buf, x=z, z=z, **extra)
    else:
        np.save(buf, z)
    files.publish_bytes(out, buf.getvalue(), overwrite=args.overwrite)
    print(f"wrote {z.shape[0]} codes of dimension {z.shape[1]} to {out}")
    return 0


def cmd_plot(args) -> int:
    from . import plots

    run = Run.open(args.run)
    own = args.out is None or outputs.same_path(args.out, run.path / FIGURES)
    if own:  # the run's own figures (RUN/figures), written through Run
        args.out = None
    else:
        out = _check_out(args, run, folder=True)  # before any work
    run, model, ds, _ = _open(args)
    figures = [(name, plots.to_png(fig)) for name, _, fig in plots.run_figures(
        model, ds, run.history, n=args.n, seed=args.seed, split=args.split)]
    if not own:  # every target checked before the first is written
        for name, _ in figures:
            outputs.check_output(out / f"{name}.png", inputs=_inputs(args, run), overwrite=args.overwrite)
    for name, png in figures:
        if own:
            path = run.write_figure(name, png)
        else:
            path = out / f"{name}.png"
            files.publish_bytes(path, png, overwrite=args.overwrite)
        print(f"wrote {path}")
    return 0


def cmd_report(args) -> int:
    from . import report

    run = Run.open(args.run)
    if args.out is not None and outputs.same_path(args.out, run.path / REPORT):
        args.out = None  # the run's own report, written through Run
    if args.out is not None:
        _check_out(args, run)  # before any work
    run, model, ds, opts = _open(args)
    normal = args.normal_class if args.normal_class is not None else opts.normal_class
    values = None
    if not _given(args, DataConfig, DATA_PREFIX):  # the numbers of an earlier `aekit eval` with the same options
        values = run.evaluation(evaluation_key(model, args.split, args.iw_samples, 1, args.seed, normal, opts))
        if values is not None:
            print(f"reusing the metrics of the last `aekit eval` ({run.path / 'evaluation.json'})")
    if args.out is None:
        path = report.write_report(run, model=model, dataset=ds, normal_class=normal, values=values,
                                   iw_samples=args.iw_samples, seed=args.seed, split=args.split)
    else:
        path = Path(args.out)
        html = report.render(run, model=model, dataset=ds, normal_class=normal, values=values,
                             iw_samples=args.iw_samples, seed=args.seed, split=args.split)
        files.publish_bytes(path, html.encode("utf-8"), overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def cmd_compare(args) -> int:
    from . import compare

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    if args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {args.epochs}")
    latent_dim = None if args.latent_dim.strip().lower() == "own" else _positive_int_option("--latent-dim",
                                                                                           args.latent_dim)
    if args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    from . import datasets

    split = _given(args, DataConfig, DATA_PREFIX)
    if args.seed is not None and "seed" not in split:  # until 0.1.0 --seed set the data split too
        print(f"aekit compare: warning: --seed {args.seed} seeds the weights and the training only (as in `aekit "
              f"train`); the data split follows --split-seed (default 0): add --split-seed {args.seed} for the split "
              "earlier versions made", file=sys.stderr)
    args.seed = 0 if args.seed is None else args.seed
    ds = datasets.load(DataConfig.from_dict(split, what="data"))
    if args.out is None:
        args.out = str(_default_out("compare", "", with_dataset=False))
    else:
        outputs.check_output(args.out, folder=True, inputs=_inputs(args))
    results = compare.compare(ds, args.out, models=models, epochs=args.epochs, latent_dim=latent_dim,
                              threads=args.threads,
                              overwrite=args.overwrite, seed=args.seed, iw_samples=args.iw_samples,
                              log=lambda line: print(line, file=sys.stderr, flush=True))
    failed = [r.model for r in results if r.status != "ok"]
    out = Path(args.out)
    print(f"comparison of {len(results)} models written to {out / 'comparison.html'} (and comparison.md)")
    if failed:
        print(f"failed: {', '.join(failed)} (their errors are in the comparison)", file=sys.stderr)
        return 1
    return 0


def new_rows(run, path: str, id_column: str | None = None):
    """The examples of a new file or folder as the run's model reads them, in the file's order: (a dataset whose
    ``x_train`` holds them, scaled as the run's data: a memory-mapped .npy file stays on disk and is read a block
    at a time by ``user_rows``; an iterable of one id per row: the row number, the image file, or the values of
    column ``id_column`` of a table). A table must hold the training table's columns (matched by name, in any
    order; the label column and the id column may be absent); anything else is an error naming the columns."""
    from . import datasets
    from .datasets.tables import TABLE_DELIMITERS, BadTableValue, read_table_column, read_table_header

    data = run.data
    label = data.label_column if data is not None else None
    features = data.features if data is not None else None
    p = Path(path)
    table = p.suffix.lower() in TABLE_DELIMITERS and p.is_file()
    if id_column is not None and not table:
        raise ConfigError(f"--id-column {id_column}: {p} is not a table (.csv/.tsv/.txt); the rows of an array are "
                          "numbered 0, 1, ... and the images of a folder are named by their file")
    delimiter = None
    if table:
        header, delimiter = read_table_header(p, TABLE_DELIMITERS[p.suffix.lower()])  # the loader's rule
        if id_column is not None and id_column not in header:
            raise DataError(f"{p}: no column {id_column!r} (--id-column); the columns are: {', '.join(header[:20])}"
                            f"{', ...' if len(header) > 20 else ''}")
    if table and features:
        skip = {label} | ({id_column} - set(features) if id_column else set())
        have = [h for h in header if h not in skip]
        have_set, wanted = set(have), set(features)  # sets: a table may have 100k columns
        missing = [c for c in features if c not in have_set]
        extra = [c for c in have if c not in wanted]
        if missing or extra:
            parts = ([f"missing {', '.join(map(repr, missing[:10]))}"] if missing else []) + \
                ([f"not in the training table {', '.join(map(repr, extra[:10]))}"] if extra else [])
            hint = "" if not extra or id_column else "; carry an id column through with --id-column NAME"
            raise ConfigError(f"{p}: the columns do not match the training table ({'; '.join(parts)}); the run was "
                              f"trained on {len(features)} columns: {', '.join(features[:10])}"
                              f"{', ...' if len(features) > 10 else ''}{hint}")
        label = label if label in header else None
    else:
        label = None if not table else label
    named = table or (p.is_file() and p.suffix.lower() == ".npy"  # a packed table's column names too
                      and os.path.lexists(datasets.columns_path(p)))
    try:
        ds = datasets.load(str(p), features=features if named else None, label_column=label,
                           stats=None if data is None else data.stats, val_fraction=0.0, test_fraction=0.0,
                           shuffle=False)
    except BadTableValue as e:  # the loader's advice names options of `aekit train`
        raise DataError(f"{e.where}; the columns the run was trained on must hold numbers: fix the value") from None
    if id_column is not None:
        ids = read_table_column(p, id_column, delimiter)
    elif p.is_dir():
        ids = [f.as_posix() for f in datasets.image_files(p)]
    else:
        ids = range(len(ds.x_train))
    return ds, ids


def user_rows(ds, lo: int = 0, hi: int | None = None):
    """Rows lo:hi of ``new_rows``'s dataset in the user's units, as the Detector reads them: float32 numpy."""
    return ds.to_user_units(ds.x_train[lo:hi]).numpy()


def score_columns(scorer, x) -> dict:
    """The output columns of ``aekit score`` for rows x: score, p_value (calibrated), is_outlier (a threshold),
    all from the one scoring module (``aekit.scoring.Scorer``)."""
    scored = scorer.score(x)
    cols = {"score": scored.score}
    if scored.p_value is not None:
        cols["p_value"] = scored.p_value
    if scored.is_outlier is not None:
        cols["is_outlier"] = scored.is_outlier.astype(int)
    return cols


def write_scores(writer, ids, cols: dict) -> None:
    """Rows of ``aekit score``'s CSV through a ``csv.writer``: each row's id, then its ``cols`` values."""
    values = [[f"{v:.6g}" if isinstance(v, float) else str(v) for v in c.tolist()] for c in cols.values()]
    writer.writerows(zip(ids, *values))


def score_table(scorer, x, ids, id_name: str = "id") -> str:
    """What `aekit score` prints for rows ``x`` (user units) and their ids, as one text (`aekit serve`'s
    POST /score answers it): the header, then one line per row."""
    import csv

    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    cols = score_columns(scorer, x)
    writer.writerow([id_name, *cols])
    write_scores(writer, list(ids), cols)
    return out.getvalue()


SCORE_BYTES = 32 * 2**20  # float32 bytes of input rows `aekit score` scores at once (whole blocks of 1024 rows)


def score_blocks(ds):
    """(lo, hi) of the blocks of ``new_rows``'s rows that `aekit score` and `aekit calibrate` score at once."""
    n = len(ds.x_train)
    step = max(1, SCORE_BYTES // (4 * max(1, ds.dim) * 1024)) * 1024
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


def cmd_score(args) -> int:
    import contextlib
    import csv

    from .scoring import Scorer

    run = Run.open(args.run)
    if args.out:
        _check_out(args, run)  # before any work: the policy of every writing command
    scorer = Scorer.from_run(run.path)
    ds, ids = new_rows(run, args.data, args.id_column)
    n = len(ds.x_train)
    flagged = 0
    with contextlib.ExitStack() as stack:  # rows are written as they are scored; a file appears only when complete
        if args.out:
            out = io.TextIOWrapper(stack.enter_context(files.streamed_file(args.out)), encoding="utf-8", newline="")
            stack.callback(out.detach)  # flushed, and the file left open for streamed_file to finish
        else:
            out = sys.stdout
        writer = csv.writer(out, lineterminator="\n")
        ids = iter(ids)
        for lo, hi in score_blocks(ds):
            cols = score_columns(scorer, user_rows(ds, lo, hi))
            if lo == 0:
                writer.writerow([args.id_column or "id", *cols])
            flagged += int(cols["is_outlier"].sum()) if "is_outlier" in cols else 0
            write_scores(writer, [next(ids) for _ in range(len(cols["score"]))], cols)
    if args.out:
        note = f", {flagged} flagged as outliers" if scorer.has_threshold else \
            " (no threshold yet: `aekit calibrate RUN --normal DATA` or `aekit train --contamination C`)"
        print(f"scored {n} examples of {args.data} into {args.out}{note}")
    return 0


def cmd_calibrate(args) -> int:
    import numpy as np

    from .detector import Detector

    run = Run.open(args.run)
    det = Detector.load(run.path)
    ds, _ = new_rows(run, args.normal)
    # a block of rows at a time (a memory-mapped file stays on disk); only the scores are kept
    scores = [det.decision_function(user_rows(ds, lo, hi)) for lo, hi in score_blocks(ds)]
    det.calibrate_scores(np.concatenate(scores) if scores else np.zeros(0), args.fpr)
    det.save_state(run.path)
    n = len(ds.x_train)
    print(f"calibrated {run.path} on {n} normal examples of {args.normal}: threshold {det.threshold_:.6g} "
          f"(at most {args.fpr:g} of normal data flagged); `aekit score` now writes p-values")
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    info = export_run(args.run, args.out, fmt=args.format)
    files_ = ", ".join(g["file"] for g in info["graphs"].values())
    print(f"exported {args.run} as {args.format} into {args.out}: {files_} and export.json (inputs, columns, "
          "threshold, calibration)")
    if "no_scorer" in info:
        print(f"aekit export: warning: no scorer graph: {info['no_scorer']}", file=sys.stderr)
    elif info["threshold"] is None:
        print("aekit export: warning: no threshold yet, so is_outlier is False for every row: `aekit calibrate "
              "RUN --normal DATA` (or `aekit train --contamination C`), then export again", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from .serve import cmd_serve as serve

    return serve(args)


def cmd_models(args) -> int:
    for name, cls in registry.MODELS.items():
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        own = [f for f in cls.Config.field_names() if f not in ModelConfig.field_names()]
        print(f"{name:6s} {doc}")
        if own:
            print(f"{'':6s} options: {', '.join(_flag(f) for f in own)}")
    return 0


def cmd_datasets(args) -> int:
    from . import datasets

    for d in datasets.available():
        print(f"{d['name']:15s} {d['kind']:6s} {d['status']:10s} {d.get('detail', '')}")
    print("also: any .npy/.npz array, .csv/.tsv table or folder of PNG/JPEG images, given as --dataset PATH")
    return 0


def cmd_pack(args) -> int:
    from . import datasets

    features = None if args.features is None else [f.strip() for f in args.features.split(",") if f.strip()]
    _check_out(args)  # pack never overwrites: no --overwrite
    r = datasets.pack(args.source, args.out, label_column=args.label_column, features=features)
    print(f"wrote {r.path}: {r.shape[0]} samples of shape {tuple(r.shape[1:])}, {r.dtype} ({r.size_text})")
    if r.labels_path:
        print(f"labels: {r.labels_path} ({len(r.classes)} classes: {', '.join(r.classes[:10])}"
              f"{', ...' if len(r.classes) > 10 else ''})")
    if r.columns_path:
        print(f"column names: {r.columns_path}")
    print(f"train from it (memory-mapped): aekit train MODEL --dataset {r.path}")
    return 0


def build_parser():
    _import_commands()
    p = _Parser(prog="aekit", description="Train, evaluate and use autoencoders.")
    p.add_argument("--version", action="version", version=f"aekit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model and save a run directory")
    t.add_argument("model", nargs="?", help=f"one of: {', '.join(registry.MODELS)}")
    _data_args(t)
    t.add_argument("--out", help="run directory to create (default: runs/MODEL-DATASET)")
    t.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--contamination", type=float, help="anomaly detection: the share of the training rows the "
                   "threshold `aekit score` flags with (PyOD's rule): the outliers expected in them, or with "
                   "--normal-class the share of normal rows to flag; fits aekit.Detector (with --normal-class: "
                   "Detector(novelty=True), its budget for rows known to be normal)")
    tg = t.add_argument_group("training options")
    _add_config_options(tg, [TrainConfig], show_defaults=True)
    mg = t.add_argument_group("model options (each applies to the families that define it)")
    _add_config_options(mg, [ModelConfig] + [c.Config for c in registry.MODELS.values()], skip=DATA_FIXED)

    def run_cmd(name, help_, extra=None):
        c = sub.add_parser(name, help=help_)
        c.add_argument("run", help="run directory written by `aekit train`")
        _data_args(c, skip=("normal_class",))  # the run's data by default; eval's --normal-class differs
        c.add_argument("--split", default="test", choices=["train", "val", "test"])
        if extra:
            extra(c)
        return c

    def _eval(c):
        c.add_argument("--json", action="store_true", help="print JSON")
        _eval_samples(c, "test log-likelihood estimate (default: that of aekit.metrics.evaluate)")
        c.add_argument("--eval-mc-samples", "--mc-samples", dest="mc_samples", type=int, action=_Renamed, metavar="L",
                       old={"--mc-samples": _EVAL_SAMPLES_WHY.format("--mc-samples")},
                       help="probabilistic models: Monte-Carlo samples of the ELBO (--mc-samples: the old, "
                            "deprecated spelling)")
        c.add_argument("--normal-class", help=NORMAL_CLASS_HELP + " (default: the class the run was trained on)")
        c.add_argument("--anomaly-data", metavar="PATH", help="anomaly detection: a file/folder of anomalous "
                       "examples (all of them), scored against the split's examples as the normal ones")
        c.add_argument("--device", default="auto", help="where to evaluate: auto (CUDA, else MPS, else the CPU; "
                       "under torchrun each process's own GPU), cpu, cuda, cuda:1, mps [default: auto]")
    run_cmd("eval", "evaluate a trained run on its test split", _eval)

    def _plot(c):
        c.add_argument("--out", help="folder for the PNG figures (default: RUN/figures)")
        c.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
        c.add_argument("-n", type=_positive_int, default=10, help="images per row")
        c.add_argument("--seed", type=int, default=0, help="seed of samples and corruption")
    run_cmd("plot", "write every figure that applies to a run as PNG files", _plot)

    def _report(c):
        c.add_argument("--out", help="HTML file to write (default: RUN/report.html)")
        c.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
        _eval_samples(c, "log-likelihood estimate", default=100)
        c.add_argument("--normal-class", help=NORMAL_CLASS_HELP + " (default: the class the run was trained on)")
        c.add_argument("--seed", type=int, default=0, help="seed of samples, probes and estimates")
    run_cmd("report", "write a self-contained HTML report of a run (config, metrics, curves, figures)", _report)

    from .compare import DEFAULT_EPOCHS, DEFAULT_LATENT_DIM

    cmp_ = sub.add_parser("compare", help="train several families with the same budget and compare them")
    cmp_.add_argument("--models", help=f"comma-separated families (default: all: {','.join(registry.MODELS)})")
    _data_args(cmp_, skip=("normal_class",))
    cmp_.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs per family")
    cmp_.add_argument("--latent-dim", default=str(DEFAULT_LATENT_DIM), help="code size for every family, or 'own' "
                      f"for each family's default (default: {DEFAULT_LATENT_DIM}: families compared at one code size)")
    cmp_.add_argument("--seed", type=int, help="seed of the weights and the training, as in `aekit train` (the data "
                      "split has its own --split-seed) [default: 0]")
    _eval_samples(cmp_, "log-likelihood estimate", default=100)
    cmp_.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for small models "
                      "and on a busy machine; raise it for large conv models on idle cores)")
    cmp_.add_argument("--out", help="folder for the runs and comparison.md / comparison.html "
                      "(default: runs/compare, or runs/compare-2, ... if that exists)")
    cmp_.add_argument("--overwrite", action="store_true",
                      help="replace earlier runs of the compared models in a non-empty --out")

    def _recon(c):
        c.add_argument("--out", required=True, help="PNG for images, CSV for tables")
        c.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
        c.add_argument("-n", type=_positive_int, default=16, help="how many inputs")
    run_cmd("reconstruct", "save inputs above their reconstructions", _recon)

    enc = run_cmd("encode", "save the codes of a dataset split", lambda c: (c.add_argument(
        "--out", required=True, help=".npy (codes) or .npz (codes x, labels y; readable with --dataset)"),
        c.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)))
    enc.set_defaults(split="test")
    for a in enc._actions:
        if a.dest == "split":
            a.choices = ["train", "val", "test", "all"]

    smp = sub.add_parser("sample", help="draw samples from a generative model (PNG grid or CSV)")
    smp.add_argument("run", help="run directory written by `aekit train`")
    smp.add_argument("-n", type=_positive_int, default=64, help="how many samples")
    smp.add_argument("--label", help="the class to sample (conditional / supervised models): an index or a class "
                     "name in any case, looked up as --normal-class is")
    smp.add_argument("--seed", type=int, default=0, help="seed of the prior samples")
    smp.add_argument("--out", required=True, help="PNG for images, CSV/TSV for tables")
    smp.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    sc = sub.add_parser("score", help="anomaly scores of new data with a run's model and preprocessing (CSV)")
    sc.add_argument("run", help="run directory (aekit train, or Detector.save)")
    sc.add_argument("data", help="a CSV/TSV table with the training columns, a .npy/.npz array or an image folder")
    sc.add_argument("--out", help="CSV to write: id, score, p_value (when calibrated), is_outlier (when a "
                    "threshold is set) (default: standard output); written as the rows are scored, it appears "
                    "only once complete")
    sc.add_argument("--id-column", metavar="NAME", help="a table's column to carry through to the output as the "
                    "first column (in place of the row number), e.g. a customer or transaction id")
    sc.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    cal = sub.add_parser("calibrate", help="threshold and p-values of a run from held-out normal data")
    cal.add_argument("run", help="run directory (aekit train, or Detector.save)")
    cal.add_argument("--normal", required=True, help="normal examples the model was not trained on (same formats "
                     "as score)")
    cal.add_argument("--fpr", type=float, default=0.01, help="the false-positive rate to hold on normal data")

    ex = sub.add_parser("export", help="write a run's scorer, encoder and decoder as ONNX graphs (threshold and "
                        "preprocessing inside) with a JSON sidecar; needs pip install 'aekit[onnx]'")
    ex.add_argument("run", help="run directory (aekit train, or Detector.save)")
    ex.add_argument("--format", default="onnx", choices=["onnx"], help="graph format [default: onnx]")
    ex.add_argument("--out", required=True, help="a new or empty folder for the graphs and export.json")

    from .serve import MAX_BODY_BYTES

    sv = sub.add_parser("serve", help="serve a run's detector over HTTP: Open Inference Protocol v2, POST /score "
                        "(CSV) and a page at / (needs pip install 'aekit[serve]')")
    sv.add_argument("run", help="run directory (aekit train, or Detector.save)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on [default: 127.0.0.1]")
    sv.add_argument("--port", type=int, default=8080, help="port to listen on [default: 8080]")
    sv.add_argument("--name", help="the model's name in the /v2/models/{name} endpoints (default: the run folder's)")
    sv.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES, help="larger request bodies are "
                    f"refused with 413 [default: {MAX_BODY_BYTES}]")

    pk = sub.add_parser("pack", help="write an image folder, a CSV/TSV table, an IDX file or a .npz archive as a "
                        ".npy file (and its labels) that training memory-maps")
    pk.add_argument("source", help="image folder (one subfolder per class gives labels), .csv/.tsv/.txt table, "
                    "IDX images file (*-images-idx3-ubyte[.gz], labels from the *-labels-idx1-ubyte file beside it) "
                    "or .npz archive")
    pk.add_argument("--out", required=True, help="the .npy file to create (labels go to OUT.labels.npy beside it); "
                    "an existing file is never overwritten")
    pk.add_argument("--label-column", help="CSV/TSV: the column of class labels")
    pk.add_argument("--features", help="CSV/TSV: comma-separated feature columns (default: every column but the "
                    "label)")

    sub.add_parser("models", help="list the model families")
    sub.add_parser("datasets", help="list the datasets available here")
    return p


SEVERAL_PROCESSES = ("train", "eval")  # the commands that share their work across torchrun's processes


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and len(argv[0]) > 3 and "--version".startswith(argv[0]):  # argparse's answer, without torch
        print(f"aekit {__version__}")
        return 0
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, one line already printed)
        return int(e.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    ok = False
    try:
        if args.command not in SEVERAL_PROCESSES and distributed.launched():  # every rank would write its files
            raise ConfigError(f"aekit {args.command} runs in one process; launch it without torchrun (only "
                              f"{' and '.join(SEVERAL_PROCESSES)} use several processes)")
        code = {"train": cmd_train, "eval": cmd_eval, "reconstruct": cmd_reconstruct, "encode": cmd_encode,
                "sample": cmd_sample, "models": cmd_models, "datasets": cmd_datasets,
                "plot": cmd_plot, "report": cmd_report, "compare": cmd_compare, "score": cmd_score,
                "calibrate": cmd_calibrate, "pack": cmd_pack, "export": cmd_export,
                "serve": cmd_serve}[args.command](args)
        ok = True
        return code
    except AekitError as e:
        if distributed.is_main():
            print(f"aekit {args.command}: error: {e}", file=sys.stderr)
        elif getattr(e, "from_rank", None) is None:  # an error no other rank knows of (rank 0 prints the others)
            print(f"aekit {args.command} (rank {distributed.rank()}): error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        run = getattr(args, "run_dir", None)
        hint = f"; the training run continues with `aekit train --resume {run}`" if run else ""
        print(f"aekit {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    finally:
        distributed.cleanup(wait=ok)  # under torchrun: the ranks part together after a success


if __name__ == "__main__":
    sys.exit(main())
