"""The tfidf kind: char and word TF-IDF n-grams into a logistic regression (`model.kind=tfidf`, conf/model/tfidf.yaml).

The fitted sklearn Pipeline is saved as `model.skops` (pipeline.models.trust: skops against an allow-list of
types; a legacy `model.joblib` pickle is read only where trust allows it). The same pipeline is the `tfidf`
baseline of train and evaluate (pipeline.training.baselines). Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pipeline import LABELS
from pipeline.core.errors import PipelineError
from pipeline.models.base import METADATA_FILE, StancePredictor, write_model_metadata
from pipeline.models.head import logistic_regression, sample_weights
from pipeline.models.trust import LEGACY_PICKLE, load_sklearn, save_sklearn, sklearn_file
from pipeline.text.preprocess import TextPreprocessor

METHOD = "tfidf"  # the `model_kind` tag of its runs (pipeline.models.kinds)

# The classifier's defaults where model.tfidf does not set them (conf/model/tfidf.yaml does).
DEFAULT_C = 4.0
DEFAULT_MAX_ITER = 2000


def build_tfidf_pipeline(params: DictConfig | dict | None, seed: int):
    """char_wb + word TF-IDF n-grams into a class-balanced logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
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
    classifier = logistic_regression(C=float(p.get("C", DEFAULT_C)), max_iter=int(p.get("max_iter", DEFAULT_MAX_ITER)),
                                     class_weight="balanced", seed=seed)
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


# ---------------------------------------------------------------- the kind (pipeline.models.kinds)

def written_kind(cfg: DictConfig) -> str:
    return "tfidf"


def preflight(cfg: DictConfig) -> None:
    """Sentence context is for encoders, which read it as a second segment; n-grams of the context would be
    indistinguishable from the sentence's own, so tfidf refuses it rather than silently mixing them."""
    context = str(OmegaConf.select(cfg, "model.context", default="none") or "none")
    if context != "none":
        raise PipelineError(f"model.context={context}: the tfidf kind reads the sentence alone; use an encoder kind "
                            "(model=frozen, model=e5-small, model=arabert) or model.context=none")


def fit(cfg: DictConfig, split, work_dir: Path, out: Path, preprocess: TextPreprocessor, *,
        resume_from: str | None = None) -> None:
    from pipeline.models.metrics import classification_metrics
    from pipeline.models.trainer import log_metrics

    pipe = fit_tfidf(preprocess(split.train["text"]), split.train["label"], cfg.model.tfidf, int(cfg.seed),
                     sample_weight=sample_weights(split.train))
    out.mkdir(parents=True, exist_ok=True)
    save_sklearn(pipe, out)
    write_model_metadata(out, kind="tfidf", labels=LABELS, max_length=int(cfg.train.max_length),
                         base_model="tfidf+logistic-regression", preprocessor=preprocess)
    if len(split.val):
        pred = [LABELS[i] for i in tfidf_proba(pipe, preprocess(split.val["text"])).argmax(axis=1)]
        val = classification_metrics(split.val["label"], pred)
        log_metrics({"val_macro_f1": val["macro_f1"], "val_accuracy": val["accuracy"]}, step=1)


class TfidfPredictor(StancePredictor):
    kind = "tfidf"

    def __init__(self, model_dir: Path, meta: dict):
        super().__init__(model_dir, meta)
        path = sklearn_file(model_dir)
        self.pipeline = load_sklearn(model_dir)
        classes = [str(c) for c in getattr(self.pipeline, "classes_", [])]
        if sorted(classes) == sorted(self.labels):
            self.columns = [classes.index(label) for label in self.labels]
        elif classes == [str(i) for i in range(len(self.labels))]:
            self.columns = list(range(len(self.labels)))  # trained on class ids
        else:
            raise PipelineError(f"{path}: classes {classes} do not match the labels {self.labels} of {METADATA_FILE}")

    def _scores(self, texts: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        probs = np.asarray(self.pipeline.predict_proba(texts), dtype=np.float64)[:, self.columns]
        probs /= probs.sum(axis=1, keepdims=True)
        return probs, np.zeros(len(texts), dtype=bool)




def load(model_dir: Path, meta: dict, *, quantize: str | None = None, **_options) -> TfidfPredictor:
    if quantize not in (None, "", "none"):
        raise PipelineError(f"predict.quantize={quantize!r} applies to transformer models only; this one is tfidf")
    return TfidfPredictor(model_dir, meta)


def unpickled_files(model_dir: Path) -> list[Path]:
    path = sklearn_file(model_dir)
    return [path.resolve()] if path.name == LEGACY_PICKLE and path.exists() else []
