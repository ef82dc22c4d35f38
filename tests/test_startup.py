"""Fast start: ``import aekit`` and ``aekit --version`` load no torch, and the package's public names are its
surface (lazy, PEP 562). Behaviour, not timing (benchmarks/startup.py measures the time)."""

import json
import subprocess
import sys

import aekit

HEAVY = ("torch", "matplotlib", "sklearn", "pandas", "scipy")


def _loaded_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; which heavy modules it loaded, and what it printed before."""
    probe = f"import sys, json\n{code}\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    *before, last = out.stdout.strip().splitlines()
    return {"printed": before, "loaded": json.loads(last)}


def test_version_imports_no_torch():
    r = _loaded_after("import aekit.cli\nassert aekit.cli.main(['--version']) == 0")
    assert r["printed"] == [f"aekit {aekit.__version__}"]
    assert not any(r["loaded"].values()), r["loaded"]


def test_import_aekit_imports_no_torch():
    r = _loaded_after("import aekit\nprint(aekit.__version__)")
    assert not any(r["loaded"].values()), r["loaded"]


def test_help_imports_no_plotting_or_sklearn():
    r = _loaded_after("import aekit.cli\ntry:\n    aekit.cli.main(['--help'])\nexcept SystemExit:\n    pass")
    assert not r["loaded"]["matplotlib"] and not r["loaded"]["sklearn"] and not r["loaded"]["pandas"], r["loaded"]


def test_public_names_are_lazy_and_listed():
    names = dir(aekit)
    assert names == sorted(aekit.__all__)
    assert "Detector" in names and "build" in names and "__version__" in names
    for hidden in ("_build", "annotations", "importlib", "cli", "registry", "trainer"):
        assert hidden not in names
    for name in aekit.__all__:
        assert getattr(aekit, name) is not None
    from aekit.detector import Detector
    from aekit.run import Run

    assert aekit.Detector is Detector and aekit.Run is Run
    try:
        aekit.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_detector_fit_and_score_import_no_plotting():
    """matplotlib comes with explain(png=...) only: a table's fit and scores do not load it."""
    r = _loaded_after("import numpy as np, aekit\n"
                      "x = np.random.default_rng(0).normal(size=(60, 4)).astype('float32')\n"
                      "aekit.Detector(random_state=0).fit(x).decision_function(x)")
    assert r["loaded"]["torch"] and not r["loaded"]["matplotlib"], r["loaded"]
