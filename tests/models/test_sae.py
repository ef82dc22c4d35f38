import math

import pytest
import torch

from aekit import registry, trainer
from aekit.config import TrainConfig
from aekit.errors import ConfigError
from aekit.regularizers import kl_sparsity, l1_activity


def test_kl_sparsity_matches_hand_computation():
    h = torch.tensor([[0.1, 0.5], [0.3, 0.1]])
    rho = 0.05
    total = 0.0
    for rho_hat in (0.2, 0.3):  # column means
        total += rho * math.log(rho / rho_hat) + (1 - rho) * math.log((1 - rho) / (1 - rho_hat))
    assert kl_sparsity(h, rho).item() == pytest.approx(total, rel=1e-6)
    assert kl_sparsity(torch.full((4, 3), rho), rho).item() == pytest.approx(0.0, abs=1e-7)


def test_l1_activity():
    h = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    assert l1_activity(h).tolist() == [3.0, 3.0]


def test_kl_needs_sigmoid_code():
    with pytest.raises(ConfigError, match="sigmoid"):
        registry.build("sae", sparsity="kl", code_activation="relu")
    assert registry.build("sae", sparsity="kl").config.code_activation == "sigmoid"


def near_zero(m, x):
    with torch.no_grad():
        return (m.encode(x).abs() < 1e-2).float().mean().item()


@pytest.mark.parametrize("sparsity,weight", [("l1", 0.05), ("kl", 3.0)])
def test_penalty_makes_the_decoder_input_sparse(digits, sparsity, weight):
    kw = dict(latent_dim=32, hidden=[64])
    cfg = TrainConfig(epochs=15, seed=0)
    dense = registry.build_for("sae", digits, sparsity=sparsity, sparsity_weight=0.0, **kw)
    sparse = registry.build_for("sae", digits, sparsity=sparsity, sparsity_weight=weight, **kw)
    trainer.fit(dense, digits, cfg, quiet=True)
    trainer.fit(sparse, digits, cfg, quiet=True)
    x = digits.x_test
    if sparsity == "l1":
        assert near_zero(sparse, x) > near_zero(dense, x) + 0.2
    else:  # mean activation pulled toward rho
        with torch.no_grad():
            assert sparse.encode(x).mean().item() < 0.5 * dense.encode(x).mean().item()
