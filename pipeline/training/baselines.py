"""What the fine-tuned model has to beat: the majority class, the weak-labelling rules, TF-IDF + LR
(the tfidf kind's own pipeline, pipeline.models.tfidf).

Each baseline returns class probabilities on the gold test rows (LABELS order), so it is scored by
exactly the same metrics code as the model.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline import LABELS
from pipeline.core.errors import PipelineError
from pipeline.models.tfidf import fit_tfidf, tfidf_proba

log = logging.getLogger(__name__)

KNOWN = ("majority", "rules", "tfidf")


def one_hot(labels: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(LABELS)}
    out = np.zeros((len(labels), len(LABELS)))
    out[np.arange(len(labels)), [index[x] for x in labels]] = 1.0
    return out


def majority_proba(train_labels: pd.Series, n: int) -> np.ndarray:
    majority = train_labels.value_counts().sort_index().idxmax()  # sort: ties break the same way every run
    return one_hot([majority] * n)


def rules_proba(test: pd.DataFrame, abstain_as: str) -> np.ndarray:
    """The label stage's rule_label on the test rows; where the rules abstained, `abstain_as`."""
    if abstain_as not in LABELS:
        raise PipelineError(f"evaluate.rules_abstain_as={abstain_as!r}; use one of {', '.join(LABELS)}")
    return one_hot([x if isinstance(x, str) and x in LABELS else abstain_as for x in test["rule_label"]])


def baseline_probas(names: Sequence[str], train: pd.DataFrame, test: pd.DataFrame, *, preprocess,
                    cfg: DictConfig, has_rules: bool) -> dict[str, np.ndarray]:
    """{baseline name: probabilities on the test rows} for the configured baselines that apply to this data."""
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name not in KNOWN:
            raise PipelineError(f"unknown baseline {name!r} in train.baselines; choose from {', '.join(KNOWN)}")
        if name == "majority":
            out[name] = majority_proba(train["label"], len(test))
        elif name == "rules":
            if has_rules:  # a plain labelled table has no rule labels to compare with
                out[name] = rules_proba(test, str(cfg.evaluate.rules_abstain_as))
        elif name == "tfidf":
            if str(cfg.model.kind) == name:
                continue  # the model under test is this baseline (model.kind=tfidf)
            if train["label"].nunique() < 2:
                continue
            params = OmegaConf.select(cfg, "model.tfidf", default=None)
            pipe = fit_tfidf(preprocess(train["text"]), train["label"], params, int(cfg.seed))
            out[name] = tfidf_proba(pipe, preprocess(test["text"]))
    return out
