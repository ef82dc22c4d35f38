"""ONNX export of a detector: its scorer, encoder and decoder as graphs that run without Python or PyTorch.

    aekit export RUN --format onnx --out DIR        # or Detector.export(DIR), export_run(RUN, DIR)

writes into DIR (new or empty; nothing is ever overwritten):

- ``scorer.onnx``: ``aekit.scoring.Scorer.forward``, the score ``aekit score`` writes. Input ``x`` (batch, *shape)
  as the user holds it (a table in its own units, float64, standardized inside with the training rows'
  statistics; images float32 (batch, C, H, W) in [0, 1]; a conditional family also ``y``); outputs ``score``
  (batch,) float64, ``p_value`` (batch,) float64 (the conformal p-value of the calibration table; NaN when the
  detector was never calibrated) and ``is_outlier`` (batch,) bool (score > threshold; the threshold is inside,
  False for every row when none was set). Not written for the -ELBO score, which draws random samples per
  batch (a graph would give other numbers): the sidecar says why.
- ``encoder.onnx``: ``x`` [, ``y``] -> ``z`` (batch, K), the deterministic code (the posterior mean of the
  probabilistic families; no sampling node), preprocessing inside.
- ``decoder.onnx``: ``z`` [, ``y``] -> ``x_hat`` (batch, *shape), the mean of p(x|z), back in the user's units
  (a table float64 in its own units; images float32 in [0, 1]).
- ``export.json``: the sidecar: each graph's input and output names, shapes and dtypes, column names and
  units, the score, threshold, the false-positive rate the calibration promises, aekit's version.

Every graph has a dynamic batch dimension. The label ``y`` of a conditional family (cvae: its networks read
it) is int64 (batch,) class indices, or float32 (batch, cond_dim) condition vectors; the supervised aae's
networks do not read its label (it only picks the prior's component), so its graphs take none. The
encoder and decoder are those of the first member (the run's own model.safetensors).

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export, then onnxscript), the default and supported
path of torch >= 2.9: it captures the graph with guards (a shape or branch it cannot honour is an error at
export, not a silently different graph), while the TorchScript tracer is deprecated and warns that Python
booleans are baked in. After export each graph is run with onnxruntime when it is installed and compared with
PyTorch on a batch of rows the trace never saw (another batch size); a difference beyond 1e-5 relative
(1e-6 of the output's scale for values near zero) or a different ``is_outlier`` refuses the export.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from . import __version__, files
from .errors import ConfigError, RunError
from .scoring import DETERMINISTIC, Scorer

FORMATS = ("onnx",)
SIDECAR = "export.json"
GRAPHS = {"scorer": "scorer.onnx", "encoder": "encoder.onnx", "decoder": "decoder.onnx"}
TRACE_ROWS, CHECK_ROWS = 4, 9  # rows of the batch traced, and of the (other) batch checked with onnxruntime
RTOL, ATOL_SCALE = 1e-5, 1e-6  # the check: |onnx - torch| <= RTOL |torch| + ATOL_SCALE max(1, max |torch|)
INSTALL = "pip install 'aekit[onnx]'"


class EncoderGraph(nn.Module):
    """x [, y] in the user's units -> the code z (B, K): preprocessing, then the model's deterministic
    ``encode`` (the posterior mean of the probabilistic families)."""

    def __init__(self, scorer: Scorer):
        super().__init__()
        self.preprocess, self.model = scorer.preprocess, scorer.members[0]

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.model.encode(self.preprocess(x), y)


class DecoderGraph(nn.Module):
    """z (B, K) [, y] -> the mean of p(x|z) (B, *shape) in the user's units (``Preprocess.unscale``)."""

    def __init__(self, scorer: Scorer):
        super().__init__()
        self.preprocess, self.model = scorer.preprocess, scorer.members[0]

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.preprocess.unscale(self.model.decode(z, y))


def export_run(run, out, fmt: str = "onnx") -> dict:
    """Export the scorer of the run directory ``run`` (``Scorer.from_run``) into the new or empty folder
    ``out``; returns the sidecar (also written as ``out/export.json``)."""
    from .run import Run

    r = Run.open(run)
    return export_onnx(Scorer.from_run(r.path), out, model_name=r.model_name, fmt=fmt)


def export_onnx(scorer: Scorer, out, *, model_name: str | None = None, fmt: str = "onnx") -> dict:
    """Write the graphs of ``scorer`` (see the module docstring) and the sidecar into the new or empty folder
    ``out``; returns the sidecar. A missing exporter is one ConfigError naming ``aekit[onnx]``; a folder that
    is not empty, or a file, is refused before anything is written; a failure removes what was written."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    _need_exporter()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "is a file" if not out.is_dir() else "already exists and is not empty"
        raise ConfigError(f"{out} {what}; choose a new or empty folder for --out (nothing was overwritten)")
    made = not out.exists()
    written: list[Path] = []
    scorer = copy.deepcopy(scorer).to("cpu").eval()  # the caller's models stay where and as they are
    try:
        out.mkdir(parents=True, exist_ok=True)
        sidecar = _sidecar(scorer, model_name)
        graphs = {"encoder": EncoderGraph(scorer).eval(), "decoder": DecoderGraph(scorer).eval()}
        if scorer.score_name in DETERMINISTIC:
            graphs = {"scorer": scorer, **graphs}
        for name, module in graphs.items():
            spec = sidecar["graphs"][name]
            trace, check = (_example(scorer, name, n, seed) for n, seed in ((TRACE_ROWS, 0), (CHECK_ROWS, 1)))
            data = _onnx_bytes(module, trace, [i["name"] for i in spec["inputs"]],
                               [o["name"] for o in spec["outputs"]])
            spec["checked_with_onnxruntime"] = _check(name, module, data, check, spec)
            path = out / GRAPHS[name]
            with files.new_file(path) as f:
                f.write(data)
            written.append(path)
            spec["opset"] = _opset(data)
        with files.new_file(out / SIDECAR) as f:
            f.write((json.dumps(sidecar, indent=2) + "\n").encode())
        written.append(out / SIDECAR)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # the folder this call made, left empty: no trace of a failed export
        raise
    return sidecar


def _need_exporter() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"ONNX export needs onnx and onnxscript ({e.name} is not installed): {INSTALL}") from None


def _onnx_bytes(module: nn.Module, args: tuple, input_names: list[str], output_names: list[str]) -> bytes:
    """The ONNX model of ``module`` called on ``args``, with a dynamic batch dimension on every input."""
    import warnings

    batch = torch.export.Dim("batch")
    shapes = tuple({0: batch} for _ in args)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.export's own deprecation notices, not the user's business
            program = torch.onnx.export(module, args, dynamo=True, input_names=input_names,
                                        output_names=output_names, dynamic_shapes=shapes, verbose=False)
    except Exception as e:  # torch.export's many kinds; one line
        first = " ".join(str(e).split())[:300]
        raise RunError(f"ONNX export of {type(module).__name__} failed ({type(e).__name__}: {first})") from None
    return program.model_proto.SerializeToString()


def _opset(data: bytes) -> int | None:
    import onnx

    model = onnx.load_from_string(data)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _label_spec(scorer: Scorer) -> dict | None:
    if not scorer.conditional:
        return None
    model = scorer.members[0]
    classes = model.config.num_classes
    if classes:
        return {"name": "y", "shape": ["batch"], "dtype": "int64",
                "units": f"class index 0..{classes - 1}, as in training"}
    return {"name": "y", "shape": ["batch", int(model.cond_size())], "dtype": "float32",
            "units": "condition vectors, as in training"}


def _x_spec(scorer: Scorer) -> dict:
    if scorer.kind == "table":
        return {"name": "x", "shape": ["batch", *scorer.input_shape], "dtype": "float64",
                "units": "the training table's own units (raw values; standardized inside the graph)"}
    return {"name": "x", "shape": ["batch", *scorer.input_shape], "dtype": "float32",
            "units": "pixel intensities in [0, 1], channels first (divide 8-bit pixels by 255)"}


def _sidecar(scorer: Scorer, model_name: str | None) -> dict:
    model = scorer.members[0]
    label = _label_spec(scorer)
    x, extra = _x_spec(scorer), [label] if label else []
    z = {"name": "z", "shape": ["batch", int(model.latent_dim)], "dtype": "float32",
         "units": "the code: the encoder's deterministic output (posterior mean for probabilistic families)"}
    x_hat = {**x, "name": "x_hat", "units": x["units"].replace("; standardized inside the graph", "")}
    graphs = {
        "encoder": {"file": GRAPHS["encoder"], "inputs": [x, *extra], "outputs": [z]},
        "decoder": {"file": GRAPHS["decoder"], "inputs": [{k: v for k, v in z.items() if k != "units"}, *extra],
                    "outputs": [x_hat]},
    }
    threshold = float(scorer.threshold) if scorer.has_threshold else None
    if scorer.score_name in DETERMINISTIC:
        graphs = {"scorer": {"file": GRAPHS["scorer"], "inputs": [x, *extra], "outputs": [
            {"name": "score", "shape": ["batch"], "dtype": "float64", "units": f"the {scorer.score_name} score, "
             "higher = more anomalous"},
            {"name": "p_value", "shape": ["batch"], "dtype": "float64", "units":
             "conformal p-value from the calibration table" if scorer.calibrated else
             "NaN: the detector was never calibrated (`aekit calibrate`)"},
            {"name": "is_outlier", "shape": ["batch"], "dtype": "bool", "units": "score > threshold" if threshold
             is not None else "False for every row: no threshold was set"}]}, **graphs}
    info = {
        "aekit_version": __version__, "format": "onnx", "model": model_name or model.name,
        "kind": scorer.kind, "input_shape": list(scorer.input_shape), "latent_dim": int(model.latent_dim),
        "members": len(scorer.members), "score": scorer.score_name,
        "columns": scorer.feature_names if scorer.kind == "table" else None,
        "units": x["units"],
        "preprocessing": ({"mean": scorer.preprocess.mean.tolist(), "std": scorer.preprocess.std.tolist(),
                           "formula": "(x - mean) / std, in float64"} if scorer.kind == "table" else
                          {"formula": "none: images are read in [0, 1]"}),
        "threshold": threshold, "threshold_from": scorer.threshold_from,
        "calibration_fpr": scorer.flag_rate if scorer.threshold_from == "calibration" else None,
        "contamination": scorer.flag_rate if scorer.threshold_from == "contamination" else None,
        "n_calibration_scores": int(scorer.calibration.numel()),
        "graphs": graphs,
    }
    if "scorer" not in graphs:
        info["no_scorer"] = (f"the {scorer.score_name} score draws random posterior samples per batch, which a graph "
                             "cannot reproduce; fit a Detector (the joint score) or use anomaly_score='recon_error'")
    return info


def _example(scorer: Scorer, graph: str, n: int, seed: int) -> tuple:
    """Inputs of ``graph`` for ``n`` rows drawn in the data's domain (seeded)."""
    g = torch.Generator().manual_seed(seed)
    model = scorer.members[0]
    if graph == "decoder":
        first = torch.randn(n, model.latent_dim, generator=g, dtype=model.dtype)
    elif scorer.kind == "table":
        pre = scorer.preprocess
        first = torch.randn(n, *scorer.input_shape, generator=g, dtype=torch.float64) * pre.std + pre.mean
    else:
        first = torch.rand(n, *scorer.input_shape, generator=g, dtype=torch.float32)
    label = _label_spec(scorer)
    if label is None:
        return (first,)
    if label["dtype"] == "int64":
        return first, torch.randint(0, model.config.num_classes, (n,), generator=g)
    return first, torch.randn(n, label["shape"][1], generator=g)


def _check(name: str, module: nn.Module, data: bytes, args: tuple, spec: dict) -> bool:
    """Run the graph with onnxruntime on ``args`` and compare with PyTorch; False when onnxruntime is not
    installed, a RunError when they differ."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {i["name"]: a.numpy() for i, a in zip(spec["inputs"], args)}
    got = session.run(None, feeds)
    with torch.no_grad():
        want = module(*args)
    want = [t.numpy() for t in (want if isinstance(want, tuple) else (want,))]
    for o, a, b in zip(spec["outputs"], got, want):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise RunError(f"ONNX export of the {name}: output {o['name']} has shape {a.shape} {a.dtype} in "
                           f"onnxruntime but {b.shape} {b.dtype} in PyTorch; nothing was written")
        if b.dtype == np.bool_:
            same = np.array_equal(a, b)
        else:
            finite = np.isfinite(b)
            scale = ATOL_SCALE * max(1.0, float(np.abs(b[finite]).max(initial=0.0)))
            same = np.array_equal(np.isnan(a), np.isnan(b)) and bool(
                np.all(np.abs(a[finite] - b[finite]) <= RTOL * np.abs(b[finite]) + scale))
        if not same:
            raise RunError(f"ONNX export of the {name}: onnxruntime's {o['name']} differs from PyTorch's beyond "
                           f"{RTOL:g} relative; nothing was written (please report this model's config)")
    return True


__all__ = ["export_onnx", "export_run", "EncoderGraph", "DecoderGraph", "SIDECAR", "GRAPHS"]
