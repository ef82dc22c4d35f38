"""Train several model families with the same budget and data, evaluate each, and write a comparison.

``compare(dataset, out)`` trains every family (``trainer.fit`` with ``out_dir=out/<model>``), evaluates
it with ``metrics.evaluate``, writes its own report (``out/<model>/report.html``) and figures
(``out/<model>/figures/*.png``), then writes ``out/comparison.md``, ``out/comparison.html`` (self-contained:
images embedded) and ``out/comparison.json``. A family that fails (any exception) is reported as failed
with its error, and the others still run.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from . import files
from .run import Run

__all__ = ["DEFAULT_EPOCHS", "SIDE_BY_SIDE", "DEFAULT_LATENT_DIM", "FamilyResult", "check_out_dir", "compare", "fmt_s",
           "write_comparison"]

# Epochs per family when none are given. `aekit compare` on digits with every registered family (8) and
# one torch thread took 27 s in all (training, evaluation, figures, reports) on 2 CPU cores that other jobs
# kept busy (load average 4); tests/test_compare.py's slow test holds it under 2 minutes.
DEFAULT_EPOCHS = 50
SIDE_BY_SIDE = ("reconstructions", "samples")
# Every family gets this code size unless told otherwise: a comparison at different code sizes (sae's own
# default is an overcomplete 64) ranks capacity, not families.
DEFAULT_LATENT_DIM = 16
LOCK = ".aekit-compare-lock"  # flock'ed by the one comparison writing into a folder; holds its pid


@dataclass
class FamilyResult:
    model: str
    status: str = "ok"  # "ok" | "failed"
    error: str | None = None
    metrics: dict = field(default_factory=dict)
    epochs_run: int = 0
    seconds_per_epoch: float | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    run_dir: str | None = None
    uses_labels: bool = False  # the model takes the label as an input (conditional / supervised)
    latent_dim: int | None = None  # the code size it was trained with
    figures: dict = field(default_factory=dict)  # name -> (relative png path, caption, png bytes)

    def to_json(self) -> dict:
        return {"model": self.model, "status": self.status, "error": self.error, "metrics": self.metrics,
                "epochs_run": self.epochs_run, "seconds_per_epoch": self.seconds_per_epoch,
                "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds, "run_dir": self.run_dir,
                "uses_labels": self.uses_labels, "latent_dim": self.latent_dim,
                "figures": {k: v[0] for k, v in self.figures.items()}}


def check_out_dir(out: Path, models: list[str], overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``; with it, only earlier runs of the compared models
    that are provably aekit's and idle (``Run.why_not_removable``) and earlier comparison files may be
    replaced: a folder holding anything else is left alone, and nothing is changed."""
    from .errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose a folder for the comparison")
    if not out.exists() or not any(p.name != LOCK for p in out.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"--out {out} already exists and is not empty; choose another --out, or pass "
                          "--overwrite to replace the runs of the compared models in it (nothing was changed)")
    for m in models:
        d = out / m
        if not d.exists() and not d.is_symlink() or d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
            continue
        why = Run.why_not_removable(d)
        if why is not None:
            raise ConfigError(f"--overwrite: {d} {why}; it is left alone and nothing was changed; choose another "
                              "--out")


def _default_models() -> list[str]:
    from . import registry

    return list(registry.MODELS)


def compare(dataset, out, *, models: list[str] | None = None, epochs: int = DEFAULT_EPOCHS,
            latent_dim: int | None = DEFAULT_LATENT_DIM, threads: int = 1, overwrite: bool = False, seed: int = 0,
            iw_samples: int = 100,
            log=None) -> list[FamilyResult]:
    """Train, evaluate and report every family in ``models`` (default: all registered) on ``dataset``.

    Same budget for all: ``epochs`` epochs of the default training options with ``seed``; the same code size
    ``latent_dim`` for every family (None: each family's own default, and rows rank only models of one size).
    Returns one FamilyResult per family, in order, and writes the comparison files into ``out``. ``log``: a
    callable for one progress line per family.
    """
    from . import registry
    from .config import TrainConfig
    from .errors import ConfigError

    out = Path(out)
    models = list(models) if models else _default_models()
    unknown = [m for m in models if m not in registry.MODELS]
    if unknown:
        raise ConfigError(f"--models: unknown model(s) {', '.join(unknown)}; available: {', '.join(registry.MODELS)}")
    if len(set(models)) != len(models):
        raise ConfigError(f"--models: a model is listed twice ({','.join(models)})")
    tcfg = TrainConfig(epochs=epochs, seed=seed, threads=threads)
    check_out_dir(out, models, overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot create the folder ({e.strerror or e}); choose another --out") from None
    fd, who = files.lock_file(out / LOCK)  # one comparison at a time writes into a folder
    if fd is None:
        raise ConfigError(f"--out {out}: another comparison ({who}) is writing into this folder; wait for it to "
                          "end or choose another --out (nothing was changed)")
    try:
        check_out_dir(out, models, overwrite)  # again, under the lock: a comparison may have ended meanwhile
        for m in models:  # checked above: only idle aekit runs are removed
            if (out / m).is_dir() and any((out / m).iterdir()):
                Run.remove(out / m)
        results = []
        for name in models:
            r = _run_family(name, dataset, out, tcfg, latent_dim, iw_samples, seed)
            results.append(r)
            if log:
                if r.status == "ok":
                    log(f"{name}: {r.epochs_run} epochs in {r.train_seconds:.1f} s "
                        f"({fmt_s(r.seconds_per_epoch)} s/epoch), evaluated and reported in {r.eval_seconds:.1f} s")
                else:
                    log(f"{name}: FAILED: {r.error}")
        write_comparison(out, results, dataset, tcfg, latent_dim)
    finally:
        os.close(fd)
    return results


def fmt_s(v) -> str:
    return "–" if v is None else f"{v:.3g}"


def _run_family(name, dataset, out: Path, tcfg, latent_dim, iw_samples, seed) -> FamilyResult:
    from . import metrics, plots, registry, report, trainer

    r = FamilyResult(model=name, run_dir=name)
    run_dir = out / name
    try:
        opts = {} if latent_dim is None else {"latent_dim": latent_dim}
        model = registry.build_for(name, dataset, seed=tcfg.seed, **opts)
        r.uses_labels = model.capabilities.uses_labels
        r.latent_dim = model.latent_dim
        res = trainer.fit(model, dataset, tcfg, out_dir=run_dir, quiet=True, model_name=name)
        r.epochs_run = len(res.history)
        r.seconds_per_epoch = res.seconds_per_epoch
        r.train_seconds = sum(h["seconds"] for h in res.history)
        t0 = time.perf_counter()
        r.metrics = metrics.evaluate(res.model, dataset, iw_samples=iw_samples, seed=seed)
        figs = []
        for fname, cap, fig in plots.run_figures(res.model, dataset, res.history, seed=seed):
            png = plots.to_png(fig)
            res.run.write_figure(fname, png)  # RUN/figures/NAME.png, through Run
            rel = f"{name}/figures/{fname}.png"
            figs.append((fname, cap, png))
            r.figures[fname] = (rel, cap, png)
        report.write_report(res.run, model=res.model, dataset=dataset, values=r.metrics, figures=figs)
        r.eval_seconds = time.perf_counter() - t0  # evaluation, figures and report
    except Exception as e:  # noqa: BLE001 - a failing family is reported, the others go on
        r.status = "failed"
        last = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        where = f" (at {Path(last.filename).name}:{last.lineno})" if last else ""
        r.error = f"{type(e).__name__}: {e}{where}"
    return r


# --------------------------------------------------------------------------------------------------
# Writing the comparison


def _rows(results: list[FamilyResult]) -> list[tuple[str, list]]:
    keys: list[str] = []
    for r in results:
        for k in r.metrics:
            if k not in keys:
                keys.append(k)
    rows = [("status", [r.status for r in results]),
            ("epochs", [r.epochs_run if r.status == "ok" else None for r in results]),
            ("code size (latent_dim)", [r.latent_dim for r in results]),
            ("seconds per epoch (median)", [r.seconds_per_epoch for r in results]),
            ("training seconds", [r.train_seconds for r in results]),
            ("evaluation and report seconds", [r.eval_seconds for r in results])]
    rows += [(k, [r.metrics.get(k) for r in results]) for k in keys]
    return rows


def _best(key: str, values: list, results: list[FamilyResult]) -> set[int]:
    """Indices of the best value of a row among comparable models: the same code size (the most common one),
    and without the models that take the label as input (their likelihoods are log p(x|y), their codes see
    y) unless no other model has the row."""
    from .metrics import METRIC_INFO

    better = (METRIC_INFO.get(key) or ("", ""))[1]
    nums = [(i, v) for i, v in enumerate(values) if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)]
    unlabelled = [(i, v) for i, v in nums if not results[i].uses_labels]
    nums = unlabelled or nums
    sizes = [results[i].latent_dim for i, _ in nums]
    if sizes:
        common = max(sizes, key=sizes.count)
        nums = [(i, v) for i, v in nums if results[i].latent_dim == common]
    if not better or len(nums) < 2:
        return set()
    target = (max if better == "higher" else min)(v for _, v in nums)
    return {i for i, v in nums if v == target}


def _header_text(dataset, tcfg, latent_dim) -> str:
    n = [len(getattr(dataset, f"x_{s}")) for s in ("train", "val", "test")]
    lat = (f"the same code size latent_dim {latent_dim} for every family" if latent_dim is not None else
           "each family's default code size (rows rank only the models of the most common size)")
    return (f"Dataset {dataset.name} ({n[0]} train / {n[1]} validation / {n[2]} test examples); "
            f"{tcfg.epochs} epochs each, batch size {tcfg.batch_size}, lr {tcfg.lr:g}, seed {tcfg.seed}, {lat}. "
            "Metrics on the test split.")


def write_comparison(out: Path, results: list[FamilyResult], dataset, tcfg, latent_dim) -> None:
    from .metrics import METRIC_INFO
    from .report import esc, fmt, img_tag, page, table_html

    names = [r.model + ("*" if r.uses_labels else "") for r in results]
    rows = _rows(results)
    star = ("*: takes the class label as an input, so its likelihoods are log p(x|y) and its codes are computed "
            "from (x, y); it is not ranked against the models without labels.")
    head = _header_text(dataset, tcfg, latent_dim)

    # Markdown
    md = ["# aekit comparison", "", head, "",
          "| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, vals in rows:
        best = _best(key, vals, results)
        cells = [("**" + fmt(v) + "**") if i in best else fmt(v) for i, v in enumerate(vals)]
        md.append(f"| {key} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    md += ["", "Bold: the best value of a row whose direction is known (see the metric descriptions below), among "
           "models of the same code size."]
    if any(r.uses_labels for r in results):
        md += ["", star]
    failed = [r for r in results if r.status != "ok"]
    if failed:
        md += ["", "## Failed", ""] + [f"- **{r.model}**: `{r.error}`" for r in failed]
    md += ["", "## Reconstructions and samples", ""]
    for r in results:
        if r.status != "ok":
            continue
        md.append(f"### {r.model} ([report]({quote(r.model)}/report.html))")
        md.append("")
        for fname in SIDE_BY_SIDE:
            if fname in r.figures:
                md.append(f"![{r.model} {fname}]({quote(r.figures[fname][0])})")
        md.append("")
    described = [k for k, _ in rows if k in METRIC_INFO]
    if described:
        md += ["## Metrics", ""] + [f"- `{k}`: {METRIC_INFO[k][0]}" for k in described]
    files.atomic_write_text(out / "comparison.md", "\n".join(md) + "\n")

    # HTML
    classes, cells = [], []
    for key, vals in rows:
        best = _best(key, vals, results)
        cells.append([key] + [fmt(v) for v in vals])
        classes.append([""] + ["best" if i in best else ("failed" if v == "failed" else "")
                               for i, v in enumerate(vals)])
    body = ["<h1>aekit comparison</h1>", f"<p class=\"meta\">{esc(head)}</p>",
            "<h2>Metrics</h2>",
            table_html(["metric"] + names, cells, num_cols=set(range(1, len(names) + 1)), classes=classes),
            "<p class=\"meta\">Highlighted: the best value of a row whose direction is known, among models of the "
            "same code size.</p>"]
    if any(r.uses_labels for r in results):
        body.append(f"<p class=\"meta\">{esc(star)}</p>")
    if failed:
        body += ["<h2>Failed</h2>", "<ul>"] + [f"<li><b>{esc(r.model)}</b>: <code>{esc(r.error)}</code></li>"
                                               for r in failed] + ["</ul>"]
    body += ["<h2>Reconstructions and samples</h2>", "<table class=\"grid\"><thead><tr><th>model</th>"]
    body += [f"<th>{esc(f)}</th>" for f in SIDE_BY_SIDE] + ["</tr></thead><tbody>"]
    for r in results:
        if r.status != "ok":
            continue
        link = f'<a href="{esc(quote(r.model))}/report.html">report</a>'
        body.append(f"<tr><td><b>{esc(r.model)}</b><br>{link}</td>")
        for fname in SIDE_BY_SIDE:
            if fname in r.figures:
                body.append(f"<td>{img_tag(r.figures[fname][2], f'{r.model} {fname}')}</td>")
            else:
                body.append("<td class=\"meta\">does not apply</td>")
        body.append("</tr>")
    body.append("</tbody></table>")
    described = [k for k, _ in rows if k in METRIC_INFO]
    if described:
        body += ["<h2>What the metrics mean</h2>",
                 table_html(["metric", "meaning", "better"], [[k, *METRIC_INFO[k]] for k in described])]
    files.atomic_write_text(out / "comparison.html", page("aekit comparison", "\n".join(body)))
    files.write_json(out / "comparison.json", {"dataset": dataset.name, "train": tcfg.to_dict(),
                                               "latent_dim": latent_dim, "results": [r.to_json() for r in results]})
