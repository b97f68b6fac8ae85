"""Temperature scaling: make the model's probabilities mean what they say.

A classifier fine-tuned on a small corpus is usually over-confident: when it says 0.95 it is right far less than 95 %
of the time. Temperature scaling (Guo et al., 2017) divides the logits by one scalar T fitted on held-out gold by
minimising the negative log-likelihood; T > 1 softens, T < 1 sharpens. It never changes the arg-max, so labels and
accuracy stay exactly the same; only the confidence moves.

Everything here works from probabilities (or log-probabilities / logits, which are equivalent up to a per-row
constant under softmax), so the same calibration applies to every model kind, including TF-IDF + logistic
regression, which has no logits of its own:

    T = fit_temperature(np.log(proba_val), gold_val)
    calibrated = apply_temperature(proba_test, T)
    Calibration.from_fit(proba_val, gold_val, T, fitted_on="validation").save(model_dir)
    ...
    proba = Calibration.load(model_dir).apply(predictor.predict_proba(texts))
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
# Probabilities are clipped before the log so that a hard 0 (e.g. from a rule or a saturated softmax) stays finite.
_EPS = 1e-12
# Search range for log T: T in [e^-4, e^4] ≈ [0.018, 55] covers every realistic mis-calibration.
_LOG_T_BOUNDS = (-4.0, 4.0)


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, k) scores (also the encoder head's, pipeline.models.encoder)."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check(scores: np.ndarray, gold_index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise PipelineError(f"calibration: expected an (n, k≥2) array of scores, got shape {scores.shape}")
    if gold_index is None:
        return scores, None
    gold = np.asarray(gold_index)
    if gold.shape != (scores.shape[0],):
        raise PipelineError(f"calibration: gold_index has shape {gold.shape}, expected ({scores.shape[0]},)")
    if len(gold) and (gold.min() < 0 or gold.max() >= scores.shape[1]):
        raise PipelineError(f"calibration: gold_index values must lie in [0, {scores.shape[1] - 1}]")
    return scores, gold.astype(np.int64)


def _nll(scores: np.ndarray, gold: np.ndarray, temperature: float) -> float:
    z = scores / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(gold)), gold]))


def fit_temperature(logits_or_log_probs: np.ndarray, gold_index: np.ndarray) -> float:
    """The T > 0 minimising the NLL of softmax(scores / T) against `gold_index`.

    `logits_or_log_probs` is (n, k): logits, or log-probabilities (np.log(proba)) for models without logits.
    Deterministic: a bounded 1-D search (scipy's Brent) over log T, so T stays positive and the problem is smooth.
    With no rows, returns 1.0 (identity) rather than guessing.
    """
    scores, gold = _check(logits_or_log_probs, gold_index)
    if len(gold) == 0:
        log.warning("fit_temperature: no held-out rows; using T=1 (no calibration)")
        return 1.0
    scores = np.maximum(scores, math.log(_EPS))  # log(0) = -inf would make every T equally bad
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda log_t: _nll(scores, gold, math.exp(log_t)),
                             bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    temperature = float(math.exp(result.x))
    log.info("fitted temperature T=%.4f on %d rows (NLL %.4f → %.4f)", temperature, len(gold),
             _nll(scores, gold, 1.0), float(result.fun))
    return temperature


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the calibrated probabilities, rows summing to 1; T=1 returns `proba` unchanged."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise PipelineError(f"calibration: temperature must be a positive number, got {temperature!r}")
    proba, _ = _check(proba)
    if temperature == 1.0:
        return proba
    return softmax(np.log(np.clip(proba, _EPS, 1.0)) / temperature)


def expected_calibration_error(proba: np.ndarray, gold_index: np.ndarray, n_bins: int = 10) -> float:
    """Top-label ECE: Σ_bins (|bin| / n) · |accuracy(bin) − mean confidence(bin)| over equal-width confidence bins.

    Bins are (lo, hi] so that a confidence of exactly 1.0 falls in the last bin. No rows → 0.0.
    """
    proba, gold = _check(proba, gold_index)
    if len(gold) == 0:
        return 0.0
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == gold).astype(np.float64)
    # bin b holds confidences in (b/n, (b+1)/n]; confidence ≥ 1/k > 0, so index 0 is never negative.
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def _reliability(proba: np.ndarray, gold: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == gold).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(bins, weights=correct, minlength=n_bins) / counts
        conf = np.bincount(bins, weights=confidence, minlength=n_bins) / counts
    return acc, conf, counts


def reliability_diagram(proba_before: np.ndarray, proba_after: np.ndarray, gold_index: np.ndarray,
                        path: Path | str, title: str = "Reliability", n_bins: int = 10) -> Path:
    """Accuracy against confidence per bin, before and after calibration, as a PNG (written atomically)."""
    before, gold = _check(proba_before, gold_index)
    after, _ = _check(proba_after, gold_index)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = (np.arange(n_bins) + 0.5) / n_bins
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    try:
        for ax, proba, name in ((axes[0], before, "before"), (axes[1], after, "after")):
            acc, conf, counts = _reliability(proba, gold, n_bins)
            shown = counts > 0
            ax.bar(centres[shown], acc[shown], width=1 / n_bins, edgecolor="#1d3557", color="#a8dadc",
                   label="accuracy")
            ax.plot(conf[shown], acc[shown], "o", color="#e63946", label="mean confidence → accuracy")
            ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
            ece = expected_calibration_error(proba, gold, n_bins)
            ax.set_title(f"{name}: ECE {ece:.3f} (n={len(gold)})")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("confidence (top-label probability)")
        axes[0].set_ylabel("accuracy")
        axes[1].legend(loc="upper left", fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path


@dataclass(frozen=True)
class Calibration:
    """The temperature saved with a model (`<model_dir>/calibration.json`) and how well it worked where fitted.

    A model directory without the file is uncalibrated: `load` returns the identity (T=1)."""

    temperature: float = 1.0
    ece_before: float | None = None
    ece_after: float | None = None
    n: int = 0
    fitted_on: str = "none"     # e.g. "validation" or "out-of-fold"

    @classmethod
    def from_fit(cls, proba: np.ndarray, gold_index: np.ndarray, temperature: float, fitted_on: str,
                 n_bins: int = 10) -> "Calibration":
        """Record T with the ECE before and after on the rows it was fitted on."""
        proba, gold = _check(proba, gold_index)
        return cls(temperature=float(temperature),
                   ece_before=expected_calibration_error(proba, gold, n_bins),
                   ece_after=expected_calibration_error(apply_temperature(proba, temperature), gold, n_bins),
                   n=int(len(gold)), fitted_on=fitted_on)

    def apply(self, proba: np.ndarray) -> np.ndarray:
        return apply_temperature(proba, self.temperature)

    def save(self, model_dir: Path | str) -> Path:
        return write_text_atomic(Path(model_dir) / CALIBRATION_FILE, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, model_dir: Path | str) -> "Calibration":
        path = Path(model_dir) / CALIBRATION_FILE
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            calibration = cls(**data)
        except (ValueError, TypeError) as exc:
            raise PipelineError(f"{path}: not a valid calibration record ({exc}); delete it to serve "
                                "uncalibrated probabilities, or re-train") from None
        if not calibration.temperature > 0:
            raise PipelineError(f"{path}: temperature must be positive, got {calibration.temperature!r}")
        return calibration
