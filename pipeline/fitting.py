"""Fitting a stance model, shared by the train and evaluate stages (and any new model kind).

`fit_model(cfg, split, work_dir)` trains on a split and writes a complete stance model directory
(`<work_dir>/model`, renamed into place when finished); `build_trainer` is the Hugging Face Trainer it uses:
dynamic padding, length grouping, class-weighted loss, early stopping on validation macro-F1, and per-epoch
metrics into the caller's MLflow run.
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
from pipeline.io import write_text_atomic
from pipeline.preprocess import TextPreprocessor
from pipeline.splits import Split, class_weights

log = logging.getLogger(__name__)

# On a GPU, padded widths that are multiples of 8 hit the tensor-core kernels; on a CPU every extra token costs.
GPU_PAD_MULTIPLE = 8

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
    import joblib

    from pipeline.baselines import fit_tfidf
    from pipeline.inference import TFIDF_FILE, write_model_metadata

    pipe = fit_tfidf(preprocess(split.train["text"]), split.train["label"], cfg.model.tfidf, int(cfg.seed),
                     sample_weight=sample_weights(split.train))
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipe, out / TFIDF_FILE)
    write_model_metadata(out, kind="tfidf", labels=LABELS, max_length=int(cfg.model.max_length),
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


def log_metrics(metrics: dict[str, float], step: int) -> None:
    """Into the caller's MLflow run, if there is one (fold fits and tests may have none)."""
    import mlflow

    if distributed.is_main() and mlflow.active_run() is not None and metrics:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def encode(tokenizer, texts: Sequence[str], labels: Sequence[str], max_length: int, pad_to_max: bool):
    import datasets

    enc = tokenizer(list(texts), truncation=True, max_length=max_length,
                    padding="max_length" if pad_to_max else False)
    columns = {k: list(v) for k, v in enc.items()}
    columns["labels"] = [LABELS.index(x) for x in labels]
    return datasets.Dataset.from_dict(columns)


def _macro_f1_metrics(eval_pred) -> dict[str, float]:
    from pipeline.metrics import classification_metrics

    logits, label_ids = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    pred = [LABELS[i] for i in np.asarray(logits).argmax(axis=-1)]
    gold = [LABELS[int(i)] for i in np.asarray(label_ids)]
    m = classification_metrics(gold, pred)
    return {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"]}


def weighted_loss(weights: np.ndarray | None):
    """compute_loss_func for Trainer: cross-entropy with class weights (None = plain cross-entropy)."""
    import torch

    weight_tensor = None if weights is None else torch.tensor(weights, dtype=torch.float32)

    def loss_fn(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        w = None if weight_tensor is None else weight_tensor.to(logits.device, logits.dtype)
        per_item = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1),
                                                     weight=w, reduction="none")
        if num_items_in_batch is not None:
            # Trainer sums over gradient-accumulation steps and expects normalisation by the item count.
            return per_item.sum() / num_items_in_batch
        denom = per_item.new_tensor(len(per_item)) if w is None else w[labels.view(-1)].sum()
        return per_item.sum() / denom

    return loss_fn


def sample_weighted_trainer(class_weight: np.ndarray | None):
    """Trainer whose loss multiplies each example's loss by its `sample_weight` column, when the data has one
    (gold and rule labels weighted per `train.source_weights`), on top of the class weights; otherwise the stock
    loss path (`compute_loss_func`)."""
    import torch
    from transformers import Trainer

    class_w_tensor = None if class_weight is None else torch.tensor(class_weight, dtype=torch.float32)

    class SampleWeightedTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weight = inputs.pop("sample_weight", None)
            if weight is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            class_w = None if class_w_tensor is None else class_w_tensor.to(logits.device, logits.dtype)
            per_item = torch.nn.functional.cross_entropy(logits, labels, weight=class_w, reduction="none")
            weight = weight.to(logits.device, logits.dtype)
            scale = weight if class_w is None else weight * class_w[labels]
            loss = (per_item * weight).sum() / scale.sum().clamp(min=1e-12)
            return (loss, outputs) if return_outputs else loss

    return SampleWeightedTrainer


def mlflow_epoch_logger():
    from transformers import TrainerCallback

    renames = {"loss": "train_loss", "eval_loss": "val_loss", "eval_macro_f1": "val_macro_f1",
               "eval_accuracy": "val_accuracy", "learning_rate": "learning_rate", "grad_norm": "grad_norm"}

    class MlflowEpochLogger(TrainerCallback):
        """Per-epoch train loss and validation metrics into the caller's MLflow run (no run of its own)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            picked = {renames[k]: v for k, v in (logs or {}).items() if k in renames and isinstance(v, (int, float))}
            if picked:
                picked["epoch"] = float(state.epoch or 0)
                log_metrics(picked, step=int(state.global_step))

    return MlflowEpochLogger()


def evaluation_interval(cfg: DictConfig, epochs: float, n_train: int) -> int | None:
    """Optimiser steps between validations (and checkpoints), or None for once per epoch.

    The step floor makes tens of epochs of a few steps each; validating and saving a pretrained model after every
    one of them costs more than the training (a checkpoint of e5-small is ~0.5 GB) and early stopping on a dozen
    validation sentences would fire on noise. At most `train.max_evaluations` validations per run instead."""
    import math

    most = int(OmegaConf.select(cfg, "train.max_evaluations", default=0) or 0)
    if not most or epochs <= most:
        return None
    steps_per_epoch = max(1, math.ceil(n_train / (int(cfg.train.batch_size) * int(cfg.train.grad_accumulation))))
    return steps_per_epoch * math.ceil(epochs / most)


def training_arguments(cfg: DictConfig, output_dir: Path, *, has_val: bool, max_steps: int | None = None,
                       save: bool = True, epochs: float | None = None, eval_every: int | None = None):
    import torch
    from transformers import TrainingArguments

    t = cfg.train
    if t.lr is None or t.epochs is None:
        raise PipelineError("train.lr and train.epochs must be set for a transformer model")
    strategy = "steps" if eval_every else "epoch"
    precision = resolve_precision(str(OmegaConf.select(cfg, "train.precision", default="auto")))
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=float(t.epochs if epochs is None else epochs),
        max_steps=int(max_steps) if max_steps else -1,
        learning_rate=float(t.lr),
        per_device_train_batch_size=per_device_batch(int(t.batch_size)),
        per_device_eval_batch_size=int(t.eval_batch_size),
        gradient_accumulation_steps=int(t.grad_accumulation),
        weight_decay=float(t.weight_decay),
        warmup_steps=float(t.warmup_ratio),  # a float below 1 is a share of the total steps
        train_sampling_strategy="group_by_length" if bool(t.group_by_length) else "random",
        eval_strategy=strategy if has_val else "no",
        save_strategy=strategy if save else "no",
        eval_steps=eval_every,
        save_steps=eval_every,
        logging_strategy="epoch",
        load_best_model_at_end=has_val,
        metric_for_best_model="macro_f1" if has_val else None,
        greater_is_better=True,
        save_total_limit=int(t.save_total_limit),
        seed=int(cfg.seed),
        data_seed=int(cfg.seed),
        report_to="none",  # our own callback logs into the one run; the stock one would end it
        remove_unused_columns=False,  # our datasets hold model inputs, labels and sample_weight only
        use_cpu=not torch.cuda.is_available(),  # the device: the GPU (this rank's, under torchrun) when there is one
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_precision(requested: str, *, cuda: bool | None = None, bf16_supported: bool | None = None) -> str:
    """`train.precision`: auto = bf16 on a GPU that supports it (Ampere and later), else fp16 on a GPU, fp32 on
    the CPU; fp32 / fp16 / bf16 as asked, refused where the device cannot do it. `cuda` / `bf16_supported` default
    to what torch reports (tests pass them)."""
    import torch

    if requested not in PRECISIONS:
        raise PipelineError(f"train.precision={requested!r}: choose one of {', '.join(PRECISIONS)}")
    if cuda is None:
        cuda = torch.cuda.is_available()
    if bf16_supported is None:
        bf16_supported = bool(cuda and torch.cuda.is_bf16_supported())
    if requested == "auto":
        return ("bf16" if bf16_supported else "fp16") if cuda else "fp32"
    if requested == "fp16" and not cuda:
        raise PipelineError("train.precision=fp16 needs a GPU (none found); use auto or fp32 (or bf16 on a CPU "
                            "with bf16 support)")
    if requested == "bf16" and cuda and not bf16_supported:
        raise PipelineError("train.precision=bf16: this GPU has no bf16 support; use auto (fp16 here) or fp16")
    return requested


def per_device_batch(batch_size: int) -> int:
    """`train.batch_size` is the batch of one optimiser step whatever the number of processes: each of N
    processes (torchrun) takes batch_size / N rows, rounded up."""
    n = distributed.world_size()
    per_device = -(-batch_size // n)
    if per_device * n != batch_size:
        log.warning("train.batch_size=%d over %d processes: %d per process, %d per step", batch_size, n, per_device,
                    per_device * n)
    return per_device


def build_trainer(cfg: DictConfig, model, tokenizer, train_texts: Sequence[str], train_labels: Sequence[str],
                  val_texts: Sequence[str], val_labels: Sequence[str], output_dir: Path, *,
                  max_steps: int | None = None, callbacks: Sequence = (), save: bool = True,
                  epochs: float | None = None, sample_weight: Sequence[float] | None = None):
    """The stage's Trainer: dynamic padding, length grouping, class-weighted loss, early stopping on val macro-F1."""
    import torch
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback

    max_length = int(cfg.train.max_length)
    pad_to_max = bool(cfg.train.pad_to_max_length)
    train_ds = encode(tokenizer, train_texts, train_labels, max_length, pad_to_max)
    if sample_weight is not None and not np.allclose(sample_weight, 1.0):
        train_ds = train_ds.add_column("sample_weight", [float(w) for w in sample_weight])
    has_val = len(val_texts) > 0
    val_ds = encode(tokenizer, val_texts, val_labels, max_length, pad_to_max) if has_val else None
    weights = class_weights(pd.Series(list(train_labels)), str(cfg.train.class_weights))
    all_callbacks = [mlflow_epoch_logger(), *callbacks]
    if has_val and int(cfg.train.early_stopping_patience) > 0:
        all_callbacks.insert(0, EarlyStoppingCallback(early_stopping_patience=int(cfg.train.early_stopping_patience)))
    return sample_weighted_trainer(weights)(
        model=model,
        args=training_arguments(cfg, output_dir, has_val=has_val, max_steps=max_steps, save=save, epochs=epochs,
                                eval_every=None if max_steps else evaluation_interval(
                                    cfg, float(cfg.train.epochs if epochs is None else epochs), len(train_texts))),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer,
                                              pad_to_multiple_of=GPU_PAD_MULTIPLE if torch.cuda.is_available() else None),
        compute_metrics=_macro_f1_metrics if has_val else None,
        compute_loss_func=weighted_loss(weights),
        callbacks=all_callbacks,
    )


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
        if str(OmegaConf.select(cfg, "train.head_init", default="random")) == "linear_probe":
            model.load_head(probe_head(cfg, model, tokenizer, train_texts, split.train))
    if bool(OmegaConf.select(cfg, "train.freeze_embeddings", default=False)):
        # Tens of sentences cannot re-learn a 250k-word embedding table, and Adam over it dominates a CPU step.
        for param in (model.encoder if pooling else model).get_input_embeddings().parameters():
            param.requires_grad = False
    epochs = epochs_for(cfg, len(train_texts))
    trainer = build_trainer(cfg, model, tokenizer, train_texts, split.train["label"].tolist(), val_texts,
                            split.val["label"].tolist(), work_dir / CHECKPOINT_SUBDIR, callbacks=extra_callbacks(),
                            epochs=epochs, sample_weight=sample_weights(split.train))
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
    summary = {"epochs_trained": float(trainer.state.epoch or 0), "epochs_planned": float(epochs)}
    if best is not None:
        summary["best_val_macro_f1"] = float(best)
    if best_epoch:
        summary["best_epoch"] = float(best_epoch)
    write_text_atomic(out / TRAINING_FILE, json.dumps({"epochs": epochs, "best_epoch": best_epoch,
                                                        "train_rows": len(train_texts)}))
    log_metrics(summary, step=int(trainer.state.global_step))


def probe_head(cfg: DictConfig, model, tokenizer, train_texts: Sequence[str], train_rows: pd.DataFrame):
    """`train.head_init=linear_probe`: the head a frozen-encoder model would fit (`model.head.C`), to start from."""
    from pipeline.encoder_head import linear_probe_head

    head = linear_probe_head(model, tokenizer, list(train_texts), train_rows["label"].tolist(), LABELS,
                             sample_weight=sample_weights(train_rows),
                             C=float(OmegaConf.select(cfg, "model.head.C", default=1.0)),
                             class_weight="balanced" if str(cfg.train.class_weights) == "balanced" else None,
                             max_length=int(cfg.train.max_length), batch_size=int(cfg.train.eval_batch_size),
                             seed=int(cfg.seed))
    log.info("train: head initialised by a linear probe on %d frozen sentence embeddings", len(train_texts))
    return head


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
    test ones included, annotations and rule labels as `train.sources` / `train.weak` say) for the epoch count
    the first fit chose on validation (or trained, without validation). Written to `<work_dir>/final/model`."""
    from pipeline.splits import Split, training_rows

    frame = data.frame if data.test_frame is None else pd.concat([data.frame, data.test_frame], ignore_index=True)
    rows = training_rows(frame, cfg)
    refit_cfg = cfg.copy()
    record = next((p / TRAINING_FILE for p in (Path(fitted_dir), Path(fitted_dir) / "inner")
                   if (p / TRAINING_FILE).exists()), None)
    if record is not None:
        fitted = json.loads(record.read_text(encoding="utf-8"))
        refit_cfg.train.epochs = float(fitted.get("best_epoch") or fitted["epochs"])
        refit_cfg.train.min_steps = 0  # the count is decided; more rows now make more steps per epoch
    log.info("train: refit on all %d labelled rows for the served model%s", len(rows),
             f" ({refit_cfg.train.epochs:g} epochs)" if record is not None else "")
    empty = rows.iloc[:0]
    return fit_model(refit_cfg, Split("refit", rows.reset_index(drop=True), empty, empty), Path(work_dir) / "final")
