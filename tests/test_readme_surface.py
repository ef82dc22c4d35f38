"""The README's "Custom networks" and "scikit-learn transformer" sections, run as written (small epochs)."""

import re
import sys
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(title: str) -> list[str]:
    section = README.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_custom_networks_section_runs(tmp_path, monkeypatch):
    module, usage = blocks("Custom networks")
    assert module.startswith("# mynets.py\n")
    (tmp_path / "mynets.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    images = np.random.default_rng(0).random((24, 3, 64, 64), dtype=np.float32)
    ns = {"images": images}
    code = "import aekit\n" + usage.replace("epochs=20", "epochs=1")
    exec(compile(code, "README.md (Custom networks)", "exec"), ns)
    assert type(ns["model"].custom_networks()["encoder"]).__name__ == "Encoder"
    assert ns["det"].decision_function(images[:3]).shape == (3,)
    sys.modules.pop("mynets", None)


def test_transformer_section_runs():
    from sklearn.datasets import load_digits

    (code,) = blocks("scikit-learn transformer")
    X, y = load_digits(return_X_y=True)
    ns = {"X": X[:300], "y": y[:300]}
    exec(compile("import aekit\n" + code.replace("epochs=30", "epochs=2"), "README.md (transformer)", "exec"), ns)
    assert ns["Z"].shape[0] == 300 and ns["Z"].shape[1] in (4, 16)
