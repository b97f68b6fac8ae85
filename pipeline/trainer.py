"""The train stage's Hugging Face Trainer, shared by every fine-tuned model kind (`pipeline.fitting` fits with it).

Dynamic padding (DataCollatorWithPadding), length-grouped batches, a class- and row-weighted cross-entropy,
validation and checkpoints per epoch (at most `train.max_evaluations` per run), early stopping on validation
macro-F1, per-epoch metrics into the caller's MLflow run, the precision for the device (`train.precision`) and
the per-process batch under torchrun.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline import LABELS, distributed, progress
from pipeline.errors import PipelineError
from pipeline.splits import class_weights

log = logging.getLogger(__name__)

# On a GPU, padded widths that are multiples of 8 hit the tensor-core kernels; on a CPU every extra token costs.
GPU_PAD_MULTIPLE = 8

def log_metrics(metrics: dict[str, float], step: int) -> None:
    """Into the caller's MLflow run, if there is one (fold fits and tests may have none)."""
    import mlflow

    if distributed.is_main() and mlflow.active_run() is not None and metrics:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_tags(tags: dict[str, str]) -> None:
    """Into the caller's MLflow run, if there is one."""
    import mlflow

    if distributed.is_main() and mlflow.active_run() is not None and tags:
        mlflow.set_tags(tags)


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
        """Per-epoch train loss and validation metrics into the caller's MLflow run (no run of its own), and each
        validation as one log line (the Trainer's own printing of its log dicts is switched off)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            picked = {renames[k]: v for k, v in (logs or {}).items() if k in renames and isinstance(v, (int, float))}
            if picked:
                picked["epoch"] = float(state.epoch or 0)
                log_metrics(picked, step=int(state.global_step))
                if "val_macro_f1" in picked:
                    log.info("train: step %d (epoch %.0f): validation macro-F1 %.3f, loss %.3f", state.global_step,
                             picked["epoch"], picked["val_macro_f1"], picked.get("val_loss", float("nan")))

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
        disable_tqdm=not progress.interactive(),  # a bar on a terminal only (pipeline.progress)
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
    trainer = sample_weighted_trainer(weights)(
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
    quiet_progress(trainer)
    return trainer


def quiet_progress(trainer) -> None:
    """Take the Trainer's own printing out: its log dicts never (PrinterCallback prints them to stdout when there is
    no bar, ProgressCallback writes them under the bar); the bar itself stays, on a terminal only
    (`disable_tqdm`). The numbers are in the log lines of MlflowEpochLogger and in MLflow."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(BarOnly)
