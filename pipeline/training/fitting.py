"""Fitting a stance model, shared by the train and evaluate stages: the kind registry chooses who fits.

`fit_model(cfg, split, work_dir)` trains on a split through the module of `model.kind` (pipeline.models.kinds)
and writes a complete stance model directory (`<work_dir>/model`, renamed into place when finished; a wrapper
kind, the hybrid, wraps it first when its key is set); with `train.self_training.rounds` the kind is fitted
again on its own confident predictions first (pipeline.training.self_training). `refit_on_all` fits the served
model again on every labelled row.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from pipeline.core import distributed
from pipeline.core.io import read_json_file
from pipeline.labeling.splits import HUMAN_SOURCES, Split, training_rows
from pipeline.models import kinds, reuse
from pipeline.models.base import TRAINING_FILE
from pipeline.models.trainer import log_tags
from pipeline.text.preprocess import TextPreprocessor
from pipeline.training import self_training

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"


def stance_kind(cfg: DictConfig) -> str:
    """The kind the configured fit writes into its model dir (a pooled transformer writes "encoder"); a one-line
    error for an unknown `model.kind`."""
    return kinds.written_kind(cfg)


def preflight(cfg: DictConfig) -> None:
    """Refuse a bad preprocessing choice or an unavailable model before any run is opened or data is split."""
    TextPreprocessor.from_cfg(cfg)  # model.preprocess_as and model.context
    for module in (kinds.wrapper(cfg), kinds.fitter(cfg)):
        check = getattr(module, "preflight", None)
        if check is not None:
            check(cfg)


def fit_model(cfg: DictConfig, split: Split, work_dir: Path, *, resume_from: str | None = None) -> Path:
    """Train on split.train (early stopping on split.val) and write a stance model dir; returns its path."""
    work_dir = Path(work_dir)
    preprocess = TextPreprocessor.from_cfg(cfg)
    target = work_dir / MODEL_SUBDIR
    partial = work_dir / f"{MODEL_SUBDIR}.partial"
    if partial.exists() and distributed.is_main():
        shutil.rmtree(partial)
        reuse.forget(partial)
    fitter, wrapper = kinds.fitter(cfg), kinds.wrapper(cfg)
    learned = partial / "learned" if wrapper else partial
    fitter.fit(cfg, split, work_dir, learned, preprocess, resume_from=resume_from)
    # train.self_training: the same kind fitted again with its confident predictions on the pool (any kind).
    self_training.fit_rounds(cfg, split, learned, work_dir,
                             lambda rows, out, round_dir: fitter.fit(cfg, rows, round_dir, out, preprocess))
    if not distributed.is_main():  # a multi-process run: rank 0 writes the model; wait until it is in place
        distributed.barrier()
        return target
    if wrapper:
        wrapper.wrap(partial, learned, cfg)
    # The finished model appears in one rename: a directory named `model` is always complete.
    if target.exists():
        shutil.rmtree(target)
        reuse.forget(target)
    os.replace(partial, target)
    reuse.moved(partial, target)  # the model the fit left in memory (pipeline.models.reuse) goes with it
    distributed.barrier()
    return target


def refit_on_all(cfg: DictConfig, data, fitted_dir: Path, work_dir: Path) -> Path:
    """`train.refit=all`: the served model, fitted again on every labelled training row (all gold articles, the
    test ones included, annotations and rule labels as `train.sources` / `train.weak` say) for the optimiser step
    count of the first fit (the steps behind its saved weights: those validation chose, or all it made). The step
    count, not the epoch count: the recipe was validated at so many updates, and the same epochs over more rows
    would make more (60 steps on 53 rows became 75 on 74). Written to `<work_dir>/final/model`."""
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
    pool = frame[~frame["source"].isin(HUMAN_SOURCES)].reset_index(drop=True)  # every sentence to label
    return fit_model(refit_cfg, Split("refit", rows.reset_index(drop=True), empty, empty, pool=pool),
                     Path(work_dir) / "final")
