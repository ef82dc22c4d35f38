"""The FastAPI application of ``aekit serve``: the Open Inference Protocol v2 endpoints, POST /score (CSV in,
``aekit score``'s CSV out), the page at / and the JSON it reads (/api/...).

Every answer to a bad request is a 4xx ``{"error": "one line"}``; anything unexpected is logged with its
traceback on the server's log and answered with a one-line 500 (``_Guard``), so no request takes the server
down or shows a traceback to a client. Bodies are read up to ``max_body_bytes`` (413 beyond, checked on the
Content-Length header first and again while reading). Model calls run in a worker thread, so the event loop
keeps answering health checks while a large request computes.
"""

from __future__ import annotations

import logging
from importlib import resources

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import __version__
from . import MAX_BODY_BYTES, protocol
from .model import Rejected, ServedModel, finite_or_reject

log = logging.getLogger("aekit.serve")
CSV_TYPES = {"text/tab-separated-values": ".tsv"}  # other content types of /score are read as CSV


def _json(payload, status: int = 200) -> Response:
    """A JSON answer; numpy arrays are written by orjson directly (shortest round-trip floats, so a client reads
    back the very numbers, float32 ones as float32)."""
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


def _error(status: int, reason: str) -> Response:
    return _json({"error": " ".join(str(reason).split())}, status)


class _Guard:
    """ASGI middleware: an exception no handler answered is logged and becomes a one-line 500."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:  # noqa: BLE001 - the catch-all that keeps the server up
            log.exception("aekit serve: %s %s failed", scope.get("method"), scope.get("path"))
            if not started:
                await _error(500, f"internal error ({type(e).__name__}); the server log has the details")(
                    scope, receive, send)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (a 413 beyond)."""
    too_big = (f"the request body is larger than this server's limit of {limit} bytes; send fewer rows per "
               "request or raise aekit serve --max-body-bytes")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise Rejected(413, too_big)
        except ValueError:
            raise Rejected(400, f"Content-Length {declared!r} is not a number") from None
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise Rejected(413, too_big)
        chunks.append(chunk)
    if not total:
        raise Rejected(400, "the request body is empty")
    return b"".join(chunks)


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def create_app(model: ServedModel, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The application serving ``model`` (a ServedModel)."""
    app = FastAPI(title="aekit serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard)
    app.state.model = model
    page = {"/": (_static("index.html"), "text/html; charset=utf-8"),
            "/static/app.js": (_static("app.js"), "text/javascript; charset=utf-8")}

    @app.exception_handler(Rejected)
    async def rejected(request, e: Rejected):
        return _error(e.status, e.reason)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):  # 404 unknown path, 405 wrong method
        reason = {404: f"no such endpoint: {request.method} {request.url.path}",
                  405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, e.detail)
        return _error(e.status_code, reason)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        return _error(400, f"bad request: {'.'.join(map(str, first.get('loc', [])))} {first.get('msg', '')}")

    def _check_name(name: str, version: str | None = None) -> None:
        if name != model.name:
            raise Rejected(404, f"unknown model {name!r}; this server serves {model.name!r}")
        if version is not None and version != model.version:
            raise Rejected(404, f"model {name!r} has no version {version!r}; it has version {model.version!r}")

    # --- Open Inference Protocol v2 -----------------------------------------------------------
    @app.get("/v2")
    async def server_metadata():
        return _json({"name": "aekit", "version": __version__, "extensions": []})

    @app.get("/v2/health/live")
    async def live():
        return _json({"live": True})

    @app.get("/v2/health/ready")
    async def ready():
        return _json({"ready": True})  # the model is loaded before the server starts

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        _check_name(name, version)
        return _json({"name": model.name, "ready": True})

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None):
        _check_name(name, version)
        return _json(protocol.metadata(model))

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None):
        _check_name(name, version)
        if "inference-header-content-length" in request.headers:
            raise Rejected(400, "binary tensor data (Triton's extension) is not supported; send the tensors as JSON "
                                "(tritonclient: set_data_from_numpy(x, binary_data=False))")
        body = await _body(request, max_body_bytes)

        def work():
            x, outputs, rid = protocol.parse_infer(model, body)
            return protocol.infer_response(model, model.infer(x, outputs), rid)

        return _json(await run_in_threadpool(work))

    # --- aekit score over HTTP ----------------------------------------------------------------
    @app.post("/score")
    async def score(request: Request):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind.startswith("multipart/"):
            raise Rejected(415, "send the CSV file itself as the request body (curl --data-binary @rows.csv "
                                "-H 'Content-Type: text/csv'), not a form upload")
        body = await _body(request, max_body_bytes)
        text = await run_in_threadpool(model.score_csv, body, CSV_TYPES.get(kind, ".csv"))
        return Response(text, media_type="text/csv; charset=utf-8")

    # --- the page -----------------------------------------------------------------------------
    @app.get("/")
    @app.get("/static/app.js")
    async def static(request: Request):
        content, media = page[request.url.path]
        return Response(content, media_type=media, headers={"Cache-Control": "no-store"})

    @app.get("/api/info")
    async def info():
        return _json({**model.info(), "max_body_bytes": max_body_bytes, "aekit_version": __version__})

    @app.get("/api/latent")
    async def latent():
        return _json(await run_in_threadpool(model.latent))

    @app.post("/api/analyze")
    async def analyze(request: Request):
        """A CSV body (tables; read as /score reads it) or a v2 inference request body (JSON): every output,
        the explanation and the latent position of each row, and the rows themselves."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await _body(request, max_body_bytes)

        def work():
            if kind == "application/json":
                x, _, _ = protocol.parse_infer(model, body)
                ids = list(range(len(x)))
            else:
                x, ids = model.rows_of_csv(body, CSV_TYPES.get(kind, ".csv"))
            got = model.analyze(x)
            out = {}
            for k, a in got["outputs"].items():
                out[k] = np.ascontiguousarray(a)
                finite_or_reject(k, out[k])
            shown = np.asarray(x, dtype=np.float64) / (255.0 if x.dtype == np.uint8 else 1.0)  # images in [0, 1]
            return {"ids": [str(i) for i in ids], "inputs": shown,
                    "axes": got["axes"], **out}

        return _json(await run_in_threadpool(work))

    @app.post("/api/decode")
    async def decode(request: Request):
        """{"point": [u, v]} (a point of the latent view) or {"code": [...]} -> the decoded row or image."""
        req = protocol.parse_json(await _body(request, max_body_bytes))

        def work():
            if isinstance(req, dict) and "code" in req:
                z = _numbers(req["code"], "code")[None]
            elif isinstance(req, dict) and "point" in req:
                p = _numbers(req["point"], "point")
                if p.shape != (2,):
                    raise Rejected(400, f"\"point\" must be [u, v], got {p.shape[0]} numbers")
                z = model.code_of_point(p)
            else:
                raise Rejected(400, "send {\"point\": [u, v]} or {\"code\": [numbers]}")
            x = model.decode(z)
            finite_or_reject("decoded", x)  # a code far outside the training codes
            return {"code": np.asarray(z, dtype=np.float64)[0].tolist(), "shape": list(x.shape[1:]),
                    "data": x[0].tolist()}

        return _json(await run_in_threadpool(work))

    @app.get("/api/sample")
    async def sample(n: str = "16", seed: str = "0"):
        try:
            n_, seed_ = int(n), int(seed)
        except ValueError:
            raise Rejected(400, f"n={n!r}, seed={seed!r}: both must be whole numbers") from None
        x = await run_in_threadpool(model.sample, n_, seed_)
        return _json({"shape": list(x.shape[1:]), "data": x.tolist()})

    return app


def _numbers(value, what: str) -> np.ndarray:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise Rejected(400, f"\"{what}\" must be a non-empty list of numbers")
    a = np.asarray(value, dtype=np.float64)
    if not np.isfinite(a).all():
        raise Rejected(400, f"\"{what}\" holds NaN or an infinite value")
    return a


__all__ = ["create_app"]
