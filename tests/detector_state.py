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


def round_trip(det, path, X):
    """``det`` saved at ``path`` and loaded back: the loaded detector, checked to score X[:25] bit for bit as
    ``det`` does."""
    import numpy as np

    from aekit import Detector

    back = Detector.load(det.save(path))
    np.testing.assert_array_equal(back.decision_function(X[:25]), det.decision_function(X[:25]))
    return back


def each_damage_fails(path, cases, match="detector"):
    """For each (change, tensors) of ``cases`` (``rewrite_state``'s arguments), the run ``path``'s state so
    rewritten fails to load with one RunError matching ``match``; the state is put back as it was after each."""
    import pytest

    from aekit import Detector, RunError

    file = path / "detector.safetensors"
    good = file.read_bytes()
    try:
        for change, tensors in cases:
            file.write_bytes(good)
            rewrite_state(path, change, tensors)
            with pytest.raises(RunError, match=match):
                Detector.load(path)
    finally:
        file.write_bytes(good)
