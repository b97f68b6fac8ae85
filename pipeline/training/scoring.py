"""Scoring a trained stance model on gold test rows and logging runs to MLflow, shared by train and evaluate.

`score_split` runs the model through the predict code path and the baselines on the same rows;
`log_data` and `log_scored` put the data and the numbers into MLflow.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline import LABELS
from pipeline.core import tracking
from pipeline.core.errors import PipelineError
from pipeline.core import io
from pipeline.core.io import CsvStyle
from pipeline.models.metrics import SUMMARY_METRICS
from pipeline.labeling.splits import LabelledSet, Split, label_counts
from pipeline.text.context import contexts_of

log = logging.getLogger(__name__)


@dataclass
class Scored:
    metrics: dict[str, float]                       # the model on the gold test rows
    baselines: dict[str, dict[str, float]]          # baseline name -> metrics on the same rows
    proba: np.ndarray
    baseline_proba: dict[str, np.ndarray]
    files: list[Path]


def score_split(cfg: DictConfig, data: LabelledSet, split: Split, model_dir: Path, out_dir: Path, *,
                baselines: Sequence[str] | None = None, report: bool = True) -> Scored:
    """The trained model (through the predict code path) and the baselines on the split's gold test rows."""
    from pipeline.training.baselines import baseline_probas
    from pipeline.models.base import load_predictor
    from pipeline.models.metrics import classification_metrics, write_report

    predictor = load_predictor(model_dir)
    if list(predictor.labels) != list(LABELS):
        raise PipelineError(f"{model_dir}: labels {predictor.labels} differ from {list(LABELS)}")
    proba = predictor.predict_proba(split.test["text"].tolist(), batch_size=int(cfg.train.eval_batch_size),
                                    context=contexts_of(split.test, predictor.context))
    ev = cfg.evaluate
    if report:
        metrics, files = write_report(out_dir, split.test, proba, title=f"{cfg.model.name} ({split.name})",
                                      n_resamples=int(ev.bootstrap), ci=float(ev.ci), seed=int(cfg.seed),
                                      max_errors=int(ev.max_errors), csv=CsvStyle.from_cfg(cfg))
    else:
        metrics = classification_metrics(split.test["label"], [LABELS[i] for i in proba.argmax(axis=1)])
        files = []
    names = list(cfg.train.baselines if baselines is None else baselines)
    base_proba = baseline_probas(names, split.train, split.test, preprocess=predictor.preprocessor, cfg=cfg,
                                 has_rules=data.has_rules)
    base_metrics = {name: classification_metrics(split.test["label"], [LABELS[i] for i in p.argmax(axis=1)])
                    for name, p in base_proba.items()}
    return Scored(metrics, base_metrics, proba, base_proba, files)


def comparison_table(model_name: str, scored_metrics: dict[str, float],
                     baselines: dict[str, dict[str, float]]) -> pd.DataFrame:
    rows = [{"model": model_name, **{k: scored_metrics.get(k) for k in SUMMARY_METRICS}}]
    rows += [{"model": f"baseline:{name}", **{k: m.get(k) for k in SUMMARY_METRICS}}
             for name, m in baselines.items()]
    return pd.DataFrame(rows)


def log_data(data: LabelledSet, split: Split) -> None:
    """Data digest, label distribution per side, and the train/test tables as MLflow dataset inputs."""
    import mlflow

    digest = "+".join(io.file_digest(p) for p in data.paths)
    tags = {"data_path": ",".join(str(p) for p in data.paths), "data_digest": digest}
    for side, frame in (("train", split.train), ("val", split.val), ("test", split.test)):
        counts = label_counts(frame["label"]) if len(frame) else {}
        tags[f"labels_{side}"] = ", ".join(f"{k}={v}" for k, v in counts.items()) or "none"
        if side == "train":
            tags["train_sources"] = ", ".join(f"{k}={v}" for k, v in frame["source"].value_counts().items())
    if split.test_groups:
        tags["test_articles"] = ",".join(split.test_groups)[: tracking.MAX_PARAM_CHARS]
    mlflow.set_tags(tags)
    for side, frame, context in (("train", split.train, "training"), ("test", split.test, "testing")):
        if len(frame):
            table = frame[["sentence_id", "text", "label", "source"]]
            with warnings.catch_warnings():
                # a local path matches two equivalent dataset source types; MLflow picks one and warns
                warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
                dataset = mlflow.data.from_pandas(table, source=str(Path(data.paths[0]).resolve()), targets="label",
                                                  name=f"{Path(data.paths[0]).stem}-{side}",
                                                  digest=f"{digest}-{side}"[:36])
            mlflow.log_input(dataset, context=context)


def log_scored(scored: Scored, *, prefix: str, artifact_dir: str | None) -> None:
    import mlflow

    from pipeline.models.metrics import prefixed

    mlflow.log_metrics(prefixed(scored.metrics, prefix))
    for name, m in scored.baselines.items():
        mlflow.log_metrics(prefixed({k: m[k] for k in SUMMARY_METRICS}, f"baseline_{name}_{prefix}"))
    for path in scored.files:
        mlflow.log_artifact(str(path), artifact_path=artifact_dir)
