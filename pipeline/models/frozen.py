"""The frozen kind (`model.kind=frozen`): sentence embeddings of a pretrained encoder + logistic regression.

The encoder is copied into the model directory untouched, with a linear head fitted on its pooled embeddings
(pipeline.models.encoder). Embeddings are computed through the very predictor that will serve the model, so train
and predict features cannot drift apart. With tens of gold sentences this is the robust choice: nothing but a
regularised linear model is learned.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pipeline import LABELS
from pipeline.models import reuse
from pipeline.models.base import load_predictor, write_model_metadata
from pipeline.models.encoder import LinearHead, check_pooling
from pipeline.models.head import fit_logistic, head_settings, sample_weights
from pipeline.models.loading import base_model_dir, check_source, load_tokenizer_and_model
from pipeline.models.metrics import classification_metrics
from pipeline.models.trainer import log_metrics
from pipeline.text.context import contexts_of
from pipeline.text.preprocess import TextPreprocessor

log = logging.getLogger(__name__)

METHOD = "frozen"  # the `model_kind` tag of its runs (pipeline.models.kinds)


def frozen_encoder(cfg: DictConfig, train_texts, work_dir: Path, out: Path, preprocess: TextPreprocessor, *,
                   how: str = "frozen", shared: bool = True):
    """Write the untouched encoder to `out` with a zero head and return its predictor (what computes the features).

    A zero head first: the directory is then a complete model whose predictor computes the training features, by
    exactly the code that serves the model (the contrastive kind tunes that predictor's encoder before the head is
    fitted; `how` says so in the metadata, and it asks for its own copy of the weights: `shared=False`). Returns (predictor, pooling, normalize, base model name)."""
    m = cfg.model
    pooling = check_pooling(str(OmegaConf.select(cfg, "model.pooling", default="mean")))
    normalize = bool(OmegaConf.select(cfg, "model.normalize", default=True))
    base = base_model_dir(cfg, preprocess(train_texts), Path(work_dir) / "base_model", LABELS)
    # In a train run (pipeline.models.reuse) the fit, its calibration folds and the refit read it once and use
    # that one copy, which nobody changes; a kind that tunes it (shared=False) tunes a copy of its own
    tokenizer, encoder = load_tokenizer_and_model(base, LABELS, hub_timeout_s=float(m.hub_timeout_s),
                                                  encoder_only=True, shared=True)
    if not shared:
        encoder = copy.deepcopy(encoder)
    out.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(out)
    tokenizer.save_pretrained(out)
    reuse.remember(out, tokenizer, encoder)  # its predictors (features, validation, scoring) take it from memory
    hidden = int(encoder.config.hidden_size)
    LinearHead(np.zeros((len(LABELS), hidden)), np.zeros(len(LABELS)), pooling=pooling, normalize=normalize).save(out)
    base_name = str(m.name_or_path) if m.name_or_path else "tiny-bert (built from the training sentences)"
    write_model_metadata(out, kind="encoder", labels=LABELS, max_length=int(cfg.train.max_length),
                         base_model=f"{base_name} ({how}, {pooling}-pooled) + logistic regression",
                         preprocessor=preprocess)
    return load_predictor(out), pooling, normalize, base_name


def sentence_features(predictor, texts, *, batch_size: int, normalize: bool, context=None) -> np.ndarray:
    """(n, hidden) features the logistic-regression head is fitted on: the pooled embeddings of raw sentences
    (with their `context` when the model reads one), L2-normalised when the head normalises its inputs
    (`model.normalize`)."""
    features = predictor.embed(list(texts), batch_size=batch_size, context=context)
    if features.size and normalize:
        features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return features


# ---------------------------------------------------------------- the kind (pipeline.models.kinds)

def written_kind(cfg: DictConfig) -> str:
    return "encoder"  # served by pipeline.models.encoder


def preflight(cfg: DictConfig) -> None:
    check_source(cfg)


def fit(cfg: DictConfig, split, work_dir: Path, out: Path, preprocess: TextPreprocessor, *,
        resume_from: str | None = None) -> None:
    """Write an encoder stance model dir to `out`: the base encoder as it is + a fitted logistic-regression head."""
    predictor, pooling, normalize, base_name = frozen_encoder(cfg, split.train["text"], work_dir, out, preprocess)
    fit_head(cfg, split, predictor, out, pooling=pooling, normalize=normalize, what=f"frozen encoder {base_name}")


def fit_head(cfg: DictConfig, split, predictor, out: Path, *, pooling: str, normalize: bool, what: str) -> None:
    """Fit the logistic-regression head on the pooled embeddings of split.train by `predictor`'s encoder, save it
    into `out` beside that encoder, and log the validation scores when there are validation rows."""
    batch_size = int(cfg.train.eval_batch_size)
    features = sentence_features(predictor, split.train["text"].tolist(), batch_size=batch_size, normalize=normalize,
                                 context=contexts_of(split.train, predictor.context))
    labels = split.train["label"].tolist()
    weight, bias = fit_logistic(features, labels, LABELS, sample_weight=sample_weights(split.train),
                                **head_settings(cfg))
    LinearHead(weight, bias, pooling=pooling, normalize=normalize).save(out)
    log.info("%s: head fitted on %d sentences (%d features)", what, len(labels),
             int(predictor.model.config.hidden_size))
    if len(split.val):
        served = load_predictor(out)
        val_proba = served.predict_proba(split.val["text"].tolist(), batch_size=batch_size,
                                         context=contexts_of(split.val, served.context))
        val = classification_metrics(split.val["label"], [LABELS[i] for i in val_proba.argmax(axis=1)])
        log_metrics({"val_macro_f1": val["macro_f1"], "val_accuracy": val["accuracy"]}, step=1)
