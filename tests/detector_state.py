"""Helper of the tests of saved detector states: rewrite a run's detector.safetensors as a damaged or hand-edited
(or older) file would be."""

import json

from safetensors import safe_open
from safetensors.torch import load_file, save_file


def rewrite_state(path, change=None, tensors=None, remove=()):
    """Rewrite the detector state file of the run ``path``: its JSON's detector entries updated with ``change``
    and the names in ``remove`` deleted (as a state of an older format lacks them), its tensors replaced by
    ``tensors`` (None: kept)."""
    file = path / "detector.safetensors"
    with safe_open(file, "pt") as f:
        meta = json.loads(f.metadata()["json"])
    meta["detector"].update(change or {})
    for name in remove:
        del meta["detector"][name]
    save_file(load_file(file) if tensors is None else tensors, file, metadata={"json": json.dumps(meta)})
