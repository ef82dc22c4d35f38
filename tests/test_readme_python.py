"""The README's Python section, run as written (numpy arrays where it names arrays)."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    section = README.read_text().split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_python_section_runs_as_written(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    first = blocks[0].replace("aekit.TrainConfig(epochs=20)", "aekit.TrainConfig(epochs=2)")  # the same code, faster
    ns: dict = {}
    exec(compile(first, "README.md (Python, first block)", "exec"), ns)
    assert isinstance(ns["codes"], np.ndarray) and ns["codes"].shape == (len(ns["ds"].x_test), 16)
    assert (tmp_path / "runs" / "cae" / "config.json").exists() and (tmp_path / "runs" / "mine").exists()

    rng = np.random.default_rng(0)
    z = rng.normal(size=(600, 3))
    normal = np.c_[z, z @ rng.normal(size=(3, 5))]  # numpy tables, as a user holds them
    ns = {"X_train": normal[:400], "X_normal_held_out": normal[400:], "X_new": np.r_[normal[:20], normal[:5] * 8]}
    exec(compile("import aekit\n" + blocks[1], "README.md (Python, Detector block)", "exec"), ns)
    det = ns["det"]
    scores = det.decision_function(ns["X_new"])
    assert scores[20:].min() > np.median(scores[:20]) and det.predict_pvalue(ns["X_new"]).shape == (25,)
