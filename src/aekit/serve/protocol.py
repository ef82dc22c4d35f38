"""The Open Inference Protocol v2 (KServe, Seldon, MLServer, Triton's HTTP/REST) as JSON, for one model.

Request (``POST /v2/models/{name}/infer``)::

    {"id": "optional", "inputs": [{"name": "input", "shape": [n, 64], "datatype": "FP32",
                                   "data": [... n * 64 numbers, row-major, flat or nested ...]}],
     "outputs": [{"name": "scores"}, {"name": "is_outlier"}]}          # optional: default every output

Response::

    {"model_name": ..., "model_version": "1", "id": ..., "outputs": [
        {"name": "scores", "datatype": "FP64", "shape": [n], "data": [...]}, ...]}

Errors are ``{"error": "one line"}`` with a 4xx status, as the protocol has them. Binary tensor data (Triton's
extension) is refused: send JSON. Every check names what was wrong and what the model expects.
"""

from __future__ import annotations

import json
import math

import numpy as np

from .model import OUTPUTS, Rejected, ServedModel, finite_or_reject

_DTYPES = {"FP32": np.float32, "FP64": np.float64, "UINT8": np.uint8}


def parse_json(body: bytes) -> object:
    """The JSON document of a request body; a 400 with the parser's reason when it is not JSON."""
    try:
        return json.loads(body.decode("utf-8"))  # JSON is UTF-8 (RFC 8259); json.loads(bytes) would guess others
    except UnicodeDecodeError:
        raise Rejected(400, "the request body is not UTF-8 text; send JSON") from None
    except json.JSONDecodeError as e:
        raise Rejected(400, f"the request body is not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise Rejected(400, "the request body is JSON nested too deeply") from None


def parse_infer(model: ServedModel, body: bytes) -> tuple[np.ndarray, list[str] | None, str | None]:
    """(rows (n, *input_shape) as numpy, the requested output names or None for all, the request id)."""
    req = parse_json(body)
    if not isinstance(req, dict):
        raise Rejected(400, f"an inference request is a JSON object with \"inputs\", got {type(req).__name__}")
    unknown = sorted(set(req) - {"id", "inputs", "outputs", "parameters"})
    if unknown:
        raise Rejected(400, f"unknown field(s) {', '.join(map(repr, unknown))} in the request; an inference request "
                            "has id, parameters, inputs and outputs")
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise Rejected(400, f"\"id\" must be a string, got {type(rid).__name__}")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        got = f"{len(inputs)} inputs" if isinstance(inputs, list) else f"\"inputs\" = {_short(inputs)}"
        raise Rejected(400, f"model {model.name} takes one input {model.input_name!r}; the request has {got}")
    x = _tensor(model, inputs[0])
    return x, _outputs(model, req.get("outputs")), rid


def _tensor(model: ServedModel, spec) -> np.ndarray:
    want_shape = [-1, *model.input_shape]
    if not isinstance(spec, dict):
        raise Rejected(400, f"an input is a JSON object with name, shape, datatype and data, got {_short(spec)}")
    name, shape, dtype = spec.get("name"), spec.get("shape"), spec.get("datatype")
    if name != model.input_name:
        raise Rejected(400, f"unknown input {name!r}; model {model.name} takes the input {model.input_name!r}")
    params = spec.get("parameters") or {}
    if not isinstance(params, dict) or "binary_data_size" in params:
        raise Rejected(400, "binary tensor data is not supported; send the input's values as JSON \"data\"")
    if isinstance(shape, list) and shape and shape[0] == -1:  # the metadata's -1 copied into a request
        raise Rejected(400, f"input {name!r}: \"shape\" {_short(shape)} has -1 rows; send the number of rows the "
                            "data holds (the metadata's -1 means any number)")
    if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
        raise Rejected(400, f"input {name!r}: \"shape\" must be a list of sizes (whole numbers >= 0), got "
                            f"{_short(shape)}")
    if len(shape) != len(want_shape) or shape[1:] != want_shape[1:] or shape[0] < 1:
        raise Rejected(400, f"input {name!r} has shape {shape}; model {model.name} takes shape {want_shape} "
                            "(n >= 1 rows)")
    allowed = model.input_datatypes()
    if dtype not in allowed:
        raise Rejected(400, f"input {name!r} has datatype {_short(dtype)}; model {model.name} takes "
                            f"{' or '.join(allowed)}")
    data = spec.get("data")
    if not isinstance(data, list):
        raise Rejected(400, f"input {name!r}: \"data\" must be a JSON list of numbers, got {_short(data)}")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, RecursionError):
        raise Rejected(400, f"input {name!r}: \"data\" is not a rectangular list of numbers") from None
    if arr.dtype.kind not in "iuf" or arr.dtype == object:
        what = {"b": "true/false", "U": "text", "O": "null or mixed values"}.get(arr.dtype.kind, str(arr.dtype))
        raise Rejected(400, f"input {name!r}: \"data\" holds {what}; datatype {dtype} needs numbers")
    n = math.prod(shape)
    if arr.size != n:
        raise Rejected(400, f"input {name!r}: \"data\" holds {arr.size} values but shape {shape} needs {n}")
    arr = arr.reshape(shape)
    if dtype == "UINT8":
        if arr.dtype.kind == "f" or arr.min() < 0 or arr.max() > 255:
            raise Rejected(400, f"input {name!r}: datatype UINT8 needs whole numbers from 0 to 255")
        return arr.astype(np.uint8, copy=False)
    with np.errstate(over="ignore"):  # a value beyond FP32's range becomes inf, refused just below
        out = arr.astype(_DTYPES[dtype], copy=False)
    if not np.isfinite(out).all():  # one pass on the values as cast; the row's own values tell why
        row = int(np.argmax(~np.isfinite(out.reshape(len(out), -1)).all(axis=1)))
        if np.isfinite(arr[row]).all():  # finite as sent, beyond float32's range once cast
            raise Rejected(400, f"input {name!r}: row {row} holds a value beyond FP32's range (magnitude above "
                                f"{float(np.finfo(np.float32).max):.3g}); send it as FP64 or rescale it")
        raise Rejected(400, f"input {name!r}: row {row} holds NaN or an infinite value; send finite numbers")
    return out


def _outputs(model: ServedModel, spec) -> list[str] | None:
    if spec is None:
        return None
    have = model.outputs()
    if not isinstance(spec, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in spec):
        raise Rejected(400, f"\"outputs\" must be a list of {{\"name\": ...}} objects, got {_short(spec)}")
    names = list(dict.fromkeys(o["name"] for o in spec))
    bad = [n for n in names if n not in have]
    if bad:
        why = {"p_values": " (p_values need a calibrated run: aekit calibrate)",
               "is_outlier": " (is_outlier needs a threshold: aekit calibrate or train --contamination)"}
        raise Rejected(400, f"unknown output(s) {', '.join(map(repr, bad))}{''.join(why.get(b, '') for b in bad)}; "
                            f"model {model.name} gives {', '.join(have)}")
    return names


def infer_response(model: ServedModel, got: dict[str, np.ndarray], rid: str | None) -> dict:
    outputs = []
    for name, a in got.items():
        finite_or_reject(name, a)
        outputs.append({"name": name, "datatype": OUTPUTS[name][0], "shape": list(a.shape),
                        "data": np.ascontiguousarray(a).ravel()})  # a numpy array: the app writes it with orjson
    res = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
    if rid is not None:
        res["id"] = rid
    return res


def metadata(model: ServedModel) -> dict:
    """GET /v2/models/{name}: the input and the outputs, with datatype and shape (-1: any number of rows)."""
    info = model.info()
    return {
        "name": model.name, "versions": [model.version], "platform": "aekit",
        "inputs": [{"name": model.input_name, "datatype": model.input_datatypes()[0], "shape": [-1, *model.input_shape],
                    "parameters": {"datatypes": list(model.input_datatypes()), "kind": model.kind,
                                   **({"feature_names": model.feature_names} if model.feature_names else {})}}],
        "outputs": [{"name": n, "datatype": OUTPUTS[n][0], "shape": model.output_shape(n),
                     "parameters": {"description": OUTPUTS[n][1]}} for n in model.outputs()],
        "parameters": {"family": info["family"], "score": info["score"], "threshold": info["threshold"],
                       "threshold_from": info["threshold_from"], "flag_rate": info["flag_rate"]},
    }


def _short(value, limit: int = 60) -> str:
    """A request value as a few characters for an error message (a long list or object is summarized)."""
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"an object with keys {', '.join(list(map(str, value))[:6])}"
    text = repr(value) if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["parse_json", "parse_infer", "infer_response", "metadata"]
