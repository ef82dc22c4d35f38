"""Conditional VAE (Sohn, Lee & Yan, NeurIPS 2015; the p(x|y,z) of Kingma et al.'s M2, NeurIPS 2014).

q(z|x, y) = N(mu(x, y), diag exp(logvar(x, y))),  p(z) = N(0, I),  p(x|z, y) the decoder likelihood;
the objective is the VAE's (models/vae.py) with y appended to the inputs of both networks (nets.py).
y is an integer class label (one-hot over ``num_classes``, which comes from the dataset) or a float
condition vector of size ``cond_dim``. ``sample(n, y)`` draws from p(x|z, y) with z ~ p(z).
Diagnostics: the VAE's, and the conditional-generation accuracy (shared, written in aekit.metrics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..config import opt
from ..errors import ConfigError
from .base import Capabilities, class_labels
from .vae import VAE, VAEConfig

__all__ = ["CVAEConfig", "CVAE"]


@dataclass(frozen=True)
class CVAEConfig(VAEConfig):
    cond_dim: int = opt(0, "size of float condition vectors y (0: y are class labels, one-hot over num_classes)")

    def validate(self) -> None:
        super().validate()
        self._check_range("cond_dim", 0)
        if not self.cond_dim and not self.num_classes:
            raise ConfigError(
                "CVAEConfig: a conditional VAE needs a condition: num_classes > 0 for class labels (set from a "
                "labelled dataset) or cond_dim > 0 for float condition vectors"
            )
        if self.cond_dim and self.num_classes and self.cond_dim != self.num_classes:
            raise ConfigError(
                f"CVAEConfig: cond_dim={self.cond_dim} and num_classes={self.num_classes} disagree: class labels "
                "are one-hot over num_classes, condition vectors have cond_dim entries; set only one of them"
            )


class CVAE(VAE):
    Config = CVAEConfig
    name = "cvae"
    capabilities = Capabilities(generative=True, probabilistic=True, conditional=True, needs_labels=True,
                                diagnostics=("active_units", "prior_mmd", "conditional_accuracy"))

    def cond_size(self) -> int:
        return self.config.cond_dim or self.config.num_classes

    def condition(self, y: Tensor | None) -> Tensor:
        """Integer labels (B,) -> one-hot (B, num_classes); float vectors (B, cond_dim) pass through."""
        if y is None:
            raise ConfigError(
                f"model {self.name} is conditional: encode, decode, forward and sample need y "
                "(class labels or condition vectors); train it on a labelled dataset"
            )
        size = self.cond_size()
        if y.is_floating_point():
            if y.dim() != 2 or y.shape[1] != size:
                raise ConfigError(
                    f"model {self.name}: condition vectors must have shape (B, {size}), got {tuple(y.shape)}"
                )
            return y
        if not self.config.num_classes:
            raise ConfigError(
                f"model {self.name} was built for float condition vectors of size {size} (cond_dim), "
                f"not class labels (got a {y.dtype} tensor)"
            )
        if y.dim() != 1:
            raise ConfigError(f"model {self.name}: class labels must have shape (B,), got {tuple(y.shape)}")
        return F.one_hot(y.long(), self.config.num_classes).float()

    def _sample_condition(self, n: int, y) -> Tensor:
        if isinstance(y, Tensor) and y.is_floating_point() and y.dim() >= 1 and y.shape[-1] == self.cond_size():
            c = y.to(self.device)
            return self.condition(c.expand(n, -1) if c.dim() == 1 else c)
        if y is not None and not self.config.num_classes:
            raise ConfigError(
                f"model {self.name} takes float condition vectors of size {self.cond_size()}, not class labels; "
                f"pass y as a float tensor of shape ({n}, {self.cond_size()})"
            )
        return self.condition(class_labels(n, y, self.config.num_classes, self.name, self.device))

