"""What the fine-tuned model has to beat: the majority class, the weak-labelling rules, TF-IDF + LR.

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
from pipeline.errors import PipelineError

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


def build_tfidf_pipeline(params: DictConfig | dict | None, seed: int):
    """char_wb + word TF-IDF n-grams into a class-balanced logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    p = dict(OmegaConf.to_container(params) if isinstance(params, DictConfig) else (params or {}))
    char_ngrams = tuple(p.get("char_ngrams", (2, 5)))
    word_ngrams = tuple(p.get("word_ngrams", (1, 2)))
    min_df = int(p.get("min_df", 1))
    max_features = p.get("max_features", 200000)
    features = FeatureUnion(
        [
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=char_ngrams, min_df=min_df,
                                     max_features=max_features, sublinear_tf=True)),
            ("word", TfidfVectorizer(analyzer="word", ngram_range=word_ngrams, min_df=min_df,
                                     max_features=max_features, sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")),
        ]
    )
    classifier = LogisticRegression(C=float(p.get("C", 4.0)), max_iter=int(p.get("max_iter", 2000)),
                                    class_weight="balanced", random_state=seed)
    return Pipeline([("features", features), ("classifier", classifier)])


def fit_tfidf(texts: Sequence[str], labels: Sequence[str], params, seed: int, sample_weight=None):
    """Fit the TF-IDF pipeline (optionally with per-row weights); predict_proba columns come out in LABELS order."""
    labels = list(labels)
    if len(set(labels)) < 2:
        raise PipelineError("TF-IDF + LR needs at least two classes in the training rows")
    pipe = build_tfidf_pipeline(params, seed)
    pipe.fit(list(texts), labels, **({} if sample_weight is None else {"classifier__sample_weight": sample_weight}))
    return pipe


def tfidf_proba(pipe, texts: Sequence[str]) -> np.ndarray:
    """Probabilities in LABELS order, zero for classes the pipeline never saw in training."""
    raw = pipe.predict_proba(list(texts))
    out = np.zeros((len(texts), len(LABELS)))
    for j, label in enumerate(pipe.classes_):
        out[:, LABELS.index(label)] = raw[:, j]
    return out


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
            if str(cfg.model.kind) == "tfidf":
                continue  # the model under test is this baseline
            if train["label"].nunique() < 2:
                continue
            params = OmegaConf.select(cfg, "model.tfidf", default=None)
            pipe = fit_tfidf(preprocess(train["text"]), train["label"], params, int(cfg.seed))
            out[name] = tfidf_proba(pipe, preprocess(test["text"]))
    return out
