"""File primitives: atomic writes, JSON, safetensors with JSON metadata, optimizer states as tensors.

Nothing here is ever unpickled. The layout of a run directory is run.py's (``Run``), which writes through
these functions; figures, reports and exported codes use the atomic writes too. (Named ``files`` so as not
to shadow the standard library's ``io``.)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import RunError

__all__ = ["TMP_SUFFIX", "MAX_TEXT_BYTES", "MAX_HEADER_BYTES", "atomic_write_bytes", "new_file", "atomic_write_text",
           "write_json", "read_bytes", "read_text", "read_json", "save_tensors", "load_tensors",
           "optimizer_to_tensors", "optimizer_from_tensors", "AppendFile",
           "streamed_file", "read_tensors_meta", "fsync_dir", "publish_bytes", "lock_file"]

TMP_SUFFIX = ".tmp"  # atomic writes go through ".<name>.<random>.tmp" in the target's folder
MAX_TEXT_BYTES = 256 * 2**20  # config.json, metrics.jsonl, summary.json: far above any real run's
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header


def _write_error(path: Path, e: OSError) -> RunError:
    why = e.strerror or str(e)
    return RunError(f"{path}: cannot write ({why}); check that the folder can be created and written to and that "
                    "the disk has space (nothing else was changed)")


_umask_lock = threading.Lock()


def _file_mode() -> int:
    """0o666 less the process's umask now: the mode ``open()`` would give a new file (mkstemp gives 0o600).

    Linux shows the umask in /proc/self/status; elsewhere it is read by setting and restoring it (under a
    lock, so aekit's own threads never see the temporary value)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_dir(folder) -> None:
    """Make the renames and links done in ``folder`` durable (where the platform allows opening a folder)."""
    _fsync_dir(Path(folder))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, rename over ``path``, fsync the folder.

    The file gets the mode a plain ``open()`` would give it (the umask applies). A failure (a read-only
    folder, a full disk, a path below a file) is a RunError naming the path; the old file stays as it was.
    """
    with _staged(Path(path), os.replace) as f:
        f.write(data)


@contextlib.contextmanager
def new_file(path: str | os.PathLike):
    """A binary file to write that appears at ``path`` only once complete, and never over an existing file.

    Written through a temporary file in the same folder (fsync'ed, given the mode ``open()`` would give), then
    hard-linked to ``path``, which fails if something is there: even a file that appeared meanwhile is never
    replaced (where a filesystem has no hard links, a rename after a last check). On any failure the temporary
    file is removed and ``path`` is untouched; write failures are a RunError naming the path.
    """
    with _staged(Path(path), _link_new) as f:
        yield f


def _link_new(tmp: str, path: Path) -> None:
    """Put the finished file ``tmp`` at ``path`` unless something is there (FileExistsError)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network and FAT filesystems)
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        os.rename(tmp, path)
        return
    os.unlink(tmp)


def _make_durable(f) -> None:
    """A file just written, still open: flushed, given the mode ``open()`` would give, fsync'ed."""
    f.flush()
    os.fchmod(f.fileno(), _file_mode())
    os.fsync(f.fileno())


@contextlib.contextmanager
def _staged(path: Path, place):
    """A temporary file beside ``path`` to write; once the block is done it is flushed, given the mode
    ``open()`` would give, fsync'ed and handed to ``place(tmp, path)``, then the folder is fsync'ed. On any
    failure the temporary file is removed and ``path`` is as it was: a RunError naming the path for an OS
    error (a file that appeared at ``path`` for ``new_file``)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            _make_durable(f)
        place(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, FileExistsError):
            raise RunError(f"{path}: a file appeared there while it was written; it was left as it is and nothing "
                           "was written: remove it or choose another path") from None
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise
    _fsync_dir(path.parent)


class AppendFile:
    """A file that grows by whole records: each ``write`` is one ``write()`` call at the end of the file
    (O_APPEND), so a process killed between records leaves whole ones; ``sync`` makes them durable (fsync).
    Opened on the first write (created with the mode ``open()`` would give); errors are a RunError naming it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def write(self, data: bytes) -> None:
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                                   0o666)
            if os.write(self._fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            raise _write_error(self.path, e) from None

    def sync(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as e:
                raise _write_error(self.path, e) from None

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def streamed_file(path: str | os.PathLike):
    """A binary file written in pieces (output made as it is written) that replaces ``path`` only once complete.

    Where the platform has unnamed files (Linux O_TMPFILE), the file has no name until it is complete, so a
    process killed while writing (kill -9 included) leaves nothing behind; it is then named beside ``path`` and
    renamed over it. Elsewhere: the temporary file of ``atomic_write_bytes``. Failures are as there.
    """
    path = Path(path)
    flag = getattr(os, "O_TMPFILE", None)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent, flag | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o600) if flag else None
    except OSError as e:
        if not (path.parent.is_dir() and os.access(path.parent, os.W_OK)):
            raise _write_error(path, e) from None
        fd = None  # a filesystem without unnamed files
    if fd is None:
        with _staged(path, os.replace) as f:
            yield f
        return
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            _make_durable(f)
            _name_unnamed(f.fileno(), path)
    except OSError as e:
        raise _write_error(path, e) from None
    _fsync_dir(path.parent)


def _name_unnamed(fd: int, path: Path) -> None:
    """Give the unnamed file ``fd`` the name ``path`` (replacing what is there): linked to a temporary name
    beside it, then renamed over it."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}"
    fds = os.open("/proc/self/fd", os.O_RDONLY)
    try:
        os.link(str(fd), tmp, src_dir_fd=fds, follow_symlinks=True)  # linkat(AT_SYMLINK_FOLLOW)
    finally:
        os.close(fds)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


READ_CHUNK = 16 * 2**20  # bytes read at once: memory follows the file's real size, never the bound


def _open_regular(path: Path, what: str) -> tuple[int, os.stat_result]:
    """(descriptor, its fstat) of a regular file, opened without blocking and checked on the open descriptor, so
    a FIFO (which would block, even one swapped in after a check of the path), a device such as /dev/zero, a
    folder or a socket is refused with a RunError naming it instead of read. The caller closes the descriptor."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise RunError(f"{path}: file not found") from None
    except OSError as e:
        raise RunError(f"{path}: cannot read the file ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
    except OSError as e:
        os.close(fd)
        raise RunError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket"
                if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise RunError(f"{path}: is {kind}, not a regular {what}; the run directory is damaged or was tampered with")
    return fd, st


def read_bytes(path, max_bytes: int, *, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, else a RunError that names it.

    Opened without blocking and checked on the open descriptor (fstat), so a FIFO (which would block, even one
    swapped in after a check of the path), a device such as /dev/zero (endless), a folder or an oversized file
    is refused instead of read. Read in chunks: memory follows the file's size, whatever ``max_bytes`` says.
    """
    path = Path(path)
    fd, st = _open_regular(path, what)
    try:
        if st.st_size > max_bytes:
            raise RunError(f"{path}: {st.st_size} bytes, more than a {what} can hold ({max_bytes} bytes at most); "
                           "the run directory is damaged or was tampered with")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(READ_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # grew while being read
                raise RunError(f"{path}: more than {max_bytes} bytes; the run directory is damaged or was tampered "
                               "with")
    except OSError as e:
        raise RunError(f"{path}: cannot read the file ({e.strerror or e})") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_text(path, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """A UTF-8 text file, or a RunError that names it (missing, not a regular file, too large, not text)."""
    data = read_bytes(path, max_bytes, what="text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RunError(f"{path}: not UTF-8 text; the run directory may be damaged") from None


def read_json(path) -> Any:
    try:
        return json.loads(read_text(path))
    except (json.JSONDecodeError, RecursionError) as e:
        raise RunError(f"{path}: not valid JSON ({e}); the run directory may be damaged") from None


def save_tensors(path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Atomic safetensors write; ``meta`` (any JSON) goes in the header metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    md = {"json": json.dumps(meta)} if meta is not None else None
    atomic_write_bytes(path, st_save(tensors, metadata=md))


def load_tensors(path, max_bytes: int) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read a safetensors file written by save_tensors: (tensors on CPU, metadata JSON or None).

    At most ``max_bytes`` are read (the caller knows how large the file can be: a model's parameter count
    times the bytes of its dtype, plus the header); the header must describe exactly the bytes that follow.
    """
    path = Path(path)
    data = read_bytes(path, max_bytes + MAX_HEADER_BYTES + 8, what="safetensors file")
    bad = f"{path}: not a readable safetensors file"
    try:
        header_len = int.from_bytes(data[:8], "little")
        if len(data) < 8 or header_len > min(MAX_HEADER_BYTES, len(data) - 8):
            raise ValueError(f"a header of {header_len} bytes in a file of {len(data)}")
        header = json.loads(data[8 : 8 + header_len])
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        if 8 + header_len + max(ends, default=0) != len(data):
            raise ValueError(f"the header describes {max(ends, default=0)} bytes of data but "
                             f"{len(data) - 8 - header_len} follow")
        tensors = st_load(data)
        md = header.get("__metadata__") or {}
        meta = json.loads(md["json"]) if isinstance(md, dict) and "json" in md else None
    except (SafetensorError, ValueError, TypeError, KeyError, IndexError, RecursionError) as e:
        raise RunError(f"{bad} ({e}); the run may have been damaged") from None
    return tensors, meta


def read_tensors_meta(path) -> dict | None:
    """The JSON metadata in the header of a safetensors file (None without any), read without the tensors:
    the file is opened without blocking and must be a regular file (a RunError naming it otherwise)."""
    path = Path(path)
    fd, st = _open_regular(path, "safetensors file")
    try:
        n = int.from_bytes(os.pread(fd, 8, 0), "little")
        if n > min(MAX_HEADER_BYTES, st.st_size - 8):
            raise RunError(f"{path}: not a readable safetensors file (a header of {n} bytes in a file of "
                           f"{st.st_size}); the run may have been damaged")
        raw = os.pread(fd, n, 8)
    except OSError as e:
        raise RunError(f"{path}: cannot read the file ({e.strerror or e})") from None
    finally:
        os.close(fd)
    try:
        header = json.loads(raw)
        md = header.get("__metadata__") or {}
        return json.loads(md["json"]) if isinstance(md, dict) and "json" in md else None
    except (ValueError, TypeError, AttributeError, RecursionError) as e:
        raise RunError(f"{path}: not a readable safetensors file ({e}); the run may have been damaged") from None


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


def publish_bytes(path, data: bytes, *, overwrite: bool) -> None:
    """Write an output the user named (``--out``): atomically over an existing file when ``overwrite``, else only
    as a new file (``new_file``: a file that appeared since the command checked is never replaced). The checks
    of the output policy (``outputs.check_output``) come first; this is only the write."""
    if overwrite:
        atomic_write_bytes(path, data)
    else:
        with new_file(path) as f:
            f.write(data)


def lock_file(path, write_pid: bool = True) -> tuple[int | None, str]:
    """Take an exclusive advisory lock (flock) on ``path`` (created if need be), held until the fd is closed or
    the process ends, even by kill -9: (fd, "") with this process's pid written in the file (``write_pid=False``:
    the file as it was, for a caller that reads what the previous holder left), or (None, who)
    when another process holds it, ``who`` naming it ("process 123" when its pid is readable). A RunError when
    the file cannot be opened. Where there are no advisory locks (Windows), the lock is always granted."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise RunError(f"{path}: cannot open the lock file ({e.strerror or e})") from None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no advisory locks on this platform
        return fd, ""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        return None, f"process {holder}" if holder.isdigit() else "another process"
    if write_pid:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, ""
