"""Fitting a stance model, shared by the train and evaluate stages (and any new model kind).

`fit_model(cfg, split, work_dir)` trains on a split and writes a complete stance model directory
(`<work_dir>/model`, renamed into place when finished); fine-tuned kinds train with `pipeline.trainer.build_trainer`.
The small-data recipe lives here: the step floor (`epochs_for`), the linear-probe head (`probe_head`) and the
refit on every labelled row (`refit_on_all`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline import LABELS, distributed
from pipeline.errors import PipelineError
from pipeline.io import read_json_file, write_text_atomic
from pipeline.preprocess import TextPreprocessor
from pipeline.splits import Split
from pipeline.trainer import build_trainer, log_metrics, log_tags

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"
CHECKPOINT_SUBDIR = "checkpoints"


def extra_callbacks() -> list:
    """Trainer callbacks added to every fine-tuning run (empty; a seam for tests and experiments)."""
    return []


MODEL_KINDS = ("transformer", "tiny", "tfidf", "frozen")
TRAINING_FILE = "training.json"  # in a model dir: how it was fitted (epochs), read back by a refit


def stance_kind(cfg: DictConfig) -> str:
    """How the configured model is fitted: transformer (fine-tuning; `tiny` too), tfidf, or frozen (encoder + LR)."""
    kind = str(cfg.model.kind)
    if kind not in MODEL_KINDS:
        raise PipelineError(f"model.kind={kind!r} is not known; use {', '.join(MODEL_KINDS)}")
    return "transformer" if kind == "tiny" else kind


def preflight(cfg: DictConfig) -> None:
    """Refuse a bad preprocessing choice or an unavailable model before any run is opened or data is split."""
    from pipeline.modeling import check_preprocessing_matches, resolve_source

    preprocess_as = OmegaConf.select(cfg, "model.preprocess_as", default=None)
    TextPreprocessor(preprocess_as)
    if hybrid_enabled(cfg):
        from pipeline.rules import load_lexicon

        load_lexicon(cfg.labeling.lexicon)
    if str(cfg.model.kind) in ("transformer", "frozen") and OmegaConf.select(cfg, "model.name_or_path", default=None):
        check_preprocessing_matches(str(cfg.model.name_or_path), preprocess_as)
        resolve_source(str(cfg.model.name_or_path), hub_timeout_s=float(cfg.model.hub_timeout_s))


def fit_model(cfg: DictConfig, split: Split, work_dir: Path, *, resume_from: str | None = None) -> Path:
    """Train on split.train (early stopping on split.val) and write a stance model dir; returns its path."""
    work_dir = Path(work_dir)
    preprocess = TextPreprocessor.from_cfg(cfg)
    target = work_dir / MODEL_SUBDIR
    partial = work_dir / f"{MODEL_SUBDIR}.partial"
    if partial.exists() and distributed.is_main():
        shutil.rmtree(partial)
    kind = stance_kind(cfg)
    learned = partial / "learned" if hybrid_enabled(cfg) else partial
    if kind == "tfidf":
        _fit_tfidf(cfg, split, learned, preprocess)
    elif kind == "frozen":
        from pipeline.frozen import fit_frozen

        fit_frozen(cfg, split, work_dir, learned, preprocess)
    else:
        _fit_transformer(cfg, split, work_dir, learned, preprocess, resume_from)
    if not distributed.is_main():  # a multi-process run: rank 0 writes the model; wait until it is in place
        distributed.barrier()
        return target
    if hybrid_enabled(cfg):
        from pipeline.hybrid import write_hybrid_model

        write_hybrid_model(partial, learned, cfg)
    # The finished model appears in one rename: a directory named `model` is always complete.
    if target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)
    distributed.barrier()
    return target


def _fit_tfidf(cfg: DictConfig, split: Split, out: Path, preprocess: TextPreprocessor) -> None:
    from pipeline.baselines import fit_tfidf
    from pipeline.inference import write_model_metadata
    from pipeline.model_trust import save_sklearn

    pipe = fit_tfidf(preprocess(split.train["text"]), split.train["label"], cfg.model.tfidf, int(cfg.seed),
                     sample_weight=sample_weights(split.train))
    out.mkdir(parents=True, exist_ok=True)
    save_sklearn(pipe, out)
    write_model_metadata(out, kind="tfidf", labels=LABELS, max_length=int(cfg.train.max_length),
                         base_model="tfidf+logistic-regression", preprocessor=preprocess)
    if len(split.val):
        from pipeline.baselines import tfidf_proba
        from pipeline.metrics import classification_metrics

        pred = [LABELS[i] for i in tfidf_proba(pipe, preprocess(split.val["text"])).argmax(axis=1)]
        val = classification_metrics(split.val["label"], pred)
        log_metrics({"val_macro_f1": val["macro_f1"], "val_accuracy": val["accuracy"]}, step=1)


def hybrid_enabled(cfg: DictConfig) -> bool:
    return bool(OmegaConf.select(cfg, "train.hybrid.enabled", default=False))


def sample_weights(rows: pd.DataFrame) -> np.ndarray:
    """Per-row training weights (`train.source_weights`, set by splits.training_rows); 1 where there are none."""
    if "weight" not in rows.columns:
        return np.ones(len(rows))
    return pd.to_numeric(rows["weight"], errors="coerce").fillna(1.0).to_numpy(dtype=float)


def _fit_transformer(cfg: DictConfig, split: Split, work_dir: Path, out: Path, preprocess: TextPreprocessor,
                     resume_from: str | None) -> None:
    import torch
    from transformers import set_seed

    from pipeline.inference import write_model_metadata
    from pipeline.modeling import base_model_dir, load_tokenizer_and_model

    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    train_texts = preprocess(split.train["text"])
    val_texts = preprocess(split.val["text"])
    # A tiny model is built by rank 0 of a multi-process run; the other ranks read it.
    base = distributed.from_main(lambda: base_model_dir(cfg, train_texts, work_dir / "base_model", LABELS))
    pooling = OmegaConf.select(cfg, "model.pooling", default=None)
    set_seed(int(cfg.seed))  # the new classification head is initialised from this seed
    tokenizer, model = load_tokenizer_and_model(base, LABELS, hub_timeout_s=float(cfg.model.hub_timeout_s),
                                                encoder_only=bool(pooling))
    if pooling:
        from pipeline.encoder_head import pooled_classifier

        model = pooled_classifier(model, len(LABELS), pooling=str(pooling),
                                  dropout=float(getattr(model.config, "hidden_dropout_prob", 0.1)),
                                  normalize=bool(OmegaConf.select(cfg, "model.normalize", default=False)))
    initialise_head(cfg, model, tokenizer, train_texts, split.train, pooled=bool(pooling))
    for param in frozen_parameters(cfg, model, pooled=bool(pooling)):
        param.requires_grad = False
    epochs = epochs_for(cfg, len(train_texts))
    max_steps = OmegaConf.select(cfg, "train.max_steps", default=None)
    trainer = build_trainer(cfg, model, tokenizer, train_texts, split.train["label"].tolist(), val_texts,
                            split.val["label"].tolist(), work_dir / CHECKPOINT_SUBDIR, callbacks=extra_callbacks(),
                            epochs=epochs, max_steps=int(max_steps) if max_steps else None,
                            sample_weight=sample_weights(split.train))
    if resume_from:
        log.info("resuming from %s", resume_from)
    trainer.train(resume_from_checkpoint=resume_from)
    if not distributed.is_main():
        return  # rank 0 saves the model (the Trainer saves checkpoints from rank 0 only too)
    best = trainer.state.best_metric
    if trainer.state.best_model_checkpoint and best is not None:
        log.info("best checkpoint %s (validation macro-F1 %.4f)", trainer.state.best_model_checkpoint, best)
    base_name = str(cfg.model.name_or_path) if str(cfg.model.kind) != "tiny" else f"tiny-bert (built from {len(train_texts)} training sentences)"
    if pooling:
        out.mkdir(parents=True, exist_ok=True)
        model.encoder.save_pretrained(out)
        tokenizer.save_pretrained(out)
        model.export_head().save(out)
        kind = "encoder"
    else:
        trainer.save_model(str(out))  # model + tokenizer (the processing class); config has our id2label
        kind = "transformer"
    write_model_metadata(out, kind=kind, labels=LABELS, max_length=int(cfg.train.max_length),
                         base_model=base_name, preprocessor=preprocess)
    best_epoch = best_epoch_of(trainer.state)
    # The optimiser steps behind the saved weights: the best checkpoint's when validation restored one.
    steps = int(trainer.state.best_global_step if len(val_texts) and trainer.state.best_global_step
                else trainer.state.global_step)
    summary = {"epochs_trained": float(trainer.state.epoch or 0), "epochs_planned": float(epochs),
               "optimizer_steps": float(steps)}
    if best is not None:
        summary["best_val_macro_f1"] = float(best)
    if best_epoch:
        summary["best_epoch"] = float(best_epoch)
    write_text_atomic(out / TRAINING_FILE, json.dumps({"epochs": epochs, "best_epoch": best_epoch, "steps": steps,
                                                        "train_rows": len(train_texts)}))
    log_metrics(summary, step=int(trainer.state.global_step))


HEAD_INITS = ("random", "linear_probe")


def head_settings(cfg: DictConfig) -> dict:
    """The logistic-regression head's settings (`train.head`, `train.class_weights`, `seed`): the frozen kind's
    head and the linear probe are one model, fitted by `encoder_head.fit_logistic`."""
    head = OmegaConf.select(cfg, "train.head", default=None) or {}
    return {"C": float(head.get("C", 1.0)), "max_iter": int(head.get("max_iter", 5000)),
            "class_weight": "balanced" if str(cfg.train.class_weights) == "balanced" else None, "seed": int(cfg.seed)}


def initialise_head(cfg: DictConfig, model, tokenizer, train_texts: Sequence[str], train_rows: pd.DataFrame, *,
                    pooled: bool) -> None:
    """`train.head_init=linear_probe`: the head starts as the logistic regression fitted on the features it reads,
    computed by the frozen encoder (a pooled head: the pooled embedding; the checkpoint's own classification layer:
    its input, BERT's pooled [CLS] state). Fine-tuning then starts where a frozen-encoder model ends instead of
    tearing the pretrained features down to fit a random head; on tens of sentences the random head learned nothing."""
    from pipeline.encoder_head import fit_logistic, frozen_features, layer_inputs, load_linear, output_layer

    head_init = str(OmegaConf.select(cfg, "train.head_init", default="random"))
    if head_init not in HEAD_INITS:
        raise PipelineError(f"train.head_init={head_init!r}: choose one of {', '.join(HEAD_INITS)}")
    if head_init == "random":
        return
    if pooled:
        layer = model.head
        features = lambda batch: model.embed(batch["input_ids"], batch["attention_mask"])  # noqa: E731
    else:
        layer = output_layer(model, len(LABELS))
        features = layer_inputs(model, layer)
    x = frozen_features(model, tokenizer, list(train_texts), features, max_length=int(cfg.train.max_length),
                        batch_size=int(cfg.train.eval_batch_size))
    weight, bias = fit_logistic(x, train_rows["label"].tolist(), LABELS, sample_weight=sample_weights(train_rows),
                                **head_settings(cfg))
    load_linear(layer, weight, bias)
    log.info("train: head initialised by a linear probe on %d frozen %s", len(train_texts),
             "pooled embeddings" if pooled else "classification-layer inputs")


def frozen_parameters(cfg: DictConfig, model, *, pooled: bool) -> list:
    """The parameters `train.freeze_embeddings` keeps fixed: a pretrained encoder's word-embedding table (tens of
    sentences cannot re-learn 250k rows, and Adam over them dominates a CPU step). A model built from scratch has
    nothing pretrained to keep: its random embeddings always train."""
    from pipeline.modeling import from_scratch

    if from_scratch(cfg) or not bool(OmegaConf.select(cfg, "train.freeze_embeddings", default=False)):
        return []
    return list((model.encoder if pooled else model).get_input_embeddings().parameters())


def epochs_for(cfg: DictConfig, n_train: int) -> float:
    """`train.epochs`, raised so that training takes at least `train.min_steps` optimiser steps.

    Pretrained weights need on the order of a hundred updates before a new head and the top layers agree; on
    tens of sentences a fixed epoch count is a handful of steps (the default recipe once made 15 and learned
    nothing). Warm-up is a share of the total, so it scales with the floor."""
    import math

    t = cfg.train
    if t.epochs is None:
        raise PipelineError("train.epochs must be set for a transformer model")
    min_steps = int(OmegaConf.select(cfg, "train.min_steps", default=0) or 0)
    steps_per_epoch = max(1, math.ceil(n_train / (int(t.batch_size) * int(t.grad_accumulation))))
    epochs = float(t.epochs)
    if min_steps and epochs * steps_per_epoch < min_steps:
        raised = float(math.ceil(min_steps / steps_per_epoch))
        log.info("train: %g epochs of %d rows are %d optimiser steps, below train.min_steps=%d: training %g epochs",
                 epochs, n_train, int(epochs * steps_per_epoch), min_steps, raised)
        epochs = raised
    return epochs


def best_epoch_of(state) -> int | None:
    """The epoch of the best validation macro-F1 in a finished Trainer's log, or None without validation."""
    scored = [(e.get("eval_macro_f1"), e.get("epoch")) for e in state.log_history if "eval_macro_f1" in e]
    if not scored:
        return None
    best_f1 = max(f for f, _ in scored)
    return int(round(next(ep for f, ep in scored if f == best_f1)))


def refit_on_all(cfg: DictConfig, data, fitted_dir: Path, work_dir: Path) -> Path:
    """`train.refit=all`: the served model, fitted again on every labelled training row (all gold articles, the
    test ones included, annotations and rule labels as `train.sources` / `train.weak` say) for the optimiser step
    count of the first fit (the steps behind its saved weights: those validation chose, or all it made). The step
    count, not the epoch count: the recipe was validated at so many updates, and the same epochs over more rows
    would make more (60 steps on 53 rows became 75 on 74). Written to `<work_dir>/final/model`."""
    from pipeline.splits import Split, training_rows

    frame = data.frame if data.test_frame is None else pd.concat([data.frame, data.test_frame], ignore_index=True)
    rows = training_rows(frame, cfg)
    refit_cfg = cfg.copy()
    record = next((p / TRAINING_FILE for p in (Path(fitted_dir), Path(fitted_dir) / "inner")
                   if (p / TRAINING_FILE).exists()), None)
    planned = ""
    if record is not None:
        fitted = read_json_file(record, "it is written by every fine-tuning fit; re-train the model")
        if fitted.get("steps"):
            refit_cfg.train.max_steps = int(fitted["steps"])
            planned = f" ({int(fitted['steps'])} optimiser steps, as the first fit)"
        else:  # a model dir written before the step count was recorded
            refit_cfg.train.epochs = float(fitted.get("best_epoch") or fitted["epochs"])
            refit_cfg.train.min_steps = 0
            planned = f" ({refit_cfg.train.epochs:g} epochs)"
    sources = ", ".join(f"{k}={v}" for k, v in rows["source"].value_counts().sort_index().items())
    log.info("train: refit on all %d labelled rows (%s) for the served model%s", len(rows), sources, planned)
    log_tags({"refit_sources": sources})
    empty = rows.iloc[:0]
    return fit_model(refit_cfg, Split("refit", rows.reset_index(drop=True), empty, empty), Path(work_dir) / "final")
