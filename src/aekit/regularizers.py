"""Regularizers and divergences, each written once with its formula.

Shapes: ``B`` batch, ``K`` latent units. Functions return per-example values (B,) unless noted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .nets import Encoder

__all__ = ["kl_normal_standard", "l1_activity", "kl_sparsity", "gram", "encoder_jacobian_sq_norm",
           "encoder_jacobian_sq_norm_estimate", "adversarial_discriminator_loss", "adversarial_generator_loss",
           "r1_penalty"]


def kl_normal_standard(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL( N(mu, diag exp(logvar)) || N(0, I) ) = 1/2 sum_k (mu_k^2 + sigma_k^2 - 1 - log sigma_k^2).

    Kingma & Welling 2014, appendix B. mu, logvar: (B, K) -> (B,).
    """
    return 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar).sum(-1)


def l1_activity(h: Tensor) -> Tensor:
    """L1 activity penalty sum_k |h_k| of the code the decoder reads. h: (B, K) -> (B,)."""
    return h.abs().sum(-1)


def kl_sparsity(h: Tensor, rho: float, eps: float = 1e-6) -> Tensor:
    """KL sparsity (Ng, "Sparse autoencoder" notes, 2011): sum_k KL(Bernoulli(rho) || Bernoulli(rho_hat_k)).

    rho_hat_k = mean over the batch of h_k, the average activation of unit k (h in (0,1), a sigmoid code).
    KL(rho || rho_hat) = rho log(rho / rho_hat) + (1 - rho) log((1 - rho) / (1 - rho_hat)).
    h: (B, K) -> scalar (a property of the batch, not of one example).
    """
    rho_hat = h.mean(0).clamp(eps, 1 - eps)
    return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()


class _Gram(torch.autograd.Function):
    """G = W W^T with the one-matmul backward dL/dW = (dL/dG + dL/dG^T) W (autograd's mm backward takes two).

    Exactly the same gradient; at 784-512-16, batch 128, a CAE step costs 2.1x an AE step instead of 2.4x
    (benchmarks/hotpath.py cae).
    """

    @staticmethod
    def forward(ctx, w: Tensor) -> Tensor:
        ctx.save_for_backward(w)
        return w @ w.t()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (w,) = ctx.saved_tensors
        return (grad + grad.t()) @ w


def gram(w: Tensor) -> Tensor:
    """W W^T, differentiable (see _Gram)."""
    return _Gram.apply(w)


def encoder_jacobian_sq_norm(encoder: Encoder, x: Tensor) -> tuple[Tensor, Tensor]:
    """Code h = f(x) and the squared Frobenius norm ||J_f(x)||_F^2 = sum_{k,d} (dh_k/dx_d)^2, per example.

    Contractive autoencoders (Rifai et al., ICML 2011). Exact for any encoder depth, differentiable,
    and never one backward pass per latent unit:

    * MLP encoder, J = diag(d_L) W_L ... diag(d_1) W_1 with d_l the activation derivatives:
      - one layer: ||J||^2 = sum_k d_k^2 sum_i W_ki^2 (Rifai's closed form for a sigmoid encoder);
      - two layers with a linear code: ||J||^2 = d_1^T [(W_1 W_1^T) o (W_2^T W_2)] d_1, one matrix shared
        by the batch (o is the elementwise product);
      - otherwise: A = diag(d_L) W_L ... diag(d_1), a (B, K, h_1) product taken from the small code side,
        and ||J||^2 = sum (A G) o A with G = W_1 W_1^T (or ||A W_1||^2 when the input is narrower).
    * conv encoder: the per-example Jacobian by torch.func (vmap of jacrev, batched vector-Jacobian
      products), then its squared norm.

    x: (B, *input_shape) -> (h (B, K), sq_norm (B,)).
    """
    if encoder.body is not None or encoder.cond_dim:
        return _jacobian_sq_norm_func(encoder, x)
    mlp = encoder.mlp
    h, derivs = mlp.forward_with_derivatives(x.flatten(1))
    weights = [layer.weight for layer in mlp.layers]
    if len(weights) == 1:
        return h, (derivs[0] ** 2) @ (weights[0] ** 2).sum(1)
    if len(weights) == 2 and mlp.acts[-1] == "linear":
        w1, w2 = weights
        m = gram(w1) * (w2.t() @ w2)  # (h1, h1)
        return h, ((derivs[0] @ m) * derivs[0]).sum(1)
    a = derivs[-1].unsqueeze(-1) * weights[-1]  # (B, K, h_{L-1})
    for w, d in zip(reversed(weights[1:-1]), reversed(derivs[1:-1])):
        a = (a * d.unsqueeze(1)) @ w
    a = a * derivs[0].unsqueeze(1)  # (B, K, h_1)
    w1 = weights[0]
    if w1.shape[0] <= w1.shape[1]:
        return h, ((a @ gram(w1)) * a).sum((1, 2))
    return h, (a @ w1).pow(2).sum((1, 2))


def encoder_jacobian_sq_norm_estimate(encoder: Encoder, x: Tensor, projections: int = 4,
                                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Code h = f(x) and an unbiased random-projection estimate of ||J_f(x)||_F^2, per example.

    For r ~ N(0, I), E ||J r||^2 = tr(J^T J E[r r^T]) = ||J||_F^2 (Hutchinson's trace estimator; used for
    Jacobian regularization by Hoffman, Roberts & Yaida, 2019), averaged over ``projections`` draws. The
    variance of one draw is 2 ||J^T J||_F^2 <= 2 ||J||_F^4.

    * MLP encoders: input-side projections r ~ N(0, I_D) shared by the whole batch (each example's estimate
      is still unbiased), J r = diag(d_L) W_L ... diag(d_1) (W_1 r): W_1 r is computed once per batch, so
      the penalty costs a few small matmuls instead of the exact form's h_1 x h_1 x D Gram matrix.
    * other encoders (conv): code-side projections u ~ N(0, I_K) per example, u^T J by
      torch.autograd.grad with create_graph (one double backward over ``projections`` copies of x).

    The exact norm (encoder_jacobian_sq_norm) is the default of CAEConfig.jacobian.
    x: (B, *input_shape) -> (h (B, K), estimate (B,)).
    """
    if isinstance(projections, bool) or not isinstance(projections, int) or projections < 1:
        raise ValueError(f"projections must be an integer >= 1, got {projections!r}")
    if encoder.body is not None or encoder.cond_dim:
        return _jacobian_sq_norm_projection_autograd(encoder, x, projections, generator)
    mlp = encoder.mlp
    xf = x.flatten(1)
    first = mlp.layers[0]
    r = torch.randn((projections, xf.shape[1]), generator=generator, device=xf.device, dtype=xf.dtype)
    # W_1 r rides along with the batch through the first layer: one matmul, and one weight gradient
    # instead of two (the bias added to the r rows is taken off again, so it gets no gradient from them).
    pre = first(torch.cat([xf, r]))
    h, derivs = mlp.forward_with_derivatives(xf, first_pre=pre[: xf.shape[0]])
    w1r = pre[xf.shape[0]:] - first.bias if first.bias is not None else pre[xf.shape[0]:]
    v = w1r.unsqueeze(1) * derivs[0]  # (M, B, h_1): diag(d_1) W_1 r for every draw and example
    for layer, d in zip(mlp.layers[1:], derivs[1:]):
        v = (v @ layer.weight.t()) * d
    return h, v.pow(2).sum(-1).mean(0)


def _jacobian_sq_norm_projection_autograd(encoder, x, projections, generator):
    b = x.shape[0]
    xg = x.detach().repeat(projections, *([1] * (x.dim() - 1))).requires_grad_(True)  # draw m: rows m*B + b
    with torch.enable_grad():
        h_all = encoder(xg)
        u = torch.randn(h_all.shape, generator=generator, device=h_all.device, dtype=h_all.dtype)
        (g,) = torch.autograd.grad(h_all, xg, grad_outputs=u, create_graph=True)
    return h_all[:b], g.pow(2).flatten(1).sum(1).view(projections, b).mean(0)


def _jacobian_sq_norm_func(encoder: Encoder, x: Tensor) -> tuple[Tensor, Tensor]:
    from torch.func import jacrev, vmap

    def f(xi):
        out = encoder(xi.unsqueeze(0))[0]
        return out, out

    jac, h = vmap(jacrev(f, has_aux=True))(x)  # jac: (B, K, *input_shape)
    return h, jac.pow(2).flatten(1).sum(1)


def adversarial_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """GAN discriminator loss from logits (Goodfellow et al., NeurIPS 2014), as in adversarial autoencoders
    (Makhzani et al., ICLR workshop 2016): with D = sigmoid(logit),

        L_D = -E_real log D(z) - E_fake log(1 - D(z)) = BCE(real, 1) + BCE(fake, 0).

    real_logits (B,), fake_logits (B',) -> scalar (each expectation a batch mean; a property of the batch).
    """
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def adversarial_generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss -E_fake log D(z) = BCE(fake, 1) (Goodfellow et al. 2014, section 3).

    fake_logits (B,) -> scalar (batch mean).
    """
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def r1_penalty(grad_real: Tensor) -> Tensor:
    """R1 gradient penalty (Mescheder, Geiger & Nowozin, ICML 2018, eq. 9) without its weight gamma:

        R1 = 1/2 E_{z~p(z)} ||grad_z D(z)||^2,    D the discriminator's logit,

    grad_real (B, K): the gradient at B prior samples -> scalar (batch mean). It vanishes where D is flat on
    the prior's samples, and keeps the alternating game from circling around its equilibrium.
    """
    return 0.5 * grad_real.pow(2).sum(1).mean()
