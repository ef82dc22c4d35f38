"""``aekit serve RUN``: a run's detector over HTTP (the optional extra ``pip install 'aekit[serve]'``).

    aekit serve runs/ae-table --port 8080
    curl -s localhost:8080/v2/models/ae-table                       # inputs, outputs, datatypes, shapes
    curl -s localhost:8080/v2/models/ae-table/infer -d '{"inputs": [{"name": "input", "shape": [1, 4],
         "datatype": "FP32", "data": [0.1, 2.0, -3.5, 1.2]}]}'       # codes, reconstructions, scores, ...
    curl -s localhost:8080/score --data-binary @new.csv -H 'Content-Type: text/csv'   # = aekit score RUN new.csv
    open http://localhost:8080/                                     # the page: scores, threshold, latent space

The Open Inference Protocol v2 endpoints (``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}``,
``/v2/models/{name}/infer``; see ``protocol``) are those KServe, Seldon's MLServer and Triton speak; the
model's name is the run folder's name unless ``--name`` says otherwise. FastAPI, uvicorn and orjson are
imported only here, when the command runs (``require``).
"""

from __future__ import annotations

from ..errors import ConfigError

EXTRA = "pip install 'aekit[serve]'"
MAX_BODY_BYTES = 32 * 2**20  # the default limit of a request body (aekit serve --max-body-bytes)


def require() -> None:
    """A one-line ConfigError naming the extra when FastAPI or uvicorn is missing."""
    for module in ("fastapi", "uvicorn", "orjson"):
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(f"aekit serve needs FastAPI, uvicorn and orjson ({module} is not installed): {EXTRA}") \
                from None


def create_app(run, *, name: str | None = None, max_body_bytes: int | None = None):
    """The FastAPI application serving the detector of run directory ``run`` (for tests and ASGI servers:
    ``uvicorn.run(create_app("runs/x"))``)."""
    require()
    from .app import create_app as _create
    from .model import ServedModel

    return _create(ServedModel(run, name=name), MAX_BODY_BYTES if max_body_bytes is None else max_body_bytes)


def cmd_serve(args) -> int:
    """The `aekit serve` command: load the run (errors are one line before anything listens), then serve until
    interrupted."""
    require()
    import uvicorn

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: choose a port from 1 to 65535")
    if args.max_body_bytes < 1:
        raise ConfigError(f"--max-body-bytes {args.max_body_bytes}: must be at least 1")
    _check_free(args.host, args.port)
    app = create_app(args.run, name=args.name, max_body_bytes=args.max_body_bytes)
    print(f"serving {args.run} as model {app.state.model.name!r} on http://{args.host}:{args.port}/ "
          "(Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def _check_free(host: str, port: int) -> None:
    """A one-line ConfigError when the address cannot be listened on (uvicorn would log and exit)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(infos[0][4])
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") \
            from None


__all__ = ["create_app", "cmd_serve", "require", "EXTRA", "MAX_BODY_BYTES"]
