"""The train stage's Hugging Face Trainer, shared by every fine-tuned model kind (`pipeline.training.fitting` fits with it).

Dynamic padding (DataCollatorWithPadding), length-grouped batches, a class- and row-weighted cross-entropy,
validation and checkpoints per epoch (at most `train.max_evaluations` per run), early stopping on validation
macro-F1, per-epoch metrics into the caller's MLflow run, the precision for the device (`train.precision`) and
the per-process batch under torchrun.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline import LABELS
from pipeline.core import distributed, progress
from pipeline.core.errors import PipelineError
from pipeline.labeling.splits import class_weights

log = logging.getLogger(__name__)

# On a GPU, padded widths that are multiples of 8 hit the tensor-core kernels; on a CPU every extra token costs.
CHECKPOINT_SUBDIR = "checkpoints"  # in a fit's work dir: the Trainer's checkpoints (train.resume continues them)
GPU_PAD_MULTIPLE = 8

_quiet = {"fits": 0}  # > 0 while fits that are not the run's own train (inner folds: pipeline.training.inner_cv)


@contextlib.contextmanager
def run_logging_off():
    """Fits made inside this block log nothing to the active MLflow run (an inner fold's curves are not the run's)."""
    _quiet["fits"] += 1
    try:
        yield
    finally:
        _quiet["fits"] -= 1


def _logging() -> bool:
    import mlflow

    return distributed.is_main() and not _quiet["fits"] and mlflow.active_run() is not None


def log_metrics(metrics: dict[str, float], step: int) -> None:
    """Into the caller's MLflow run, if there is one (fold fits and tests may have none)."""
    import mlflow

    if metrics and _logging():
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_tags(tags: dict[str, str]) -> None:
    """Into the caller's MLflow run, if there is one."""
    import mlflow

    if tags and _logging():
        mlflow.set_tags(tags)


def encode(tokenizer, texts: Sequence[str], labels: Sequence[str], max_length: int, pad_to_max: bool):
    import datasets

    enc = tokenizer(list(texts), truncation=True, max_length=max_length,
                    padding="max_length" if pad_to_max else False)
    columns = {k: list(v) for k, v in enc.items()}
    columns["labels"] = [LABELS.index(x) for x in labels]
    return datasets.Dataset.from_dict(columns)


def _macro_f1_metrics(eval_pred) -> dict[str, float]:
    from pipeline.models.metrics import classification_metrics

    logits, label_ids = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    pred = [LABELS[i] for i in np.asarray(logits).argmax(axis=-1)]
    gold = [LABELS[int(i)] for i in np.asarray(label_ids)]
    m = classification_metrics(gold, pred)
    return {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"]}


def row_weights(labels, class_weight=None, sample_weight=None):
    """Each row's weight in the loss: its sample weight (`train.source_weights`; 1 without) × its label's class
    weight (`train.class_weights`; 1 without)."""
    import torch

    weight = (torch.ones(labels.shape[0], dtype=torch.float32, device=labels.device) if sample_weight is None
              else sample_weight.to(labels.device, torch.float32))
    if class_weight is not None:
        weight = weight * torch.as_tensor(class_weight, dtype=torch.float32, device=labels.device)[labels]
    return weight


def weighted_loss(logits, labels, *, class_weight=None, sample_weight=None, step_weight=None, processes: int = 1):
    """The one loss of every fine-tuning run: Σ w·CE / Σ w over the rows of one optimiser step, w = `row_weights`.

    `step_weight` is Σ w over the whole step: every micro-batch of gradient accumulation and every process (the
    Trainer's `get_batch_samples` below sums it before the step). Each micro-batch then contributes its share, the
    shares add up to the step's weighted mean, and × `processes` undoes DDP's averaging of the gradients over
    processes. Without `step_weight` (evaluation) the batch is its own step. With no sample weights and one batch
    per step this is torch's `cross_entropy(weight=class_weight)`."""
    import torch

    logits = logits.view(-1, logits.shape[-1])
    labels = labels.view(-1)
    weight = row_weights(labels, class_weight, sample_weight).to(logits.dtype)
    per_row = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    total = weight.sum() if step_weight is None else torch.as_tensor(step_weight, dtype=logits.dtype,
                                                                     device=logits.device)
    return processes * (per_row * weight).sum() / total.clamp(min=torch.finfo(logits.dtype).tiny)


def weighted_trainer(class_weight: np.ndarray | None):
    """A Trainer whose loss is `weighted_loss`, normalised over each whole optimiser step (its own
    `get_batch_samples` sums the step's row weights across micro-batches and processes); training_step then
    takes the loss as it is (`loss_is_scaled_for_ga`)."""
    import torch
    from transformers import Trainer

    class WeightedLossTrainer(Trainer):
        loss_is_scaled_for_ga = True  # weighted_loss is already a share of the whole step's weighted mean

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            batches = []
            for _ in range(num_batches):
                try:
                    batches.append(next(epoch_iterator))
                except StopIteration:
                    break
            if not batches:
                return batches, None
            total = sum(row_weights(b["labels"].to(device), class_weight, b.get("sample_weight")).sum()
                        for b in batches).reshape(1)
            if self.args.world_size > 1:
                total = self.accelerator.gather(total)
            return batches, total.sum()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            sample_weight = inputs.pop("sample_weight", None)
            outputs = model(**inputs)
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            # Training steps come with the step's total weight (get_batch_samples); evaluation batches stand alone.
            step_weight = num_items_in_batch if model.training and torch.is_tensor(num_items_in_batch) else None
            loss = weighted_loss(logits, labels, class_weight=class_weight, sample_weight=sample_weight,
                                 step_weight=step_weight,
                                 processes=self.accelerator.num_processes if step_weight is not None else 1)
            return (loss, outputs) if return_outputs else loss

    return WeightedLossTrainer


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
        disable_tqdm=not progress.interactive(),  # a bar on a terminal only (pipeline.core.progress)
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
    planned_epochs = float(cfg.train.epochs if epochs is None else epochs)
    if max_steps:  # a fixed step count (the refit's): as many epochs as those steps take
        planned_epochs = max_steps / max(1, -(-len(train_texts) // (int(cfg.train.batch_size)
                                                                   * int(cfg.train.grad_accumulation))))
    trainer = weighted_trainer(weights)(
        model=model,
        args=training_arguments(cfg, output_dir, has_val=has_val, max_steps=max_steps, save=save, epochs=epochs,
                                eval_every=evaluation_interval(cfg, planned_epochs, len(train_texts))),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer,
                                              pad_to_multiple_of=GPU_PAD_MULTIPLE if torch.cuda.is_available() else None),
        compute_metrics=_macro_f1_metrics if has_val else None,
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
