"""The README's Quickstart stays true: exactly two commands, and CI runs the second one verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quickstart_has_two_commands_and_ci_runs_the_test_command():
    cmds = quickstart_commands()
    assert len(cmds) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert cmds[1] in ci
    assert "torch==2.13.0" in cmds[0] and "torch==2.13.0" in cmds[1]  # never the multi-GB CUDA build
