import sys
from pathlib import Path

import pytest
import torch

# one thread: the test models are tiny, and OpenMP threads that wait on a busy machine cost 10-40x
torch.set_num_threads(1)
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def digits():
    import aekit

    return aekit.datasets.load("digits")


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit status, stdout, stderr)."""
    from aekit.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state, so results do not depend on test order."""
    torch.manual_seed(0)
