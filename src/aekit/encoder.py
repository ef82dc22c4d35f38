"""``aekit.Encoder``: an autoencoder's codes as a scikit-learn transformer.

    enc = aekit.Encoder(model="vae", latent_dim=16, epochs=30, random_state=0).fit(X_train)
    Z = enc.transform(X)                  # (n, latent_dim) codes: the posterior mean of a vae
    X_hat = enc.inverse_transform(Z)      # (n, ...) the decoder's mean, in X's units
    Pipeline([("ae", aekit.Encoder(latent_dim=8)), ("clf", LogisticRegression())])   # GridSearchCV works too

scikit-learn's contract: ``__init__`` only stores its parameters; ``fit(X, y=None)`` trains (y is ignored: the
codes are learned without labels) and returns self; learned state ends in ``_``; ``random_state`` (None, an int
or a ``RandomState``) is resolved in ``fit``; get_params / set_params / clone work, and
``sklearn.utils.estimator_checks.check_estimator`` passes (tests/test_encoder.py lists what it skips, with the
reason). X is read like ``aekit.datasets.from_arrays`` reads arrays: a table (N, D), standardized with the
training rows' mean and std (saved in ``data_spec_``), or images (N, H, W), (N, H, W, C), (N, C, H, W) of uint8
or numbers in [0, 1]. Families that need labels (cvae, the supervised aae) are refused: ``transform`` gets no y.
``transform`` returns float64 codes for float64 X, float32 codes for float32 X (the model computes in float32);
``inverse_transform`` returns a table in X's units, or images (n, C, H, W) in [0, 1]. Training runs in this
process, on ``device``; ``epochs=None`` is ``TrainConfig``'s automatic budget (at least 2000 steps, early
stopping), so pass a small ``epochs`` inside a grid search.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import arraylike, metrics, registry, trainer
from .config import TrainConfig
from .datasets import from_arrays
from .errors import ConfigError, DataError

__all__ = ["Encoder"]

_NETWORKS = ("encoder", "encoder_args", "decoder", "decoder_args")


class Encoder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Learn codes of X with an autoencoder and use them as features (a scikit-learn transformer).

    Parameters
    ----------
    model : str, default="vae"
        The family, one of ``aekit.MODELS`` that trains without labels (not cvae, nor the supervised aae).
    latent_dim : int, default=16
        Size of the code: the number of output features of ``transform``.
    model_options : dict, optional
        The family's other options (``aekit.build``'s keyword arguments), e.g. ``{"beta": 0.5}`` or
        ``{"hidden": [64, 64]}``.
    epochs : int, optional
        Training epochs; None: ``TrainConfig``'s automatic budget (at least 2000 optimizer steps, 20 to 500
        epochs, early stopping on the validation part).
    batch_size : int, default=128
        Minibatch size.
    lr : float, default=1e-3
        Adam's learning rate.
    val_fraction : float, default=0.1
        Share of X held out to pick the best epoch (none with fewer than ``1 / val_fraction`` rows).
    random_state : None, int or numpy.random.RandomState, default=None
        Seeds the split and the training; None draws a new seed from numpy's global RNG at every fit.
    device : str, default="auto"
        Torch device to train and encode on ("auto": CUDA, else MPS, else the CPU).
    verbose : bool, default=False
        Show the training progress bar.
    encoder, decoder : str or torch.nn.Module, optional
        Custom networks, as ``aekit.build`` takes them: an import path ``"package.module:Class"`` or an instance
        whose class and arguments can be recovered.
    encoder_args, decoder_args : dict, optional
        Keyword arguments (JSON values) of the custom networks named by import path.

    Attributes
    ----------
    model_ : aekit.models.base.Autoencoder
        The trained model (in eval mode).
    n_features_in_ : int
        Values per sample of X (columns of a table).
    feature_names_in_ : numpy.ndarray
        The column names, only when X was a DataFrame.
    input_shape_ : tuple of int
        The shape of one sample as the model reads it: (D,) or (C, H, W).
    kind_ : {"table", "image"}
        What X held.
    data_spec_ : aekit.DataConfig
        How X was read, with the table statistics that ``transform`` scales new rows with.
    history_ : list of dict
        The training history, one record per epoch.
    """

    def __init__(self, model="vae", latent_dim=16, model_options=None, epochs=None, batch_size=128, lr=1e-3,
                 val_fraction=0.1, random_state=None, device="auto", verbose=False, encoder=None,
                 encoder_args=None, decoder=None, decoder_args=None):
        self.model = model
        self.latent_dim = latent_dim
        self.model_options = model_options
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.val_fraction = val_fraction
        self.random_state = random_state
        self.device = device
        self.verbose = verbose
        self.encoder = encoder
        self.encoder_args = encoder_args
        self.decoder = decoder
        self.decoder_args = decoder_args

    def fit(self, X, y=None):
        """Train the autoencoder on X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, *image_shape)
            Training data: a table or images (numpy, torch, nested lists or a DataFrame).
        y : None
            Ignored: the codes are learned without labels.

        Returns
        -------
        Encoder
            self, fitted.
        """
        arr, columns = arraylike.sample_rows(X)
        options = self._model_options()
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        val = float(self.val_fraction)
        if not 0.0 <= val < 1.0:
            raise ConfigError(f"Encoder(val_fraction={self.val_fraction!r}): expected a number in [0, 1)")
        ds = from_arrays(arr, name="X", val_fraction=val if len(arr) * val >= 1.0 else 0.0, test_fraction=0.0,
                         seed=seed, feature_names=columns if arr.ndim == 2 else None)
        model = registry.build_for(self.model, ds, seed=seed, latent_dim=self.latent_dim, **options)
        if model.capabilities.uses_labels:
            raise _needs_labels(self.model)
        cfg = TrainConfig.from_dict({"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                                     "seed": seed, "device": self.device}, what="Encoder")
        result = trainer.fit(model, ds, cfg, quiet=not self.verbose)
        self.__dict__.pop("feature_names_in_", None)  # of an earlier fit
        if columns is not None:
            self.feature_names_in_ = np.asarray(columns, dtype=object)
        self.model_ = result.model.eval()
        self.kind_ = ds.kind
        self.input_shape_ = tuple(ds.shape)
        self.n_features_in_ = math.prod(ds.shape)
        self.data_spec_ = ds.spec
        self.history_ = result.history
        return self

    def _model_options(self) -> dict:
        """The options handed to ``aekit.build``: ``model_options`` and the custom networks. ConfigError for bad
        parameters (an unknown family lists the known ones; a family that needs labels is refused)."""
        if registry.get(self.model).capabilities.uses_labels:
            raise _needs_labels(self.model)
        if self.model_options is not None and not isinstance(self.model_options, Mapping):
            raise ConfigError(f"Encoder(model_options={self.model_options!r}): expected a dict of model "
                              f"{self.model}'s options, e.g. {{'hidden': [64, 64]}}, or None")
        options = dict(self.model_options or {})
        for key in ("latent_dim", "input_shape", "num_classes"):
            if key in options:
                raise ConfigError(f"Encoder(model_options=...): {key!r} is set by "
                                  f"{'Encoder(latent_dim=...)' if key == 'latent_dim' else 'the data'}, not in "
                                  "model_options")
        options.update({k: getattr(self, k) for k in _NETWORKS if getattr(self, k) is not None})
        return options

    def _model_input(self, X) -> torch.Tensor:
        """X as the model reads it: (n, *input_shape_) float32, scaled as the training rows, in X's row order."""
        check_is_fitted(self, "model_")
        arr, columns = arraylike.sample_rows(X)
        want = self.input_shape_
        if self.kind_ == "table" and (arr.ndim != 2 or arr.shape[1] != want[0]):
            got = f"{arr.shape[1]} features" if arr.ndim == 2 else f"shape {arr.shape}"
            raise DataError(f"X has {got}, but {type(self).__name__} is expecting {want[0]} features as input "
                            "(the columns it was fitted on, in the same order)")
        if self.kind_ == "image" and arr.ndim not in (3, 4):
            raise DataError(f"X has shape {arr.shape}, but {type(self).__name__} was fitted on images of shape "
                            f"{want}; pass images (N, H, W), (N, H, W, C) or (N, C, H, W)")
        known = getattr(self, "feature_names_in_", None)
        if known is not None and columns is not None and list(known) != columns:
            raise DataError(f"X has the columns {columns[:5]}..., but {type(self).__name__} was fitted on "
                            f"{list(known)[:5]}...; pass the columns it was fitted on, in the same order")
        ds = from_arrays(arr, kind=self.kind_, name="X", val_fraction=0.0, test_fraction=0.0,
                         stats=self.data_spec_.stats, shuffle=False)
        if tuple(ds.shape) != want:
            raise DataError(f"X has samples of shape {tuple(ds.shape)}, but {type(self).__name__} was fitted on "
                            f"samples of shape {want}")
        return ds.x_train

    def transform(self, X) -> np.ndarray:
        """The codes of X: the model's deterministic code (a vae's posterior mean).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, *image_shape)
            Data of the kind ``fit`` saw (the same columns, or images of the same shape).

        Returns
        -------
        numpy.ndarray of shape (n_samples, latent_dim)
            float64 for float64 X, float32 for float32 X (and float64 for integer X).
        """
        dtype = _out_dtype(X)
        z = metrics.codes(self.model_, self._model_input(X))
        return arraylike.to_numpy(z).astype(dtype, copy=False)

    def inverse_transform(self, X) -> np.ndarray:
        """Decode codes: the mean of p(x|z), in the units of the data ``fit`` saw.

        Parameters
        ----------
        X : array-like of shape (n_samples, latent_dim)
            Codes, e.g. the output of ``transform``.

        Returns
        -------
        numpy.ndarray
            (n_samples, n_features) for a table, in X's units (the standardization undone); (n_samples, C, H, W)
            in [0, 1] for images.
        """
        check_is_fitted(self, "model_")
        z, _ = arraylike.sample_rows(X)
        k = self.model_.latent_dim
        if z.ndim != 2 or z.shape[1] != k:
            raise DataError(f"X has {z.shape[1] if z.ndim == 2 else z.shape} features, but {type(self).__name__} "
                            f"is expecting {k} features as input (codes of size latent_dim)")
        x = arraylike.to_numpy(self.model_.decode(z.astype(np.float32, copy=False))).astype(np.float64)
        stats = self.data_spec_.stats
        if self.kind_ == "table" and stats is not None:
            x = x * np.asarray(stats["std"], dtype=np.float64) + np.asarray(stats["mean"], dtype=np.float64)
        return x.astype(_out_dtype(X), copy=False)

    @property
    def _n_features_out(self) -> int:
        """The number of codes (ClassNamePrefixFeaturesOutMixin names them encoder0, encoder1, ...)."""
        return self.model_.latent_dim

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _out_dtype(X) -> np.dtype:
    """float32 for float32 input, else float64 (as scikit-learn's transformers preserve float dtypes)."""
    dtype = getattr(X, "dtype", None)
    return np.dtype(np.float32) if dtype in (np.float32, torch.float32) else np.dtype(np.float64)


def _needs_labels(model: str) -> ConfigError:
    usable = [n for n, c in registry.MODELS.items() if not c.capabilities.uses_labels]
    return ConfigError(f"Encoder(model={model!r}) needs class labels to train and to encode, but a transformer's "
                       f"transform gets no labels; choose one of {', '.join(usable)}")
