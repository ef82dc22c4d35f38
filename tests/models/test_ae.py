import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from aekit import registry, trainer
from aekit.config import TrainConfig
from aekit.errors import ConfigError


def test_linear_autoencoder_learns_the_principal_subspace(digits):
    """A linear AE with squared error reaches PCA's reconstruction error (the optimum) and its subspace."""
    k = 5
    m = registry.build_for("ae", digits, latent_dim=k, hidden=[], activation="linear",
                           likelihood="gaussian", arch="mlp")
    trainer.fit(m, digits, TrainConfig(epochs=300, lr=2e-2, batch_size=128, seed=0, lr_schedule="cosine"), quiet=True)
    xtr = digits.x_train.flatten(1).numpy().astype(np.float64)
    pca = PCA(k).fit(xtr)  # the optimum of squared error on the training data
    pca_mse = np.mean((pca.inverse_transform(pca.transform(xtr)) - xtr) ** 2)
    with torch.no_grad():
        ae_mse = torch.mean((m.reconstruct(digits.x_train).flatten(1).double() - torch.from_numpy(xtr)) ** 2).item()
    assert pca_mse * (1 - 1e-6) <= ae_mse <= pca_mse * 1.005, (ae_mse, pca_mse)
    # principal angles between the decoder's column space and the top-k principal directions
    w = m.decoder.mlp.layers[0].weight.detach().double().numpy()  # (D, k)
    q, _ = np.linalg.qr(w)
    cos = np.linalg.svd(q.T @ pca.components_.T, compute_uv=False)
    assert cos.min() > 0.97, cos


def test_tied_weights_share_the_encoder_matrix(digits):
    m = registry.build_for("ae", digits, tied=True, hidden=[32], latent_dim=4)
    n_untied = sum(p.numel() for p in registry.build_for("ae", digits, hidden=[32], latent_dim=4).parameters())
    n_tied = sum(p.numel() for p in m.parameters())
    assert n_untied - n_tied == 64 * 32 + 32 * 4  # the decoder's two weight matrices
    x = digits.x_train[:8]
    h = m.encode(x)
    w1, w2 = (layer.weight for layer in m.encoder.mlp.layers)
    b = m.decoder.biases
    expected = (torch.relu(h @ w2 + b[0]) @ w1 + b[1]).view_as(x)
    torch.testing.assert_close(m.decoder(h), expected)


def test_tied_needs_mlp():
    with pytest.raises(ConfigError, match="tied"):
        registry.build("ae", input_shape=(1, 8, 8), arch="conv", tied=True)


def test_gaussian_recon_is_half_sse_plus_constant(digits):
    m = registry.build_for("ae", digits, likelihood="gaussian", latent_dim=3)
    x = digits.x_train[:10]
    m.eval()
    out = m(x)
    sse = ((m.reconstruct(x) - x) ** 2).flatten(1).sum(1)
    expected = (0.5 * sse + 0.5 * 64 * np.log(2 * np.pi)).mean()
    torch.testing.assert_close(out.loss, expected)


def test_bernoulli_recon_is_cross_entropy(digits):
    m = registry.build_for("ae", digits, latent_dim=3)
    x = digits.x_train[:10]
    m.eval()
    p = m.reconstruct(x).double()
    ce = -(x * torch.log(p) + (1 - x) * torch.log1p(-p)).flatten(1).sum(1).mean()
    torch.testing.assert_close(m(x).loss.double(), ce, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("size", [(1, 8, 8), (1, 28, 28), (3, 13, 17), (1, 5, 5)])
def test_conv_nets_work_for_any_image_size(size):
    m = registry.build("ae", input_shape=list(size), arch="conv", hidden=[4, 8, 8], latent_dim=3)
    x = torch.rand(2, *size)
    assert m.reconstruct(x).shape == x.shape
