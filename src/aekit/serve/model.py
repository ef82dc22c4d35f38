"""``ServedModel``: the one adapter between the HTTP server and aekit's scoring.

Everything the server computes goes through this class, and this class uses only aekit's public API:
``Detector.load(run)`` (``decision_function``, ``predict_pvalue``, ``explain``, ``model_input``,
``threshold_``, ``calibration_scores_`` / ``decision_scores_``), the model's ``encode`` / ``decode`` /
``sample``, ``Run.open`` / ``Run.dataset``, the scores of ``aekit.scoring.Scorer`` (the one module that
``aekit score``, ``Detector`` and export use) and the command line's ``new_rows`` / ``score_table`` (so a CSV
posted to /score is read and written exactly as ``aekit score`` reads and writes it). Nothing here imports
FastAPI: it is tested on its own.

Model calls are serialized by a lock: one request computes at a time (each with torch's threads), which
keeps memory bounded and the numbers those of a single-threaded call.
"""

from __future__ import annotations

import re
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from ..errors import AekitError, ConfigError
from ..run import Run

LATENT_POINTS = 2000  # training codes shown in the latent-space view (the first rows of the training split)
MAX_SAMPLES = 64  # /api/sample draws at most this many
# the named outputs of an infer request, in the order of the metadata: (datatype, what)
OUTPUTS = {
    "scores": ("FP64", "anomaly score, higher = more anomalous (Detector.decision_function)"),
    "p_values": ("FP64", "conformal p-value (Detector.predict_pvalue; calibrated runs only)"),
    "is_outlier": ("BOOL", "score > threshold (runs with a threshold only)"),
    "codes": ("FP32", "the code of each row (the first member's encoder)"),
    "reconstructions": ("FP64", "reconstruction in the input's units (Detector.explain)"),
    "contributions": ("FP64", "each value's part of the score (Detector.explain)"),
}


class Rejected(Exception):
    """A request the model cannot answer: an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, " ".join(str(reason).split())


class ServedModel:
    """A run directory's detector, ready to score rows from any thread.

    ``name``: the model name of the Open Inference Protocol endpoints (default: the run folder's name).
    Raises RunError / ConfigError (one line) when the run cannot be served.
    """

    input_name = "input"
    version = "1"

    def __init__(self, run_path, name: str | None = None):
        from ..detector import Detector

        self.run = Run.open(run_path)
        self.name = name or self.run.path.name
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ConfigError(f"model name {self.name!r}: use letters, digits, '.', '_' and '-' (it is part of the "
                              "/v2/models/{name} paths); choose one with --name")
        self.detector = Detector.load(self.run.path)
        self.scorer = self.detector.scorer()  # scores, p-values and is_outlier: what `aekit score` computes
        self.model = self.detector.models_[0]
        if self.model.capabilities.uses_labels:
            raise ConfigError(f"{self.run.path}: model {self.run.model_name} needs class labels to encode, but "
                              "aekit serve scores unlabelled rows; serve a run of a family without labels")
        self.kind = self.detector.kind_
        self.input_shape = tuple(int(s) for s in self.detector.input_shape_)
        self.feature_names = list(self.detector.feature_names_) if self.kind == "table" else []
        self._lock = threading.Lock()
        self._latent = None

    # --- what the model offers -------------------------------------------------------------------
    @property
    def threshold(self) -> float | None:
        return self.detector.threshold_

    @property
    def calibrated(self) -> bool:
        return getattr(self.detector, "calibration_scores_", None) is not None

    @property
    def generative(self) -> bool:
        return bool(self.model.capabilities.generative)

    def outputs(self) -> list[str]:
        """The output names this run can give (p-values need a calibration, is_outlier a threshold)."""
        return [n for n in OUTPUTS if (n != "p_values" or self.calibrated) and (n != "is_outlier" or
                                                                                 self.threshold is not None)]

    def output_shape(self, name: str) -> list[int]:
        if name in ("scores", "p_values", "is_outlier"):
            return [-1]
        if name == "codes":
            return [-1, int(self.model.latent_dim)]
        return [-1, *self.input_shape]

    def input_datatypes(self) -> tuple[str, ...]:
        """Accepted input datatypes: the first is the one the metadata announces."""
        return ("FP32", "FP64") if self.kind == "table" else ("FP32", "FP64", "UINT8")

    def reference(self) -> dict:
        """The score table the threshold was set from, for the false-positive rate of other thresholds:
        the calibration scores (held-out normal data; FPR(t) = (1 + #{s > t}) / (n + 1), the conformal
        bound) or else the training scores (the share of them above t)."""
        det = self.detector
        if self.calibrated:
            scores, source = det.calibration_scores_, "calibration"
        elif det.decision_scores_ is not None:
            scores, source = det.decision_scores_, "training"
        else:
            scores, source = None, None
        return {"source": source, "scores": None if scores is None else np.sort(scores).tolist(),
                "threshold": self.threshold, "flag_rate": det.flag_rate_, "threshold_from": det.threshold_from_}

    # --- scoring ---------------------------------------------------------------------------------
    def infer(self, x: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """The named outputs for rows x (n, *input_shape) in the user's units (uint8 or [0, 1] images), each an
        array with n rows, in the order of ``outputs`` (default: all of ``self.outputs()``)."""
        names = self.outputs() if outputs is None else outputs
        with self._lock:
            try:
                return self._infer(x, names)
            except AekitError as e:  # data the detector refuses (the same checks as offline scoring)
                raise Rejected(400, str(e)) from None

    def _infer(self, x, names, explained: dict | None = None) -> dict[str, np.ndarray]:
        """The outputs ``names`` of rows x; ``explained``: a dict that receives Detector.explain's answer when
        it was computed."""
        det, got = self.detector, {}
        if {"scores", "is_outlier", "p_values"} & set(names):
            scored = self.scorer.score(x)  # one pass: score, p-value and decision together
            got["scores"] = scored.score
            if scored.is_outlier is not None:
                got["is_outlier"] = scored.is_outlier
            if scored.p_value is not None:
                got["p_values"] = scored.p_value
        if "codes" in names:
            with torch.no_grad():
                got["codes"] = self.model.encode(det.model_input(x)).flatten(1).cpu().numpy()
        if {"reconstructions", "contributions"} & set(names) or explained is not None:
            e = det.explain(x)
            got["reconstructions"] = np.asarray(e["reconstruction"], dtype=np.float64)
            got["contributions"] = np.asarray(e["contributions"], dtype=np.float64)
            if explained is not None:
                explained.update(e)
        return {n: got[n] for n in names}

    def score_csv(self, body: bytes, suffix: str = ".csv") -> str:
        """What ``aekit score RUN FILE`` prints for a CSV (or TSV) file holding ``body``."""
        from ..cli import new_rows, score_table, user_rows

        with tempfile.TemporaryDirectory(prefix="aekit-serve-") as tmp:
            path = Path(tmp) / f"request{suffix}"
            path.write_bytes(body)
            with self._lock:
                try:
                    ds, ids = new_rows(self.run, str(path))
                    return score_table(self.scorer, user_rows(ds), ids)
                except AekitError as e:
                    raise Rejected(400, str(e).replace(str(path), "the request body")) from None

    def rows_of_csv(self, body: bytes, suffix: str = ".csv") -> tuple[np.ndarray, list]:
        """The rows of a CSV body as ``aekit score`` reads them: (x in user units, ids)."""
        from ..cli import new_rows, user_rows

        with tempfile.TemporaryDirectory(prefix="aekit-serve-") as tmp:
            path = Path(tmp) / f"request{suffix}"
            path.write_bytes(body)
            try:
                ds, ids = new_rows(self.run, str(path))
                return user_rows(ds), list(ids)
            except AekitError as e:
                raise Rejected(400, str(e).replace(str(path), "the request body")) from None

    # --- the page: explanations, latent space, decoding, samples ---------------------------------
    def analyze(self, x: np.ndarray) -> dict:
        """Everything the page shows about rows x: every output, the per-value explanation (a table's squared
        error in its own units too; an image's per-pixel map) and each code's place in the latent view."""
        latent = self.latent()
        explained = {}
        with self._lock:
            try:
                out = self._infer(x, self.outputs(), explained)
            except AekitError as e:
                raise Rejected(400, str(e)) from None
        out["latent"] = self._project(out["codes"])
        if self.kind == "table":
            out["contributions_user_units"] = explained["contributions_user_units"]
        else:
            out["maps"] = explained["maps"]
        if "code_distance" in explained:
            out["code_distance"] = explained["code_distance"]
        return {"outputs": out, "axes": latent["axes"]}

    def latent(self) -> dict:
        """The latent view: a 2-D PCA of the training codes (the first LATENT_POINTS rows of the run's
        training split), or, when the run's data cannot be read again (a Detector fitted on arrays), the
        first two code dimensions and no training points."""
        with self._lock:
            if self._latent is None:
                self._latent = self._fit_latent()
            return {k: v for k, v in self._latent.items() if k != "pca"}

    def _fit_latent(self) -> dict:
        from sklearn.decomposition import PCA

        k = int(self.model.latent_dim)
        try:
            ds = self.run.dataset()
            x = ds.x_train[torch.arange(min(LATENT_POINTS, len(ds.x_train)))]
        except AekitError as e:
            note = f"the training data could not be read again ({e}); the axes are the first two code dimensions"
            return {"pca": None, "points": [], "axes": ["z0", "z1" if k > 1 else "0"], "note": note,
                    "explained": None}
        with torch.no_grad():
            codes = self.model.encode(x.to(self.model.device)).flatten(1).double().cpu().numpy()
        pca = PCA(n_components=min(2, k, len(codes))).fit(codes)
        ratio = [float(r) for r in pca.explained_variance_ratio_]
        return {"pca": pca, "points": self._pca_2d(pca, codes).tolist(),
                "axes": ["PC1", "PC2" if pca.n_components_ > 1 else "0"],
                "note": f"PCA of the codes of {len(codes)} training rows ({', '.join(f'{r:.0%}' for r in ratio)} "
                        "of their variance)", "explained": ratio}

    @staticmethod
    def _pca_2d(pca, codes: np.ndarray) -> np.ndarray:
        p = pca.transform(codes)
        return p if p.shape[1] == 2 else np.c_[p, np.zeros(len(p))]

    def _project(self, codes: np.ndarray) -> np.ndarray:
        """(n, 2): codes in the latent view's plane."""
        pca = self._latent["pca"] if self._latent else None
        codes = np.asarray(codes, dtype=np.float64)
        if pca is not None:
            return self._pca_2d(pca, codes)
        return codes[:, :2] if codes.shape[1] > 1 else np.c_[codes, np.zeros(len(codes))]

    def code_of_point(self, point) -> np.ndarray:
        """The code (1, K) at a point (u, v) of the latent view's plane (the PCA's inverse)."""
        self.latent()
        u = np.asarray(point, dtype=np.float64).reshape(1, 2)
        pca = self._latent["pca"]
        k = int(self.model.latent_dim)
        if pca is None:
            z = np.zeros((1, k))
            z[0, : min(2, k)] = u[0, : min(2, k)]
            return z
        return pca.inverse_transform(u[:, : pca.n_components_])

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Decoded codes (n, K) in the user's units: (n, *input_shape)."""
        codes = np.asarray(codes, dtype=np.float32)
        k = int(self.model.latent_dim)
        if codes.ndim != 2 or codes.shape[1] != k or not np.isfinite(codes).all():
            raise Rejected(400, f"codes of shape {list(codes.shape)}: expected finite codes of shape [n, {k}]")
        with self._lock, torch.no_grad():
            x = self.model.decode(torch.from_numpy(codes).to(self.model.device)).cpu()
        return self._user_units(x)

    def sample(self, n: int, seed: int) -> np.ndarray:
        """n samples of a generative family (seeded), in the user's units."""
        if not self.generative:
            raise Rejected(400, f"model {self.run.model_name} is not generative: it has no samples")
        if not 1 <= n <= MAX_SAMPLES:
            raise Rejected(400, f"n={n}: ask for 1 to {MAX_SAMPLES} samples")
        if not 0 <= seed < 2**63:
            raise Rejected(400, f"seed={seed}: choose a seed from 0 to 2**63 - 1")
        with self._lock, torch.no_grad():
            gen = torch.Generator(device=self.model.device).manual_seed(int(seed))
            x = self.model.sample(n, generator=gen).cpu()
        return self._user_units(x)

    def _user_units(self, x: torch.Tensor) -> np.ndarray:
        """A table's rows in model units back in the training table's units (x * std + mean); images as they are."""
        x = x.double().numpy()
        stats = self.detector.data_spec_.stats if self.kind == "table" else None
        if stats is None:
            return x
        return x * np.asarray(stats["std"], dtype=np.float64) + np.asarray(stats["mean"], dtype=np.float64)

    def info(self) -> dict:
        """What the page and /v2/models/{name} say about the model."""
        return {"name": self.name, "family": self.run.model_name, "kind": self.kind,
                "input_shape": list(self.input_shape), "input_name": self.input_name,
                "feature_names": self.feature_names, "latent_dim": int(self.model.latent_dim),
                "generative": self.generative, "score": self.detector.anomaly_score_,
                "members": len(self.detector.models_), "outputs": self.outputs(), **self.reference()}


def finite_or_reject(name: str, a: np.ndarray) -> None:
    """A 422 naming the first row whose output is NaN or infinite (JSON has no such numbers)."""
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        row = int(np.argmax(~np.isfinite(a.reshape(len(a), -1)).all(axis=1))) if a.ndim else 0
        raise Rejected(422, f"output {name} of row {row} is not a finite number (an input far outside the training "
                            "data?); score that row offline to inspect it")


__all__ = ["ServedModel", "Rejected", "OUTPUTS", "finite_or_reject"]
