"""The one logistic-regression head of the project: the frozen kind's head, the linear probe that starts a
fine-tuning (`train.head_init=linear_probe`) and the TF-IDF kind's classifier are built here, configured from
`train.head` (the tfidf kind from `model.tfidf`), with per-row weights from `train.source_weights`."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline.core.errors import PipelineError

# A class never seen in training gets this bias in a served head: probability ~e^-30, never the answer, as the
# other kinds give such a class (a fine-tuning start raises it: encoder.TRAINABLE_BIAS_FLOOR).
UNSEEN_CLASS_BIAS = -30.0
DEFAULT_MAX_ITER = 5000  # lbfgs on a few thousand standardised features converges well within this


def logistic_regression(*, C: float, max_iter: int, class_weight: str | None, seed: int):
    """The sklearn LogisticRegression every head uses."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=float(C), max_iter=int(max_iter), class_weight=class_weight, random_state=seed)


def head_settings(cfg: DictConfig) -> dict:
    """The head's settings (`train.head`, `train.class_weights`, `seed`): the frozen kind's head and the linear
    probe are one model, fitted by `fit_logistic`."""
    head = OmegaConf.select(cfg, "train.head", default=None) or {}
    return {"C": float(head.get("C", 1.0)), "max_iter": int(head.get("max_iter", DEFAULT_MAX_ITER)),
            "class_weight": "balanced" if str(cfg.train.class_weights) == "balanced" else None, "seed": int(cfg.seed)}


def sample_weights(rows: pd.DataFrame) -> np.ndarray:
    """Per-row training weights (`train.source_weights`, set by splits.training_rows); 1 where there are none."""
    if "weight" not in rows.columns:
        return np.ones(len(rows))
    return pd.to_numeric(rows["weight"], errors="coerce").fillna(1.0).to_numpy(dtype=float)


def logistic_weights(clf, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of a fitted sklearn LogisticRegression with one row per label in `labels` order."""
    classes = [str(c) for c in clf.classes_]
    coef, intercept = np.asarray(clf.coef_), np.asarray(clf.intercept_)
    if len(classes) == 2:  # sklearn keeps one row for two classes: logit(class 1) vs class 0
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((len(labels), coef.shape[1]))
    bias = np.full(len(labels), UNSEEN_CLASS_BIAS)
    for row, label in enumerate(classes):
        weight[list(labels).index(label)] = coef[row]
        bias[list(labels).index(label)] = intercept[row]
    return weight, bias


def fit_logistic(features: np.ndarray, labels: Sequence[str], label_order: Sequence[str], *, C: float,
                 max_iter: int, class_weight: str | None, seed: int,
                 sample_weight: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fit the head on features: (weight, bias) in label order."""
    if len(set(labels)) < 2:
        raise PipelineError("a logistic-regression head needs at least two classes in the training rows")
    clf = logistic_regression(C=C, max_iter=max_iter, class_weight=class_weight, seed=seed)
    clf.fit(np.asarray(features), list(labels), sample_weight=None if sample_weight is None else np.asarray(sample_weight))
    return logistic_weights(clf, label_order)
