"""evaluate stage: how good is the model on gold labels, honestly, on a small corpus?

`evaluate.cv=loao` (default) trains one model per gold-labelled article with that article held out;
`evaluate.cv=kfold` uses grouped (or, without groups, stratified) k folds. Every fold is a child MLflow run
under one parent that holds the mean and spread across folds, the pooled out-of-fold report (confusion
matrix, error table, bootstrap interval) and the same numbers for the baselines (majority, rules, TF-IDF).
`evaluate.cv=none evaluate.model_dir=<dir>` scores an already trained model on the hold-out test split.
`evaluate.select={key: [values]}` adds nested selection: each outer fold fits the value an inner cross-validation
on its own training articles chose (pipeline.training.selection); the pooled figures then estimate the selection too.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from pipeline import LABELS
from pipeline.core import progress
from pipeline.training import selection
from pipeline.core import tracking
from pipeline.training import state as train_state
from pipeline.core.errors import PipelineError
from pipeline.core import io
from pipeline.core.io import CsvStyle, write_table_atomic
from pipeline.models.trainer import CHECKPOINT_SUBDIR
from pipeline.models import kinds
from pipeline.training.fitting import fit_model, preflight, stance_kind
from pipeline.models.metrics import SUMMARY_METRICS, classification_metrics, interval_text, prefixed, write_report
from pipeline.training.scoring import comparison_table, log_data, log_scored, score_split
from pipeline.labeling.splits import cv_splits, holdout_split, load_labelled, stored_split

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict:
    mode = str(cfg.evaluate.cv)
    if mode == "none":
        return _evaluate_model_dir(cfg)
    return _cross_validate(cfg)


def _evaluate_model_dir(cfg: DictConfig) -> dict:
    import mlflow

    model_dir = OmegaConf.select(cfg, "evaluate.model_dir", default=None)
    if not model_dir:
        raise PipelineError("evaluate.cv=none scores a trained model: set evaluate.model_dir=<train run dir>/model, "
                            "or use evaluate.cv=loao / kfold to train and score one model per fold")
    data = load_labelled(cfg)
    split = _trained_split(cfg, data, Path(str(model_dir)))
    out = Path(str(cfg.paths.run_dir))
    with tracking.start_run(cfg, "evaluate-model", tags={"stage": "evaluate", "cv": "none",
                                                         "model_dir": str(model_dir)}) as run:
        log_data(data, split)
        scored = score_split(cfg, data, split, Path(str(model_dir)), out / "evaluation")
        log_scored(scored, prefix="eval_", artifact_dir="evaluation")
        mlflow.log_artifact(str(write_table_atomic(
            comparison_table(str(model_dir), scored.metrics, scored.baselines), out / "evaluation" / "comparison.csv",
            csv=CsvStyle.from_cfg(cfg))),
            "evaluation")
        m = scored.metrics
        line = (f"macro-F1 {m['macro_f1']:.3f} [{m['macro_f1_ci_low']:.2f}, {m['macro_f1_ci_high']:.2f}] on the "
                f"{len(split.test)} gold sentences of its stored test articles; baselines on the same rows: "
                + (", ".join(f"{n} {b['macro_f1']:.3f}" for n, b in scored.baselines.items()) or "none"))
        mlflow.set_tag(tracking.NOTE_TAG, f"**{model_dir}** scored on its own held-out test articles: {line}")
    print(f"evaluate: {line} → MLflow run {run.info.run_id}, {out / 'evaluation'}; next: python -m pipeline promote")
    return {"run_id": run.info.run_id, "metrics": prefixed(scored.metrics, "eval_"), "baselines": scored.baselines}


def _trained_split(cfg: DictConfig, data, model_dir: Path):
    """The split the model was trained with (its split.json); the seed's split only for a model without one."""
    record = train_state.read_split(model_dir)
    if record is None:
        log.warning("evaluate: %s has no %s (trained before it was stored): rebuilding the split from seed=%s; "
                    "if the labelled data changed since, these test articles may have been trained on",
                    model_dir, train_state.SPLIT_FILE, cfg.seed)
        return holdout_split(data, cfg)
    if record.get("seen_all"):
        raise PipelineError(f"evaluate.model_dir={model_dir}: this model was refit on every labelled row "
                            "(train.refit=all), its test articles included; score the first fit instead: "
                            "evaluate.model_dir=<train run dir>/model")
    by = record.get("by", "group")
    pool = data.test_frame if data.test_frame is not None else data.gold
    present = set(pool[by].astype(str)) if by in pool.columns else set()
    missing = sorted(set(record.get("test") or []) - present)
    if missing:
        changed = record.get("data_digest") != train_state.data_digest(data)
        raise PipelineError(
            f"evaluate.model_dir={model_dir}: {len(missing)} of its stored test {by}s ({', '.join(missing[:5])}) "
            f"are not in the labelled data{' (the data changed since training: digest ' + str(record.get('data_digest')) + ' → ' + train_state.data_digest(data) + ')' if changed else ''}; "
            "evaluate it with the data it was trained on, or train it again")
    if record.get("data_digest") != train_state.data_digest(data):
        log.warning("evaluate: the labelled data changed since %s was trained; scoring its stored test %ss",
                    model_dir, by)
    return stored_split(data, cfg, record)


def _spread(per_fold: list[dict[str, float]], prefix: str) -> dict[str, float]:
    out = {}
    for key in SUMMARY_METRICS:
        values = np.array([m[key] for m in per_fold if key in m])
        if len(values):
            out[f"{prefix}{key}_mean"] = float(values.mean())
            out[f"{prefix}{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            out[f"{prefix}{key}_min"] = float(values.min())
            out[f"{prefix}{key}_max"] = float(values.max())
    return out


def _cross_validate(cfg: DictConfig) -> dict:
    import mlflow

    stance_kind(cfg)
    preflight(cfg)
    data = load_labelled(cfg)
    folds = cv_splits(data, cfg)
    run_dir = Path(str(cfg.paths.run_dir))
    mode = str(cfg.evaluate.cv)
    if mode == "loao" and not data.grouped:
        mode = "kfold"  # cv_splits fell back (and said so): no articles to leave out
    ev = cfg.evaluate
    csv = CsvStyle.from_cfg(cfg)
    options = selection.candidates(cfg)
    nested = f"nested selection among {len(options)} candidates of evaluate.select" if options else ""
    log.info("evaluate: %s cross-validation, %d folds%s", mode, len(folds), f", {nested}" if nested else "")
    chosen_rows: list[dict] = []
    fold_rows: list[dict] = []
    oof_tests: list[pd.DataFrame] = []
    oof_proba: list[np.ndarray] = []
    oof_base: dict[str, list[np.ndarray]] = {}
    model_folds: list[dict[str, float]] = []
    base_folds: dict[str, list[dict[str, float]]] = {}
    tags = {"stage": "evaluate", "cv": mode, "model_kind": kinds.fit_method(cfg), "model_name": str(cfg.model.name),
            **tracking.recipe_tags(cfg), **({"selection": "nested"} if options else {})}
    run_name = f"evaluate-{mode}-{'nested-' if options else ''}{cfg.model.name}"
    with tracking.start_run(cfg, run_name, tags={**tags, "cv_parent": "true"}) as parent:
        mlflow.set_tags({"data_digest": "+".join(io.file_digest(p) for p in data.paths),
                         "labels_gold": ", ".join(f"{k}={v}" for k, v in
                                                  data.gold["label"].value_counts().reindex(LABELS, fill_value=0).items())})
        mlflow.log_metric("cv_folds", len(folds))
        bar = progress.bar_disabled(len(folds), at_least=2)  # no bar for a single fold
        for split in tqdm(folds, desc="evaluate folds", unit="fold", disable=bar):
            fold_dir = run_dir / split.name
            log.info("evaluate: %s", split.describe())
            fold_cfg, chosen = cfg, None
            if options:  # chosen on this fold's training articles only; its test article scores the choice
                chosen = selection.select(cfg, data, split, fold_dir, folds=None if mode == "loao" else int(ev.folds))
                fold_cfg = selection.with_values(cfg, chosen.chosen)
                chosen_rows += [{"fold": split.name, "candidate": selection.describe(values), "inner_macro_f1": score,
                                 "chosen": values == chosen.chosen} for values, score in chosen.scores]
            fold_tags = {**tags, "fold": split.name, **({"selected": chosen.label} if chosen else {})}
            with tracking.start_run(cfg, split.name, tags=fold_tags, log_params=False):
                log_data(data, split)
                model_dir = fit_model(fold_cfg, split, fold_dir)
                scored = score_split(fold_cfg, data, split, model_dir, fold_dir / "evaluation", report=False)
                log_scored(scored, prefix="test_", artifact_dir=None)
                mlflow.set_tag(tracking.NOTE_TAG, (
                    f"One fold of an evaluate run: trained without, then tested on {', '.join(split.test_groups) or 'its test rows'} "
                    f"({len(split.test)} gold sentences): macro-F1 {scored.metrics.get('macro_f1', float('nan')):.3f}. "
                    "One fold is a few sentences: compare models on the parent run's pooled numbers."))
            if not bool(ev.keep_fold_checkpoints):
                # A fold's model is scored and kept; its optimiser checkpoints (GBs for AraBERT) are not needed.
                shutil.rmtree(fold_dir / CHECKPOINT_SUBDIR, ignore_errors=True)
            model_folds.append(scored.metrics)
            for name, m in scored.baselines.items():
                base_folds.setdefault(name, []).append(m)
                oof_base.setdefault(name, []).append(scored.baseline_proba[name])
            oof_tests.append(split.test)
            oof_proba.append(scored.proba)
            fold_rows.append({"fold": split.name, **({"selected": chosen.label} if chosen else {}),
                              "test_articles": ",".join(split.test_groups), "n_train": len(split.train),
                              "n_val": len(split.val), "n_test": len(split.test),
                              **{k: scored.metrics.get(k) for k in SUMMARY_METRICS},
                              **{f"{n}_macro_f1": m["macro_f1"] for n, m in scored.baselines.items()}})
        # Pooled out-of-fold predictions: every gold sentence scored once by a model that never saw its article.
        test = pd.concat(oof_tests, ignore_index=True)
        proba = np.vstack(oof_proba)
        pooled, files = write_report(run_dir / "evaluation", test, proba, title=f"{cfg.model.name} ({mode}, pooled)",
                                     n_resamples=int(ev.bootstrap), ci=float(ev.ci), seed=int(cfg.seed),
                                     max_errors=int(ev.max_errors), csv=csv)
        summary = {**_spread(model_folds, "cv_"), **prefixed(pooled, "oof_")}
        base_pooled = {}
        for name, per_fold in base_folds.items():
            summary.update(_spread(per_fold, f"baseline_{name}_cv_"))
            if len(oof_base[name]) == len(folds):
                pred = [LABELS[i] for i in np.vstack(oof_base[name]).argmax(axis=1)]
                base_pooled[name] = classification_metrics(test["label"], pred)
                summary.update(prefixed({k: base_pooled[name][k] for k in SUMMARY_METRICS}, f"baseline_{name}_oof_"))
        mlflow.log_metrics(summary)
        folds_csv = write_table_atomic(pd.DataFrame(fold_rows), run_dir / "evaluation" / "folds.csv", csv=csv)
        comparison = write_table_atomic(comparison_table(str(cfg.model.name), pooled, base_pooled),
                                        run_dir / "evaluation" / "comparison.csv", csv=csv)
        written = [*files, folds_csv, comparison]
        if options:
            written.append(write_table_atomic(pd.DataFrame(chosen_rows), run_dir / "evaluation" / "selection.csv",
                                              csv=csv))
            per_fold = "; ".join(f"{r['fold']}: {r['selected']}" for r in fold_rows)
            mlflow.set_tag("selected_per_fold", per_fold[: tracking.MAX_PARAM_CHARS])
        for path in written:
            mlflow.log_artifact(str(path), "evaluation")
        pooled_line, folds_line = comparison_lines(str(cfg.model.name), summary, list(base_folds))
        mlflow.set_tag(tracking.NOTE_TAG, f"**{cfg.model.name}**, {mode} cross-validation over {len(folds)} folds, "
                       f"{len(test)} gold sentences: the honest number.\n\n{pooled_line}\n\n{folds_line}")
        log.info("evaluate: %s; %s", pooled_line, folds_line)
    if options:
        print(f"evaluate: nested selection ({per_fold}): pooled macro-F1 {pooled['macro_f1']:.3f} "
              f"{interval_text(pooled)}, fold mean {summary.get('cv_macro_f1_mean', float('nan')):.3f} "
              "(an estimate of the recipe with its selection: no fold's choice saw its test article)")
    print(f"evaluate: {pooled_line}; {folds_line} ({len(folds)} folds, {mode}) → MLflow run {parent.info.run_id}, "
          f"{run_dir / 'evaluation'}; next: python -m pipeline promote (compare with the served model), or the "
          f"runs side by side: {tracking.headline_url(cfg, parent.info.experiment_id)}")
    return {"run_id": parent.info.run_id, "summary": summary, "folds": fold_rows}


def comparison_lines(model: str, summary: dict[str, float], baselines: list[str]) -> tuple[str, str]:
    """The model and the baselines like with like: pooled out-of-fold macro-F1 (the model's with its interval), then
    the means over folds. The same numbers as the evaluate run's oof_* / cv_* metrics in MLflow."""
    def value(key: str) -> str:
        return f"{summary[key]:.3f}" if key in summary and summary[key] == summary[key] else "—"

    low, high = summary.get("oof_macro_f1_ci_low"), summary.get("oof_macro_f1_ci_high")
    has_ci = low is not None and high is not None and not (np.isnan(low) or np.isnan(high))
    ci = f" [{low:.2f}, {high:.2f}]" if has_ci else ""
    pooled = [f"{model} {value('oof_macro_f1')}{ci}"] + [f"{n} {value(f'baseline_{n}_oof_macro_f1')}" for n in baselines]
    means = [f"{model} {value('cv_macro_f1_mean')} ± {value('cv_macro_f1_std')}"] + \
        [f"{n} {value(f'baseline_{n}_cv_macro_f1_mean')}" for n in baselines]
    return (f"pooled macro-F1 (each gold sentence scored by a model that never saw its article): {', '.join(pooled)}",
            f"mean over folds: {', '.join(means)}")
