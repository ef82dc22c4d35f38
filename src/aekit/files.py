"""File primitives: atomic writes, JSON, safetensors with JSON metadata, optimizer states as tensors.

Nothing here is ever unpickled. The layout of a run directory is run.py's (``Run``), which writes through
these functions; figures, reports and exported codes use the atomic writes too. (Named ``files`` so as not
to shadow the standard library's ``io``.)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import RunError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_text(path) -> str:
    """A UTF-8 text file, or a RunError that names it (missing, unreadable, not text)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise RunError(f"{path}: not UTF-8 text; the run directory may be damaged") from None
    except OSError as e:
        raise RunError(f"{path}: cannot read the file ({e.strerror or e})") from None


def read_json(path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: not valid JSON ({e}); the run directory may be damaged") from None


def save_tensors(path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Atomic safetensors write; ``meta`` (any JSON) goes in the header metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    md = {"json": json.dumps(meta)} if meta is not None else None
    atomic_write_bytes(path, st_save(tensors, metadata=md))


def load_tensors(path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read a safetensors file written by save_tensors: (tensors on CPU, metadata JSON or None)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path}: file not found") from None
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: not a readable safetensors file ({e}); the run may have been damaged") from None
    md = header.get("__metadata__") or {}
    return tensors, (json.loads(md["json"]) if "json" in md else None)


def optimizer_to_tensors(prefix: str, state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON (param groups, scalars)."""
    tensors, scalars = {}, {}
    for idx, st in state["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"{prefix}/{idx}/{key}"] = val
            else:
                scalars[f"{idx}/{key}"] = val
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(prefix: str, tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, val in tensors.items():
        if name.startswith(prefix + "/"):
            idx, key = name[len(prefix) + 1 :].split("/", 1)
            state.setdefault(int(idx), {})[key] = val
    for name, val in meta["scalars"].items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = val
    return {"state": state, "param_groups": meta["param_groups"]}
