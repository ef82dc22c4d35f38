"""Networks a user might bring (tests of custom encoders and decoders). Importable as ``custom_nets`` (tests/ is
on sys.path in the tests, and on PYTHONPATH in their subprocesses), so a saved run names them by import path."""

import math

from torch import nn


class ConvEncoder(nn.Module):
    """x (B, C, H, W) -> features (B, width * 2, H / 8, W / 8): three stride-2 convolutions, any width."""

    def __init__(self, input_shape=(3, 64, 64), width: int = 8):
        super().__init__()
        self.width = width
        c = input_shape[0]
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(width, width * 2, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(width * 2, width * 2, 4, 2, 1), nn.ReLU(),
        )

    def forward(self, x):
        return self.net(x)


class ConvDecoder(nn.Module):
    """z (B, latent_dim) -> (B, C, H, W): a linear map to (width * 2, H / 8, W / 8), three transposed convolutions."""

    def __init__(self, latent_dim: int, input_shape=(3, 64, 64), width: int = 8):
        super().__init__()
        self.width = width
        c, h, w = input_shape
        self.start = (width * 2, h // 8, w // 8)
        self.fc = nn.Linear(latent_dim, math.prod(self.start))
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(width * 2, width * 2, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(width * 2, width, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(width, c, 4, 2, 1),
        )

    def forward(self, z):
        return self.net(self.fc(z).view(-1, *self.start))


class Configured(nn.Module):
    """An MLP encoder whose arguments come back through get_config() (it keeps them under other names)."""

    def __init__(self, input_shape, sizes=(32,)):
        super().__init__()
        self._sizes = list(sizes)
        dims = [math.prod(input_shape), *self._sizes]
        layers = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def get_config(self):
        return {"sizes": self._sizes}

    def forward(self, x):
        return self.net(x)


class Hidden(nn.Module):
    """Its argument cannot be recovered: no attribute of that name, no get_config()."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.lin = nn.Linear(64, width)

    def forward(self, x):
        return self.lin(x.flatten(1))


class WrongShape(nn.Module):
    """A decoder whose output is not x's shape."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.lin = nn.Linear(latent_dim, 10)

    def forward(self, z):
        return self.lin(z)
