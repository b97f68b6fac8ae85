"""Train-time calibration: a temperature fitted only on predictions of rows the model never trained on, checked on
the test rows, saved with the model (train.calibrate).

    calibration = calibrate_model(cfg, data, split, model_dir, work_dir)   # before the test rows are scored
    calibrate_served(calibration, served_dir)                              # the refit (served) model's own T

The temperature of the fitted model comes from its validation rows, or, without a validation split (the small-data
recipe), from out-of-fold predictions over the training articles (`train.calibration_folds` inner fits,
pipeline.training.inner_cv): never from the test rows, which then measure it (`test_ece_before` / `test_ece_after`). The
ECE on the rows T was fitted on is logged under in-sample names (`calibration_insample_ece_*`). The served refit
has seen every row, so its T is fitted on every prediction made by a model that had not seen the row: the
out-of-fold (or validation) rows and the first fit's test rows. `calibration.json` goes into the directory whose
predictor computes the probabilities (a hybrid's inner model dir), so every serving path applies it.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline.core import distributed
from pipeline.models import reuse
from pipeline.models.calibration import (CALIBRATION_FILE, Calibration, expected_calibration_error, fit_temperature,
                                  reliability_diagram)
from pipeline.text.context import contexts_of

log = logging.getLogger(__name__)

RELIABILITY_FILE = "reliability.png"
HELD_OUT_FILE = "calibration_rows.csv"  # the rows T was fitted on, with their out-of-fold probabilities


def calibration_target(model_dir: Path | str) -> Path:
    """The directory whose predictor produces the probabilities: the model dir, or the one its kind names (a
    hybrid's inner dir)."""
    from pipeline.models import kinds
    from pipeline.models.base import read_model_metadata

    model_dir = Path(model_dir)
    hook = getattr(kinds.loader(read_model_metadata(model_dir)["kind"]), "calibration_dir", None)
    return Path(hook(model_dir)) if hook else model_dir


@dataclass
class HeldOut:
    rows: pd.DataFrame   # gold rows a model never trained on
    proba: np.ndarray    # raw (uncalibrated) probabilities of them
    name: str            # where they come from, for the record and the log


@dataclass
class TrainCalibration:
    calibration: Calibration   # the fitted model's, saved in its dir
    held_out: HeldOut          # what T was fitted on
    test: HeldOut              # the test rows, predicted raw by the fitted model
    test_ece_before: float     # ECE on the test rows, raw and with T (neither the model nor T saw them)
    test_ece_after: float


def _gold_index(rows: pd.DataFrame, labels) -> np.ndarray:
    labels = list(labels)
    return np.asarray([labels.index(str(x)) for x in rows["label"]], dtype=np.int64)


def held_out_predictions(cfg: DictConfig, data, split, model_dir: Path | str, work_dir: Path | str) -> HeldOut | None:
    """Predictions T may be fitted on: the model's own on the validation rows, else out-of-fold predictions over
    the training articles (inner fits of the same recipe, the learned model alone: a hybrid's rules take no T).
    Every rank runs the inner fits; only rank 0 gets the predictions."""
    from pipeline.models.base import load_predictor
    from pipeline.training.inner_cv import out_of_fold

    if split.val is not None and len(split.val):
        if not distributed.is_main():
            return None
        predictor = load_predictor(calibration_target(model_dir))
        return HeldOut(split.val, predictor.predict_proba(split.val["text"].tolist(),
                                                          batch_size=int(cfg.train.eval_batch_size),
                                                          context=contexts_of(split.val, predictor.context)), "validation")
    inner_cfg = cfg.copy()
    OmegaConf.update(inner_cfg, "train.hybrid.enabled", False, force_add=True)
    folds = OmegaConf.select(cfg, "train.calibration_folds", default=None)
    inner_dir = Path(work_dir) / "calibration"
    oof = out_of_fold(inner_cfg, data, split, inner_dir, folds=int(folds) if folds else None)
    if distributed.is_main():
        shutil.rmtree(inner_dir, ignore_errors=True)
        reuse.forget(inner_dir)
    if oof is None:
        return None
    over = "the training articles" if data.grouped else "the training rows"
    return HeldOut(oof.rows, oof.proba, f"out-of-fold ({oof.folds} inner folds over {over})")


def calibrate_model(cfg: DictConfig, data, split, model_dir: Path | str, work_dir: Path | str) -> TrainCalibration | None:
    """Fit T on held-out predictions, save calibration.json into the model, measure it on the test rows, log both
    and the test rows' reliability diagram to the active MLflow run (if any). None when train.calibrate is off,
    when nothing can be held out, and on ranks other than 0."""
    if not bool(OmegaConf.select(cfg, "train.calibrate", default=False)):
        return None
    held = held_out_predictions(cfg, data, split, model_dir, work_dir)
    if not distributed.is_main():
        return None
    if held is None or not len(held.rows):
        log.warning("train.calibrate: no gold rows the model did not train on besides the test rows (no validation "
                    "split and fewer than two gold training articles); the model stays uncalibrated")
        return None
    from pipeline.models.base import load_predictor

    target = calibration_target(model_dir)
    (target / CALIBRATION_FILE).unlink(missing_ok=True)  # the raw probabilities
    predictor = load_predictor(target)
    labels = list(predictor.labels)
    gold = _gold_index(held.rows, labels)
    temperature = fit_temperature(np.log(np.clip(held.proba, 1e-12, 1.0)), gold)
    calibration = Calibration.from_fit(held.proba, gold, temperature, fitted_on=held.name)
    calibration.save(target)
    test = HeldOut(split.test, predictor.predict_proba(split.test["text"].tolist(),
                                                       batch_size=int(cfg.train.eval_batch_size),
                                                       context=contexts_of(split.test, predictor.context)), "test")
    test_gold = _gold_index(split.test, labels)
    after = calibration.apply(test.proba)
    metrics = {"calibration_temperature": temperature,
               # on the rows T was fitted on: in-sample for T
               "calibration_insample_ece_before": calibration.ece_before,
               "calibration_insample_ece_after": calibration.ece_after,
               # on the test rows: neither the model nor T saw them
               "test_ece_before": expected_calibration_error(test.proba, test_gold),
               "test_ece_after": expected_calibration_error(after, test_gold)}
    out_dir = Path(work_dir) / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    diagram = reliability_diagram(test.proba, after, test_gold, out_dir / RELIABILITY_FILE,
                                  title=f"Reliability on {len(test_gold)} test sentences (T={temperature:.2f}, fitted "
                                        f"on {len(gold)} {held.name} sentences)")
    from pipeline.core.io import write_table_atomic

    rows = write_table_atomic(held.rows[[c for c in ("sentence_id", "group", "label", "fold") if c in held.rows]]
                              .assign(**{f"p_{x}": held.proba[:, i] for i, x in enumerate(labels)}),
                              out_dir / HELD_OUT_FILE)
    log.info("train: calibration T=%.3f fitted on %d %s rows; test ECE %.3f → %.3f on %d rows", temperature,
             len(gold), held.name, metrics["test_ece_before"], metrics["test_ece_after"], len(test_gold))
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics(metrics)
        mlflow.set_tag("calibration_fitted_on", f"{held.name} ({len(gold)} sentences)")
        mlflow.log_artifact(str(diagram), "evaluation")
        mlflow.log_artifact(str(rows), "evaluation")
    return TrainCalibration(calibration, held, test, metrics["test_ece_before"], metrics["test_ece_after"])


def calibrate_served(fitted: TrainCalibration | None, served_dir: Path | str) -> Calibration | None:
    """The refit (served) model's own T: fitted on every prediction a model made of a row it had not seen (the
    held-out rows of `calibrate_model` and the first fit's test rows). The refit's own outputs on those rows are
    in-sample (it trained on them), so they cannot be used."""
    if fitted is None:
        return None
    rows = pd.concat([fitted.held_out.rows, fitted.test.rows], ignore_index=True)
    proba = np.vstack([fitted.held_out.proba, fitted.test.proba])
    from pipeline.models.base import read_model_metadata

    gold = _gold_index(rows, read_model_metadata(calibration_target(served_dir))["labels"])
    temperature = fit_temperature(np.log(np.clip(proba, 1e-12, 1.0)), gold)
    served = Calibration.from_fit(proba, gold, temperature,
                                  fitted_on=f"{fitted.held_out.name} + the first fit's {len(fitted.test.rows)} test "
                                            "sentences (every row predicted by a model that had not seen it)")
    served.save(calibration_target(served_dir))
    log.info("train: the served refit's calibration T=%.3f fitted on %d held-out predictions", temperature, len(gold))
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metric("served_calibration_temperature", temperature)
    return served
