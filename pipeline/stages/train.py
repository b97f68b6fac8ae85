"""train stage: fine-tune the configured model on the labelled set, test it on held-out gold, log it all to MLflow.

One `python -m pipeline train` = one MLflow run holding the config, data digest and label counts, per-epoch
train/validation metrics, gold test metrics with a bootstrap interval, the baselines on the same test rows,
the confusion matrix and error table, and the model as an MLflow pyfunc model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.core import distributed
from pipeline.models import serving
from pipeline.core import tracking
from pipeline.training import state as train_state
from pipeline.core.errors import PipelineError
from pipeline.models import kinds, reuse
from pipeline.models.trainer import CHECKPOINT_SUBDIR
from pipeline.training.fitting import MODEL_SUBDIR, fit_model, preflight, refit_on_all
from pipeline.models.metrics import interval_text
from pipeline.models.loading import from_scratch
from pipeline.training.scoring import comparison_table, log_data, log_scored, score_split
from pipeline.labeling.splits import holdout_split, load_labelled
from pipeline.training.calibrate import calibrate_model, calibrate_served

log = logging.getLogger(__name__)


def _is_finished(run_dir: Path) -> bool:
    return (run_dir / MODEL_SUBDIR / "stance_model.json").exists()


def resolve_resume(cfg: DictConfig, data=None, split=None) -> tuple[Path, str | None]:
    """(directory to train in, checkpoint to resume from). `train.resume`: false | true | a run dir or checkpoint.

    Only a train stage run whose train_state.json matches this config and split is resumed (never an evaluate
    fold, never a run of another model or split); anything else is refused with the reason."""
    from transformers.trainer_utils import get_last_checkpoint

    run_dir = Path(str(cfg.paths.run_dir))
    wanted = cfg.train.resume
    if wanted in (False, None, "false", ""):
        return run_dir, None
    if wanted is True or str(wanted).lower() == "true":
        root = Path(str(cfg.paths.output_root))
        candidates = [p.parent for p in root.rglob(CHECKPOINT_SUBDIR) if p.is_dir()
                      and get_last_checkpoint(str(p)) and not _is_finished(p.parent)]
        refused = {p: train_state.resume_refusal(p, cfg, data, split) for p in candidates}
        matching = [p for p, why in refused.items() if why is None]
        if not matching:
            why = "; ".join(f"{p}: {r}" for p, r in refused.items())
            raise PipelineError(f"train.resume=true: no interrupted train run with checkpoints under {root} matches "
                                f"this config and split{' (' + why + ')' if why else ''}; start a new run "
                                "(train.resume=false) or give the run dir: train.resume=<dir>")
        work_dir = max(matching, key=lambda p: Path(get_last_checkpoint(str(p / CHECKPOINT_SUBDIR))).stat().st_mtime)
        return work_dir, get_last_checkpoint(str(work_dir / CHECKPOINT_SUBDIR))
    path = Path(str(wanted))
    last = None
    if path.name.startswith("checkpoint-") and path.is_dir():
        work_dir, last = path.parent.parent, str(path)
    else:
        work_dir = path
        checkpoints = work_dir / CHECKPOINT_SUBDIR
        last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
        if not last:
            raise PipelineError(f"train.resume={wanted}: {checkpoints} holds no checkpoint to resume from")
    why = train_state.resume_refusal(work_dir, cfg, data, split)
    if why:
        raise PipelineError(f"train.resume={wanted}: cannot resume {work_dir}: {why}; "
                            "start a new run (train.resume=false) with the config it was trained with, or drop it")
    return work_dir, last


def run_description(cfg: DictConfig, scored, n_test: int, calibration) -> str:
    """The run's description in the MLflow UI: its headline numbers."""
    m = scored.metrics
    lines = [f"**{cfg.model.name}** ({kinds.fit_method(cfg)}): test macro-F1 **{m['macro_f1']:.3f}** "
             f"{interval_text(m)} on {n_test} gold sentences"]
    if scored.baselines:
        lines.append("baselines (macro-F1): " + ", ".join(f"{n} {b['macro_f1']:.3f}" for n, b in scored.baselines.items()))
    if calibration is not None:
        c = calibration.calibration
        lines.append(f"calibration: T={c.temperature:.2f} fitted on {c.fitted_on} (n={c.n}); test ECE "
                     f"{calibration.test_ece_before:.3f} → {calibration.test_ece_after:.3f}")
    return "\n\n".join(lines)


def train_replica(cfg: DictConfig, data, split, work_dir: Path, resume_from: str | None) -> dict:
    """A rank other than 0 of a multi-process run: the same fits (their collectives need every rank: the model,
    the inner fits of its calibration, the refit), and nothing else: no MLflow, no files (the Trainer saves from
    rank 0 only), no scoring."""
    model_dir = fit_model(cfg, split, work_dir, resume_from=resume_from)
    calibrate_model(cfg, data, split, model_dir, work_dir)
    if str(OmegaConf.select(cfg, "train.refit", default="none")) == "all":
        refit_on_all(cfg, data, work_dir / MODEL_SUBDIR, work_dir)
    return {"rank": distributed.rank()}


def train(cfg: DictConfig) -> dict:
    """Entry point of `python -m pipeline train`; returns the run id, model dir and test metrics. With
    `train.reuse_models` the pretrained encoder is read once for the run and each fitted model is scored and
    calibrated from memory (pipeline.models.reuse)."""
    with reuse.reusing(bool(OmegaConf.select(cfg, "train.reuse_models", default=True))):
        return _train(cfg)


def _train(cfg: DictConfig) -> dict:
    import mlflow

    from pipeline.models.store import log_stance_model, served_options
    from pipeline.models.metrics import prefixed
    from pipeline.core.io import CsvStyle, write_table_atomic

    kind = kinds.fit_method(cfg)
    preflight(cfg)
    data = load_labelled(cfg)
    split = holdout_split(data, cfg)
    log.info("train: %s", split.describe())
    checkpoints = kinds.keeps_checkpoints(cfg)
    work_dir, resume_from = (resolve_resume(cfg, data, split) if checkpoints
                             else (Path(str(cfg.paths.run_dir)), None))
    if distributed.is_distributed():
        if not checkpoints:
            raise PipelineError(f"model.kind={cfg.model.kind} fits in one process; only fine-tuned transformer "
                                "models train under torchrun / accelerate launch")
        if not distributed.is_main():
            return train_replica(cfg, data, split, work_dir, resume_from)
    smoke = from_scratch(cfg)
    tags = {"stage": "train", "model_kind": kind, "model_name": str(cfg.model.name), **tracking.recipe_tags(cfg),
            "processes": str(distributed.world_size()),
            serving.SMOKE_TAG: str(smoke).lower()}
    reopen = None
    if resume_from:
        tags["resumed_from"] = str(resume_from)
        reopen = (train_state.read_state(work_dir) or {}).get("run_id")  # the same run: its curves continue
    with tracking.start_run(cfg, f"train-{cfg.model.name}", tags=tags, run_id=reopen) as run:
        train_state.write_state(work_dir, cfg, data, split, run.info.run_id)
        log_data(data, split)
        model_dir = fit_model(cfg, split, work_dir, resume_from=resume_from)
        train_state.write_split(model_dir, data, split)
        calibration = calibrate_model(cfg, data, split, model_dir, work_dir)
        scored = score_split(cfg, data, split, model_dir, work_dir / "evaluation")
        log_scored(scored, prefix="test_", artifact_dir="evaluation")
        comparison = comparison_table(str(cfg.model.name), scored.metrics, scored.baselines)
        mlflow.log_artifact(str(write_table_atomic(comparison, work_dir / "evaluation" / "comparison.csv",
                                                   csv=CsvStyle.from_cfg(cfg))), "evaluation")
        served_dir = model_dir
        if str(OmegaConf.select(cfg, "train.refit", default="none")) == "all":
            served_dir = refit_on_all(cfg, data, model_dir, work_dir)
            train_state.write_split(served_dir, data, split, seen_all=True)  # evaluate cv=none refuses it
            calibrate_served(calibration, served_dir)
            mlflow.set_tag("served_model", "refit on all labelled rows; test_* metrics are the first fit's")
        info = log_stance_model(served_dir, name="model",
                                registered_model_name=None if smoke else serving.model_name(cfg),
                                input_example=split.test["text"].head(3).tolist(),
                                model_config=served_options(cfg))
        mlflow.set_tags({"has_model": "true", "model_uri": info.model_uri,
                         "mlflow.note.content": run_description(cfg, scored, len(split.test), calibration)})
        outcome = serving.after_train(cfg, run.info.run_id, smoke=smoke)
        log.info("train: test macro-F1 %.3f %s on %d gold sentences; %s",
                 scored.metrics["macro_f1"], interval_text(scored.metrics), len(split.test),
                 ", ".join(f"{n} {m['macro_f1']:.3f}" for n, m in scored.baselines.items()) or "no baselines")
        result = {"run_id": run.info.run_id, "model_dir": str(served_dir), "model_uri": info.model_uri,
                  "metrics": prefixed(scored.metrics, "test_"), "baselines": scored.baselines, "smoke": smoke,
                  "compare_url": tracking.headline_url(cfg, run.info.experiment_id), **outcome}
    print(outcome_lines(cfg, result))
    return result


def outcome_lines(cfg: DictConfig, result: dict) -> str:
    """What a train run leaves the user: its model, whether predict serves it, and the command that uses it."""
    run_uri = f"runs:/{result['run_id']}/model"
    predict = "python -m pipeline predict input=<articles> output=predictions.csv"
    in_sample = "; the served rules were written on this gold: in-sample" if cfg.train.hybrid.enabled else ""
    lines = [f"train: run {result['run_id']}: test macro-F1 {result['metrics']['test_macro_f1']:.3f} "
             f"(held-out gold of this run's split{in_sample})"]
    if result["smoke"]:
        lines += [f"  model {run_uri}: a smoke model (built from scratch), not registered and never served by default",
                  f"  predict with it: {predict} model_uri={run_uri}"]
    elif result.get("served_as"):
        lines += [f"  model {run_uri}, registered as {serving.model_name(cfg)} version {result['registered_version']},"
                  f" now served as {result['served_as']}", f"  predict: {predict}"]
    elif result.get("registered_version"):
        version = result["registered_version"]
        lines += [f"  model {run_uri}, registered as {serving.model_name(cfg)} version {version}, not served "
                  f"(tracking.promote=false or a sweep job); serve it: python -m pipeline promote {version}",
                  f"  predict with it: {predict} model_uri=models:/{serving.model_name(cfg)}/{version}"]
    else:
        lines += [f"  model {run_uri} (tracking.register=null: not registered)",
                  f"  predict with it: {predict} model_uri={run_uri}"]
    if result.get("compare_url"):
        lines.append(f"  compare the runs (`make ui` first): {result['compare_url']}")
    return "\n".join(lines)
