"""The transformer kind: fine-tuning a pretrained encoder with its classification head (`model.kind=transformer`,
conf/model/arabert.yaml), or with a pooled linear head (`model.pooling`: writes a model dir of kind "encoder",
served by pipeline.models.encoder); `model.kind=tiny` is the same fine-tuning of a tiny BERT built here.

The small-data recipe lives here: the step floor (`epochs_for`), the linear-probe head (`initialise_head`),
what stays frozen (`frozen_parameters`); the Trainer is pipeline.models.trainer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline import LABELS
from pipeline.core import distributed
from pipeline.core.errors import PipelineError
from pipeline.core.io import write_text_atomic
from pipeline.models import reuse
from pipeline.models.base import TRAINING_FILE, write_model_metadata
from pipeline.models.batching import TransformerPredictor, context_separator
from pipeline.models.encoder import (frozen_features, layer_inputs, load_linear, output_layer,
                                     pooled_classifier)
from pipeline.models.head import fit_logistic, head_settings, sample_weights
from pipeline.models.loading import base_model_dir, check_source, from_scratch, load_tokenizer_and_model
from pipeline.models.trainer import CHECKPOINT_SUBDIR, build_trainer, log_metrics
from pipeline.text.context import contexts_of
from pipeline.text.preprocess import TextPreprocessor

log = logging.getLogger(__name__)

METHOD = "transformer"  # the `model_kind` tag of its runs (pipeline.models.kinds)

CHECKPOINTS = True  # the fit keeps Trainer checkpoints: train.resume continues them, torchrun runs it


def extra_callbacks() -> list:
    """Trainer callbacks added to every fine-tuning run (empty; a seam for tests and experiments)."""
    return []


def fit(cfg: DictConfig, split, work_dir: Path, out: Path, preprocess: TextPreprocessor, *,
        resume_from: str | None = None) -> None:
    """Fine-tune on split.train (early stopping on split.val) with the stage's Trainer; write the model to `out`."""
    import torch
    from transformers import set_seed


    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    # A tiny model is built by rank 0 of a multi-process run; the other ranks read it.
    base = distributed.from_main(lambda: base_model_dir(cfg, preprocess(split.train["text"]),
                                                        work_dir / "base_model", LABELS))
    pooling = OmegaConf.select(cfg, "model.pooling", default=None)
    set_seed(int(cfg.seed))  # the new classification head is initialised from this seed
    tokenizer, model = load_tokenizer_and_model(base, LABELS, hub_timeout_s=float(cfg.model.hub_timeout_s),
                                                encoder_only=bool(pooling))
    # What the model reads: each sentence preprocessed, with its context where the model reads one.
    separator = context_separator(tokenizer)
    train_texts = preprocess.inputs(split.train["text"].tolist(), contexts_of(split.train, preprocess.context), separator)
    val_texts = preprocess.inputs(split.val["text"].tolist(), contexts_of(split.val, preprocess.context), separator)
    if pooling:
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
    base_name = (f"tiny-bert (built from {len(train_texts)} training sentences)" if from_scratch(cfg)
                 else str(cfg.model.name_or_path))
    kind = written_kind(cfg)
    if pooling:
        out.mkdir(parents=True, exist_ok=True)
        model.encoder.save_pretrained(out)
        tokenizer.save_pretrained(out)
        model.export_head().save(out)
        reuse.remember(out, tokenizer, model.encoder)
    else:
        trainer.save_model(str(out))  # model + tokenizer (the processing class); config has our id2label
        reuse.remember(out, tokenizer, trainer.model)
    # in a train run (pipeline.models.reuse), scoring and calibration take the fitted model from memory
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


def initialise_head(cfg: DictConfig, model, tokenizer, train_texts: Sequence[str], train_rows: pd.DataFrame, *,
                    pooled: bool) -> None:
    """`train.head_init=linear_probe`: the head starts as the logistic regression fitted on the features it reads,
    computed by the frozen encoder (a pooled head: the pooled embedding; the checkpoint's own classification layer:
    its input, BERT's pooled [CLS] state). Fine-tuning then starts where a frozen-encoder model ends instead of
    tearing the pretrained features down to fit a random head; on tens of sentences the random head learned nothing."""
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


# ---------------------------------------------------------------- the kind (pipeline.models.kinds)

def written_kind(cfg: DictConfig) -> str:
    """A pooled head (`model.pooling`) is saved as an encoder + head.json: kind "encoder"; else "transformer"."""
    return "encoder" if OmegaConf.select(cfg, "model.pooling", default=None) else "transformer"


def preflight(cfg: DictConfig) -> None:
    check_source(cfg)


def load(model_dir: Path, meta: dict, **options) -> TransformerPredictor:
    return TransformerPredictor(model_dir, meta, **options)
