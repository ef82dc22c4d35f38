"""The output policy of every command that writes a file or folder the user names (``--out``), in one place.

``check_output(path, inputs=..., overwrite=...)`` is called by each writing command before any work:

- a path below a file, or a file output that is a folder: refused;
- the command's own inputs (the data file or folder it reads, the run it opens, the data the run was trained
  on), or a path inside an input folder: refused, whatever ``--overwrite`` says;
- anything inside an aekit run folder (or a run folder itself as an output folder): refused, whatever
  ``--overwrite`` says; a run's files are written only through ``Run`` (``aekit report`` and ``aekit plot``
  write the run's own report.html and figures/ there by default, through ``Run.write_report`` /
  ``Run.write_figure``);
- an existing file: refused unless ``overwrite`` (the command's ``--overwrite``), and then replaced atomically.

``train``, ``pack``, ``Detector.save`` and ``aekit.save`` never overwrite (they create a new run folder or file);
``files.publish_bytes`` performs the final write (an exclusive create unless ``overwrite``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import ConfigError
from .run import Run

__all__ = ["same_path", "check_output"]


def _absolute(path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def same_path(a, b) -> bool:
    """Whether the paths ``a`` and ``b`` name one file or folder (after ~, links and hard links)."""
    return _same(_absolute(a), _absolute(b))


def _same(a: Path, b: Path) -> bool:
    if a == b or os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(p: Path, folder: Path) -> bool:
    for q in (p, Path(os.path.realpath(p))):
        for f in (folder, Path(os.path.realpath(folder))):
            if q != f and f in q.parents:
                return True
    return False


def check_output(path, *, inputs: Iterable = (), overwrite: bool | None = False, flag: str = "--out",
                 folder: bool = False) -> Path:
    """The absolute path ``path`` when the output policy (module docstring) allows writing it, else a ConfigError
    saying why and what to do. ``overwrite``: the command's --overwrite (None: a command that has none, such as
    pack). ``folder``: the output is a folder that files are written into (it may exist)."""
    p = _absolute(path)
    where = f"{flag} {path}"
    anc = p.parent
    while not os.path.lexists(anc) and anc != anc.parent:
        anc = anc.parent
    if os.path.lexists(anc) and not anc.is_dir():
        raise ConfigError(f"{where}: {anc} is a file, so nothing can be created below it; choose another path "
                          "(nothing was written)")
    run = Run.enclosing(p, itself=folder)
    if run is not None:
        what = "is" if _same(p, run) else "lies inside"
        raise ConfigError(f"{where}: {what} the aekit run {run}, whose files only aekit writes (nothing is "
                          "written there, whatever --overwrite says); choose a path outside the run")
    for i in inputs:
        if i is None:
            continue
        i = _absolute(i)
        if not os.path.lexists(i):
            continue
        if _same(p, i) or (i.is_dir() and _inside(p, i)):
            raise ConfigError(f"{where}: is {'inside ' if not _same(p, i) else ''}this command's own input {i}, "
                              "which is never written over, whatever --overwrite says; choose another path")
    if not folder and p.is_dir():
        raise ConfigError(f"{where}: is a folder; name a file to write")
    if not folder and os.path.lexists(p) and not overwrite:
        how = "pass --overwrite to replace it, or choose" if overwrite is not None else \
            "this command never overwrites a file: remove it or choose"
        raise ConfigError(f"{where}: exists; {how} another path (nothing was written)")
    return p
