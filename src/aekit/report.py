"""HTML report of a run directory: one self-contained page.

The page holds the run's configuration, how training ended, the table of every metric that applies
(``metrics.evaluate``), the training curves and every figure that applies (``plots.run_figures``).
Images are PNGs embedded as base64 data URIs and the CSS is inline: no external resource, no script,
so the file can be mailed, archived or opened offline. Every piece of text is escaped (html.escape).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
from pathlib import Path

from . import files
from .run import Run

__all__ = ["CSS", "esc", "fmt", "png_data_uri", "img_tag", "figure_html", "table_html", "page", "metrics_table",
           "render", "write_report"]

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1150px;
color:#1d232a;padding:0 16px;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #d0d7de;
padding-bottom:.2em}h3{font-size:1.05em}
.meta{color:#57606a;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f3f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums;font-family:ui-monospace,
SFMono-Regular,Menlo,monospace}
td.best{font-weight:bold;background:#e8f5e9}
td.failed{color:#b42318}
figure{margin:1em 0;display:inline-block;vertical-align:top}
figure img{max-width:100%;height:auto;border:1px solid #eaeef2;background:#fff}
figcaption{color:#57606a;font-size:.85em;max-width:1100px}
.grid td img{max-width:520px;height:auto}
code{background:#f3f5f7;padding:1px 4px;border-radius:3px}
"""


def esc(v) -> str:
    """Text for HTML: str(v) with <, >, &, and quotes escaped."""
    return html.escape(str(v), quote=True)


def fmt(v) -> str:
    """A number for a table: integers as they are, floats with 4 significant digits."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    return str(v)


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img_tag(png: bytes, alt: str) -> str:
    return f'<img src="{png_data_uri(png)}" alt="{esc(alt)}">'


def figure_html(png: bytes, caption: str) -> str:
    return f"<figure>{img_tag(png, caption)}<figcaption>{esc(caption)}</figcaption></figure>"


def table_html(header: list[str], rows: list[list], num_cols: set[int] | None = None, classes=None) -> str:
    """A table; cells are escaped (format numbers with ``fmt`` first). ``classes[r][c]``: extra CSS class."""
    num_cols = num_cols or set()
    out = ["<table><thead><tr>", *(f"<th>{esc(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for r, row in enumerate(rows):
        out.append("<tr>")
        for c, cell in enumerate(row):
            cls = ["num"] if c in num_cols else []
            if classes and classes[r][c]:
                cls.append(classes[r][c])
            attr = f' class="{" ".join(cls)}"' if cls else ""
            out.append(f"<td{attr}>{esc(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def page(title: str, body: str) -> str:
    """A complete HTML document with the inline stylesheet."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def metrics_table(values: dict) -> str:
    """The metrics, and a table's per-column errors (``rmse:<column>``) in a table of their own."""
    from .metrics import COLUMN_RMSE, METRIC_INFO

    rows = [[k, fmt(v), (METRIC_INFO.get(k) or ("", ""))[0]] for k, v in values.items()
            if not k.startswith(COLUMN_RMSE)]
    html = table_html(["metric", "value", "meaning"], rows, num_cols={1})
    columns = [[k[len(COLUMN_RMSE):], fmt(v)] for k, v in values.items() if k.startswith(COLUMN_RMSE)]
    if columns:
        html += ("<h3>Reconstruction error per column</h3><p class=\"meta\">Root mean squared error of each "
                 "column, in that column's own units.</p>" + table_html(["column", "RMSE"], columns, num_cols={1}))
    return html


def _dict_table(d: dict | None) -> str:
    if not d:
        return "<p class=\"meta\">(none)</p>"
    def short(v):
        text = str(v) if isinstance(v, dict) else fmt(v)
        return text if len(text) <= 300 else text[:300] + " …"

    return table_html(["option", "value"], [[k, short(v)] for k, v in d.items()])


# --------------------------------------------------------------------------------------------------
# The report


def render(run, *, model=None, dataset=None, values: dict | None = None, normal_class=None,
           iw_samples: int = 100, seed: int = 0, split: str = "test",
           figures: list[tuple[str, str, bytes]] | None = None) -> str:
    """The HTML text of the report of ``run`` (a Run or a run directory); loads what is not given.

    Without ``dataset`` the run's own data is used and ``normal_class`` defaults to the class a one-class
    run was trained on. ``values``: precomputed metrics (else ``metrics.evaluate`` with the run's
    evaluation options); ``figures``: precomputed (name, caption, png bytes) (else ``plots.run_figures``).
    """
    from . import metrics, plots

    run = run if isinstance(run, Run) else Run.open(run)
    opts = run.evaluation_options(other_data=dataset is not None)
    if model is None:
        model = run.model()
    if dataset is None:
        dataset = run.dataset()
        normal_class = opts.normal_class if normal_class is None else normal_class
    history, summary = run.history, run.summary
    if values is None:
        from .scoring import Scorer

        scorer = Scorer.from_run(run.path, device=str(model.device)) if normal_class is not None else None
        values = metrics.evaluate(model, dataset, split, iw_samples=iw_samples, normal_class=normal_class, seed=seed,
                                  binarize_seed=opts.binarize_seed, scorer=scorer)
    if figures is None:
        figures = [(name, cap, plots.to_png(fig)) for name, cap, fig in
                   plots.run_figures(model, dataset, history, seed=seed, split=split)]

    name = run.model_name
    data_name = getattr(dataset, "name", "?")
    title = f"aekit report: {name} on {data_name}"
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"<h1>{esc(title)}</h1>",
             f"<p class=\"meta\">run directory <code>{esc(run.path)}</code> · aekit "
             f"{esc(run.aekit_version)} · report written {esc(now)}</p>"]
    ended = {
        "epochs run": summary.get("epochs_run", len(history)),
        "best epoch": summary.get("best_epoch"),
        "best validation loss": summary.get("best_val_loss"),
        "how it ended": summary.get("stopped"),
        "seconds per epoch (median)": summary.get("seconds_per_epoch_median"),
        "training seconds": summary.get("train_seconds"),
    }
    parts += ["<h2>Training</h2>", table_html(["", "value"], [[k, fmt(v)] for k, v in ended.items()], {1})]
    extra = f" Normal class for anomaly detection: {esc(normal_class)}." if normal_class is not None else ""
    note = opts.likelihood_note(split) if model.capabilities.probabilistic else None
    if note:
        extra += f" Likelihoods are computed on the {esc(note)}."
    parts += ["<h2>Metrics</h2>",
              f"<p class=\"meta\">On the {esc(split)} split of {esc(data_name)} "
              f"({len(getattr(dataset, f'x_{split}'))} examples).{extra}</p>",
              metrics_table(values)]
    parts.append("<h2>Figures</h2>")
    if figures:
        parts += [f"<h3>{esc(n)}</h3>" + figure_html(png, cap) for n, cap, png in figures]
    else:
        parts.append("<p class=\"meta\">No figure applies.</p>")
    data = None if run.data is None else run.data.to_dict()
    if data is not None and getattr(dataset, "fixed_test", False) and dataset.spec == run.data:
        data["test_fraction"] = f"does not apply: the source's own test set ({len(dataset.x_test)} examples)"
    parts += ["<h2>Configuration</h2>", "<h3>model</h3>", _dict_table({"family": name, **run.model_config.to_dict()}),
              "<h3>training</h3>", _dict_table(run.train.to_dict()), "<h3>data</h3>", _dict_table(data)]
    return page(title, "\n".join(parts))


def write_report(run, out=None, **kw) -> Path:
    """Write the report of ``run`` (a Run or a run directory) to ``out`` (default RUN/report.html)."""
    run = run if isinstance(run, Run) else Run.open(run)
    if out is None:  # the run's own report: through Run, which owns the run's files
        return run.write_report(render(run, **kw))
    out = Path(out)
    files.atomic_write_text(out, render(run, **kw))
    return out
