"""Train-time calibration: fit temperature scaling on held-out gold and save it with the model (train.calibrate).

    calibration = calibrate_model(cfg, split, model_dir, out_dir)   # before the model is logged to MLflow
    save_calibration(calibration, served_dir)                        # the refit (served) model gets the same T

The temperature is fitted on the model's own (uncalibrated) probabilities of the validation rows, or of the test
rows when there is no validation split; `calibration.json` goes into the directory whose predictor computes the
probabilities (a hybrid's inner model dir), so every serving path applies it (pipeline.inference).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pipeline.calibration import CALIBRATION_FILE, Calibration, fit_temperature, reliability_diagram

log = logging.getLogger(__name__)

RELIABILITY_FILE = "reliability.png"


def calibration_target(model_dir: Path | str) -> Path:
    """The directory whose predictor produces the probabilities: the model dir, or a hybrid's inner dir."""
    from pipeline.hybrid import HYBRID_FILE, INNER_DIR, read_hybrid_meta

    model_dir = Path(model_dir)
    if (model_dir / HYBRID_FILE).exists():
        return model_dir / str(read_hybrid_meta(model_dir).get("inner", INNER_DIR))
    return model_dir


def held_out(split) -> tuple[object, str]:
    """(rows to fit on, their name): validation, else the test rows."""
    if split.val is not None and len(split.val):
        return split.val, "validation"
    return split.test, "test"


def calibrate_model(cfg: DictConfig, split, model_dir: Path | str, out_dir: Path | str) -> Calibration | None:
    """Fit T on held-out gold, save calibration.json into the model, log ECE before/after and the reliability
    diagram to the active MLflow run (if any). None when train.calibrate is off or there is no held-out gold."""
    if not bool(OmegaConf.select(cfg, "train.calibrate", default=False)):
        return None
    rows, fitted_on = held_out(split)
    if rows is None or not len(rows):
        log.warning("train.calibrate: no held-out gold rows (validation or test); the model stays uncalibrated")
        return None
    from pipeline.inference import load_predictor

    target = calibration_target(model_dir)
    (target / CALIBRATION_FILE).unlink(missing_ok=True)  # fit on the raw probabilities
    predictor = load_predictor(target)
    proba = predictor.predict_proba(rows["text"].tolist(),
                                    batch_size=int(OmegaConf.select(cfg, "train.eval_batch_size", default=64)))
    labels = list(predictor.labels)
    gold = np.asarray([labels.index(str(x)) for x in rows["label"]], dtype=np.int64)
    temperature = fit_temperature(np.log(np.clip(proba, 1e-12, 1.0)), gold)
    calibration = Calibration.from_fit(proba, gold, temperature, fitted_on=fitted_on)
    calibration.save(target)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    diagram = reliability_diagram(proba, calibration.apply(proba), gold, out_dir / RELIABILITY_FILE,
                                  title=f"Reliability on {len(gold)} {fitted_on} sentences (T={temperature:.2f})")
    log.info("train: calibration T=%.3f on %d %s rows, ECE %.3f → %.3f", temperature, len(gold), fitted_on,
             calibration.ece_before, calibration.ece_after)
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics({"calibration_temperature": temperature, "calibration_ece_before": calibration.ece_before,
                            "calibration_ece_after": calibration.ece_after})
        mlflow.set_tag("calibration_fitted_on", f"{fitted_on} ({len(gold)} sentences)")
        mlflow.log_artifact(str(diagram), "evaluation")
    return calibration


def save_calibration(calibration: Calibration | None, model_dir: Path | str) -> None:
    """Give another model dir (the refit, served one) the same calibration."""
    if calibration is not None:
        calibration.save(calibration_target(model_dir))

